"""Tokenizers: one token per character, or byte-level BPE through Hugging Face `tokenizers`.

Both kinds share one small interface (`Tokenizer` below) and are saved with the checkpoint as
tokenizer.json, so a model always decodes with the vocabulary it was trained on.

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

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from qkv.config import read_json_config
from qkv.errors import QkvError
from qkv.seq2seq_config import SPECIAL_TOKENS

TOKENIZER_KINDS = ("char", "bpe")  # or a directory with a pretrained tokenizer
DEFAULT_BPE_VOCAB = 1024
END_OF_TEXT = "<|endoftext|>"  # GPT-2's document separator, its start token for sampling
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
        return _sha256(json.dumps(self.to_dict(), ensure_ascii=False))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False) + "\n", encoding="utf-8")


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
        if vocab_size < 256:
            raise QkvError(f"a byte-level BPE needs a vocabulary of at least 256, got {vocab_size}")
        tokenizer = _byte_level(HFTokenizer(models.BPE()))
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=False,
        )
        tokenizer.train_from_iterator([text], trainer=trainer)
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
        return _sha256(self.to_json())

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


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def new_tokenizer(
    kind: str, text: str, n_train_chars: int, vocab_size: int | None = None
) -> Tokenizer:
    """The tokenizer a fresh run asks for (`data.tokenizer`): char, bpe, or a directory.

    A character vocabulary is read from the whole text (else the val split could hold a
    character it cannot encode); a BPE learns its merges from the train split only, so the
    val split stays unseen (it still encodes: every byte is a token).
    """
    if kind == "char":
        return CharTokenizer.from_text(text)
    if kind == "bpe":
        return BPETokenizer.train(text[:n_train_chars], vocab_size or DEFAULT_BPE_VOCAB)
    directory = Path(kind).expanduser()
    if not directory.is_dir():
        raise QkvError(
            f"data.tokenizer={kind!r}: use 'char', 'bpe', or a directory with a tokenizer"
        )
    return BPETokenizer.from_pretrained(directory)


def load_tokenizer(path: Path) -> Tokenizer:
    """Read tokenizer.json: qkv's character format or a `tokenizers` (BPE) file."""
    hint = f"is {path.parent} a qkv checkpoint?"
    tree = read_json_config(path, hint, what="tokenizer file")
    if "model" in tree and "kind" not in tree:
        return BPETokenizer.from_file(path)
    kind = tree.get("kind")
    if kind == Seq2SeqTokenizer.kind:
        return Seq2SeqTokenizer.from_dict(tree, str(path))
    if kind != "char":
        raise QkvError(f"{path}: unknown tokenizer kind {kind!r}")
    chars = tree.get("chars")
    if not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
        raise QkvError(f"{path}: 'chars' must be a list of characters")
    return CharTokenizer(chars)


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


class Seq2SeqTokenizer:
    """A character or BPE vocabulary with the encoder-decoder's special tokens in front.

    Ids 0, 1, 2 are <pad>, <bos>, <eos> (`seq2seq_config.PAD_ID` ...), and id i + 3 is the
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
        return _sha256(json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True))

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
