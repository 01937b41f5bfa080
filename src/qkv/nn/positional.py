"""Positional encodings: the order information that self-attention does not have.

Shape legend: T time (positions), C channels (d_model).

Self-attention is permutation-equivariant: out_i = sum_j softmax_j(q_i . k_j) v_j treats the
keys as a set, so shuffling the input tokens just shuffles the outputs (the notes: "the
self-attention mechanism is permutation invariant"). To let word order matter, each position
i gets a vector p_i in R^C that is added to the token embedding x_i before the first layer,
so that queries, keys and values all carry it (the notes: v_i = v~_i + p_i, and the same for
k_i and q_i; the paper, section 3.5).

Three ways to give the model positions:
- `LearnedPositionalEmbedding`: every p_i is a free parameter, the notes' matrix P (stored as
  (T, C), i.e. P transposed); GPT-2's choice (`model.positional="learned"`).
- `SinusoidalPositionalEncoding`: the paper's fixed encoding
      PE(pos, 2i)   = sin(pos / 10000^(2i / C))
      PE(pos, 2i+1) = cos(pos / 10000^(2i / C))
  with no parameters; it extends to any length and lets relative offsets be read off as
  rotations (paper, section 3.5).
- `RotaryEmbedding` (RoPE, Su et al., 2021): nothing is added to x; instead each query and key
  is rotated by an angle proportional to its position, pair of channels by pair of channels,
  so q_m . k_n depends on m and n only through m - n: attention sees relative positions.
  qkv's GPT default (val loss 1.672 against 1.764 for learned positions in round 2 of the
  sweep in benchmarks/README.md).
- `"none"`: no positions at all, to show what self-attention cannot do without them. A stack of
  non-causal blocks is then exactly permutation-equivariant. A causal one is not quite blind:
  its mask lets a layer count how many tokens it sees, so from the second layer on order leaks
  in (Haviv et al., 2022, "Transformer language models without positional encodings still
  learn positional information"); one causal layer sees its prefix as a bag of tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qkv.config.choices import POSITIONAL_KINDS


class LearnedPositionalEmbedding(nn.Embedding):
    """p_i = P[i], one learned vector per position up to `block_size`."""

    def __init__(self, block_size: int, n_embd: int) -> None:
        super().__init__(block_size, n_embd)

    def forward(self, positions: Tensor) -> Tensor:
        """positions: (T,) integer positions -> (T, C)."""
        return super().forward(positions)


def sinusoidal_table(n_positions: int, n_embd: int) -> Tensor:
    """The paper's PE matrix, (T, C): sines on even channels, cosines on odd ones."""
    if n_embd % 2 != 0:
        raise ValueError(f"sinusoidal positions need an even width, got {n_embd}")
    pos = torch.arange(n_positions, dtype=torch.float64).unsqueeze(1)  # (T, 1)
    two_i = torch.arange(0, n_embd, 2, dtype=torch.float64)  # (C/2,)
    angle = pos / (10000.0 ** (two_i / n_embd))  # (T, C/2)
    table = torch.empty(n_positions, n_embd, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle)
    return table.float()


class SinusoidalPositionalEncoding(nn.Module):
    """p_i = PE(i) from `sinusoidal_table`; fixed, so it is not saved with the weights."""

    def __init__(self, block_size: int, n_embd: int) -> None:
        super().__init__()
        self.register_buffer("table", sinusoidal_table(block_size, n_embd), persistent=False)

    def forward(self, positions: Tensor) -> Tensor:
        """positions: (T,) integer positions -> (T, C)."""
        return self.table[positions]


class RotaryEmbedding(nn.Module):
    """Rotate each channel pair (x_2i, x_2i+1) of a head by the angle pos * theta_i.

        theta_i = base^(-2i / D),  i = 0 .. D/2 - 1
        (x_2i, x_2i+1) -> (x_2i cos - x_2i+1 sin,  x_2i sin + x_2i+1 cos)

    Read as a complex number z_i = x_2i + i x_2i+1, the rotation is z_i * e^(i pos theta_i):
    one complex multiplication per pair (Su et al., 2021, section 3.4.2). Rotations preserve
    lengths, and R(m)^T R(n) = R(n - m), so the rotated dot product q_m . k_n depends only on
    the offset n - m. Fixed: no parameters, nothing saved. (torch.compile's inductor does not
    generate code for complex tensors yet: under `--compile` this op runs as in eager mode.)
    """

    def __init__(self, head_size: int, max_positions: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_size % 2 != 0:
            raise ValueError(f"rotary embeddings need an even head size, got {head_size}")
        theta = base ** (-torch.arange(0, head_size, 2, dtype=torch.float64) / head_size)
        angles = torch.arange(max_positions, dtype=torch.float64)[:, None] * theta  # (T, D/2)
        rotations = torch.polar(torch.ones_like(angles), angles).to(torch.complex64)
        self.register_buffer("rotations", rotations, persistent=False)  # (T, D/2) complex

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """x: (B, H, T, D), positions: (T,) -> x rotated, (B, H, T, D)."""
        pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (B, H, T, D/2)
        rotated = torch.view_as_real(pairs * self.rotations[positions])  # (B, H, T, D/2, 2)
        return rotated.flatten(-2).type_as(x)


def make_positional(kind: str, block_size: int, n_embd: int) -> nn.Module | None:
    """The module whose output is added to the token embeddings; None for rotary, which acts
    inside attention instead, and for "none", which gives the model no positions."""
    if kind == "learned":
        return LearnedPositionalEmbedding(block_size, n_embd)
    if kind == "sinusoidal":
        return SinusoidalPositionalEncoding(block_size, n_embd)
    if kind in ("rotary", "none"):
        return None
    raise ValueError(f"unknown positional kind {kind!r}; choose one of {POSITIONAL_KINDS}")
