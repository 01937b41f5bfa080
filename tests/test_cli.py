"""`qkv <verb>` end to end: sampling's edge cases, the help text, one-line errors that name
their message, and `python -m qkv` in a subprocess.

What `qkv sample` prints is checked against GPT.generate in test_generate.py, what `qkv eval`
prints against the library's evaluate in test_scores.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import qkv
from qkv.errors import QkvError


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


# -- sampling's edge cases ------------------------------------------------------------------


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
    missing = tmp_path / "does-not-exist.txt"
    return {
        "missing": (missing, f"{missing}: no such file or directory, and not a named corpus"),
        "empty": (empty, f"{empty}: the text is empty"),
        "binary": (binary, f"{binary}: looks like a binary file (it contains NUL bytes), not text"),
        "invalid-utf8": (latin1, f"{latin1}: not valid UTF-8 (byte 3); convert it to UTF-8 first"),
        "no-txt-dir": (no_txt, f"{no_txt}: the directory holds no .txt, .jsonl or .parquet files"),
        "too-short": (
            short,
            f"{short}: the val split has 13 tokens, fewer than the context length + 1 = 17; "
            "use more text or a smaller model.block_size",
        ),
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
        (
            ["model.n_layr=2"],
            ["'model.n_layr=2': unknown key model.n_layr (did you mean n_layer?)"],
        ),
        (["n_layr=2"], ["override 'n_layr=2': unknown key n_layr (did you mean n_layer?)"]),
        (["modle.n_layer=2"], ["unknown table 'modle', use one of ['model', 'data', 'train']"]),
        (["model.n_embd=30", "model.n_head=4"], ["model.n_embd=30 must be divisible by"]),
        (["model.n_layer=abc"], ["override: model.n_layer must be int, got str 'abc'"]),
        (["model.n_layer=true"], ["override: model.n_layer must be int, got bool True"]),
        (["model.dropout=1.5"], ["dropout must be in [0.0, 1.0), got 1.5"]),
        (["train.lr=-1"], ["lr must be positive, got -1.0"]),
        (["n_layer"], ["override 'n_layer' must look like key=value, e.g. model.n_layer=6"]),
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
        (["--max-steps", "0"], "max_steps must be positive, got 0"),
        (["--max-time", "-1"], "train.max_time must not be negative, got -1.0"),
        (["--config", "missing.toml"], "config file missing.toml does not exist"),
    ],
)
def test_bad_train_flags_are_one_line_errors(cli, text_file, tmp_path, tiny, flags, fragment):
    result = cli("train", "--data", text_file, "--out", tmp_path / "run", *flags, *tiny)
    assert_one_line_error(result, fragment)


def test_bad_toml_config_is_a_one_line_error(cli, text_file, tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[model]\nn_layer = \n", encoding="utf-8")
    result = cli("train", "--config", config, "--data", text_file, "--out", tmp_path / "run")
    assert_one_line_error(result, f"config file {config} is not valid TOML: ", "line 2")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_missing_cuda_is_a_one_line_error(cli, text_file, tmp_path, tiny):
    message = "device 'cuda' is not available on this machine; use --device cpu"
    result = cli("train", "--data", text_file, "--out", tmp_path / "run", "--device", "cuda", *tiny)
    assert_one_line_error(result, message)
    result = sample(cli, Path("unused"), "--device", "cuda")
    assert_one_line_error(result, message)


def test_prompt_with_unknown_characters_names_them(cli, trained_run):
    assert "\u20ac" not in trained_run.text and "~" not in trained_run.text
    result = sample(cli, trained_run.run_dir, "--prompt", "ROMEO \u20ac~")
    # only the unknown ones, each once, in a fixed order
    assert_one_line_error(result, "characters not in the model's vocabulary: '~', '\u20ac'")
    assert result.err.endswith("'\u20ac'\n")


def test_sample_from_a_missing_checkpoint(cli, tmp_path):
    result = sample(cli, tmp_path / "no-such-run")
    assert_one_line_error(
        result, f"checkpoint {tmp_path / 'no-such-run'} does not exist or is not a directory"
    )


def test_sample_from_a_checkpoint_without_weights(cli, run_copy):
    (run_copy / "model.safetensors").unlink()
    message = f"{run_copy / 'model.safetensors'} is missing: is {run_copy} a qkv checkpoint?"
    assert_one_line_error(sample(cli, run_copy), message)
    assert_one_line_error(cli("eval", "--checkpoint", run_copy), message)


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--top-p", "1.5"], "top_p must be in (0, 1], got 1.5"),
        (["--top-p", "0"], "top_p must be in (0, 1], got 0.0"),
        (["--temperature", "-0.5"], "temperature must be >= 0 (0 is greedy), got -0.5"),
        (["--top-k", "0"], "top_k must be >= 1, got 0"),
        (["--num-samples", "0"], "--num-samples must be >= 1, got 0"),
        (["--max-new-tokens", "-1"], "max_new_tokens must be >= 0, got -1"),
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
    assert_one_line_error(
        result,
        f"{run_copy} already holds a run: pass --resume to continue it, --overwrite to start "
        "afresh, or --out DIR for a new run",
    )
    after = {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()}
    assert after == before
    assert {p: p.stat().st_mtime_ns for p in after} == mtimes


def test_resume_with_a_different_model_shape_is_a_one_line_error(cli, run_copy):
    result = cli(
        "train", "--out", run_copy, "--resume", "--max-steps", 30, "--no-progress", "n_embd=64"
    )
    # the setting that differs, with the value asked for and the run's own
    assert_one_line_error(
        result,
        f"the model config differs from the run's in {run_copy}: model.n_embd=64 (the run's: 32)",
    )
    assert result.err.count("model.") == 1  # only the setting that differs


def test_resume_without_a_run_is_a_one_line_error(cli, tmp_path):
    run = tmp_path / "nothing-here"
    result = cli("train", "--out", run, "--resume", "--no-progress")
    assert_one_line_error(result, f"{run / 'config.json'} is missing: is {run} a qkv checkpoint?")


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
    assert_one_line_error(result, f"cannot use {not_a_dir} as the run directory: File exists")
    assert not_a_dir.read_text(encoding="utf-8") == "precious\n"


def test_eval_on_a_text_too_short_to_score_is_a_one_line_error(cli, trained_run, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("ROMEO\n", encoding="utf-8")  # its val split holds a single token
    result = cli("eval", "--checkpoint", trained_run.run_dir, "--data", short)
    assert_one_line_error(result, f"{short}: the val split has 1 token(s), nothing to score")


def test_eval_on_text_with_unknown_characters_is_a_one_line_error(cli, trained_run, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text(trained_run.text + "\u00e6\u00f8\u00e5\n", encoding="utf-8")
    result = cli("eval", "--checkpoint", trained_run.run_dir, "--data", other)
    message = "characters not in the model's vocabulary: '\u00e5', '\u00e6', '\u00f8'"
    assert_one_line_error(result, message)


@pytest.mark.parametrize("where", ["before-verb", "after-verb"])
def test_debug_lets_the_exception_propagate(tmp_path, where):
    args = ["train", "--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "r")]
    argv = ["--debug", *args] if where == "before-verb" else [*args[:1], "--debug", *args[1:]]
    expected = f"{tmp_path / 'missing.txt'}: no such file or directory, and not a named corpus"
    with pytest.raises(QkvError, match=expected):
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
    message = f"checkpoint {tmp_path / 'nope'} does not exist or is not a directory"
    assert failed.stderr == f"qkv: error: {message}\n"
