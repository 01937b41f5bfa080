"""Heads forming: the probe text's attention at each evaluation of a run (viz/probe.py), as a
page with a slider (over_training.html) or an animated GIF, with each head's entropy and its
previous-token and same-word scores over the steps (viz/head_stats.py).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np

from qkv.errors import QkvError
from qkv.viz.explorer import inline_json
from qkv.viz.head_stats import STATS, head_stats
from qkv.viz.maps import AttentionMap
from qkv.viz.probe import ProbeRecord
from qkv.viz.style import display_token, new_figure, write_text_file

TEMPLATE = "over_training.html"
DATA_SLOT = "/*QKV_DATA*/"
DIGITS = 3  # weights on the page: 3 decimals, as float16 recorded them


def _is_self_attention(attention: AttentionMap) -> bool:
    return "cross" not in attention.name


def map_stats(attention: AttentionMap) -> dict[str, np.ndarray]:
    """{stat: (L, H)} of one recorded map."""
    tokens = attention.keys if _is_self_attention(attention) else None
    return head_stats(attention.weights, tokens)


def stats_over_steps(records: list[ProbeRecord], map_index: int = 0) -> dict[str, np.ndarray]:
    """{stat: (steps, L, H)} of map `map_index` over every record."""
    per_step = [map_stats(r.maps[map_index]) for r in records]
    return {name: np.stack([s[name] for s in per_step]) for name in per_step[0]}


def _frame(attention: AttentionMap) -> dict:
    stats = map_stats(attention)
    return {
        "queries": attention.queries,
        "keys": attention.keys,
        "weights": attention.weights.astype(np.float64).round(DIGITS).tolist(),  # [L][H][T_q][T_k]
        "stats": {name: values.round(4).tolist() for name, values in stats.items()},
    }


def over_training_data(records: list[ProbeRecord], title: str = "") -> dict:
    """What the page shows: each kind of attention, one frame per recorded step."""
    first = records[0]
    maps = []
    for n, attention in enumerate(first.maps):
        maps.append(
            {
                "name": attention.name,
                "layers": attention.n_layer,
                "heads": attention.n_head,
                "frames": [_frame(r.maps[n]) for r in records],
            }
        )
    return {"title": title, "text": first.text, "steps": [r.step for r in records], "maps": maps}


def over_training_html(records: list[ProbeRecord], title: str = "") -> str:
    template = resources.files("qkv.viz").joinpath(TEMPLATE).read_text(encoding="utf-8")
    return template.replace(DATA_SLOT, inline_json(over_training_data(records, title)), 1)


def write_over_training_html(records: list[ProbeRecord], path: str | Path, title: str = "") -> Path:
    """The self-contained page with a slider over the steps."""
    return write_text_file(path, over_training_html(records, title))


# -- the GIF ---------------------------------------------------------------------------------


def _draw_frame(figure, records: list[ProbeRecord], index: int, title: str) -> None:
    """Frame `index`: the first map's heads at that step, and its stats up to it."""
    figure.clear()
    attention = records[index].maps[0]
    stats = stats_over_steps(records)
    steps = [r.step for r in records]
    layers, heads = attention.n_layer, attention.n_head
    grid = figure.subplots(layers + 1, max(heads, len(stats)), squeeze=False)
    for layer in range(layers):
        for head in range(grid.shape[1]):
            axes = grid[layer, head]
            axes.set_axis_off()
            if head >= heads:
                continue
            axes.imshow(attention.weights[layer, head], cmap="magma", vmin=0, vmax=1,
                        interpolation="nearest", aspect="auto")  # fmt: skip
            scores = "  ".join(f"{_short(n)} {stats[n][index, layer, head]:.2f}" for n in stats)
            axes.set_title(f"layer {layer}, head {head}\n{scores}", fontsize=7)
    for n, name in enumerate(stats):
        axes = grid[layers, n]
        for layer in range(layers):
            for head in range(heads):
                axes.plot(steps, stats[name][:, layer, head], lw=1,
                          ls=("-", "--", ":", "-.")[layer % 4], color=f"C{head}")  # fmt: skip
        axes.axvline(steps[index], color="#d62728", lw=1)
        axes.set_ylim(0, max(0.05, 1.1 * float(stats[name].max())))
        axes.set_title(name, fontsize=8)
        axes.tick_params(labelsize=6)
    for n in range(len(stats), grid.shape[1]):
        grid[layers, n].set_axis_off()
    text = "".join(display_token(t) for t in attention.keys)
    figure.suptitle(f"{title}{attention.name} of {text!r}, step {steps[index]}", fontsize=9)


def _short(name: str) -> str:
    return {"entropy": "H", "previous token": "prev", "same word": "word"}.get(name, name)


def write_over_training_gif(
    records: list[ProbeRecord], path: str | Path, title: str = "", fps: float = 2.0
) -> Path:
    """An animation, one frame per recorded step, through matplotlib's pillow writer."""
    from matplotlib import animation

    if not animation.writers.is_available("pillow"):
        raise QkvError("writing a GIF needs Pillow (pip install pillow); or write an .html page")
    attention = records[0].maps[0]
    figure = new_figure(2.2 * max(attention.n_head, len(STATS)), 2.3 * (attention.n_layer + 1))
    label = f"{title}: " if title else ""
    movie = animation.FuncAnimation(
        figure, lambda i: _draw_frame(figure, records, i, label), frames=len(records)
    )
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        movie.save(path, writer=animation.PillowWriter(fps=fps), dpi=80)
    except OSError as exc:
        raise QkvError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def describe(records: list[ProbeRecord]) -> str:
    """One line: how many steps, which maps, the probe."""
    attention = records[0].maps[0]
    return (
        f"{len(records)} evaluations (steps {records[0].step}-{records[-1].step}) of "
        f"{json.dumps(records[0].text, ensure_ascii=False)}, {attention.name} "
        f"{attention.n_layer} layers x {attention.n_head} heads"
    )
