"""`qkv <verb>`: the command line. One module per verb; each parses its arguments and calls
the library, nothing more.

Errors a user can cause end with one line on stderr and exit status 2; `--debug` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import sys

from qkv.cli.bench import add_bench
from qkv.cli.common import debug_flag
from qkv.cli.evaluate import add_eval
from qkv.cli.hf import add_hf_verbs
from qkv.cli.prepare import add_prepare
from qkv.cli.sample import add_sample
from qkv.cli.train import add_train
from qkv.cli.translate import add_translate
from qkv.cli.viz import add_attention, add_plot
from qkv.errors import JobBroken, QkvError, TrainingInterrupted

DESCRIPTION = (
    "qkv: the Transformer from its equations up. Train, sample and evaluate GPTs; train and "
    "run encoder-decoders."
)
VERBS = (
    add_prepare,
    add_train,
    add_sample,
    add_eval,
    add_bench,
    add_hf_verbs,
    add_attention,
    add_plot,
    add_translate,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qkv", description=DESCRIPTION, parents=[debug_flag()])
    verbs = parser.add_subparsers(dest="verb", metavar="<verb>", required=True)
    for add_verb in VERBS:
        add_verb(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except QkvError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"qkv: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except TrainingInterrupted as exc:
        from qkv.training.distributed import is_main_process

        if is_main_process():  # under torchrun, rank 0 speaks for the job
            print(f"qkv: {exc}", file=sys.stderr)
        return exc.exit_code
    except JobBroken as exc:
        print(f"qkv: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("qkv: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
