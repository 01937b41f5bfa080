"""Attention behaves as the notes and the paper say: scores, scaling, softmax, masks, heads."""

import math

import pytest
import torch
import torch.nn.functional as F

from qkv.nn.attention import (
    MultiHeadAttention,
    causal_mask,
    key_padding_mask,
    scaled_dot_product_attention,
)


def qkv_tensors(b=2, h=3, t_q=5, t_k=5, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(b, h, t_q, d), (b, h, t_k, d), (b, h, t_k, d)]
    return [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]


def test_explicit_path_is_the_formula_written_out():
    q, k, v = qkv_tensors()
    out, weights = scaled_dot_product_attention(q, k, v, return_weights=True)
    d_k = q.size(-1)
    for i in range(q.size(2)):
        e_i = torch.stack([(q[..., i, :] * k[..., j, :]).sum(-1) for j in range(k.size(2))], -1)
        a_i = torch.softmax(e_i / math.sqrt(d_k), dim=-1)
        torch.testing.assert_close(weights[..., i, :], a_i)
        torch.testing.assert_close(out[..., i, :], (a_i.unsqueeze(-1) * v).sum(-2))


def test_weights_rows_sum_to_one_and_are_zero_on_masked_keys():
    q, k, v = qkv_tensors(t_q=6, t_k=6)
    pad = key_padding_mask(torch.tensor([[True] * 6, [True] * 4 + [False] * 2]))
    _, weights = scaled_dot_product_attention(q, k, v, pad, causal=True, return_weights=True)
    visible = causal_mask(6) & pad  # (B, 1, 6, 6)
    torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))
    assert torch.all(weights.masked_select(~visible.expand_as(weights)) == 0)


def test_scaling_keeps_the_softmax_from_saturating_on_one_key():
    """Dot products of unit-variance D-vectors have variance D. qkv divides them by sqrt(D)
    (variance 1), so over 64 keys each query spreads its weight; unscaled, the softmax puts
    nearly all of it on one key (the paper's footnote 4). Through qkv's own attention, both
    paths: the explicit weights, and the fused output, which must equal weights @ v."""
    d = 256
    q, k, v = qkv_tensors(b=4, h=4, t_q=64, t_k=64, d=d)
    out, weights = scaled_dot_product_attention(q, k, v, return_weights=True)
    assert weights.amax(-1).mean() < 0.3  # the largest weight of a row, on average
    unscaled = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
    assert unscaled.amax(-1).mean() > 0.9
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v), weights @ v)
    torch.testing.assert_close(out, weights @ v)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("with_padding", [False, True])
def test_fused_path_equals_explicit_path(causal, with_padding):
    q, k, v = qkv_tensors(t_q=7, t_k=7)
    mask = None
    if with_padding:
        mask = key_padding_mask(torch.tensor([[True] * 7, [True] * 5 + [False] * 2]))
    fused = scaled_dot_product_attention(q, k, v, mask, causal=causal)
    explicit, _ = scaled_dot_product_attention(q, k, v, mask, causal=causal, return_weights=True)
    torch.testing.assert_close(fused, explicit)


def test_fused_equals_explicit_with_fewer_queries_than_keys():
    # decoding with a cache: the 2 queries are the last 2 of 6 positions
    q, k, v = qkv_tensors(t_q=2, t_k=6)
    fused = scaled_dot_product_attention(q, k, v, causal=True)
    explicit, weights = scaled_dot_product_attention(q, k, v, causal=True, return_weights=True)
    torch.testing.assert_close(fused, explicit)
    assert torch.all(weights[..., 0, 5] == 0) and torch.all(weights[..., 0, :5] > 0)


@pytest.mark.parametrize("with_padding", [False, True])
def test_under_cpu_autocast_the_fused_kernel_runs_in_float32(with_padding):
    # torch's CPU kernel is slow backwards in bfloat16: qkv runs it in float32 and casts back
    q, k, v = (t.to(torch.bfloat16).requires_grad_() for t in qkv_tensors(t_q=24, t_k=24))
    mask = None
    if with_padding:
        mask = key_padding_mask(torch.tensor([[True] * 24, [True] * 20 + [False] * 4]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = scaled_dot_product_attention(q, k, v, mask, causal=True)
    reference_inputs = [t.detach().float().requires_grad_() for t in (q, k, v)]
    full_mask = causal_mask(24) if mask is None else mask & causal_mask(24)
    reference = F.scaled_dot_product_attention(*reference_inputs, attn_mask=full_mask)
    assert out.dtype is torch.bfloat16
    assert torch.equal(out, reference.to(torch.bfloat16))
    grad = torch.randn_like(reference)
    out.backward(grad.to(torch.bfloat16))
    reference.backward(grad.to(torch.bfloat16).float())
    for mine, theirs in zip((q, k, v), reference_inputs, strict=True):
        assert torch.equal(mine.grad, theirs.grad.to(torch.bfloat16))


def test_causal_mask_keeps_the_diagonal():
    # the notes say mask j >= i; the right rule is j <= i visible
    mask = causal_mask(4)
    expected = torch.tensor(
        [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool
    )
    assert torch.equal(mask, expected)
    assert mask.diagonal().all()


def test_first_query_attends_only_to_itself():
    q, k, v = qkv_tensors()
    out, weights = scaled_dot_product_attention(q, k, v, causal=True, return_weights=True)
    assert torch.all(weights[..., 0, 0] == 1.0)
    torch.testing.assert_close(out[..., 0, :], v[..., 0, :])


def test_the_notes_strict_mask_would_give_nan_for_the_first_query():
    # e_ij = -inf for j >= i (the notes) leaves query 0 with no key: softmax of all -inf
    q, k, _ = qkv_tensors()
    strict = torch.ones(5, 5).tril(-1).bool()  # j < i only
    scores = (q @ k.transpose(-2, -1)).masked_fill(~strict, float("-inf"))
    assert torch.isnan(torch.softmax(scores, -1)[..., 0, :]).all()


def test_no_nan_under_any_mask_even_a_query_with_no_visible_key():
    q, k, v = qkv_tensors(t_q=4, t_k=4)
    left_padded = key_padding_mask(torch.tensor([[False, False, True, True]] * 2))
    for return_weights in (False, True):
        result = scaled_dot_product_attention(
            q, k, v, left_padded, causal=True, return_weights=return_weights
        )
        out = result[0] if return_weights else result
        assert not torch.isnan(out).any()
        assert torch.all(out[..., :2, :] == 0)  # queries 0, 1 see only padding


def ours_and_torchs(c: int, h: int):
    """Our MultiHeadAttention and torch's, holding the same weights (float64, eval mode)."""
    torch.manual_seed(0)
    ours = MultiHeadAttention(c, h).double().eval()
    ref = torch.nn.MultiheadAttention(c, h, batch_first=True).double().eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.c_attn.weight)  # [W_Q; W_K; W_V] in both
        ref.in_proj_bias.copy_(ours.c_attn.bias)
        ref.out_proj.weight.copy_(ours.c_proj.weight)
        ref.out_proj.bias.copy_(ours.c_proj.bias)
    return ours, ref


def test_multi_head_attention_equals_torch_multihead_attention():
    c = 16
    ours, ref = ours_and_torchs(c, 4)
    x = torch.randn(2, 6, c, dtype=torch.float64)
    allowed = causal_mask(6)
    ref_out, ref_w = ref(x, x, x, attn_mask=~allowed, average_attn_weights=False)
    out, weights = ours(x, causal=True, return_weights=True)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(weights, ref_w)


def test_cross_attention_equals_torch_with_queries_from_x_and_keys_from_context():
    c = 16
    ours, ref = ours_and_torchs(c, 2)
    x = torch.randn(2, 3, c, dtype=torch.float64)
    memory = torch.randn(2, 7, c, dtype=torch.float64)
    is_real = torch.tensor([[True] * 7, [True] * 5 + [False] * 2])
    ref_out, _ = ref(x, memory, memory, key_padding_mask=~is_real)
    out = ours(x, memory, mask=key_padding_mask(is_real))
    torch.testing.assert_close(out, ref_out)


def test_heads_are_independent_slices_of_the_channels():
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2).double().eval()
    x = torch.randn(1, 4, 8, dtype=torch.float64)
    _, weights = mha(x, return_weights=True)
    q, k, _ = mha.c_attn(x).split(8, dim=-1)
    for head in range(2):
        sl = slice(4 * head, 4 * head + 4)
        expected = torch.softmax(q[0, :, sl] @ k[0, :, sl].T / 2.0, dim=-1)
        torch.testing.assert_close(weights[0, head], expected)


def test_self_attention_without_positions_is_permutation_equivariant():
    # the notes: "the self-attention mechanism is permutation invariant" (precisely:
    # permuting the tokens permutes the outputs the same way)
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4).double().eval()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    perm = torch.randperm(9)
    torch.testing.assert_close(mha(x[:, perm]), mha(x)[:, perm])
