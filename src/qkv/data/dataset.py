"""From a data source to token ids, split into train and val, memory-mapped from disk.

A source is a named corpus (`shakespeare`, `tinyshakespeare`), a file (UTF-8 text, JSONL,
Parquet, gzipped or not), a directory of such files (read in sorted order, concatenated), or
a directory `qkv prepare` wrote (known by its manifest.json). The first 90% of the text's
characters are the train split and the last 10% the val split (nanoGPT's convention, so
losses compare with its published ones). Everything but a prepared directory is prepared
through the same code into the cache (`qkv.data.prepare`): token shards of uint16 ids
(uint32 when the vocabulary has more than 65,536 entries), named by the sources' sha256s,
the split and the tokenizer, and memory-mapped on every run, so no process holds the corpus.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qkv.data import shards
from qkv.data.prepare import Request, prepare
from qkv.data.shards import MANIFEST, TOKENIZER, TokenShards, token_dtype
from qkv.data.sources import read_pieces, source_files
from qkv.errors import QkvError
from qkv.tokenizer import Tokenizer
from qkv.tokenizer.files import load_tokenizer

__all__ = ["Corpus", "is_prepared", "open_prepared", "prepare_corpus", "token_dtype"]


@dataclass
class Corpus:
    """A tokenized text, split: `train` and `val` are 1-D id sequences (memory-mapped), a
    numpy array or, over several shards, a `TokenShards`."""

    train: np.ndarray | TokenShards
    val: np.ndarray | TokenShards
    tokenizer: Tokenizer
    n_chars: int
    directory: Path | None = None


def read_text_source(source: str, text_field: str = "text") -> str:
    """The whole text of a source, in memory: for small sources and tests only (training
    reads through `prepare_corpus`, in bounded memory)."""
    text = "".join(
        piece for file in source_files(source) for piece in read_pieces(file, text_field)
    )
    if not text:
        raise QkvError(f"{source}: the text is empty")
    return text


def is_prepared(source: str) -> bool:
    """Whether `source` names a directory `qkv prepare` wrote."""
    return (Path(source).expanduser() / MANIFEST).is_file()


def prepare_corpus(
    source: str,
    val_fraction: float = 0.1,
    tokenizer: Tokenizer | None = None,
    *,
    kind: str = "char",
    vocab_size: int | None = None,
    text_field: str = "text",
    checksums: bool = True,
    progress: bool | None = None,
) -> Corpus:
    """The corpus of `source`, split and tokenized: prepared into the cache unless it is a
    prepared directory or in the cache already.

    The text is cut before its last `val_fraction` of characters (nanoGPT's split) and each
    side is encoded on its own, so for any tokenizer the val split is exactly the end of the
    text. A new tokenizer of `kind` ("char", "bpe" or a directory) is made unless one is
    given (a checkpoint's, when resuming or evaluating); a character tokenizer then refuses
    a character it does not know. `checksums=False` checks the shards' sizes only (the other
    ranks of a job, once one has checked them).
    """
    if is_prepared(source):
        directory = Path(source).expanduser()
    else:
        request = Request(source, kind, vocab_size, tokenizer, text_field, val_fraction)
        directory = prepare(request, progress=progress)
    return open_prepared(directory, tokenizer, val_fraction=val_fraction, checksums=checksums)


def open_prepared(
    directory: str | Path,
    tokenizer: Tokenizer | None = None,
    *,
    val_fraction: float | None = None,
    checksums: bool = True,
) -> Corpus:
    """Map a prepared directory's shards, after checking them against the manifest."""
    directory = Path(directory).expanduser()
    manifest = shards.read_json(directory / MANIFEST)
    if manifest is None or manifest.get("format") != shards.FORMAT:
        raise QkvError(f"{directory}/{MANIFEST} is not the manifest of a qkv prepared corpus")
    saved = load_tokenizer(directory / TOKENIZER)
    if tokenizer is not None and tokenizer.fingerprint() != saved.fingerprint():
        raise QkvError(
            f"{directory} was tokenized with another tokenizer than this model's; give the "
            "source itself (it is encoded with the model's tokenizer), or prepare it again"
        )
    prepared_fraction = manifest["source"]["val_fraction"]
    if val_fraction is not None and abs(val_fraction - prepared_fraction) > 1e-12:
        raise QkvError(
            f"{directory} was prepared with a val split of {prepared_fraction}, not "
            f"data.val_fraction={val_fraction}; prepare it again with --val-fraction"
        )
    dtype = np.dtype(manifest["dtype"])
    splits = manifest["splits"]
    every = splits["train"]["shards"] + splits["val"]["shards"]
    shards.check_shards(directory, every, dtype, checksums)
    return Corpus(
        train=shards.map_split(directory, splits["train"]["shards"], dtype),
        val=shards.map_split(directory, splits["val"]["shards"], dtype),
        tokenizer=tokenizer or saved,
        n_chars=manifest["chars"]["total"],
        directory=directory,
    )
