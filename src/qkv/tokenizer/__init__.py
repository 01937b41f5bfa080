"""Tokenizers: one token per character, or byte-level BPE through Hugging Face `tokenizers`.

Both kinds share one small interface (`tokenizer.base.Tokenizer`) and are saved with the
checkpoint as tokenizer.json, so a model always decodes with the vocabulary it was trained on.

- `CharTokenizer`: the vocabulary is the sorted set of characters in the corpus (Karpathy's
  "GPT from scratch"); id i stands for the i-th character. A character outside it cannot be
  encoded: that is an error naming the character, never a silent substitute.
- `BPETokenizer`: byte-level byte-pair encoding (Sennrich et al., 2016; GPT-2, Radford et al.,
  2019). The text is read as UTF-8 bytes, so every string encodes and nothing is unknown;
  merges of frequent neighbouring pieces, learned from the training split, make the common
  words single tokens. Training, encoding and decoding are the `tokenizers` library's; the
  file is that library's own JSON, so GPT-2's tokenizer.json loads the same way.

A byte-level token may hold part of a character (an emoji is four bytes and may be split
across tokens). Decoding such a fragment alone gives U+FFFD, so `decode_stream` holds text
back until its character is complete, and `char_counts` counts a character at the token that
holds its first byte.
"""

from qkv.tokenizer.base import Tokenizer, decode_stream
from qkv.tokenizer.bpe import DEFAULT_BPE_VOCAB, END_OF_TEXT, BPETokenizer
from qkv.tokenizer.char import CharTokenizer
from qkv.tokenizer.files import load_tokenizer, new_tokenizer
from qkv.tokenizer.specials import Seq2SeqTokenizer

__all__ = [
    "DEFAULT_BPE_VOCAB",
    "END_OF_TEXT",
    "BPETokenizer",
    "CharTokenizer",
    "Seq2SeqTokenizer",
    "Tokenizer",
    "decode_stream",
    "load_tokenizer",
    "new_tokenizer",
]
