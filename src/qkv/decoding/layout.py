"""Float32 weights laid out for decoding on a CPU: wide matrices stored transposed.

A decoding step at batch 1 multiplies one vector by each weight matrix, y = W x + b with W
(N, K), and reads each weight once (`qkv.decoding.quantize`). How fast that read streams
depends on which way the matrix lies in memory. `nn.Linear` stores W as (N, K), N rows of K
inputs; the matrix-vector kernel of torch's CPU BLAS reads it at 16 GB/s on a 2-core AVX2
EPYC when the rows are short (K < N: GPT-2's 768 x 2304 attention input, 768 x 3072 MLP input,
768 x 50257 head), and at 22-28 GB/s from the transposed copy W^T (K, N), whose rows run along
the longer side (benchmarks/RESULTS.md). For tall matrices (K > N) it is the other way round,
and at batch 8 neither layout wins by much, so only wide matrices (N > K) are transposed.

`for_decoding(model)` does that in place for the float32 layers on CPU that the model runs as
modules (not those an owner reads as a tensor, its `weight_readers`): the outputs are the
same, only the summation order inside the kernel may differ. A head tied to an embedding stays
tied: the embedding reads its rows as columns of the same transposed tensor, so no weight is
stored twice. `qkv sample` and `qkv translate` call it for float32 models. The laid-out
model is for decoding: its state dict names `weight_t`, so save the model before, not after.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TransposedLinear(nn.Module):
    """y = x W^T + b, with W^T stored as a contiguous (K, N) tensor: (..., K) -> (..., N)."""

    def __init__(self, weight_t: nn.Parameter, bias: nn.Parameter | None) -> None:
        super().__init__()
        self.in_features, self.out_features = weight_t.shape
        self.weight_t = weight_t  # (K, N): row k holds input k's weight to every output
        self.bias = bias  # (N,) or None

    @property
    def weight(self) -> Tensor:
        """W (N, K), a view of the stored transpose, for code that reads a linear's weight."""
        return self.weight_t.t()

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features)  # (M, K)
        if self.bias is None:
            y = flat.mm(self.weight_t)
        else:
            y = torch.addmm(self.bias, flat, self.weight_t)  # (M, N)
        return y.view(*x.shape[:-1], self.out_features)

    def to_linear(self) -> nn.Linear:
        """An `nn.Linear` with the same weights, laid out (N, K) again."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        linear = linear.to(self.weight_t.device, self.weight_t.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, stored (K, N)"


class TransposedEmbedding(nn.Module):
    """e_i = column i of a (C, V) tensor: an embedding whose table is a tied head's W^T."""

    def __init__(self, table_t: nn.Parameter, padding_idx: int | None = None) -> None:
        super().__init__()
        self.table_t = table_t  # (C, V), shared with the head
        self.padding_idx = padding_idx

    @property
    def weight(self) -> Tensor:
        """The table E (V, C), a view, as `nn.Embedding.weight` is."""
        return self.table_t.t()

    def forward(self, ids: Tensor) -> Tensor:
        """ids (...) -> (..., C)."""
        return F.embedding(ids, self.weight, self.padding_idx)


def for_decoding(model: nn.Module) -> nn.Module:
    """Store each wide float32 CPU linear layer of `model` transposed (in place); returns it.
    See the module docstring for why."""
    embeddings: dict[int, list[tuple[nn.Module, str, nn.Module]]] = {}  # id(weight) -> users
    for owner, name, embedding in run_as_modules(model, nn.Embedding):
        embeddings.setdefault(id(embedding.weight), []).append((owner, name, embedding))
    for owner, name, linear in run_as_modules(model, nn.Linear):
        if not _is_wide_float32_on_cpu(linear):
            continue
        layer = TransposedLinear(nn.Parameter(linear.weight.detach().t().contiguous()), linear.bias)
        setattr(owner, name, layer)
        for embed_owner, embed_name, embedding in embeddings.get(id(linear.weight), []):
            tied = TransposedEmbedding(layer.weight_t, embedding.padding_idx)
            setattr(embed_owner, embed_name, tied)
    return model


def run_as_modules(
    model: nn.Module, kinds: type | tuple[type, ...]
) -> Iterator[tuple[nn.Module, str, nn.Module]]:
    """(owner, attribute name, child) for each child of one of `kinds` that its owner runs
    as a module: not one it names in `weight_readers` (it reads that one's weight as a tensor,
    e.g. cross-attention slicing its fused W_Q|W_KV). Safe to replace children while iterating."""
    for owner in list(model.modules()):
        readers = getattr(owner, "weight_readers", ())
        for name, child in list(owner.named_children()):
            if isinstance(child, kinds) and name not in readers:
                yield owner, name, child


def _is_wide_float32_on_cpu(linear: nn.Linear) -> bool:
    return (
        type(linear) is nn.Linear
        and linear.out_features > linear.in_features
        and linear.weight.dtype == torch.float32
        and linear.weight.device.type == "cpu"
    )
