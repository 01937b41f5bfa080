"""Attention over training: the probe text's attention maps, recorded at each evaluation.

At every evaluation `qkv train` runs the model once on a fixed probe text (`train.probe_text`,
by default a piece of the val split, the same for the whole run) through the kind's attention
provider (viz/maps.py) and writes what it saw to

    RUN/probe/step-NNNNNNN.npz     one file per evaluation, written atomically:
        meta   JSON: {"step", "text", "maps": [{"name", "queries", "keys"}, ...]}
        w0..   each map's weights a_ij, (L, H, T_q, T_k), float16

float16 keeps 3 significant digits, plenty for a picture, so a file holds about
2 L H T_q T_k bytes before compression (the causal half of zeros compresses away): 3 layers x
3 heads x 36 x 36 tokens is 23 KB raw, 10-13 KB on disk, per evaluation (measured on the run
of docs/visualisation.md).

The forward pass runs in eval mode without gradients and draws no random numbers (dropout is
off, decoding is greedy), so recording leaves the run's random state, and a resumed run's
losses, exactly as they were; it costs one forward pass of one short text per evaluation.
"""

from __future__ import annotations

import io
import json
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from qkv.atomic import atomic_write_bytes
from qkv.checkpoint import PROBE_DIR
from qkv.errors import QkvError
from qkv.viz.maps import AttentionMap

_NAME = re.compile(r"step-(\d+)\.npz$")


@dataclass(frozen=True)
class ProbeRecord:
    """The probe's attention at one step of a run."""

    step: int
    text: str
    maps: list[AttentionMap]


def record_probe(recipe, model: nn.Module, run_dir: Path, step: int, write: bool) -> None:
    """Run the probe text through `model` (the kind's attention provider) and, if `write`
    (the main process), save its maps for `step`. Nothing happens without a probe text."""
    text = recipe.probe_text()
    if not text:
        return
    provider = recipe.kind.verb("attention")
    try:
        maps = provider(model, recipe.tokenizer, text)
    except QkvError as exc:  # a probe the model cannot read must not end the run
        if write:
            print(f"qkv: warning: no probe recorded at step {step}: {exc}", file=sys.stderr)
        return
    if write:
        write_record(Path(run_dir), ProbeRecord(step, text, maps))


def write_record(run_dir: Path, record: ProbeRecord) -> Path:
    """RUN/probe/step-NNNNNNN.npz for the record (an earlier file of that step is replaced)."""
    meta = {
        "step": record.step,
        "text": record.text,
        "maps": [{"name": m.name, "queries": m.queries, "keys": m.keys} for m in record.maps],
    }
    arrays = {f"w{n}": m.weights.astype(np.float16) for n, m in enumerate(record.maps)}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, meta=np.array(json.dumps(meta, ensure_ascii=False)), **arrays)
    path = run_dir / PROBE_DIR / f"step-{record.step:07d}.npz"
    atomic_write_bytes(path, buffer.getvalue())
    return path


def read_records(run_dir: str | Path) -> list[ProbeRecord]:
    """Every record of a run, in step order; a run without any is one clear error."""
    folder = Path(run_dir) / PROBE_DIR
    if not Path(run_dir).is_dir():
        raise QkvError(f"--over-training {run_dir}: no such run directory")
    files = sorted(p for p in folder.glob("step-*.npz") if _NAME.search(p.name))
    if not files:
        raise QkvError(
            f"--over-training {run_dir}: the run has no probe records ({folder} is missing or "
            "empty); qkv train writes them at each evaluation unless train.probe=false"
        )
    return [_read(path) for path in files]


def _read(path: Path) -> ProbeRecord:
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            maps = [
                AttentionMap(m["name"], m["queries"], m["keys"], data[f"w{n}"].astype(np.float32))
                for n, m in enumerate(meta["maps"])
            ]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise QkvError(f"{path}: not a readable probe record ({exc})") from None
    return ProbeRecord(meta["step"], meta["text"], maps)
