"""Character-level tokenizer: one token per character of the training text.

The vocabulary is the sorted set of characters in the corpus (Karpathy's "GPT from scratch");
id i stands for the i-th character. It is saved with the checkpoint as tokenizer.json, so a
model always decodes with the vocabulary it was trained on. A character outside it cannot be
encoded: that is an error naming the character, never a silent substitute.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from qkv.errors import QkvError


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

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False) + "\n", encoding="utf-8")


def load_tokenizer(path: Path) -> CharTokenizer:
    """Read tokenizer.json written by `CharTokenizer.save`."""
    try:
        tree = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QkvError(f"{path} is missing: is {path.parent} a qkv checkpoint?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QkvError(f"{path} is not a readable tokenizer file: {exc}") from None
    kind = tree.get("kind") if isinstance(tree, dict) else None
    if kind != "char":
        raise QkvError(f"{path}: unknown tokenizer kind {kind!r}")
    chars = tree.get("chars")
    if not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
        raise QkvError(f"{path}: 'chars' must be a list of characters")
    return CharTokenizer(chars)
