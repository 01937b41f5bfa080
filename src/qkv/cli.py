"""`qkv <verb>`: the command line. It parses arguments and calls the library, nothing more.

Errors a user can cause end with one line on stderr and exit status 2; `--debug` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from qkv import seq2seq_cli
from qkv.checkpoint import (
    CONFIG_FILE,
    checkpoint_kind,
    claim_run_dir,
    load_checkpoint,
)
from qkv.config import RunConfig, config_from_json, load_config
from qkv.errors import JobBroken, QkvError, TrainingInterrupted

DESCRIPTION = (
    "qkv: the Transformer from its equations up. Train, sample and evaluate GPTs; train and "
    "run encoder-decoders."
)


def _debug_flag() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qkv", description=DESCRIPTION, parents=[_debug_flag()])
    verbs = parser.add_subparsers(dest="verb", metavar="<verb>", required=True)
    _add_train(verbs)
    _add_sample(verbs)
    _add_eval(verbs)
    _add_bench(verbs)
    _add_import_hf(verbs)
    _add_export_hf(verbs)
    _add_attention(verbs)
    _add_plot(verbs)
    seq2seq_cli.add_translate(verbs, _debug_flag())
    return parser


def _add_train(verbs) -> None:
    p = verbs.add_parser(
        "train",
        parents=[_debug_flag()],
        help="train a GPT on a text",
        description="Train a GPT. key=value overrides set any config field, "
        "e.g. model.n_layer=6 train.lr=1e-3 (bare keys such as n_layer=6 work too).",
    )
    p.add_argument(
        "--config", metavar="FILE.toml", help="a TOML file with [model], [data], [train]"
    )
    p.add_argument(
        "--data",
        metavar="NAME|PATH",
        help="shakespeare (default), tinyshakespeare, "
        "a UTF-8 text file or a directory of .txt files",
    )
    p.add_argument("--out", metavar="DIR", help="run directory (default: out)")
    p.add_argument("--max-steps", type=int, metavar="N", help="stop after N optimizer steps")
    p.add_argument(
        "--max-time",
        type=float,
        metavar="SECONDS",
        help="stop after this much training time (0: no limit; default 180)",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"])
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
    seq2seq_cli.add_train_options(p)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(run=cmd_train)


def _add_sample(verbs) -> None:
    p = verbs.add_parser(
        "sample",
        parents=[_debug_flag()],
        help="generate text from a checkpoint",
        description="Generate text from a checkpoint, streamed as it comes.",
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR")
    p.add_argument(
        "--prompt", default="", metavar="TEXT", help="text to continue (default: a newline)"
    )
    p.add_argument("--max-new-tokens", type=int, default=500, metavar="N")
    p.add_argument("--temperature", type=float, default=0.8, metavar="T", help="0 is greedy")
    p.add_argument("--top-k", type=int, metavar="K")
    p.add_argument("--top-p", type=float, metavar="P")
    p.add_argument("--num-samples", type=int, default=1, metavar="M")
    p.add_argument("--seed", type=int, default=1337, metavar="N")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.set_defaults(run=cmd_sample)


def _add_eval(verbs) -> None:
    p = verbs.add_parser(
        "eval",
        parents=[_debug_flag()],
        help="val loss of a checkpoint",
        description="Mean loss over every token of the val split (the last 10%).",
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR")
    p.add_argument("--data", metavar="NAME|PATH", help="default: the data the model trained on")
    p.add_argument("--batch-size", type=int, default=32, metavar="N")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    seq2seq_cli.add_eval_options(p)
    p.set_defaults(run=cmd_eval)


def _add_bench(verbs) -> None:
    p = verbs.add_parser(
        "bench",
        parents=[_debug_flag()],
        help="speed against Hugging Face GPT-2 (needs transformers)",
        description="Training, generation and attention speed, side by side with Hugging Face "
        "GPT-2 on the same weights, in one table (a few minutes on 2 CPU cores). "
        'Needs transformers: pip install "qkv[bench]".',
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes: a few seconds")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--threads", type=int, metavar="N", help="torch threads (default: torch's)")
    p.add_argument("--out", metavar="FILE.md", help="also write the table to this file")
    p.set_defaults(run=cmd_bench)


def _add_import_hf(verbs) -> None:
    p = verbs.add_parser(
        "import-hf",
        parents=[_debug_flag()],
        help="Hugging Face GPT-2 directory -> qkv checkpoint",
        description="Convert a local Hugging Face GPT-2 directory (config.json, model.safetensors "
        "or pytorch_model.bin, and tokenizer.json or vocab.json + merges.txt) into a qkv "
        "checkpoint that qkv sample, eval and train --init-from read. Nothing is downloaded. "
        'Needs transformers: pip install "qkv[bench]".',
    )
    p.add_argument("directory", metavar="DIR", help="the Hugging Face model directory")
    p.add_argument("out", metavar="OUT", help="the qkv checkpoint directory to write")
    p.set_defaults(run=cmd_import_hf)


def _add_export_hf(verbs) -> None:
    p = verbs.add_parser(
        "export-hf",
        parents=[_debug_flag()],
        help="qkv checkpoint -> Hugging Face GPT-2 directory",
        description="Write a qkv checkpoint as config.json + model.safetensors (+ tokenizer "
        "files for a BPE tokenizer) that transformers.GPT2LMHeadModel.from_pretrained loads. "
        "The model must be one GPT-2 can express: model.positional=learned, norm=pre, "
        'layernorm, gelu or relu. Needs transformers: pip install "qkv[bench]".',
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a qkv checkpoint directory")
    p.add_argument("out", metavar="OUT", help="the Hugging Face directory to write")
    p.set_defaults(run=cmd_export_hf)


def _add_attention(verbs) -> None:
    p = verbs.add_parser(
        "attention",
        parents=[_debug_flag()],
        help="draw a checkpoint's attention: heatmaps (.png) or an explorer page (.html)",
        description="Run the checkpoint on --text and draw every layer's and head's attention "
        "weights: a grid of heatmaps (--out FILE.png) or a self-contained interactive page "
        "(--out FILE.html; open it in any browser, nothing is fetched). A seq2seq checkpoint "
        "translates --text and shows its encoder self-attention, decoder self-attention and "
        "cross-attention (output x source).",
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR")
    p.add_argument("--text", required=True, metavar="TEXT", help="the tokens to look at")
    p.add_argument("--out", required=True, metavar="FILE.png|FILE.html")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"])
    p.set_defaults(run=cmd_attention)


def _add_plot(verbs) -> None:
    p = verbs.add_parser(
        "plot",
        parents=[_debug_flag()],
        help="training curves of a run, or a positional encoding (PNG)",
        description="Draw RUN_DIR/metrics.jsonl (loss against steps and tokens, learning rate, "
        "tokens/s) to RUN_DIR/curves.png, or with --positions the positional matrix and the "
        "cosine similarity between positions.",
    )
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a run directory (qkv train)")
    p.add_argument(
        "--positions",
        metavar="CHECKPOINT|sinusoidal",
        help="draw this checkpoint's positions (or the paper's sinusoids) instead",
    )
    p.add_argument(
        "--out",
        metavar="FILE.png",
        help="default: RUN_DIR/curves.png, CHECKPOINT/positions.png or sinusoidal-positions.png",
    )
    p.set_defaults(run=cmd_plot)


# -- verbs ----------------------------------------------------------------------------------


def train_config(args: argparse.Namespace) -> RunConfig:
    """Defaults (or the resumed run's saved config), the TOML file, overrides, then flags."""
    if args.resume:
        out = Path(args.out or "out")
        # sharding is chosen by each launch (--fsdp), so any run resumes in a single process
        base = config_from_json(out / CONFIG_FILE).with_values({"train.fsdp": False})
        config = base.with_overrides(args.overrides)
        if args.config:
            raise QkvError("--config cannot be combined with --resume; use key=value overrides")
    else:
        config = load_config(args.config, args.overrides)
    flags = {
        "data.source": args.data,
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
    from qkv.distributed import is_main_process
    from qkv.train import train

    if seq2seq_cli.wants_seq2seq(args):
        return seq2seq_cli.cmd_train_seq2seq(args)
    config = train_config(args)
    out = Path(config.train.out_dir)
    claim_run_dir(out, args.resume, args.overwrite)
    result = train(
        config, resume=args.resume, progress=not args.no_progress, init_from=args.init_from
    )
    if not is_main_process():  # under torchrun, rank 0 speaks for the job
        return 0
    print(
        f"done: step {result.step}, val loss {result.val_loss:.4f} "
        f"(best {result.best_val_loss:.4f}), {result.tokens_per_s:,.0f} tokens/s, "
        f"{result.elapsed:.0f}s; checkpoint in {result.out_dir}"
    )
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from qkv.generate import check_sampling_options
    from qkv.tokenizer import decode_stream
    from qkv.train import resolve_device

    check_sampling_options(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    if args.num_samples < 1:
        raise QkvError(f"--num-samples must be >= 1, got {args.num_samples}")
    device = resolve_device(args.device)
    model, tokenizer, _ = load_checkpoint(args.checkpoint, device)
    model.eval()
    if args.prompt:
        prompt, ids = args.prompt, tokenizer.encode(args.prompt)
    else:  # a newline, or GPT-2's <|endoftext|> (shown as nothing)
        prompt, ids = tokenizer.empty_prompt()
    prompt_ids = torch.tensor([ids], device=device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    for i in range(args.num_samples):
        if i:
            print("\n" + "-" * 40)
        sys.stdout.write(prompt)
        tokens = model.stream(
            prompt_ids, args.max_new_tokens, args.temperature, args.top_k, args.top_p, generator
        )
        # a byte-level token may end inside a character: print whole characters only
        for text in decode_stream(tokenizer, (token[0].item() for token in tokens)):
            sys.stdout.write(text)
            sys.stdout.flush()
        print()
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from qkv.data import prepare_corpus
    from qkv.evaluate import evaluate
    from qkv.train import resolve_device

    if checkpoint_kind(args.checkpoint) == "seq2seq":
        return seq2seq_cli.cmd_eval_seq2seq(args)
    if args.batch_size < 1:
        raise QkvError(f"--batch-size must be >= 1, got {args.batch_size}")
    model, tokenizer, config = load_checkpoint(args.checkpoint, resolve_device(args.device))
    source = args.data or config.data.source
    corpus = prepare_corpus(source, config.data.val_fraction, tokenizer)
    if len(corpus.val) < 2:
        raise QkvError(f"{source}: the val split has {len(corpus.val)} token(s), nothing to score")
    print(evaluate(model, corpus.val, tokenizer, args.batch_size).line())
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from qkv import bench
    from qkv.train import resolve_device

    plan = bench.quick_plan() if args.quick else bench.full_plan()
    device = resolve_device(args.device)

    def progress(message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)

    report = bench.run_bench(plan, device, args.threads, progress=progress)
    print(report.to_markdown(), end="")
    if args.out:
        bench.write_markdown(report, args.out)
    return 0


def cmd_import_hf(args: argparse.Namespace) -> int:
    from qkv.hf_checkpoint import import_hf

    imported = import_hf(args.directory, args.out)
    config = imported.model.config
    print(
        f"imported GPT-2: {imported.model.num_params() / 1e6:.2f}M parameters, "
        f"{config.n_layer} layers, context {config.block_size}, vocab {config.vocab_size}; "
        f"checkpoint in {imported.out_dir}"
    )
    return 0


def cmd_export_hf(args: argparse.Namespace) -> int:
    from qkv.hf_checkpoint import export_hf

    files = export_hf(args.checkpoint, args.out)
    print(f"exported {args.checkpoint} to {args.out}: {', '.join(files)}")
    return 0


def cmd_attention(args: argparse.Namespace) -> int:
    from qkv.train import resolve_device
    from qkv.viz.commands import attention_command

    device = resolve_device(args.device)
    print(attention_command(args.checkpoint, args.text, args.out, device))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from qkv.viz.commands import plot_command

    print(plot_command(args.run_dir, args.positions, args.out))
    return 0


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
        from qkv.distributed import is_main_process

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
