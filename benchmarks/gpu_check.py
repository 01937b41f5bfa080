"""The GPU check: one run, under 8 minutes on one H100, of what only a GPU can show.

1. The fused attention kernel agrees with the explicit math in bfloat16.
2. The card's bfloat16 matmul peak, measured here (2 n^3 FLOPs per n x n matmul).
3. GPT-2 small (12 layers, 12 heads, width 768, context 1024, vocab 50304) training
   throughput in bf16 autocast, with and without torch.compile, for qkv's GPT and for
   Hugging Face's GPT2LMHeadModel holding the same weights; MFU = (6 N + 12 L T C) FLOPs per
   token x tokens/s / the measured peak (N = qkv's `num_params()`, the PaLM/nanoGPT count).

    python benchmarks/gpu_check.py --out gpu.md             # on the GPU machine
    python benchmarks/gpu_check.py --tiny --device cpu --no-compile   # a smoke test, seconds

transformers is needed (pip install "qkv[bench]").
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qkv.bench import flops_per_token, matmul_peak
from qkv.config import GPTConfig
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


@dataclass
class Row:
    name: str
    tokens_per_s: float
    mfu: float


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
    return rows, worst, peak


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
    parser.add_argument("--out", help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows, worst, peak = measure(args)
    text = table(rows, worst, peak, args) + f"\n\ntotal time: {time.perf_counter() - started:.0f}s"
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    return text


if __name__ == "__main__":
    main()
