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

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            raise QkvError(self._unknown_message(text)) from None

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
