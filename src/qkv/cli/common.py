"""What every verb's parser shares: --debug, --device, --checkpoint, --quantize."""

from __future__ import annotations

import argparse

from qkv.config.choices import DEVICES
from qkv.errors import QkvError


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


def add_quantize(parser: argparse.ArgumentParser) -> None:
    """--quantize int8|bf16|int4: decode with fewer bytes of weights (qkv.quantize)."""
    parser.add_argument(
        "--quantize",
        metavar="int8|bf16|int4",
        help="weights in int8 (torchao; on a CPU torch's integer kernel) or int4, or all in "
        "bfloat16: fewer bytes read per token, faster decoding (default: float32)",
    )


def check_quantize(args: argparse.Namespace) -> None:
    """A bad --quantize value is one line, before any checkpoint is read."""
    from qkv.decoding.quantize import MODES

    if args.quantize is not None and args.quantize not in MODES:
        raise QkvError(f"--quantize must be one of {', '.join(MODES)}, got {args.quantize!r}")


def load_model(checkpoint, args: argparse.Namespace, decoding: bool = False):
    """The checkpoint's model on --device, in eval mode, quantized as --quantize says; for
    `decoding` (sample, translate) a float32 model gets `qkv.for_decoding`'s layout."""
    from qkv.runtime import resolve_device

    model = checkpoint.model(resolve_device(args.device)).eval()
    if args.quantize is not None:
        from qkv.decoding.quantize import quantize

        model = quantize(model, args.quantize)
    elif decoding:
        from qkv.decoding.layout import for_decoding

        model = for_decoding(model)
    return model
