"""The notes' claims about self-attention, proved on qkv's own models (not on a formula
retyped in the test).

Each test names the sentence of ../shared/seed/self-attention-notes.md it checks. Where the
notes are loose, the test states the precise version (equivariant, not invariant; a causal
model is only order-blind for one layer).
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from qkv.config import GPTConfig, Seq2SeqConfig
from qkv.models.gpt import GPT
from qkv.models.seq2seq import Seq2SeqTransformer
from qkv.nn.attention import MultiHeadAttention
from qkv.nn.positional import sinusoidal_table

V = 23


def gpt(seed: int = 0, **overrides) -> GPT:
    """A small float64 GPT whose matrices are drawn large (std 0.3, not GPT-2's 0.02), so
    that what attention does to each token shows in the logits well above rounding."""
    torch.manual_seed(seed)
    options = dict(vocab_size=V, block_size=12, n_layer=1, n_head=2, n_embd=16)
    model = GPT(GPTConfig(**{**options, **overrides})).double().eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.3)
    return model


def seq2seq(seed: int = 0, **overrides) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    options = dict(vocab_size=V, max_len=12, n_encoder_layer=2, n_decoder_layer=1, n_embd=16)
    options.update(n_head=2, d_ff=32)
    return Seq2SeqTransformer(Seq2SeqConfig(**{**options, **overrides})).double().eval()


def tokens(*shape: int, seed: int = 1) -> torch.Tensor:
    """Random ids from 3 on (0, 1, 2 are the seq2seq model's pad, bos and eos)."""
    return torch.randint(3, V, shape, generator=torch.Generator().manual_seed(seed))


# -- "In fully connected layers, weights are static with respect to the input" ----------------


def test_attention_weights_depend_on_the_input_a_fully_connected_layers_do_not():
    """The mixing weights of a fully connected layer over the T tokens are its parameters:
    the same at every input, so its Jacobian is constant. Attention's mixing weights a_ij
    are computed from the input, so they, and its Jacobian, change with it."""
    torch.manual_seed(0)
    t, c = 5, 8
    attention = MultiHeadAttention(c, 1, bias=False).double().eval()
    fully_connected = torch.nn.Linear(t * c, t * c, bias=False).double()
    x1, x2 = torch.randn(2, 1, t, c, dtype=torch.float64)

    _, a1 = attention(x1, return_weights=True)
    _, a2 = attention(x2, return_weights=True)
    assert (a1 - a2).abs().max() > 1e-2  # (1, 1, T, T): different weights for different x

    def attend(x):
        return attention(x)

    def connect(x):
        return fully_connected(x.flatten(1)).view_as(x)

    assert (jacobian(attend, x1) - jacobian(attend, x2)).abs().max() > 1e-2
    torch.testing.assert_close(jacobian(connect, x1), jacobian(connect, x2))


def test_a_fully_connected_layer_is_linear_in_its_input_attention_is_not():
    """Without biases an FC layer is linear: f(2x) = 2 f(x), f(x + y) = f(x) + f(y).
    Attention is not, because the softmax's weights move with x (their values are linear)."""
    torch.manual_seed(0)
    attention = MultiHeadAttention(8, 2, bias=False).double().eval()
    fully_connected = torch.nn.Linear(8, 8, bias=False).double()
    x, y = torch.randn(2, 1, 6, 8, dtype=torch.float64)
    torch.testing.assert_close(fully_connected(2 * x), 2 * fully_connected(x))
    torch.testing.assert_close(fully_connected(x + y), fully_connected(x) + fully_connected(y))
    assert (attention(2 * x) - 2 * attention(x)).abs().max() > 1e-3
    assert (attention(x + y) - attention(x) - attention(y)).abs().max() > 1e-3


# -- "The self-attention mechanism is permutation invariant" --------------------------------


def test_a_non_causal_stack_without_positions_is_permutation_equivariant():
    """Precisely: permuting the source tokens permutes the encoder's outputs the same way
    (equivariance; invariance would leave them unchanged). Two full blocks of the paper's
    encoder, FFN and LayerNorm included, with `positional="none"`."""
    src = tokens(2, 9)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(2))
    blind = seq2seq(positional="none")
    memory, _ = blind.encode(src)
    permuted, _ = blind.encode(src[:, perm])
    torch.testing.assert_close(permuted, memory[:, perm])
    # the paper's sinusoids break the symmetry
    with_positions = seq2seq(positional="sinusoidal")
    memory, _ = with_positions.encode(src)
    permuted, _ = with_positions.encode(src[:, perm])
    assert (permuted - memory[:, perm]).abs().max() > 1e-2


@pytest.mark.parametrize("positional", ["learned", "sinusoidal", "rotary"])
def test_one_causal_layer_without_positions_sees_its_prefix_as_a_bag_of_tokens(positional):
    """A GPT without positions predicts the same next token for any order of the earlier
    tokens (the last one fixed): to one layer of attention the prefix is a set. Any kind
    of positions tells the orders apart."""
    idx = tokens(1, 8)
    shuffled = idx.clone()
    shuffled[0, :7] = idx[0, torch.randperm(7, generator=torch.Generator().manual_seed(3))]
    assert not torch.equal(shuffled, idx)
    blind = gpt(positional="none")
    torch.testing.assert_close(blind(shuffled)[0][:, -1], blind(idx)[0][:, -1])
    sighted = gpt(positional=positional)
    assert (sighted(shuffled)[0][:, -1] - sighted(idx)[0][:, -1]).abs().max() > 1e-4


def test_from_the_second_causal_layer_on_order_leaks_in_even_without_positions():
    """Where the notes go too far: a causal stack is not order-blind. Layer 1 at position j
    averages over j + 1 tokens, so its outputs depend on the prefix length and contents;
    layer 2 then sees those, and shuffling the prefix changes the last prediction
    (Haviv et al., 2022)."""
    idx = tokens(1, 8)
    shuffled = idx.clone()
    shuffled[0, :7] = idx[0, torch.randperm(7, generator=torch.Generator().manual_seed(3))]
    blind = gpt(positional="none", n_layer=2)
    assert (blind(shuffled)[0][:, -1] - blind(idx)[0][:, -1]).abs().max() > 1e-4


# -- "We add a positional encoding to the input embeddings" ----------------------------------


def run_blocks_by_hand(model: GPT, x: torch.Tensor) -> torch.Tensor:
    """The GPT after its embedding layer, applied to embedded inputs x (B, T, C)."""
    positions = torch.arange(x.size(1))
    for block in model.transformer.h:
        x = block(x, positions=positions)
    return model.lm_head(model.transformer.ln_f(x))  # (B, T, V)


def test_learned_positions_p_are_added_once_to_the_token_embeddings():
    """GPT: x_0 = E[idx] + P[0..T-1], then the blocks. (The notes add p_i to q, k and v
    separately; adding it to x once is the same for the first layer's q, k, v up to the
    projections, and is what GPT-2 and qkv do.) P is stored as (T, C): the notes' d x T
    matrix, transposed."""
    model = gpt(positional="learned", n_layer=2)
    p = model.transformer.wpe.weight  # (block_size, C)
    assert p.shape == (12, 16) and p.requires_grad
    idx = tokens(2, 7)
    by_hand = run_blocks_by_hand(model, model.transformer.wte.weight[idx] + p[:7])
    torch.testing.assert_close(model(idx)[0], by_hand)
    without_p = run_blocks_by_hand(model, model.transformer.wte.weight[idx])
    assert (model(idx)[0] - without_p).abs().max() > 1e-2


def test_the_papers_sinusoids_are_added_to_the_scaled_source_embeddings():
    """Encoder-decoder: x_0 = E[src] * sqrt(d_model) + PE[0..S-1] (paper, sections 3.4-3.5)."""
    model = seq2seq(positional="sinusoidal", n_encoder_layer=1)
    src = tokens(2, 6)
    x = model.src_embed.weight[src] * 16**0.5 + sinusoidal_table(12, 16)[:6].double()
    mask = model.source_mask(src)
    by_hand = model.encoder_norm(model.encoder[0](x, mask, torch.arange(6)))
    torch.testing.assert_close(model.encode(src)[0], by_hand)


# -- "Stacking more self-attention layers will just re-average the value vectors" -----------


def test_stacked_attention_without_ffn_stays_in_the_convex_hull_of_the_values():
    """Three attention layers (one head, no bias, no residual, no FFN): layer l maps h to
    A_l h W_l with A_l row-stochastic (softmax rows) and W_l = W_V^T W_O^T. So the stack is
    (A_3 A_2 A_1) x (W_1 W_2 W_3): every output is a convex combination of the input tokens
    mapped by one fixed matrix, and no output channel leaves the range of those mapped
    tokens. The FFN's element-wise ReLU is what breaks out of it (the notes' reason for it)."""
    torch.manual_seed(0)
    c, t = 8, 6
    layers = [MultiHeadAttention(c, 1, bias=False).double().eval() for _ in range(3)]
    x = torch.randn(1, t, c, dtype=torch.float64)
    h, mixing, values_map = x, torch.eye(t, dtype=torch.float64), torch.eye(c, dtype=torch.float64)
    for layer in layers:
        h, weights = layer(h, return_weights=True)
        mixing = weights[0, 0] @ mixing  # (T, T)
        w_v = layer.c_attn.weight[2 * c :]  # (C, C): the value rows of [W_Q; W_K; W_V]
        values_map = values_map @ w_v.T @ layer.c_proj.weight.T
    assert torch.all(mixing >= 0)
    torch.testing.assert_close(mixing.sum(-1), torch.ones(t, dtype=torch.float64))
    mapped = x[0] @ values_map  # (T, C): the input tokens, mapped once
    torch.testing.assert_close(h[0], mixing @ mapped)
    low, high = mapped.min(0).values, mapped.max(0).values
    assert torch.all(h[0] >= low - 1e-12) and torch.all(h[0] <= high + 1e-12)
