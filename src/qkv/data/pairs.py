"""Pairs of strings -> padded batches of token ids for the encoder-decoder.

    source ids:  x_1 .. x_S <eos>
    target in:   <bos> y_1 .. y_T          (what the decoder reads: the target shifted right)
    target out:  y_1 .. y_T <eos>          (what it must predict at each position)

Batches hold sentences of similar length, so little of each batch is padding (the paper,
section 5.1: "sentence pairs were batched together by approximate sequence length"): each
epoch shuffles the pairs, sorts them by length within pools of 50 batches, cuts the pools
into batches and shuffles the batches. Everything is drawn from the seed and the epoch, so
the position (epoch, batch) is all a resumed run needs.
"""

from __future__ import annotations

import random

import torch
from torch import Tensor

from qkv.config.choices import BOS_ID, EOS_ID, PAD_ID
from qkv.data.tasks import Pair
from qkv.errors import QkvError

Example = tuple[list[int], list[int]]  # (source ids + <eos>, target ids)
POOL_BATCHES = 50


def encode_pairs(pairs: list[Pair], tokenizer, max_len: int, origin: str) -> list[Example]:
    """Token ids of each pair; a pair longer than the model's positions is an error."""
    examples = []
    for source, target in pairs:
        src = tokenizer.encode(source) + [EOS_ID]
        tgt = tokenizer.encode(target)
        longest = max(len(src), len(tgt) + 1)
        if longest > max_len:
            raise QkvError(
                f"{origin}: the pair {source[:40]!r} -> {target[:40]!r} has {longest} tokens, "
                f"more than model.max_len={max_len}; raise model.max_len"
            )
        examples.append((src, tgt))
    return examples


def pad(sequences: list[list[int]], device: torch.device | str = "cpu") -> Tensor:
    """Right-pad id lists with <pad> -> (B, T_max)."""
    width = max(len(s) for s in sequences)
    rows = [s + [PAD_ID] * (width - len(s)) for s in sequences]
    return torch.tensor(rows, dtype=torch.long, device=device)


def collate(
    examples: list[Example], device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor, Tensor]:
    """-> source (B, S), target in (B, T), target out (B, T), padded with <pad>."""
    src = pad([s for s, _ in examples], device)
    tgt_in = pad([[BOS_ID, *t] for _, t in examples], device)
    tgt_out = pad([[*t, EOS_ID] for _, t in examples], device)
    return src, tgt_in, tgt_out


class LengthBatches:
    """An endless, resumable stream of length-grouped batches of examples."""

    def __init__(self, examples: list[Example], batch_size: int, seed: int) -> None:
        if not examples:
            raise QkvError("no training pairs")
        self.examples, self.batch_size, self.seed = examples, batch_size, seed
        self.epoch, self.position = 0, 0
        self._batches = self._epoch_batches(0)

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(range(len(self.examples)))
        rng.shuffle(order)
        pool_size = self.batch_size * POOL_BATCHES
        batches = []
        for start in range(0, len(order), pool_size):
            pool = sorted(order[start : start + pool_size], key=self._length)
            batches += [pool[i : i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
        rng.shuffle(batches)
        return batches

    def _length(self, index: int) -> tuple[int, int]:
        src, tgt = self.examples[index]
        return len(src), len(tgt)

    def next_examples(self) -> list[Example]:
        """The examples of the next batch (a new epoch is shuffled when one runs out)."""
        if self.position == len(self._batches):
            self.epoch, self.position = self.epoch + 1, 0
            self._batches = self._epoch_batches(self.epoch)
        batch = self._batches[self.position]
        self.position += 1
        return [self.examples[i] for i in batch]

    def next_batch(self, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Tensor]:
        return collate(self.next_examples(), device)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._batches = self._epoch_batches(self.epoch)
