"""Where qkv keeps files it downloaded, and how it writes them safely.

Corpora are fetched once and reused, so they need a per-user home that survives between
runs. The location follows the usual conventions: an explicit `QKV_CACHE_DIR` wins (handy
for tests and shared machines), then the XDG base-directory spec, then `~/.cache/qkv`.

Cache files are written with `qkv.atomic.atomic_write_bytes`: a run killed half-way through a
download must never leave a truncated file that a later run would mistake for a complete one.
"""

from __future__ import annotations

import os
from pathlib import Path

from qkv.errors import QkvError

_APP_NAME = "qkv"


def _configured_cache_root() -> Path:
    """The cache directory named by the environment, without touching the file system."""
    explicit = os.environ.get("QKV_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says relative values are invalid and must be ignored.
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / _APP_NAME
    return Path.home() / ".cache" / _APP_NAME


def cache_dir() -> Path:
    """The user's qkv cache directory, created if it does not exist yet."""
    root = _configured_cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QkvError(
            f"cannot create the cache directory {root} ({exc.strerror or exc}); "
            "set QKV_CACHE_DIR to a writable directory"
        ) from exc
    return root
