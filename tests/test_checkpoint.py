"""Checkpoint directories: round trips, the saved config, and refusing unsafe or broken files."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_model

import qkv
from qkv.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    TRAINER_FILE,
    load_checkpoint,
    load_trainer_state,
    save_checkpoint,
)
from qkv.config import GPTConfig, RunConfig, config_from_json
from qkv.errors import QkvError
from qkv.models.gpt import GPT
from qkv.tokenizer import CharTokenizer

TEXT = "To be, or not to be: that is the question.\n"
REFUSED_PICKLE = (
    "trainer.pt cannot be loaded safely: it holds objects other than tensors and plain values"
)


def tiny_run(n_embd: int = 32, **model) -> tuple[GPT, RunConfig, CharTokenizer]:
    tokenizer = CharTokenizer.from_text(TEXT)
    config = RunConfig(
        model=GPTConfig(
            vocab_size=tokenizer.vocab_size,
            block_size=16,
            n_layer=1,
            n_head=2,
            n_embd=n_embd,
            **model,
        )
    )
    torch.manual_seed(0)
    return GPT(config.model), config, tokenizer


def test_round_trip_gives_identical_logits(tmp_path):
    model, config, tokenizer = tiny_run(positional="sinusoidal", bias=False)
    save_checkpoint(tmp_path / "ckpt", model, config, tokenizer)
    loaded, loaded_tokenizer = qkv.load(tmp_path / "ckpt")
    assert not loaded.training  # ready to sample
    assert loaded_tokenizer.chars == tokenizer.chars
    assert loaded.config == config.model
    idx = torch.tensor([tokenizer.encode(TEXT[:16]), tokenizer.encode(TEXT[16:32])])
    model.eval()
    assert torch.equal(loaded(idx)[0], model(idx)[0])
    # the tied lm_head stays tied after loading
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()


def test_saving_does_not_need_the_trainer_state(tmp_path):
    model, config, tokenizer = tiny_run()
    save_checkpoint(tmp_path, model, config, tokenizer)
    assert {p.name for p in tmp_path.iterdir()} == {MODEL_FILE, CONFIG_FILE, TOKENIZER_FILE}
    with pytest.raises(QkvError, match="cannot be resumed"):
        load_trainer_state(tmp_path)


def test_config_json_holds_the_effective_config(trained_run):
    tree = json.loads((trained_run.run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    assert set(tree) == {"kind", "model", "data", "train"} and tree["kind"] == "gpt"
    _, tokenizer, _ = load_checkpoint(trained_run.run_dir)
    assert tree["model"]["vocab_size"] == tokenizer.vocab_size == len(set(trained_run.text))
    # the overrides and flags it was trained with, and every default, are all there
    assert tree["model"]["n_embd"] == 32 and tree["model"]["block_size"] == 16
    assert tree["train"]["max_steps"] == trained_run.steps
    assert tree["train"]["lr"] == 1e-2 and tree["train"]["seed"] == 1
    assert tree["data"]["source"] == str(trained_run.text_file)
    assert set(tree["train"]) == set(RunConfig().to_dict()["train"])
    config = config_from_json(trained_run.run_dir / CONFIG_FILE)
    assert config.to_dict() == tree
    assert RunConfig.from_dict(tree) == config


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


def test_trainer_state_of_a_real_run_loads_safely(trained_run):
    state = load_trainer_state(trained_run.run_dir)
    assert state["step"] == trained_run.steps
    assert {"optimizer", "data", "torch_rng"} <= set(state)
    assert set(state["data"]) == {"sampler"}


class _RunsCode:
    """An object whose unpickling runs code: it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


def test_trainer_pt_that_would_run_code_is_refused(run_copy, tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"step": 1, "payload": _RunsCode(marker)}, run_copy / TRAINER_FILE)
    with pytest.raises(QkvError, match=REFUSED_PICKLE) as info:
        load_trainer_state(run_copy)
    # one plain line: none of torch's advice to load the file unsafely, none of its escapes
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)
    assert "weights_only" not in str(info.value)
    assert not marker.exists()
    # the file really is malicious: an unsafe load would have run its code
    torch.load(run_copy / TRAINER_FILE, weights_only=False)
    assert marker.read_text() == "code ran"


def test_resume_refuses_a_malicious_trainer_pt(cli, run_copy, tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"step": 1, "payload": _RunsCode(marker)}, run_copy / TRAINER_FILE)
    result = cli("train", "--out", run_copy, "--resume", "--max-steps", 40, "--no-progress")
    assert result.code == 2
    assert result.err.startswith(f"qkv: error: {run_copy}/{REFUSED_PICKLE}")
    assert len(result.err.splitlines()) == 1
    assert not marker.exists()


def test_weights_that_do_not_match_the_config_are_an_error(tmp_path):
    small, _, _ = tiny_run(n_embd=32)
    _, config, tokenizer = tiny_run(n_embd=64)
    save_checkpoint(tmp_path, small, config, tokenizer)  # config.json says 64, weights are 32
    # the message names the first tensor that does not fit, with both shapes
    expected = (
        "model.safetensors does not match its config.json: size mismatch for "
        "transformer.h.0.ln_1.weight: copying a param with shape torch.Size([32]) from "
        "checkpoint, the shape in current model is torch.Size([64])"
    )
    with pytest.raises(QkvError, match=re.escape(expected)):
        qkv.load(tmp_path)


def test_weights_missing_a_tensor_are_an_error(tmp_path):
    model, config, tokenizer = tiny_run()
    save_checkpoint(tmp_path, model, config, tokenizer)
    deeper = GPT(GPTConfig(**{**config.model.__dict__, "n_layer": 2}))
    save_model(deeper, str(tmp_path / MODEL_FILE))  # one block too many
    expected = 'does not match its config.json: Unexpected key(s) in state_dict: "transformer.h.1.'
    with pytest.raises(QkvError, match=re.escape(expected)):
        qkv.load(tmp_path)


def test_corrupt_weights_file_is_an_error(tmp_path):
    model, config, tokenizer = tiny_run()
    save_checkpoint(tmp_path, model, config, tokenizer)
    data = (tmp_path / MODEL_FILE).read_bytes()
    (tmp_path / MODEL_FILE).write_bytes(data[: len(data) // 2])  # truncated
    # a broken file, not a config mismatch: nothing to fix in config.json
    expected = f"{tmp_path / MODEL_FILE} is not a readable safetensors file: Error while "
    with pytest.raises(QkvError, match=re.escape(expected)):
        qkv.load(tmp_path)


def test_tokenizer_that_does_not_match_the_config_is_an_error(tmp_path):
    model, config, _ = tiny_run()
    save_checkpoint(tmp_path, model, config, CharTokenizer.from_text("abc"))
    expected = f"config says vocab_size={config.model.vocab_size} but the tokenizer has 3 entries"
    with pytest.raises(QkvError, match=expected):
        qkv.load(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "config.json is not a readable JSON config: Expecting property name"),
        ("[1, 2, 3]", "config.json must hold a JSON object"),
        ('{"model": {"n_layers": 2}}', r"unknown key model.n_layers \(did you mean n_layer\?\)"),
        ('{"model": {"n_layer": "two"}}', "model.n_layer must be int, got str 'two'"),
        ('{"optimiser": {}}', r"config.json: unknown table \[optimiser\]"),
        (b"\xff\xfe{}", "is not a readable JSON config: 'utf-8' codec can't decode byte 0xff"),
    ],
)
def test_malformed_config_json_is_an_error(tmp_path, content, message):
    model, config, tokenizer = tiny_run()
    save_checkpoint(tmp_path, model, config, tokenizer)
    path = tmp_path / CONFIG_FILE
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(QkvError, match=message) as info:
        load_checkpoint(tmp_path)
    assert str(info.value).startswith(str(tmp_path / CONFIG_FILE))
    assert "\n" not in str(info.value)


def test_missing_pieces_are_errors(tmp_path):
    with pytest.raises(QkvError, match=f"checkpoint {tmp_path / 'nowhere'} does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    model, config, tokenizer = tiny_run()
    for name in (CONFIG_FILE, TOKENIZER_FILE, MODEL_FILE):
        directory = tmp_path / name.replace(".", "-")
        save_checkpoint(directory, model, config, tokenizer)
        (directory / name).unlink()
        expected = f"{directory / name} is missing: is {directory} a qkv checkpoint?"
        with pytest.raises(QkvError, match=re.escape(expected)):
            load_checkpoint(directory)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_checkpoint_files_get_ordinary_permissions(tmp_path):
    """Atomic writes go through a 0600 temporary file; the result must obey the umask."""
    model, config, tokenizer = tiny_run()
    save_checkpoint(tmp_path, model, config, tokenizer, {"step": 0})
    umask = os.umask(0o022)
    os.umask(umask)
    expected = 0o666 & ~umask
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {name: expected for name in modes}, {k: oct(v) for k, v in modes.items()}
