"""The models built from qkv's blocks."""

from qkv.models.gpt import GPT
from qkv.models.seq2seq import Seq2SeqTransformer

__all__ = ["GPT", "Seq2SeqTransformer"]
