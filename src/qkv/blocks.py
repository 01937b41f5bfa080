"""The feed-forward network and the Transformer blocks built around attention.

Shape legend: B batch, T time, C channels (d_model).

Attention only re-averages value vectors; it has no element-wise non-linearity, so stacking
attention layers alone stays (almost) linear in the values (the notes, "Adding non-linearity").
Each block therefore follows attention with a position-wise feed-forward network (paper,
section 3.3; the notes' m_i = MLP(output_i)):

    FFN(x) = W_2 ReLU(W_1 x + b_1) + b_2,    W_1: C -> 4C, W_2: 4C -> C

Two training tricks from the notes wrap both sub-layers:
- residual connections, x + sublayer(...): the identity path lets gradients reach early layers
  unchanged (He et al., 2016; paper, section 3.1);
- layer normalisation (Ba et al., 2016): each token's vector rescaled to zero mean and unit
  variance, then a learned gain and bias, which keeps activations in a trainable range
  (RMSNorm, which only rescales, is selectable).

Where the norm goes is chosen when the block is built, never inside `forward`:
- post-norm, the paper's layout:  x = LN(x + Sublayer(x))
- pre-norm, GPT-2's layout and qkv's default: x = x + Sublayer(LN(x)). Departing from the
  paper here is deliberate: with the norm inside the residual branch the identity path is
  clean, and deep stacks train without the paper's careful warm-up (Xiong et al., 2020).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from qkv.attention import CrossAttention, KVCache, MultiHeadAttention

ACTIVATIONS = ("relu", "gelu", "swiglu")
NORM_PLACEMENTS = ("pre", "post")
NORM_TYPES = ("layernorm", "rmsnorm")


def make_norm(norm_type: str, n_embd: int, bias: bool = True) -> nn.Module:
    """LayerNorm (Ba et al., 2016): (x - mean) / std * g + b.  RMSNorm (Zhang & Sennrich,
    2019): x / rms(x) * g, no centring and no bias, a little cheaper and as good in practice."""
    if norm_type == "layernorm":
        return nn.LayerNorm(n_embd, bias=bias)
    if norm_type == "rmsnorm":
        return nn.RMSNorm(n_embd, eps=1e-5)
    raise ValueError(f"unknown norm type {norm_type!r}; choose one of {NORM_TYPES}")


def make_activation(name: str) -> nn.Module:
    """ReLU as in the paper and the notes; GELU (tanh approximation) as in GPT-2."""
    if name == "relu":
        return nn.ReLU()
    if name == "gelu":
        return nn.GELU(approximate="tanh")
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


def make_feed_forward(activation: str, n_embd: int, *, bias: bool, dropout: float) -> nn.Module:
    if activation == "swiglu":
        return SwiGLUFeedForward(n_embd, bias=bias, dropout=dropout)
    return FeedForward(n_embd, activation=activation, bias=bias, dropout=dropout)


class PreNormBlock(nn.Module):
    """x = x + SelfAttention(LN(x));  x = x + FFN(LN(x))   (GPT-2)."""

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        *,
        n_kv_head: int | None = None,
        activation: str = "relu",
        norm_type: str = "layernorm",
        bias: bool = True,
        dropout: float = 0.0,
        causal: bool = True,
        rotary: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.causal = causal
        self.ln_1 = make_norm(norm_type, n_embd, bias)
        self.attn = MultiHeadAttention(
            n_embd, n_head, n_kv_head=n_kv_head, bias=bias, dropout=dropout, rotary=rotary
        )
        self.ln_2 = make_norm(norm_type, n_embd, bias)
        self.mlp = make_feed_forward(activation, n_embd, bias=bias, dropout=dropout)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        cache: KVCache | None = None,
        return_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x: (B, T, C) -> (B, T, C); and the attention weights (B, H, T, T_k) if asked."""
        attended = self._attend(self.ln_1(x), mask, positions, cache, return_weights)
        attended, weights = attended if return_weights else (attended, None)
        x = x + attended
        x = x + self.mlp(self.ln_2(x))
        return (x, weights) if return_weights else x

    def _attend(self, x: Tensor, mask, positions, cache, return_weights=False):
        """The attention sub-layer; (output, weights) when `return_weights`, else the output."""
        return self.attn(
            x,
            mask=mask,
            causal=self.causal,
            positions=positions,
            cache=cache,
            return_weights=return_weights,
        )


class PostNormBlock(PreNormBlock):
    """x = LN(x + SelfAttention(x));  x = LN(x + FFN(x))   (the paper, section 3.1)."""

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        cache: KVCache | None = None,
        return_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x: (B, T, C) -> (B, T, C); and the attention weights (B, H, T, T_k) if asked."""
        attended = self._attend(x, mask, positions, cache, return_weights)
        attended, weights = attended if return_weights else (attended, None)
        x = self.ln_1(x + attended)
        x = self.ln_2(x + self.mlp(x))
        return (x, weights) if return_weights else x


def make_block(norm: str, n_embd: int, n_head: int, **kwargs) -> PreNormBlock:
    """Build a pre-norm or post-norm block, as the config says."""
    if norm == "pre":
        return PreNormBlock(n_embd, n_head, **kwargs)
    if norm == "post":
        return PostNormBlock(n_embd, n_head, **kwargs)
    raise ValueError(f"unknown norm placement {norm!r}; choose one of {NORM_PLACEMENTS}")


# -- the encoder-decoder's blocks (the paper, section 3.1) -----------------------------------


def _with_weights(result: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor | None]:
    return result if isinstance(result, tuple) else (result, None)


class PreNormResidual(nn.Module):
    """x + Sublayer(LN(x)): the norm inside the residual branch (GPT-2, Xiong et al., 2020)."""

    def __init__(self, norm_type: str, n_embd: int, bias: bool = True) -> None:
        super().__init__()
        self.norm = make_norm(norm_type, n_embd, bias)

    def forward(self, x: Tensor, sublayer) -> tuple[Tensor, Tensor | None]:
        """`sublayer` maps (B, T, C) to (B, T, C), or to (output, attention weights)."""
        out, weights = _with_weights(sublayer(self.norm(x)))
        return x + out, weights


class PostNormResidual(PreNormResidual):
    """LN(x + Sublayer(x)): the paper's layout (section 3.1)."""

    def forward(self, x: Tensor, sublayer) -> tuple[Tensor, Tensor | None]:
        out, weights = _with_weights(sublayer(x))
        return self.norm(x + out), weights


def make_residual(norm: str, norm_type: str, n_embd: int, bias: bool = True) -> PreNormResidual:
    """The residual connection around one sub-layer, with the norm where the config says."""
    if norm == "pre":
        return PreNormResidual(norm_type, n_embd, bias)
    if norm == "post":
        return PostNormResidual(norm_type, n_embd, bias)
    raise ValueError(f"unknown norm placement {norm!r}; choose one of {NORM_PLACEMENTS}")


class EncoderBlock(nn.Module):
    """Bidirectional self-attention, then the feed-forward network, each in a residual.

        x = Residual(x, SelfAttention(., mask=source padding));  x = Residual(x, FFN)

    Every source token attends to every real source token, before and after it.
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        d_ff: int,
        *,
        norm: str = "post",
        norm_type: str = "layernorm",
        activation: str = "relu",
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(n_embd, n_head, bias=bias, dropout=dropout)
        self.res_attn = make_residual(norm, norm_type, n_embd, bias)
        self.mlp = FeedForward(n_embd, d_ff, activation=activation, bias=bias, dropout=dropout)
        self.res_mlp = make_residual(norm, norm_type, n_embd, bias)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, *, return_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """x: (B, S, C), mask (B, 1, 1, S) -> (B, S, C), and the weights (B, H, S, S) or None."""
        x, weights = self.res_attn(
            x, lambda h: self.attn(h, mask=mask, return_weights=return_weights)
        )
        x, _ = self.res_mlp(x, self.mlp)
        return x, weights


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention over the source, then the feed-forward network.

    y = Residual(y, SelfAttention(., causal))          each target token sees its past
    y = Residual(y, CrossAttention(., memory, mask))   queries y, keys/values the source
    y = Residual(y, FFN)
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        d_ff: int,
        *,
        norm: str = "post",
        norm_type: str = "layernorm",
        activation: str = "relu",
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(n_embd, n_head, bias=bias, dropout=dropout)
        self.res_attn = make_residual(norm, norm_type, n_embd, bias)
        self.cross_attn = CrossAttention(n_embd, n_head, bias=bias, dropout=dropout)
        self.res_cross = make_residual(norm, norm_type, n_embd, bias)
        self.mlp = FeedForward(n_embd, d_ff, activation=activation, bias=bias, dropout=dropout)
        self.res_mlp = make_residual(norm, norm_type, n_embd, bias)

    def forward(
        self,
        y: Tensor,
        memory_kv: tuple[Tensor, Tensor],
        memory_mask: Tensor | None = None,
        *,
        cache: KVCache | None = None,
        return_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """y: (B, T, C); memory_kv: the source's keys and values from
        `cross_attn.project_memory`; memory_mask (B, 1, 1, S); `cache` holds the earlier
        target tokens' keys and values when decoding step by step.

        Returns y (B, T, C) and, when asked, the self-attention weights (B, H, T, T_past + T)
        and the cross-attention weights (B, H, T, S) (else None, None).
        """
        y, self_weights = self.res_attn(
            y, lambda h: self.attn(h, causal=True, cache=cache, return_weights=return_weights)
        )
        y, cross_weights = self.res_cross(
            y,
            lambda h: self.cross_attn(
                h, memory_kv, mask=memory_mask, return_weights=return_weights
            ),
        )
        y, _ = self.res_mlp(y, self.mlp)
        return y, self_weights, cross_weights
