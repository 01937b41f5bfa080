"""Chunks of text to token ids on every core, and the progress bar of each pass.

- A byte-level BPE encodes a chunk as a batch of parts (`sub_chunks`, cut where cutting
  changes no id) through `tokenizers`' batch encoding, which runs in Rust on all cores.
- A character tokenizer is a table lookup (`CharTokenizer.encode_array`); on a large corpus
  chunks go to worker processes forked from a server that never imported torch, a few at a
  time so memory stays bounded (Pool.imap would read the whole corpus ahead), and come back
  in order.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np

from qkv.data.chunks import Boundary, Chunk, bpe_boundary, char_boundary, sub_chunks
from qkv.tokenizer import BPETokenizer, CharTokenizer, Tokenizer
from qkv.tokenizer import char as char_module

PARALLEL_MIN = 64 << 20  # characters from which a character corpus goes to worker processes
BATCH_PART = 1 << 16  # characters per part of a BPE batch
WORKER_MODULE = "qkv.tokenizer.char"  # all a character worker imports


class Encoded(NamedTuple):
    """A chunk's ids, with where it ends in the text and how many bytes of text it was."""

    split: str
    end: int
    nbytes: int
    ids: np.ndarray


def boundary_for(tokenizer: Tokenizer) -> Boundary:
    """Where a chunk may end for this tokenizer (`qkv.data.chunks`)."""
    return char_boundary if isinstance(tokenizer, CharTokenizer) else bpe_boundary


def utf8_size(text: str) -> int:
    """The bytes of `text` in UTF-8 (what the progress bars count), cheaply for ASCII."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def progress_bar(desc: str, total: int | None, enabled: bool | None):
    """A tqdm bar in bytes of text: MB/s, and an ETA when the total is known. `enabled`
    None shows it only on a terminal."""
    from tqdm.auto import tqdm

    disable = None if enabled is None else not enabled
    return tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1000, disable=disable
    )


def encode_chunks(
    tokenizer: Tokenizer, chunks: Iterable[Chunk], dtype: np.dtype, total_chars: int
) -> Iterator[Encoded]:
    """Each chunk's ids as `dtype`, in order."""
    if isinstance(tokenizer, CharTokenizer):
        workers = os.cpu_count() or 1
        if workers > 1 and total_chars >= PARALLEL_MIN:
            yield from _in_workers(tokenizer, chunks, dtype, workers)
            return
        for chunk in chunks:
            ids = tokenizer.encode_array(chunk.text).astype(dtype)
            yield Encoded(chunk.split, chunk.end, utf8_size(chunk.text), ids)
        return
    for chunk in chunks:
        ids = _encode_batched(tokenizer, chunk.text, dtype)
        yield Encoded(chunk.split, chunk.end, utf8_size(chunk.text), ids)


def _encode_batched(tokenizer: Tokenizer, text: str, dtype: np.dtype) -> np.ndarray:
    parts = sub_chunks(text, bpe_boundary, BATCH_PART)
    if isinstance(tokenizer, BPETokenizer):
        ids = tokenizer.encode_batch(parts)
    else:  # any other tokenizer: one part at a time
        ids = [tokenizer.encode(part) for part in parts]
    return np.concatenate([np.asarray(part, dtype=dtype) for part in ids])


def _in_workers(
    tokenizer: CharTokenizer, chunks: Iterable[Chunk], dtype: np.dtype, workers: int
) -> Iterator[Encoded]:
    """Encode in `workers` processes, at most 2 chunks each in flight.

    The workers fork from a server that has imported only `qkv.tokenizer.char` (numpy, no
    torch): forking the trainer itself would copy a process that holds threads, and spawning
    would import torch again in every worker (seconds and hundreds of MB each). Each worker
    also re-imports the program's main module, as every multiprocessing child does: under the
    `qkv` command that is its script, which imports only qkv.command; a program of your own
    that imports torch at its top gives each worker torch too.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([WORKER_MODULE])
    start, work = char_module.start_encoding_worker, char_module.encode_in_worker
    with context.Pool(workers, initializer=start, initargs=(tokenizer.chars,)) as pool:
        pending: deque = deque()
        for chunk in chunks:
            job = pool.apply_async(work, (chunk.text, dtype.str))
            pending.append((chunk.split, chunk.end, utf8_size(chunk.text), job))
            if len(pending) >= 2 * workers:
                split, end, nbytes, job = pending.popleft()
                yield Encoded(split, end, nbytes, job.get())
        while pending:
            split, end, nbytes, job = pending.popleft()
            yield Encoded(split, end, nbytes, job.get())
