"""The decoder-only Transformer language model (GPT).

Shape legend:
    B batch, T time (tokens in the context), C channels (n_embd), H heads, D head size (C / H),
    V vocabulary size, L layers

The model (Radford et al., 2018 and 2019; the notes' decoder with masked self-attention):

    x_0 = E[idx] + P[0..T-1]                token embedding plus positions   (B, T, C)
    x_l = Block_l(x_{l-1}), l = 1..L        causal self-attention + FFN, residual, LayerNorm
    logits = LN(x_L) E^T                    the LM head shares the embedding matrix E (B, T, V)
    loss = mean cross-entropy(logits_t, idx_{t+1})

Tying the output projection to the input embedding (Press & Wolf, 2017) saves V x C
parameters and works as well or better. Parameter names follow GPT-2's (`transformer.wte`,
`transformer.h.0.attn.c_attn`, ...), so GPT-2 checkpoints map onto this model by key.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.blocks import make_block
from qkv.config import GPTConfig
from qkv.errors import QkvError
from qkv.generate import sample_stream
from qkv.positional import make_positional


class GPT(nn.Module):
    """A stack of causal Transformer blocks that predicts the next token."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise QkvError("GPTConfig.vocab_size must be set (the tokenizer's vocabulary size)")
        self.config = config
        block_options = dict(activation=config.activation, bias=config.bias, causal=True)
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=make_positional(config.positional, config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(
                    make_block(
                        config.norm,
                        config.n_embd,
                        config.n_head,
                        dropout=config.dropout,
                        **block_options,
                    )
                    for _ in range(config.n_layer)
                ),
                # a post-norm stack already ends in a LayerNorm; pre-norm needs a last one
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias)
                if config.norm == "pre"
                else nn.Identity(),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying: logits = x E^T
        self.apply(self._init_weights)
        self._scale_residual_projections()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """GPT-2's initialisation: N(0, 0.02) weights, zero biases."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def _scale_residual_projections(self) -> None:
        """Each block adds two outputs to the residual stream, so the stream's variance grows
        with depth; GPT-2 scales the projections into it by 1 / sqrt(2L) (Radford et al., 2019,
        section 2.3)."""
        std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=std)

    def num_params(self, exclude_embeddings: bool = True) -> int:
        """Parameter count; by default without the position table (as GPT-2's papers count)."""
        total = sum(p.numel() for p in self.parameters())
        wpe = self.transformer.wpe
        if exclude_embeddings and isinstance(wpe, nn.Embedding):
            total -= wpe.weight.numel()
        return total

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """idx: (B, T) token ids -> logits (B, T, V), and the mean cross-entropy if targets."""
        _, t = idx.shape
        if t > self.config.block_size:
            raise QkvError(f"sequence of {t} tokens exceeds block_size {self.config.block_size}")
        positions = torch.arange(t, device=idx.device)  # (T,)
        x = self.transformer.wte(idx) + self.transformer.wpe(positions)  # (B, T, C)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x)  # (B, T, C)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def generate(
        self,
        idx: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Extend idx (B, T) by max_new_tokens sampled tokens -> (B, T + max_new_tokens).

        Temperature 0 is greedy decoding. A context longer than block_size is cropped to its
        last block_size tokens before each step.
        """
        pieces = [idx]
        for token in self.stream(idx, max_new_tokens, temperature, top_k, top_p, generator):
            pieces.append(token)
        return torch.cat(pieces, dim=1)

    @torch.no_grad()
    def stream(
        self,
        idx: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[Tensor]:
        """Yield each new (B, 1) token as soon as it is sampled (for streaming output)."""
        yield from sample_stream(
            self._next_token_logits, idx, max_new_tokens, temperature, top_k, top_p, generator
        )

    def _next_token_logits(self, idx: Tensor) -> Tensor:
        context = idx[:, -self.config.block_size :]  # (B, <=T)
        logits, _ = self(context)
        return logits[:, -1, :]  # (B, V)
