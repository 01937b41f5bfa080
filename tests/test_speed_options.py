"""The trainer's speed habits: mixed precision choice, the fp16 gradient scaler, torch.compile."""

import shutil

import pytest
import torch
from safetensors import safe_open

import qkv.runtime
from qkv.checkpoint import MODEL_FILE, load_trainer_state
from qkv.config import load_config
from qkv.runtime import amp_dtype
from qkv.training.loop import Trainer


def test_mixed_precision_is_bf16_on_cuda_fp16_on_older_cards_and_off_on_cpu(monkeypatch):
    assert amp_dtype(torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert amp_dtype(torch.device("cuda")) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert amp_dtype(torch.device("cuda")) is torch.float16


def tiny_trainer(text_file, out, tiny, *extra) -> Trainer:
    config = load_config(None, [*tiny, "train.max_time=0", *extra])
    config = config.with_values({"data.source": str(text_file), "train.out_dir": str(out)})
    return Trainer(config, progress=False)


def test_float16_training_uses_the_gradient_scaler(text_file, tmp_path, tiny, monkeypatch):
    # CPU autocast can run float16 too, which exercises the scaler path without a GPU
    monkeypatch.setattr(qkv.runtime, "amp_dtype", lambda device: torch.float16)
    trainer = tiny_trainer(text_file, tmp_path / "run", tiny, "train.lr=1e-2")
    assert trainer.scaler.is_enabled()
    losses = [trainer.train_step().item() for _ in range(30)]
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-5:]) < sum(losses[:5])
    trainer.save()
    assert load_trainer_state(tmp_path / "run")["scaler"]["scale"] > 0


@pytest.mark.skipif(
    shutil.which("cc") is None, reason="torch.compile on the CPU needs a C compiler"
)
def test_compiled_training_matches_eager_and_saves_plain_names(cli, text_file, tmp_path, tiny):
    runs = {}
    for name, flags in (("eager", []), ("compiled", ["--compile"])):
        out = tmp_path / name
        args = ["train", "--data", text_file, "--out", out, "--max-steps", 3, "--no-progress"]
        # AdamW: Muon's orthogonalisation magnifies the last-bit differences between compiled
        # and eager kernels in a gradient's smallest directions, which is not what this tests
        assert cli(*args, *flags, *tiny, "train.max_time=0", "train.optimizer=adamw").code == 0
        runs[name] = out
    with safe_open(runs["compiled"] / MODEL_FILE, "pt") as weights:
        names = list(weights.keys())
    assert names and not any("_orig_mod" in key for key in names)
    assert not any("_orig_mod" in key for key in load_trainer_state(runs["compiled"])["model"])
    eager, compiled = (load_trainer_state(runs[n])["model"] for n in ("eager", "compiled"))
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-4, atol=1e-5)
