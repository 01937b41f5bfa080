"""The encoder-decoder: padding, causality, cross-attention masks, weights, cached decoding."""

from __future__ import annotations

import pytest
import torch

from qkv.config.seq2seq import (
    BOS_ID,
    PAD_ID,
    SEQ2SEQ_PRESETS,
    Seq2SeqConfig,
    Seq2SeqRunConfig,
)
from qkv.models.seq2seq import Seq2SeqTransformer
from qkv.nn.attention import CrossAttention, MultiHeadAttention
from qkv.nn.blocks import (
    DecoderBlock,
    TransformerBlock,
    make_norm,
    post_norm_residual,
    pre_norm_residual,
)

V = 17


def make_model(seed: int = 0, **overrides) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    options = dict(
        vocab_size=V, max_len=24, n_encoder_layer=2, n_decoder_layer=2, n_embd=32, n_head=4,
        d_ff=64, dropout=0.0,
    )  # fmt: skip
    options.update(overrides)
    return Seq2SeqTransformer(Seq2SeqConfig(**options)).eval()


def random_ids(*shape: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, V, shape, generator=generator)


LAYOUTS = [dict(norm="post"), dict(norm="pre"), dict(positional="learned")]


@pytest.mark.parametrize("layout", LAYOUTS, ids=["post", "pre", "learned"])
def test_source_padding_changes_nothing_at_the_real_positions(layout):
    model = make_model(**layout)
    src = random_ids(2, 6)
    padded = torch.cat([src, torch.full((2, 4), PAD_ID)], dim=1)  # (2, 10)
    tgt_in = torch.cat([torch.full((2, 1), BOS_ID), random_ids(2, 4, seed=2)], dim=1)
    memory, _ = model.encode(src)
    memory_padded, _ = model.encode(padded)
    torch.testing.assert_close(memory_padded[:, :6], memory, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(padded, tgt_in), model(src, tgt_in), atol=1e-5, rtol=1e-5)


def test_sentences_of_different_lengths_in_one_batch_equal_their_own_runs():
    model = make_model()
    short, long = random_ids(1, 3, seed=3), random_ids(1, 7, seed=4)
    batch = torch.full((2, 7), PAD_ID)
    batch[0, :3], batch[1] = short[0], long[0]
    tgt_in = torch.cat([torch.full((2, 1), BOS_ID), random_ids(2, 3, seed=5)], dim=1)
    together = model(batch, tgt_in)
    torch.testing.assert_close(together[:1], model(short, tgt_in[:1]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together[1:], model(long, tgt_in[1:]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS[:2], ids=["post", "pre"])
def test_decoder_is_causal(layout):
    model = make_model(**layout)
    src, tgt = random_ids(2, 5), random_ids(2, 8, seed=6)
    changed = tgt.clone()
    changed[:, 5:] = random_ids(2, 3, seed=7)
    before, after = model(src, tgt), model(src, changed)
    torch.testing.assert_close(after[:, :5], before[:, :5])
    assert not torch.allclose(after[:, 5:], before[:, 5:])


def test_encoder_is_bidirectional():
    model = make_model()
    src = random_ids(1, 6)
    changed = src.clone()
    changed[0, -1] = (src[0, -1] - 3 + 1) % (V - 3) + 3
    memory, _ = model.encode(src)
    memory_changed, _ = model.encode(changed)
    assert not torch.allclose(memory[:, 0], memory_changed[:, 0])  # the first token sees the last


def test_attention_weights_have_the_documented_shapes_and_ignore_source_padding():
    model = make_model()
    src = torch.cat([random_ids(2, 5), torch.full((2, 3), PAD_ID)], dim=1)  # (B=2, S=8)
    src[1, 5:] = random_ids(1, 3, seed=9)  # the second sentence has no padding
    tgt_in = random_ids(2, 4, seed=8)
    logits, maps = model(src, tgt_in, return_weights=True)
    torch.testing.assert_close(logits, model(src, tgt_in), atol=1e-5, rtol=1e-5)
    assert set(maps) == {"encoder_self", "decoder_self", "cross"}
    assert [w.shape for w in maps["encoder_self"]] == [(2, 4, 8, 8)] * 2
    assert [w.shape for w in maps["decoder_self"]] == [(2, 4, 4, 4)] * 2
    assert [w.shape for w in maps["cross"]] == [(2, 4, 4, 8)] * 2
    for weights in maps["cross"] + maps["encoder_self"]:
        assert torch.all(weights[0, ..., 5:] == 0)  # exactly zero on the padding
        assert torch.all(weights[1, ..., 5:] > 0)
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    for weights in maps["decoder_self"]:
        assert torch.all(weights.triu(diagonal=1) == 0)  # never the future


def test_cross_attention_equals_multi_head_attention_over_a_context():
    torch.manual_seed(0)
    ours = CrossAttention(32, 4)
    reference = MultiHeadAttention(32, 4)
    reference.load_state_dict(ours.state_dict())
    x, memory = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[0, ..., 4:] = False
    expected = reference(x, memory, mask=mask)
    torch.testing.assert_close(ours(x, ours.project_memory(memory), mask=mask), expected)


def test_residual_layouts_match_their_equations():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8)
    double = lambda h: (2 * h, None)  # noqa: E731
    norm = make_norm("layernorm", 8)
    torch.testing.assert_close(pre_norm_residual(x, norm, double)[0], x + 2 * norm(x))
    torch.testing.assert_close(post_norm_residual(x, norm, double)[0], norm(x + 2 * x))


def test_blocks_return_their_attention_weights_only_when_asked():
    torch.manual_seed(0)
    encoder = TransformerBlock(16, 2, d_ff=32, norm="post", causal=False)
    decoder = DecoderBlock(16, 2, d_ff=32)
    x, y = torch.randn(1, 4, 16), torch.randn(1, 3, 16)
    out = encoder(x)
    assert isinstance(out, torch.Tensor) and out.shape == x.shape
    out, weights = encoder(x, return_weights=True)
    assert weights.shape == (1, 2, 4, 4)
    kv = decoder.cross_attn.project_memory(x)
    assert isinstance(decoder(y, x), torch.Tensor)
    out, self_w, cross_w = decoder(y, x, memory_kv=kv, return_weights=True)
    assert out.shape == y.shape and self_w.shape == (1, 2, 3, 3) and cross_w.shape == (1, 2, 3, 4)


def test_embeddings_are_shared_three_ways_and_scaled_by_sqrt_d_model():
    model = make_model()
    assert model.src_embed.weight is model.tgt_embed.weight is model.lm_head.weight
    untied = make_model(tie_embeddings=False)
    assert untied.src_embed.weight is not untied.tgt_embed.weight
    ids = random_ids(1, 4)
    expected = model.src_embed(ids) * 32**0.5 + model.positions(torch.arange(4))
    torch.testing.assert_close(model._embed(model.src_embed, ids)[0], expected)


@pytest.mark.parametrize("use_cache", [True, False])
def test_step_by_step_decoding_gives_the_full_forward_logits(use_cache):
    model = make_model()
    src, tgt = random_ids(3, 6), random_ids(3, 5, seed=2)
    full = model(src, tgt)  # (3, 5, V)
    session = model.start_decoding(src, use_cache=use_cache)
    steps = torch.stack([session.step(tgt[:, t : t + 1]) for t in range(5)], dim=1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)


def test_presets_and_the_config_round_trip():
    base = Seq2SeqConfig(**SEQ2SEQ_PRESETS["base"])
    assert (base.n_encoder_layer, base.n_decoder_layer, base.n_embd) == (6, 6, 512)
    assert (base.n_head, base.d_ff, base.dropout) == (8, 2048, 0.1)
    assert base.norm == "post" and base.positional == "sinusoidal"
    config = Seq2SeqRunConfig().with_overrides(["model.n_embd=64", "warmup_steps=7"])
    tree = config.to_dict()
    assert tree["kind"] == "seq2seq"
    assert Seq2SeqRunConfig.from_dict(tree) == config
    model = Seq2SeqTransformer(Seq2SeqConfig(vocab_size=100, **SEQ2SEQ_PRESETS["base"]))
    assert 44e6 < model.num_params() < 45e6  # the paper's 65M has a 37k-token vocabulary
