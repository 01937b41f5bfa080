"""Text sources, the token cache, the train/val split, and the batch samplers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from qkv.data import BatchSampler, eval_windows, prepare_corpus, read_text_source
from qkv.errors import QkvError
from qkv.tokenizer import CharTokenizer

# -- the split ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [37, 100, 1001, 4097])
def test_val_split_is_the_last_tenth(tmp_path, text, n):
    sample = (text * 2)[:n]
    path = tmp_path / "t.txt"
    path.write_text(sample, encoding="utf-8")
    corpus = prepare_corpus(str(path))
    cut = int(0.9 * n)
    assert len(corpus.train) == cut and len(corpus.val) == n - cut
    tokenizer = corpus.tokenizer
    assert tokenizer.decode(corpus.train.tolist()) == sample[:cut]
    assert tokenizer.decode(corpus.val.tolist()) == sample[cut:]
    assert corpus.n_chars == n


def test_val_fraction_moves_the_cut(text_file, text):
    corpus = prepare_corpus(str(text_file), val_fraction=0.25)
    cut = int(0.75 * len(text))
    assert corpus.tokenizer.decode(corpus.val.tolist()) == text[cut:]


def test_tokens_are_uint16_and_round_trip(text_file, text):
    corpus = prepare_corpus(str(text_file))
    assert corpus.train.dtype == np.uint16 and corpus.val.dtype == np.uint16
    assert corpus.tokenizer.chars == sorted(set(text))
    ids = np.concatenate([corpus.train, corpus.val])
    assert corpus.tokenizer.decode(ids.tolist()) == text


def test_a_given_tokenizer_is_used_and_unknown_characters_are_errors(text_file):
    tokenizer = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz ")
    with pytest.raises(QkvError, match="vocabulary"):
        prepare_corpus(str(text_file), tokenizer=tokenizer)
    wide = CharTokenizer.from_text(text_file.read_text(encoding="utf-8") + "\u00e9\u00e8")
    corpus = prepare_corpus(str(text_file), tokenizer=wide)
    assert corpus.tokenizer is wide
    assert int(max(corpus.train.max(), corpus.val.max())) < wide.vocab_size


# -- the token cache -------------------------------------------------------------------------


def prepared_dirs(cache: Path) -> list[Path]:
    """The preparations the token cache holds, one directory each."""
    return sorted((cache / "prepared").iterdir())


def test_token_cache_is_written_once_and_reused(text_file, qkv_cache, monkeypatch):
    first = prepare_corpus(str(text_file))
    dirs = prepared_dirs(qkv_cache)
    assert len(dirs) == 1
    shard = dirs[0] / "train-00000.bin"
    mtime = shard.stat().st_mtime_ns

    def no_encoding(self, text):
        raise AssertionError("the text was encoded again instead of read from the cache")

    monkeypatch.setattr(CharTokenizer, "encode", no_encoding)
    monkeypatch.setattr(CharTokenizer, "encode_array", no_encoding)
    second = prepare_corpus(str(text_file))
    assert prepared_dirs(qkv_cache) == dirs
    assert shard.stat().st_mtime_ns == mtime
    assert np.array_equal(first.train, second.train)
    assert np.array_equal(first.val, second.val)


def test_token_cache_follows_the_text(text_file, text, qkv_cache):
    prepare_corpus(str(text_file))
    changed = text.replace("Romeo", "Romea")  # same length, same vocabulary, other ids
    assert len(changed) == len(text) and set(changed) == set(text)
    text_file.write_text(changed, encoding="utf-8")
    corpus = prepare_corpus(str(text_file))
    ids = np.concatenate([corpus.train, corpus.val])
    assert corpus.tokenizer.decode(ids.tolist()) == changed
    assert len(prepared_dirs(qkv_cache)) == 2


# -- sources ---------------------------------------------------------------------------------


def test_directory_of_txt_files_is_read_in_sorted_order(tmp_path):
    folder = tmp_path / "plays"
    folder.mkdir()
    (folder / "b.txt").write_text("second\n", encoding="utf-8")
    (folder / "c.txt").write_text("third\n", encoding="utf-8")
    (folder / "a.txt").write_text("first\n", encoding="utf-8")
    (folder / "notes.md").write_text("not text to train on\n", encoding="utf-8")
    assert read_text_source(str(folder)) == "first\nsecond\nthird\n"
    corpus = prepare_corpus(str(folder))
    ids = np.concatenate([corpus.train, corpus.val])
    assert corpus.tokenizer.decode(ids.tolist()) == "first\nsecond\nthird\n"


def test_text_file_is_read_as_utf8(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("caf\u00e9 \u2014 na\u00efve\n", encoding="utf-8")
    assert read_text_source(str(path)) == "caf\u00e9 \u2014 na\u00efve\n"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(b"", "empty"), (b"abc\x00def", "NUL"), (b"caf\xe9\n", "UTF-8")],
)
def test_bad_files_are_errors(tmp_path, content, fragment):
    path = tmp_path / "t.txt"
    path.write_bytes(content)
    with pytest.raises(QkvError, match=fragment):
        read_text_source(str(path))


# -- evaluation windows ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "block", "batch"),
    [(2, 4, 3), (17, 16, 4), (33, 16, 1), (50, 4, 3), (101, 7, 5), (64, 8, 100)],
)
def test_eval_windows_score_every_target_exactly_once(n, block, batch):
    ids = np.arange(n, dtype=np.uint16)  # each id is its own position
    batches = list(eval_windows(ids, block, batch))
    targets = []
    for x, y in batches:
        assert x.shape == y.shape and x.dtype == torch.int64
        assert 1 <= x.shape[0] <= batch and 1 <= x.shape[1] <= block
        assert torch.equal(y, x + 1)  # targets are the inputs shifted by one
        for row in y:
            assert torch.equal(row, torch.arange(row[0], row[0] + len(row)))  # contiguous
            targets.extend(row.tolist())
    # consecutive, non-overlapping windows over every id but the first, in order
    assert targets == list(range(1, n))
    full_windows = [x.shape[1] == block for x, _ in batches]
    assert all(full_windows[:-1])  # only the final window may be short
    if (n - 1) % block:
        assert batches[-1][0].shape == (1, (n - 1) % block)  # and it is included


# -- training batches -----------------------------------------------------------------------


def test_batch_sampler_draws_contiguous_windows_across_the_whole_array():
    ids = np.arange(20, dtype=np.uint16)
    sampler = BatchSampler(ids, block_size=4, batch_size=8, seed=0)
    starts = set()
    for _ in range(100):
        x, y = sampler.next_batch()
        assert x.shape == y.shape == (8, 4) and x.dtype == y.dtype == torch.int64
        assert torch.equal(y, x + 1)
        assert torch.equal(x - x[:, :1], torch.arange(4).expand(8, 4))  # contiguous
        assert int(y.max()) <= 19
        starts.update(x[:, 0].tolist())
    assert starts == set(range(16))  # every window, the last one included


def test_batch_sampler_state_restores_the_same_batches():
    ids = np.arange(1000, dtype=np.uint16)
    sampler = BatchSampler(ids, block_size=8, batch_size=4, seed=3)
    sampler.next_batch()
    state = sampler.state_dict()
    expected = [sampler.next_batch() for _ in range(5)]
    restored = BatchSampler(ids, block_size=8, batch_size=4, seed=99)
    restored.load_state_dict(state)
    for (x, y), (rx, ry) in zip(expected, (restored.next_batch() for _ in range(5)), strict=True):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    # and the same seed gives the same stream, another seed another one
    a = BatchSampler(ids, 8, 4, seed=3).next_batch()[0]
    b = BatchSampler(ids, 8, 4, seed=3).next_batch()[0]
    c = BatchSampler(ids, 8, 4, seed=4).next_batch()[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_batch_sampler_does_not_touch_the_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    BatchSampler(np.arange(100, dtype=np.uint16), 8, 4, seed=1).next_batch()
    assert torch.equal(torch.rand(3), expected)
