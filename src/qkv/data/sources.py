"""Where a corpus's text comes from, read as a stream of pieces in bounded memory.

A source is a named corpus, one file, or a directory walked recursively (its files in sorted
order). A file is read by its name: `.jsonl` holds one JSON object a line whose `text` field
(or `text_field`) is a record; `.parquet` a table whose `text` column holds the records (read
through pyarrow, one batch of rows at a time); anything else is UTF-8 text. `.gz` on top of
text or JSONL is gunzipped as it is read. A directory counts its `.txt`, `.jsonl` and
`.parquet` files (and their `.gz`), so a directory of .txt files means what it always meant.

The corpus's text is the files' texts one after the other, exactly as a text file's bytes say
(so one text file gives the text it always gave); each record of a JSONL or Parquet file is
followed by `RECORD_END`, a blank line, so documents stay apart. Nothing holds more than a
block (a few MB) or a batch of rows at once; every way a file can be bad is one QkvError line.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import hashlib
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from qkv.atomic import atomic_write_bytes
from qkv.data.cache import cache_dir
from qkv.data.corpora import NAMED_CORPORA, load_named_corpus
from qkv.errors import QkvError

BLOCK = 4 << 20  # bytes read at a time
RECORD_END = "\n\n"  # after each JSONL or Parquet record
_FORMATS = {".txt": "text", ".jsonl": "jsonl", ".parquet": "parquet"}
_GZIP_ERRORS = (OSError, EOFError, zlib.error)  # gzip.BadGzipFile is an OSError


@dataclass(frozen=True)
class SourceFile:
    """One file of a source (or a named corpus's text, held in `text`)."""

    name: str  # as the user knows it, for messages and the manifest
    format: str  # text | jsonl | parquet
    path: Path | None = None
    gzipped: bool = False
    text: str | None = None  # a named corpus, already in memory (a few MB)

    def size(self) -> int:
        """Bytes as stored (compressed, for .gz), for progress bars."""
        if self.text is not None:
            return len(self.text.encode("utf-8"))
        return self.path.stat().st_size


def source_files(source: str) -> list[SourceFile]:
    """The files of a named corpus, a file or a directory, in the order their texts join."""
    if source in NAMED_CORPORA:
        return [SourceFile(source, "text", text=load_named_corpus(source))]
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _format_of(p) is not None)
        if not files:
            raise QkvError(f"{path}: the directory holds no .txt, .jsonl or .parquet files")
        return [_file(p, str(p.relative_to(path))) for p in files]
    if path.exists():
        return [_file(path, str(path))]
    known = ", ".join(NAMED_CORPORA)
    raise QkvError(f"{source}: no such file or directory, and not a named corpus ({known})")


def _format_of(path: Path) -> str | None:
    """text | jsonl | parquet by the name (under .gz), None for a name a directory ignores."""
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return _FORMATS.get(Path(name).suffix)


def _file(path: Path, name: str) -> SourceFile:
    gzipped = path.name.endswith(".gz")
    fmt = _format_of(path) or "text"  # a file named on its own is text unless it says more
    if fmt == "parquet" and gzipped:
        raise QkvError(f"{name}: Parquet compresses itself; give the .parquet file, not .gz")
    return SourceFile(name, fmt, path=path, gzipped=gzipped)


def file_sha256(file: SourceFile) -> str:
    """The sha256 of the file as stored: what a cached preparation is keyed by.

    Remembered in the cache with the file's size and modification time (as make and rsync
    judge a file unchanged), so a run on a prepared 20 GB corpus, and every rank of a job,
    does not read it all again just to know it is the same.
    """
    if file.text is not None:
        return hashlib.sha256(file.text.encode("utf-8")).hexdigest()
    try:
        stat = file.path.stat()
        stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        memo = _sha256_memo(file.path)
        known = _read_memo(memo)
        if known is not None and {k: known.get(k) for k in stamp} == stamp:
            return known["sha256"]
        digest = hashlib.sha256()
        with open(file.path, "rb") as handle:
            while block := handle.read(BLOCK):
                digest.update(block)
    except OSError as exc:
        raise QkvError(f"{file.name}: cannot read the file ({exc.strerror})") from None
    stamp["sha256"] = digest.hexdigest()
    with contextlib.suppress(OSError):  # remembering only saves time
        atomic_write_bytes(memo, json.dumps(stamp).encode())
    return stamp["sha256"]


def _sha256_memo(path: Path) -> Path:
    name = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]
    return cache_dir() / "sha256" / f"{name}.json"


def _read_memo(path: Path) -> dict | None:
    try:
        memo = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return memo if isinstance(memo, dict) and isinstance(memo.get("sha256"), str) else None


def read_pieces(file: SourceFile, text_field: str = "text", skip: int = 0) -> Iterator[str]:
    """The file's text as consecutive pieces of a few MB, from character `skip` on."""
    readers = {"text": _text_pieces, "jsonl": _jsonl_pieces, "parquet": _parquet_pieces}
    pieces = readers[file.format](file, text_field)
    for piece in pieces:
        if skip >= len(piece):
            skip -= len(piece)
            continue
        yield piece[skip:] if skip else piece
        skip = 0


def _open(file: SourceFile):
    try:
        return gzip.open(file.path, "rb") if file.gzipped else open(file.path, "rb")
    except OSError as exc:
        raise QkvError(f"{file.name}: cannot read the file ({exc.strerror})") from None


def _blocks(file: SourceFile) -> Iterator[bytes]:
    with _open(file) as handle:
        while True:
            try:
                block = handle.read(BLOCK)
            except _GZIP_ERRORS as exc:
                what = "a readable gzip file" if file.gzipped else "readable"
                raise QkvError(f"{file.name}: not {what} ({exc})") from None
            if not block:
                return
            yield block


def _text_pieces(file: SourceFile, text_field: str) -> Iterator[str]:
    """UTF-8 text, decoded block by block (a character may straddle two blocks)."""
    if file.text is not None:
        yield from (file.text[i : i + BLOCK] for i in range(0, len(file.text), BLOCK))
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    for block in _blocks(file):
        if b"\x00" in block:
            raise QkvError(
                f"{file.name}: looks like a binary file (it contains NUL bytes), not text"
            )
        yield _decode(decoder, block, offset, file.name)
        offset += len(block)
    _decode(decoder, b"", offset, file.name, final=True)


def _decode(decoder, block: bytes, offset: int, name: str, final: bool = False) -> str:
    try:
        return decoder.decode(block, final)
    except UnicodeDecodeError as exc:
        where = max(0, offset + exc.start - len(exc.object) + len(block))
        raise QkvError(
            f"{name}: not valid UTF-8 (byte {where}); convert it to UTF-8 first"
        ) from None


def _jsonl_pieces(file: SourceFile, text_field: str) -> Iterator[str]:
    """Each line's `text_field`, gathered into pieces of about BLOCK characters."""
    batch: list[str] = []
    size = 0
    with _open(file) as handle:
        for number, line in enumerate(_lines(handle, file), start=1):
            if not line.strip():
                continue
            text = _record_text(line, text_field, f"{file.name}:{number}")
            batch.append(text + RECORD_END)
            size += len(text) + len(RECORD_END)
            if size >= BLOCK:
                yield "".join(batch)
                batch, size = [], 0
    if batch:
        yield "".join(batch)


def _lines(handle, file: SourceFile) -> Iterator[bytes]:
    try:
        yield from handle
    except _GZIP_ERRORS as exc:
        raise QkvError(f"{file.name}: not a readable gzip file ({exc})") from None


def _record_text(line: bytes, field: str, where: str) -> str:
    try:
        record = json.loads(line)
    except UnicodeDecodeError:
        raise QkvError(f"{where}: not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise QkvError(f"{where}: not valid JSON ({exc.msg}, column {exc.colno})") from None
    if not isinstance(record, dict) or field not in record:
        raise QkvError(f"{where}: no {field!r} field in the record (set --text-field NAME)")
    text = record[field]
    if not isinstance(text, str):
        kind = type(text).__name__
        raise QkvError(f"{where}: the {field!r} field is a {kind}, not a string")
    if b"\\ud" in line.lower():  # a JSON escape may spell half a UTF-16 pair, alone
        _check_encodable(text, where)
    return text


def _check_encodable(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise QkvError(f"{where}: the text holds a lone UTF-16 surrogate") from None


def _parquet_pieces(file: SourceFile, text_field: str) -> Iterator[str]:
    """The `text_field` column, one batch of rows at a time (pyarrow streams row groups)."""
    table = _parquet_file(file)
    if text_field not in table.schema_arrow.names:
        names = ", ".join(table.schema_arrow.names)
        raise QkvError(
            f"{file.name}: no column {text_field!r} (its columns: {names}; set --text-field NAME)"
        )
    row = 0
    for batch in table.iter_batches(batch_size=4096, columns=[text_field]):
        texts = batch.column(0).to_pylist()
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                kind = "null" if text is None else type(text).__name__
                raise QkvError(f"{file.name}: row {row + i} of {text_field!r} is {kind}, not text")
        row += len(texts)
        yield RECORD_END.join(texts) + RECORD_END if texts else ""


def _parquet_file(file: SourceFile):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise QkvError(f"{file.name}: reading Parquet needs pyarrow: pip install pyarrow") from None
    try:
        return pq.ParquetFile(file.path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid, OSError, ...
        raise QkvError(f"{file.name}: not a readable Parquet file ({exc})") from None
