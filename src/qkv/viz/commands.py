"""`qkv attention` and `qkv plot`: check the arguments, draw, and say what was written."""

from __future__ import annotations

from pathlib import Path

from qkv.errors import QkvError
from qkv.viz.curves import CURVES_FILE, plot_training_curves
from qkv.viz.explorer import write_explorer_html
from qkv.viz.heatmaps import draw_attention_png
from qkv.viz.maps import checkpoint_attention_maps, encode_text
from qkv.viz.positions import SINUSOIDAL, plot_positions

OUT_KINDS = (".png", ".html")


def attention_command(checkpoint: str, text: str, out: str, device: str = "cpu") -> str:
    """Draw the attention of `checkpoint` over `text` to a PNG grid or an HTML explorer."""
    suffix = Path(out).suffix.lower()
    if suffix not in OUT_KINDS:
        raise QkvError(f"--out {out}: write a .png (heatmaps) or an .html (explorer) file")
    shown = text if len(text) <= 60 else text[:57] + "..."
    title = f"{Path(checkpoint).name or checkpoint}: {shown!r}"
    if suffix == ".png":
        maps = checkpoint_attention_maps(checkpoint, text, device)
        path = draw_attention_png(maps, out, title)
    else:  # the page's step view needs every head's q, k and v too
        from qkv.viz.explain import checkpoint_attention_steps

        maps, steps = checkpoint_attention_steps(checkpoint, text, device)
        path = write_explorer_html(maps, out, title, steps)
    sizes = ", ".join(
        f"{m.name} {m.n_layer} layers x {m.n_head} heads x {len(m.queries)} x {len(m.keys)}"
        for m in maps
    )
    return f"wrote {path}: {sizes}"


# --explain's --map: the short name of each kind of attention
MAP_NAMES = {
    "self": "self-attention",
    "encoder": "encoder self-attention",
    "decoder": "decoder self-attention",
    "cross": "cross-attention",
}


def explain_command(
    checkpoint: str,
    text: str,
    layer: int,
    head: int,
    part: str | None = None,
    device: str = "cpu",
) -> str:
    """One head's computation on `text`, step by step, with the checkpoint's own numbers."""
    from qkv.checkpoint import open_checkpoint
    from qkv.viz.explain import explain_maps, select_steps
    from qkv.viz.explain_text import MAX_TOKENS, explain_lines

    if not text:
        raise QkvError("--text is empty: give the text whose attention to explain")
    opened = open_checkpoint(checkpoint)
    provider = opened.kind.verb("attention", str(checkpoint))
    tokenizer = opened.tokenizer
    n_tokens = len(encode_text(tokenizer, text, 10**9))
    if n_tokens > MAX_TOKENS:
        raise QkvError(
            f"--explain prints tables of tokens x tokens: --text is {n_tokens} tokens, give "
            f"at most {MAX_TOKENS}"
        )
    model = opened.model(device).eval()
    names = list(model.attention_modules())
    name = _map_name(part, names)
    maps, steps = explain_maps(model, provider, tokenizer, text)
    chosen = select_steps(steps, name, layer, head)
    if max(len(chosen.queries), len(chosen.keys)) > MAX_TOKENS:
        raise QkvError(
            f"--explain prints tables of tokens x tokens: the {name} has "
            f"{len(chosen.queries)} x {len(chosen.keys)}; give a shorter --text"
        )
    config = model.config
    note = f", {config.norm}-norm, {config.positional} positions"
    return "\n".join(explain_lines(chosen, note, config.norm))


def _map_name(part: str | None, names: list[str]) -> str:
    """The kind of attention --map names (default: the model's first)."""
    if part is None:
        return names[0]
    name = MAP_NAMES[part]
    if name not in names:
        shorts = [k for k, v in MAP_NAMES.items() if v in names]
        raise QkvError(
            f"--map {part}: this model has {' and '.join(names)} (--map {'|'.join(shorts)})"
        )
    return name


def over_training_command(run_dir: str, text: str | None, out: str) -> str:
    """The probe's attention at every evaluation of a run: a page with a slider or a GIF."""
    from qkv.viz.over_training import (
        describe,
        write_over_training_gif,
        write_over_training_html,
    )
    from qkv.viz.probe import read_records

    suffix = Path(out).suffix.lower()
    if suffix not in (".html", ".gif"):
        raise QkvError(f"--out {out}: write an .html (a slider) or a .gif (an animation)")
    records = read_records(run_dir)
    recorded = records[0].text
    if text is not None and text != recorded:
        raise QkvError(
            f"--text {text!r}: {run_dir} recorded the probe {recorded!r} (train.probe_text); "
            "give that text or leave --text out"
        )
    title = Path(run_dir).resolve().name
    if suffix == ".html":
        path = write_over_training_html(records, out, title)
    else:
        path = write_over_training_gif(records, out, title)
    return f"wrote {path}: {describe(records)}"


def plot_command(run_dir: str | None, positions: str | None, out: str | None) -> str:
    """Training curves of RUN_DIR, or (with --positions) a positional encoding."""
    if (run_dir is None) == (positions is None):
        raise QkvError("give a RUN_DIR (training curves) or --positions CHECKPOINT|sinusoidal")
    if positions is not None:
        default = Path(positions) / "positions.png"
        if positions == SINUSOIDAL and not Path(positions).exists():
            default = Path("sinusoidal-positions.png")
        path = plot_positions(positions, out or default)
        return f"wrote {path}"
    path = plot_training_curves(run_dir, out or Path(run_dir) / CURVES_FILE)
    return f"wrote {path}"
