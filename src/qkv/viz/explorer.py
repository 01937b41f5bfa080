"""The attention explorer: one self-contained HTML page to look at attention interactively.

The page (explorer.html, shipped with the package) shows a head view like bertviz's: the
query tokens in one column, the key tokens in another, and a line from query i to key j
whose opacity is the weight a_ij of the chosen layer and head (or of every head of the
layer, one colour each). Hovering or clicking a token keeps only its lines; beside it, the
grid of heatmaps of every layer and head, which picks the layer and head on a click. Given
each head's q, k and v (viz/explain.py), a step view under it shows how the focused query's
weights come about: q_i . k_j for every key, the scaling by 1/sqrt(D), the mask, the softmax
and the weighted values, computed in the page from the model's vectors.

Everything is inline: the weights as JSON in a <script type="application/json"> element, the
script and styles in the page. It fetches nothing, so it works offline and from file://.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np

from qkv.viz.explain import HeadSteps
from qkv.viz.maps import AttentionMap
from qkv.viz.style import write_text_file

TEMPLATE = "explorer.html"
DATA_SLOT = "/*QKV_DATA*/"
DIGITS = 5  # weights are stored to 1e-5: far below what the eye sees, and a smaller page


def _map_data(attention: AttentionMap, steps: list[list[HeadSteps]] | None = None) -> dict:
    data = {
        "name": attention.name,
        "queries": attention.queries,
        "keys": attention.keys,
        "layers": attention.n_layer,
        "heads": attention.n_head,
        "weights": attention.weights.astype(np.float64).round(DIGITS).tolist(),  # [L][H][T_q][T_k]
    }
    if steps is not None:  # the step view: each head's own q, k, v, and the mask
        data["head_size"] = steps[0][0].head_size
        data["mask"] = steps[0][0].mask.astype(int).tolist()  # [T_q][T_k], 1: visible
        data["qkv"] = [
            [{name: getattr(h, name).round(DIGITS).tolist() for name in "qkv"} for h in layer]
            for layer in steps
        ]  # [L][H] {"q": [T_q][D], "k": [T_k][D], "v": [T_k][D]}
    return data


def inline_json(data: dict) -> str:
    """JSON that is safe inside a <script> element: '<', '>' and '&' written as escapes, so
    no token text can close the element or start markup."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def explorer_html(
    maps: list[AttentionMap],
    title: str = "",
    steps: dict[str, list[list[HeadSteps]]] | None = None,
) -> str:
    """The page's text, with `maps` inlined, and each head's q, k, v for the step view when
    `steps` (from viz/explain.py's `explain_maps`) are given."""
    if not maps:
        raise ValueError("no attention maps to show")
    template = resources.files("qkv.viz").joinpath(TEMPLATE).read_text(encoding="utf-8")
    steps = steps or {}
    data = {"title": title, "maps": [_map_data(m, steps.get(m.name)) for m in maps]}
    return template.replace(DATA_SLOT, inline_json(data), 1)


def write_explorer_html(
    maps: list[AttentionMap],
    path: str | Path,
    title: str = "",
    steps: dict[str, list[list[HeadSteps]]] | None = None,
) -> Path:
    """Write the explorer page for `maps` (and their step view, given `steps`) to `path`."""
    return write_text_file(path, explorer_html(maps, title, steps))
