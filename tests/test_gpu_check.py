"""The GPU check script runs end to end on the CPU with a tiny model (its smoke test)."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

MODES = ("fp32", "bf16", "int8")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def load_script(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_gpu_check_runs_tiny_on_cpu(tmp_path, monkeypatch):
    out = tmp_path / "gpu.md"
    args = ["--tiny", "--device", "cpu", "--no-compile", "--steps", "1", "--warmup", "1"]
    args += ["--decode-tokens", "2"]
    text = load_script(monkeypatch).main([*args, "--batch-size", "2", "--out", str(out)])
    assert out.read_text().strip() == text.strip()
    worst = float(re.search(r"max \|difference\| = ([0-9.e+-]+)", text).group(1))
    assert worst < 0.05  # bfloat16 keeps ~3 significant digits
    training, decoding = text.split("\ndecoding, greedy")
    rows = [line for line in training.splitlines() if line.startswith("| ") and "MFU" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["qkv GPT", "HF GPT2LMHeadModel"]
    for row in rows:
        tokens_per_s, mfu = row.split("|")[2:4]
        assert float(tokens_per_s.replace(",", "")) > 0
        assert float(mfu.strip().rstrip("%")) > 0
    rows = [line for line in decoding.splitlines() if line.startswith("| ") and "%" in line]
    rows = [line for line in rows if "tokens/s" not in line]  # the header
    names = [n for b in (1, 8) for n in (f"HF fp32 B{b}", *(f"qkv {m} B{b}" for m in MODES))]
    assert [row.split("|")[1].strip() for row in rows] == names
    for row in rows:  # every mode runs on a CPU
        tokens_per_s, share = row.split("|")[2:4]
        assert float(tokens_per_s.replace(",", "")) > 0 and share.strip().endswith("%")
