"""The encoder-decoder's vocabulary: a character or BPE one with special tokens in front."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from qkv.config.choices import SPECIAL_TOKENS
from qkv.errors import QkvError
from qkv.tokenizer.base import sha256
from qkv.tokenizer.bpe import DEFAULT_BPE_VOCAB, BPETokenizer
from qkv.tokenizer.char import CharTokenizer


class Seq2SeqTokenizer:
    """A character or BPE vocabulary with the encoder-decoder's special tokens in front.

    Ids 0, 1, 2 are <pad>, <bos>, <eos> (`config.choices.PAD_ID` ...), and id i + 3 is the
    base tokenizer's id i. Source and target share it, so the model can tie its embeddings.
    A character the base vocabulary lacks is an error that names it, as for `CharTokenizer`.
    """

    kind = "seq2seq"

    def __init__(self, base: CharTokenizer | BPETokenizer) -> None:
        self.base = base
        self.specials = SPECIAL_TOKENS
        self.offset = len(SPECIAL_TOKENS)

    @classmethod
    def train(cls, texts: Iterable[str], kind: str = "char", vocab_size: int | None = None):
        """Build the vocabulary from `texts` (the train split's sources and targets)."""
        text = "\n".join(texts)
        if kind == "bpe":
            return cls(BPETokenizer.train(text, vocab_size or DEFAULT_BPE_VOCAB))
        return cls(CharTokenizer.from_text(text))

    @property
    def vocab_size(self) -> int:
        return self.offset + self.base.vocab_size

    def encode(self, text: str) -> list[int]:
        return [i + self.offset for i in self.base.encode(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of the non-special ids (special tokens are dropped)."""
        return self.base.decode(i - self.offset for i in ids if i >= self.offset)

    def to_dict(self) -> dict:
        base = self.base.to_dict() if self.base.kind == "char" else json.loads(self.base.to_json())
        return {"kind": self.kind, "specials": list(self.specials), "base": base}

    def fingerprint(self) -> str:
        return sha256(json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def from_dict(cls, tree: dict, origin: str) -> Seq2SeqTokenizer:
        base = tree.get("base")
        if not isinstance(base, dict):
            raise QkvError(f"{origin}: a seq2seq tokenizer needs a 'base' vocabulary")
        if base.get("kind") == "char" and isinstance(base.get("chars"), list):
            return cls(CharTokenizer(base["chars"]))
        return cls(BPETokenizer.from_json(json.dumps(base), origin))
