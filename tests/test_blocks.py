"""The feed-forward network, residual connections and LayerNorm, pre- and post-norm."""

import torch
import torch.nn.functional as F

from qkv.nn.blocks import FeedForward, PostNormBlock, PreNormBlock, make_block


def test_feed_forward_matches_its_formula():
    torch.manual_seed(0)
    ffn = FeedForward(8).double()
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    w1, b1 = ffn.c_fc.weight, ffn.c_fc.bias
    w2, b2 = ffn.c_proj.weight, ffn.c_proj.bias
    expected = torch.relu(x @ w1.T + b1) @ w2.T + b2  # W2 ReLU(W1 x + b1) + b2
    torch.testing.assert_close(ffn(x), expected)
    assert w1.shape == (32, 8)  # hidden size 4C by default


def test_feed_forward_gelu_is_selectable():
    torch.manual_seed(0)
    ffn = FeedForward(8, activation="gelu").double()
    x = torch.randn(4, 8, dtype=torch.float64)
    hidden = F.gelu(ffn.c_fc(x), approximate="tanh")
    torch.testing.assert_close(ffn(x), ffn.c_proj(hidden))


def test_feed_forward_acts_on_each_position_separately():
    torch.manual_seed(0)
    ffn = FeedForward(8).double()
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    torch.testing.assert_close(ffn(x)[:, 2], ffn(x[:, 2:3])[:, 0])


def test_pre_norm_block_is_residual_around_normed_sublayers():
    torch.manual_seed(0)
    block = PreNormBlock(16, 4).double().eval()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    h = x + block.attn(block.ln_1(x), causal=True)
    expected = h + block.mlp(block.ln_2(h))
    torch.testing.assert_close(block(x), expected)


def test_post_norm_block_normalises_after_the_residual():
    torch.manual_seed(0)
    block = PostNormBlock(16, 4).double().eval()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    # every token leaves a post-norm block with zero mean and unit variance (LayerNorm's
    # gain and bias are 1 and 0 at initialisation)
    normed = block(x)
    torch.testing.assert_close(normed.mean(-1), torch.zeros(2, 5, dtype=torch.float64))
    torch.testing.assert_close(
        normed.var(-1, unbiased=False), torch.ones(2, 5, dtype=torch.float64), rtol=1e-4, atol=1e-4
    )
    h = block.ln_1(x + block.attn(x, causal=True))
    torch.testing.assert_close(normed, block.ln_2(h + block.mlp(h)))


def test_a_zeroed_block_is_the_identity_thanks_to_the_residual():
    block = make_block("pre", 16, 4).double().eval()
    with torch.no_grad():
        block.attn.c_proj.weight.zero_()
        block.attn.c_proj.bias.zero_()
        block.mlp.c_proj.weight.zero_()
        block.mlp.c_proj.bias.zero_()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    torch.testing.assert_close(block(x), x)


def test_make_block_builds_the_named_variant():
    assert type(make_block("pre", 8, 2)) is PreNormBlock
    assert type(make_block("post", 8, 2)) is PostNormBlock
