"""`qkv train --model seq2seq`, `qkv translate`, `qkv eval` on a seq2seq checkpoint, errors."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

import qkv
from qkv.models.seq2seq import Seq2SeqTransformer

TINY_SEQ2SEQ = [
    "--preset", "tiny", "--max-time", "0", "--no-progress", "--device", "cpu", "--seed", "0",
    "model.max_len=16", "data.n_train=400", "data.n_val=10", "data.n_test=20",
    "data.synthetic_len=4", "train.batch_size=16", "train.warmup_steps=10",
    "train.eval_interval=20", "train.eval_examples=10", "train.log_interval=5",
]  # fmt: skip
EVAL_LINE = re.compile(
    r"^exact_match=(\d\.\d{4}) bleu=(\d+\.\d\d) chrf=(\d+\.\d\d) examples=(\d+)$"
)


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.code == 2, (result.code, result.err)
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("qkv: error: "), result.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def copy_run(tmp_path_factory) -> Path:
    """A tiny copy model trained for 20 steps through the command line."""
    from qkv.cli import main

    out = tmp_path_factory.mktemp("seq2seq") / "copy"
    code = main(["train", "--task", "copy", "--out", str(out), "--max-steps", "20", *TINY_SEQ2SEQ])
    assert code == 0
    return out


def test_train_writes_a_seq2seq_checkpoint(copy_run):
    config = (copy_run / "config.json").read_text()
    assert '"kind": "seq2seq"' in config
    for name in ("model.safetensors", "tokenizer.json", "trainer.pt", "metrics.jsonl"):
        assert (copy_run / name).exists()
    model, tokenizer = qkv.load(copy_run)
    assert isinstance(model, Seq2SeqTransformer) and not model.training
    assert model.config.n_encoder_layer == 1  # the tiny preset


def test_translate_texts_and_stdin(cli, copy_run, monkeypatch):
    result = cli("translate", "--checkpoint", copy_run, "--device", "cpu", "abc", "dcba")
    assert result.code == 0, result.err
    assert len(result.out.splitlines()) == 2
    monkeypatch.setattr("sys.stdin", io.StringIO("abc\ndcba\n"))
    piped = cli("translate", "--checkpoint", copy_run, "--device", "cpu")
    assert piped.out == result.out
    greedy = cli("translate", "--checkpoint", copy_run, "--beam", "1", "abc", "dcba")
    assert greedy.code == 0 and len(greedy.out.splitlines()) == 2


def test_eval_prints_exact_match_bleu_chrf_on_the_test_split(cli, copy_run, tmp_path):
    result = cli("eval", "--checkpoint", copy_run, "--device", "cpu", "--beam", "2")
    assert result.code == 0, result.err
    match = EVAL_LINE.match(result.out.strip())
    assert match, result.out
    assert 0.0 <= float(match[1]) <= 1.0 and int(match[4]) == 20
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("abc\tabc\nbcd\tbcd\n", encoding="utf-8")
    on_file = cli("eval", "--checkpoint", copy_run, "--data", pairs)
    assert EVAL_LINE.match(on_file.out.strip()).group(4) == "2"


def test_a_perfect_model_scores_one_hundred(cli, copy_run, tmp_path, monkeypatch):
    monkeypatch.setattr(
        "qkv.evaluate.translate_texts", lambda model, tok, texts, beam, alpha: list(texts)
    )
    pairs = tmp_path / "pairs.tsv"  # sources equal targets: the identity is perfect
    pairs.write_text("the cat sat on the mat\tthe cat sat on the mat\n" * 3, encoding="utf-8")
    result = cli("eval", "--checkpoint", copy_run, "--data", pairs)
    assert result.out.strip() == "exact_match=1.0000 bleu=100.00 chrf=100.00 examples=3"


def test_train_on_a_tsv_file_and_resume(cli, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{w}\t{w[::-1]}\n" for w in ["abc", "bca", "cab", "ab"] * 10))
    out = tmp_path / "run"
    args = ["--model", "seq2seq", "--data", pairs, "--out", out, *TINY_SEQ2SEQ]
    first = cli("train", *args, "--max-steps", "4")
    assert first.code == 0, first.err
    resumed = cli("train", "--out", out, "--resume", "--max-steps", "8", "--no-progress")
    assert resumed.code == 0, resumed.err
    assert "step 8" in resumed.out


def test_a_tsv_line_without_a_tab_is_a_one_line_error(cli, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("abc\tcba\nno tab here\n", encoding="utf-8")
    result = cli("train", "--model", "seq2seq", "--data", pairs, "--out", tmp_path / "o")
    assert_one_line_error(result, f"{pairs}:2: no tab in this line")


def test_unknown_characters_in_translate_are_named(cli, copy_run):
    result = cli("translate", "--checkpoint", copy_run, "abc€")
    assert_one_line_error(result, "characters not in the model's vocabulary: '€'")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["translate", "--beam", "0", "x"], "--beam must be >= 1"),
        (["translate", "--alpha", "-1", "x"], "--alpha must be >= 0"),
        (["sample"], "holds a seq2seq model: use qkv translate or qkv eval"),
    ],
)
def test_bad_decoding_options_are_one_line_errors(cli, copy_run, args, fragment):
    assert_one_line_error(cli(*args, "--checkpoint", copy_run), fragment)


def test_translate_on_a_gpt_checkpoint_is_a_one_line_error(cli, trained_run):
    result = cli("translate", "--checkpoint", trained_run.run_dir, "x")
    assert_one_line_error(result, "holds a gpt model: use qkv sample or qkv eval")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--model", "gpt", "--task", "dates"], "--task and --preset are for --model seq2seq"),
        (["--task", "copy", "--data", "x.tsv"], "use --task NAME or --data FILE.tsv"),
        (["--task", "copy", "model.n_layr=2"], "unknown key model.n_layr"),
    ],
)
def test_bad_seq2seq_train_options_are_one_line_errors(cli, tmp_path, args, fragment):
    assert_one_line_error(cli("train", "--out", tmp_path / "o", *args), fragment)


def test_help_lists_translate(cli, capsys):
    from qkv.cli import build_parser

    assert "translate" in build_parser().format_help()


def test_a_bpe_vocabulary_trains_and_translates_any_text(cli, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{w} {w}\t{w}\n" for w in ["one", "two", "three", "four"] * 10))
    out = tmp_path / "bpe"
    args = ["--data", pairs, "--out", out, "--tokenizer", "bpe", "--vocab-size", "300"]
    result = cli("train", "--model", "seq2seq", *args, *TINY_SEQ2SEQ, "--max-steps", "2")
    assert result.code == 0, result.err
    translated = cli("translate", "--checkpoint", out, "--beam", "2", "fünf €")  # unseen text
    assert translated.code == 0, translated.err
    assert len(translated.out.splitlines()) == 1
