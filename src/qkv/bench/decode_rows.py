"""The decoding rows of `qkv bench --decode`: quantized decoding against its memory limit.

A KV-cached decoding step reads every weight matrix once, for all B rows of the batch, so
(`qkv.decoding.quantize`):

    step time >= bytes of weights / bandwidth          limit = B * bandwidth / bytes  tok/s

Each row is qkv's greedy decoding of a random-weight GPT (each mode of the plan: float32,
with `qkv.for_decoding`'s layout as `qkv sample` runs it, bfloat16, int8, int4 weights)
against Hugging Face's fp32 `generate` on the same weights, at batch 1 and batch 8. Its note
gives the bytes a step reads, the row's tokens/s as a % of that limit, and what bounds it:
the measured step time against its two floors, the weights' bytes / bandwidth and the
per-step overhead (the time of a step of the same depth at width 64, whose weights are
negligible: Python, dispatch, small kernels). "memory-bound" or "overhead-bound" names the
larger floor; "kernel-bound" says the rest of the step (the matmul kernels running below the
bandwidth, attention) is larger than either. `agreement` is the fraction of 256 greedy
tokens (batch 1, from the same prompt) a quantized model shares with float32, position by
position; on random weights the logits are nearly flat, so it is a stringent test of rounding.

The bandwidth is measured in the same run: the best of several sums of a float32 tensor far
larger than the caches (`stream_bandwidth`), the bytes a weight-reading step must stream.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor, nn

from qkv.bench.model_rows import hf_greedy
from qkv.bench.plan import DecodeCase, Plan
from qkv.bench.report import Row
from qkv.bench.timing import _alternate, _fastest, _timed, _timer
from qkv.decoding.layout import for_decoding
from qkv.decoding.quantize import quantize, weight_bytes
from qkv.interop import to_hf
from qkv.models.gpt import GPT

PROMPT = 16  # tokens of the random prompt every row continues


def stream_bandwidth(mib: int, device: torch.device, repeats: int = 5) -> float:
    """Bytes/s of reading a float32 tensor of `mib` MiB once (its sum), best of `repeats`."""
    x = torch.ones(mib * 2**20 // 4, device=device)
    _timed(x.sum, device)  # warm-up: pages, threads
    best = min(_timed(x.sum, device) for _ in range(repeats))
    return x.numel() * 4 / best


def _models(case: DecodeCase, modes: tuple[str, ...], device: torch.device):
    torch.manual_seed(0)
    fp32 = GPT(case.model).to(device).eval()
    hf = to_hf(fp32).eval()
    models = {mode: quantize(copy.deepcopy(fp32), mode) for mode in modes if mode != "fp32"}
    return {"fp32": for_decoding(fp32), **models}, hf  # float32 as `qkv sample` runs it


def _greedy(model: nn.Module, prompt: Tensor, new: int) -> Callable[[], Tensor]:
    return lambda: model.generate(prompt, new, temperature=0)


def agreement(models: dict[str, nn.Module], prompt: Tensor, steps: int) -> dict[str, float]:
    """Fraction of `steps` greedy tokens each model shares with "fp32", position by position."""
    reference = _greedy(models["fp32"], prompt, steps)()[:, prompt.size(1) :]
    fractions = {}
    for mode, model in models.items():
        tokens = _greedy(model, prompt, steps)()[:, prompt.size(1) :]
        fractions[mode] = (tokens == reference).float().mean().item()
    return fractions


def step_overhead(case: DecodeCase, plan: Plan, device: torch.device) -> float:
    """Seconds per step of a model of the same depth at width 64 and vocabulary 64: the cost
    of a step that is not reading weights (its weights are 0.2 MB a layer)."""
    narrow = dataclasses.replace(case.model, n_embd=64, n_head=4, vocab_size=64)
    torch.manual_seed(0)
    model = GPT(narrow).to(device).eval()
    prompt = torch.zeros((1, PROMPT), dtype=torch.long, device=device)
    run = _timer(_greedy(model, prompt, plan.decode_new_tokens), device)
    run()
    return min(run() for _ in range(plan.decode_rounds)) / plan.decode_new_tokens


@dataclasses.dataclass(frozen=True)
class Floors:
    """What a step cannot go below: streaming its weights, and the per-step overhead."""

    bandwidth: float  # bytes/s
    overhead: float  # seconds per step

    def note(self, nbytes: int, batch: int, ours: float, fp32_bytes: int, hf: float) -> str:
        limit = batch * self.bandwidth / nbytes  # tok/s if a step only streamed its weights
        hf_limit = batch * self.bandwidth / fp32_bytes
        step_ms, weights_ms = 1e3 * batch / ours, 1e3 * nbytes / self.bandwidth
        bound = _bound(step_ms, weights_ms, 1e3 * self.overhead)
        return (
            f"{nbytes / 1e6:.1f} MB/step; {100 * ours / limit:.0f}% of its {limit:,.0f} tok/s "
            f"limit (HF {100 * hf / hf_limit:.0f}%); step {step_ms:.1f} ms, floors: weights "
            f"{weights_ms:.1f} ms, overhead {1e3 * self.overhead:.1f} ms: {bound}-bound"
        )


def _bound(step_ms: float, weights_ms: float, overhead_ms: float) -> str:
    """What a step's time goes to: streaming weights, per-step overhead, or neither, when the
    rest (the matmul kernels running below the bandwidth, attention) is the largest part."""
    rest = step_ms - weights_ms - overhead_ms
    if rest > max(weights_ms, overhead_ms):
        return "kernel"
    return "memory" if weights_ms >= overhead_ms else "overhead"


def bench_decoding(
    case: DecodeCase, plan: Plan, device: torch.device, bandwidth: float
) -> list[Row]:
    """One decode case at every batch size of the plan, each mode against HF fp32."""
    models, hf = _models(case, plan.decode_modes, device)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, case.model.vocab_size, (1, PROMPT), generator=generator)
    agree = agreement(models, prompt.to(device), plan.agree_steps)
    floors = Floors(bandwidth, step_overhead(case, plan, device))
    rows = []
    for batch in plan.decode_batches:
        batch_prompt = prompt.repeat(batch, 1).to(device)  # (B, PROMPT), the same rows
        rows += _batch_rows(case, models, hf, batch_prompt, plan, floors, agree)
    return rows


def _batch_rows(case, models, hf, prompt: Tensor, plan: Plan, floors: Floors, agree) -> list[Row]:
    new, batch, device = plan.decode_new_tokens, prompt.size(0), prompt.device
    sides = {mode: _timer(_greedy(m, prompt, new), device) for mode, m in models.items()}
    sides["hf"] = _timer(hf_greedy(hf, prompt, new), device)
    _alternate(sides, 1)  # warm-up
    seconds = _fastest(_alternate(sides, plan.decode_rounds))
    rate = {side: batch * new / s for side, s in seconds.items()}
    fp32_bytes = weight_bytes(models["fp32"])
    rows = []
    for mode, model in models.items():
        note = floors.note(weight_bytes(model), batch, rate[mode], fp32_bytes, rate["hf"])
        if mode != "fp32":
            note += f"; greedy agreement {agree[mode]:.3f}"
        name = f"decode {case.label} B{batch}, qkv {mode} vs HF fp32"
        rows.append(Row(name, "tok/s", rate[mode], rate["hf"], note))
    return rows
