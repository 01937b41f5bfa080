"""Batches for training (random windows) and for evaluation (consecutive windows).

Shape legend: B batch, T time (the model's block_size).

A training example is a window of T + 1 consecutive ids: the first T are the input and the last
T (shifted by one) the targets, so one window teaches the model T next-token predictions.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from qkv.data.shards import release_pages


class BatchSampler:
    """Random windows from a 1-D id array, drawn from its own seeded generator.

    The generator's state is the data position: saving and restoring it makes a resumed run
    draw exactly the batches the uninterrupted run would have drawn.

    In a job of `world_size` processes every rank draws the same global batch of
    world_size x batch_size window starts from the same stream and keeps its own slice, rows
    [rank x B, (rank + 1) x B): the ranks see different windows, together exactly the ones one
    process with batch world_size x B would see, and the data position is one generator state
    whatever the world size (a run may resume with another).
    """

    def __init__(
        self,
        ids: np.ndarray,
        block_size: int,
        batch_size: int,
        seed: int,
        device: torch.device | str = "cpu",
        *,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.ids = ids
        self.block_size = block_size
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(
        self, length: int | None = None, rows: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """-> inputs (B, T) and targets (B, T), int64, on the sampler's device; T is
        `length` (at most block_size) when given, else block_size; B is `rows` (at most
        batch_size: the first rows of this rank's slice) when given, else batch_size."""
        t = self.block_size if length is None else min(length, self.block_size)
        b = self.batch_size if rows is None else min(rows, self.batch_size)
        size = (self.world_size * self.batch_size,)
        starts = torch.randint(len(self.ids) - t, size, generator=self.generator)
        starts = starts[self.rank * self.batch_size : self.rank * self.batch_size + b]
        windows = np.stack([self.ids[s : s + t + 1] for s in starts.tolist()])  # (B, T + 1)
        release_pages(self.ids)
        batch = torch.from_numpy(windows.astype(np.int64))
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return batch[:, :-1], batch[:, 1:]

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])


def eval_windows(
    ids: np.ndarray, block_size: int, batch_size: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """Every id of `ids` but the first as a target, in consecutive non-overlapping windows.

    Yields (inputs, targets) batches of shape (B, T); the final window may be shorter than T
    and comes in a batch of its own, so every target is scored exactly once.
    """
    n_targets = len(ids) - 1
    starts = list(range(0, n_targets, block_size))
    full = [s for s in starts if s + block_size <= n_targets]
    for i in range(0, len(full), batch_size):
        yield _windows(ids, full[i : i + batch_size], block_size)
    tail = [s for s in starts if s + block_size > n_targets]
    if tail:
        yield _windows(ids, tail, n_targets - tail[0])


def _windows(ids: np.ndarray, starts: list[int], length: int) -> tuple[Tensor, Tensor]:
    windows = np.stack([ids[s : s + length + 1] for s in starts])  # (B, length + 1)
    release_pages(ids)
    batch = torch.from_numpy(windows.astype(np.int64))
    return batch[:, :-1], batch[:, 1:]
