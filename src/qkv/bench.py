"""`qkv bench`: qkv's speed, side by side with a peer measured in the same process run.

Every row holds the same measurement for qkv and its peer, and their ratio:
- training and generation: the peer is Hugging Face's `GPT2LMHeadModel`, built from the
  same config with a copy of the same weights (`qkv.interop.to_hf`, "sdpa" attention), the
  same dtype (float32), device, thread count and inputs; ratio = qkv / HF, above 1 is faster;
- attention: qkv's fused path (torch's kernel) against its explicit path (the softmax
  written out, `return_weights=True`); ratio = fused / explicit, below 1 is cheaper.

The two sides run in alternating rounds (the side that goes first swaps every round) after
a warm-up of each, so neither gets a warmer cache or a quieter minute, and each row reports
each side's fastest round: other processes on the machine can only slow a round down, so the
fastest round is the least disturbed one. Measured:

1. Matmul peak: FLOP/s of a square float32 matmul (2 n^3 FLOPs), best of several. It is the
   yardstick for MFU: what this machine's BLAS reaches, not a datasheet number.
2. Training: tokens/s of one full step (forward, cross-entropy, backward, AdamW step,
   zero_grad) and model FLOP utilisation, MFU = tokens/s * F / peak, with F the model FLOPs
   per token in the nanoGPT/PaLM convention (Chowdhery et al., 2022, appendix B):
       F = 6 N + 12 L T C,  N = model.num_params() (position table excluded)
   6N counts the forward (2N) and backward (4N) matmuls with the weights, 12 L T C those of
   attention scores and values. Both sides do the same work, so they share F.
3. Generation: new tokens/s of greedy decoding, with and without the KV cache.
4. Muon: time of one optimizer step over the default model's block matrices, qkv's
   `GroupedMuon` against `torch.optim.Muon` (the peer of this row), on the same gradients.
5. Attention: forward+backward time and peak memory against sequence length, causal. The
   explicit path stores the (T, T) weights, so it grows as T^2; the fused one does not. CPU
   memory is the process's peak resident set (VmHWM, reset through /proc/self/clear_refs)
   minus its resident set before the run, after handing freed heap back to the system; on
   CUDA it is torch's peak allocation. Lengths whose explicit run would need more than 40%
   of the device's memory are skipped.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.attention import scaled_dot_product_attention
from qkv.config import GPTConfig, TrainConfig
from qkv.errors import QkvError
from qkv.interop import nearest_gpt2, require_transformers, to_hf
from qkv.models.gpt import GPT
from qkv.optim import GroupedMuon, is_hidden_matrix
from qkv.train import make_optimizer

PEER = "HF GPT2LMHeadModel"
MEMORY_FRACTION = 0.4  # skip an explicit attention run that would need more of the memory
EXPLICIT_COPIES = 10  # (T, T) float32s the explicit path holds at its peak (measured)


@dataclass(frozen=True)
class TrainCase:
    label: str
    model: GPTConfig
    batch_size: int


@dataclass(frozen=True)
class Plan:
    """What to measure and how long: `full_plan` for the table, `quick_plan` for tests."""

    matmul_n: int
    train_cases: tuple[TrainCase, ...]
    muon_model: GPTConfig
    gen_model: GPTConfig
    gen_prompts: tuple[int, ...]
    gen_new_tokens: int
    attn_lengths: tuple[int, ...]
    attn_heads: int = 4
    attn_head_size: int = 64
    rounds: int = 7  # alternating rounds per row; each row reports the fastest
    min_round_s: float = 1.0  # a training round repeats the step until it lasts this long
    gen_rounds: int = 3
    matmul_repeats: int = 10


def _describe(m: GPTConfig, batch_size: int) -> str:
    return f"{m.n_layer}L/{m.n_embd}C/{m.n_head}H ctx{m.block_size} B{batch_size} {m.activation}"


def _train_case(name: str, model: GPTConfig, batch_size: int) -> TrainCase:
    """A case GPT-2 can run: the nearest representable config, with what changed in the label."""
    model, changes = nearest_gpt2(model)
    changed = f", {', '.join(changes)}" if changes else ""
    return TrainCase(f"{name} {_describe(model, batch_size)}{changed}", model, batch_size)


def full_plan() -> Plan:
    """The sizes of the table in benchmarks/RESULTS.md (about 2 minutes on 2 CPU cores)."""
    default = GPTConfig(vocab_size=65)  # qkv's defaults, tinyshakespeare's 65 characters
    target = dataclasses.replace(default, n_layer=6, n_embd=384, n_head=6, block_size=256)
    return Plan(
        matmul_n=2048,
        train_cases=(
            _train_case("default", default, TrainConfig().batch_size),
            _train_case("target", target, 8),
        ),
        muon_model=default,
        gen_model=nearest_gpt2(dataclasses.replace(default, block_size=1024))[0],
        gen_prompts=(16, 512),
        gen_new_tokens=256,
        attn_lengths=(256, 512, 1024, 2048, 4096, 8192),
    )


def quick_plan() -> Plan:
    """Tiny sizes: every code path in a few seconds."""
    tiny = GPTConfig(vocab_size=65, block_size=16, n_layer=1, n_embd=32, n_head=2)
    tiny = nearest_gpt2(tiny)[0]
    return Plan(
        matmul_n=128,
        train_cases=(_train_case("tiny", tiny, 2),),
        muon_model=tiny,
        gen_model=dataclasses.replace(tiny, block_size=32),
        gen_prompts=(4,),
        gen_new_tokens=8,
        attn_lengths=(32, 64),
        attn_heads=2,
        attn_head_size=16,
        rounds=2,
        min_round_s=0.0,
        gen_rounds=1,
        matmul_repeats=2,
    )


# -- the table ----------------------------------------------------------------------------


@dataclass
class Row:
    """One measurement for qkv and its peer; None where it was not measured."""

    name: str
    unit: str  # "tok/s", "%", "ms", "MiB"
    ours: float | None
    peer: float | None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.ours is None or self.peer is None or self.peer == 0:
            return None
        return self.ours / self.peer


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "tok/s":
        return f"{value:,.0f} tok/s"
    if unit == "%":
        return f"{value:.1f}%"
    return f"{value:,.1f} {unit}"


@dataclass
class Report:
    header: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    elapsed: float = 0.0

    def to_markdown(self) -> str:
        lines = [*self.header, ""]
        lines.append("| benchmark | qkv | peer | ratio | note |")
        lines.append("|---|---:|---:|---:|---|")
        for r in self.rows:
            ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
            ours, peer = _fmt(r.ours, r.unit), _fmt(r.peer, r.unit)
            lines.append(f"| {r.name} | {ours} | {peer} | {ratio} | {r.note} |")
        lines += ["", f"total elapsed: {self.elapsed:.0f} s"]
        return "\n".join(lines) + "\n"


# -- timing helpers -------------------------------------------------------------------------


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


def matmul_peak(
    n: int, device: torch.device, repeats: int = 5, dtype: torch.dtype = torch.float32
) -> float:
    """FLOP/s of an (n, n) @ (n, n) matmul in `dtype`: 2 n^3 FLOPs, best of `repeats`."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    _timed(lambda: a @ b, device)  # warm-up: BLAS threads, caches
    best = min(_timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * n**3 / best


# -- training --------------------------------------------------------------------------------


def flops_per_token(config: GPTConfig, n_params: int) -> int:
    """Training FLOPs per token, 6 N + 12 L T C (see the module docstring)."""
    return 6 * n_params + 12 * config.n_layer * config.block_size * config.n_embd


def _step_fn(model: nn.Module, x: Tensor, y: Tensor, is_hf: bool) -> Callable[[], None]:
    """One training step; both sides take the same cross-entropy of their logits."""
    optimizer = make_optimizer(model, TrainConfig(optimizer="adamw"), x.device)

    def step() -> None:
        logits = model(input_ids=x, use_cache=False).logits if is_hf else model(x)[0]
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())  # logits (B, T, V)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _rounds_of(step: Callable[[], None], steps: int, device: torch.device) -> Callable[[], float]:
    """A round of `steps` steps -> seconds per step."""

    def one_round() -> float:
        return _timed(lambda: [step() for _ in range(steps)], device) / steps

    return one_round


def bench_training(case: TrainCase, plan: Plan, device: torch.device, peak: float) -> list[Row]:
    """tokens/s and MFU of training steps on the same batch, qkv vs HF."""
    torch.manual_seed(0)
    model = GPT(case.model).to(device).train()
    hf = to_hf(model)
    shape = (case.batch_size, case.model.block_size)
    ids = torch.randint(0, case.model.vocab_size, (shape[0], shape[1] + 1), device=device)
    x, y = ids[:, :-1], ids[:, 1:]  # (B, T) each
    steps = {"qkv": _step_fn(model, x, y, False), "hf": _step_fn(hf, x, y, True)}
    warm = _alternate({side: _rounds_of(fn, 1, device) for side, fn in steps.items()}, 2)
    step_s = min(min(values) for values in warm.values())
    per_round = max(1, math.ceil(plan.min_round_s / max(step_s, 1e-9)))
    sides = {side: _rounds_of(fn, per_round, device) for side, fn in steps.items()}
    seconds = _fastest(_alternate(sides, plan.rounds))
    tokens = case.batch_size * case.model.block_size
    rate = {side: tokens / s for side, s in seconds.items()}
    flops = flops_per_token(case.model, model.num_params())
    mfu = {side: 100 * rate[side] * flops / peak for side in rate}
    note = f"{per_round} steps x {plan.rounds} rounds, {flops / 1e6:.1f} MFLOP/token"
    return [
        Row(f"train {case.label}", "tok/s", rate["qkv"], rate["hf"], note),
        Row(f"train MFU {case.label}", "%", mfu["qkv"], mfu["hf"]),
    ]


# -- the Muon step ---------------------------------------------------------------------------


def bench_muon(plan: Plan, device: torch.device) -> list[Row]:
    """One Muon step over the block matrices of `plan.muon_model`: GroupedMuon vs torch's."""
    torch.manual_seed(0)
    model = GPT(plan.muon_model).to(device)
    matrices = [p for n, p in model.named_parameters() if is_hidden_matrix(n, p)]
    grads = [torch.randn_like(p) for p in matrices]

    def stepper(optimizer_class: type[torch.optim.Optimizer]) -> Callable[[], float]:
        params = [nn.Parameter(p.detach().clone()) for p in matrices]
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad
        optimizer = optimizer_class(params, lr=3e-3, adjust_lr_fn="match_rms_adamw")
        optimizer.step()  # warm-up, and the momentum buffers
        return lambda: _timed(optimizer.step, device)

    sides = {"qkv": stepper(GroupedMuon), "torch": stepper(torch.optim.Muon)}
    seconds = _fastest(_alternate(sides, 5 * plan.rounds))
    shapes = sorted({tuple(p.shape) for p in matrices})
    note = f"{len(matrices)} matrices of shapes {', '.join(f'{a}x{b}' for a, b in shapes)}"
    m = plan.muon_model
    name = f"Muon step, {m.n_layer}L/{m.n_embd}C block matrices"
    return [Row(name, "ms", 1e3 * seconds["qkv"], 1e3 * seconds["torch"], note)]


# -- generation ------------------------------------------------------------------------------


def _timer(fn: Callable[[], object], device: torch.device) -> Callable[[], float]:
    return lambda: _timed(fn, device)


def _generators(model: GPT, hf: nn.Module, prompt: Tensor, new: int, use_cache: bool):
    def ours() -> Tensor:
        return model.generate(prompt, new, temperature=0, use_cache=use_cache)

    def theirs() -> Tensor:
        return hf.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=new,
            min_new_tokens=new,
            use_cache=use_cache,
            pad_token_id=0,
        )

    return ours, theirs


def bench_generation(plan: Plan, device: torch.device) -> list[Row]:
    """Greedy decoding of gen_new_tokens tokens, batch 1, with and without the KV cache."""
    torch.manual_seed(0)
    model = GPT(plan.gen_model).to(device).eval()
    hf = to_hf(model)
    rows = []
    for prompt_len in plan.gen_prompts:
        prompt = torch.randint(0, plan.gen_model.vocab_size, (1, prompt_len), device=device)
        for use_cache in (True, False):
            ours, theirs = _generators(model, hf, prompt, plan.gen_new_tokens, use_cache)
            same = torch.equal(ours(), theirs())  # also the warm-up
            sides = {"qkv": _timer(ours, device), "hf": _timer(theirs, device)}
            seconds = _fastest(_alternate(sides, plan.gen_rounds))
            rate = {side: plan.gen_new_tokens / s for side, s in seconds.items()}
            cache = "KV cache" if use_cache else "no cache"
            name = f"generate {plan.gen_new_tokens} new, prompt {prompt_len}, {cache}"
            note = "same tokens" if same else "greedy tokens differ"
            rows.append(Row(name, "tok/s", rate["qkv"], rate["hf"], note))
    return rows


# -- attention -------------------------------------------------------------------------------


class PeakMemory:
    """Peak memory of a stretch of code, in bytes above what was in use when it began."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.before = 0

    @staticmethod
    def _status(field_name: str) -> int:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024  # kB
        raise OSError(f"{field_name} not in /proc/self/status")

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
        elif self.device.type == "cpu" and sys.platform == "linux":
            _release_free_heap()
            with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
                handle.write("5")  # resets VmHWM to the current resident set
            self.before = self._status("VmRSS")

    def peak(self) -> int | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated() - self.before
        if self.device.type == "cpu" and sys.platform == "linux":
            return self._status("VmHWM") - self.before
        return None


def _release_free_heap() -> None:
    """Give memory that glibc keeps after free() back to the system, so RSS is what is used."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: measure as it is
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def device_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


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
    memory, total = PeakMemory(device), device_memory(device)
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


# -- the whole run ---------------------------------------------------------------------------


def cpu_name() -> str:
    """The CPU's model name (as `lscpu` shows it), or the architecture where it is unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine_line(device: torch.device, threads: int) -> str:
    transformers = require_transformers()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return (
        f"device {device.type} ({where}; {os.cpu_count()} cores), {threads} torch threads, "
        f"torch {torch.__version__}, transformers {transformers.__version__}, float32"
    )


def run_bench(
    plan: Plan,
    device: torch.device,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Measure everything in `plan` and return the table (see the module docstring).

    `threads` sets torch's thread count for the run (and puts the old one back after).
    """
    require_transformers()
    if threads is not None and threads < 1:
        raise QkvError(f"--threads must be >= 1, got {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        return _measure(plan, device, progress or (lambda _message: None))
    finally:
        torch.set_num_threads(previous)


def _measure(plan: Plan, device: torch.device, say: Callable[[str], None]) -> Report:
    start = time.perf_counter()
    report = Report(header=[_machine_line(device, torch.get_num_threads())])
    say(f"matmul peak ({plan.matmul_n}^3)")
    peak = matmul_peak(plan.matmul_n, device, plan.matmul_repeats)
    report.header.append(
        f"matmul peak: {peak / 1e9:.1f} GFLOP/s (float32 {plan.matmul_n}^3, best of "
        f"{plan.matmul_repeats}); MFU is measured against it"
    )
    report.header.append(
        f"peer: {PEER} (same weights via qkv.interop.to_hf, sdpa attention), ratio = qkv/HF; "
        "Muon row: qkv = GroupedMuon, peer = torch.optim.Muon, ratio = time/time; "
        "attention rows: qkv = fused path, peer = explicit path, ratio = fused/explicit"
    )
    report.header.append(
        f"generation model: {_describe(plan.gen_model, 1)}, vocab {plan.gen_model.vocab_size}"
    )
    for case in plan.train_cases:
        say(f"training {case.label}")
        report.rows += bench_training(case, plan, device, peak)
    say("Muon step")
    report.rows += bench_muon(plan, device)
    say("generation")
    report.rows += bench_generation(plan, device)
    say("attention")
    report.rows += bench_attention(plan, device)
    report.elapsed = time.perf_counter() - start
    return report


def write_markdown(report: Report, path: str | Path) -> None:
    try:
        Path(path).write_text(report.to_markdown(), encoding="utf-8")
    except OSError as exc:
        raise QkvError(f"cannot write {path}: {exc.strerror}") from None
