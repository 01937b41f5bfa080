"""Byte-level BPE through Hugging Face `tokenizers`.

Byte-pair encoding (Sennrich et al., 2016; GPT-2, Radford et al., 2019) reads the text as
UTF-8 bytes, so every string encodes and nothing is unknown; merges of frequent neighbouring
pieces, learned from the training split, make the common words single tokens. Training,
encoding and decoding are the `tokenizers` library's; the file is that library's own JSON,
so GPT-2's tokenizer.json loads the same way. `char_counts` counts a character at the token
that holds its first byte.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from qkv.errors import QkvError
from qkv.tokenizer.base import sha256

DEFAULT_BPE_VOCAB = 1024
END_OF_TEXT = "<|endoftext|>"  # GPT-2's document separator, its start token for sampling


class BPETokenizer:
    """Byte-level BPE: a `tokenizers.Tokenizer` behind qkv's tokenizer interface."""

    kind = "bpe"

    def __init__(self, tokenizer: HFTokenizer) -> None:
        self._tokenizer = tokenizer

    @classmethod
    def train(cls, text: str, vocab_size: int = DEFAULT_BPE_VOCAB) -> BPETokenizer:
        """Learn merges from `text` until the vocabulary holds `vocab_size` tokens.

        The 256 byte tokens are always in it (so anything encodes); GPT-2's pre-tokenizer
        splits words, numbers and punctuation apart first, so merges never cross them.
        """
        return cls.train_from_chunks([text], vocab_size)

    @classmethod
    def train_from_chunks(
        cls, chunks: Iterable[str], vocab_size: int = DEFAULT_BPE_VOCAB
    ) -> BPETokenizer:
        """`train` on a text given as consecutive pieces, read one at a time.

        The trainer keeps only a count per distinct pre-tokenized word, so memory follows the
        corpus's vocabulary, not its size. Pieces cut where the pre-tokenizer cuts anyway
        (`qkv.data.chunks.bpe_boundary`) give the counts, hence the merges, of the whole text.
        """
        if vocab_size < 256:
            raise QkvError(f"a byte-level BPE needs a vocabulary of at least 256, got {vocab_size}")
        tokenizer = _byte_level(HFTokenizer(models.BPE()))
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=False,
        )
        tokenizer.train_from_iterator(chunks, trainer=trainer)
        return cls(tokenizer)

    @classmethod
    def from_pretrained(cls, directory: Path) -> BPETokenizer:
        """GPT-2's tokenizer from a directory: tokenizer.json, or vocab.json + merges.txt."""
        directory = Path(directory)
        if (directory / "tokenizer.json").is_file():
            return cls.from_file(directory / "tokenizer.json")
        vocab, merges = directory / "vocab.json", directory / "merges.txt"
        if not (vocab.is_file() and merges.is_file()):
            raise QkvError(
                f"{directory} holds no tokenizer: expected tokenizer.json, or vocab.json and "
                "merges.txt (GPT-2's files)"
            )
        try:
            tokenizer = _byte_level(HFTokenizer(models.BPE.from_file(str(vocab), str(merges))))
        except Exception as exc:  # tokenizers raises plain Exceptions
            raise QkvError(f"{directory}: cannot read vocab.json/merges.txt: {exc}") from None
        if tokenizer.token_to_id(END_OF_TEXT) is not None:
            tokenizer.add_special_tokens([END_OF_TEXT])  # keeps its id; never split or merged
        return cls(tokenizer)

    @classmethod
    def from_file(cls, path: Path) -> BPETokenizer:
        """Read a `tokenizers` JSON file (what `save` writes, or a Hugging Face tokenizer.json)."""
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"), str(path))
        except (OSError, UnicodeDecodeError) as exc:
            raise QkvError(f"{path} is not a readable tokenizer file: {exc}") from None

    @classmethod
    def from_json(cls, text: str, origin: str = "tokenizer") -> BPETokenizer:
        try:
            model_type = json.loads(text)["model"]["type"]
            tokenizer = HFTokenizer.from_str(text)
        except Exception as exc:  # tokenizers raises plain Exceptions
            raise QkvError(f"{origin} is not a valid tokenizers file: {exc}") from None
        if model_type != "BPE":
            raise QkvError(f"{origin}: qkv reads BPE tokenizers, this one is {model_type}")
        return cls(tokenizer)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """The ids of each text, encoded in parallel on every core by `tokenizers` (Rust)."""
        # encode_batch_fast (tokenizers >= 0.20) skips the offsets nobody here reads
        encode = getattr(self._tokenizer, "encode_batch_fast", self._tokenizer.encode_batch)
        encodings = encode(texts, add_special_tokens=False)
        return [e.ids for e in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`; special tokens stay in, so decode(encode(text)) == text."""
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)

    @property
    def end_of_text_id(self) -> int | None:
        """The id of GPT-2's <|endoftext|>, if the vocabulary has it."""
        return self._tokenizer.token_to_id(END_OF_TEXT)

    def empty_prompt(self) -> tuple[str, list[int]]:
        """GPT-2 starts unconditional samples from <|endoftext|>; without it, from a newline."""
        if self.end_of_text_id is not None:
            return "", [self.end_of_text_id]
        return "\n", self.encode("\n")

    def char_counts(self) -> np.ndarray:
        """Characters per token id, counted at each character's first byte.

        A UTF-8 character is one lead byte and 0-3 continuation bytes (10xxxxxx), so counting
        the lead bytes of each token's bytes gives a count that adds up exactly over any run
        of tokens, even when a character is split between two of them (decoding the halves
        alone would give two U+FFFD, two characters for one).
        """
        byte_of = _byte_alphabet()
        counts = np.zeros(self.vocab_size, dtype=np.int64)
        for token, i in self._tokenizer.get_vocab(with_added_tokens=True).items():
            if i >= len(counts):
                continue
            if all(c in byte_of for c in token):
                counts[i] = sum((byte_of[c] & 0xC0) != 0x80 for c in token)
            else:  # a token not spelt in bytes (an added token): its text
                counts[i] = len(self.decode([i]))
        return counts

    def to_json(self) -> str:
        return self._tokenizer.to_str()

    def fingerprint(self) -> str:
        """A hash of the whole tokenizer (merges, vocabulary, pre-tokenizer)."""
        return sha256(self.to_json())

    def save(self, path: Path) -> None:
        Path(path).write_text(self._tokenizer.to_str(pretty=True) + "\n", encoding="utf-8")

    def save_vocab_and_merges(self, directory: Path) -> list[str]:
        """Write GPT-2's vocab.json and merges.txt into `directory`; returns the file names."""
        written = self._tokenizer.model.save(str(directory))
        return [Path(p).name for p in written]


def _byte_level(tokenizer: HFTokenizer) -> HFTokenizer:
    """GPT-2's byte-level pieces: its pre-tokenizer regex, no leading space, bytes back out."""
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in for each byte -> that byte.

    The vocabulary of a byte-level BPE is stored as strings, so GPT-2 gives each byte a
    printable character: the 188 printable Latin-1 bytes stand for themselves, the other 68
    (control characters, space, ...) take the code points from 256 up, in byte order.
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    stand_ins = {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(others)}
    return {c: b for b, c in stand_ins.items()}
