"""`qkv eval`: the mean next-token loss over the whole val split, as DESIGN.md defines it.

Every val token but the first is predicted once, from consecutive non-overlapping windows of
the model's context length (the first token of each window is predicted from little context,
which is why this number reads a little higher than the random-window estimate during
training). Reported in nats per token, and in bits per character:

    val_loss = (1 / N) sum_t -ln p(x_t | x_<t)        bpc = N * val_loss / (ln 2 * n_chars)

n_chars is the number of characters in the scored tokens' text. It is summed from a count per
token id (`Tokenizer.char_counts`) rather than by decoding each id: a byte-level BPE token can
hold part of a character, and decoding that part alone gives U+FFFD, which would count a split
emoji twice. The count credits a character to the token that holds its first byte, so it adds
up exactly over any run of tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from qkv.data import eval_windows
from qkv.models.gpt import GPT
from qkv.tokenizer import Tokenizer


@dataclass
class EvalResult:
    val_loss: float  # nats per token
    bpc: float  # bits per character
    tokens: int  # tokens scored

    def line(self) -> str:
        return f"val_loss={self.val_loss:.4f} bpc={self.bpc:.4f} tokens={self.tokens}"


@torch.no_grad()
def evaluate(model: GPT, ids: np.ndarray, tokenizer: Tokenizer, batch_size: int = 32) -> EvalResult:
    """Score every target of `ids` once with `model` (in eval mode, on its own device)."""
    model.eval()
    device = next(model.parameters()).device
    total_nats, count = 0.0, 0
    for x, y in eval_windows(ids, model.config.block_size, batch_size):
        logits, _ = model(x.to(device))
        loss = F.cross_entropy(
            logits.flatten(0, 1).float(), y.to(device).flatten(), reduction="sum"
        )
        total_nats += loss.item()
        count += y.numel()
    n_chars = int(tokenizer.char_counts()[np.asarray(ids[1:], dtype=np.int64)].sum())
    return EvalResult(total_nats / count, total_nats / (math.log(2) * n_chars), count)
