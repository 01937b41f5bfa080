"""Hugging Face GPT-2 directories in and out of qkv checkpoints (`qkv import-hf`, `export-hf`).

A Hugging Face model directory holds config.json (a `GPT2Config`), the weights
(model.safetensors, or the older pytorch_model.bin) and the tokenizer's files (tokenizer.json,
or GPT-2's vocab.json + merges.txt). Importing reads the three, converts the weights with
`qkv.interop.from_hf` (a copy by key, four matrices transposed) and writes a qkv checkpoint
directory; exporting goes the other way with `to_hf` and `save_pretrained`.

Nothing is unpickled from the directory: pytorch_model.bin is read with torch's weights-only
unpickler, which rebuilds tensors and plain containers and refuses anything else (a pickle
can name any function to call while it loads). Nothing is downloaded either: fetch the
directory with any tool first. `transformers` is needed (for `GPT2Config` and
`GPT2LMHeadModel`) and imported only here, inside the functions.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from qkv.checkpoint import CONFIG_FILE, Checkpoint, open_checkpoint, save_checkpoint
from qkv.config import DataConfig, GPTConfig, RunConfig, read_json_config
from qkv.errors import QkvError
from qkv.interop.gpt2 import from_hf, gpt_config, require_transformers, to_hf
from qkv.models.gpt import GPT
from qkv.tokenizer import BPETokenizer, Tokenizer

HF_CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
PICKLE_FILE = "pytorch_model.bin"


@dataclass
class Imported:
    """What `import_hf` wrote: the model (for a summary line) and where."""

    model: GPT
    tokenizer: Tokenizer
    out_dir: Path


def import_hf(directory: str | Path, out: str | Path) -> Imported:
    """Convert the Hugging Face GPT-2 in `directory` into a qkv checkpoint directory `out`."""
    directory, out = Path(directory), Path(out)
    if not directory.is_dir():
        raise QkvError(f"{directory} does not exist or is not a directory")
    _refuse_existing(out, CONFIG_FILE)
    config = read_hf_config(directory)
    tokenizer = BPETokenizer.from_pretrained(directory)
    if tokenizer.vocab_size != config.vocab_size:
        raise QkvError(
            f"{directory}: the tokenizer has {tokenizer.vocab_size} tokens but the model's "
            f"vocabulary is {config.vocab_size}"
        )
    model = from_hf(read_hf_weights(directory), config=config)
    run = RunConfig(model=config, data=DataConfig(tokenizer=str(directory.resolve())))
    save_checkpoint(out, model.eval(), run, tokenizer)
    return Imported(model, tokenizer, out)


def read_hf_config(directory: Path) -> GPTConfig:
    """qkv's GPTConfig for the directory's config.json (a GPT-2 config, or a one-line error)."""
    path = directory / HF_CONFIG_FILE
    tree = read_json_config(path, f"is {directory} a Hugging Face model?")
    if tree.get("model_type") != "gpt2":
        kind = tree.get("model_type")
        raise QkvError(f"{path}: qkv imports GPT-2 (model_type 'gpt2'), not {kind!r}")
    transformers = require_transformers()
    try:
        hf = transformers.GPT2Config.from_dict(tree)
    except (TypeError, ValueError) as exc:
        raise QkvError(f"{path} is not a valid GPT-2 config: {exc}") from None
    return gpt_config(hf)


def read_hf_weights(directory: Path) -> dict[str, Tensor]:
    """The state dict in model.safetensors, else pytorch_model.bin (weights only), in float32."""
    safetensors, pickled = directory / SAFETENSORS_FILE, directory / PICKLE_FILE
    if safetensors.is_file():
        state = _load_safetensors(safetensors)
    elif pickled.is_file():
        state = load_weights_only(pickled)
    elif (directory / f"{SAFETENSORS_FILE}.index.json").is_file():
        raise QkvError(f"{directory}: sharded weights (*.index.json) are not supported")
    else:
        raise QkvError(f"{directory} holds no {SAFETENSORS_FILE} or {PICKLE_FILE}")
    # qkv trains and samples in float32; half-precision files widen without loss
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise QkvError(f"{path} is not a readable safetensors file: {_first_line(exc)}") from None


def load_weights_only(path: Path) -> dict[str, Tensor]:
    """Read a pickled state dict with torch's weights-only unpickler: tensors, never code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise QkvError(
            f"{path} was refused: it is not a plain tensor file ({_first_line(exc)})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise QkvError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return state


def export_hf(checkpoint: Checkpoint | str | Path, out: str | Path) -> list[str]:
    """Write the qkv checkpoint as a directory that `GPT2LMHeadModel.from_pretrained` loads.

    Returns the names of the files written. A BPE tokenizer goes along as tokenizer.json and
    GPT-2's vocab.json + merges.txt; a character tokenizer has no Hugging Face form.
    """
    out = Path(out)
    _refuse_existing(out, HF_CONFIG_FILE)
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = open_checkpoint(checkpoint)
    model, tokenizer = checkpoint.model().eval(), checkpoint.tokenizer
    hf = to_hf(model)
    if isinstance(tokenizer, BPETokenizer):
        _set_end_of_text(hf, tokenizer)
    hf.save_pretrained(str(out))
    if isinstance(tokenizer, BPETokenizer):
        tokenizer.save(out / "tokenizer.json")
        tokenizer.save_vocab_and_merges(out)
    return sorted(p.name for p in out.iterdir() if p.is_file())


def _set_end_of_text(hf, tokenizer: BPETokenizer) -> None:
    """Tell Hugging Face's generate where a text ends, when the vocabulary has GPT-2's token."""
    if tokenizer.end_of_text_id is None:
        return
    for config in (hf.config, getattr(hf, "generation_config", None)):
        if config is not None:
            config.bos_token_id = config.eos_token_id = tokenizer.end_of_text_id


def _refuse_existing(out: Path, marker: str) -> None:
    if (out / marker).exists():
        raise QkvError(f"{out} already holds a model ({marker}); choose a new directory")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
