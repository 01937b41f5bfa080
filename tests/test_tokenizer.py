"""The character tokenizer: round trip, saved vocabulary, unknown characters."""

import pytest

from qkv.errors import QkvError
from qkv.tokenizer import CharTokenizer, load_tokenizer

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\nÆsop — naïve? ✓\n"


def test_round_trip():
    tok = CharTokenizer.from_text(TEXT)
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert tok.vocab_size == len(set(TEXT))


def test_ids_follow_the_sorted_vocabulary():
    tok = CharTokenizer.from_text("cab")
    assert tok.encode("abc") == [0, 1, 2]


def test_unknown_character_error_names_it():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(QkvError, match="'z'") as info:
        tok.encode("abz")
    assert "\n" not in str(info.value)


def test_save_and_load_give_the_same_vocabulary(tmp_path):
    tok = CharTokenizer.from_text(TEXT)
    tok.save(tmp_path / "tokenizer.json")
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    assert loaded.chars == tok.chars
    assert loaded.encode(TEXT) == tok.encode(TEXT)


def test_bad_tokenizer_file_is_a_clear_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"kind": "wordpiece"}')
    with pytest.raises(QkvError, match="unknown tokenizer kind"):
        load_tokenizer(tmp_path / "tokenizer.json")
    with pytest.raises(QkvError, match="missing"):
        load_tokenizer(tmp_path / "nope.json")
