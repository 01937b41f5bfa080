"""Preparing a corpus once: a source of any size -> token shards, tokenizer and manifest.

The passes, each over the text in chunks of a few MB, so memory does not grow with the corpus:

1. scan: count each file's characters (the train/val cut is a character, as always: the last
   `val_fraction` of the text is the val split, nanoGPT's convention) and, for a character
   tokenizer, collect the characters, so the vocabulary comes from the whole text;
2. for a BPE to learn: feed the train split to the `tokenizers` trainer as an iterator of
   parts (`BPETokenizer.train_from_chunks`). The whole train split rather than a sample:
   memory is the trainer's count per distinct word, which grows with the corpus's vocabulary
   and not its size, and for one text file the merges are exactly those learned from the whole
   text before, so today's BPE runs and their val losses do not move;
3. encode on every core (`encode`) into shards (`shards`), with progress.json written after
   each, so a preparation that is killed goes on from its last whole shard next time.

`prepare` writes into a directory of the user's (`qkv prepare --out DIR`) or into the cache,
keyed by the source's sha256s, the split and the tokenizer (`qkv train --data SRC`). Two
processes preparing the same directory (ranks of a job on a shared file system) take turns
through a lock file; the second finds the work done.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import takewhile
from pathlib import Path

from qkv.atomic import atomic_write
from qkv.data import encode
from qkv.data.cache import cache_dir
from qkv.data.chunks import CHUNK, bpe_boundary, chunks, sub_chunks
from qkv.data.shards import (
    FORMAT,
    MANIFEST,
    PROGRESS,
    SHARD_TOKENS,
    TOKENIZER,
    ShardWriter,
    check_shards,
    clean_unlisted,
    read_json,
    token_dtype,
    write_json,
)
from qkv.data.sources import SourceFile, file_sha256, read_pieces, source_files
from qkv.errors import QkvError
from qkv.tokenizer import DEFAULT_BPE_VOCAB, BPETokenizer, CharTokenizer, Tokenizer
from qkv.tokenizer.char import characters_in
from qkv.tokenizer.files import load_tokenizer


@dataclass(frozen=True)
class Request:
    """What to prepare: a source, how to split it, and its tokenizer: given (a checkpoint's),
    or `kind` char | bpe (learned, of `vocab_size`) | a directory holding a pretrained one."""

    source: str
    kind: str = "char"
    vocab_size: int | None = None
    tokenizer: Tokenizer | None = None
    text_field: str = "text"
    val_fraction: float = 0.1

    def learned_key(self) -> str | None:
        """The cache's name for the tokenizer this request learns, if it learns one."""
        if self.kind == "char":
            return "char"
        return f"bpe{self.vocab_size or DEFAULT_BPE_VOCAB}" if self.kind == "bpe" else None

    def key(self) -> str:
        if self.tokenizer is not None:
            return f"tokenizer-{self.tokenizer.fingerprint()[:16]}"
        return self.learned_key()


def prepare(
    request: Request,
    out: str | Path | None = None,
    *,
    progress: bool | None = None,
    shard_tokens: int = SHARD_TOKENS,
    chunk_chars: int = CHUNK,
) -> Path:
    """The prepared directory of `request`: `out`, or one in the cache; prepared unless it
    already is (and continued if a preparation was cut short)."""
    files = source_files(request.source)
    if request.tokenizer is None and request.learned_key() is None:  # a pretrained tokenizer
        tokenizer = BPETokenizer.from_pretrained(Path(request.kind).expanduser())
        request = dataclasses.replace(request, tokenizer=tokenizer)
    identity = source_identity(files, request)
    directory = Path(out) if out is not None else _cached_directory(identity, request)
    if _is_done(directory, identity, request, explicit=out is not None):
        return directory
    _claim(directory)
    with _lock(directory):
        if not _is_done(directory, identity, request, explicit=out is not None):
            job = _Job(directory, files, identity, request, progress)
            job.run(shard_tokens, chunk_chars)
    return directory


def source_identity(files: list[SourceFile], request: Request) -> dict:
    """What the data are: each file's name, format and sha256, the text field, the split."""
    records = any(f.format != "text" for f in files)
    return {
        "files": [[f.name, f.format, file_sha256(f)] for f in files],
        "text_field": request.text_field if records else None,
        "val_fraction": request.val_fraction,
    }


def _cached_directory(identity: dict, request: Request) -> Path:
    """Where the cache keeps it; a given tokenizer reuses the run's own learned preparation."""

    def place(key: str) -> Path:
        name = json.dumps([FORMAT, identity, key], sort_keys=True)
        return cache_dir() / "prepared" / hashlib.sha256(name.encode()).hexdigest()[:32]

    learned = request.learned_key()
    if request.tokenizer is not None and learned is not None:
        directory = place(learned)
        if _is_done(directory, identity, request, explicit=False):
            return directory
    return place(request.key())


def _is_done(directory: Path, identity: dict, request: Request, explicit: bool) -> bool:
    """Whether `directory` holds this preparation, finished; another one in a directory the
    user named is an error, not something to overwrite."""
    manifest = read_json(directory / MANIFEST)
    if manifest is None:
        return False
    fingerprint = manifest.get("tokenizer", {}).get("fingerprint")
    same_tokenizer = request.tokenizer is None or request.tokenizer.fingerprint() == fingerprint
    if manifest.get("source") == identity and same_tokenizer:
        return True
    if explicit:
        raise QkvError(
            f"{directory} already holds a corpus prepared from other data or with another "
            "tokenizer; give another --out, or delete it"
        )
    return False


def _claim(directory: Path) -> None:
    """Make the directory, refusing one that holds files but is no preparation of qkv's."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QkvError(f"cannot create {directory} ({exc.strerror})") from None
    ours = {MANIFEST, PROGRESS, TOKENIZER, ".lock"}
    names = {p.name for p in directory.iterdir()}
    if names and not names & ours:
        raise QkvError(f"{directory} is not empty and holds no prepared corpus; use another --out")


@contextmanager
def _lock(directory: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: one preparer at a time is the user's to keep
        yield
        return
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


class _Job:
    """One preparation into `directory`, started afresh or continued from progress.json."""

    def __init__(self, directory, files, identity, request: Request, progress) -> None:
        self.directory, self.files, self.identity = directory, files, identity
        self.request, self.progress = request, progress

    def run(self, shard_tokens: int, chunk_chars: int) -> None:
        self.chunk_chars = chunk_chars
        state, tokenizer = self._resumed() or self._fresh()
        dtype = token_dtype(tokenizer.vocab_size)
        writer = ShardWriter(self.directory, dtype, shard_tokens, state["shards"])
        start = state["shards"][-1]["end"] if state["shards"] else 0
        pieces = self._text_from(state["chars"], start)
        parts = chunks(pieces, start, state["cut"], encode.boundary_for(tokenizer), chunk_chars)
        total = sum(state["chars"])
        bar = encode.progress_bar("encode", state["bytes"], self.progress)
        bar.update(round(state["bytes"] * start / total))
        try:
            for part in encode.encode_chunks(tokenizer, parts, dtype, total - start):
                finished = len(writer.done)
                writer.add(part.split, part.ids, part.end)
                if len(writer.done) > finished:
                    write_json(self.directory / PROGRESS, state)
                bar.update(part.nbytes)
            writer.close()
        except BaseException:
            writer.abandon()
            raise
        finally:
            bar.close()
        self._finish(state, tokenizer, dtype)

    def _text_from(self, chars: list[int], start: int) -> Iterator[str]:
        """The whole text's pieces from character `start` on (whole files skipped unread)."""
        offset = 0
        for file, count in zip(self.files, chars, strict=True):
            if start < offset + count:
                yield from read_pieces(file, self.request.text_field, max(0, start - offset))
            offset += count

    def _resumed(self) -> tuple[dict, Tokenizer] | None:
        """progress.json's state and tokenizer, if they are this request's and intact."""
        state = read_json(self.directory / PROGRESS)
        if state is None or state.get("source") != self.identity:
            return None
        if state.get("request") != self.request.key():
            return None
        try:
            tokenizer = load_tokenizer(self.directory / TOKENIZER)
            if tokenizer.fingerprint() != state["tokenizer"]:
                return None
            dtype = token_dtype(tokenizer.vocab_size)
            check_shards(self.directory, state["shards"], dtype, checksums=True)
        except (QkvError, KeyError):
            return None  # anything amiss: start again
        clean_unlisted(self.directory, state["shards"])
        return state, tokenizer

    def _fresh(self) -> tuple[dict, Tokenizer]:
        for name in (PROGRESS, TOKENIZER, MANIFEST):
            (self.directory / name).unlink(missing_ok=True)
        clean_unlisted(self.directory, [])
        request = self.request
        chars, nbytes, codes = self._scan(request.tokenizer is None and request.kind == "char")
        total = sum(chars)
        if total == 0:
            raise QkvError(f"{request.source}: the text is empty")
        cut = int(total * (1.0 - request.val_fraction))
        tokenizer = request.tokenizer or self._learn(chars, cut, codes, nbytes)
        atomic_write(self.directory / TOKENIZER, tokenizer.save)
        state = {"format": FORMAT, "source": self.identity, "request": request.key()}
        state |= {"chars": chars, "bytes": nbytes, "cut": cut, "shards": []}
        state["tokenizer"] = tokenizer.fingerprint()
        write_json(self.directory / PROGRESS, state)
        return state, tokenizer

    def _scan(self, collect: bool) -> tuple[list[int], int, set[int]]:
        """Characters per file, bytes of text in all, and (if `collect`) the code points."""
        plain = all(f.format == "text" and not f.gzipped for f in self.files)
        total = sum(f.size() for f in self.files) if plain else None
        chars, nbytes, codes = [], 0, set()
        with encode.progress_bar("scan", total, self.progress) as bar:
            for file in self.files:
                count = 0
                for piece in read_pieces(file, self.request.text_field):
                    count += len(piece)
                    size = encode.utf8_size(piece)
                    nbytes += size
                    bar.update(size)
                    if collect:
                        codes.update(characters_in(piece).tolist())
                chars.append(count)
        return chars, nbytes, codes

    def _learn(self, chars: list[int], cut: int, codes: set[int], nbytes: int) -> Tokenizer:
        if self.request.kind == "char":
            return CharTokenizer.from_code_points(sorted(codes))
        vocab_size = self.request.vocab_size or DEFAULT_BPE_VOCAB
        train_bytes = round(nbytes * cut / sum(chars))
        parts = self._train_parts(chars, cut, train_bytes)
        return BPETokenizer.train_from_chunks(parts, vocab_size)

    def _train_parts(self, chars: list[int], cut: int, nbytes: int) -> Iterator[str]:
        """The train split in parts of 64K characters for the BPE trainer, with a bar."""
        with encode.progress_bar("learn bpe", nbytes, self.progress) as bar:
            pieces = chunks(self._text_from(chars, 0), 0, cut, bpe_boundary, self.chunk_chars)
            for chunk in takewhile(lambda c: c.split == "train", pieces):
                yield from sub_chunks(chunk.text, bpe_boundary, encode.BATCH_PART)
                bar.update(encode.utf8_size(chunk.text))

    def _finish(self, state: dict, tokenizer: Tokenizer, dtype) -> None:
        shards = state["shards"]
        splits = {
            split: {
                "tokens": sum(s["tokens"] for s in shards if s["split"] == split),
                "shards": [s for s in shards if s["split"] == split],
            }
            for split in ("train", "val")
        }
        total, cut = sum(state["chars"]), state["cut"]
        manifest = {"format": FORMAT, "source": self.identity}
        manifest["chars"] = {"total": total, "train": [0, cut], "val": [cut, total]}
        manifest["tokenizer"] = {
            "kind": tokenizer.kind,
            "vocab_size": tokenizer.vocab_size,
            "fingerprint": tokenizer.fingerprint(),
            "request": self.request.key(),
        }
        manifest |= {"dtype": dtype.name, "splits": splits, "files_chars": state["chars"]}
        write_json(self.directory / MANIFEST, manifest)
        (self.directory / PROGRESS).unlink(missing_ok=True)
