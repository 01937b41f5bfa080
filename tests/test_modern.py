"""The modern choices: rotary positions, RMSNorm, SwiGLU, grouped-query attention."""

import pytest
import torch
import torch.nn.functional as F

from qkv.config import GPTConfig
from qkv.errors import QkvError
from qkv.models.gpt import GPT
from qkv.nn.attention import MultiHeadAttention
from qkv.nn.blocks import SwiGLUFeedForward, make_norm
from qkv.nn.positional import RotaryEmbedding


def test_rotary_scores_depend_only_on_the_offset():
    rope = RotaryEmbedding(16, 32)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 1, 16, generator=g, dtype=torch.float64)
    k = torch.randn(1, 1, 1, 16, generator=g, dtype=torch.float64)

    def score(m, n):
        qm = rope(q, torch.tensor([m]))
        kn = rope(k, torch.tensor([n]))
        return (qm * kn).sum().item()

    # the angle tables are float32, so equal up to float32 rounding
    assert score(3, 1) == pytest.approx(score(10, 8), abs=1e-5)
    assert score(5, 5) == pytest.approx(score(0, 0), abs=1e-5)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)


def test_rotary_preserves_lengths_and_position_zero_is_identity():
    rope = RotaryEmbedding(8, 8)
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    rotated = rope(x, torch.arange(5))
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rotated[:, :, 0], x[:, :, 0])


def test_rmsnorm_matches_its_formula():
    norm = make_norm("rmsnorm", 8).double()
    x = torch.randn(3, 8, dtype=torch.float64)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected)


def test_swiglu_matches_its_formula():
    torch.manual_seed(0)
    ffn = SwiGLUFeedForward(12).double()
    x = torch.randn(2, 4, 12, dtype=torch.float64)
    hidden = ffn.c_proj.in_features
    w1, w3 = ffn.c_fc.weight[:hidden], ffn.c_fc.weight[hidden:]
    b1, b3 = ffn.c_fc.bias[:hidden], ffn.c_fc.bias[hidden:]
    expected = ffn.c_proj(F.silu(x @ w1.T + b1) * (x @ w3.T + b3))
    torch.testing.assert_close(ffn(x), expected)
    assert hidden == 32  # 8 * 12 / 3, a multiple of 8


def test_grouped_query_attention_equals_mha_with_repeated_kv_heads():
    torch.manual_seed(0)
    c, h, h_kv = 16, 4, 2
    gqa = MultiHeadAttention(c, h, n_kv_head=h_kv).double().eval()
    mha = MultiHeadAttention(c, h).double().eval()
    d = c // h
    with torch.no_grad():
        w_q, w_k, w_v = gqa.c_attn.weight.split([c, h_kv * d, h_kv * d])
        b_q, b_k, b_v = gqa.c_attn.bias.split([c, h_kv * d, h_kv * d])

        def repeat(w):  # each kv head serves h / h_kv consecutive query heads
            return w.view(h_kv, d, -1).repeat_interleave(h // h_kv, dim=0).reshape(c, -1)

        mha.c_attn.weight.copy_(torch.cat([w_q, repeat(w_k), repeat(w_v)]))
        mha.c_attn.bias.copy_(
            torch.cat([b_q, repeat(b_k[:, None])[:, 0], repeat(b_v[:, None])[:, 0]])
        )
        mha.c_proj.load_state_dict(gqa.c_proj.state_dict())
    x = torch.randn(2, 5, c, dtype=torch.float64)
    torch.testing.assert_close(gqa(x, causal=True), mha(x, causal=True))
    assert gqa.c_attn.weight.shape == (c + 2 * h_kv * d, c)


@pytest.mark.parametrize(
    "variant",
    [
        {"positional": "rotary"},
        {"norm_type": "rmsnorm"},
        {"activation": "swiglu"},
        {"n_kv_head": 1},
        {"positional": "rotary", "norm_type": "rmsnorm", "activation": "swiglu", "n_kv_head": 2},
    ],
)
def test_every_variant_is_causal_and_trains(variant):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=30, block_size=16, n_layer=2, n_head=4, n_embd=32, **variant))
    idx = torch.randint(0, 30, (2, 16))
    changed = idx.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % 30
    model.eval()
    torch.testing.assert_close(model(idx)[0][:, :9], model(changed)[0][:, :9])
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x, y = idx[:, :-1], idx[:, 1:]
    first = model(x, y)[1].item()
    for _ in range(60):
        loss = model(x, y)[1]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3 * first


def test_rotary_model_has_no_position_table():
    model = GPT(GPTConfig(vocab_size=30, positional="rotary"))
    assert not any("wpe" in name for name in model.state_dict())


def test_bad_kv_head_count_is_refused():
    with pytest.raises(QkvError, match="n_kv_head"):
        GPTConfig(vocab_size=30, n_head=4, n_kv_head=3)
