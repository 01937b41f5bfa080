"""`qkv translate`: strings through a checkpoint that maps sources to targets."""

from __future__ import annotations

import argparse
import sys

from qkv.checkpoint import open_checkpoint
from qkv.cli.common import (
    add_decoding_options,
    add_device,
    add_quantize,
    add_verb,
    check_quantize,
    load_model,
)


def add_translate(verbs) -> None:
    p = add_verb(
        verbs,
        "translate",
        checkpoint=True,
        help="translate text with a seq2seq checkpoint",
        description="Translate each TEXT (or, without any, each line of stdin) with a seq2seq "
        "checkpoint; one output line per input.",
    )
    add_decoding_options(p)
    add_device(p)
    add_quantize(p)
    p.add_argument("texts", nargs="*", metavar="TEXT")
    p.set_defaults(run=cmd_translate)


def cmd_translate(args: argparse.Namespace) -> int:
    from qkv.decoding.translate import check_decoding_options

    check_decoding_options(args.beam, args.alpha)
    check_quantize(args)
    checkpoint = open_checkpoint(args.checkpoint)
    translate_texts = checkpoint.kind.verb("translate", args.checkpoint)
    model = load_model(checkpoint, args, decoding=True)
    texts = args.texts or [line.rstrip("\r\n") for line in sys.stdin]
    for line in translate_texts(model, checkpoint.tokenizer, texts, args.beam, args.alpha):
        print(line)
    return 0
