"""Sampling filters: temperature, top-k, top-p, option checks."""

import pytest
import torch

from qkv.decoding.sampling import check_sampling_options, filter_top_k, filter_top_p, sample_next
from qkv.errors import QkvError


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = filter_top_k(logits, 2)
    assert torch.equal(torch.isfinite(kept), torch.tensor([[False, True, False, True, False]]))


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert torch.isfinite(filter_top_p(logits, 0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(filter_top_p(logits, 0.8)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_top_p(logits, 0.81)).tolist() == [[True, True, True, False]]
    # the order of the vocabulary does not matter
    shuffled = logits[:, [2, 0, 3, 1]]
    assert torch.isfinite(filter_top_p(shuffled, 0.8)).tolist() == [[False, True, False, True]]


def test_sampling_only_returns_kept_tokens():
    logits = torch.tensor([[0.0, 0.1, 0.2, 5.0, 4.0]]).repeat(200, 1)
    g = torch.Generator().manual_seed(0)
    picks = sample_next(logits, temperature=1.0, top_k=2, generator=g)
    assert set(picks.flatten().tolist()) == {3, 4}


def test_low_temperature_approaches_greedy():
    logits = torch.tensor([[1.0, 1.5, 1.2]]).repeat(100, 1)
    g = torch.Generator().manual_seed(0)
    assert torch.all(sample_next(logits, temperature=0.01, generator=g) == 1)
    assert torch.all(sample_next(logits, temperature=0) == 1)


@pytest.mark.parametrize(
    "args, message",
    [
        ((-1, 1.0, None, None), "max_new_tokens"),
        ((5, -0.5, None, None), "temperature"),
        ((5, 1.0, 0, None), "top_k"),
        ((5, 1.0, None, 0.0), "top_p"),
        ((5, 1.0, None, 1.5), "top_p"),
    ],
)
def test_meaningless_options_are_refused(args, message):
    with pytest.raises(QkvError, match=message):
        check_sampling_options(*args)
