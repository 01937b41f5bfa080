"""A checkpoint is a directory, written file by file, atomically, and read without pickle.

    model.safetensors   the weights (safetensors: plain tensors, nothing executable)
    config.json         the effective, complete RunConfig
    tokenizer.json      the vocabulary (qkv's character format or a `tokenizers` BPE file)
    trainer.pt          optimizer, schedule position, RNG and data position, for --resume;
                        only tensors and plain values, read back with weights_only=True
    metrics.jsonl       one JSON line per log or eval point (written by the trainer)

Each file is written to a temporary name in the same directory, flushed to disk and renamed
over the old one, so a crash mid-save leaves the previous file whole.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from qkv.atomic import atomic_write
from qkv.config import RunConfig, config_from_json
from qkv.errors import QkvError
from qkv.models.gpt import GPT
from qkv.tokenizer import Tokenizer, load_tokenizer

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
TRAINER_FILE = "trainer.pt"
METRICS_FILE = "metrics.jsonl"


def save_checkpoint(
    directory: Path,
    model: GPT,
    config: RunConfig,
    tokenizer: Tokenizer,
    trainer_state: dict[str, Any] | None = None,
) -> None:
    """Write weights, config and tokenizer (and the trainer's state, for resuming)."""
    directory = Path(directory)
    atomic_write(directory / CONFIG_FILE, config.save_json)
    atomic_write(directory / TOKENIZER_FILE, tokenizer.save)
    atomic_write(directory / MODEL_FILE, lambda tmp: save_model(model, str(tmp)))
    if trainer_state is not None:
        atomic_write(directory / TRAINER_FILE, lambda tmp: torch.save(trainer_state, tmp))


def load_checkpoint(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[GPT, Tokenizer, RunConfig]:
    """Rebuild the model from config.json and fill it from model.safetensors."""
    directory = Path(directory)
    if not directory.is_dir():
        raise QkvError(f"checkpoint {directory} does not exist or is not a directory")
    config = config_from_json(directory / CONFIG_FILE)
    tokenizer = load_tokenizer(directory / TOKENIZER_FILE)
    if config.model.vocab_size != tokenizer.vocab_size:
        raise QkvError(
            f"{directory}: config says vocab_size={config.model.vocab_size} but the tokenizer "
            f"has {tokenizer.vocab_size} entries"
        )
    model = GPT(config.model)
    weights = directory / MODEL_FILE
    if not weights.exists():
        raise QkvError(f"{weights} is missing: is {directory} a qkv checkpoint?")
    try:
        load_model(model, str(weights), strict=True, device=str(device))
    except (RuntimeError, SafetensorError, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QkvError(f"{weights} does not match its config.json: {first_line}") from None
    return model.to(device), tokenizer, config


def load_trainer_state(directory: Path) -> dict[str, Any]:
    """Read trainer.pt with torch's weights-only unpickler: no arbitrary objects, no code."""
    path = Path(directory) / TRAINER_FILE
    if not path.exists():
        raise QkvError(f"{path} is missing: the run in {directory} cannot be resumed")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QkvError(f"{path} cannot be loaded safely: {first_line}") from None


def load(directory: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Tokenizer]:
    """Load a checkpoint directory -> (model in eval mode, tokenizer), ready to sample."""
    model, tokenizer, _ = load_checkpoint(directory, device)
    return model.eval(), tokenizer
