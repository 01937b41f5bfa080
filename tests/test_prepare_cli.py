"""`qkv prepare` and `qkv train --data` on JSONL, Parquet, gzip, directories and prepared
directories: they train, resume at the same data position, and every bad input is one line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import make_text
from qkv.data.dataset import read_text_source
from qkv.data.prepare import Request, prepare
from qkv.data.sources import RECORD_END
from test_cli import assert_one_line_error
from test_robustness import metrics

RECORDS = [make_text(12, seed=s) for s in range(30)]


def write_jsonl(path: Path, records: list[str], field: str = "text") -> Path:
    lines = "".join(json.dumps({field: r, "id": i}) + "\n" for i, r in enumerate(records))
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(lines.encode()))
    else:
        path.write_text(lines, encoding="utf-8")
    return path


def write_parquet(path: Path, records: list[str], field: str = "text") -> Path:
    table = pa.table({field: records, "n": list(range(len(records)))})
    pq.write_table(table, path, row_group_size=7)  # several row groups
    return path


def train(cli, data, out, tiny, *extra):
    flags = [e for e in extra if "=" not in str(e)]  # key=value overrides go last
    overrides = [e for e in extra if "=" in str(e)]
    return cli("train", "--data", data, "--out", out, "--no-progress", *flags, *tiny, *overrides)


def test_a_directory_of_every_format_is_read_in_order_and_recursively(tmp_path):
    root = tmp_path / "corpus"
    (root / "b" / "deep").mkdir(parents=True)
    (root / "a.txt").write_text("first\n", encoding="utf-8")
    write_jsonl(root / "b" / "c.jsonl.gz", RECORDS[:3])
    write_parquet(root / "b" / "deep" / "d.parquet", RECORDS[3:5])
    (root / "e.txt.gz").write_bytes(gzip.compress(b"last\n"))
    (root / "notes.md").write_text("not a source\n", encoding="utf-8")
    records = lambda rs: "".join(r + RECORD_END for r in rs)  # noqa: E731
    expected = "first\n" + records(RECORDS[:3]) + records(RECORDS[3:5]) + "last\n"
    assert read_text_source(str(root)) == expected


@pytest.mark.parametrize("name", ["docs.jsonl", "docs.jsonl.gz", "docs.parquet"])
def test_jsonl_and_parquet_train_sample_and_evaluate(cli, tmp_path, tiny, name):
    writer = write_parquet if name.endswith(".parquet") else write_jsonl
    data = writer(tmp_path / name, RECORDS, field="body")
    out = tmp_path / "run"
    result = train(cli, data, out, tiny, "--max-steps", 3, "--text-field", "body")
    assert result.code == 0, result.err
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["text_field"] == "body"
    assert cli("eval", "--checkpoint", out, "--device", "cpu").code == 0


def test_qkv_prepare_then_train_on_the_directory_then_resume(cli, tmp_path, tiny):
    data = write_jsonl(tmp_path / "docs.jsonl", RECORDS)
    prepared = tmp_path / "prepared"
    result = cli("prepare", "--data", data, "--out", prepared, "--tokenizer", "bpe",
                 "--vocab-size", 300, "--no-progress")  # fmt: skip
    assert result.code == 0, result.err
    assert f"qkv train --data {prepared}" in result.out
    assert (prepared / "manifest.json").is_file()
    out = tmp_path / "run"
    assert train(cli, prepared, out, tiny, "--max-steps", 3).code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["tokenizer"] == "bpe" and config["data"]["source"] == str(prepared)
    again = cli("prepare", "--data", data, "--out", prepared, "--tokenizer", "bpe",
                "--vocab-size", 300, "--no-progress")  # fmt: skip
    assert again.code == 0 and again.out == result.out  # already there: nothing redone
    resumed = cli("train", "--out", out, "--resume", "--max-steps", 5, "--no-progress")
    assert resumed.code == 0, resumed.err
    assert cli("eval", "--checkpoint", out, "--device", "cpu").code == 0


def test_a_resumed_run_on_sharded_data_draws_the_batches_it_would_have(cli, tmp_path, tiny):
    data = tmp_path / "play.txt"
    data.write_text(make_text(400), encoding="utf-8")
    prepared = prepare(Request(str(data)), tmp_path / "p", shard_tokens=1500, chunk_chars=700)
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert len(manifest["splits"]["train"]["shards"]) > 5  # windows cross shard boundaries
    common = ["--max-time", "0", "--seed", "3", "train.eval_interval=100", "train.decay_steps=8"]
    assert train(cli, prepared, tmp_path / "one", tiny, "--max-steps", 8, *common).code == 0
    assert train(cli, prepared, tmp_path / "two", tiny, "--max-steps", 4, *common).code == 0
    resumed = cli("train", "--out", tmp_path / "two", "--resume", "--max-steps", 8,
                  "--no-progress")  # fmt: skip
    assert resumed.code == 0, resumed.err

    def losses(run):
        return [(r["step"], r["train_loss"]) for r in metrics(run) if "train_loss" in r]

    assert losses(tmp_path / "two") == losses(tmp_path / "one")


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (b'{"text": "ok"}\n{"text": \n', ["docs.jsonl:2", "not valid JSON"]),
        (b'{"text": "ok"}\n{"body": "x"}\n', ["docs.jsonl:2", "no 'text' field", "--text-field"]),
        (b'{"text": 3}\n', ["docs.jsonl:1", "'text' field is a int"]),
        (b'["text"]\n', ["docs.jsonl:1", "no 'text' field"]),
    ],
)
def test_bad_jsonl_is_one_line(cli, tmp_path, tiny, content, fragments):
    (tmp_path / "docs.jsonl").write_bytes(content)
    result = cli("prepare", "--data", tmp_path / "docs.jsonl", "--no-progress")
    assert_one_line_error(result, *fragments)
    assert_one_line_error(train(cli, tmp_path / "docs.jsonl", tmp_path / "run", tiny), *fragments)


def test_other_bad_sources_are_one_line(cli, tmp_path, tiny):
    write_parquet(tmp_path / "t.parquet", RECORDS)
    result = cli("prepare", "--data", tmp_path / "t.parquet", "--text-field", "body")
    assert_one_line_error(result, "no column 'body'", "text, n")
    (tmp_path / "bad.txt.gz").write_bytes(gzip.compress(b"some text\n" * 50)[:-9])
    assert_one_line_error(cli("prepare", "--data", tmp_path / "bad.txt.gz"), "gzip")
    (tmp_path / "fake.parquet").write_bytes(b"not parquet at all")
    assert_one_line_error(cli("prepare", "--data", tmp_path / "fake.parquet"), "Parquet")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli("prepare", "--data", tmp_path / "empty"), "holds no .txt")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me", encoding="utf-8")
    result = cli("prepare", "--data", tmp_path / "t.parquet", "--out", mine)
    assert_one_line_error(result, "not empty and holds no prepared corpus")
    assert (mine / "thesis.tex").read_text() == "keep me"


def test_a_prepared_directory_refuses_another_tokenizer_and_a_corrupt_shard(cli, tmp_path, tiny):
    data = tmp_path / "play.txt"
    data.write_text(make_text(300), encoding="utf-8")
    prepared = tmp_path / "p"
    assert cli("prepare", "--data", data, "--out", prepared, "--no-progress").code == 0
    result = train(cli, prepared, tmp_path / "run", tiny, "--tokenizer", "bpe")
    assert_one_line_error(result, "prepared with a char tokenizer", "drop --tokenizer")
    shard = prepared / "train-00000.bin"
    shard.write_bytes(shard.read_bytes()[::-1])
    result = train(cli, prepared, tmp_path / "run", tiny, "--max-steps", 1, "--overwrite")
    assert_one_line_error(result, "train-00000.bin: checksum mismatch", "prepare it again")


def test_an_unknown_character_in_new_text_is_still_one_line(cli, trained_run, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text(trained_run.text + "\u00a7 \u2603\n", encoding="utf-8")
    result = cli("eval", "--checkpoint", trained_run.run_dir, "--data", other, "--device", "cpu")
    assert_one_line_error(result, "not in the model's vocabulary", "'\u00a7'", "'\u2603'")
