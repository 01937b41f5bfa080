"""`qkv sample`: stream text from a checkpoint that can generate it."""

from __future__ import annotations

import argparse
import sys

import torch

from qkv.checkpoint import open_checkpoint
from qkv.cli.common import add_device, add_verb
from qkv.errors import QkvError
from qkv.runtime import resolve_device


def add_sample(verbs) -> None:
    p = add_verb(
        verbs,
        "sample",
        checkpoint=True,
        help="generate text from a checkpoint",
        description="Generate text from a checkpoint, streamed as it comes.",
    )
    p.add_argument(
        "--prompt", default="", metavar="TEXT", help="text to continue (default: a newline)"
    )
    p.add_argument("--max-new-tokens", type=int, default=500, metavar="N")
    p.add_argument("--temperature", type=float, default=0.8, metavar="T", help="0 is greedy")
    p.add_argument("--top-k", type=int, metavar="K")
    p.add_argument("--top-p", type=float, metavar="P")
    p.add_argument("--num-samples", type=int, default=1, metavar="M")
    p.add_argument("--seed", type=int, default=1337, metavar="N")
    add_device(p)
    p.set_defaults(run=cmd_sample)


def cmd_sample(args: argparse.Namespace) -> int:
    from qkv.decoding.sampling import Sampling, check_sampling_options

    check_sampling_options(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    if args.num_samples < 1:
        raise QkvError(f"--num-samples must be >= 1, got {args.num_samples}")
    device = resolve_device(args.device)
    checkpoint = open_checkpoint(args.checkpoint)
    stream_text = checkpoint.kind.verb("sample", args.checkpoint)
    model = checkpoint.model(device).eval()
    generator = torch.Generator(device=device).manual_seed(args.seed)
    sampling = Sampling(args.temperature, args.top_k, args.top_p, generator)
    for i in range(args.num_samples):
        if i:
            print("\n" + "-" * 40)
        texts = stream_text(model, checkpoint.tokenizer, args.prompt, args.max_new_tokens, sampling)
        for text in texts:
            sys.stdout.write(text)
            sys.stdout.flush()
        print()
    return 0
