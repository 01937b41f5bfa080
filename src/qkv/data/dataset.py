"""From a data source to token ids, cached on disk and split into train and val.

A source is a named corpus (`shakespeare`, `tinyshakespeare`), a UTF-8 text file, or a
directory of .txt files (read in sorted order, concatenated). The first 90% of the text's
characters are the train split and the last 10% the val split (nanoGPT's convention, so losses
compare with its published ones). The text is tokenized once; the ids are stored as a flat
uint16 array (uint32 when the vocabulary has more than 65,536 entries) in the cache directory,
named by a hash of the text, the split and the tokenizer, and memory-mapped on later runs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qkv.atomic import atomic_write_bytes
from qkv.data.cache import cache_dir
from qkv.data.corpora import NAMED_CORPORA, load_named_corpus
from qkv.errors import QkvError
from qkv.tokenizer import Tokenizer, new_tokenizer


@dataclass
class Corpus:
    """A tokenized text, split: `train` and `val` are 1-D integer arrays (memory-mapped)."""

    train: np.ndarray
    val: np.ndarray
    tokenizer: Tokenizer
    n_chars: int


def read_text_source(source: str) -> str:
    """The text of a named corpus, a UTF-8 file, or a directory of .txt files."""
    if source in NAMED_CORPORA:
        return load_named_corpus(source)
    path = Path(source).expanduser()
    if path.is_dir():
        text = _read_directory(path)
    elif path.exists():
        text = _read_text_file(path)
    else:
        known = ", ".join(NAMED_CORPORA)
        raise QkvError(f"{source}: no such file or directory, and not a named corpus ({known})")
    if not text:
        raise QkvError(f"{source}: the text is empty")
    return text


def _read_directory(path: Path) -> str:
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    if not files:
        raise QkvError(f"{path}: the directory holds no .txt files")
    return "".join(_read_text_file(p) for p in files)


def _read_text_file(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise QkvError(f"{path}: cannot read the file ({exc.strerror})") from None
    if b"\x00" in raw:
        raise QkvError(f"{path}: looks like a binary file (it contains NUL bytes), not text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise QkvError(
            f"{path}: not valid UTF-8 (byte {exc.start}); convert it to UTF-8 first"
        ) from None


def prepare_corpus(
    source: str,
    val_fraction: float = 0.1,
    tokenizer: Tokenizer | None = None,
    *,
    kind: str = "char",
    vocab_size: int | None = None,
) -> Corpus:
    """Read, split, and tokenize (through the cache) a source.

    The text is cut before its last `val_fraction` of characters (nanoGPT's split) and each
    side is encoded on its own, so for any tokenizer the val split is exactly the end of the
    text. A new tokenizer of `kind` ("char", "bpe" or a directory: `new_tokenizer`) is made
    unless one is given (a checkpoint's, when resuming or evaluating); a character tokenizer
    then refuses a character it does not know.
    """
    text = read_text_source(source)
    n_train_chars = int(len(text) * (1.0 - val_fraction))
    tokenizer = tokenizer or new_tokenizer(kind, text, n_train_chars, vocab_size)
    ids, n_train = _cached_token_ids(text, n_train_chars, tokenizer)
    return Corpus(train=ids[:n_train], val=ids[n_train:], tokenizer=tokenizer, n_chars=len(text))


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


_COUNT = np.dtype("<u8")  # the cache file's header: how many of its ids are the train split


def _cached_token_ids(text: str, cut: int, tokenizer: Tokenizer) -> tuple[np.ndarray, int]:
    """The ids of text[:cut] followed by those of text[cut:], and how many the first part has.

    One file per (text, cut, tokenizer): the count, then the ids. Its name hashes all three
    (the tokenizer by its fingerprint), so different tokenizers never share a file.
    """
    dtype = token_dtype(tokenizer.vocab_size)
    key = hashlib.sha256()
    key.update(text.encode("utf-8"))
    key.update(f"|{cut}|{tokenizer.fingerprint()}".encode())
    path = cache_dir() / "tokens" / f"{key.hexdigest()[:32]}.{dtype.name}.bin"
    if not path.exists():
        train, val = tokenizer.encode(text[:cut]), tokenizer.encode(text[cut:])
        header = np.array([len(train)], dtype=_COUNT).tobytes()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, header + np.asarray(train + val, dtype=dtype).tobytes())
    n_train = int(np.fromfile(path, dtype=_COUNT, count=1)[0])
    return np.memmap(path, dtype=dtype, mode="r", offset=_COUNT.itemsize), n_train
