"""Token shards on disk: written so that no half-written one ever looks whole, read back
memory-mapped as one sequence per split, and checked against their sha256s.

A prepared directory holds `train-00000.bin`, ... and `val-00000.bin`, ... (flat uint16 ids,
uint32 when the vocabulary has more than 65,536 tokens), `tokenizer.json`, and
`manifest.json`, written last: a directory without a manifest is not (yet) prepared. While
it is being prepared, `progress.json` lists the shards finished so far (name, token count,
sha256) and the character of the text where the last one ends. A shard is written under a
hidden temporary name and renamed only when it is complete, flushed and hashed, and listed in
progress.json right after, so a preparation killed at any moment leaves shards that are
listed and whole, or files that the next run deletes.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from qkv.atomic import atomic_write_bytes
from qkv.errors import QkvError

MANIFEST = "manifest.json"
PROGRESS = "progress.json"
TOKENIZER = "tokenizer.json"
FORMAT = "qkv-tokens/1"
SHARD_TOKENS = 1 << 26  # about 64M tokens (128 MB of uint16) a shard


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def write_json(path: Path, tree: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(tree, indent=1, ensure_ascii=False) + "\n").encode())


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when it is missing or unreadable."""
    try:
        tree = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return tree if isinstance(tree, dict) else None


class ShardWriter:
    """Appends ids to the current shard of a split; finished shards go into `done`."""

    def __init__(self, directory: Path, dtype: np.dtype, shard_tokens: int, done: list[dict]):
        self.directory, self.dtype, self.shard_tokens = directory, dtype, shard_tokens
        self.done = done  # the shards of progress.json, in order
        self.split: str | None = None
        self.handle, self.digest, self.tokens = None, None, 0
        self.end = done[-1]["end"] if done else 0

    def add(self, split: str, ids: np.ndarray, end: int) -> None:
        """Append the ids of the text up to character `end` to the split's open shard; a
        shard is closed when it is full or its split ends."""
        if split != self.split:
            self.close()
            self.split = split
        if self.handle is None:
            self._open()
        data = np.ascontiguousarray(ids, dtype=self.dtype).tobytes()
        self.handle.write(data)
        self.digest.update(data)
        self.tokens += len(ids)
        self.end = end
        if self.tokens >= self.shard_tokens:
            self.close()

    def _open(self) -> None:
        number = sum(shard["split"] == self.split for shard in self.done)
        self.name = f"{self.split}-{number:05d}.bin"
        self.tmp = self.directory / f".{self.name}.tmp"
        self.handle = open(self.tmp, "wb")  # noqa: SIM115 (open across add calls; closed in close)
        self.digest, self.tokens = hashlib.sha256(), 0

    def close(self) -> bool:
        """Finish the open shard: flushed, renamed into place, added to `done`."""
        if self.handle is None:
            return False
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.tmp, self.directory / self.name)
        entry = {"split": self.split, "file": self.name, "tokens": self.tokens, "end": self.end}
        self.done.append(entry | {"sha256": self.digest.hexdigest()})
        self.handle = None
        return True

    def abandon(self) -> None:
        """Drop the open shard (the preparation stopped): no partial file stays behind."""
        if self.handle is not None:
            self.handle.close()
            self.tmp.unlink(missing_ok=True)
            self.handle = None


def clean_unlisted(directory: Path, listed: list[dict]) -> None:
    """Delete shard files and leftovers that progress.json does not list as finished."""
    keep = {shard["file"] for shard in listed}
    for path in directory.iterdir():
        is_shard = path.suffix == ".bin" and path.name not in keep
        if is_shard or path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_shards(directory: Path, shards: list[dict], dtype: np.dtype, checksums: bool) -> None:
    """Every shard is there with its size; with `checksums`, with its sha256 too (hashed on
    all cores: hashlib lets go of the GIL). A bad one is one line naming it."""
    for shard in shards:
        path = directory / shard["file"]
        expected = shard["tokens"] * dtype.itemsize
        size = path.stat().st_size if path.is_file() else None
        if size != expected:
            found = "missing" if size is None else f"{size:,} bytes, expected {expected:,}"
            raise QkvError(f"{path}: shard {found}; delete {directory} and prepare it again")
    if not checksums:
        return
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        digests = pool.map(file_sha256, [directory / s["file"] for s in shards])
        for shard, digest in zip(shards, digests, strict=True):
            if digest != shard["sha256"]:
                raise QkvError(
                    f"{directory / shard['file']}: checksum mismatch (sha256 {digest[:12]}..., "
                    f"the manifest says {shard['sha256'][:12]}...): the shard is corrupt; "
                    f"delete {directory} and prepare it again"
                )


class TokenShards:
    """A split's shards as one 1-D sequence of ids: len(), ids[i] and ids[a:b] (a window
    across two shards is joined), each shard a read-only memory map."""

    def __init__(self, arrays: list[np.ndarray], dtype: np.dtype) -> None:
        self.arrays, self.dtype = arrays, dtype
        self.starts = np.cumsum([0] + [len(a) for a in arrays])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, key: int | slice) -> Any:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("token shards slice with step 1 only")
            return self._range(start, max(start, stop))
        index = key + len(self) if key < 0 else key
        if not 0 <= index < len(self):
            raise IndexError(key)
        return self._range(index, index + 1)[0]

    def _range(self, start: int, stop: int) -> np.ndarray:
        parts = list(self._parts(start, stop))
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts) if parts else np.empty(0, self.dtype)

    def _parts(self, start: int, stop: int) -> Iterator[np.ndarray]:
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        for i in range(max(first, 0), len(self.arrays)):
            lo = int(self.starts[i])
            if lo >= stop:
                return
            yield self.arrays[i][max(start - lo, 0) : stop - lo]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self._range(0, len(self))
        return whole if dtype is None else whole.astype(dtype)

    def tolist(self) -> list[int]:
        return np.asarray(self).tolist()


def map_shard(path: Path, dtype: np.dtype) -> np.ndarray:
    """A shard's ids as a read-only array over a memory map advised for random access.

    Training reads short windows at random places. Without the advice, every page fault
    reads ahead around it (the device's read_ahead_kb, 8 MB on some virtual disks), so a few
    thousand windows pull gigabytes into the process's resident set; with MADV_RANDOM a
    window maps only the pages it touches.
    """
    if path.stat().st_size == 0:
        return np.empty(0, dtype)
    with open(path, "rb") as handle:
        view = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    if hasattr(view, "madvise"):  # not on Windows
        view.madvise(mmap.MADV_RANDOM)
    return np.frombuffer(view, dtype=dtype)


def release_pages(ids: np.ndarray | TokenShards) -> None:
    """Drop the shard pages a batch touched from this process's resident set.

    The page cache keeps them (a later read is a minor fault), but a mapped page counts in
    the process's RSS until it is unmapped, and on kernels with large page-cache folios a
    window of 257 ids maps the whole folio around it (measured: 100 random windows of one
    shard, 670 KB each, MADV_RANDOM or not). Released after every batch, a run's resident
    set stays flat however long it trains on however large a corpus. nanoGPT gets the same
    by making a new np.memmap for every batch.
    """
    for array in ids.arrays if isinstance(ids, TokenShards) else [ids]:
        view = getattr(array.base, "obj", None)  # the memoryview over map_shard's mmap
        if isinstance(view, mmap.mmap) and hasattr(view, "madvise"):
            view.madvise(mmap.MADV_DONTNEED)


def map_split(directory: Path, shards: list[dict], dtype: np.dtype) -> np.ndarray | TokenShards:
    """The split's ids: the memory map itself for one shard, else a `TokenShards`."""
    arrays = [map_shard(directory / s["file"], dtype) for s in shards]
    if not arrays:
        return np.empty(0, dtype)
    return arrays[0] if len(arrays) == 1 else TokenShards(arrays, dtype)
