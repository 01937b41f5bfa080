"""The KV cache: the keys and values one attention layer has computed for the tokens so far.

Shape legend: B batch, H_kv key/value heads, T positions, D head size.

Used by `nn/attention.MultiHeadAttention` (and re-exported from `qkv.nn.attention`).
"""

from __future__ import annotations

from torch import Tensor


class KVCache:
    """The keys and values one attention layer has computed for the tokens so far.

    Autoregressive decoding feeds one new token per step. Its query must see the keys and
    values of every earlier token, which do not change (the model is causal), so they are
    kept here and the new token's are appended: each step costs O(T) instead of O(T^2).
    Storage is allocated once for `capacity` positions, (B, H_kv, capacity, D).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.length = 0
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, H_kv, T_new, D); return all keys and values so far (B, H_kv, T, D)."""
        end = self.length + k.size(2)
        if end > self.capacity:
            raise ValueError(f"KV cache holds {self.capacity} positions, asked for {end}")
        if self.k is None:
            shape = (k.size(0), k.size(1), self.capacity, k.size(3))
            self.k = k.new_empty(shape)
            self.v = v.new_empty((*shape[:3], v.size(3)))
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


def reorder_cache(cache: KVCache, order: Tensor) -> None:
    """Keep row order[i] of the cached keys and values as row i (B, H_kv, T, D).

    Beam search reorders its hypotheses at every step; each new hypothesis extends one of the
    old ones, whose keys and values it inherits.
    """
    if cache.k is not None:
        cache.k = cache.k.index_select(0, order)
        cache.v = cache.v.index_select(0, order)
