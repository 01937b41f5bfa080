"""Cached decoding computes exactly what uncached decoding computes."""

import pytest
import torch

from qkv.config import GPTConfig
from qkv.models.gpt import GPT

VARIANTS = [
    {},
    {"positional": "rotary", "n_kv_head": 2},
    {"positional": "sinusoidal", "norm": "post", "activation": "swiglu"},
]


def tiny(**variant) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=50, block_size=24, n_layer=2, n_head=4, n_embd=32, **variant)
    return GPT(config).eval()


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_logits_equal_full_forward_logits(variant):
    model = tiny(**variant)
    idx = torch.randint(0, 50, (3, 20))
    full, _ = model(idx)
    caches = model.new_kv_caches()
    prefill, _ = model(idx[:, :8], kv_caches=caches)
    steps = [prefill]
    for t in range(8, 20):
        logits, _ = model(idx[:, t : t + 1], kv_caches=caches)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_generation_is_identical_with_and_without_cache_past_the_context(variant):
    model = tiny(**variant)
    prompt = torch.randint(0, 50, (2, 5))
    # 5 + 40 tokens: the sequence outgrows block_size 24, so the window slides 21 times
    cached = model.generate(prompt, 40, temperature=0, use_cache=True)
    uncached = model.generate(prompt, 40, temperature=0, use_cache=False)
    assert torch.equal(cached, uncached)


def test_cached_and_uncached_step_logits_agree_past_the_context():
    model = tiny()
    prompt = torch.randint(0, 50, (1, 20))
    fns = [model._cached_next_logits(), model._next_token_logits]
    idx = prompt
    for _ in range(10):  # crosses block_size at the fifth step
        cached, uncached = (fn(idx) for fn in fns)
        torch.testing.assert_close(cached, uncached, rtol=1e-5, atol=1e-5)
        idx = torch.cat([idx, uncached.argmax(-1, keepdim=True)], dim=1)


def test_sampled_generation_matches_with_the_same_seed():
    model = tiny(positional="rotary")
    prompt = torch.randint(0, 50, (2, 3))
    a = model.generate(prompt, 30, generator=torch.Generator().manual_seed(5), use_cache=True)
    b = model.generate(prompt, 30, generator=torch.Generator().manual_seed(5), use_cache=False)
    assert torch.equal(a, b)


def test_cache_stores_only_the_kv_heads():
    model = tiny(n_kv_head=1)
    caches = model.new_kv_caches()
    model(torch.randint(0, 50, (2, 7)), kv_caches=caches)
    assert caches[0].k.shape == (2, 1, 24, 8) and caches[0].length == 7
