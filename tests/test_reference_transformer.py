"""qkv's encoder-decoder against PyTorch's own reference, torch.nn.Transformer.

qkv's other tests check its layers against formulas written by the same hands; these check
them against an implementation written elsewhere. Each test builds a qkv module with random
weights (biases, LayerNorm gains and biases included: nothing left at 0 or 1), copies those
weights into the matching torch module, runs both in float64 on the same inputs and asks for
the same output to 1e-10, on both of qkv's attention paths: torch's fused kernel (the
default) and the explicit softmax(q k^T / sqrt(d_k)) v (taken whenever weights are asked for).

Conventions that differ, and how the reference is set up to match (none changes the math):
- masks: qkv's are True where a query *may* attend; torch's key padding masks are True at
  the padding to be ignored, so the reference gets `~real`.
- final norms: qkv's pre-norm stacks end in one more LayerNorm and its post-norm stacks in
  none (each post-norm layer already ends in one). nn.Transformer's default encoder and
  decoder always add a final LayerNorm, so the reference gets its own stacks, whose `norm`
  is a LayerNorm for pre-norm and None for post-norm.
- target padding: qkv's decoder takes no target mask. Padding only follows the real tokens,
  which the causal mask already hides from them, so at the real positions torch's
  `tgt_key_padding_mask` changes nothing (checked below); at padding positions the two
  differ, and nothing reads those.
- LayerNorm eps (1e-5), biases everywhere and ReLU are the defaults on both sides.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from qkv.config.choices import PAD_ID
from qkv.config.seq2seq import Seq2SeqConfig
from qkv.models.seq2seq import Seq2SeqTransformer
from qkv.nn.attention import key_padding_mask
from qkv.nn.blocks import DecoderBlock, make_block

D_MODEL, N_HEAD, D_FF, N_LAYER, VOCAB = 16, 4, 32, 2, 13
SRC_LENGTHS, TGT_LENGTHS = (7, 4, 1), (6, 3, 5)  # one batch, right-padded, never empty
S, T = max(SRC_LENGTHS), max(TGT_LENGTHS)
F64 = torch.float64
NORMS = ["post", "pre"]  # the paper's layout, and GPT-2's (torch: norm_first=True)
PATHS = ["fused", "explicit"]  # qkv takes the explicit path when asked for the weights


def _layer_names(modules: dict[str, str]) -> dict[str, str]:
    """{torch parameter: qkv parameter} for one layer, from {torch module: qkv module}.

    torch's `in_proj_weight` stacks [W_Q; W_K; W_V] by rows (3C, C), which is the layout of
    qkv's fused `c_attn`, so it is copied as it is; the biases likewise.
    """
    attention = {
        "in_proj_weight": "c_attn.weight",
        "in_proj_bias": "c_attn.bias",
        "out_proj.weight": "c_proj.weight",
        "out_proj.bias": "c_proj.bias",
    }
    plain = {"weight": "weight", "bias": "bias"}
    names = {}
    for theirs, ours in modules.items():
        inner = attention if theirs.endswith("attn") else plain
        names.update({f"{theirs}.{t}": f"{ours}.{q}" for t, q in inner.items()})
    return names


FFN = {"linear1": "mlp.c_fc", "linear2": "mlp.c_proj"}
ENCODER_LAYER = _layer_names({"self_attn": "attn", **FFN, "norm1": "ln_1", "norm2": "ln_2"})
DECODER_LAYER = _layer_names(
    {
        "self_attn": "attn",
        "multihead_attn": "cross_attn",
        **FFN,
        "norm1": "ln_1",  # before/after the causal self-attention
        "norm2": "ln_cross",  # before/after the cross-attention
        "norm3": "ln_2",  # before/after the feed-forward network
    }
)


def model_names(norm: str) -> dict[str, str]:
    """{nn.Transformer parameter: Seq2SeqTransformer parameter}, every layer and final norm."""
    names = {}
    for i in range(N_LAYER):
        for part, layer in (("encoder", ENCODER_LAYER), ("decoder", DECODER_LAYER)):
            names.update({f"{part}.layers.{i}.{t}": f"{part}.{i}.{q}" for t, q in layer.items()})
    if norm == "pre":
        for part in ("encoder", "decoder"):
            names.update({f"{part}.norm.{p}": f"{part}_norm.{p}" for p in ("weight", "bias")})
    return names


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter ~ N(0, 0.3^2), LayerNorm gains ~ N(1, 0.3^2); float64, eval mode."""
    module.double().eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=generator, dtype=F64))
        for m in module.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.add_(1.0)
    return module


def copy_weights(reference: nn.Module, ours: nn.Module, names: dict[str, str]) -> None:
    """Load qkv's weights into the reference; strict, so none of the reference's is left out."""
    state = ours.state_dict()
    reference.load_state_dict({theirs: state[q] for theirs, q in names.items()})


def real_mask(lengths: tuple[int, ...], width: int) -> Tensor:
    """(B, width) boolean, True at the first lengths[b] positions of row b."""
    return torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]


def run(module: nn.Module, *args, path: str, **kwargs) -> Tensor:
    """qkv's module on the fused path, or on the explicit one (asking for the weights)."""
    if path == "explicit":
        return module(*args, return_weights=True, **kwargs)[0]
    return module(*args, **kwargs)


def torch_layer(kind: type[nn.Module], norm: str) -> nn.Module:
    """torch's encoder or decoder layer with qkv's settings: ReLU, no dropout, (B, T, C)."""
    return kind(
        D_MODEL, N_HEAD, D_FF, dropout=0.0, activation="relu", batch_first=True,
        norm_first=norm == "pre", dtype=F64,
    ).eval()  # fmt: skip


def causal_reference_mask(t: int) -> Tensor:
    """torch's causal mask, boolean like its padding masks: True above the diagonal (key j >
    query i), where attention is *not* allowed."""
    return torch.ones(t, t, dtype=torch.bool).triu(diagonal=1)


def assert_equal64(actual: Tensor, expected: Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=1e-10, rtol=0)


def test_the_name_maps_cover_every_qkv_weight():
    """The copy is complete both ways: each qkv weight has a torch counterpart (torch's side
    is checked by the strict load), except the embedding and output matrix nn.Transformer
    does not have."""
    assert set(ENCODER_LAYER.values()) == set(make_block("post", D_MODEL, N_HEAD).state_dict())
    assert set(DECODER_LAYER.values()) == set(DecoderBlock(D_MODEL, N_HEAD).state_dict())
    for norm in NORMS:
        config = Seq2SeqConfig(vocab_size=VOCAB, n_embd=D_MODEL, n_head=N_HEAD, norm=norm)
        left = set(Seq2SeqTransformer(config).state_dict()) - set(model_names(norm).values())
        assert left == {"src_embed.weight", "tgt_embed.weight", "lm_head.weight"}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("padded", [False, True], ids=["no-mask", "padding"])
@pytest.mark.parametrize("norm", NORMS)
def test_encoder_layer_equals_torch_encoder_layer(norm, padded, path):
    """qkv's bidirectional TransformerBlock (the encoder's) = nn.TransformerEncoderLayer.

    Same weights, same input; with a source padding mask, or none. Every position is
    compared, padding too: a padding query still sees the real keys on both sides.
    """
    torch.manual_seed(1)
    block = randomize(make_block(norm, D_MODEL, N_HEAD, d_ff=D_FF, causal=False))
    reference = torch_layer(nn.TransformerEncoderLayer, norm)
    copy_weights(reference, block, ENCODER_LAYER)
    x = torch.randn(len(SRC_LENGTHS), S, D_MODEL, dtype=F64)
    real = real_mask(SRC_LENGTHS, S) if padded else None
    mask = None if real is None else key_padding_mask(real)
    expected = reference(x, src_key_padding_mask=None if real is None else ~real)
    assert_equal64(run(block, x, mask, path=path), expected)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("norm", NORMS)
def test_decoder_layer_equals_torch_decoder_layer(norm, path):
    """qkv's DecoderBlock = nn.TransformerDecoderLayer: causal self-attention, cross-attention
    over a padded memory (memory_key_padding_mask), FFN, in the chosen norm order.

    Without a target padding mask every position agrees; with torch's tgt_key_padding_mask
    the real target positions still agree, which is why qkv needs no target mask.
    """
    torch.manual_seed(2)
    block = randomize(DecoderBlock(D_MODEL, N_HEAD, norm=norm, d_ff=D_FF))
    reference = torch_layer(nn.TransformerDecoderLayer, norm)
    copy_weights(reference, block, DECODER_LAYER)
    y = torch.randn(len(TGT_LENGTHS), T, D_MODEL, dtype=F64)
    memory = torch.randn(len(SRC_LENGTHS), S, D_MODEL, dtype=F64)
    src_real, tgt_real = real_mask(SRC_LENGTHS, S), real_mask(TGT_LENGTHS, T)
    actual = run(block, y, memory, key_padding_mask(src_real), path=path)

    masks = dict(tgt_mask=causal_reference_mask(T), tgt_is_causal=True)
    expected = reference(y, memory, memory_key_padding_mask=~src_real, **masks)
    assert_equal64(actual, expected)
    with_target_padding = reference(
        y, memory, memory_key_padding_mask=~src_real, tgt_key_padding_mask=~tgt_real, **masks
    )
    assert_equal64(actual[tgt_real], with_target_padding[tgt_real])
    # the memory mask is doing work here: without it the reference gives other outputs
    unmasked = reference(y, memory, **masks)
    assert not torch.allclose(unmasked, expected, atol=1e-6)


def reference_transformer(norm: str) -> nn.Transformer:
    """nn.Transformer shaped like qkv's model, with final norms only where qkv has them."""

    def final_norm() -> nn.LayerNorm | None:
        return nn.LayerNorm(D_MODEL, dtype=F64) if norm == "pre" else None

    encoder = nn.TransformerEncoder(
        torch_layer(nn.TransformerEncoderLayer, norm), N_LAYER, norm=final_norm(),
        enable_nested_tensor=False,  # nested tensors would zero the padding positions
    )  # fmt: skip
    decoder = nn.TransformerDecoder(
        torch_layer(nn.TransformerDecoderLayer, norm), N_LAYER, norm=final_norm()
    )
    return nn.Transformer(
        D_MODEL, N_HEAD, custom_encoder=encoder, custom_decoder=decoder, batch_first=True,
        dtype=F64,
    ).eval()  # fmt: skip


def paper_positions(t: int) -> Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/C)), PE(pos, 2i+1) = cos(...), (T, C).

    Computed here from the paper's formula, then rounded through float32 as qkv stores its
    table (a fixed buffer; the model's `.double()` widens the rounded values).
    """
    pos = torch.arange(t, dtype=F64)[:, None]
    angle = pos / 10000.0 ** (torch.arange(0, D_MODEL, 2, dtype=F64) / D_MODEL)
    table = torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1).flatten(-2)  # interleave
    return table.float().to(F64)


def token_ids(lengths: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """(B, max length) ids of real tokens (never a special one), PAD_ID after each length."""
    ids = torch.randint(3, VOCAB, (len(lengths), max(lengths)), generator=generator)
    return ids.masked_fill(~real_mask(lengths, max(lengths)), PAD_ID)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("norm", NORMS)
def test_seq2seq_logits_equal_torch_transformer(norm, path):
    """The whole Seq2SeqTransformer forward = E[ids] * sqrt(C) + PE, then nn.Transformer
    (every layer and final norm with qkv's weights, all three padding masks and the causal
    mask), then qkv's output projection (tied to E), at every real target position.

    qkv derives its source mask from PAD_ID itself; the reference is handed the same masks.
    """
    config = Seq2SeqConfig(
        vocab_size=VOCAB, max_len=16, n_encoder_layer=N_LAYER, n_decoder_layer=N_LAYER,
        n_embd=D_MODEL, n_head=N_HEAD, d_ff=D_FF, norm=norm, activation="relu",
        positional="sinusoidal", dropout=0.0,
    )  # fmt: skip
    model = randomize(Seq2SeqTransformer(config), seed=3)
    reference = reference_transformer(norm)
    copy_weights(reference, model, model_names(norm))
    generator = torch.Generator().manual_seed(4)
    src, tgt_in = token_ids(SRC_LENGTHS, generator), token_ids(TGT_LENGTHS, generator)
    src_real, tgt_real = src != PAD_ID, tgt_in != PAD_ID

    def embed(ids: Tensor) -> Tensor:  # (B, T) -> (B, T, C), the paper's section 3.4-3.5
        return model.src_embed.weight[ids] * math.sqrt(D_MODEL) + paper_positions(ids.size(1))

    hidden = reference(
        embed(src), embed(tgt_in), tgt_mask=causal_reference_mask(T), tgt_is_causal=True,
        src_key_padding_mask=~src_real, memory_key_padding_mask=~src_real,
        tgt_key_padding_mask=~tgt_real,
    )  # fmt: skip
    expected = model.lm_head(hidden)  # (B, T, V)
    actual = run(model, src, tgt_in, path=path)
    assert actual.shape == (len(TGT_LENGTHS), T, VOCAB)
    assert_equal64(actual[tgt_real], expected[tgt_real])
