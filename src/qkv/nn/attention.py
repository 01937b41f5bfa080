"""Scaled dot-product attention, its masks, and multi-head attention.

Shape legend (one alphabet across qkv):
    B batch, T time (T_q queries, T_k keys), C channels (d_model), H heads, D head size (C / H)

The notes (../shared/seed/self-attention-notes.md) and "Attention Is All You Need"
(Vaswani et al., 2017, section 3.2) define attention on queries q_i, keys k_j and values v_j:

    e_ij = q_i . k_j / sqrt(d_k)         dot-product score, scaled (paper, eq. 1)
    a_ij = softmax_j(e_ij)               each query's weights over the keys sum to 1
    out_i = sum_j a_ij v_j               a weighted average of the values

Without the 1 / sqrt(d_k) the scores of random unit-variance vectors grow like sqrt(d_k), the
softmax saturates on one key and its gradient vanishes (paper, footnote 4).

A mask removes keys from a query's view by setting e_ij = -inf before the softmax, so
a_ij = 0 exactly. Masks here are boolean and True where the query *may* attend.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.nn.kv_cache import KVCache, reorder_cache

__all__ = [
    "CrossAttention",
    "KVCache",
    "MultiHeadAttention",
    "causal_mask",
    "key_padding_mask",
    "reorder_cache",
    "scaled_dot_product_attention",
]


def causal_mask(t_q: int, t_k: int | None = None, device: torch.device | None = None) -> Tensor:
    """The decoder's mask: key j is visible to query i iff j <= i.

    The notes write e_ij = -inf for j >= i, i.e. they keep only j < i. That is off by one:
    it hides every token from itself, and the first query (i = 0) is left with no key at
    all, so its softmax is over a row of -inf and returns NaN. The diagonal must stay visible:
    a token may look at itself and at the past, never at the future.

    With fewer queries than keys (decoding with a cache of earlier keys), the queries are the
    *last* t_q positions, so query i sits at absolute position i + (t_k - t_q).

    Returns a (T_q, T_k) boolean tensor, True where attention is allowed.
    """
    t_k = t_q if t_k is None else t_k
    offset = t_k - t_q
    query_pos = torch.arange(t_q, device=device).unsqueeze(1) + offset  # (T_q, 1)
    key_pos = torch.arange(t_k, device=device).unsqueeze(0)  # (1, T_k)
    return key_pos <= query_pos  # (T_q, T_k)


def key_padding_mask(is_real: Tensor) -> Tensor:
    """Turn a (B, T_k) boolean "this key is a real token, not padding" into an attention mask.

    Returns (B, 1, 1, T_k): broadcastable over heads and queries, and combinable with
    `causal_mask` by `&`.
    """
    return is_real[:, None, None, :]


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    *,
    causal: bool = False,
    dropout_p: float = 0.0,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(q k^T / sqrt(d_k) + M) v, with M = 0 where `mask` is True and -inf elsewhere.

    q: (..., T_q, D), k: (..., T_k, D), v: (..., T_k, D_v); `mask` is boolean and
    broadcastable to (..., T_q, T_k); `causal=True` adds `causal_mask` to it.

    When the weights are not asked for, torch's fused kernel computes the same thing without
    materialising the (T_q, T_k) matrix. When they are, the math is written out below.
    A query that can see no key at all gets zero weights and a zero output (never NaN).
    """
    if causal and q.size(-2) == 1:
        causal = False  # one query at the last position (cached decoding) sees every key
    if not return_weights and causal and mask is None and q.size(-2) == k.size(-2):
        # the plain square causal case: the fused kernel skips the masked half by itself
        return _fused_kernel(q, k, v, dropout_p=dropout_p, is_causal=True)
    mask = _combine_masks(mask, causal, q.size(-2), k.size(-2), q.device)
    if return_weights:
        return _explicit_attention(q, k, v, mask, dropout_p)
    return _fused_attention(q, k, v, mask, dropout_p)


def _combine_masks(
    mask: Tensor | None, causal: bool, t_q: int, t_k: int, device: torch.device
) -> Tensor | None:
    if not causal:
        return mask
    future = causal_mask(t_q, t_k, device=device)
    return future if mask is None else mask & future


def _explicit_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float
) -> tuple[Tensor, Tensor]:
    d_k = q.size(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)  # (..., T_q, T_k): e_ij
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # (..., T_q, T_k): a_ij, rows sum to 1
    if mask is not None:
        # a query with every key masked is a row of -inf, whose softmax is NaN: make it 0
        weights = weights.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v, weights  # (..., T_q, D_v), (..., T_q, T_k)


def _fused_kernel(q: Tensor, k: Tensor, v: Tensor, **options) -> Tensor:
    """torch's fused kernel; under CPU autocast, in float32 and cast back to the input's dtype.

    Measured on a 2-core AMX Xeon, torch 2.13 (3 layers, width 192, batch 16 x 96): the CPU
    kernel's bfloat16 backward took 19.6 ms a call against 2.3 ms in float32, and the training
    step 83 ms against 41 ms once attention ran in float32 while the linear layers stayed
    bfloat16. Autocast would cast the inputs back down, so it is off for this one call.
    """
    if q.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return F.scaled_dot_product_attention(q, k, v, **options)
    with torch.autocast("cpu", enabled=False):
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **options)
    return out.to(q.dtype)


def _fused_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float
) -> Tensor:
    out = _fused_kernel(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    if mask is not None:
        out = out.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    return out


class MultiHeadAttention(nn.Module):
    """H attention heads side by side, each on its own learned projection of the input.

    MultiHead(X) = Concat(head_1, ..., head_H) W_O,  head_h = Attention(X W_Q^h, Z W_K^h, Z W_V^h)
    (paper, section 3.2.2). Z = X for self-attention; for cross-attention Z is the encoder's
    output, so queries come from the decoder and keys and values from the source.

    The notes' key, query and value matrices are the three blocks of one fused matrix,
    `c_attn` = [W_Q | W_K | W_V] (one matmul instead of three), and W_O is `c_proj`; the names
    are GPT-2's so its weights load by key. Each head has size D = C / H, so all heads
    together cost about as much as one full-width head.

    Grouped-query attention (Ainslie et al., 2023): with n_kv_head < n_head, each group of
    n_head / n_kv_head query heads shares one key/value head, which shrinks W_K, W_V and the
    KV cache by that factor. n_kv_head = n_head is ordinary multi-head attention.

    With `rotary` (a `RotaryEmbedding`), queries and keys are rotated by their positions
    before the dot product, so scores depend on relative position (Su et al., 2021).

    With `qk_norm`, each head's query and key are RMS-normalised (no gain) before rotary and
    the dot product, q <- q / rms(q), k <- k / rms(k), so a score is at most D / sqrt(D) =
    sqrt(D) in size however large the weights grow (Henry et al., 2020; Dehghani et al.,
    2023; modded-nanogpt): the softmax cannot saturate from growing activations, which lets
    training use larger learning rates.
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        *,
        n_kv_head: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        rotary: nn.Module | None = None,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        if n_embd % n_head != 0:
            raise ValueError(f"n_embd={n_embd} is not divisible by n_head={n_head}")
        if n_head % n_kv_head != 0:
            raise ValueError(f"n_head={n_head} is not divisible by n_kv_head={n_kv_head}")
        self.n_head, self.n_kv_head = n_head, n_kv_head
        self.head_size = n_embd // n_head
        self.kv_width = n_kv_head * self.head_size
        self.dropout = dropout
        self.rotary = rotary
        self.qk_norm = qk_norm
        self.c_attn = nn.Linear(n_embd, n_embd + 2 * self.kv_width, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        causal: bool = False,
        return_weights: bool = False,
        positions: Tensor | None = None,
        cache: KVCache | None = None,
        value_extra: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x: (B, T_q, C); context: (B, T_k, C) for cross-attention, None for self-attention.

        `positions` (T_q,) are the absolute positions of x's tokens (needed with rotary
        embeddings); `cache` holds earlier keys and values and receives the new ones.
        `value_extra` (B, T_q, H_kv D) is added to the values (the GPT's value embeddings).
        Returns (B, T_q, C), and the weights (B, H, T_q, T_k) when `return_weights`.
        """
        q, k, v = self.project(
            x, context, positions, value_extra
        )  # (B, H, T_q, D), (B, H_kv, T_k, D) x2
        if cache is not None:
            k, v = cache.append(k, v)  # (B, H_kv, T_past + T_q, D)
        k, v = self._share_kv_heads(k), self._share_kv_heads(v)  # (B, H, T_k, D)
        dropout_p = self.dropout if self.training else 0.0
        result = scaled_dot_product_attention(
            q, k, v, mask, causal=causal, dropout_p=dropout_p, return_weights=return_weights
        )
        out, weights = result if return_weights else (result, None)
        out = self.resid_dropout(self.c_proj(self._merge_heads(out)))  # (B, T_q, C)
        return (out, weights) if return_weights else out

    def project(
        self,
        x: Tensor,
        context: Tensor | None = None,
        positions: Tensor | None = None,
        value_extra: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """q = x W_Q^T + b_Q, k = z W_K^T + b_K, v = z W_V^T + b_V (z = context, or x), split
        into heads (+ `value_extra` on v; q and k RMS-normalised with `qk_norm`), queries and
        keys rotated by `positions` with rotary embeddings: (B, H, T_q, D), (B, H_kv, T_k, D),
        (B, H_kv, T_k, D). What `forward` attends with."""
        q, k, v = self._project(x, context)
        if value_extra is not None:
            v = v + self._split_heads(value_extra)
        if self.qk_norm:
            q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
        if self.rotary is not None:
            q, k = self.rotary(q, positions), self.rotary(k, positions)
        return q, k, v

    def _project(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        n_embd = x.size(-1)
        sizes = [n_embd, self.kv_width, self.kv_width]
        if context is None:
            q, k, v = self.c_attn(x).split(sizes, dim=-1)  # (B, T, C), (B, T, H_kv D) twice
        else:
            w_q, w_kv = self.c_attn.weight.split([n_embd, 2 * self.kv_width])
            b_q, b_kv = (None, None)
            if self.c_attn.bias is not None:
                b_q, b_kv = self.c_attn.bias.split([n_embd, 2 * self.kv_width])
            q = F.linear(x, w_q, b_q)  # (B, T_q, C)
            k, v = F.linear(context, w_kv, b_kv).chunk(2, dim=-1)  # (B, T_k, H_kv D) twice
        return self._split_heads(q), self._split_heads(k), self._split_heads(v)

    def _split_heads(self, x: Tensor) -> Tensor:
        b, t, width = x.shape
        heads = width // self.head_size
        return x.view(b, t, heads, self.head_size).transpose(1, 2)  # (B, heads, T, D)

    def _share_kv_heads(self, x: Tensor) -> Tensor:
        """(B, H_kv, T, D) -> (B, H, T, D): each key/value head serves its group of queries."""
        groups = self.n_head // self.n_kv_head
        return x if groups == 1 else x.repeat_interleave(groups, dim=1)

    @staticmethod
    def _merge_heads(x: Tensor) -> Tensor:
        b, h, t, d = x.shape
        return x.transpose(1, 2).reshape(b, t, h * d)  # (B, T, C): Concat(head_1..head_H)


class CrossAttention(MultiHeadAttention):
    """Encoder-decoder attention: queries from the decoder, keys and values from the source.

    The same module and weights as `MultiHeadAttention(x, context=memory)`, split in two so
    that a decoder generating one token at a time projects the encoder's output to keys and
    values once (`project_memory`) and reuses them at every step (paper, section 3.2.3).
    It reads `c_attn`'s weight as a tensor, in two slices, so quantization leaves that layer
    as it is (`weight_readers`).
    """

    weight_readers = ("c_attn",)

    def project_memory(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """memory: (B, S, C) -> keys and values (B, H_kv, S, D) each."""
        n_embd = memory.size(-1)
        w_kv = self.c_attn.weight[n_embd:]
        b_kv = None if self.c_attn.bias is None else self.c_attn.bias[n_embd:]
        k, v = F.linear(memory, w_kv, b_kv).chunk(2, dim=-1)  # (B, S, H_kv D) twice
        return self._split_heads(k), self._split_heads(v)

    def project_queries(self, x: Tensor) -> Tensor:
        """x: (B, T, C) decoder states -> queries x W_Q^T + b_Q, (B, H, T, D)."""
        n_embd = x.size(-1)
        w_q = self.c_attn.weight[:n_embd]
        b_q = None if self.c_attn.bias is None else self.c_attn.bias[:n_embd]
        return self._split_heads(F.linear(x, w_q, b_q))

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        memory_kv: tuple[Tensor, Tensor],
        *,
        mask: Tensor | None = None,
        return_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x: (B, T, C) decoder states; memory_kv from `project_memory`; mask (B, 1, 1, S).

        Returns (B, T, C), and the weights (B, H, T, S) when `return_weights`.
        """
        q = self.project_queries(x)  # (B, H, T, D)
        k, v = (self._share_kv_heads(t) for t in memory_kv)  # (B, H, S, D)
        dropout_p = self.dropout if self.training else 0.0
        result = scaled_dot_product_attention(
            q, k, v, mask, dropout_p=dropout_p, return_weights=return_weights
        )
        out, weights = result if return_weights else (result, None)
        out = self.resid_dropout(self.c_proj(self._merge_heads(out)))  # (B, T, C)
        return (out, weights) if return_weights else out
