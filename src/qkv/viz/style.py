"""What every qkv picture shares: an Agg-backed figure, saving it, and tokens made visible.

Figures are built with matplotlib's object API on an Agg canvas (no pyplot, no display, no
global backend switch), so drawing works on a headless server and inside a notebook alike.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from qkv.errors import QkvError

# characters that would be invisible or break a label, and what is drawn instead
_VISIBLE = {" ": "\u2423", "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d"}


def display_token(token: str) -> str:
    """A token as it should appear in a label: spaces as ␣, newlines as ↵, tabs as ⇥."""
    return "".join(_VISIBLE.get(c, c) for c in token) or "\u2205"


def new_figure(width: float, height: float) -> Figure:
    """A figure of width x height inches, drawn by Agg."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write the figure as a PNG; an unwritable path is one clear error."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=dpi, format="png")
    except OSError as exc:
        raise QkvError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def write_text_file(path: str | Path, text: str) -> Path:
    """Write a UTF-8 text file (the explorer page); an unwritable path is one clear error."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise QkvError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
