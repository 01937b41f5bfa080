"""What a head does, in three numbers, from its attention map a_ij (rows: queries i).

- entropy: the mean over queries of H_i = -sum_j a_ij ln a_ij (nats). 0 when each query puts
  all its weight on one key; ln(n) when it spreads evenly over n keys. A head forming a job
  usually shows it falling.
- previous token: the mean over queries i >= 1 of a_{i,i-1}, the weight on the key just before
  the query (a "previous token head", Elhage et al., 2021, "A Mathematical Framework for
  Transformer Circuits"). Only where queries and keys are the same positions (self-attention).
- same word: the mean, over queries that have another token of their own word among their
  keys, of the weight on those other tokens of the word (the query itself left out). Words
  are runs of tokens between whitespace; a token that starts with a space (BPE's " the")
  begins a new word. Only for self-attention.

A head that spread its weight evenly over the visible keys would score about 1/i on the
previous token at query i: the scores are worth comparing with that, not with 0.
"""

from __future__ import annotations

import numpy as np

STATS = ("entropy", "previous token", "same word")


def word_ids(tokens: list[str]) -> list[int | None]:
    """The word each token belongs to (0, 1, ...), None for whitespace tokens."""
    ids: list[int | None] = []
    word, after_space = -1, True
    for token in tokens:
        if not token.strip():
            ids.append(None)
            after_space = True
            continue
        if after_space or token[0].isspace():
            word += 1
        ids.append(word)
        after_space = token[-1].isspace()
    return ids


def entropy(weights: np.ndarray) -> np.ndarray:
    """(..., T_q, T_k) -> (...): the mean over queries of each row's entropy (nats)."""
    w = weights.astype(np.float64)
    terms = np.where(w > 0, -w * np.log(np.where(w > 0, w, 1.0)), 0.0)
    return terms.sum(-1).mean(-1)


def previous_token(weights: np.ndarray) -> np.ndarray:
    """(..., T, T) -> (...): the mean weight on key i - 1 over queries i >= 1."""
    t = weights.shape[-1]
    if t < 2:
        return np.zeros(weights.shape[:-2])
    rows = np.arange(1, t)
    return weights[..., rows, rows - 1].astype(np.float64).mean(-1)


def same_word(weights: np.ndarray, tokens: list[str]) -> np.ndarray:
    """(..., T, T) -> (...): the mean weight on the other tokens of the query's word, over the
    queries whose word has another token among their keys (the causal past, or all)."""
    ids = word_ids(tokens)
    t = len(tokens)
    same = np.array([[ids[i] is not None and ids[i] == ids[j] and i != j for j in range(t)]
                     for i in range(t)])  # fmt: skip
    visible = weights.reshape(-1, t, t).max(0) > 0  # keys some head can see (the mask)
    same &= visible
    rows = same.any(-1)
    if not rows.any():
        return np.zeros(weights.shape[:-2])
    picked = (weights.astype(np.float64) * same).sum(-1)  # (..., T)
    return picked[..., rows].mean(-1)


def head_stats(weights: np.ndarray, tokens: list[str] | None) -> dict[str, np.ndarray]:
    """{stat: (L, H)} for a map's weights (L, H, T_q, T_k); `tokens` are the keys of a
    self-attention map (None: only the entropy, e.g. for cross-attention)."""
    stats = {"entropy": entropy(weights)}
    if tokens is not None and weights.shape[-1] == weights.shape[-2] == len(tokens):
        stats["previous token"] = previous_token(weights)
        stats["same word"] = same_word(weights, tokens)
    return stats
