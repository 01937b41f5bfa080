"""The GPT's config tables: the decoder-only model, its text data, and its training.

The defaults are the small model that learned tinyshakespeare best in 75 s of training on a
2-core CPU in benchmarks/sweep_cpu.py (benchmarks/README.md has the sweep).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from qkv.config.choices import (
    ACTIVATIONS,
    NORM_PLACEMENTS,
    NORM_TYPES,
    POSITIONAL_KINDS,
    SCHEDULES,
    check_choice,
    check_fraction,
    check_not_negative,
    check_positive,
)
from qkv.config.train import LoopConfig
from qkv.config.tree import ConfigTree
from qkv.errors import QkvError


@dataclass
class GPTConfig:
    """The decoder-only model. `vocab_size` comes from the tokenizer when qkv trains."""

    vocab_size: int | None = None
    block_size: int = 96  # context length T
    n_layer: int = 3
    n_head: int = 3
    n_embd: int = 96  # C; each head has D = C / H channels
    n_kv_head: int | None = None  # key/value heads; fewer than n_head is grouped-query attention
    dropout: float = 0.0
    bias: bool = True
    positional: str = "rotary"  # learned | sinusoidal | rotary | none
    norm: str = "pre"  # where the norm sits: pre (GPT-2) | post (the paper)
    norm_type: str = "layernorm"  # layernorm | rmsnorm
    activation: str = "relu"  # relu | gelu | swiglu | relu2
    # the speedrun's options (benchmarks/LOG.md says which won at character level)
    qk_norm: bool = False  # RMS-normalise each head's q and k before the dot product
    tie_embeddings: bool = True  # the LM head is the token embedding E (False: its own)
    zero_init_proj: bool = False  # start every block's output projections at zero
    logit_softcap: float = 0.0  # logits = cap * tanh(logits / cap); 0: off
    value_embeddings: bool = False  # each layer adds a learned embedding of the token to v
    x0_mix: bool = False  # before each block x = a_l x + b_l x_0, learned scalars

    def __post_init__(self) -> None:
        check_positive(self, "block_size", "n_layer", "n_head", "n_embd")
        check_not_negative("model", self, "logit_softcap")
        if self.vocab_size is not None:
            check_positive(self, "vocab_size")
        check_heads(self.n_embd, self.n_head, self.n_kv_head, "; set model.n_head as well")
        check_fraction(self, "dropout")
        check_choice(self, "positional", POSITIONAL_KINDS)
        check_choice(self, "norm", NORM_PLACEMENTS)
        check_choice(self, "norm_type", NORM_TYPES)
        check_choice(self, "activation", ACTIVATIONS)
        check_positions(self.positional, self.n_embd, self.head_size)

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head


def check_heads(n_embd: int, n_head: int, n_kv_head: int | None, hint: str = "") -> None:
    """C must split into H heads, and H query heads into n_kv_head groups."""
    if n_embd % n_head != 0:
        raise QkvError(f"model.n_embd={n_embd} must be divisible by model.n_head={n_head}{hint}")
    if n_kv_head is not None:
        if n_kv_head <= 0:
            raise QkvError(f"model.n_kv_head must be positive, got {n_kv_head}")
        if n_head % n_kv_head != 0:
            raise QkvError(
                f"model.n_head={n_head} must be divisible by model.n_kv_head={n_kv_head}"
            )


def check_positions(positional: str, n_embd: int, head_size: int) -> None:
    """Sinusoids pair up channels, rotary embeddings pair up each head's channels."""
    if positional == "sinusoidal" and n_embd % 2 != 0:
        raise QkvError(f"sinusoidal positions need an even model.n_embd, got {n_embd}")
    if positional == "rotary" and head_size % 2 != 0:
        raise QkvError(f"rotary positions need an even head size, got {head_size}")


@dataclass
class DataConfig:
    """Where the text comes from (a named corpus or a path) and how it becomes tokens.

    `tokenizer` is "char" (one token per character), "bpe" (a byte-level BPE of `vocab_size`
    tokens learned from the train split), or a directory holding a pretrained BPE tokenizer
    (GPT-2's vocab.json + merges.txt, or a tokenizer.json). A source that `qkv prepare`
    wrote brings its own tokenizer.
    """

    source: str = "shakespeare"
    val_fraction: float = 0.1  # the last 10% is the val split (nanoGPT's convention)
    tokenizer: str = "char"  # char | bpe | a directory with a pretrained tokenizer
    vocab_size: int | None = None  # bpe only; None: 1024
    text_field: str = "text"  # the field of a JSONL record, or Parquet column, with the text

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise QkvError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if not self.tokenizer:
            raise QkvError("data.tokenizer must be 'char', 'bpe' or a directory, got ''")
        if not self.text_field:
            raise QkvError("data.text_field must name a field, got ''")
        check_bpe_size(self.tokenizer, self.vocab_size)


def check_bpe_size(tokenizer: str, vocab_size: int | None) -> None:
    if vocab_size is None:
        return
    if tokenizer != "bpe":
        raise QkvError(
            f"data.vocab_size sets the size of a BPE to learn; it needs "
            f"data.tokenizer='bpe', not {tokenizer!r}"
        )
    if vocab_size < 256:  # the 256 byte tokens come first
        raise QkvError(f"data.vocab_size must be at least 256, got {vocab_size}")


@dataclass
class TrainConfig(LoopConfig):
    """The language model's training: Muon and AdamW, warm-up then cosine decay.

    The defaults train a readable Shakespeare model in ~3 minutes on 2 cores.
    """

    decay_steps: int = 0  # length of the cosine schedule in steps (0: max_steps)
    warmup_steps: int = 100
    lr: float = 3e-3
    min_lr: float = 2e-4
    eval_iters: int = 20  # random batches of each split per evaluation
    schedule: str = "cosine"  # after warm-up: cosine | trapezoid (constant, then linear)
    cooldown_fraction: float = 0.4  # trapezoid: the last fraction of the run, lr -> min_lr
    seq_warmup: float = 0.0  # rows grow from seq_start to block_size over this fraction
    seq_start: int = 32  # the first rows' length under seq_warmup
    batch_warmup: float = 0.0  # batches grow from batch_start rows to batch_size over this
    batch_start: int = 4  # the first batches' rows under batch_warmup

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "lr", "eval_iters", "seq_start", "batch_start")
        for name in ("seq_warmup", "batch_warmup"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise QkvError(f"train.{name} must be in [0, 1], got {getattr(self, name)}")
        check_not_negative("train", self, "decay_steps", "warmup_steps", "min_lr")
        check_choice(self, "schedule", SCHEDULES)
        if not 0.0 < self.cooldown_fraction <= 1.0:
            raise QkvError(
                f"train.cooldown_fraction must be in (0, 1], got {self.cooldown_fraction}"
            )

    @property
    def schedule_steps(self) -> int:
        return self.decay_steps or self.max_steps


@dataclass
class RunConfig(ConfigTree):
    """Everything a GPT training run needs; saved as config.json beside the weights."""

    KIND: ClassVar[str] = "gpt"
    BEFORE_THE_FIELD: ClassVar[dict] = {"train": {"optimizer": "adamw", "precision": "accelerator"}}

    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
