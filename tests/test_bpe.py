"""Byte-level BPE: round trips through any Unicode, split characters, the train-only vocabulary,
uint16/uint32 storage, the cache key, and `qkv train --tokenizer bpe` -> sample -> eval."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import tokenizers
import torch
import torch.nn.functional as F

import qkv
from conftest import TINY, make_text
from qkv.cli import main
from qkv.config import DataConfig
from qkv.data import prepare_corpus
from qkv.data.dataset import token_dtype
from qkv.errors import QkvError
from qkv.tokenizer import BPETokenizer, CharTokenizer, decode_stream, load_tokenizer

EMOJI = "\U0001f600"  # 😀, four bytes in UTF-8
UNICODE = f"naïve café, Æsop — 日本語 ✓ {EMOJI} 👩‍👩‍👧 ok\n"
EVAL_LINE = re.compile(r"val_loss=(\d+\.\d+) bpc=(\d+\.\d+) tokens=(\d+)")


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    """A BPE learned from ASCII text only: an emoji is then split into its bytes."""
    return BPETokenizer.train(make_text(200), vocab_size=300)


# -- the tokenizer -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", [UNICODE, "Привет, мир! Γειά σου\tκόσμε\r\n", EMOJI * 3, "", " \n\n  x"]
)
def test_round_trip_through_any_unicode(bpe, text):
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text


def test_a_prefix_that_cuts_a_character_decodes_and_the_whole_comes_back(bpe):
    text = f"a{EMOJI}b"
    ids = bpe.encode(text)
    emoji_ids = bpe.encode(EMOJI)
    assert len(emoji_ids) > 1  # the test needs the emoji split across tokens
    half = ids[: 1 + len(emoji_ids) // 2]  # "a" and part of the emoji's bytes: not UTF-8
    assert bpe.decode(half).startswith("a") and bpe.decode(half).endswith("\ufffd")
    assert bpe.decode(ids) == text
    for cut in range(len(ids) + 1):
        assert isinstance(bpe.decode(ids[:cut]), str)


def test_decode_stream_prints_whole_characters_only(bpe):
    ids = bpe.encode(UNICODE * 2)
    pieces = list(decode_stream(bpe, ids))
    assert "".join(pieces) == UNICODE * 2
    assert not any("\ufffd" in p for p in pieces)
    char = CharTokenizer.from_text("abc")
    assert list(decode_stream(char, [0, 1, 2])) == ["a", "b", "c"]


def test_char_counts_add_up_to_the_characters_even_when_tokens_split_them(bpe):
    text = UNICODE * 3
    ids = bpe.encode(text)
    counts = bpe.char_counts()
    assert counts.shape == (bpe.vocab_size,)
    assert int(counts[ids].sum()) == len(text)
    naive = sum(len(bpe.decode([i])) for i in ids)  # counts each split half as a U+FFFD
    assert naive > len(text)


def test_saved_file_is_the_tokenizers_librarys_own_and_loads_back(bpe, tmp_path):
    path = tmp_path / "tokenizer.json"
    bpe.save(path)
    theirs = tokenizers.Tokenizer.from_file(str(path))
    loaded = load_tokenizer(path)
    assert isinstance(loaded, BPETokenizer)
    assert loaded.vocab_size == bpe.vocab_size == theirs.get_vocab_size()
    assert loaded.encode(UNICODE) == bpe.encode(UNICODE) == theirs.encode(UNICODE).ids
    assert loaded.fingerprint() == bpe.fingerprint()


def test_training_is_deterministic():
    text = make_text(100, seed=3)
    a, b = BPETokenizer.train(text, 320), BPETokenizer.train(text, 320)
    assert a.fingerprint() == b.fingerprint()


def test_empty_prompt_is_a_newline_without_end_of_text(bpe):
    assert bpe.empty_prompt() == ("\n", bpe.encode("\n"))


def test_vocab_size_rules(tmp_path):
    with pytest.raises(QkvError, match="at least 256"):
        DataConfig(tokenizer="bpe", vocab_size=100)
    with pytest.raises(QkvError, match="tokenizer='bpe'"):
        DataConfig(vocab_size=500)
    with pytest.raises(QkvError, match="at least 256"):
        BPETokenizer.train("abc", 10)


# -- the corpus: train-only vocabulary, dtypes, cache ----------------------------------------


def write(tmp_path: Path, text: str, name: str = "t.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_bpe_learns_only_from_the_train_split(tmp_path):
    # 900 lines of train text, then 100 lines where "quokka" is the most frequent word
    text = "the cat sat on the mat\n" * 900 + "quokka quokka quokka\n" * 100
    corpus = prepare_corpus(str(write(tmp_path, text)), kind="bpe", vocab_size=400)
    vocab = corpus.tokenizer._tokenizer.get_vocab()
    assert "Ġmat" in vocab  # a train word is one token
    assert not any("quokka" in token for token in vocab)
    assert len(corpus.tokenizer.encode(" quokka")) > 1
    # a BPE that saw the val split would have learned it: the check above means something
    everything = BPETokenizer.train(text, 400)
    assert len(everything.encode(" quokka")) == 1
    # the val split is exactly the end of the text
    cut = int(0.9 * len(text))
    assert corpus.tokenizer.decode(corpus.val.tolist()) == text[cut:]
    assert corpus.tokenizer.decode(corpus.train.tolist()) == text[:cut]


def test_ids_are_uint16_up_to_65536_tokens_and_uint32_above(tmp_path):
    assert token_dtype(2**16) == np.uint16 and token_dtype(2**16 + 1) == np.uint32
    small = prepare_corpus(str(write(tmp_path, make_text())), kind="bpe", vocab_size=300)
    assert small.train.dtype == small.val.dtype == np.uint16
    # 70,000 distinct characters: a character vocabulary too big for uint16
    chars = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 70_000) if not 0xD800 <= c < 0xE000)
    big = prepare_corpus(str(write(tmp_path, chars, "big.txt")))
    assert big.tokenizer.vocab_size > 2**16
    assert big.train.dtype == big.val.dtype == np.uint32
    ids = np.concatenate([big.train, big.val])
    assert int(ids.max()) >= 2**16 and big.tokenizer.decode(ids.tolist()) == chars


def test_different_tokenizers_never_share_a_cache_file(tmp_path, qkv_cache):
    path = str(write(tmp_path, make_text()))
    char = prepare_corpus(path)
    bpe_300 = prepare_corpus(path, kind="bpe", vocab_size=300)
    bpe_400 = prepare_corpus(path, kind="bpe", vocab_size=400)
    assert len(list((qkv_cache / "prepared").iterdir())) == 3
    assert len(char.train) > len(bpe_300.train) > len(bpe_400.train)
    again = prepare_corpus(path, kind="bpe", vocab_size=300)
    assert np.array_equal(again.train, bpe_300.train)
    # the run's own tokenizer, given back (a resumed run's), finds the same preparation
    given = prepare_corpus(path, tokenizer=bpe_300.tokenizer, kind="bpe", vocab_size=300)
    assert np.array_equal(given.train, bpe_300.train)
    assert len(list((qkv_cache / "prepared").iterdir())) == 3


# -- qkv train --tokenizer bpe -> sample -> eval ----------------------------------------------


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("bpe-run")
    text = make_text(150) + UNICODE * 20 + make_text(30, seed=1)
    data = write(root, text, "play.txt")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QKV_CACHE_DIR", str(root / "cache"))
        code = main(
            ["train", "--data", str(data), "--out", str(root / "run"), "--tokenizer", "bpe"]
            + ["--vocab-size", "300", "--max-steps", "10", "--max-time", "0", "--no-progress"]
            + [*TINY, "train.eval_interval=10"]
        )
    assert code == 0
    return root / "run", text


def test_bpe_run_saves_a_tokenizers_file(bpe_run):
    run, _ = bpe_run
    tokenizers.Tokenizer.from_file(str(run / "tokenizer.json"))
    model, tokenizer = qkv.load(run)
    assert isinstance(tokenizer, BPETokenizer)
    assert model.config.vocab_size == tokenizer.vocab_size <= 300


def test_bpe_run_samples(cli, bpe_run):
    run, _ = bpe_run
    free = cli("sample", "--checkpoint", run, "--max-new-tokens", 30, "--device", "cpu")
    assert free.code == 0, free.err
    assert free.out.startswith("\n")
    prompt = f"ROMEO {EMOJI}"
    flags = ["--prompt", prompt, "--max-new-tokens", 30, "--temperature", 0]
    greedy = cli("sample", "--checkpoint", run, *flags)
    assert greedy.code == 0, greedy.err
    model, tokenizer = qkv.load(run)
    ids = model.generate(torch.tensor([tokenizer.encode(prompt)]), 30, temperature=0)
    assert greedy.out == tokenizer.decode(ids[0].tolist()) + "\n"


def test_bpe_run_eval_counts_characters_of_the_val_text(cli, bpe_run, tmp_path):
    run, text = bpe_run
    result = cli("eval", "--checkpoint", run, "--device", "cpu")
    assert result.code == 0, result.err
    match = EVAL_LINE.fullmatch(result.out.strip())
    assert match, result.out
    val_loss, bpc, tokens = float(match[1]), float(match[2]), int(match[3])

    model, tokenizer = qkv.load(run)
    val_text = text[int(0.9 * len(text)) :]
    ids = torch.tensor(tokenizer.encode(val_text))
    assert tokens == len(ids) - 1
    first = tokenizer.decode(ids[:1].tolist())
    assert "\ufffd" not in first
    n_chars = len(val_text) - len(first)  # the first token is context, never a target
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, model.config.block_size):
            y = ids[start + 1 : start + 1 + model.config.block_size]
            logits, _ = model(ids[start : start + len(y)][None])
            total += F.cross_entropy(logits[0], y, reduction="sum").item()
    assert val_loss == pytest.approx(total / tokens, abs=1e-4)
    assert bpc == pytest.approx(total / (math.log(2) * n_chars), abs=1e-4)
    assert bpc < val_loss / math.log(2)  # more than one character per token


def test_bpe_checkpoint_evaluates_text_with_characters_it_never_saw(cli, bpe_run, tmp_path):
    run, _ = bpe_run
    other = write(tmp_path, "Ελληνικά κείμενα και русский текст, 中文. " * 40, "other.txt")
    result = cli("eval", "--checkpoint", run, "--data", other, "--device", "cpu")
    assert result.code == 0, result.err
    assert EVAL_LINE.fullmatch(result.out.strip())


def test_vocab_size_without_bpe_is_a_one_line_error(cli, tmp_path, text_file):
    result = cli("train", "--data", text_file, "--out", tmp_path / "r", "--vocab-size", 500)
    assert result.code == 2
    assert result.err.count("\n") == 1 and "tokenizer='bpe'" in result.err


def test_tokenizer_that_is_not_a_directory_is_a_one_line_error(cli, tmp_path, text_file):
    out = tmp_path / "r"
    result = cli("train", "--data", text_file, "--out", out, "--tokenizer", "wordpiece", *TINY)
    assert result.code == 2
    assert result.err.count("\n") == 1 and "wordpiece" in result.err
