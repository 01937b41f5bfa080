"""Configuration: typed dataclasses, one tree for model, data and training.

A run is described by `RunConfig(model=GPTConfig, data=DataConfig, train=TrainConfig)`. It
comes from the defaults below, then a TOML file with [model], [data] and [train] tables, then
`key=value` overrides from the command line (`model.n_layer=6 train.lr=1e-3`; a bare key
such as `n_layer=6` works when only one table has it). Every value is checked against its
field's type and every choice is stored as a string, so the effective config saves to JSON
with the checkpoint and loads back unchanged. Mistakes raise `QkvError` with a did-you-mean.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from qkv.blocks import ACTIVATIONS, NORM_PLACEMENTS, NORM_TYPES
from qkv.errors import QkvError
from qkv.positional import POSITIONAL_KINDS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def _check_positive(owner: object, *names: str) -> None:
    for name in names:
        value = getattr(owner, name)
        if value <= 0:
            raise QkvError(f"{type(owner).__name__}.{name} must be positive, got {value}")


def _check_choice(owner: object, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(owner, name)
    if value not in choices:
        raise QkvError(f"{type(owner).__name__}.{name} must be one of {choices}, got {value!r}")


def _check_fraction(owner: object, name: str, low: float = 0.0, high: float = 1.0) -> None:
    value = getattr(owner, name)
    if not low <= value < high:
        raise QkvError(f"{type(owner).__name__}.{name} must be in [{low}, {high}), got {value}")


@dataclass
class GPTConfig:
    """The decoder-only model. `vocab_size` comes from the tokenizer when qkv trains.

    The defaults are the small model that learned tinyshakespeare best in 75 s of training on
    a 2-core CPU in benchmarks/sweep_cpu.py (benchmarks/README.md has the sweep).
    """

    vocab_size: int | None = None
    block_size: int = 96  # context length T
    n_layer: int = 3
    n_head: int = 3
    n_embd: int = 96  # C; each head has D = C / H channels
    n_kv_head: int | None = None  # key/value heads; fewer than n_head is grouped-query attention
    dropout: float = 0.0
    bias: bool = True
    positional: str = "rotary"  # learned | sinusoidal | rotary
    norm: str = "pre"  # where the norm sits: pre (GPT-2) | post (the paper)
    norm_type: str = "layernorm"  # layernorm | rmsnorm
    activation: str = "relu"  # relu | gelu | swiglu

    def __post_init__(self) -> None:
        _check_positive(self, "block_size", "n_layer", "n_head", "n_embd")
        if self.vocab_size is not None:
            _check_positive(self, "vocab_size")
        if self.n_embd % self.n_head != 0:
            raise QkvError(
                f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head}; "
                "set model.n_head as well"
            )
        _check_fraction(self, "dropout")
        _check_choice(self, "positional", POSITIONAL_KINDS)
        _check_choice(self, "norm", NORM_PLACEMENTS)
        _check_choice(self, "norm_type", NORM_TYPES)
        _check_choice(self, "activation", ACTIVATIONS)
        if self.n_kv_head is not None:
            _check_positive(self, "n_kv_head")
            if self.n_head % self.n_kv_head != 0:
                raise QkvError(
                    f"model.n_head={self.n_head} must be divisible by "
                    f"model.n_kv_head={self.n_kv_head}"
                )
        if self.positional == "sinusoidal" and self.n_embd % 2 != 0:
            raise QkvError(f"sinusoidal positions need an even model.n_embd, got {self.n_embd}")
        if self.positional == "rotary" and self.head_size % 2 != 0:
            raise QkvError(f"rotary positions need an even head size, got {self.head_size}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head


@dataclass
class DataConfig:
    """Where the text comes from (a named corpus or a path) and how it becomes tokens.

    `tokenizer` is "char" (one token per character), "bpe" (a byte-level BPE of `vocab_size`
    tokens learned from the train split), or a directory holding a pretrained BPE tokenizer
    (GPT-2's vocab.json + merges.txt, or a tokenizer.json).
    """

    source: str = "shakespeare"
    val_fraction: float = 0.1  # the last 10% is the val split (nanoGPT's convention)
    tokenizer: str = "char"  # char | bpe | a directory with a pretrained tokenizer
    vocab_size: int | None = None  # bpe only; None: 1024

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise QkvError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if not self.tokenizer:
            raise QkvError("data.tokenizer must be 'char', 'bpe' or a directory, got ''")
        if self.vocab_size is not None:
            if self.tokenizer != "bpe":
                raise QkvError(
                    f"data.vocab_size sets the size of a BPE to learn; it needs "
                    f"data.tokenizer='bpe', not {self.tokenizer!r}"
                )
            if self.vocab_size < 256:  # the 256 byte tokens come first
                raise QkvError(f"data.vocab_size must be at least 256, got {self.vocab_size}")


DEVICES = ("auto", "cpu", "cuda", "mps")
OPTIMIZERS = ("adamw", "muon")


@dataclass
class TrainConfig:
    """The optimisation. Defaults train a readable Shakespeare model in ~3 minutes on 2 cores."""

    out_dir: str = "out"
    max_steps: int = 5000  # stop after this many optimizer steps
    max_time: float = 180.0  # or after this many seconds of training (0: no time limit)
    decay_steps: int = 0  # length of the cosine schedule in steps (0: max_steps)
    warmup_steps: int = 100
    batch_size: int = 16
    grad_accum: int = 1  # micro-batches per optimizer step
    optimizer: str = "muon"  # muon (the blocks' matrices; AdamW for the rest) | adamw
    lr: float = 3e-3
    min_lr: float = 2e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0: no clipping
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10
    device: str = "auto"
    seed: int = 1337
    compile: bool = False  # torch.compile the model for the training steps
    skip_nonfinite: bool = False  # skip a NaN/inf batch instead of stopping (a sync per step)
    fsdp: bool = False  # shard parameters, gradients, optimizer state over torchrun's ranks
    dist_timeout: float = 600.0  # seconds a rank waits for the others in one collective

    def __post_init__(self) -> None:
        _check_positive(self, "max_steps", "batch_size", "grad_accum", "lr")
        _check_positive(self, "eval_interval", "eval_iters", "log_interval")
        _check_positive(self, "dist_timeout")
        for name in ("max_time", "decay_steps", "warmup_steps", "min_lr", "weight_decay"):
            if getattr(self, name) < 0:
                raise QkvError(f"train.{name} must not be negative, got {getattr(self, name)}")
        if self.grad_clip < 0:
            raise QkvError(f"train.grad_clip must not be negative, got {self.grad_clip}")
        _check_fraction(self, "beta1")
        _check_fraction(self, "beta2")
        _check_choice(self, "device", DEVICES)
        _check_choice(self, "optimizer", OPTIMIZERS)

    @property
    def schedule_steps(self) -> int:
        return self.decay_steps or self.max_steps


@dataclass
class RunConfig:
    """Everything a training run needs; saved as config.json beside the weights."""

    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    @classmethod
    def sections(cls) -> dict[str, type]:
        """{table name: its dataclass}; a subclass with other tables overrides this."""
        return _sections()

    @classmethod
    def from_dict(cls, tree: dict[str, Any], origin: str = "config") -> RunConfig:
        """Build from nested dicts, rejecting unknown tables and keys and wrong types."""
        sections = cls.sections()
        unknown = set(tree) - set(sections)
        if unknown:
            name = sorted(unknown)[0]
            raise QkvError(f"{origin}: unknown table [{name}]{_did_you_mean(name, sections)}")
        built = {}
        for section, section_cls in sections.items():
            values = tree.get(section, {})
            if not isinstance(values, dict):
                raise QkvError(f"{origin}: [{section}] must be a table of key = value lines")
            built[section] = _build_section(section, section_cls, values, origin)
        return cls(**built)

    def with_overrides(self, overrides: list[str]) -> RunConfig:
        """Apply `key=value` strings: `model.n_layer=6`, or a bare key that is unambiguous."""
        values = {}
        for item in overrides:
            section, key, raw = _parse_override(item, self.sections())
            values[f"{section}.{key}"] = _parse_value(raw)
        return self.with_values(values)

    def with_values(self, values: dict[str, Any]) -> RunConfig:
        """A copy with `{"section.key": value}` set, checked like everything else."""
        tree = self.to_dict()
        for dotted, value in values.items():
            section, key = dotted.split(".", 1)
            tree[section][key] = value
        return type(self).from_dict(tree, origin="override")

    def save_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


def _sections() -> dict[str, type]:
    return {f.name: f.default_factory for f in fields(RunConfig)}  # type: ignore[misc]


def _field_types(section_cls: type) -> dict[str, type]:
    defaults = section_cls()
    return {f.name: type(getattr(defaults, f.name)) for f in fields(section_cls)}


def _build_section(section: str, section_cls: type, values: dict, origin: str) -> Any:
    types = _field_types(section_cls)
    checked = {}
    for key, value in values.items():
        if key not in types:
            hint = _did_you_mean(key, types)
            raise QkvError(f"{origin}: unknown key {section}.{key}{hint}")
        checked[key] = _coerce(f"{section}.{key}", value, types[key], origin)
    try:
        return section_cls(**checked)
    except TypeError as exc:  # a value of a type the checks above did not foresee
        raise QkvError(f"{origin}: bad value in [{section}]: {exc}") from None


def _coerce(name: str, value: Any, expected: type, origin: str) -> Any:
    """Accept a value of the field's own type; ints stand for floats; None only if unset.

    NaN and infinity are refused: no setting means anything with them.
    """
    if value is None and expected is type(None):
        return None
    if expected is type(None):  # a field whose default is None (model.vocab_size)
        expected = int
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, float) and not math.isfinite(value):
        raise QkvError(f"{origin}: {name} must be a finite number, got {value}")
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    raise QkvError(
        f"{origin}: {name} must be {expected.__name__}, got {type(value).__name__} {value!r}"
    )


def _parse_override(item: str, sections: dict[str, type]) -> tuple[str, str, str]:
    if "=" not in item:
        raise QkvError(f"override {item!r} must look like key=value, e.g. model.n_layer=6")
    key, raw = item.split("=", 1)
    key = key.strip()
    if "." in key:
        section, name = key.split(".", 1)
        if section not in sections:
            raise QkvError(
                f"override {item!r}: unknown table {section!r}, use one of {list(sections)}"
            )
        if name not in _field_types(sections[section]):
            hint = _did_you_mean(name, _field_types(sections[section]))
            raise QkvError(f"override {item!r}: unknown key {key}{hint}")
        return section, name, raw
    owners = [s for s, cls in sections.items() if key in _field_types(cls)]
    if len(owners) == 1:
        return owners[0], key, raw
    if owners:
        raise QkvError(f"override {item!r}: {key} is in {owners}; write e.g. {owners[0]}.{key}")
    every_key = [f"{s}.{k}" for s, cls in sections.items() for k in _field_types(cls)]
    every_key += [k for cls in sections.values() for k in _field_types(cls)]
    raise QkvError(f"override {item!r}: unknown key {key}{_did_you_mean(key, every_key)}")


def _parse_value(raw: str) -> Any:
    """Read a command-line value as TOML would (numbers, true/false, quoted strings), else text."""
    raw = raw.strip()
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _did_you_mean(word: str, candidates) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults, then the TOML file at `path` (if any), then the `key=value` overrides."""
    config = RunConfig()
    if path is not None:
        config = RunConfig.from_dict(read_toml(Path(path)), origin=str(path))
    return config.with_overrides(overrides or [])


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise QkvError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise QkvError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise QkvError(f"config file {path} is not valid TOML: {exc}") from None


def read_json_config(path: Path, missing_hint: str, what: str = "JSON config") -> dict[str, Any]:
    """The JSON object in `path`; a missing, unreadable or malformed file is a one-line
    QkvError (`missing_hint` follows "is missing:", e.g. "is DIR a qkv checkpoint?"; `what`
    names the kind of file in the message)."""
    try:
        tree = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QkvError(f"{path} is missing: {missing_hint}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QkvError(f"{path} is not a readable {what}: {exc}") from None
    if not isinstance(tree, dict):
        raise QkvError(f"{path} must hold a JSON object")
    return tree


# What a saved config meant by a field it does not have: it was written before the field
# existed, when qkv behaved as the value here says (not as today's default may).
BEFORE_THE_FIELD = {"train": {"optimizer": "adamw"}}


def config_from_json(path: Path) -> RunConfig:
    """Load the effective config that a checkpoint saved."""
    tree = read_json_config(path, f"is {path.parent} a qkv checkpoint?")
    for section, values in BEFORE_THE_FIELD.items():
        if isinstance(tree.get(section), dict):
            tree[section] = {**values, **tree[section]}
    return RunConfig.from_dict(tree, origin=str(path))
