"""`qkv train`: parse the run's options into a config tree and call `qkv.training`."""

from __future__ import annotations

import argparse
from pathlib import Path

from qkv.checkpoint import CONFIG_FILE, claim_run_dir
from qkv.cli.common import add_device, add_verb
from qkv.config import KINDS, ConfigTree, config_from_json, load_config
from qkv.data.tasks import TASKS
from qkv.errors import QkvError


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
    p.add_argument(
        "--task", choices=TASKS, help="a generated seq2seq task (implies --model seq2seq)"
    )
    p.add_argument(
        "--preset",
        choices=sorted({name for kind in KINDS.values() for name in kind.presets}),
        help="seq2seq model size: small (default), tiny, or base (the paper's)",
    )
    p.add_argument(
        "--config", metavar="FILE.toml", help="a TOML file with [model], [data], [train]"
    )
    p.add_argument(
        "--data",
        metavar="NAME|PATH",
        help="gpt: shakespeare (default), tinyshakespeare, a UTF-8 text file or a directory "
        "of .txt files; seq2seq: a task name or a .tsv file",
    )
    p.add_argument("--out", metavar="DIR", help="run directory (default: out)")
    p.add_argument("--max-steps", type=int, metavar="N", help="stop after N optimizer steps")
    p.add_argument(
        "--max-time",
        type=float,
        metavar="SECONDS",
        help="stop after this much training time (0: no limit; default 180, seq2seq 600)",
    )
    add_device(p, default=None)
    p.add_argument("--seed", type=int, metavar="N")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--tokenizer",
        metavar="char|bpe|DIR",
        help="char (default); bpe: learn a byte-level BPE from the train split; DIR: a "
        "pretrained tokenizer (tokenizer.json, or GPT-2's vocab.json + merges.txt)",
    )
    p.add_argument(
        "--vocab-size", type=int, metavar="N", help="tokens in the BPE to learn (default 1024)"
    )
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
    p.add_argument(
        "--skip-nonfinite",
        action="store_true",
        help="skip a batch whose loss or gradient is NaN or inf instead of stopping the run "
        "(train.skip_nonfinite=true)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model: faster steps on GPUs after a compile of a minute or "
        "so; rarely worth it for short CPU runs (train.compile=true)",
    )
    p.add_argument(
        "--fsdp",
        action="store_true",
        help="under torchrun: shard parameters, gradients and optimizer state over the "
        "processes with FSDP2, for models too big for one GPU (train.fsdp=true)",
    )
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
    flags = {
        "data.source": args.task or args.data,
        "train.out_dir": args.out,
        "train.max_steps": args.max_steps,
        "train.max_time": args.max_time,
        "train.device": args.device,
        "train.seed": args.seed,
        "data.tokenizer": args.tokenizer,
        "data.vocab_size": args.vocab_size,
        "train.skip_nonfinite": True if args.skip_nonfinite else None,
        "train.compile": True if args.compile else None,
        "train.fsdp": True if args.fsdp else None,
    }
    return config.with_values({k: v for k, v in flags.items() if v is not None})


def cmd_train(args: argparse.Namespace) -> int:
    from qkv.training.distributed import is_main_process
    from qkv.training.start import train

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
