"""The feed-forward network, the residual connections, and the one Transformer block.

Shape legend: B batch, T time, S source length, C channels (d_model).

Attention only re-averages value vectors; it has no element-wise non-linearity, so stacking
attention layers alone stays (almost) linear in the values (the notes, "Adding non-linearity").
Each block therefore follows attention with a position-wise feed-forward network (paper,
section 3.3; the notes' m_i = MLP(output_i)):

    FFN(x) = W_2 ReLU(W_1 x + b_1) + b_2,    W_1: C -> 4C (or d_ff), W_2: back to C

Two training tricks from the notes wrap every sub-layer:
- residual connections, x + sublayer(...): the identity path lets gradients reach early layers
  unchanged (He et al., 2016; paper, section 3.1);
- layer normalisation (Ba et al., 2016): each token's vector rescaled to zero mean and unit
  variance, then a learned gain and bias, which keeps activations in a trainable range
  (RMSNorm, which only rescales, is selectable).

Where the norm goes is chosen when the block is built (`RESIDUALS`), never inside `forward`:
- post-norm, the paper's layout:  x = LN(x + Sublayer(x))
- pre-norm, GPT-2's layout and qkv's GPT default: x = x + Sublayer(LN(x)). Departing from the
  paper here is deliberate: with the norm inside the residual branch the identity path is
  clean, and deep stacks train without the paper's careful warm-up (Xiong et al., 2020).

`TransformerBlock` is the GPT's block (causal) and the encoder's (bidirectional, with a
padding mask); `DecoderBlock` is that block with cross-attention over the source between
its two sub-layers. Parameter names are GPT-2's (`ln_1`, `attn`, `ln_2`, `mlp`), so GPT-2
weights load by key.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from qkv.config.choices import ACTIVATIONS, NORM_PLACEMENTS, NORM_TYPES
from qkv.nn.attention import CrossAttention, KVCache, MultiHeadAttention

# A sub-layer maps (B, T, C) to (B, T, C) and, for attention, its weights (or None).
SubLayer = Callable[[Tensor], tuple[Tensor, Tensor | None]]


def make_norm(norm_type: str, n_embd: int, bias: bool = True) -> nn.Module:
    """LayerNorm (Ba et al., 2016): (x - mean) / std * g + b.  RMSNorm (Zhang & Sennrich,
    2019): x / rms(x) * g, no centring and no bias, a little cheaper and as good in practice."""
    if norm_type == "layernorm":
        return nn.LayerNorm(n_embd, bias=bias)
    if norm_type == "rmsnorm":
        return nn.RMSNorm(n_embd, eps=1e-5)
    raise ValueError(f"unknown norm type {norm_type!r}; choose one of {NORM_TYPES}")


class SquaredReLU(nn.Module):
    """ReLU(x)^2 (So et al., 2021, "Primer"): zero for x < 0, then x^2; modded-nanogpt's and
    nanochat's FFN activation."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x).square()


def make_activation(name: str) -> nn.Module:
    """ReLU as in the paper and the notes; GELU (tanh approximation) as in GPT-2; ReLU^2."""
    if name == "relu":
        return nn.ReLU()
    if name == "gelu":
        return nn.GELU(approximate="tanh")
    if name == "relu2":
        return SquaredReLU()
    raise ValueError(f"unknown activation {name!r}; choose one of {ACTIVATIONS}")


class FeedForward(nn.Module):
    """FFN(x) = W_2 act(W_1 x + b_1) + b_2, applied to each position separately.

    `c_fc` is W_1 and `c_proj` is W_2 (GPT-2's names); the hidden width defaults to 4C.
    """

    def __init__(
        self,
        n_embd: int,
        hidden: int | None = None,
        *,
        activation: str = "relu",
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = 4 * n_embd if hidden is None else hidden
        self.c_fc = nn.Linear(n_embd, hidden, bias=bias)
        self.act = make_activation(activation)
        self.c_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, C) -> (B, T, C)."""
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class SwiGLUFeedForward(nn.Module):
    """FFN(x) = W_2 (SiLU(W_1 x) * W_3 x), a gated feed-forward (Shazeer, 2020).

    The gate W_3 x decides, channel by channel, how much of SiLU(W_1 x) passes. W_1 and W_3
    are fused in `c_fc`. The hidden width defaults to 8C/3 (rounded up to a multiple of 8),
    so the three matrices hold as many weights as the plain 4C network's two.
    """

    def __init__(
        self, n_embd: int, hidden: int | None = None, *, bias: bool = True, dropout: float = 0.0
    ) -> None:
        super().__init__()
        hidden = -(-8 * n_embd // 3 // 8) * 8 if hidden is None else hidden
        self.c_fc = nn.Linear(n_embd, 2 * hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, C) -> (B, T, C)."""
        value, gate = self.c_fc(x).chunk(2, dim=-1)  # (B, T, hidden) each
        return self.dropout(self.c_proj(F.silu(value) * gate))


def make_feed_forward(
    activation: str, n_embd: int, hidden: int | None = None, *, bias: bool, dropout: float
) -> nn.Module:
    """The one FFN factory: SwiGLU for "swiglu", else FFN with that activation."""
    if activation == "swiglu":
        return SwiGLUFeedForward(n_embd, hidden, bias=bias, dropout=dropout)
    return FeedForward(n_embd, hidden, activation=activation, bias=bias, dropout=dropout)


# -- residual connections: the one home of "where does the norm go" -------------------------


def pre_norm_residual(
    x: Tensor, norm: nn.Module, sublayer: SubLayer
) -> tuple[Tensor, Tensor | None]:
    """x + Sublayer(LN(x)): the norm inside the residual branch (GPT-2, Xiong et al., 2020)."""
    out, weights = sublayer(norm(x))
    return x + out, weights


def post_norm_residual(
    x: Tensor, norm: nn.Module, sublayer: SubLayer
) -> tuple[Tensor, Tensor | None]:
    """LN(x + Sublayer(x)): the paper's layout (section 3.1)."""
    out, weights = sublayer(x)
    return norm(x + out), weights


RESIDUALS = {"pre": pre_norm_residual, "post": post_norm_residual}


def residual_for(norm: str) -> Callable[..., tuple[Tensor, Tensor | None]]:
    if norm not in RESIDUALS:
        raise ValueError(f"unknown norm placement {norm!r}; choose one of {NORM_PLACEMENTS}")
    return RESIDUALS[norm]


# The fields of a model config (GPTConfig, Seq2SeqConfig) that every block takes as they are.
BLOCK_FIELDS = ("n_kv_head", "activation", "norm", "norm_type", "bias", "dropout", "qk_norm")


def block_options(config: object) -> dict[str, object]:
    """{option: value} of `BLOCK_FIELDS` from a model config, for `TransformerBlock`; a
    field the config lacks (a kind written before the option existed) keeps the block's
    default."""
    return {name: getattr(config, name) for name in BLOCK_FIELDS if hasattr(config, name)}


class TransformerBlock(nn.Module):
    """x = Residual(x, SelfAttention);  x = Residual(x, FFN).

    Causal (the GPT's block: each token sees itself and its past) or bidirectional with a
    padding mask (the encoder's block: each source token sees every real source token).
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        *,
        d_ff: int | None = None,
        n_kv_head: int | None = None,
        activation: str = "relu",
        norm: str = "pre",
        norm_type: str = "layernorm",
        bias: bool = True,
        dropout: float = 0.0,
        causal: bool = True,
        rotary: nn.Module | None = None,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        self.causal = causal
        self.residual = residual_for(norm)  # a function: the norm's place holds no weights
        self.ln_1 = make_norm(norm_type, n_embd, bias)
        self.attn = MultiHeadAttention(
            n_embd,
            n_head,
            n_kv_head=n_kv_head,
            bias=bias,
            dropout=dropout,
            rotary=rotary,
            qk_norm=qk_norm,
        )
        self.ln_2 = make_norm(norm_type, n_embd, bias)
        self.mlp = make_feed_forward(activation, n_embd, d_ff, bias=bias, dropout=dropout)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        cache: KVCache | None = None,
        return_weights: bool = False,
        value_extra: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x: (B, T, C) -> (B, T, C); and the attention weights (B, H, T, T_k) if asked.

        `mask` (B, 1, 1, T_k) hides padding keys; `positions` (T,) are the tokens' absolute
        positions (for rotary embeddings); `cache` holds the earlier tokens' keys and values;
        `value_extra` (B, T, H_kv D) is added to the attention's values.
        """

        def attend(h: Tensor) -> tuple[Tensor, Tensor | None]:
            return self._self_attention(h, mask, positions, cache, return_weights, value_extra)

        x, weights = self.residual(x, self.ln_1, attend)
        x, _ = self.residual(x, self.ln_2, self._feed_forward)
        return (x, weights) if return_weights else x

    def _self_attention(
        self, h: Tensor, mask, positions, cache, return_weights: bool, value_extra=None
    ) -> tuple[Tensor, Tensor | None]:
        result = self.attn(
            h,
            mask=mask,
            causal=self.causal,
            positions=positions,
            cache=cache,
            return_weights=return_weights,
            value_extra=value_extra,
        )
        return result if return_weights else (result, None)

    def _feed_forward(self, h: Tensor) -> tuple[Tensor, None]:
        return self.mlp(h), None


class PreNormBlock(TransformerBlock):
    """x = x + SelfAttention(LN(x));  x = x + FFN(LN(x))   (GPT-2)."""

    def __init__(self, n_embd: int, n_head: int, **options) -> None:
        super().__init__(n_embd, n_head, norm="pre", **options)


class PostNormBlock(TransformerBlock):
    """x = LN(x + SelfAttention(x));  x = LN(x + FFN(x))   (the paper, section 3.1)."""

    def __init__(self, n_embd: int, n_head: int, **options) -> None:
        super().__init__(n_embd, n_head, norm="post", **options)


def make_block(norm: str, n_embd: int, n_head: int, **options) -> TransformerBlock:
    """A pre-norm or post-norm block, as the config says."""
    residual_for(norm)  # an unknown placement is an error naming the choices
    block = PreNormBlock if norm == "pre" else PostNormBlock
    return block(n_embd, n_head, **options)


class DecoderBlock(TransformerBlock):
    """The GPT's causal block with cross-attention over the source between its sub-layers.

    y = Residual(y, SelfAttention(., causal))          each target token sees its past
    y = Residual(y, CrossAttention(., memory, mask))   queries y, keys/values the source
    y = Residual(y, FFN)
    """

    def __init__(self, n_embd: int, n_head: int, *, norm: str = "post", **options) -> None:
        super().__init__(n_embd, n_head, norm=norm, causal=True, **options)  # qk_norm: self only
        bias, dropout = options.get("bias", True), options.get("dropout", 0.0)
        self.ln_cross = make_norm(options.get("norm_type", "layernorm"), n_embd, bias)
        self.cross_attn = CrossAttention(
            n_embd, n_head, n_kv_head=options.get("n_kv_head"), bias=bias, dropout=dropout
        )

    def forward(  # type: ignore[override]
        self,
        y: Tensor,
        memory: Tensor,
        memory_mask: Tensor | None = None,
        *,
        memory_kv: tuple[Tensor, Tensor] | None = None,
        positions: Tensor | None = None,
        cache: KVCache | None = None,
        return_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """y: (B, T, C); memory: the encoder's output (B, S, C), memory_mask (B, 1, 1, S).

        `memory_kv`: the memory's keys and values from `cross_attn.project_memory`, when a
        decoder that generates step by step has computed them once (else they are computed
        here); `cache` holds the earlier target tokens' keys and values.

        Returns y (B, T, C) and, when asked, the self-attention weights (B, H, T, T_past + T)
        and the cross-attention weights (B, H, T, S).
        """

        def attend(h: Tensor) -> tuple[Tensor, Tensor | None]:
            return self._self_attention(h, None, positions, cache, return_weights)

        if memory_kv is None:
            memory_kv = self.cross_attn.project_memory(memory)

        def attend_source(h: Tensor) -> tuple[Tensor, Tensor | None]:
            result = self.cross_attn(h, memory_kv, mask=memory_mask, return_weights=return_weights)
            return result if return_weights else (result, None)

        y, self_weights = self.residual(y, self.ln_1, attend)
        y, cross_weights = self.residual(y, self.ln_cross, attend_source)
        y, _ = self.residual(y, self.ln_2, self._feed_forward)
        return (y, self_weights, cross_weights) if return_weights else y
