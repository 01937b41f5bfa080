"""How `qkv bench` times things: synchronised wall-clock calls and alternating rounds.

`_timed` waits for the device before and after a call, so that asynchronous kernels are
counted; `_alternate` runs every side once per round, swapping which side goes first every
round, and `_fastest` keeps each side's fastest round (the least disturbed one).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _timer(fn: Callable[[], object], device: torch.device) -> Callable[[], float]:
    return lambda: _timed(fn, device)


def _alternate(sides: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[Any]]:
    """Run every side once per round, swapping who goes first; each side's results."""
    results: dict[str, list[Any]] = {name: [] for name in sides}
    names = list(sides)
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            results[name].append(sides[name]())
    return results


def _fastest(results: dict[str, list[float]]) -> dict[str, float]:
    return {name: min(values) for name, values in results.items()}
