"""The GPU check: one run, under 8 minutes on one H100, of what only a GPU can show.

1. The fused attention kernel agrees with the explicit math in bfloat16.
2. The card's bfloat16 matmul peak, measured here (2 n^3 FLOPs per n x n matmul).
3. GPT-2 small (12 layers, 12 heads, width 768, context 1024, vocab 50304) training
   throughput in bf16 autocast, with and without torch.compile, for qkv's GPT and for
   Hugging Face's GPT2LMHeadModel holding the same weights; MFU = (6 N + 12 L T C) FLOPs per
   token x tokens/s / the measured peak (N = qkv's `num_params()`, the PaLM/nanoGPT count).
4. Decoding at GPT-2 small's shape, batch 1 and 8: greedy tokens/s of qkv in fp32, bf16 and
   int8 (`qkv.quantize`; on a GPU, torchao's int8 weight-only tensor) against Hugging Face's
   fp32 `generate` on the same weights, each as a % of its memory limit, B x bandwidth / bytes
   of weights per step, with the bandwidth measured here (`qkv.bench.stream_bandwidth`). A
   mode the device cannot run is reported as such, not fatal.

    python benchmarks/gpu_check.py --out gpu.md             # on the GPU machine
    python benchmarks/gpu_check.py --tiny --device cpu --no-compile   # a smoke test, seconds

transformers is needed (pip install "qkv[bench]").
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qkv.bench import flops_per_token, matmul_peak, stream_bandwidth
from qkv.config import GPTConfig
from qkv.decoding.quantize import quantize, weight_bytes
from qkv.interop import to_hf
from qkv.models.gpt import GPT
from qkv.nn.attention import scaled_dot_product_attention

GPT2_SMALL = GPTConfig(
    vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768,
    positional="learned", activation="gelu",
)  # fmt: skip
TINY = GPTConfig(
    vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=64,
    positional="learned", activation="gelu",
)  # fmt: skip


DECODE_MODES = ("fp32", "bf16", "int8")


@dataclass
class Row:
    name: str
    tokens_per_s: float
    mfu: float


@dataclass
class DecodeRow:
    name: str
    tokens_per_s: float | None  # None: the device could not run this mode
    limit: float  # tok/s if a step only streamed its weights
    note: str = ""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def attention_agreement(device: torch.device, dtype: torch.dtype, tiny: bool) -> float:
    """Largest |fused - explicit| for causal attention on random inputs in `dtype`."""
    t = 64 if tiny else 1024
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(2, 4, t, 64, generator=g).to(device, dtype) for _ in range(3))
    fused = scaled_dot_product_attention(q, k, v, causal=True)
    explicit, _ = scaled_dot_product_attention(q, k, v, causal=True, return_weights=True)
    return (fused.float() - explicit.float()).abs().max().item()


def training_step(model: torch.nn.Module, ids: torch.Tensor, is_hf: bool, device: torch.device):
    """One full step in bf16 autocast: forward, cross-entropy, backward, fused AdamW."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    x, y = ids[:, :-1], ids[:, 1:]  # (B, T) each

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model(input_ids=x, use_cache=False).logits if is_hf else model(x)[0]
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def tokens_per_second(step: Callable[[], None], tokens: int, warmup: int, steps: int, device):
    for _ in range(warmup):  # includes torch.compile's compilation
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * tokens / (time.perf_counter() - start)


def decode_rate(model: torch.nn.Module, prompt: torch.Tensor, new: int, is_hf: bool, device):
    """New tokens/s of greedy decoding (KV cache), after one warm-up run."""

    def run() -> None:
        if is_hf:
            mask = torch.ones_like(prompt)
            model.generate(prompt, attention_mask=mask, do_sample=False, pad_token_id=0,
                           max_new_tokens=new, min_new_tokens=new)  # fmt: skip
        else:
            model.generate(prompt, new, temperature=0)

    run()
    sync(device)
    start = time.perf_counter()
    run()
    sync(device)
    return prompt.size(0) * new / (time.perf_counter() - start)


def decoders(model: GPT, hf: torch.nn.Module) -> dict[str, torch.nn.Module | str]:
    """name -> decoder, or the one line saying why this device cannot run that mode."""
    sides: dict[str, torch.nn.Module | str] = {"HF fp32": hf}
    for mode in DECODE_MODES:
        try:
            sides[f"qkv {mode}"] = model if mode == "fp32" else quantize(copy.deepcopy(model), mode)
        except Exception as exc:  # a mode this device or build lacks: say so, go on
            sides[f"qkv {mode}"] = f"not run: {str(exc).strip().splitlines()[0][:100]}"
    return sides


def decode_rows(
    model: GPT, hf: torch.nn.Module, args: argparse.Namespace
) -> tuple[list[DecodeRow], float]:
    """fp32/bf16/int8 qkv and fp32 HF decoding, batch 1 and 8, against the memory limit."""
    device = torch.device(args.device)
    bandwidth = stream_bandwidth(16 if args.tiny else 4096, device)
    sides, rows = decoders(model, hf), []
    for batch in (1, 8):
        prompt = torch.randint(0, model.config.vocab_size, (batch, 16), device=device)
        for name, net in sides.items():
            unrun = isinstance(net, str)
            nbytes = 1 if unrun else weight_bytes(model if name == "HF fp32" else net)
            limit = batch * bandwidth / nbytes
            if unrun:
                rows.append(DecodeRow(f"{name} B{batch}", None, limit, net))
                continue
            rate = decode_rate(net, prompt, args.decode_tokens, name == "HF fp32", device)
            rows.append(DecodeRow(f"{name} B{batch}", rate, limit, f"{nbytes / 1e6:.0f} MB/step"))
    return rows, bandwidth


def measure(args: argparse.Namespace) -> tuple[list[Row], float, float]:
    device = torch.device(args.device)
    config = TINY if args.tiny else GPT2_SMALL
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    worst = attention_agreement(device, torch.bfloat16, args.tiny)
    peak = matmul_peak(256 if args.tiny else 8192, device, dtype=torch.bfloat16)
    torch.manual_seed(0)
    model = GPT(config).to(device)
    hf = to_hf(model).to(device)
    per_token = flops_per_token(config, model.num_params())
    ids = torch.randint(0, config.vocab_size, (args.batch_size, config.block_size + 1))
    ids = ids.to(device)
    tokens = args.batch_size * config.block_size
    rows = []
    for compiled in [False] if args.no_compile else [False, True]:
        for name, net, is_hf in (("qkv GPT", model, False), ("HF GPT2LMHeadModel", hf, True)):
            runnable = torch.compile(net) if compiled else net
            step = training_step(runnable, ids, is_hf, device)
            tok_s = tokens_per_second(step, tokens, args.warmup, args.steps, device)
            label = f"{name}{' + compile' if compiled else ''}"
            rows.append(Row(label, tok_s, tok_s * per_token / peak))
    decoded = decode_rows(model.eval(), hf.eval(), args)  # after training, as measured before
    return rows, worst, peak, decoded


def decode_table(decoded: tuple[list[DecodeRow], float]) -> list[str]:
    rows, bandwidth = decoded
    lines = [
        "",
        f"decoding, greedy, KV cache; measured streaming bandwidth {bandwidth / 1e9:.0f} GB/s; "
        "limit = B x bandwidth / bytes of weights per step",
        "",
        "| decoder | tokens/s | % of limit | note |",
        "|---|---|---|---|",
    ]
    for r in rows:
        rate = "n/a" if r.tokens_per_s is None else f"{r.tokens_per_s:,.0f}"
        share = "n/a" if r.tokens_per_s is None else f"{100 * r.tokens_per_s / r.limit:.0f}%"
        lines.append(f"| {r.name} | {rate} | {share} | {r.note} |")
    return lines


def table(rows: list[Row], worst: float, peak: float, args: argparse.Namespace) -> str:
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    size = "tiny" if args.tiny else "GPT-2 small (124M), context 1024"
    lines = [
        f"device: {name}; torch {torch.__version__}; model: {size}; batch {args.batch_size}",
        f"fused vs explicit attention, bf16, causal: max |difference| = {worst:.2e}",
        f"measured bf16 matmul peak: {peak / 1e12:.1f} TFLOP/s",
        "",
        "| model | tokens/s | MFU |",
        "|---|---|---|",
    ]
    lines += [f"| {r.name} | {r.tokens_per_s:,.0f} | {100 * r.mfu:.1f}% |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description="qkv's GPU check (see the module docstring)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--decode-tokens", type=int, default=128, help="new tokens per decode run")
    parser.add_argument("--out", help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows, worst, peak, decoded = measure(args)
    text = "\n".join([table(rows, worst, peak, args), *decode_table(decoded)])
    text += f"\n\ntotal time: {time.perf_counter() - started:.0f}s"
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    return text


if __name__ == "__main__":
    main()
