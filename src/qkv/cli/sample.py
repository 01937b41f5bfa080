"""`qkv sample`: stream text from a checkpoint that can generate it."""

from __future__ import annotations

import argparse
import sys

import torch

from qkv.checkpoint import open_checkpoint
from qkv.cli.common import add_device, add_quantize, add_verb, check_quantize, load_model
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
    p.add_argument(
        "--num-samples", type=int, default=1, metavar="M", help="M samples, decoded as one batch"
    )
    p.add_argument("--seed", type=int, default=1337, metavar="N")
    add_device(p)
    add_quantize(p)
    p.set_defaults(run=cmd_sample)


def cmd_sample(args: argparse.Namespace) -> int:
    from qkv.decoding.sampling import Sampling, check_sampling_options

    check_sampling_options(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    if args.num_samples < 1:
        raise QkvError(f"--num-samples must be >= 1, got {args.num_samples}")
    check_quantize(args)
    device = resolve_device(args.device)
    checkpoint = open_checkpoint(args.checkpoint)
    stream_samples = checkpoint.kind.verb("sample", args.checkpoint)
    model = load_model(checkpoint, args, decoding=True)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    sampling = Sampling(args.temperature, args.top_k, args.top_p, generator)
    tokenizer, current = checkpoint.tokenizer, 0
    pieces = stream_samples(
        model, tokenizer, args.prompt, args.max_new_tokens, sampling, args.num_samples
    )
    for sample, text in pieces:  # the M samples are one batch; sample 0 streams
        if sample != current:  # the previous sample's end, and a rule
            print("\n\n" + "-" * 40)
            current = sample
        sys.stdout.write(text)
        sys.stdout.flush()
    print()
    return 0
