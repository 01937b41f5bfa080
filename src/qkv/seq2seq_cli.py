"""The command line's seq2seq verbs: `qkv train --model seq2seq`, `qkv translate`, and
`qkv eval` on a seq2seq checkpoint. cli.py registers them; this module parses nothing else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qkv.checkpoint import CONFIG_FILE, checkpoint_kind, claim_run_dir
from qkv.config import read_json_config, read_toml
from qkv.data.tasks import TASKS
from qkv.errors import QkvError
from qkv.seq2seq_config import SEQ2SEQ_PRESETS, Seq2SeqRunConfig, preset_values

TRANSLATE_BATCH = 64


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """`qkv train`'s options that choose and shape the encoder-decoder."""
    parser.add_argument(
        "--model",
        choices=["gpt", "seq2seq"],
        help="gpt (default): a language model on a text; seq2seq: the encoder-decoder on "
        "pairs (--task, or --data FILE.tsv of source<TAB>target lines)",
    )
    parser.add_argument(
        "--task", choices=TASKS, help="a generated seq2seq task (implies --model seq2seq)"
    )
    parser.add_argument(
        "--preset",
        choices=sorted(SEQ2SEQ_PRESETS),
        help="seq2seq model size: small (default), tiny, or base (the paper's)",
    )


def wants_seq2seq(args: argparse.Namespace) -> bool:
    """Does this `qkv train` command line ask for the encoder-decoder?"""
    if args.model == "gpt" and (args.task or args.preset):
        raise QkvError("--task and --preset are for --model seq2seq")
    if args.model == "seq2seq" or args.task or args.preset:
        return True
    out = Path(args.out or "out")
    return bool(args.resume) and (out / CONFIG_FILE).exists() and checkpoint_kind(out) == "seq2seq"


def seq2seq_train_config(args: argparse.Namespace) -> Seq2SeqRunConfig:
    """Defaults, the preset, the TOML file, key=value overrides, then flags."""
    for flag, name in ((args.init_from, "--init-from"), (args.compile, "--compile")):
        if flag:
            raise QkvError(f"{name} is not available for --model seq2seq")
    if args.skip_nonfinite:
        raise QkvError("--skip-nonfinite is not available for --model seq2seq")
    if args.task and args.data:
        raise QkvError("use --task NAME or --data FILE.tsv, not both")
    if args.resume:
        out = Path(args.out or "out")
        tree = read_json_config(out / CONFIG_FILE, f"is {out} a qkv checkpoint?")
        config = Seq2SeqRunConfig.from_dict(tree, origin=str(out / CONFIG_FILE))
        if args.config or args.preset:
            raise QkvError("--config and --preset cannot be combined with --resume")
    else:
        config = Seq2SeqRunConfig()
        if args.preset:
            config = config.with_values(preset_values(args.preset))
        if args.config:
            tree = read_toml(Path(args.config))
            base = config.to_dict()
            for section, values in tree.items():
                if isinstance(values, dict) and isinstance(base.get(section), dict):
                    base[section].update(values)
                else:
                    base[section] = values
            config = Seq2SeqRunConfig.from_dict(base, origin=str(args.config))
    config = config.with_overrides(args.overrides)
    flags = {
        "data.source": args.task or args.data,
        "train.out_dir": args.out,
        "train.max_steps": args.max_steps,
        "train.max_time": args.max_time,
        "train.device": args.device,
        "train.seed": args.seed,
        "data.tokenizer": args.tokenizer,
        "data.vocab_size": args.vocab_size,
    }
    return config.with_values({k: v for k, v in flags.items() if v is not None})


def cmd_train_seq2seq(args: argparse.Namespace) -> int:
    from qkv.train_seq2seq import train_seq2seq

    config = seq2seq_train_config(args)
    out = Path(config.train.out_dir)
    claim_run_dir(out, args.resume, args.overwrite)
    result = train_seq2seq(config, resume=args.resume, progress=not args.no_progress)
    print(
        f"done: step {result.step}, val loss {result.val_loss:.4f}, val exact match "
        f"{result.val_exact_match:.4f}, {result.elapsed:.0f}s; checkpoint in {result.out_dir}"
    )
    return 0


# -- translate --------------------------------------------------------------------------------


def _add_decoding_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="DIR")
    parser.add_argument(
        "--beam", type=int, default=4, metavar="N", help="beam size (default 4; 1 is greedy)"
    )
    parser.add_argument(
        "--alpha", type=float, default=0.6, metavar="A", help="length penalty (default 0.6)"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])


def add_translate(verbs, debug_flag: argparse.ArgumentParser) -> None:
    p = verbs.add_parser(
        "translate",
        parents=[debug_flag],
        help="translate text with a seq2seq checkpoint",
        description="Translate each TEXT (or, without any, each line of stdin) with a seq2seq "
        "checkpoint; one output line per input.",
    )
    _add_decoding_options(p)
    p.add_argument("texts", nargs="*", metavar="TEXT")
    p.set_defaults(run=cmd_translate)


def _check_decoding_options(args: argparse.Namespace) -> None:
    if args.beam < 1:
        raise QkvError(f"--beam must be >= 1, got {args.beam}")
    if args.alpha < 0:
        raise QkvError(f"--alpha must be >= 0, got {args.alpha}")


def translate_texts(model, tokenizer, texts: list[str], beam: int, alpha: float) -> list[str]:
    """Translate strings in batches; a character outside the vocabulary is a QkvError."""
    from qkv.data.pairs import pad
    from qkv.decoding import translate_ids
    from qkv.seq2seq_config import EOS_ID

    device = next(model.parameters()).device
    limit = model.config.max_len
    outputs = []
    for start in range(0, len(texts), TRANSLATE_BATCH):
        rows = [
            tokenizer.encode(text) + [EOS_ID] for text in texts[start : start + TRANSLATE_BATCH]
        ]
        too_long = [len(r) for r in rows if len(r) > limit]
        if too_long:
            raise QkvError(f"an input has {too_long[0]} tokens; this model reads at most {limit}")
        ids = translate_ids(model, pad(rows, device), beam, alpha)
        outputs += [tokenizer.decode(row) for row in ids]
    return outputs


def cmd_translate(args: argparse.Namespace) -> int:
    from qkv.checkpoint import load_seq2seq_checkpoint
    from qkv.train import resolve_device

    _check_decoding_options(args)
    model, tokenizer, _ = load_seq2seq_checkpoint(args.checkpoint, resolve_device(args.device))
    model.eval()
    texts = args.texts or [line.rstrip("\r\n") for line in sys.stdin]
    for line in translate_texts(model, tokenizer, texts, args.beam, args.alpha):
        print(line)
    return 0


# -- eval ---------------------------------------------------------------------------------


def add_eval_options(parser: argparse.ArgumentParser) -> None:
    """`qkv eval`'s options for seq2seq checkpoints (--data is shared with GPTs)."""
    parser.add_argument(
        "--beam", type=int, default=4, metavar="N", help="seq2seq: beam size (default 4)"
    )
    parser.add_argument(
        "--alpha", type=float, default=0.6, metavar="A", help="seq2seq: length penalty (0.6)"
    )


def cmd_eval_seq2seq(args: argparse.Namespace) -> int:
    """exact_match, BLEU and chrF (sacrebleu) on the test split, or on every pair of --data.

    BLEU counts character n-grams for a character-level model (sacrebleu's "char"
    tokenisation) and words (its default "13a") for a BPE one."""
    import sacrebleu

    from qkv.checkpoint import load_seq2seq_checkpoint
    from qkv.data.tasks import read_pairs
    from qkv.train import resolve_device
    from qkv.train_seq2seq import data_splits

    _check_decoding_options(args)
    model, tokenizer, config = load_seq2seq_checkpoint(args.checkpoint, resolve_device(args.device))
    model.eval()
    pairs = read_pairs(args.data) if args.data else data_splits(config).test
    hypotheses = translate_texts(model, tokenizer, [s for s, _ in pairs], args.beam, args.alpha)
    references = [t for _, t in pairs]
    exact = sum(h == r for h, r in zip(hypotheses, references, strict=True)) / len(pairs)
    # one-word outputs (a date, a number) have no 4-grams of words: count characters then
    bleu_tokens = "char" if config.data.tokenizer == "char" else "13a"
    bleu = sacrebleu.corpus_bleu(hypotheses, [references], tokenize=bleu_tokens).score
    chrf = sacrebleu.corpus_chrf(hypotheses, [references]).score
    print(f"exact_match={exact:.4f} bleu={bleu:.2f} chrf={chrf:.2f} examples={len(pairs)}")
    return 0
