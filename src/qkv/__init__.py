"""qkv: the Transformer from its equations up.

    import qkv
    model, tokenizer = qkv.load("out")
    ids = torch.tensor([tokenizer.encode("ROMEO:")])
    print(tokenizer.decode(model.generate(ids, 200)[0].tolist()))

Where each idea of the notes (../shared/seed/self-attention-notes.md) lives:
`qkv.attention` (scores, scaling, softmax, masks, multi-head attention), `qkv.positional`
(positional encodings), `qkv.blocks` (feed-forward network, residuals, LayerNorm),
`qkv.models.gpt` (the decoder-only model), `qkv.models.seq2seq` (the encoder-decoder).
"""

from qkv.attention import (
    KVCache,
    MultiHeadAttention,
    causal_mask,
    key_padding_mask,
    scaled_dot_product_attention,
)
from qkv.blocks import FeedForward, PostNormBlock, PreNormBlock, SwiGLUFeedForward
from qkv.checkpoint import load
from qkv.config import DataConfig, GPTConfig, RunConfig, TrainConfig
from qkv.errors import QkvError
from qkv.models.gpt import GPT
from qkv.models.seq2seq import Seq2SeqTransformer
from qkv.positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
)
from qkv.seq2seq_config import Seq2SeqConfig
from qkv.tokenizer import BPETokenizer, CharTokenizer

__version__ = "0.1.0"

__all__ = [
    "GPT",
    "BPETokenizer",
    "CharTokenizer",
    "DataConfig",
    "FeedForward",
    "GPTConfig",
    "KVCache",
    "LearnedPositionalEmbedding",
    "MultiHeadAttention",
    "PostNormBlock",
    "PreNormBlock",
    "QkvError",
    "RotaryEmbedding",
    "RunConfig",
    "Seq2SeqConfig",
    "Seq2SeqTransformer",
    "SinusoidalPositionalEncoding",
    "SwiGLUFeedForward",
    "TrainConfig",
    "causal_mask",
    "key_padding_mask",
    "load",
    "scaled_dot_product_attention",
]
