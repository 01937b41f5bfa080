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


def test_auto_precision_is_bf16_on_cuda_fp16_on_older_cards_bf16_on_amx_cpus(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(qkv.runtime, "cpu_has_amx", lambda: False)
    assert amp_dtype(cpu) is None
    monkeypatch.setattr(qkv.runtime, "cpu_has_amx", lambda: True)
    assert amp_dtype(cpu) is torch.bfloat16
    assert amp_dtype(cpu, "accelerator") is None  # runs saved before the setting: float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert amp_dtype(cuda) is torch.bfloat16 and amp_dtype(cuda, "accelerator") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert amp_dtype(cuda) is torch.float16
    for device in (cpu, cuda):  # named precisions are taken as named
        assert amp_dtype(device, "float32") is None
        assert amp_dtype(device, "bfloat16") is torch.bfloat16
        assert amp_dtype(device, "float16") is torch.float16


def test_amx_is_read_from_the_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n")
    assert qkv.runtime.cpu_has_amx(str(info))
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert not qkv.runtime.cpu_has_amx(str(info))
    assert not qkv.runtime.cpu_has_amx(str(tmp_path / "missing"))


def test_a_run_saved_before_the_precision_setting_resumes_in_float32_on_a_cpu():
    from qkv.config import RunConfig as GPTRunConfig
    from qkv.config import Seq2SeqRunConfig

    for kind in (GPTRunConfig, Seq2SeqRunConfig):
        saved = kind().to_dict()
        del saved["train"]["precision"]
        assert kind.from_saved(saved, "config.json").train.precision == "accelerator"
        assert kind().train.precision == "auto"


def test_bfloat16_training_on_a_cpu_learns_and_keeps_float32_weights(text_file, tmp_path, tiny):
    tiny = [o for o in tiny if not o.startswith("train.precision")]
    trainer = tiny_trainer(text_file, tmp_path / "run", tiny, "train.precision=bfloat16")
    losses = [trainer.train_step().item() for _ in range(30)]
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-5:]) < sum(losses[:5])
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}


def tiny_trainer(text_file, out, tiny, *extra) -> Trainer:
    config = load_config(None, [*tiny, "train.max_time=0", *extra])
    config = config.with_values({"data.source": str(text_file), "train.out_dir": str(out)})
    return Trainer(config, progress=False)


def test_float16_training_uses_the_gradient_scaler(text_file, tmp_path, tiny, monkeypatch):
    # CPU autocast can run float16 too, which exercises the scaler path without a GPU
    tiny = [o for o in tiny if not o.startswith("train.precision")]
    trainer = tiny_trainer(
        text_file, tmp_path / "run", tiny, "train.lr=1e-2", "train.precision=float16"
    )
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


def test_the_first_line_of_a_run_names_its_precision(cli, text_file, tmp_path, tiny):
    for precision, shown in (("bfloat16", "(bfloat16 autocast)"), ("float32", "(float32)")):
        args = ["--out", tmp_path / precision, "--max-steps", 2, *tiny]
        result = cli("train", "--data", text_file, *args, f"train.precision={precision}")
        assert result.code == 0
        assert f"device cpu {shown}" in result.out + result.err
