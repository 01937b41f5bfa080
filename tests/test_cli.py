"""`qkv <verb>` end to end: train -> sample -> eval, the help text, and one-line errors."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import qkv
from qkv.errors import QkvError

EVAL_LINE = re.compile(r"val_loss=(\d+\.\d+) bpc=(\d+\.\d+) tokens=(\d+)")


def assert_one_line_error(result, *fragments: str) -> None:
    """Exit status 2, exactly one line on stderr, starting `qkv: error:`, no traceback."""
    assert result.code == 2, (result.code, result.err)
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("qkv: error: "), result.err
    assert "Traceback" not in result.err + result.out
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def sample(cli, run_dir: Path, *extra: object):
    return cli("sample", "--checkpoint", run_dir, "--max-new-tokens", 60, "--device", "cpu", *extra)


# -- train -> sample -> eval ----------------------------------------------------------------


def test_sample_streams_the_prompt_then_new_text(cli, trained_run):
    result = sample(cli, trained_run.run_dir, "--prompt", "ROMEO:", "--seed", 1)
    assert result.code == 0, result.err
    assert result.out.startswith("ROMEO:")
    assert result.out.endswith("\n")
    new_text = result.out[len("ROMEO:") : -1]
    assert len(new_text) == 60  # one character per token
    assert set(new_text) <= set(trained_run.text)


def test_sample_seed_makes_samples_reproducible(cli, trained_run):
    run = trained_run.run_dir
    first = sample(cli, run, "--prompt", "To be", "--seed", 7, "--temperature", 1.0)
    again = sample(cli, run, "--prompt", "To be", "--seed", 7, "--temperature", 1.0)
    other = sample(cli, run, "--prompt", "To be", "--seed", 8, "--temperature", 1.0)
    assert first.code == again.code == other.code == 0
    assert first.out == again.out
    assert first.out != other.out


def test_temperature_zero_is_greedy_and_ignores_the_seed(cli, trained_run):
    run = trained_run.run_dir
    a = sample(cli, run, "--prompt", "HAMLET", "--temperature", 0, "--seed", 1)
    b = sample(cli, run, "--prompt", "HAMLET", "--temperature", 0, "--seed", 2)
    assert a.code == b.code == 0
    assert a.out == b.out
    # and it is the argmax continuation
    model, tokenizer = qkv.load(run)
    ids = torch.tensor([tokenizer.encode("HAMLET")])
    greedy = tokenizer.decode(model.generate(ids, 60, temperature=0)[0].tolist())
    assert a.out == greedy + "\n"


def test_num_samples_prints_each_sample(cli, trained_run):
    result = sample(cli, trained_run.run_dir, "--prompt", "JULIET", "--num-samples", 3)
    assert result.code == 0, result.err
    samples = result.out.split("\n" + "-" * 40 + "\n")
    assert len(samples) == 3
    assert all(s.startswith("JULIET") and len(s) == len("JULIET") + 61 for s in samples)
    assert len(set(samples)) == 3  # each sample draws afresh


def test_max_new_tokens_zero_prints_just_the_prompt(cli, trained_run):
    result = sample(cli, trained_run.run_dir, "--prompt", "ROMEO:", "--max-new-tokens", 0)
    assert result.code == 0, result.err
    assert result.out == "ROMEO:\n"


def test_an_empty_prompt_starts_from_a_newline(cli, trained_run):
    run = trained_run.run_dir
    free = sample(cli, run, "--temperature", 0)
    empty = sample(cli, run, "--prompt", "", "--temperature", 0)
    assert free.code == empty.code == 0, free.err + empty.err
    assert free.out == empty.out
    model, tokenizer = qkv.load(run)
    ids = torch.tensor([tokenizer.encode("\n")])
    assert free.out == tokenizer.decode(model.generate(ids, 60, temperature=0)[0].tolist()) + "\n"


def test_eval_prints_one_line_that_matches_an_independent_computation(cli, trained_run):
    result = cli("eval", "--checkpoint", trained_run.run_dir, "--device", "cpu")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert len(lines) == 1, result.out
    match = EVAL_LINE.fullmatch(lines[0])
    assert match, lines[0]
    val_loss, bpc, tokens = float(match[1]), float(match[2]), int(match[3])

    text = trained_run.text
    val_text = text[int(0.9 * len(text)) :]  # the val split is the last 10%
    assert tokens == len(val_text) - 1
    # bits per character = nats per token / ln 2 for a character tokenizer
    assert bpc == pytest.approx(val_loss / math.log(2), abs=2e-4)

    # score every val target once, in consecutive non-overlapping windows
    model, tokenizer = qkv.load(trained_run.run_dir)
    ids = torch.tensor(tokenizer.encode(val_text))
    block = model.config.block_size
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, block):
            x = ids[start : start + block]
            y = ids[start + 1 : start + block + 1]
            x = x[: len(y)]
            logits, _ = model(x[None])
            total += F.cross_entropy(logits[0], y, reduction="sum").item()
            count += len(y)
    assert count == tokens
    assert val_loss == pytest.approx(total / count, abs=1e-4)
    assert bpc == pytest.approx(total / count / math.log(2), abs=1e-4)


def test_eval_on_other_data(cli, trained_run, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text(trained_run.text[:1000], encoding="utf-8")
    result = cli("eval", "--checkpoint", trained_run.run_dir, "--data", other)
    assert result.code == 0, result.err
    match = EVAL_LINE.fullmatch(result.out.strip())
    assert match and int(match[3]) == 1000 - int(0.9 * 1000) - 1


def test_train_writes_a_complete_run_directory(trained_run):
    names = {p.name for p in trained_run.run_dir.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "trainer.pt",
        "metrics.jsonl",
        "best",
    } <= names


def test_overwrite_starts_afresh(cli, run_copy, trained_run, tiny):
    result = cli(
        "train",
        "--data",
        trained_run.text_file,
        "--out",
        run_copy,
        "--overwrite",
        "--max-steps",
        2,
        "--max-time",
        0,
        "--no-progress",
        *tiny,
    )
    assert result.code == 0, result.err
    lines = (run_copy / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3  # steps 1 and 2, then the final evaluation: nothing of the old run
    assert qkv.load(run_copy)[0].config.n_embd == 32


# -- help -----------------------------------------------------------------------------------


def test_top_level_help_lists_the_verbs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        qkv.cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for verb in ("train", "sample", "eval"):
        assert re.search(rf"^\s+{verb}\s", out, re.MULTILINE), (verb, out)


def test_train_help_mentions_its_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        qkv.cli.main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--max-time", "--resume", "key=value", "--data", "--out", "--max-steps"):
        assert option in out, option


# -- errors: one line, exit status 2 --------------------------------------------------------


def _data_errors(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Bad data sources -> (path, a fragment the error message must contain)."""
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"hello\x00world\n" * 50)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9 au lait\n".encode("latin-1") * 50)
    no_txt = tmp_path / "no-txt"
    no_txt.mkdir()
    (no_txt / "notes.md").write_text("not a .txt file\n" * 50, encoding="utf-8")
    short = tmp_path / "short.txt"
    short.write_text("To be, or not to be: that is the question.\n" * 3, encoding="utf-8")
    return {
        "missing": (tmp_path / "does-not-exist.txt", "does-not-exist.txt"),
        "empty": (empty, "empty"),
        "binary": (binary, "binary"),
        "invalid-utf8": (latin1, "UTF-8"),
        "no-txt-dir": (no_txt, ".txt"),
        "too-short": (short, "block_size"),
    }


@pytest.mark.parametrize(
    "case", ["missing", "empty", "binary", "invalid-utf8", "no-txt-dir", "too-short"]
)
def test_bad_data_is_a_one_line_error(cli, tmp_path, tiny, case):
    path, fragment = _data_errors(tmp_path)[case]
    out = tmp_path / "run"
    result = cli("train", "--data", path, "--out", out, "--max-steps", 2, "--no-progress", *tiny)
    assert_one_line_error(result, fragment)
    assert not (out / "model.safetensors").exists()


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["model.n_layr=2"], ["model.n_layr", "did you mean n_layer"]),
        (["n_layr=2"], ["did you mean"]),
        (["modle.n_layer=2"], ["modle"]),
        (["model.n_embd=30", "model.n_head=4"], ["divisible"]),
        (["model.n_layer=abc"], ["model.n_layer", "int"]),
        (["model.n_layer=true"], ["model.n_layer", "int"]),
        (["model.dropout=1.5"], ["dropout"]),
        (["train.lr=-1"], ["lr"]),
        (["n_layer"], ["key=value"]),
    ],
)
def test_bad_overrides_are_one_line_errors(cli, text_file, tmp_path, tiny, overrides, fragments):
    out = tmp_path / "run"
    result = cli("train", "--data", text_file, "--out", out, "--no-progress", *tiny, *overrides)
    assert_one_line_error(result, *fragments)
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--max-steps", "0"], "max_steps"),
        (["--max-time", "-1"], "max_time"),
        (["--config", "missing.toml"], "missing.toml"),
    ],
)
def test_bad_train_flags_are_one_line_errors(cli, text_file, tmp_path, tiny, flags, fragment):
    result = cli("train", "--data", text_file, "--out", tmp_path / "run", *flags, *tiny)
    assert_one_line_error(result, fragment)


def test_bad_toml_config_is_a_one_line_error(cli, text_file, tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[model]\nn_layer = \n", encoding="utf-8")
    result = cli("train", "--config", config, "--data", text_file, "--out", tmp_path / "run")
    assert_one_line_error(result, "bad.toml")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_missing_cuda_is_a_one_line_error(cli, text_file, tmp_path, tiny):
    result = cli("train", "--data", text_file, "--out", tmp_path / "run", "--device", "cuda", *tiny)
    assert_one_line_error(result, "cuda")
    result = sample(cli, Path("unused"), "--device", "cuda")
    assert_one_line_error(result, "cuda")


def test_prompt_with_unknown_characters_names_them(cli, trained_run):
    assert "\u20ac" not in trained_run.text and "~" not in trained_run.text
    result = sample(cli, trained_run.run_dir, "--prompt", "ROMEO \u20ac~")
    assert_one_line_error(result, "'\u20ac'", "'~'")
    assert "'R'" not in result.err and "' '" not in result.err  # only the unknown ones


def test_sample_from_a_missing_checkpoint(cli, tmp_path):
    result = sample(cli, tmp_path / "no-such-run")
    assert_one_line_error(result, "no-such-run")


def test_sample_from_a_checkpoint_without_weights(cli, run_copy):
    (run_copy / "model.safetensors").unlink()
    assert_one_line_error(sample(cli, run_copy), "model.safetensors")
    assert_one_line_error(cli("eval", "--checkpoint", run_copy), "model.safetensors")


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--top-p", "1.5"], "top_p"),
        (["--top-p", "0"], "top_p"),
        (["--temperature", "-0.5"], "temperature"),
        (["--top-k", "0"], "top_k"),
        (["--num-samples", "0"], "num-samples"),
        (["--max-new-tokens", "-1"], "max_new_tokens"),
    ],
)
def test_bad_sampling_options_are_one_line_errors(cli, trained_run, flags, fragment):
    result = cli("sample", "--checkpoint", trained_run.run_dir, *flags)
    assert_one_line_error(result, fragment)


def test_training_into_an_existing_run_needs_resume_or_overwrite(cli, run_copy, trained_run, tiny):
    before = {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()}
    mtimes = {p: p.stat().st_mtime_ns for p in before}
    result = cli(
        "train",
        "--data",
        trained_run.text_file,
        "--out",
        run_copy,
        "--max-steps",
        2,
        "--no-progress",
        *tiny,
    )
    assert_one_line_error(result, "--resume", "--overwrite")
    after = {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()}
    assert after == before
    assert {p: p.stat().st_mtime_ns for p in after} == mtimes


def test_resume_with_a_different_model_shape_is_a_one_line_error(cli, run_copy):
    result = cli(
        "train", "--out", run_copy, "--resume", "--max-steps", 30, "--no-progress", "n_embd=64"
    )
    assert_one_line_error(result)


def test_resume_without_a_run_is_a_one_line_error(cli, tmp_path):
    result = cli("train", "--out", tmp_path / "nothing-here", "--resume", "--no-progress")
    assert_one_line_error(result, "nothing-here")


def test_out_that_is_a_file_is_a_one_line_error(cli, text_file, tmp_path, tiny):
    not_a_dir = tmp_path / "taken"
    not_a_dir.write_text("precious\n", encoding="utf-8")
    result = cli(
        "train",
        "--data",
        text_file,
        "--out",
        not_a_dir,
        "--max-steps",
        2,
        "--max-time",
        0,
        "--no-progress",
        *tiny,
    )
    assert_one_line_error(result, "taken")
    assert not_a_dir.read_text(encoding="utf-8") == "precious\n"


def test_eval_on_a_text_too_short_to_score_is_a_one_line_error(cli, trained_run, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("ROMEO\n", encoding="utf-8")  # its val split holds a single token
    result = cli("eval", "--checkpoint", trained_run.run_dir, "--data", short)
    assert_one_line_error(result, "short.txt")


def test_eval_on_text_with_unknown_characters_is_a_one_line_error(cli, trained_run, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text(trained_run.text + "\u00e6\u00f8\u00e5\n", encoding="utf-8")
    result = cli("eval", "--checkpoint", trained_run.run_dir, "--data", other)
    assert_one_line_error(result, "'\u00e6'")


@pytest.mark.parametrize("where", ["before-verb", "after-verb"])
def test_debug_lets_the_exception_propagate(tmp_path, where):
    args = ["train", "--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "r")]
    argv = ["--debug", *args] if where == "before-verb" else [*args[:1], "--debug", *args[1:]]
    with pytest.raises(QkvError, match="missing.txt"):
        qkv.cli.main(argv)


# -- the real command, in a subprocess ------------------------------------------------------


def run_python_m_qkv(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m qkv ARGS` in a real subprocess."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "qkv", *args]
    return subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=cwd, timeout=120, check=False
    )


def test_python_dash_m_qkv_trains_and_samples(text_file, tmp_path, tiny, qkv_cache):
    run_dir = tmp_path / "run"
    train = run_python_m_qkv(
        *["train", "--data", str(text_file), "--out", str(run_dir), "--max-steps", "3"],
        *["--max-time", "0", "--no-progress", *tiny],
        cwd=tmp_path,
    )
    assert train.returncode == 0, train.stderr
    assert "done: step 3" in train.stdout
    assert (run_dir / "model.safetensors").is_file()
    assert not (tmp_path / "out").exists()  # --out was honoured
    assert any((qkv_cache / "prepared").iterdir())  # and QKV_CACHE_DIR: ~/.cache is untouched

    sampled = run_python_m_qkv(
        *["sample", "--checkpoint", str(run_dir), "--prompt", "To be", "--max-new-tokens", "20"],
        *["--seed", "3", "--device", "cpu"],
        cwd=tmp_path,
    )
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.startswith("To be")
    assert len(sampled.stdout.rstrip("\n")) >= len("To be") + 1

    failed = run_python_m_qkv("sample", "--checkpoint", str(tmp_path / "nope"), cwd=tmp_path)
    assert failed.returncode == 2
    assert failed.stderr.startswith("qkv: error: ") and len(failed.stderr.splitlines()) == 1
