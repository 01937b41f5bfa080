"""`qkv attention` and `qkv plot`: pictures of a checkpoint's attention, a run's curves, or
positional encodings."""

from __future__ import annotations

import argparse

from qkv.cli.common import add_device, add_verb

EXPLAIN_MAPS = ("self", "encoder", "decoder", "cross")


def add_attention(verbs) -> None:
    p = add_verb(
        verbs,
        "attention",
        help="draw a checkpoint's attention (.png heatmaps, .html explorer), explain one head "
        "step by step (--explain), or show heads forming over a run (--over-training)",
        description="Run the checkpoint on --text and draw every layer's and head's attention "
        "weights: a grid of heatmaps (--out FILE.png) or a self-contained interactive page "
        "(--out FILE.html; open it in any browser, nothing is fetched). A seq2seq checkpoint "
        "translates --text and shows its encoder self-attention, decoder self-attention and "
        "cross-attention (output x source). --explain prints one head's computation with the "
        "model's numbers instead: x_i, W_Q/W_K/W_V, q, k, v, the scores, their scaling, the "
        "mask, the softmax, the weighted values and the head's share of the output. "
        "--over-training RUN draws the attention of the probe text qkv train recorded at "
        "each evaluation: a page with a slider (.html) or an animation (.gif).",
    )
    p.add_argument("--checkpoint", metavar="DIR", help="the checkpoint to look inside")
    p.add_argument("--text", metavar="TEXT", help="the tokens to look at")
    p.add_argument("--out", metavar="FILE.png|FILE.html|FILE.gif")
    p.add_argument(
        "--explain", action="store_true", help="print one head's computation step by step"
    )
    p.add_argument("--layer", type=int, default=0, metavar="L", help="--explain: layer (0)")
    p.add_argument("--head", type=int, default=0, metavar="H", help="--explain: head (0)")
    p.add_argument(
        "--map",
        choices=list(EXPLAIN_MAPS),
        help="--explain on a seq2seq checkpoint: encoder, decoder (self-attention) or cross "
        "(default: encoder); a GPT has self",
    )
    p.add_argument(
        "--over-training",
        metavar="RUN",
        help="a run directory: its recorded probe attention at every evaluation",
    )
    add_device(p, default="cpu")
    p.set_defaults(run=cmd_attention)


def add_plot(verbs) -> None:
    p = add_verb(
        verbs,
        "plot",
        help="training curves of a run, or a positional encoding (PNG)",
        description="Draw RUN_DIR/metrics.jsonl (loss against steps and tokens, learning rate, "
        "tokens/s) to RUN_DIR/curves.png, or with --positions the positional matrix and the "
        "cosine similarity between positions.",
    )
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a run directory (qkv train)")
    p.add_argument(
        "--positions",
        metavar="CHECKPOINT|sinusoidal",
        help="draw this checkpoint's positions (or the paper's sinusoids) instead",
    )
    p.add_argument(
        "--out",
        metavar="FILE.png",
        help="default: RUN_DIR/curves.png, CHECKPOINT/positions.png or sinusoidal-positions.png",
    )
    p.set_defaults(run=cmd_plot)


def cmd_attention(args: argparse.Namespace) -> int:
    from qkv.errors import QkvError
    from qkv.runtime import resolve_device
    from qkv.viz import commands

    if (args.checkpoint is None) == (args.over_training is None):
        raise QkvError("give --checkpoint DIR (a model) or --over-training RUN (a run's probe)")
    if args.over_training is not None:
        if args.out is None:
            raise QkvError("--over-training needs --out FILE.html (a slider) or FILE.gif")
        print(commands.over_training_command(args.over_training, args.text, args.out))
        return 0
    if args.text is None:
        raise QkvError("--text is missing: give the text whose attention to look at")
    device = resolve_device(args.device)
    if args.explain:
        print(commands.explain_command(
            args.checkpoint, args.text, args.layer, args.head, args.map, device
        ))  # fmt: skip
        return 0
    if args.out is None:
        raise QkvError("--out is missing: FILE.png (heatmaps) or FILE.html (explorer)")
    print(commands.attention_command(args.checkpoint, args.text, args.out, device))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from qkv.viz.commands import plot_command

    print(plot_command(args.run_dir, args.positions, args.out))
    return 0
