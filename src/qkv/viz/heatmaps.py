"""Attention as heatmaps: one panel per layer and head, queries down, keys across.

Panel (l, h) of a map shows the matrix a_ij of layer l's head h (the Annotated Transformer's
attention pictures): row i is query token i's distribution over the key tokens, so each row
sums to 1. In a causal self-attention map everything above the diagonal is 0 (a token never
sees the future). A head that reads the previous token is a bright line just below the
diagonal; one that reads the start of a word lights up the columns where words begin.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure, SubFigure

from qkv.viz.maps import AttentionMap
from qkv.viz.style import display_token, new_figure, save_figure

COLORMAP = "magma"


def _panel_inches(n_tokens: int) -> float:
    """A panel grows with the tokens it shows, so their labels stay legible."""
    return min(4.0, max(2.2, 0.11 * n_tokens))


def _label_size(n_tokens: int, inches: float) -> float:
    """Font size (points) at which n_tokens labels fit side by side in `inches`."""
    return max(3.0, min(9.0, 0.85 * inches * 72 / max(1, n_tokens)))


def _tick_tokens(axes, tokens: list[str], axis: str, inches: float) -> None:
    labels = [display_token(t) for t in tokens]
    size = _label_size(len(labels), inches)
    step = 1 if size > 3.0 else -(-len(labels) * 3 // int(0.8 * inches * 72))
    ticks = list(range(0, len(labels), step))
    if axis == "x":
        axes.set_xticks(ticks, [labels[i] for i in ticks], rotation=90, fontsize=size)
    else:
        axes.set_yticks(ticks, [labels[i] for i in ticks], fontsize=size)


def _draw_map(figure: Figure | SubFigure, attention: AttentionMap, inches: float) -> None:
    grid = figure.subplots(attention.n_layer, attention.n_head, squeeze=False)
    image = None
    for layer in range(attention.n_layer):
        for head in range(attention.n_head):
            axes = grid[layer, head]
            image = axes.imshow(
                attention.weights[layer, head],
                cmap=COLORMAP,
                vmin=0.0,
                vmax=1.0,
                interpolation="nearest",
                aspect="auto",
            )
            axes.set_title(f"layer {layer}, head {head}", fontsize=9)
            axes.set_xticks([])
            axes.set_yticks([])
        # the panels line up, so the tokens along the left and bottom edges label them all
        _tick_tokens(grid[layer, 0], attention.queries, "y", inches)
        grid[layer, 0].set_ylabel("query token", fontsize=8)
    for head in range(attention.n_head):
        _tick_tokens(grid[-1, head], attention.keys, "x", inches)
        grid[-1, head].set_xlabel("key token (attended to)", fontsize=8)
    for axes in grid.flat:
        axes.tick_params(length=0, pad=1)
    colorbar = figure.colorbar(image, ax=grid, shrink=0.6, aspect=30, pad=0.01)
    colorbar.set_label("attention weight a_ij (each row sums to 1)", fontsize=8)
    figure.suptitle(
        f"{attention.name}: {attention.n_layer} layers x {attention.n_head} heads",
        fontsize=11,
    )


def attention_figure(maps: list[AttentionMap], title: str = "") -> Figure:
    """The heatmap grid of every map, stacked top to bottom, each with its own colorbar."""
    if not maps:
        raise ValueError("no attention maps to draw")
    inches = _panel_inches(max(max(len(m.queries), len(m.keys)) for m in maps))
    width = max(m.n_head for m in maps) * inches + 1.2
    heights = [m.n_layer * (inches + 0.35) + 0.6 for m in maps]
    figure = new_figure(width, sum(heights) + (0.4 if title else 0.0))
    if title:
        figure.suptitle(title, fontsize=12)
    parts = figure.subfigures(len(maps), 1, height_ratios=heights, squeeze=False)[:, 0]
    for part, attention in zip(parts, maps, strict=True):
        _draw_map(part, attention, inches)
    return figure


def draw_attention_png(
    maps: list[AttentionMap], path: str | Path, title: str = "", dpi: int = 100
) -> Path:
    """Write the heatmap grid of `maps` to a PNG file."""
    return save_figure(attention_figure(maps, title), path, dpi=dpi)
