"""`qkv attention` and `qkv plot`: pictures of a checkpoint's attention, a run's curves, or
positional encodings."""

from __future__ import annotations

import argparse

from qkv.cli.common import add_device, add_verb


def add_attention(verbs) -> None:
    p = add_verb(
        verbs,
        "attention",
        checkpoint=True,
        help="draw a checkpoint's attention: heatmaps (.png) or an explorer page (.html)",
        description="Run the checkpoint on --text and draw every layer's and head's attention "
        "weights: a grid of heatmaps (--out FILE.png) or a self-contained interactive page "
        "(--out FILE.html; open it in any browser, nothing is fetched). A seq2seq checkpoint "
        "translates --text and shows its encoder self-attention, decoder self-attention and "
        "cross-attention (output x source).",
    )
    p.add_argument("--text", required=True, metavar="TEXT", help="the tokens to look at")
    p.add_argument("--out", required=True, metavar="FILE.png|FILE.html")
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
    from qkv.runtime import resolve_device
    from qkv.viz.commands import attention_command

    device = resolve_device(args.device)
    print(attention_command(args.checkpoint, args.text, args.out, device))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from qkv.viz.commands import plot_command

    print(plot_command(args.run_dir, args.positions, args.out))
    return 0
