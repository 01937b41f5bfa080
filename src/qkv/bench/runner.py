"""The whole `qkv bench` run: `run_bench` measures every row of a plan, in order.

It sets the thread count for the run, writes the header (machine, matmul peak, what the peer
of each row is, the generation model), then the training, Muon, generation and attention
rows, and puts the thread count back.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from qkv.bench.attention_rows import bench_attention
from qkv.bench.decode_rows import bench_decoding, stream_bandwidth
from qkv.bench.machine import _machine_line, matmul_peak
from qkv.bench.model_rows import bench_generation, bench_muon, bench_training
from qkv.bench.plan import Plan, _describe
from qkv.bench.report import Report
from qkv.errors import QkvError
from qkv.interop import require_transformers

PEER = "HF GPT2LMHeadModel"


def run_bench(
    plan: Plan,
    device: torch.device,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
    decode: bool = False,
) -> Report:
    """Measure everything in `plan` and return the table (see the `qkv.bench` docstring);
    with `decode`, the decoding rows against the memory limit instead (`decode_rows`).

    `threads` sets torch's thread count for the run (and puts the old one back after).
    """
    require_transformers()
    if threads is not None and threads < 1:
        raise QkvError(f"--threads must be >= 1, got {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    measure = _measure_decoding if decode else _measure
    try:
        return measure(plan, device, progress or (lambda _message: None))
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


def _measure_decoding(plan: Plan, device: torch.device, say: Callable[[str], None]) -> Report:
    start = time.perf_counter()
    report = Report(header=[_machine_line(device, torch.get_num_threads())])
    report.header.append("")  # the bandwidth line, once every case has measured it
    report.header.append(
        f"peer: {PEER} fp32 generate on the same random weights; ratio = qkv/HF; greedy, "
        f"{plan.decode_new_tokens} new tokens after a 16-token prompt, fastest of "
        f"{plan.decode_rounds} alternating rounds; greedy agreement: the fraction of "
        f"{plan.agree_steps} greedy tokens (batch 1) equal to qkv fp32's, position by position"
    )
    bandwidth, measured = 0.0, []
    for case in plan.decode_cases:
        # measured again before each case, the best so far kept: other processes can only
        # lower it, and a limit measured in a busy minute would be one the rows exceed
        say(f"streaming bandwidth ({plan.bandwidth_mib} MiB)")
        measured.append(stream_bandwidth(plan.bandwidth_mib, device))
        bandwidth = max(bandwidth, measured[-1])
        say(f"decoding {case.label}")
        report.rows += bench_decoding(case, plan, device, bandwidth)
    report.header[1] = (
        f"streaming bandwidth: {bandwidth / 1e9:.1f} GB/s, the best of "
        f"{', '.join(f'{b / 1e9:.1f}' for b in measured)} (each the sum of a "
        f"{plan.bandwidth_mib} MiB float32 tensor, best of 5, before each model, whose rows use "
        "the best so far): a step that "
        "reads W bytes of weights for B rows is limited to B x bandwidth / W tok/s"
    )
    report.elapsed = time.perf_counter() - start
    return report
