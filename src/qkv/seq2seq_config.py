"""Configuration of the encoder-decoder: model, data and training tables, and presets.

The same layout and rules as `config.RunConfig` (typed dataclasses, TOML tables, `key=value`
overrides with did-you-mean, JSON in the checkpoint), with the seq2seq model's fields and the
paper's training recipe. config.json carries `"kind": "seq2seq"` beside the three tables, so
`qkv eval`, `qkv translate` and `qkv.load` know which model a checkpoint holds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from qkv.config import RunConfig, _check_choice, _check_fraction, _check_positive
from qkv.errors import QkvError

SEQ2SEQ_KIND = "seq2seq"
SEQ2SEQ_POSITIONAL = ("sinusoidal", "learned")
SEQ2SEQ_ACTIVATIONS = ("relu", "gelu")


@dataclass
class Seq2SeqConfig:
    """The encoder-decoder Transformer (Vaswani et al., 2017). Defaults: the `small` preset.

    Departures from the paper are opt-in: `norm="pre"`, `positional="learned"`.
    """

    vocab_size: int | None = None  # shared by source and target
    max_len: int = 128  # longest source or target sequence, in tokens (with bos/eos)
    n_encoder_layer: int = 2
    n_decoder_layer: int = 2
    n_embd: int = 96  # d_model
    n_head: int = 4
    d_ff: int = 384  # the feed-forward network's hidden width
    dropout: float = 0.0  # the paper: 0.1; generated tasks never repeat enough to overfit
    positional: str = "sinusoidal"  # sinusoidal (the paper) | learned
    norm: str = "post"  # post (the paper) | pre
    norm_type: str = "layernorm"  # layernorm | rmsnorm
    activation: str = "relu"  # relu (the paper) | gelu
    bias: bool = True
    tie_embeddings: bool = True  # one matrix for source, target and output embeddings

    def __post_init__(self) -> None:
        _check_positive(self, "max_len", "n_encoder_layer", "n_decoder_layer", "n_embd")
        _check_positive(self, "n_head", "d_ff")
        if self.vocab_size is not None:
            _check_positive(self, "vocab_size")
        if self.n_embd % self.n_head != 0:
            raise QkvError(
                f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head}"
            )
        if self.n_embd % 2 != 0:
            raise QkvError(f"model.n_embd must be even, got {self.n_embd}")
        _check_fraction(self, "dropout")
        _check_choice(self, "positional", SEQ2SEQ_POSITIONAL)
        _check_choice(self, "norm", ("pre", "post"))
        _check_choice(self, "norm_type", ("layernorm", "rmsnorm"))
        _check_choice(self, "activation", SEQ2SEQ_ACTIVATIONS)


# The paper's base model (Table 3), and smaller ones for a CPU.
SEQ2SEQ_PRESETS: dict[str, dict[str, Any]] = {
    "base": dict(
        n_encoder_layer=6, n_decoder_layer=6, n_embd=512, n_head=8, d_ff=2048, dropout=0.1,
        max_len=256,
    ),
    "small": dict(
        n_encoder_layer=2, n_decoder_layer=2, n_embd=96, n_head=4, d_ff=384, dropout=0.0,
    ),
    "tiny": dict(n_encoder_layer=1, n_decoder_layer=1, n_embd=64, n_head=4, d_ff=128, dropout=0.0),
}  # fmt: skip


def preset_values(name: str) -> dict[str, Any]:
    """{"model.field": value} for a named preset, as overrides."""
    if name not in SEQ2SEQ_PRESETS:
        raise QkvError(f"unknown preset {name!r}; choose one of {sorted(SEQ2SEQ_PRESETS)}")
    return {f"model.{key}": value for key, value in SEQ2SEQ_PRESETS[name].items()}


@dataclass
class Seq2SeqDataConfig:
    """Pairs of (source, target) strings: a built-in task (qkv.data.tasks) or a TSV file.

    Generated tasks draw `n_train`, `n_val` and `n_test` examples from disjoint pools, from
    `seed`; a TSV file's lines are shuffled with `seed` and split 90/5/5.
    """

    source: str = "dates"  # dates | numbers | copy | reverse | sort | a .tsv file
    tokenizer: str = "char"  # char | bpe (learned from the train split's sources and targets)
    vocab_size: int | None = None  # bpe only; None: 1024
    n_train: int = 50000
    n_val: int = 500
    n_test: int = 1000
    seed: int = 0
    synthetic_len: int = 12  # copy / reverse / sort: longest source string

    def __post_init__(self) -> None:
        _check_positive(self, "n_train", "n_val", "n_test", "synthetic_len")
        _check_choice(self, "tokenizer", ("char", "bpe"))
        if self.vocab_size is not None and self.tokenizer != "bpe":
            raise QkvError("data.vocab_size sets the size of a BPE; it needs data.tokenizer='bpe'")
        if self.vocab_size is not None and self.vocab_size < 256:
            raise QkvError(f"data.vocab_size must be at least 256, got {self.vocab_size}")


@dataclass
class Seq2SeqTrainConfig:
    """The paper's recipe (section 5.3, 5.4): Adam(0.9, 0.98, 1e-9), the inverse square root
    schedule with warm-up, label smoothing 0.1; batches of sentences of similar length."""

    out_dir: str = "out"
    max_steps: int = 100000
    max_time: float = 600.0  # seconds of training, evaluation excluded (0: no time limit)
    batch_size: int = 64  # sentence pairs per batch
    warmup_steps: int = 400  # the paper: 4000, for 100k steps
    lr_scale: float = 0.8  # multiplies d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)
    label_smoothing: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-9
    grad_clip: float = 1.0  # 0: no clipping (the paper does not clip)
    average_last: int = 5  # the final model averages this many snapshots (0 or 1: none)
    average_every: int = 100  # steps between snapshots
    eval_interval: int = 500
    eval_examples: int = 200  # val pairs decoded greedily for exact match at each eval
    log_interval: int = 20
    device: str = "auto"
    seed: int = 1337

    def __post_init__(self) -> None:
        _check_positive(self, "max_steps", "batch_size", "lr_scale", "eps")
        _check_positive(self, "eval_interval", "eval_examples", "log_interval", "average_every")
        for name in ("max_time", "warmup_steps", "grad_clip", "average_last"):
            if getattr(self, name) < 0:
                raise QkvError(f"train.{name} must not be negative, got {getattr(self, name)}")
        if self.warmup_steps == 0:
            raise QkvError("train.warmup_steps must be positive, got 0")
        _check_fraction(self, "label_smoothing")
        _check_fraction(self, "beta1")
        _check_fraction(self, "beta2")
        _check_choice(self, "device", ("auto", "cpu", "cuda", "mps"))


@dataclass
class Seq2SeqRunConfig(RunConfig):
    """model + data + train for the encoder-decoder; saved with `"kind": "seq2seq"`."""

    model: Seq2SeqConfig = field(default_factory=Seq2SeqConfig)  # type: ignore[assignment]
    data: Seq2SeqDataConfig = field(default_factory=Seq2SeqDataConfig)  # type: ignore[assignment]
    train: Seq2SeqTrainConfig = field(default_factory=Seq2SeqTrainConfig)  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": SEQ2SEQ_KIND, **dataclasses.asdict(self)}

    @classmethod
    def sections(cls) -> dict[str, type]:
        return {f.name: f.default_factory for f in dataclasses.fields(cls)}  # type: ignore[misc]

    @classmethod
    def from_dict(cls, tree: dict[str, Any], origin: str = "config") -> Seq2SeqRunConfig:
        tree = dict(tree)
        kind = tree.pop("kind", SEQ2SEQ_KIND)
        if kind != SEQ2SEQ_KIND:
            raise QkvError(f"{origin}: kind must be {SEQ2SEQ_KIND!r}, got {kind!r}")
        return super().from_dict(tree, origin)  # type: ignore[return-value]


# The special tokens, the same ids in every seq2seq vocabulary (tokenizer.Seq2SeqTokenizer).
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
