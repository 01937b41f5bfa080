"""`qkv eval`: score a checkpoint as its model kind is scored."""

from __future__ import annotations

import argparse

from qkv.checkpoint import open_checkpoint
from qkv.cli.common import (
    add_decoding_options,
    add_device,
    add_quantize,
    add_verb,
    check_quantize,
    load_model,
)


def add_eval(verbs) -> None:
    p = add_verb(
        verbs,
        "eval",
        checkpoint=True,
        help="score a checkpoint: val loss (GPT), exact match/BLEU/chrF (seq2seq)",
        description="A GPT: mean loss over every token of the val split (the last 10%). A "
        "seq2seq model: exact match, BLEU and chrF of its translations of the test split.",
    )
    p.add_argument("--data", metavar="NAME|PATH", help="default: the data the model trained on")
    p.add_argument("--batch-size", type=int, default=32, metavar="N")
    add_device(p)
    add_quantize(p)
    add_decoding_options(p, "seq2seq: ")
    p.set_defaults(run=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from qkv.evaluate import EvalOptions

    options = EvalOptions(args.data, args.batch_size, args.beam, args.alpha)
    check_quantize(args)
    checkpoint = open_checkpoint(args.checkpoint)
    evaluate = checkpoint.kind.verb("eval", args.checkpoint)
    model = load_model(checkpoint, args)
    print(evaluate(checkpoint, model, options).line())
    return 0
