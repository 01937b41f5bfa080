"""`qkv bench` on tiny sizes: the table's shape, finite numbers, the CLI, the helpers."""

import copy
import math
import os
import re
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

from qkv import bench  # noqa: E402
from qkv.cli import main  # noqa: E402
from qkv.config import GPTConfig  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def report() -> bench.Report:
    return bench.run_bench(bench.quick_plan(), CPU, threads=1)


def test_every_row_has_finite_numbers_for_both_sides(report):
    plan = bench.quick_plan()
    expected = (
        2 * len(plan.train_cases) + 1 + 2 * len(plan.gen_prompts) + 2 * len(plan.attn_lengths)
    )
    assert len(report.rows) == expected
    for row in report.rows:
        assert row.ours is not None and math.isfinite(row.ours) and row.ours >= 0, row
        assert row.peer is not None and math.isfinite(row.peer) and row.peer >= 0, row
    speeds = [r for r in report.rows if r.unit in ("tok/s", "ms")]
    assert all(r.ours > 0 and r.peer > 0 and math.isfinite(r.ratio) for r in speeds)


def test_generation_is_the_same_greedy_text_on_both_sides(report):
    generation = [r for r in report.rows if r.name.startswith("generate")]
    assert {r.note for r in generation} == {"same tokens"}


def test_the_markdown_table_has_one_line_per_row(report):
    text = report.to_markdown()
    lines = text.splitlines()
    assert lines[0].startswith("device cpu") and "1 torch threads" in lines[0]
    assert "matmul peak:" in lines[1]
    table = [line for line in lines if line.startswith("|")]
    assert table[0] == "| benchmark | qkv | peer | ratio | note |"
    assert len(table) == 2 + len(report.rows)
    assert all(line.count("|") == 6 for line in table)
    assert lines[-1].startswith("total elapsed:")


def test_the_thread_count_is_put_back():
    before = torch.get_num_threads()
    bench.run_bench(bench.quick_plan(), CPU, threads=1)
    assert torch.get_num_threads() == before


def test_cli_prints_and_writes_the_table(cli, tmp_path):
    out = tmp_path / "bench.md"
    result = cli("bench", "--quick", "--threads", "1", "--out", out)
    assert result.code == 0
    assert result.out == out.read_text(encoding="utf-8")
    assert "| train tiny" in result.out
    assert "bench: attention" in result.err


def test_without_transformers_bench_says_how_to_install(cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    result = cli("bench", "--quick")
    assert result.code == 2
    assert result.out == ""
    assert result.err.strip().splitlines() == [
        'qkv: error: Hugging Face transformers is not installed: pip install "qkv[bench]"'
    ]


def test_bad_thread_count_is_a_user_error(cli):
    result = cli("bench", "--quick", "--threads", "0")
    assert result.code == 2
    assert "--threads" in result.err


def test_explicit_attention_is_skipped_when_it_would_not_fit(monkeypatch):
    monkeypatch.setattr(bench.machine, "device_memory", lambda device: 1024)
    rows = bench.bench_attention(bench.quick_plan(), CPU)
    assert all(row.peer is None and row.ratio is None for row in rows)
    assert "explicit skipped" in rows[0].note
    assert "| n/a |" in bench.Report(rows=rows).to_markdown()


def test_flops_per_token_is_6n_plus_attention():
    config = GPTConfig(vocab_size=65, block_size=128, n_layer=4, n_embd=128, n_head=4)
    assert bench.flops_per_token(config, 1000) == 6000 + 12 * 4 * 128 * 128


def test_sides_alternate_who_goes_first():
    calls = []
    results = bench._alternate({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert {name: len(values) for name, values in results.items()} == {"a": 3, "b": 3}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_peak_memory_sees_a_large_allocation():
    memory = bench.PeakMemory(CPU)
    memory.start()
    block = torch.ones(16 * 2**20)  # 64 MiB, written so that it is resident
    del block
    assert memory.peak() >= 60 * 2**20


def test_bench_help_lists_its_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    options = ("--quick", "--decode", "--device", "--threads", "--out")
    for option in (*options, 'pip install "qkv[bench]"'):
        assert option in out, option


# -- qkv bench --decode ------------------------------------------------------------------


@pytest.fixture(scope="module")
def decode_report() -> bench.Report:
    return bench.run_bench(bench.quick_plan(), CPU, threads=1, decode=True)


def test_decode_rows_cover_every_mode_and_batch(decode_report):
    plan = bench.quick_plan()
    names = [
        f"decode {case.label} B{batch}, qkv {mode} vs HF fp32"
        for case in plan.decode_cases
        for batch in plan.decode_batches
        for mode in plan.decode_modes
    ]
    assert [row.name for row in decode_report.rows] == names
    for row in decode_report.rows:
        assert row.unit == "tok/s" and row.ours > 0 and row.peer > 0, row
        assert re.search(r"\d+% of its [\d,]+ tok/s limit \(HF \d+%\)", row.note), row.note
        assert re.search(r": (memory|overhead|kernel)-bound", row.note), row.note
    notes = " ".join(row.note for row in decode_report.rows)
    agreements = [float(m) for m in re.findall(r"greedy agreement ([0-9.]+)", notes)]
    quantized = [n for n in names if "qkv fp32" not in n]
    assert len(agreements) == len(quantized) and all(0 <= a <= 1 for a in agreements)
    assert "streaming bandwidth:" in decode_report.header[1]


def test_the_memory_limit_is_batch_times_bandwidth_over_bytes():
    floors = bench.decode_rows.Floors(bandwidth=10e9, overhead=1e-3)
    # 100 MB a step at 10 GB/s: 100 tok/s at batch 1, 800 at batch 8; 40 tok/s is 40%
    note = floors.note(nbytes=100_000_000, batch=1, ours=40.0, fp32_bytes=400_000_000, hf=5.0)
    assert note.startswith("100.0 MB/step; 40% of its 100 tok/s limit (HF 20%)")
    assert "step 25.0 ms, floors: weights 10.0 ms, overhead 1.0 ms: kernel-bound" in note
    assert floors.note(100_000_000, 1, 80.0, 1, 1.0).endswith("memory-bound")  # 12.5 ms a step
    batched = floors.note(nbytes=100_000_000, batch=8, ours=400.0, fp32_bytes=1, hf=1.0)
    assert "50% of its 800 tok/s limit" in batched


def test_greedy_agreement_is_one_for_the_same_model_and_less_for_another():
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=32, block_size=32, n_layer=1, n_embd=32, n_head=2)
    same = bench.model_rows.GPT(config).eval()
    other = copy.deepcopy(same)
    other.lm_head.weight = torch.nn.Parameter(-same.lm_head.weight.detach())  # argmax -> argmin
    prompt = torch.zeros((1, 4), dtype=torch.long)
    fractions = bench.agreement({"fp32": same, "copy": same, "other": other}, prompt, 16)
    assert fractions["fp32"] == fractions["copy"] == 1.0
    assert fractions["other"] < 0.5


def test_streaming_bandwidth_is_a_rate():
    assert 1e8 < bench.stream_bandwidth(8, CPU, repeats=2) < 1e13


def test_cli_decode_prints_the_decode_table(cli):
    result = cli("bench", "--quick", "--decode", "--threads", "1")
    assert result.code == 0, result.err
    assert "| decode " in result.out and "| train" not in result.out
    assert "bench: decoding" in result.err
