"""What every qkv tokenizer offers, and the helpers they share.

A byte-level token may hold part of a character (an emoji is four bytes and may be split
across tokens). Decoding such a fragment alone gives U+FFFD, so `decode_stream` holds text
back until its character is complete.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

_REPLACEMENT = "\ufffd"  # what an incomplete UTF-8 sequence decodes to
_MAX_BYTES_PER_CHAR = 4


class Tokenizer(Protocol):
    """What the rest of qkv needs from a tokenizer."""

    kind: str

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def save(self, path: Path) -> None: ...

    def empty_prompt(self) -> tuple[str, list[int]]: ...

    def char_counts(self) -> np.ndarray: ...

    def fingerprint(self) -> str: ...


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def decode_stream(tokenizer: Tokenizer, ids: Iterable[int]) -> Iterator[str]:
    """Yield the text of `ids` as they arrive, holding back a character not yet complete.

    A byte-level token can end inside a multi-byte character; its text would end in U+FFFD
    until the next token brings the rest. A character has at most 4 bytes, so after 4 held
    tokens the text goes out as it is (it was a real U+FFFD, or bytes that never complete).
    """
    held: list[int] = []
    for i in ids:
        held.append(i)
        text = tokenizer.decode(held)
        if text.endswith(_REPLACEMENT) and len(held) < _MAX_BYTES_PER_CHAR:
            continue
        held = []
        yield text
    if held:
        yield tokenizer.decode(held)
