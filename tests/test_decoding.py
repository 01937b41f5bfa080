"""Greedy decoding and beam search: best-scoring hypotheses, beam 1 == greedy, cache == none."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from qkv.config.seq2seq import BOS_ID, EOS_ID, Seq2SeqConfig
from qkv.decoding import beam_search, greedy_decode, length_penalty
from qkv.models.seq2seq import Seq2SeqTransformer

A, B = 3, 4  # the two ordinary tokens of the hand-set model; V = 5 with <pad> <bos> <eos>


class TableSession:
    """A decoder whose next-token probabilities are a function of the prefix alone."""

    def __init__(self, table, rows: int, max_steps: int) -> None:
        self.table, self.max_steps = table, max_steps
        self.prefixes: list[tuple[int, ...]] = [() for _ in range(rows)]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        fed = tokens[:, 0].tolist()
        self.prefixes = [
            p if t == BOS_ID else (*p, t) for p, t in zip(self.prefixes, fed, strict=True)
        ]
        probs = torch.tensor([self.table(p) for p in self.prefixes], dtype=torch.float64)
        return probs.log()  # (N, V): logits whose softmax is the table

    def reorder(self, order: torch.Tensor) -> None:
        self.prefixes = [self.prefixes[i] for i in order.tolist()]


class TableModel:
    def __init__(self, table, max_steps: int = 4) -> None:
        self.table, self.max_steps = table, max_steps

    def start_decoding(self, src, beams=1, use_cache=True) -> TableSession:
        return TableSession(self.table, src.size(0) * beams, self.max_steps)


def probs(eos: float, a: float, b: float) -> list[float]:
    return [0.0, 0.0, eos, a, b]  # <pad> and <bos> are never produced


def garden_path(prefix: tuple[int, ...]) -> list[float]:
    """Greedy takes A (0.5) first, but B then <eos> (0.4 * 0.9) is the most likely output."""
    if prefix == ():
        return probs(0.1, 0.5, 0.4)
    if prefix == (A,):
        return probs(0.33, 0.34, 0.33)
    if prefix == (B,):
        return probs(0.9, 0.05, 0.05)
    return probs(0.9, 0.05, 0.05)


def brute_force_best(table, max_steps: int, alpha: float) -> tuple[list[int], float]:
    """Score every possible output: log P(Y) / lp(Y), Y ending in <eos> or at max_steps."""
    best, best_score = None, -math.inf
    for length in range(max_steps + 1):
        for body in itertools.product([A, B], repeat=length):
            log_p, prefix = 0.0, ()
            for token in body:
                log_p += math.log(table(prefix)[token])
                prefix = (*prefix, token)
            if length < max_steps:  # finish with <eos>
                score = (log_p + math.log(table(prefix)[EOS_ID])) / length_penalty(
                    length + 1, alpha
                )
            else:  # out of positions without <eos>
                score = log_p / length_penalty(length, alpha)
            if score > best_score:
                best, best_score = list(body), score
    return best, best_score


SRC = torch.zeros(1, 3, dtype=torch.long)


def test_length_penalty_is_gnmts():
    assert length_penalty(1, 0.6) == 1.0
    assert length_penalty(7, 0.6) == pytest.approx((12 / 6) ** 0.6)
    assert length_penalty(9, 0.0) == 1.0


def test_beam_search_finds_the_best_sequence_that_greedy_misses():
    model = TableModel(garden_path)
    best, _ = brute_force_best(garden_path, 4, 0.6)
    assert best == [B]
    assert greedy_decode(model, SRC) == [[A, A]]
    assert beam_search(model, SRC, beam_size=2, alpha=0.6) == [[B]]


def short_or_long(prefix: tuple[int, ...]) -> list[float]:
    """<eos> at once has P = 0.5; A then <eos> has P = 0.5 * 0.8 = 0.4, but one token more."""
    if prefix == ():
        return probs(0.5, 0.5, 0.0)
    return probs(0.8, 0.2, 0.0)


def test_the_length_penalty_decides_between_a_short_and_a_longer_output():
    # scores by hand: [] is log 0.5 / 1 = -0.693; [A] is log 0.4 / ((5 + 2) / 6)^alpha,
    # -0.916 for alpha 0 (the shorter wins) and -0.916 / 1.361 = -0.673 for alpha 2
    model = TableModel(short_or_long)
    assert beam_search(model, SRC, beam_size=2, alpha=0.0) == [[]]
    assert beam_search(model, SRC, beam_size=2, alpha=2.0) == [[A]]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.5])
def test_a_wide_enough_beam_equals_exhaustive_search(seed, alpha):
    rng = torch.Generator().manual_seed(seed)
    cache: dict[tuple[int, ...], list[float]] = {}

    def random_table(prefix: tuple[int, ...]) -> list[float]:
        if prefix not in cache:
            p = torch.rand(3, generator=rng).tolist()
            cache[prefix] = probs(*(x / sum(p) for x in p))
        return cache[prefix]

    for prefix in itertools.chain.from_iterable(  # draw the table in a fixed order
        itertools.product([A, B], repeat=n) for n in range(4)
    ):
        random_table(prefix)
    best, _ = brute_force_best(random_table, 3, alpha)
    # 2^3 = 8 hypotheses at most are alive, so a beam of 8 never prunes anything
    assert beam_search(TableModel(random_table, 3), SRC, beam_size=8, alpha=alpha) == [best]


def small_model(seed: int) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    config = Seq2SeqConfig(
        vocab_size=11, max_len=12, n_encoder_layer=2, n_decoder_layer=2, n_embd=32, n_head=4,
        d_ff=64, dropout=0.0,
    )  # fmt: skip
    model = Seq2SeqTransformer(config).eval()
    with torch.no_grad():  # make <eos> likely enough that some outputs end early
        model.lm_head.weight[EOS_ID] *= 3
    return model


def sources(seed: int) -> torch.Tensor:
    src = torch.randint(3, 11, (4, 6), generator=torch.Generator().manual_seed(seed))
    src[1, 4:] = 0  # padding
    return src


@pytest.mark.parametrize("seed", range(4))
def test_beam_of_one_is_greedy(seed):
    model, src = small_model(seed), sources(seed)
    assert beam_search(model, src, beam_size=1) == greedy_decode(model, src)


@pytest.mark.parametrize("seed", range(3))
def test_cached_and_uncached_decoding_agree(seed):
    model, src = small_model(seed), sources(seed)
    assert greedy_decode(model, src, use_cache=True) == greedy_decode(model, src, use_cache=False)
    cached = beam_search(model, src, beam_size=3, use_cache=True)
    assert cached == beam_search(model, src, beam_size=3, use_cache=False)


def test_batched_beam_search_equals_one_sentence_at_a_time():
    model, src = small_model(0), sources(0)
    together = beam_search(model, src, beam_size=3)
    alone = [
        beam_search(model, src[i : i + 1][:, : int((src[i] != 0).sum())], 3)[0] for i in range(4)
    ]
    assert together == alone


def test_outputs_stop_at_eos_and_respect_max_len():
    model, src = small_model(1), sources(1)
    for output in greedy_decode(model, src, max_len=5) + beam_search(model, src, 2, max_len=5):
        assert (
            len(output) <= 5 and EOS_ID not in output and BOS_ID not in output and 0 not in output
        )
