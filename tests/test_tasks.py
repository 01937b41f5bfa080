"""Seq2seq data: well-posed dates, disjoint splits, the TSV reader, length-grouped batches."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from qkv.config.seq2seq import BOS_ID, EOS_ID, PAD_ID
from qkv.data.pairs import LengthBatches, collate, encode_pairs
from qkv.data.tasks import (
    date_patterns,
    dates_task,
    format_date,
    is_well_posed_pattern,
    load_pairs,
    numbers_task,
    read_pairs,
    split_pairs,
    synthetic_task,
)
from qkv.errors import QkvError
from qkv.tokenizer import Seq2SeqTokenizer


def test_every_date_style_names_exactly_one_date():
    """Two years of dates in every style: no source string stands for two dates."""
    start = datetime.date(2003, 1, 1)  # 03/04/05-style coincidences included
    meaning: dict[str, datetime.date] = {}
    for day in range(730):
        date = start + datetime.timedelta(days=day)
        for locale, pattern in date_patterns():
            text = format_date(date, locale, pattern)
            assert meaning.setdefault(text, date) == date, (text, locale, pattern)


def test_month_first_numbers_are_left_out():
    assert not is_well_posed_pattern("M/d/yy")  # en_US short: 11/26/26
    assert is_well_posed_pattern("dd.MM.yy") and is_well_posed_pattern("MMM d, y")
    assert ("en_US", "M/d/yy") not in date_patterns()


def test_dates_cover_the_issues_examples_and_many_languages():
    date = datetime.date(2026, 11, 26)
    texts = {format_date(date, locale, pattern) for locale, pattern in date_patterns()}
    for example in [
        "jeudi 26 novembre 2026",
        "26.11.26",
        "Nov 26, 2026",
        "26 de noviembre de 2026",
    ]:
        assert example in texts
    assert len({locale[:2] for locale, _ in date_patterns()}) >= 7


def test_dates_splits_are_disjoint_by_date_and_reproducible():
    splits = dates_task(2000, 100, 100, seed=3)
    train = {t for _, t in splits.train}
    val, test = {t for _, t in splits.val}, {t for _, t in splits.test}
    assert not train & test and not train & val and not val & test
    assert len(test) == 100
    assert all(datetime.date.fromisoformat(t).year in range(1950, 2050) for t in train)
    assert dates_task(2000, 100, 100, seed=3) == splits
    assert dates_task(2000, 100, 100, seed=4).test != splits.test


def test_numbers_are_words_to_digits_disjoint_by_number():
    splits = numbers_task(300, 50, 50, seed=0)
    assert not {t for _, t in splits.train} & {t for _, t in splits.test}
    for words, digits in splits.train[:20]:
        assert digits.isdigit() and not any(c.isdigit() for c in words)


@pytest.mark.parametrize("name", ["copy", "reverse", "sort"])
def test_synthetic_tasks(name):
    splits = synthetic_task(name, 200, 20, 20, seed=1, max_len=6)
    expected = {"copy": lambda s: s, "reverse": lambda s: s[::-1], "sort": sorted}[name]
    for source, target in splits.train + splits.test:
        assert target == "".join(expected(source)) and 3 <= len(source) <= 6
    assert not {s for s, _ in splits.train} & {s for s, _ in splits.test}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pairs.tsv"
    path.write_text(text, encoding="utf-8")
    return path


def test_tsv_pairs_split_on_the_first_tab_and_skip_blank_lines(tmp_path):
    path = write(tmp_path, "un\tone\n\ndeux\ttwo\tzwei\n")
    assert read_pairs(path) == [("un", "one"), ("deux", "two\tzwei")]


def test_a_tsv_line_without_a_tab_names_the_file_and_line(tmp_path):
    path = write(tmp_path, "un\tone\ndeux two\n")
    with pytest.raises(QkvError, match=rf"^{path}:2: no tab in this line"):
        read_pairs(path)


def test_tsv_splits_keep_every_pair_once(tmp_path):
    pairs = [(f"s{i}", f"t{i}") for i in range(100)]
    splits = split_pairs(pairs, seed=0, origin="x")
    assert sorted(splits.train + splits.val + splits.test) == sorted(pairs)
    assert len(splits.test) == len(splits.val) == 5
    with pytest.raises(QkvError, match=r"^x: 2 pair\(s\); need at least 3 \(train, val, test\)$"):
        split_pairs(pairs[:2], 0, "x")
    missing = tmp_path / "missing.tsv"
    with pytest.raises(QkvError, match=rf"^{missing}: no such file, and not a task \(dates, "):
        load_pairs(str(missing), 1, 1, 1)


def test_batches_are_padded_shifted_and_grouped_by_length():
    pairs = [("a" * n, "b" * (n % 5 + 1)) for n in range(1, 200)]
    tokenizer = Seq2SeqTokenizer.train([t for p in pairs for t in p])
    examples = encode_pairs(pairs, tokenizer, 300, "test")
    src, tgt_in, tgt_out = collate(examples[:2])
    assert src.tolist()[0] == [*tokenizer.encode("a"), EOS_ID, PAD_ID]
    assert tgt_in.tolist()[0] == [BOS_ID, *tokenizer.encode("bb"), PAD_ID]
    assert tgt_out.tolist()[0] == [*tokenizer.encode("bb"), EOS_ID, PAD_ID]
    batches = LengthBatches(examples, batch_size=8, seed=0)
    widths = [batches.next_batch()[0] for _ in range(10)]
    padding = sum(int((w == PAD_ID).sum()) for w in widths) / sum(w.numel() for w in widths)
    assert padding < 0.1  # random batches of lengths 1..199 would be about half padding


def test_batches_resume_at_the_same_position():
    examples = [([3] * n + [EOS_ID], [4]) for n in range(1, 50)]
    first = LengthBatches(examples, batch_size=4, seed=1)
    for _ in range(17):  # past the end of the first epoch
        first.next_batch()
    second = LengthBatches(examples, batch_size=4, seed=1)
    second.load_state_dict(first.state_dict())
    for _ in range(5):
        assert all(
            (a == b).all() for a, b in zip(first.next_batch(), second.next_batch(), strict=True)
        )


def test_seq2seq_tokenizer_round_trips_and_rejects_unknown_characters(tmp_path):
    tokenizer = Seq2SeqTokenizer.train(["26 novembre 2026", "2026-11-26"])
    ids = tokenizer.encode("26 nov")
    assert min(ids) >= 3 and tokenizer.decode([BOS_ID, *ids, EOS_ID]) == "26 nov"
    tokenizer.save(tmp_path / "tokenizer.json")
    from qkv.tokenizer import load_tokenizer

    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    assert loaded.encode("26 nov") == ids and loaded.vocab_size == tokenizer.vocab_size
    unknown = "characters not in the model's vocabulary: 'в', 'ж', 'н', 'о', 'т', 'я'$"
    with pytest.raises(QkvError, match=unknown):  # each unknown character once, sorted
        tokenizer.encode("26 жовтня")
    bpe = Seq2SeqTokenizer.train(["twenty one", "21"] * 50, kind="bpe", vocab_size=260)
    assert bpe.decode(bpe.encode("жовтня")) == "жовтня"  # bytes: nothing is unknown
