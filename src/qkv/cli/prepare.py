"""`qkv prepare`: tokenize a corpus once into token shards that `qkv train --data DIR` maps.

The work is `qkv.data.prepare`'s; this module parses the options, calls it and says what it
wrote in one line.
"""

from __future__ import annotations

import argparse

from qkv.cli.common import add_verb
from qkv.config.gpt import DataConfig
from qkv.errors import QkvError

SOURCE_HELP = (
    "shakespeare, tinyshakespeare, a file (UTF-8 text, .jsonl, .parquet; .gz too) or a "
    "directory of them, walked recursively"
)
TOKENIZER_HELP = (
    "char (default); bpe: learn a byte-level BPE from the train split; DIR: a pretrained "
    "tokenizer (tokenizer.json, or GPT-2's vocab.json + merges.txt)"
)


def add_prepare(verbs) -> None:
    p = add_verb(
        verbs,
        "prepare",
        help="tokenize a corpus of any size once, into shards qkv train --data DIR maps",
        description="Read a corpus in bounded memory, learn the tokenizer, encode it on all "
        "cores and write token shards, the tokenizer and a manifest (sha256s, token counts, "
        "the val split) into --out. A preparation that was stopped goes on where it was.",
    )
    p.add_argument("--data", required=True, metavar="SRC", help=SOURCE_HELP)
    p.add_argument("--out", metavar="DIR", help="where to write (default: DATA.prepared)")
    p.add_argument("--tokenizer", default="char", metavar="char|bpe|DIR", help=TOKENIZER_HELP)
    p.add_argument("--vocab-size", type=int, metavar="N", help="tokens in the BPE to learn")
    p.add_argument(
        "--text-field", default="text", metavar="NAME", help="JSONL field / Parquet column"
    )
    p.add_argument(
        "--val-fraction", type=float, default=0.1, metavar="F", help="the val split: last F"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=cmd_prepare)


def cmd_prepare(args: argparse.Namespace) -> int:
    from qkv.data.dataset import open_prepared
    from qkv.data.prepare import Request, prepare

    data = DataConfig(
        args.data, args.val_fraction, args.tokenizer, args.vocab_size, args.text_field
    )
    out = args.out or f"{args.data.rstrip('/')}.prepared"
    if out == args.data:
        raise QkvError("--out must differ from --data")
    request = Request(
        data.source, data.tokenizer, data.vocab_size, None, data.text_field, data.val_fraction
    )
    directory = prepare(request, out, progress=False if args.no_progress else None)
    corpus = open_prepared(directory, checksums=False)
    print(
        f"prepared {directory}: {len(corpus.train):,} train and {len(corpus.val):,} val "
        f"tokens, vocab {corpus.tokenizer.vocab_size} ({corpus.tokenizer.kind}); "
        f"train on it with: qkv train --data {directory}"
    )
    return 0
