"""Attention maps: what a model's heads looked at, in one model-independent description.

Shape legend: L layers, H heads, T_q queries, T_k keys.

An `AttentionMap` is one kind of attention in a model (GPT's causal self-attention; an
encoder-decoder's encoder self-attention, decoder self-attention and cross-attention), with
the tokens on both sides and the weights a_ij = softmax_j(q_i . k_j / sqrt(D)) of every layer
and head. The pictures (heatmaps.py, explorer.py) take a list of maps and know nothing about
the model that made them; a model contributes a *provider*, a function from a model, its
tokenizer and a text to its maps.

The weights come from the model's own forward pass with `return_weights=True`, i.e. from the
explicit softmax path in attention.py, never from state stashed on modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qkv.errors import QkvError
from qkv.models.gpt import GPT
from qkv.tokenizer import Tokenizer


@dataclass(frozen=True)
class AttentionMap:
    """One kind of attention: `weights[l, h, i, j]` is how much query token i of layer l's
    head h attends to key token j; each row sums to 1 (or is all 0 for a fully masked query)."""

    name: str  # "self-attention", "encoder self-attention", "cross-attention", ...
    queries: list[str]  # the tokens the rows belong to, as text
    keys: list[str]  # the tokens the columns belong to
    weights: np.ndarray  # (L, H, T_q, T_k), float32

    def __post_init__(self) -> None:
        expected = (len(self.queries), len(self.keys))
        if self.weights.ndim != 4 or self.weights.shape[2:] != expected:
            raise ValueError(
                f"{self.name}: weights of shape {self.weights.shape} do not match "
                f"{expected[0]} queries and {expected[1]} keys (want (L, H, T_q, T_k))"
            )

    @property
    def n_layer(self) -> int:
        return self.weights.shape[0]

    @property
    def n_head(self) -> int:
        return self.weights.shape[1]


def token_strings(tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    """Each token's own text (a byte-level token that ends mid-character shows U+FFFD)."""
    return [tokenizer.decode([i]) for i in ids]


def encode_text(tokenizer: Tokenizer, text: str, block_size: int) -> list[int]:
    """The text's token ids, or one clear error if there is nothing to show or too much."""
    if not text:
        raise QkvError("--text is empty: give the text whose attention to draw")
    ids = tokenizer.encode(text)  # a QkvError names characters the model has never seen
    if len(ids) > block_size:
        raise QkvError(
            f"--text is {len(ids)} tokens, longer than the model's context of {block_size}; "
            "shorten it"
        )
    return ids


@torch.no_grad()
def gpt_attention_maps(model: GPT, tokenizer: Tokenizer, text: str) -> list[AttentionMap]:
    """GPT's provider: its causal self-attention over `text`, every layer and head."""
    ids = encode_text(tokenizer, text, model.config.block_size)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no dropout on the weights we show
    try:
        _, _, weights = model(torch.tensor([ids], device=device), return_weights=True)
    finally:
        model.train(was_training)
    stacked = torch.stack([w[0] for w in weights]).float().cpu().numpy()  # (L, H, T, T)
    tokens = token_strings(tokenizer, ids)
    return [AttentionMap("self-attention", tokens, tokens, stacked)]


# -- the encoder-decoder's provider: the place for it -----------------------------------------
#
# Not written yet: models/seq2seq.py is being built on its own branch. Its agreed interface is
# `Seq2SeqTransformer.forward(src, tgt_in, ..., return_weights=True)`, which also returns
# {"encoder_self": [L x (B, H, S, S)], "decoder_self": [L x (B, H, T, T)],
#  "cross": [L x (B, H, T, S)]}. Its provider, `seq2seq_attention_maps(model, tokenizers,
# source, target)`, will stack each list (batch item 0) into three maps:
#     AttentionMap("encoder self-attention", source_tokens, source_tokens, encoder_self)
#     AttentionMap("decoder self-attention", target_tokens, target_tokens, decoder_self)
#     AttentionMap("cross-attention", target_tokens, source_tokens, cross)   # target x source
# and `checkpoint_attention_maps` below will pick it for a seq2seq checkpoint. The pictures
# need no change: they draw any list of maps.


def checkpoint_attention_maps(
    directory: str | Path, text: str, device: str | torch.device = "cpu"
) -> list[AttentionMap]:
    """Load a checkpoint and collect the attention maps of its model over `text`."""
    from qkv.checkpoint import load_checkpoint

    if not text:  # before loading anything: the cheapest mistake to report
        raise QkvError("--text is empty: give the text whose attention to draw")
    model, tokenizer, _ = load_checkpoint(directory, device)
    if isinstance(model, GPT):
        return gpt_attention_maps(model, tokenizer, text)
    raise QkvError(f"{directory}: qkv attention cannot draw a {type(model).__name__} yet")
