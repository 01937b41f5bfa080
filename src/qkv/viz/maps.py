"""Attention maps: what a model's heads looked at, in one model-independent description.

Shape legend: L layers, H heads, T_q queries, T_k keys; for an encoder-decoder, S source
tokens and T decoder positions.

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

from qkv.config.choices import BOS_ID, EOS_ID, PAD_ID
from qkv.errors import QkvError
from qkv.models.gpt import GPT
from qkv.models.seq2seq import Seq2SeqTransformer
from qkv.tokenizer import Seq2SeqTokenizer, Tokenizer


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


# -- the encoder-decoder ---------------------------------------------------------------------

# how the special tokens appear in the pictures (the tokenizer's decode drops them)
SPECIAL_TOKEN_TEXT = {PAD_ID: "<pad>", BOS_ID: "<s>", EOS_ID: "</s>"}
PREDICTS = "\u2192"  # "→": a decoder row "2→0" has read "2" last and predicts "0"


def seq2seq_token_strings(tokenizer: Seq2SeqTokenizer, ids: list[int]) -> list[str]:
    """Each token's text, with <pad>, <bos> and <eos> shown as <pad>, <s> and </s>."""
    return [SPECIAL_TOKEN_TEXT.get(i) or tokenizer.decode([i]) for i in ids]


def encode_source(tokenizer: Seq2SeqTokenizer, text: str, max_len: int) -> list[int]:
    """The source ids the model translates (the text's tokens, then <eos>, as `qkv
    translate` feeds them), or one clear error if the text is empty, unknown or too long."""
    if not text:
        raise QkvError("--text is empty: give the text whose attention to draw")
    ids = tokenizer.encode(text) + [EOS_ID]  # a QkvError names characters it has never seen
    if len(ids) > max_len:
        raise QkvError(
            f"--text is {len(ids) - 1} tokens (+1 for </s>), longer than the model's "
            f"max_len of {max_len}; shorten it"
        )
    return ids


@torch.no_grad()
def seq2seq_attention_maps(
    model: Seq2SeqTransformer, tokenizer: Seq2SeqTokenizer, text: str
) -> list[AttentionMap]:
    """The encoder-decoder's provider: its three kinds of attention while translating `text`.

    The model first translates the text greedily (its own output, as `qkv translate`
    gives it); one teacher-forced forward pass over (source, <bos> + output) with
    `return_weights=True` then yields, every layer and head:

        encoder self-attention   source x source   (S, S)
        decoder self-attention   decoder x decoder (T, T), causal
        cross-attention          decoder x source  (T, S)

    S counts the source tokens and </s>; T = len(output) + 1. Decoder row i is the position
    that has read <s> y_1 .. y_i and predicts y_{i+1} (</s> after the last one); its label
    says both, "y_i→y_{i+1}" (e.g. "<s>→2" for the first row). Decoder keys are the tokens
    read, <s> y_1 .. y_{T-1}.
    """
    from qkv.decoding import greedy_decode, next_log_probs

    max_len = model.config.max_len
    source = encode_source(tokenizer, text, max_len)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no dropout on the weights we show
    try:
        src = torch.tensor([source], device=device)  # (1, S)
        # at most max_len - 1 output tokens, so that <bos> + output fits the positions
        output = greedy_decode(model, src, max_len=max_len - 1)[0]
        tgt_in = torch.tensor([[BOS_ID, *output]], device=device)  # (1, T)
        logits, weights = model(src, tgt_in, return_weights=True)
    finally:
        model.train(was_training)
    predicted = next_log_probs(logits[0]).argmax(dim=-1).tolist()  # (T,): y_1 .. y_T
    read = seq2seq_token_strings(tokenizer, tgt_in[0].tolist())
    next_tokens = seq2seq_token_strings(tokenizer, predicted)
    rows = [f"{r}{PREDICTS}{n}" for r, n in zip(read, next_tokens, strict=True)]
    source_tokens = seq2seq_token_strings(tokenizer, source)
    return [
        AttentionMap("encoder self-attention", source_tokens, source_tokens,
                     _stack(weights["encoder_self"])),
        AttentionMap("decoder self-attention", rows, read, _stack(weights["decoder_self"])),
        AttentionMap("cross-attention", rows, source_tokens, _stack(weights["cross"])),
    ]  # fmt: skip


def _stack(per_layer: list[torch.Tensor]) -> np.ndarray:
    """L x (1, H, T_q, T_k) -> (L, H, T_q, T_k) float32 on the CPU (batch item 0)."""
    return torch.stack([w[0] for w in per_layer]).float().cpu().numpy()


def checkpoint_attention_maps(
    directory: str | Path, text: str, device: str | torch.device = "cpu"
) -> list[AttentionMap]:
    """Load a checkpoint and collect the attention maps of its model over `text` (each model
    kind names its own function in the table of kinds)."""
    from qkv.checkpoint import open_checkpoint

    if not text:  # before loading anything: the cheapest mistake to report
        raise QkvError("--text is empty: give the text whose attention to draw")
    checkpoint = open_checkpoint(directory)
    draw = checkpoint.kind.verb("attention", str(directory))
    model, tokenizer = checkpoint.model(device).eval(), checkpoint.tokenizer
    return draw(model, tokenizer, text)
