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
6. Decoding (`qkv bench --decode`, `decode_rows`): greedy tokens/s of a random-weight GPT at
   6L/384 and at GPT-2 small's shape, batch 1 and 8, qkv fp32/bf16/int8 (`qkv.quantize`)
   against HF fp32 `generate`; each row as a % of its memory limit, B x bandwidth / bytes of
   weights per step, with the streaming bandwidth measured in the same run; the fraction of
   256 greedy tokens a quantized model shares with float32.

Where each part lives: `plan` (what to measure: `Plan`, `full_plan`, `quick_plan`),
`timing` (timed calls and alternating rounds), `machine` (the machine's limits and
description: matmul peak, memory, CPU name), `model_rows` (training, Muon and generation
rows), `attention_rows` (the attention rows), `decode_rows` (the decoding rows), `report`
(`Row`, `Report`, the markdown) and `runner` (`run_bench`, everything in order).
"""

from qkv.bench.attention_rows import EXPLICIT_COPIES, MEMORY_FRACTION, bench_attention
from qkv.bench.decode_rows import agreement, bench_decoding, stream_bandwidth
from qkv.bench.machine import PeakMemory, cpu_name, device_memory, matmul_peak
from qkv.bench.model_rows import bench_generation, bench_muon, bench_training, flops_per_token
from qkv.bench.plan import DecodeCase, Plan, TrainCase, full_plan, quick_plan
from qkv.bench.report import Report, Row, write_markdown
from qkv.bench.runner import PEER, run_bench
from qkv.bench.timing import _alternate as _alternate

__all__ = [
    "EXPLICIT_COPIES",
    "MEMORY_FRACTION",
    "PEER",
    "DecodeCase",
    "PeakMemory",
    "Plan",
    "Report",
    "Row",
    "TrainCase",
    "agreement",
    "bench_attention",
    "bench_decoding",
    "bench_generation",
    "bench_muon",
    "bench_training",
    "cpu_name",
    "device_memory",
    "flops_per_token",
    "full_plan",
    "matmul_peak",
    "quick_plan",
    "run_bench",
    "stream_bandwidth",
    "write_markdown",
]
