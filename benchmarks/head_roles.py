"""What each attention head of a character-level checkpoint looks at, in numbers.

    python benchmarks/head_roles.py CHECKPOINT TEXT_FILE [--windows N]

Runs the model on N random windows (a full context each) of the text's val split (the last
10%) and prints, for every layer and head, the mean attention weight a query puts on:

- prev:  the previous character (key i - 1);
- self:  itself (key i);
- space: the whitespace just before the current word (queries 2+ characters into a word);
- start: the current word's first character (same queries).

Next to each table: what a head spreading its weight evenly over the visible keys would
give, so a head that reads something in particular stands out. docs/visualisation.md quotes
its output.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from qkv.checkpoint import load_checkpoint

ROLES = ("prev", "self", "space", "start")


def word_start(text: str, i: int) -> int:
    """Index of the first character of the word that holds position i."""
    while i > 0 and not text[i - 1].isspace():
        i -= 1
    return i


def score_window(text: str, weights: np.ndarray, sums: dict, uniform: dict) -> None:
    """Add one window's weights (L, H, T, T) to the running sums of each role."""
    for i in range(1, len(text)):
        for role, key in (("prev", i - 1), ("self", i)):
            sums[role].append(weights[:, :, i, key])
            uniform[role].append(1 / (i + 1))
        start = word_start(text, i)
        if text[i].isspace() or start == 0 or i - start < 2:
            continue
        for role, key in (("space", start - 1), ("start", start)):
            sums[role].append(weights[:, :, i, key])
            uniform[role].append(1 / (i + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("text_file")
    parser.add_argument("--windows", type=int, default=64)
    args = parser.parse_args()
    model, tokenizer, config = load_checkpoint(args.checkpoint)
    model.eval()
    text = Path(args.text_file).read_text(encoding="utf-8")
    val = text[int(len(text) * (1 - config.data.val_fraction)) :]
    size = config.model.block_size
    starts = np.random.default_rng(0).integers(0, len(val) - size, args.windows)
    sums: dict = {role: [] for role in ROLES}
    uniform: dict = {role: [] for role in ROLES}
    for start in starts:
        window = val[start : start + size]
        with torch.no_grad():
            _, _, weights = model(torch.tensor([tokenizer.encode(window)]), return_weights=True)
        score_window(window, torch.stack([w[0] for w in weights]).numpy(), sums, uniform)
    np.set_printoptions(precision=2, suppress=True)
    for role in ROLES:
        mean = np.mean(sums[role], axis=0)  # (L, H)
        print(f"{role}: mean weight, rows = layers, columns = heads ", end="")
        print(f"(even spread: {np.mean(uniform[role]):.2f}; {len(sums[role])} queries)")
        print(mean)


if __name__ == "__main__":
    main()
