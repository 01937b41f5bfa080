"""`qkv bench`: qkv against Hugging Face GPT-2, measured in one process."""

from __future__ import annotations

import argparse
import sys

from qkv.cli.common import add_device, add_verb
from qkv.runtime import resolve_device


def add_bench(verbs) -> None:
    p = add_verb(
        verbs,
        "bench",
        help="speed against Hugging Face GPT-2 (needs transformers)",
        description="Training, generation and attention speed, side by side with Hugging Face "
        "GPT-2 on the same weights, in one table (a few minutes on 2 CPU cores). "
        'Needs transformers: pip install "qkv[bench]".',
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes: a few seconds")
    p.add_argument(
        "--decode",
        action="store_true",
        help="instead: decoding tok/s in fp32/bf16/int8 (6L/384 and GPT-2 small, batch 1 and 8) "
        "against HF and the memory limit (about 5 minutes; needs torchao)",
    )
    add_device(p, default="cpu")
    p.add_argument("--threads", type=int, metavar="N", help="torch threads (default: torch's)")
    p.add_argument("--out", metavar="FILE.md", help="also write the table to this file")
    p.set_defaults(run=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from qkv import bench

    plan = bench.quick_plan() if args.quick else bench.full_plan()
    device = resolve_device(args.device)

    def progress(message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)

    report = bench.run_bench(plan, device, args.threads, progress=progress, decode=args.decode)
    print(report.to_markdown(), end="")
    if args.out:
        bench.write_markdown(report, args.out)
    return 0
