"""Preparing a corpus in chunks: the same ids as encoding the whole text, chunk boundaries that
change no BPE piece, shards read back as one sequence, resuming a stopped preparation, and
corrupt shards caught by their sha256."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_text
from qkv.data import encode, shards
from qkv.data.chunks import bpe_boundary, chunks
from qkv.data.dataset import open_prepared, prepare_corpus
from qkv.data.prepare import Request, prepare
from qkv.data.sampler import BatchSampler, eval_windows
from qkv.data.shards import MANIFEST, PROGRESS, TokenShards
from qkv.errors import QkvError
from qkv.tokenizer import BPETokenizer, CharTokenizer

# spaces, tabs, newlines alone and in runs, digits, contractions, punctuation, non-ASCII
_WORDS = ["the", "king", "ROMEO:", "don't", "1234", "--", "café", "日本", "😀", "  ", "\t", "\n"]


def varied_text(n_words: int = 6000, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(
        rng.choice(_WORDS) + rng.choice([" ", "\n", "", "\n\n", " \n"]) for _ in range(n_words)
    )


def old_path(text: str, tokenizer, val_fraction: float = 0.1) -> tuple[list[int], list[int]]:
    """What qkv did before shards: the whole text in memory, each side encoded at once."""
    cut = int(len(text) * (1.0 - val_fraction))
    return tokenizer.encode(text[:cut]), tokenizer.encode(text[cut:])


@pytest.fixture
def varied_file(tmp_path: Path) -> tuple[Path, str]:
    text = varied_text()
    path = tmp_path / "varied.txt"
    path.write_text(text, encoding="utf-8")
    return path, text


# -- the same ids as before ------------------------------------------------------------------


@pytest.mark.parametrize("chunk_chars", [97, 1000, 1 << 20])
def test_one_text_file_gives_the_old_char_streams_exactly(varied_file, tmp_path, chunk_chars):
    path, text = varied_file
    out = prepare(Request(str(path)), tmp_path / "p", shard_tokens=3000, chunk_chars=chunk_chars)
    corpus = open_prepared(out)
    assert corpus.tokenizer.chars == sorted(set(text))  # the streaming pass's vocabulary
    train, val = old_path(text, CharTokenizer.from_text(text))
    assert np.asarray(corpus.train).tolist() == train
    assert np.asarray(corpus.val).tolist() == val
    assert corpus.n_chars == len(text)


@pytest.mark.parametrize("chunk_chars", [61, 997, 1 << 20])
def test_one_text_file_gives_the_old_bpe_and_its_streams_exactly(
    varied_file, tmp_path, chunk_chars
):
    path, text = varied_file
    request = Request(str(path), "bpe", 320)
    out = prepare(request, tmp_path / "p", shard_tokens=2000, chunk_chars=chunk_chars)
    corpus = open_prepared(out)
    before = BPETokenizer.train(text[: int(len(text) * 0.9)], 320)  # learned from one string
    assert corpus.tokenizer.fingerprint() == before.fingerprint()
    train, val = old_path(text, before)
    assert np.asarray(corpus.train).tolist() == train
    assert np.asarray(corpus.val).tolist() == val


def test_bpe_boundaries_change_no_piece_of_the_pre_tokenizer():
    pre = BPETokenizer.train("x", 256)._tokenizer.pre_tokenizer
    for seed in range(5):
        text = varied_text(800, seed)
        whole = [piece for piece, _ in pre.pre_tokenize_str(text)]
        parts = [c.text for c in chunks([text], 0, len(text), bpe_boundary, size=40)]
        assert len(parts) > 20 and "".join(parts) == text
        cut = [piece for part in parts for piece, _ in pre.pre_tokenize_str(part)]
        assert cut == whole


def test_chunks_break_exactly_at_the_cut_and_keep_every_character():
    text = make_text(200)
    pieces = [text[i : i + 333] for i in range(0, len(text), 333)]
    cut = 4321
    got = list(chunks(pieces, 0, cut, bpe_boundary, size=500))
    assert "".join(c.text for c in got) == text
    assert "".join(c.text for c in got if c.split == "train") == text[:cut]
    assert [c.end for c in got] == list(np.cumsum([len(c.text) for c in got]))
    resumed = list(chunks([text[2000:]], 2000, cut, bpe_boundary, size=500))
    assert "".join(c.text for c in resumed if c.split == "val") == text[cut:]


def test_a_character_corpus_encodes_the_same_in_worker_processes(
    varied_file, tmp_path, monkeypatch
):
    path, text = varied_file
    monkeypatch.setattr(encode, "PARALLEL_MIN", 0)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    out = prepare(Request(str(path)), tmp_path / "p", chunk_chars=5000)
    train, val = old_path(text, CharTokenizer.from_text(text))
    corpus = open_prepared(out)
    assert np.asarray(corpus.train).tolist() == train
    assert np.asarray(corpus.val).tolist() == val


def test_the_qkv_command_imports_no_torch_before_its_verb_runs():
    # Every worker re-imports the program's main module; for `qkv` that is the script, whose
    # one import is its entry point. That import alone must leave torch out of a worker.
    (script,) = entry_points(group="console_scripts", name="qkv")
    check = f"import sys, {script.module}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_encode_array_equals_encode_and_names_an_unknown_character():
    text = varied_text(500)
    tokenizer = CharTokenizer.from_text(text)
    assert tokenizer.encode_array(text).tolist() == tokenizer.encode(text)
    assert tokenizer.encode_array("the king\n").tolist() == tokenizer.encode("the king\n")
    for stranger in ("Z", "\u00e8", "\U0001f47b"):  # inside the table, past it, far past it
        with pytest.raises(QkvError, match=f"vocabulary: {stranger!r}"):
            tokenizer.encode_array("the " + stranger)


# -- shards ----------------------------------------------------------------------------------


def test_token_shards_read_as_one_sequence():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 60000, n, dtype=np.uint16) for n in (5, 1, 17, 3, 40)]
    whole = np.concatenate(arrays)
    ids = TokenShards(arrays, np.dtype(np.uint16))
    assert len(ids) == len(whole) and ids.dtype == np.uint16
    for _ in range(300):
        a, b = sorted(rng.integers(0, len(whole) + 1, 2).tolist())
        assert np.array_equal(ids[a:b], whole[a:b])
    assert ids[-1] == whole[-1] and ids[6] == whole[6]
    assert np.array_equal(np.asarray(ids), whole)


def resident_kb(directory: Path) -> int:
    """KB of this process's resident set in mappings of files under `directory`."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            inside = len(fields) >= 6 and fields[5].startswith(str(directory))
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_batches_leave_no_shard_page_in_the_resident_set(varied_file, tmp_path):
    # A mapped page counts in the process's RSS until it is unmapped: without release_pages
    # a long run on a large corpus grows its resident set towards the size of the shards.
    path, _ = varied_file
    out = prepare(Request(str(path)), tmp_path / "p", shard_tokens=4000, chunk_chars=1500)
    corpus = open_prepared(out)
    in_memory = np.array(corpus.train)  # a copy, not a map
    mapped = BatchSampler(corpus.train, block_size=64, batch_size=8, seed=0)
    copied = BatchSampler(in_memory, block_size=64, batch_size=8, seed=0)
    for _ in range(3):
        assert torch.equal(mapped.next_batch()[0], copied.next_batch()[0])  # still readable
        assert resident_kb(out) == 0
    val_copy = np.array(corpus.val)
    pairs = zip(eval_windows(corpus.val, 64, 4), eval_windows(val_copy, 64, 4), strict=True)
    for (inputs, _), (expected, _) in pairs:
        assert torch.equal(inputs, expected) and resident_kb(out) == 0


def test_manifest_records_the_split_and_every_shard(varied_file, tmp_path):
    path, text = varied_file
    out = prepare(Request(str(path)), tmp_path / "p", shard_tokens=4000, chunk_chars=1500)
    manifest = json.loads((out / MANIFEST).read_text())
    cut = int(len(text) * 0.9)
    assert manifest["chars"] == {"total": len(text), "train": [0, cut], "val": [cut, len(text)]}
    for split in ("train", "val"):
        listed = manifest["splits"][split]["shards"]
        assert len(listed) >= 2 or split == "val"
        assert sum(s["tokens"] for s in listed) == manifest["splits"][split]["tokens"]
        for shard in listed:
            assert shards.file_sha256(out / shard["file"]) == shard["sha256"]
    assert manifest["splits"]["train"]["shards"][-1]["end"] == cut
    assert not (out / PROGRESS).exists()


def test_a_corrupt_shard_is_caught_by_its_checksum(varied_file, tmp_path):
    path, _ = varied_file
    out = prepare(Request(str(path)), tmp_path / "p", shard_tokens=4000, chunk_chars=1500)
    shard = out / "train-00001.bin"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0x01  # one bit: same size, other ids
    shard.write_bytes(bytes(data))
    with pytest.raises(QkvError, match="train-00001.bin: checksum mismatch"):
        open_prepared(out)
    shard.write_bytes(bytes(data[:-2]))  # truncated: caught by the size alone
    with pytest.raises(QkvError, match="train-00001.bin: shard .* bytes, expected"):
        open_prepared(out, checksums=False)


# -- stopped and resumed ---------------------------------------------------------------------


REAL_ENCODE = encode.encode_chunks


class Killed(Exception):
    """Stands for SIGKILL in the middle of encoding."""


def stop_after(monkeypatch, n_chunks: int) -> list[int]:
    """Make encoding die after `n_chunks` chunks; -> a list that counts encoded chunks."""
    real, seen = REAL_ENCODE, []

    def dying(*args, **kwargs):
        for part in real(*args, **kwargs):
            if len(seen) == n_chunks:
                raise Killed
            seen.append(part.end)
            yield part

    monkeypatch.setattr(encode, "encode_chunks", dying)
    return seen


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_a_stopped_preparation_leaves_no_shard_that_looks_whole_and_resumes(
    varied_file, tmp_path, monkeypatch, kind
):
    path, text = varied_file
    options = dict(shard_tokens=3000, chunk_chars=1000)
    request = Request(str(path), kind, 300 if kind == "bpe" else None)
    whole = open_prepared(prepare(request, tmp_path / "whole", **options))
    out = tmp_path / "p"
    stop_after(monkeypatch, 9)
    with pytest.raises(Killed):
        prepare(request, out, **options)
    assert not (out / MANIFEST).exists()
    listed = json.loads((out / PROGRESS).read_text())["shards"]
    assert listed, "the test needs shards finished before the kill"
    on_disk = sorted(p.name for p in out.iterdir() if p.name.endswith((".bin", ".tmp")))
    assert on_disk == sorted(s["file"] for s in listed)  # no partial shard under any name
    (out / "train-00099.bin").write_bytes(b"\x00" * 6)  # debris of a kill by SIGKILL
    (out / ".train-00100.bin.tmp").write_bytes(b"\x00" * 6)
    seen = stop_after(monkeypatch, 10**9)
    resumed = open_prepared(prepare(request, out, **options))
    assert seen[0] > listed[-1]["end"] - 1 > 0  # went on after the last whole shard
    assert resumed.tokenizer.fingerprint() == whole.tokenizer.fingerprint()
    assert np.array_equal(np.asarray(resumed.train), np.asarray(whole.train))
    assert np.array_equal(np.asarray(resumed.val), np.asarray(whole.val))
    assert not (out / "train-00099.bin").exists() and not (out / ".train-00100.bin.tmp").exists()


def test_a_changed_source_restarts_the_preparation_cleanly(varied_file, tmp_path, monkeypatch):
    path, text = varied_file
    out = tmp_path / "p"
    stop_after(monkeypatch, 5)
    with pytest.raises(Killed):
        prepare(Request(str(path)), out, shard_tokens=2000, chunk_chars=1000)
    path.write_text(text[::-1], encoding="utf-8")  # other bytes: the journal is not for them
    stop_after(monkeypatch, 10**9)
    corpus = open_prepared(prepare(Request(str(path)), out, shard_tokens=2000))
    train, val = old_path(text[::-1], CharTokenizer.from_text(text))
    assert np.asarray(corpus.train).tolist() == train and np.asarray(corpus.val).tolist() == val


def test_a_given_tokenizer_is_checked_against_a_prepared_directory(varied_file, tmp_path):
    path, text = varied_file
    out = prepare(Request(str(path)), tmp_path / "p")
    other = CharTokenizer.from_text(text + "#")
    with pytest.raises(QkvError, match="another tokenizer"):
        prepare_corpus(str(out), tokenizer=other)
    with pytest.raises(QkvError, match="val split of 0.1"):
        prepare_corpus(str(out), val_fraction=0.2)
    assert prepare_corpus(str(out)).tokenizer.chars == sorted(set(text))
