"""Pictures of a model: attention heatmaps, the attention explorer page, training curves and
positional encodings. Everything draws with matplotlib's Agg canvas: no display needed.

- maps.py: `AttentionMap`, the model-independent description of attention the pictures take,
  and the providers that collect maps from a model (GPT's self-attention; the
  encoder-decoder's encoder self-attention, decoder self-attention and cross-attention)
- heatmaps.py: a PNG grid of heatmaps, one per layer and head
- explorer.py + explorer.html: one self-contained interactive HTML page
- curves.py: loss, learning rate and speed from a run's metrics.jsonl
- positions.py: the positional matrix and the positions' cosine similarity
- commands.py: what `qkv attention` and `qkv plot` do
"""

from qkv.viz.curves import plot_training_curves
from qkv.viz.explorer import explorer_html, write_explorer_html
from qkv.viz.heatmaps import attention_figure, draw_attention_png
from qkv.viz.maps import (
    AttentionMap,
    checkpoint_attention_maps,
    gpt_attention_maps,
    seq2seq_attention_maps,
)
from qkv.viz.positions import plot_positions

__all__ = [
    "AttentionMap",
    "attention_figure",
    "checkpoint_attention_maps",
    "draw_attention_png",
    "explorer_html",
    "gpt_attention_maps",
    "plot_positions",
    "plot_training_curves",
    "seq2seq_attention_maps",
    "write_explorer_html",
]
