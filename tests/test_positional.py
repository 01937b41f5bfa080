"""Positional encodings: the closed form, and why self-attention needs them."""

import math

import pytest
import torch

from qkv.nn.attention import MultiHeadAttention
from qkv.nn.positional import (
    LearnedPositionalEmbedding,
    SinusoidalPositionalEncoding,
    sinusoidal_table,
)


def test_sinusoidal_values_match_the_closed_form():
    table = sinusoidal_table(50, 16)
    for pos in (0, 1, 7, 49):
        for i in range(8):
            angle = pos / 10000 ** (2 * i / 16)
            assert math.isclose(table[pos, 2 * i].item(), math.sin(angle), abs_tol=1e-6)
            assert math.isclose(table[pos, 2 * i + 1].item(), math.cos(angle), abs_tol=1e-6)


def test_sinusoidal_encoding_has_no_parameters_and_is_not_saved():
    pe = SinusoidalPositionalEncoding(32, 8)
    assert list(pe.parameters()) == []
    assert pe.state_dict() == {}
    torch.testing.assert_close(pe(torch.arange(5)), sinusoidal_table(32, 8)[:5])


def test_learned_positions_are_the_notes_matrix_p_one_vector_per_position():
    wpe = LearnedPositionalEmbedding(10, 4)
    assert wpe.weight.shape == (10, 4) and wpe.weight.requires_grad
    torch.testing.assert_close(wpe(torch.tensor([3])), wpe.weight[3:4])


def test_with_positions_self_attention_is_no_longer_permutation_equivariant():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(1, 9, 16)
    perm = torch.randperm(9)
    positions = sinusoidal_table(9, 16)
    with_pos = mha(x + positions)
    permuted_with_pos = mha(x[:, perm] + positions)
    assert not torch.allclose(permuted_with_pos, with_pos[:, perm], atol=1e-4)


def test_distinct_positions_get_distinct_encodings():
    table = sinusoidal_table(128, 32)
    distances = torch.cdist(table, table)
    off_diagonal = distances[~torch.eye(128, dtype=torch.bool)]
    assert off_diagonal.min() > 1e-3


def test_a_model_without_positions_has_no_table_to_draw():
    from qkv.config import GPTConfig
    from qkv.errors import QkvError
    from qkv.models.gpt import GPT
    from qkv.viz.positions import positional_table

    config = GPTConfig(vocab_size=10, positional="none")
    model = GPT(config)
    assert "wpe" not in model.transformer and model.transformer.h[0].attn.rotary is None
    with pytest.raises(QkvError, match=r"no positions to draw \(model.positional=none\)"):
        positional_table("none", config, model)
