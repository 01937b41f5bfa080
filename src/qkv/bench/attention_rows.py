"""The attention rows of `qkv bench`: fused against explicit, time and peak memory.

Forward+backward of causal attention, batch 1, at each length of the plan. The explicit path
holds (T, T) weights, so a length whose explicit run would need more than `MEMORY_FRACTION`
of the device's memory (`machine.device_memory`) runs the fused path only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from qkv.bench import machine
from qkv.bench.machine import PeakMemory
from qkv.bench.plan import Plan
from qkv.bench.report import Row
from qkv.bench.timing import _alternate, _timed
from qkv.nn.attention import scaled_dot_product_attention

MEMORY_FRACTION = 0.4  # skip an explicit attention run that would need more of the memory
EXPLICIT_COPIES = 10  # (T, T) float32s the explicit path holds at its peak (measured)


def _attention_run(
    q: Tensor, k: Tensor, v: Tensor, grad: Tensor, explicit: bool, memory: PeakMemory
) -> Callable[[], tuple[float, int | None]]:
    def step() -> None:
        result = scaled_dot_product_attention(q, k, v, causal=True, return_weights=explicit)
        out = result[0] if explicit else result  # (B, H, T, D)
        out.backward(grad)
        q.grad = k.grad = v.grad = None

    def run() -> tuple[float, int | None]:
        memory.start()
        seconds = _timed(step, q.device)
        return seconds, memory.peak()

    return run


def bench_attention(plan: Plan, device: torch.device) -> list[Row]:
    """Forward+backward time and peak memory, fused vs explicit, batch 1, causal."""
    memory, total = PeakMemory(device), machine.device_memory(device)
    rows = []
    for t in plan.attn_lengths:
        shape = (1, plan.attn_heads, t, plan.attn_head_size)  # (B, H, T, D)
        q, k, v = (torch.randn(shape, device=device, requires_grad=True) for _ in range(3))
        grad = torch.randn(shape, device=device)
        need = EXPLICIT_COPIES * plan.attn_heads * t * t * 4  # bytes of (T, T) float32s
        fits = total is None or need <= MEMORY_FRACTION * total
        runs = {"fused": _attention_run(q, k, v, grad, False, memory)}
        if fits:
            runs["explicit"] = _attention_run(q, k, v, grad, True, memory)
        _alternate(runs, 1)  # warm-up
        results = _alternate(runs, plan.rounds)  # name -> [(seconds, peak bytes), ...]
        ms = {n: 1e3 * min(s for s, _ in r) for n, r in results.items()}
        mib = {n: _max_mib([b for _, b in r]) for n, r in results.items()}
        note = "" if fits else f"explicit skipped: needs ~{need / 2**30:.0f} GiB"
        rows.append(Row(f"attention fwd+bwd T={t}", "ms", ms["fused"], ms.get("explicit"), note))
        rows.append(Row(f"attention peak T={t}", "MiB", mib["fused"], mib.get("explicit")))
    return rows


def _max_mib(values: list[int | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) / 2**20 if known else None
