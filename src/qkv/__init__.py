"""qkv: the Transformer from its equations up.

    import qkv
    model, tokenizer = qkv.load("out")
    ids = torch.tensor([tokenizer.encode("ROMEO:")])
    print(tokenizer.decode(model.generate(ids, 200)[0].tolist()))

Where each idea of the notes (../shared/seed/self-attention-notes.md) lives:
`qkv.nn.attention` (scores, scaling, softmax, masks, multi-head attention),
`qkv.nn.positional` (positional encodings), `qkv.nn.blocks` (feed-forward network,
residuals, LayerNorm, the Transformer block), `qkv.models.gpt` (the decoder-only model),
`qkv.models.seq2seq` (the encoder-decoder). docs/architecture.md draws the whole package.

The names below are imported on first use (PEP 562), so `import qkv.config` or reading a
tokenizer does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_HOMES = {
    "load": "qkv.checkpoint",
    "train": "qkv.training.run",
    "quantize": "qkv.decoding.quantize",
    "for_decoding": "qkv.decoding.layout",
    "QkvError": "qkv.errors",
    "DataConfig": "qkv.config",
    "GPTConfig": "qkv.config",
    "RunConfig": "qkv.config",
    "Seq2SeqConfig": "qkv.config",
    "Seq2SeqRunConfig": "qkv.config",
    "TrainConfig": "qkv.config",
    "GPT": "qkv.models.gpt",
    "Seq2SeqTransformer": "qkv.models.seq2seq",
    "KVCache": "qkv.nn.attention",
    "MultiHeadAttention": "qkv.nn.attention",
    "causal_mask": "qkv.nn.attention",
    "key_padding_mask": "qkv.nn.attention",
    "scaled_dot_product_attention": "qkv.nn.attention",
    "DecoderBlock": "qkv.nn.blocks",
    "FeedForward": "qkv.nn.blocks",
    "PostNormBlock": "qkv.nn.blocks",
    "PreNormBlock": "qkv.nn.blocks",
    "SwiGLUFeedForward": "qkv.nn.blocks",
    "TransformerBlock": "qkv.nn.blocks",
    "LearnedPositionalEmbedding": "qkv.nn.positional",
    "RotaryEmbedding": "qkv.nn.positional",
    "SinusoidalPositionalEncoding": "qkv.nn.positional",
    "BPETokenizer": "qkv.tokenizer",
    "CharTokenizer": "qkv.tokenizer",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'qkv' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
