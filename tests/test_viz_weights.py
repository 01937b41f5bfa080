"""GPT.forward(return_weights=True): the weights are the model's own softmax(q k^T / sqrt(D)).

Each layer's weights are recomputed by hand from the input its attention sub-layer received
(captured by a forward pre-hook, in the test only) and its c_attn matrix, for learned and
rotary positions, grouped-query attention and post-norm blocks.
"""

from __future__ import annotations

import math

import pytest
import torch

from qkv import GPT, GPTConfig
from qkv.nn.attention import causal_mask

VARIANTS = {
    "learned": dict(positional="learned"),
    "rotary-gqa": dict(positional="rotary", n_kv_head=2),
    "sinusoidal-post-norm": dict(positional="sinusoidal", norm="post"),
}


def tiny_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=11, n_layer=2, n_head=4, n_embd=32, block_size=16, **overrides)
    return GPT(config).eval()


def hand_weights(attn, x: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(D) + causal -inf) for one attention module, from its input x."""
    b, t, c = x.shape
    q, k, _ = attn.c_attn(x).split([c, attn.kv_width, attn.kv_width], dim=-1)
    q = q.view(b, t, attn.n_head, attn.head_size).transpose(1, 2)  # (B, H, T, D)
    k = k.view(b, t, attn.n_kv_head, attn.head_size).transpose(1, 2)  # (B, H_kv, T, D)
    if attn.rotary is not None:
        positions = torch.arange(t)
        q, k = attn.rotary(q, positions), attn.rotary(k, positions)
    k = k.repeat_interleave(attn.n_head // attn.n_kv_head, dim=1)  # (B, H, T, D)
    scores = q @ k.transpose(-2, -1) / math.sqrt(attn.head_size)
    scores = scores.masked_fill(~causal_mask(t), float("-inf"))
    return torch.softmax(scores, dim=-1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_returned_weights_equal_a_hand_computation_in_every_layer(variant: str) -> None:
    model = tiny_gpt(**VARIANTS[variant])
    inputs = []
    hooks = [
        block.attn.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
        for block in model.transformer.h
    ]
    idx = torch.randint(0, 11, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, loss, weights = model(idx, return_weights=True)
    for hook in hooks:
        hook.remove()
    assert loss is None and len(weights) == model.config.n_layer
    for attn_input, block, got in zip(inputs, model.transformer.h, weights, strict=True):
        assert got.shape == (2, 4, 9, 9)
        torch.testing.assert_close(got, hand_weights(block.attn, attn_input))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], logits)  # the fused path gives the same model


def test_weights_rows_sum_to_one_with_exact_zeros_above_the_diagonal() -> None:
    model = tiny_gpt()
    idx = torch.randint(0, 11, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, _, weights = model(idx, return_weights=True)
    for w in weights:
        torch.testing.assert_close(w.sum(-1), torch.ones(1, 4, 12))
        future = ~causal_mask(12)
        assert torch.equal(w[..., future], torch.zeros_like(w[..., future]))
        assert (w[..., ~future] > 0).all()


def test_return_contract_is_unchanged_without_weights_and_with_targets() -> None:
    model = tiny_gpt()
    idx = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(3))
    out = model(idx, idx)
    assert isinstance(out, tuple) and len(out) == 2 and out[1].ndim == 0
    logits, loss, weights = model(idx, idx, return_weights=True)
    torch.testing.assert_close(loss, out[1])


def test_weights_with_a_kv_cache_are_the_last_rows_of_the_full_weights() -> None:
    model = tiny_gpt(positional="rotary")
    idx = torch.randint(0, 11, (1, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        _, _, full = model(idx, return_weights=True)
        caches = model.new_kv_caches()
        model(idx[:, :7], kv_caches=caches)
        logits, _, cached = model(idx[:, 7:], kv_caches=caches, return_weights=True)
    assert logits.shape == (1, 3, 11)
    for whole, tail in zip(full, cached, strict=True):
        assert tail.shape == (1, 4, 3, 10)
        torch.testing.assert_close(tail, whole[:, :, 7:, :])
