"""`qkv attention` and `qkv plot`: check the arguments, draw, and say what was written."""

from __future__ import annotations

from pathlib import Path

from qkv.errors import QkvError
from qkv.viz.curves import CURVES_FILE, plot_training_curves
from qkv.viz.explorer import write_explorer_html
from qkv.viz.heatmaps import draw_attention_png
from qkv.viz.maps import checkpoint_attention_maps
from qkv.viz.positions import SINUSOIDAL, plot_positions

OUT_KINDS = (".png", ".html")


def attention_command(checkpoint: str, text: str, out: str, device: str = "cpu") -> str:
    """Draw the attention of `checkpoint` over `text` to a PNG grid or an HTML explorer."""
    suffix = Path(out).suffix.lower()
    if suffix not in OUT_KINDS:
        raise QkvError(f"--out {out}: write a .png (heatmaps) or an .html (explorer) file")
    maps = checkpoint_attention_maps(checkpoint, text, device)
    shown = text if len(text) <= 60 else text[:57] + "..."
    title = f"{Path(checkpoint).name or checkpoint}: {shown!r}"
    if suffix == ".png":
        path = draw_attention_png(maps, out, title)
    else:
        path = write_explorer_html(maps, out, title)
    sizes = ", ".join(
        f"{m.name} {m.n_layer} layers x {m.n_head} heads x {len(m.queries)} x {len(m.keys)}"
        for m in maps
    )
    return f"wrote {path}: {sizes}"


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
