"""`qkv train`: parse the run's options into a config tree and call `qkv.training`.

Each flag that sets a config field is one row of `SETTINGS` (flag, config key, argparse
options), which both adds it to the parser and applies it to the config, so the two never
disagree.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qkv.checkpoint import CONFIG_FILE, claim_run_dir
from qkv.cli.common import add_verb
from qkv.config import KINDS, ConfigTree, config_from_json, load_config
from qkv.config.choices import DEVICES
from qkv.data.tasks import TASKS
from qkv.errors import QkvError

DATA_HELP = (
    "gpt: shakespeare (default), tinyshakespeare, a file (UTF-8 text, .jsonl, .parquet, .gz), "
    "a directory of them, or a directory qkv prepare wrote; seq2seq: a task name or a .tsv file"
)
TOKENIZER_HELP = (
    "char (default); bpe: learn a byte-level BPE from the train split; DIR: a pretrained "
    "tokenizer (tokenizer.json, or GPT-2's vocab.json + merges.txt)"
)
MAX_TIME_HELP = "stop after this much training time (0: no limit; default 180, seq2seq 600)"
SETTINGS: list[tuple[str, str, dict[str, Any]]] = [
    ("--data", "data.source", dict(metavar="NAME|PATH", help=DATA_HELP)),
    ("--out", "train.out_dir", dict(metavar="DIR", help="run directory (default: out)")),
    (
        "--max-steps",
        "train.max_steps",
        dict(type=int, metavar="N", help="stop after N optimizer steps"),
    ),
    (
        "--max-time",
        "train.max_time",
        dict(type=float, metavar="SECONDS", help=MAX_TIME_HELP),
    ),
    ("--device", "train.device", dict(choices=list(DEVICES))),
    ("--seed", "train.seed", dict(type=int, metavar="N")),
    ("--tokenizer", "data.tokenizer", dict(metavar="char|bpe|DIR", help=TOKENIZER_HELP)),
    (
        "--vocab-size",
        "data.vocab_size",
        dict(type=int, metavar="N", help="tokens in the BPE to learn (default 1024)"),
    ),
    (
        "--text-field",
        "data.text_field",
        dict(metavar="NAME", help="the JSONL field or Parquet column with the text (text)"),
    ),
]
SWITCHES: list[tuple[str, str, str]] = [  # flag, config key, help: each sets key = true
    (
        "--skip-nonfinite",
        "train.skip_nonfinite",
        "skip a batch whose loss or gradient is NaN or inf instead of stopping the run",
    ),
    (
        "--compile",
        "train.compile",
        "torch.compile the model: faster steps on GPUs after a compile of a minute or so; "
        "rarely worth it for short CPU runs",
    ),
    (
        "--fsdp",
        "train.fsdp",
        "under torchrun: shard parameters, gradients and optimizer state over the processes "
        "with FSDP2, for models too big for one GPU",
    ),
]


def add_train(verbs) -> None:
    p = add_verb(
        verbs,
        "train",
        help="train a GPT on a text, or an encoder-decoder on pairs",
        description="Train a model: a GPT on a text (default), or with --model seq2seq "
        "(or --task) the encoder-decoder on pairs of strings. key=value overrides set any "
        "config field, e.g. model.n_layer=6 train.lr=1e-3 (bare keys such as n_layer=6 work "
        "too).",
    )
    p.add_argument(
        "--model",
        choices=sorted(KINDS),
        help="gpt (default): a language model on a text; seq2seq: the encoder-decoder on "
        "pairs (--task, or --data FILE.tsv of source<TAB>target lines)",
    )
    p.add_argument("--task", choices=TASKS, help="a generated seq2seq task (--model seq2seq)")
    p.add_argument(
        "--preset",
        choices=sorted({name for kind in KINDS.values() for name in kind.presets}),
        help="seq2seq model size: small (default), tiny, or base (the paper's)",
    )
    p.add_argument("--config", metavar="FILE.toml", help="a TOML file: [model], [data], [train]")
    for flag, _, options in SETTINGS:
        p.add_argument(flag, **options)
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--init-from",
        metavar="DIR",
        help="start from this checkpoint's weights and tokenizer (fine-tuning; e.g. GPT-2 from "
        "qkv import-hf), with a fresh optimizer",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh even if --out already holds a run (deletes its metrics)",
    )
    for flag, key, text in SWITCHES:
        p.add_argument(flag, action="store_true", help=f"{text} ({key}=true)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(run=cmd_train)


def train_config(args: argparse.Namespace) -> ConfigTree:
    """Defaults (or the resumed run's saved config), preset, TOML file, overrides, then flags."""
    kind = args.model
    if args.task or args.preset:  # generated tasks and presets are the encoder-decoder's
        if kind not in (None, "seq2seq"):
            raise QkvError("--task and --preset are for --model seq2seq")
        kind = "seq2seq"
    if args.task and args.data:
        raise QkvError("use --task NAME or --data FILE.tsv, not both")
    if args.resume:
        if args.config or args.preset:
            raise QkvError(
                "--config and --preset cannot be combined with --resume; use key=value overrides"
            )
        out = Path(args.out or "out")
        # sharding is chosen by each launch (--fsdp), so any run resumes in a single process
        config = config_from_json(out / CONFIG_FILE).with_values({"train.fsdp": False})
        if kind and kind != config.KIND:
            raise QkvError(f"{out} holds a {config.KIND} run, not --model {kind}")
        config = config.with_overrides(args.overrides)
    else:
        config = load_config(args.config, args.overrides, kind=kind, preset=args.preset)
    return config.with_values(_flag_values(args))


def _flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """{"table.key": value} for every flag given on the command line."""
    given = {key: _value(args, flag) for flag, key, _ in SETTINGS}
    given |= {key: True if _value(args, flag) else None for flag, key, _ in SWITCHES}
    if args.task:
        given["data.source"] = args.task
    return {key: value for key, value in given.items() if value is not None}


def _value(args: argparse.Namespace, flag: str) -> Any:
    return getattr(args, flag.lstrip("-").replace("-", "_"))


def cmd_train(args: argparse.Namespace) -> int:
    from qkv.training.distributed import is_main_process
    from qkv.training.run import train

    config = train_config(args)
    claim_run_dir(Path(config.train.out_dir), args.resume, args.overwrite)
    result = train(
        config, resume=args.resume, progress=not args.no_progress, init_from=args.init_from
    )
    if not is_main_process():  # under torchrun, rank 0 speaks for the job
        return 0
    others = "".join(
        f", {key.replace('_', ' ')} {value:.4f}"
        for key, value in result.metrics.items()
        if key not in ("val_loss", "eval_train_loss")
    )
    print(
        f"done: step {result.step}, val loss {result.val_loss:.4f} "
        f"(best {result.best_val_loss:.4f}){others}, {result.tokens_per_s:,.0f} tokens/s, "
        f"{result.elapsed:.0f}s; checkpoint in {result.out_dir}"
    )
    return 0
