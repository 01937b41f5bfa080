"""The encoder-decoder's config tables: the model, its pairs of strings, and the paper's
training recipe; and its presets.

The same rules as every config tree (`config.tree`); config.json carries `"kind": "seq2seq"`
beside the three tables, which is how `qkv.load` and every verb know what a checkpoint holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from qkv.config.choices import (
    ACTIVATIONS,
    BOS_ID,  # noqa: F401
    EOS_ID,  # noqa: F401
    NORM_PLACEMENTS,
    NORM_TYPES,
    PAD_ID,  # noqa: F401
    POSITIONAL_KINDS,
    SPECIAL_TOKENS,  # noqa: F401  (re-exported: qkv.config.seq2seq.SPECIAL_TOKENS)
    TOKENIZER_KINDS,
    check_choice,
    check_fraction,
    check_not_negative,
    check_positive,
)
from qkv.config.gpt import check_bpe_size, check_heads, check_positions
from qkv.config.train import LoopConfig
from qkv.config.tree import ConfigTree
from qkv.errors import QkvError

SEQ2SEQ_KIND = "seq2seq"


@dataclass
class Seq2SeqConfig:
    """The encoder-decoder Transformer (Vaswani et al., 2017). Defaults: the `small` preset.

    Departures from the paper are opt-in, with the GPT's choices: `norm="pre"`,
    `positional="learned"` or `"rotary"`, `norm_type="rmsnorm"`, `activation="swiglu"`,
    `n_kv_head` (grouped-query attention).
    """

    vocab_size: int | None = None  # shared by source and target
    max_len: int = 128  # longest source or target sequence, in tokens (with bos/eos)
    n_encoder_layer: int = 2
    n_decoder_layer: int = 2
    n_embd: int = 96  # d_model
    n_head: int = 4
    n_kv_head: int | None = None  # key/value heads; fewer than n_head is grouped-query attention
    d_ff: int = 384  # the feed-forward network's hidden width
    dropout: float = 0.0  # the paper: 0.1; generated tasks never repeat enough to overfit
    positional: str = "sinusoidal"  # sinusoidal (the paper) | learned | rotary | none
    norm: str = "post"  # post (the paper) | pre
    norm_type: str = "layernorm"  # layernorm | rmsnorm
    activation: str = "relu"  # relu (the paper) | gelu | swiglu | relu2
    qk_norm: bool = False  # RMS-normalise q and k in self-attention (as the GPT can)
    bias: bool = True
    tie_embeddings: bool = True  # one matrix for source, target and output embeddings

    def __post_init__(self) -> None:
        check_positive(self, "max_len", "n_encoder_layer", "n_decoder_layer", "n_embd")
        check_positive(self, "n_head", "d_ff")
        if self.vocab_size is not None:
            check_positive(self, "vocab_size")
        check_heads(self.n_embd, self.n_head, self.n_kv_head)
        if self.n_embd % 2 != 0:
            raise QkvError(f"model.n_embd must be even, got {self.n_embd}")
        check_fraction(self, "dropout")
        check_choice(self, "positional", POSITIONAL_KINDS)
        check_choice(self, "norm", NORM_PLACEMENTS)
        check_choice(self, "norm_type", NORM_TYPES)
        check_choice(self, "activation", ACTIVATIONS)
        check_positions(self.positional, self.n_embd, self.n_embd // self.n_head)


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
        check_positive(self, "n_train", "n_val", "n_test", "synthetic_len")
        check_choice(self, "tokenizer", TOKENIZER_KINDS)
        check_bpe_size(self.tokenizer, self.vocab_size)


@dataclass
class Seq2SeqTrainConfig(LoopConfig):
    """The paper's recipe (section 5.3, 5.4): Adam(0.9, 0.98, 1e-9), the inverse square root
    schedule with warm-up, label smoothing 0.1; batches of sentences of similar length."""

    max_steps: int = 100000
    max_time: float = 600.0  # seconds of training, evaluation excluded (0: no time limit)
    batch_size: int = 64  # sentence pairs per rank and micro-batch
    optimizer: str = "adam"  # adam (the paper) | muon (the blocks' matrices; Adam beside it)
    weight_decay: float = 0.0  # the paper has none
    beta2: float = 0.98
    eps: float = 1e-9
    eval_interval: int = 500
    log_interval: int = 20
    warmup_steps: int = 400  # the paper: 4000, for 100k steps
    lr_scale: float = 0.8  # multiplies d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)
    label_smoothing: float = 0.1
    average_last: int = 5  # the final model averages this many snapshots (0 or 1: none)
    average_every: int = 100  # steps between snapshots
    eval_examples: int = 200  # val pairs decoded greedily for exact match at each eval

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "warmup_steps", "lr_scale", "average_every", "eval_examples")
        check_not_negative("train", self, "average_last")
        check_fraction(self, "label_smoothing")


@dataclass
class Seq2SeqRunConfig(ConfigTree):
    """model + data + train for the encoder-decoder; saved with `"kind": "seq2seq"`."""

    KIND: ClassVar[str] = SEQ2SEQ_KIND
    BEFORE_THE_FIELD: ClassVar[dict] = {"train": {"precision": "accelerator"}}

    model: Seq2SeqConfig = field(default_factory=Seq2SeqConfig)
    data: Seq2SeqDataConfig = field(default_factory=Seq2SeqDataConfig)
    train: Seq2SeqTrainConfig = field(default_factory=Seq2SeqTrainConfig)
