"""`qkv bench` on tiny sizes: the table's shape, finite numbers, the CLI, the helpers."""

import math
import os
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
    for option in ("--quick", "--device", "--threads", "--out", 'pip install "qkv[bench]"'):
        assert option in out, option
