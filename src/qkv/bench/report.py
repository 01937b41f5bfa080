"""The table of `qkv bench`: `Row` (one measurement, both sides), `Report` and its markdown.

`Report.to_markdown` gives the header lines, then one table line per row (qkv, peer, ratio,
note), then the total elapsed time; `write_markdown` writes it to a file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qkv.errors import QkvError


@dataclass
class Row:
    """One measurement for qkv and its peer; None where it was not measured."""

    name: str
    unit: str  # "tok/s", "%", "ms", "MiB"
    ours: float | None
    peer: float | None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.ours is None or self.peer is None or self.peer == 0:
            return None
        return self.ours / self.peer


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "tok/s":
        return f"{value:,.0f} tok/s"
    if unit == "%":
        return f"{value:.1f}%"
    return f"{value:,.1f} {unit}"


@dataclass
class Report:
    header: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    elapsed: float = 0.0

    def to_markdown(self) -> str:
        lines = [*self.header, ""]
        lines.append("| benchmark | qkv | peer | ratio | note |")
        lines.append("|---|---:|---:|---:|---|")
        for r in self.rows:
            ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
            ours, peer = _fmt(r.ours, r.unit), _fmt(r.peer, r.unit)
            lines.append(f"| {r.name} | {ours} | {peer} | {ratio} | {r.note} |")
        lines += ["", f"total elapsed: {self.elapsed:.0f} s"]
        return "\n".join(lines) + "\n"


def write_markdown(report: Report, path: str | Path) -> None:
    try:
        Path(path).write_text(report.to_markdown(), encoding="utf-8")
    except OSError as exc:
        raise QkvError(f"cannot write {path}: {exc.strerror}") from None
