"""A checkpoint is a directory, written file by file, atomically, and read without pickle.

    model.safetensors   the weights (safetensors: plain tensors, nothing executable)
    config.json         the effective, complete config tree, with its model "kind"
    tokenizer.json      the vocabulary (qkv's character format or a `tokenizers` BPE file)
    trainer.pt          the resumable snapshot: weights, optimizer, schedule position, RNG and
                        data position, for --resume; only tensors and plain values, read
                        back with weights_only=True
    metrics.jsonl       one JSON line per log or eval point (written by the trainer)

Each file is written to a temporary name in the same directory, flushed to disk and renamed
over the old one, so a crash mid-save leaves the previous file whole.

What a kill at any moment of a save (SIGKILL, a power cut) guarantees, and why it is enough:

- every file in the directory is whole and loads: the old version or the new one;
- the weights always match config.json and tokenizer.json. A run never changes its
  architecture or its vocabulary (`--resume` refuses another model config; only [train]
  settings may change), so old or new weights fit either version of those two files;
- the files are written in the order config, tokenizer, weights, trainer state, and the
  weights record the step they belong to (the safetensors metadata "step", read by
  `checkpoint_step`), so after a kill between the last two the weights may be one save
  newer than trainer.pt, never older;
- trainer.pt is the unit of resumption: it holds its own copy of the weights beside the
  optimizer state, RNG and data position, all from one step, and it is replaced by a single
  rename. `--resume` always restarts from that snapshot (and says so when model.safetensors
  is newer), so a resumed run reproduces the uninterrupted run's losses exactly on CPU, however
  the previous process ended. The copy costs one more set of weights on disk, next to the
  optimizer's two.

Writing the whole set to a sibling directory and swapping it in would make a save one unit
too, but the run directory also holds metrics.jsonl and best/, which a swap would have to carry
along; the self-contained trainer.pt gives the same guarantee with the simple layout. A kill
mid-file leaves a hidden temporary file (.model.safetensors.*.tmp); the next save into the
directory deletes it.

A save that fails (a full disk: OSError) ends like a kill: the file being written and those
after it keep their old versions, its temporary file is removed, and `QkvError` names the
directory.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from qkv.atomic import atomic_write
from qkv.config import ConfigTree, ModelKind, config_from_tree, kind_of, read_json_config
from qkv.errors import QkvError
from qkv.tokenizer import Tokenizer, load_tokenizer

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
TRAINER_FILE = "trainer.pt"
METRICS_FILE = "metrics.jsonl"
PROBE_DIR = "probe"  # the probe text's attention at each evaluation (viz/probe.py)
STEP_KEY = "step"  # safetensors metadata: the training step the weights belong to


def save_checkpoint(
    directory: Path,
    model: nn.Module,
    config: ConfigTree,
    tokenizer: Tokenizer,
    trainer_state: dict[str, Any] | None = None,
) -> None:
    """Write config, tokenizer and weights (and the trainer's state, for resuming), in order.

    An OSError (a full disk, a read-only directory) becomes a `QkvError` naming the
    directory; the file being written keeps its previous version.
    """
    directory = Path(directory)
    metadata = None
    if trainer_state is not None:
        metadata = {STEP_KEY: str(trainer_state["step"])}
    try:
        _remove_stale_temporaries(directory)
        atomic_write(directory / CONFIG_FILE, config.save_json)
        atomic_write(directory / TOKENIZER_FILE, tokenizer.save)
        atomic_write(
            directory / MODEL_FILE, lambda tmp: save_model(model, str(tmp), metadata=metadata)
        )
        if trainer_state is not None:
            atomic_write(directory / TRAINER_FILE, lambda tmp: torch.save(trainer_state, tmp))
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise QkvError(
            f"cannot save the checkpoint in {directory}: {reason}; the files already there "
            "are whole (free some space and resume with --resume)"
        ) from None


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Add `record` as one JSON line to run_dir/metrics.jsonl; a failed write is one error."""
    path = run_dir / METRICS_FILE
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
    except OSError as exc:
        raise QkvError(f"cannot write {path}: {exc.strerror or exc}") from None


def claim_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a fresh run over an existing one unless asked to overwrite it (then its
    metrics log and its probe records start again); resuming continues it."""
    if resume or not (out / CONFIG_FILE).exists():
        return
    if not overwrite:
        raise QkvError(
            f"{out} already holds a run: pass --resume to continue it, --overwrite to start "
            "afresh, or --out DIR for a new run"
        )
    (out / METRICS_FILE).unlink(missing_ok=True)
    for record in (out / PROBE_DIR).glob("step-*.npz"):
        record.unlink()


def _remove_stale_temporaries(directory: Path) -> None:
    """Delete the half-written files a killed save left behind (see atomic.atomic_write)."""
    if not directory.is_dir():
        return
    for name in (CONFIG_FILE, TOKENIZER_FILE, MODEL_FILE, TRAINER_FILE):
        for stale in directory.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)


def checkpoint_step(directory: str | Path) -> int | None:
    """The step the weights in `directory` were saved at (None if they do not say)."""
    path = Path(directory) / MODEL_FILE
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError):
        return None
    step = metadata.get(STEP_KEY)
    return int(step) if step is not None and step.isdigit() else None


def load_trainer_state(directory: Path) -> dict[str, Any]:
    """Read trainer.pt with torch's weights-only unpickler: no arbitrary objects, no code."""
    path = Path(directory) / TRAINER_FILE
    if not path.exists():
        raise QkvError(f"{path} is missing: the run in {directory} cannot be resumed")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own text urges an unsafe load: not ours to echo
        raise QkvError(
            f"{path} cannot be loaded safely: it holds objects other than tensors and plain "
            "values, and qkv never unpickles those"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise QkvError(f"{path} cannot be loaded safely: {_first_line(exc)}") from None


@dataclass
class Checkpoint:
    """A checkpoint directory, opened: its config.json read once and its kind looked up in
    the table of kinds (`qkv.config.kinds`). The tokenizer and the model load on demand."""

    directory: Path
    kind: ModelKind
    config: ConfigTree

    @cached_property
    def tokenizer(self) -> Tokenizer:
        tokenizer = load_tokenizer(self.directory / TOKENIZER_FILE)
        if self.config.model.vocab_size != tokenizer.vocab_size:
            raise QkvError(
                f"{self.directory}: config says vocab_size={self.config.model.vocab_size} but "
                f"the tokenizer has {tokenizer.vocab_size} entries"
            )
        return tokenizer

    def model(self, device: str | torch.device = "cpu", config: Any = None) -> nn.Module:
        """The kind's model, built from config.json's model table (or from `config`, one
        with the same weights) and filled from model.safetensors."""
        _ = self.tokenizer  # a vocabulary that does not fit the config is reported first
        model = self.kind.model_class()(config or self.config.model)
        _fill_weights(model, self.directory, device)
        return model.to(device)


def open_checkpoint(directory: str | Path) -> Checkpoint:
    """Open a checkpoint directory: read config.json once, find its kind."""
    directory = Path(directory)
    if not directory.is_dir():
        raise QkvError(f"checkpoint {directory} does not exist or is not a directory")
    path = directory / CONFIG_FILE
    tree = read_json_config(path, f"is {directory} a qkv checkpoint?")
    return Checkpoint(directory, kind_of(tree, str(path)), config_from_tree(tree, str(path)))


def load_checkpoint(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Tokenizer, ConfigTree]:
    """-> (model, tokenizer, config) of a checkpoint of any kind."""
    checkpoint = open_checkpoint(directory)
    return checkpoint.model(device), checkpoint.tokenizer, checkpoint.config


def load(directory: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Tokenizer]:
    """Load a checkpoint directory -> (model in eval mode, tokenizer), ready to sample
    (a GPT) or to translate (a `Seq2SeqTransformer`, with `qkv.decoding`)."""
    model, tokenizer, _ = load_checkpoint(directory, device)
    return model.eval(), tokenizer


def _fill_weights(model: torch.nn.Module, directory: Path, device: str | torch.device) -> None:
    weights = directory / MODEL_FILE
    if not weights.exists():
        raise QkvError(f"{weights} is missing: is {directory} a qkv checkpoint?")
    try:
        load_model(model, str(weights), strict=True, device=str(device))
    except (SafetensorError, OSError) as exc:  # truncated, corrupt or unreadable
        raise QkvError(
            f"{weights} is not a readable safetensors file: {_first_line(exc)}"
        ) from None
    except RuntimeError as exc:  # torch's header line, then one line per wrong tensor
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else _first_line(exc)
        raise QkvError(f"{weights} does not match its config.json: {detail}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
