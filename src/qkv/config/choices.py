"""What a setting may be: the choice lists and the checks every config table uses.

They live here, beside the configs and away from the modules that implement them, so that
reading a config (or a tokenizer) never imports torch. `qkv.nn` builds from these names.
"""

from __future__ import annotations

from qkv.errors import QkvError

ACTIVATIONS = ("relu", "gelu", "swiglu", "relu2")  # the FFN's non-linearity; relu2: ReLU(x)^2
NORM_PLACEMENTS = ("pre", "post")  # where the norm sits around each sub-layer
NORM_TYPES = ("layernorm", "rmsnorm")
POSITIONAL_KINDS = ("learned", "sinusoidal", "rotary", "none")  # none: order-blind (a lesson)
DEVICES = ("auto", "cpu", "cuda", "mps")
# the training forward pass's autocast; accelerator: auto on GPUs, float32 on every CPU (what
# qkv did before train.precision, so runs saved then resume as they ran)
PRECISIONS = ("auto", "float32", "bfloat16", "float16", "accelerator")
SCHEDULES = ("cosine", "trapezoid")  # the GPT's learning rate after warm-up
OPTIMIZERS = ("adamw", "adam", "muon")  # muon: the blocks' matrices, AdamW/Adam beside it
TOKENIZER_KINDS = ("char", "bpe")  # or a directory with a pretrained tokenizer (GPT runs)

# The encoder-decoder's special tokens: the same ids in every seq2seq vocabulary.
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")


def require_vocab_size(config: object) -> int:
    """A model config's vocab_size, which qkv fills in from the tokenizer before building."""
    if getattr(config, "vocab_size", None) is None:
        name = type(config).__name__
        raise QkvError(f"{name}.vocab_size must be set (the tokenizer's vocabulary size)")
    return config.vocab_size


def check_positive(owner: object, *names: str) -> None:
    for name in names:
        value = getattr(owner, name)
        if value <= 0:
            raise QkvError(f"{type(owner).__name__}.{name} must be positive, got {value}")


def check_not_negative(table: str, owner: object, *names: str) -> None:
    for name in names:
        value = getattr(owner, name)
        if value < 0:
            raise QkvError(f"{table}.{name} must not be negative, got {value}")


def check_choice(owner: object, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(owner, name)
    if value not in choices:
        raise QkvError(f"{type(owner).__name__}.{name} must be one of {choices}, got {value!r}")


def check_fraction(owner: object, name: str, low: float = 0.0, high: float = 1.0) -> None:
    value = getattr(owner, name)
    if not low <= value < high:
        raise QkvError(f"{type(owner).__name__}.{name} must be in [{low}, {high}), got {value}")
