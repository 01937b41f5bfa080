"""What every verb's parser shares: --debug, --device, --checkpoint."""

from __future__ import annotations

import argparse

from qkv.config.choices import DEVICES


def debug_flag() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    return parent


def add_verb(verbs, name: str, *, checkpoint: bool = False, **kwargs) -> argparse.ArgumentParser:
    """A verb's parser, with --debug (and --checkpoint DIR, required, if it reads one)."""
    parser = verbs.add_parser(name, parents=[debug_flag()], **kwargs)
    if checkpoint:
        parser.add_argument("--checkpoint", required=True, metavar="DIR")
    return parser


def add_decoding_options(parser: argparse.ArgumentParser, who: str = "") -> None:
    """--beam and --alpha of an encoder-decoder's beam search (`who` prefixes the help)."""
    parser.add_argument(
        "--beam", type=int, default=4, metavar="N", help=f"{who}beam size (default 4; 1: greedy)"
    )
    parser.add_argument(
        "--alpha", type=float, default=0.6, metavar="A", help=f"{who}length penalty (0.6)"
    )


def add_device(parser: argparse.ArgumentParser, default: str | None = "auto") -> None:
    parser.add_argument("--device", default=default, choices=list(DEVICES))
