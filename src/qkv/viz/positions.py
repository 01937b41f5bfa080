"""Pictures of positions: the positional matrix and how similar positions are to each other.

Left: the matrix P, one column per position i, one row per channel (the notes' P in R^{C x T}).
Right: the cosine similarity cos(p_i, p_j) = p_i . p_j / (|p_i| |p_j|) of every pair of
positions: how much two positions look alike to attention.

- sinusoidal (the paper, section 3.5): fixed sines and cosines of falling frequency; the
  similarity depends only on |i - j| and falls off smoothly, a band along the diagonal.
- learned (GPT-2, the notes' P): whatever training made of it; nearby positions usually end
  up similar, which shows as a band too, noisier.
- rotary (RoPE): nothing is added to the embeddings. Each query and key channel pair (2k, 2k+1)
  is rotated by the angle i * theta_k. What it does to the scores is drawn instead: the rows
  r_i = (cos(i theta_k), sin(i theta_k))_k, whose similarity mean_k cos((i - j) theta_k) is the
  factor by which RoPE's rotation weighs a query at i against a key at j.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from qkv.config.gpt import GPTConfig
from qkv.errors import QkvError
from qkv.nn.positional import RotaryEmbedding, sinusoidal_table
from qkv.viz.style import new_figure, save_figure

SINUSOIDAL = "sinusoidal"  # `qkv plot --positions sinusoidal`: the paper's table, no checkpoint


def cosine_similarity(table: np.ndarray) -> np.ndarray:
    """(T, C) rows -> (T, T) cosines between every pair of rows (0 for a zero row)."""
    norms = np.linalg.norm(table, axis=1, keepdims=True)
    unit = table / np.where(norms > 0, norms, 1.0)
    return unit @ unit.T


def rotary_table(head_size: int, block_size: int) -> np.ndarray:
    """(T, D) rows (cos(i theta_k), sin(i theta_k)) interleaved, from RoPE's own angles."""
    rotations = RotaryEmbedding(head_size, block_size).rotations  # (T, D/2) complex
    return torch.view_as_real(rotations).flatten(-2).numpy()


def positional_table(kind: str, config: GPTConfig, model: torch.nn.Module | None) -> np.ndarray:
    """The (T, C) table a model of `config` uses (its learned P when `model` is given)."""
    if kind == "learned":
        if model is None:
            raise QkvError("learned positions need a checkpoint to draw")
        return model.transformer.wpe.weight.detach().float().cpu().numpy()
    if kind == "sinusoidal":
        return sinusoidal_table(config.block_size, config.n_embd).numpy()
    if kind == "rotary":
        return rotary_table(config.head_size, config.block_size)
    if kind == "none":
        raise QkvError("this model has no positions to draw (model.positional=none)")
    raise QkvError(f"unknown positional kind {kind!r}")


def positions_figure(table: np.ndarray, kind: str, title: str) -> Figure:
    """The matrix (channels x positions) and the positions' cosine similarity, side by side."""
    figure = new_figure(13, 5.5)
    matrix_axes, similarity_axes = figure.subplots(1, 2, width_ratios=[1.25, 1])
    limit = float(np.abs(table).max()) or 1.0
    image = matrix_axes.imshow(
        table.T, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest"
    )
    shape = "D x T, (cos, sin)(i theta_k)" if kind == "rotary" else "C x T"
    matrix_axes.set(xlabel="position i", ylabel="channel", title=f"{kind} positions ({shape})")
    figure.colorbar(image, ax=matrix_axes, label="value", shrink=0.9)
    similarity = cosine_similarity(table)
    image = similarity_axes.imshow(similarity, cmap="RdBu_r", vmin=-1, vmax=1)
    similarity_axes.set(
        xlabel="position j", ylabel="position i", title="cosine similarity cos(p_i, p_j)"
    )
    figure.colorbar(image, ax=similarity_axes, label="cosine", shrink=0.9)
    figure.suptitle(title)
    return figure


def checkpoint_positions(model, config, directory: str | Path) -> tuple[np.ndarray, str, str]:
    """A GPT checkpoint's positional table, its kind and a title."""
    kind = config.model.positional
    what = f"{directory}: {kind} positions, {config.model.block_size} x {config.model.n_embd}"
    if kind == "rotary":
        what += f" (per head, D = {config.model.head_size}: what the rotation does to scores)"
    return positional_table(kind, config.model, model), kind, what


def plot_positions(source: str | Path, out: str | Path) -> Path:
    """Draw a checkpoint's positions (or, for source "sinusoidal" when no such directory
    exists, the paper's table at qkv's default sizes) to the PNG `out`."""
    if str(source) == SINUSOIDAL and not Path(source).exists():
        defaults = GPTConfig()
        table = positional_table(SINUSOIDAL, defaults, None)
        what = f"the paper's sinusoids, {defaults.block_size} positions x {defaults.n_embd}"
        return save_figure(positions_figure(table, SINUSOIDAL, what), out, dpi=90)
    from qkv.checkpoint import open_checkpoint

    checkpoint = open_checkpoint(source)
    positions = checkpoint.kind.verb("positions", str(source))
    table, kind, what = positions(checkpoint.model(), checkpoint.config, source)
    return save_figure(positions_figure(table, kind, what), out, dpi=90)
