"""One token per character (Karpathy's "GPT from scratch").

The vocabulary is the sorted set of characters in the corpus; id i stands for the i-th
character. A character outside it cannot be encoded: that is an error naming the character,
never a silent substitute.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from qkv.errors import QkvError
from qkv.tokenizer.base import sha256


class CharTokenizer:
    """Maps characters to ids and back."""

    kind = "char"

    def __init__(self, chars: Iterable[str]) -> None:
        self.chars = sorted(set(chars))
        if not self.chars:
            raise QkvError("cannot build a tokenizer from an empty text")
        if any(len(c) != 1 for c in self.chars):
            raise QkvError("a character tokenizer's vocabulary must be single characters")
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(set(text))

    @classmethod
    def from_code_points(cls, codes: Iterable[int]) -> CharTokenizer:
        """The vocabulary of the characters whose code points a streaming pass collected."""
        return cls(chr(c) for c in codes)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            raise QkvError(self._unknown_message(text)) from None

    def encode_array(self, text: str) -> np.ndarray:
        """`encode(text)` as an int32 array, by one table lookup per character (numpy).

        What a large corpus is encoded with: the same ids as `encode`, about a hundred times
        faster than a dict lookup per character; an unknown character is the same error.
        """
        codes = code_points(text)
        table = self._table()
        last = min(len(table) - 1, int(np.iinfo(codes.dtype).max))
        ids = table[np.minimum(codes, codes.dtype.type(last))]  # the last entry is -1
        if ids.size and int(ids.min()) < 0:
            raise QkvError(self._unknown_message(text))
        return ids

    def _table(self) -> np.ndarray:
        """code point -> id, -1 for a character outside the vocabulary (and past the end)."""
        if getattr(self, "_lookup", None) is None:
            codes = np.array([ord(c) for c in self.chars], dtype=np.int64)
            self._lookup = np.full(int(codes.max()) + 2, -1, dtype=np.int32)
            self._lookup[codes] = np.arange(len(codes), dtype=np.int32)
        return self._lookup

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def unknown_characters(self, text: str) -> list[str]:
        return sorted(set(text) - self.stoi.keys())

    def _unknown_message(self, text: str) -> str:
        unknown = self.unknown_characters(text)
        shown = ", ".join(repr(c) for c in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        return f"characters not in the model's vocabulary: {shown}{more}"

    def empty_prompt(self) -> tuple[str, list[int]]:
        """Where sampling starts without a prompt: a newline, as a text's lines begin."""
        start = "\n" if "\n" in self.stoi else self.chars[0]
        return start, self.encode(start)

    def char_counts(self) -> np.ndarray:
        """Characters per token id: one each."""
        return np.ones(self.vocab_size, dtype=np.int64)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}

    def fingerprint(self) -> str:
        """A hash of the vocabulary: equal for tokenizers that give the same ids."""
        return sha256(json.dumps(self.to_dict(), ensure_ascii=False))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False) + "\n", encoding="utf-8")


def code_points(text: str) -> np.ndarray:
    """The code points of `text` as an array: uint8 for ASCII (a copy of its bytes), else
    uint32 (UTF-32). Lone surrogates, which JSON strings may hold, pass through as numbers."""
    if text.isascii():
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def characters_in(text: str) -> np.ndarray:
    """The distinct code points of `text` (a streaming pass unions these, chunk by chunk)."""
    codes = code_points(text)
    return np.flatnonzero(np.bincount(codes)) if codes.size else codes


# -- worker processes: a large corpus is encoded in processes that import only this module --

_worker_tokenizer: CharTokenizer | None = None


def start_encoding_worker(chars: list[str]) -> None:
    """A worker's initializer: the tokenizer it encodes every chunk with."""
    global _worker_tokenizer
    _worker_tokenizer = CharTokenizer(chars)


def encode_in_worker(text: str, dtype: str) -> np.ndarray:
    """`encode_array(text)` as `dtype`, in a worker started by `start_encoding_worker`."""
    return _worker_tokenizer.encode_array(text).astype(dtype)
