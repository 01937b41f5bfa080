"""Training curves from a run's metrics.jsonl: loss, learning rate and speed.

The trainer (train.py) appends one JSON object per line: at log points
{"step", "tokens", "elapsed", "lr", "train_loss", "tokens_per_s"}, at eval points
{"step", "tokens", "elapsed", "eval_train_loss", "val_loss"}, and a few others (a stop on a
signal, skipped batches) that the curves ignore. Four panels: train and val loss against
steps and against tokens seen, the learning rate schedule, and throughput.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from matplotlib.figure import Figure

from qkv.errors import QkvError
from qkv.viz.style import new_figure, save_figure

METRICS_FILE = "metrics.jsonl"  # as checkpoint.METRICS_FILE (not imported: no torch needed)
CURVES_FILE = "curves.png"


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of run_dir/metrics.jsonl. A line cut short (a run killed mid-write) is
    skipped; a missing file, or one with no loss in it, is an error."""
    path = Path(run_dir) / METRICS_FILE
    if not Path(run_dir).is_dir():
        raise QkvError(f"run directory {run_dir} does not exist or is not a directory")
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        raise QkvError(f"{path} is missing: is {run_dir} a qkv run directory?") from None
    except OSError as exc:
        raise QkvError(f"cannot read {path}: {exc.strerror or exc}") from None
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    if not any("train_loss" in r or "val_loss" in r for r in records):
        raise QkvError(f"{path} holds no loss yet: nothing to plot")
    return records


def _series(records: list[dict], x: str, y: str) -> tuple[list[float], list[float]]:
    pairs = [(r[x], r[y]) for r in records if x in r and y in r]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _loss_panel(axes, records: list[dict], x: str, label: str) -> None:
    for key, name, style in (("train_loss", "train (batch)", "-"), ("val_loss", "val", "o-")):
        xs, ys = _series(records, x, key)
        if xs:
            axes.plot(xs, ys, style, label=name, markersize=3, linewidth=1.2)
    axes.set_xlabel(label)
    axes.set_ylabel("loss (nats/token)")
    axes.grid(alpha=0.3)
    axes.legend()


def curves_figure(records: list[dict], title: str = "") -> Figure:
    """Loss against steps and tokens, the learning rate, and tokens/s, in a 2 x 2 grid."""
    figure = new_figure(11, 7.5)
    (by_step, by_tokens), (lr, speed) = figure.subplots(2, 2)
    _loss_panel(by_step, records, "step", "optimizer step")
    by_step.set_title("loss against steps")
    _loss_panel(by_tokens, records, "tokens", "tokens seen")
    by_tokens.set_title("loss against tokens")
    lr.plot(*_series(records, "step", "lr"), linewidth=1.2)
    lr.set(title="learning rate", xlabel="optimizer step", ylabel="learning rate")
    lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    speed.plot(*_series(records, "step", "tokens_per_s"), linewidth=1.2)
    speed.set(title="throughput", xlabel="optimizer step", ylabel="tokens/s (since start)")
    for axes in (lr, speed):
        axes.grid(alpha=0.3)
    figure.suptitle(title or "training curves")
    return figure


def plot_training_curves(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw run_dir/metrics.jsonl to `out` (default run_dir/curves.png); returns the path."""
    records = read_metrics(run_dir)
    out = Path(run_dir) / CURVES_FILE if out is None else Path(out)
    return save_figure(curves_figure(records, f"training curves of {run_dir}"), out, dpi=90)


def plot_after_training(run_dir: str | Path) -> Path | None:
    """The end-of-run hook of `qkv train`: write run_dir/curves.png. A picture is never worth
    a run: any failure to draw it is one warning line on stderr, and the run still succeeds."""
    try:
        return plot_training_curves(run_dir)
    except Exception as exc:
        reason = str(exc) if isinstance(exc, QkvError) else f"{type(exc).__name__}: {exc}"
        print(f"qkv: warning: no training curves: {reason}", file=sys.stderr)
        return None
