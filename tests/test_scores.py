"""How qkv scores: `qkv eval`'s val loss and bpc for a language model, and exact match, BLEU
and chrF of translations, each against a computation of its own (or sacrebleu's own)."""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import pytest
import sacrebleu
import torch
import torch.nn.functional as F

import qkv
from qkv.evaluate import evaluate, score_translations

EVAL_LINE = re.compile(r"val_loss=(\d+\.\d+) bpc=(\d+\.\d+) tokens=(\d+)")


# -- a language model: val loss and bits per character ------------------------------------------


def test_eval_prints_one_line_that_matches_an_independent_computation(cli, trained_run):
    result = cli("eval", "--checkpoint", trained_run.run_dir, "--device", "cpu")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert len(lines) == 1, result.out
    match = EVAL_LINE.fullmatch(lines[0])
    assert match, lines[0]
    val_loss, bpc, tokens = float(match[1]), float(match[2]), int(match[3])

    text = trained_run.text
    val_text = text[int(0.9 * len(text)) :]  # the val split is the last 10%
    assert tokens == len(val_text) - 1
    # bits per character = nats per token / ln 2 for a character tokenizer
    assert bpc == pytest.approx(val_loss / math.log(2), abs=2e-4)

    # score every val target once, in consecutive non-overlapping windows
    model, tokenizer = qkv.load(trained_run.run_dir)
    ids = torch.tensor(tokenizer.encode(val_text))
    block = model.config.block_size
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, block):
            x = ids[start : start + block]
            y = ids[start + 1 : start + block + 1]
            x = x[: len(y)]
            logits, _ = model(x[None])
            total += F.cross_entropy(logits[0], y, reduction="sum").item()
            count += len(y)
    assert count == tokens
    assert val_loss == pytest.approx(total / count, abs=1e-4)
    assert bpc == pytest.approx(total / count / math.log(2), abs=1e-4)


def test_eval_on_other_data_prints_the_librarys_evaluate(cli, trained_run, tmp_path):
    other = tmp_path / "other.txt"
    other_text = trained_run.text[:1000]
    other.write_text(other_text, encoding="utf-8")
    result = cli("eval", "--checkpoint", trained_run.run_dir, "--data", other)
    assert result.code == 0, result.err
    model, tokenizer = qkv.load(trained_run.run_dir)
    val_ids = np.array(tokenizer.encode(other_text[int(0.9 * len(other_text)) :]))
    expected = evaluate(model, val_ids, tokenizer)
    assert result.out == expected.line() + "\n"
    assert expected.tokens == 1000 - int(0.9 * 1000) - 1
    # the same model scores another text differently: the line is this text's
    assert result.out != cli("eval", "--checkpoint", trained_run.run_dir).out


# -- translations: exact match, BLEU, chrF ------------------------------------------------------

# Four sentences, one translated exactly; the others with a word or two wrong.
REFERENCES = [
    "the cat sat on the mat",
    "a quick brown fox jumps over the lazy dog",
    "it is raining today in paris",
    "she reads a book every night",
]
HYPOTHESES = [
    "the cat sat on a mat",
    "a fast brown fox jumped over the lazy dog",
    "it is raining today in paris",
    "she read one book each night",
]


def bleu_by_hand(hypotheses: list[str], references: list[str]) -> float:
    """Papineni et al.'s corpus BLEU of lowercase words split on spaces: n-gram matches
    (clipped by the reference's counts) are summed over the corpus before the precisions
    are taken; BP = exp(1 - r / c) for a corpus shorter than its references."""
    matches, totals, hyp_length, ref_length = [0] * 4, [0] * 4, 0, 0
    for hypothesis, reference in zip(hypotheses, references, strict=True):
        hyp, ref = hypothesis.split(), reference.split()
        hyp_length, ref_length = hyp_length + len(hyp), ref_length + len(ref)
        for n in range(1, 5):
            hyp_grams = Counter(tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1))
            ref_grams = Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
            matches[n - 1] += sum((hyp_grams & ref_grams).values())
            totals[n - 1] += max(len(hyp) - n + 1, 0)
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / 4
    brevity = 1.0 if hyp_length > ref_length else math.exp(1 - ref_length / hyp_length)
    return 100 * brevity * math.exp(log_precision)


def test_bleu_and_chrf_of_an_imperfect_translation_are_sacrebleus_corpus_scores():
    scores = score_translations(HYPOTHESES, REFERENCES, char_level=False)
    bleu = sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES]).score  # 13a: words
    chrf = sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCES]).score
    assert scores.bleu == pytest.approx(bleu, abs=1e-9)
    assert scores.chrf == pytest.approx(chrf, abs=1e-9)
    assert scores.bleu == pytest.approx(bleu_by_hand(HYPOTHESES, REFERENCES), abs=1e-9)
    assert 0 < scores.bleu < 100 and 0 < scores.chrf < 100
    assert scores.exact_match == 0.25 and scores.examples == 4
    assert scores.line() == f"exact_match=0.2500 bleu={bleu:.2f} chrf={chrf:.2f} examples=4"
    # a corpus score, not the mean of sentence scores, which is another number here
    pairs = zip(HYPOTHESES, REFERENCES, strict=True)
    sentences = [sacrebleu.sentence_bleu(h, [r]).score for h, r in pairs]
    assert abs(sum(sentences) / len(sentences) - bleu) > 1


def test_a_character_level_model_is_scored_on_character_ngrams():
    scores = score_translations(HYPOTHESES, REFERENCES, char_level=True)
    bleu = sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES], tokenize="char").score
    assert scores.bleu == pytest.approx(bleu, abs=1e-9)
    assert scores.chrf == pytest.approx(sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCES]).score)
    assert 0 < scores.bleu < 100
    assert abs(bleu - score_translations(HYPOTHESES, REFERENCES, False).bleu) > 1
    # one-word outputs (a date) have no word 4-grams, but character n-grams score them
    dates = score_translations(["2026-11-26", "1999-01-02"], ["2026-11-25", "1999-01-02"], True)
    assert 0 < dates.bleu < 100 and dates.exact_match == 0.5


def test_perfect_translations_score_one_hundred_and_exact_match_one():
    scores = score_translations(REFERENCES, REFERENCES, char_level=False)
    assert scores.line() == "exact_match=1.0000 bleu=100.00 chrf=100.00 examples=4"
