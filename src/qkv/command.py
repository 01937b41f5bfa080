"""The `qkv` command's entry point, which imports the CLI (and torch) only when it runs.

Why a module of its own: every multiprocessing child re-imports the program's main module
before it runs its task. For the `qkv` script that module is the script, whose one import is
this file; were it `qkv.cli`, each character-encoding worker of `qkv prepare` would import
torch (2.4 s and 231 MB of memory a worker, measured) only to look up a table (qkv.data.encode).
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Run `qkv ARGS...` (argv defaults to sys.argv[1:]) and return its exit status."""
    from qkv.cli import main as run_cli

    return run_cli(argv)
