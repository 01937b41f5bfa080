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


def add_verb(verbs, name: str, **kwargs) -> argparse.ArgumentParser:
    """A verb's parser, with --debug."""
    return verbs.add_parser(name, parents=[debug_flag()], **kwargs)


def add_device(parser: argparse.ArgumentParser, default: str | None = "auto") -> None:
    parser.add_argument("--device", default=default, choices=list(DEVICES))
