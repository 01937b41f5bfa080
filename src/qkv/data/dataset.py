"""From a data source to token ids, cached on disk and split into train and val.

A source is a named corpus (`shakespeare`, `tinyshakespeare`), a UTF-8 text file, or a
directory of .txt files (read in sorted order, concatenated). The text is tokenized once; the
ids are stored as a flat uint16 array (uint32 when the vocabulary has more than 65,536 entries)
in the cache directory, named by a hash of the text and the vocabulary, and memory-mapped on
later runs. The first 90% of the ids are the train split and the last 10% the val split
(nanoGPT's convention, so losses compare with its published ones).
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
from qkv.tokenizer import CharTokenizer


@dataclass
class Corpus:
    """A tokenized text, split: `train` and `val` are 1-D integer arrays (memory-mapped)."""

    train: np.ndarray
    val: np.ndarray
    tokenizer: CharTokenizer
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
    source: str, val_fraction: float = 0.1, tokenizer: CharTokenizer | None = None
) -> Corpus:
    """Read, tokenize (through the cache) and split a source.

    A new character tokenizer is built from the whole text unless one is given (a checkpoint's,
    when resuming or evaluating); then a character it does not know is an error.
    """
    text = read_text_source(source)
    tokenizer = tokenizer or CharTokenizer.from_text(text)
    ids = _cached_token_ids(text, tokenizer)
    n_train = int(len(ids) * (1.0 - val_fraction))
    return Corpus(train=ids[:n_train], val=ids[n_train:], tokenizer=tokenizer, n_chars=len(text))


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def _cached_token_ids(text: str, tokenizer: CharTokenizer) -> np.ndarray:
    dtype = token_dtype(tokenizer.vocab_size)
    key = hashlib.sha256()
    key.update(text.encode("utf-8"))
    key.update(repr(tokenizer.to_dict()).encode("utf-8"))
    path = cache_dir() / "tokens" / f"{key.hexdigest()[:32]}.{dtype.name}.bin"
    if not path.exists():
        ids = np.asarray(tokenizer.encode(text), dtype=dtype)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, ids.tobytes())
    return np.memmap(path, dtype=dtype, mode="r")
