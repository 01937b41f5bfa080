"""The decoder-only Transformer language model (GPT).

Shape legend:
    B batch, T time (tokens in the context), C channels (n_embd), H heads, D head size (C / H),
    V vocabulary size, L layers

The model (Radford et al., 2018 and 2019; the notes' decoder with masked self-attention):

    x_0 = E[idx] (+ P[0..T-1])              token embedding, plus absolute positions (B, T, C)
                                            (the default, rotary, turns q and k instead)
    x_l = Block_l(x_{l-1}), l = 1..L        causal self-attention + FFN, residual, LayerNorm
    logits = LN(x_L) E^T                    the LM head shares the embedding matrix E (B, T, V)
    loss = mean cross-entropy(logits_t, idx_{t+1})

Tying the output projection to the input embedding (Press & Wolf, 2017) saves V x C
parameters and works as well or better (`tie_embeddings=False` gives the head its own).

Options from modded-nanogpt and nanochat, all off by default (benchmarks/LOG.md measures
them at character level): `x0_mix` feeds block l with a_l x_{l-1} + b_l x_0 (learned
scalars, a_l = 1 and b_l = 0 at first); `value_embeddings` adds a learned per-layer table
of the token, VE_l[idx], to that layer's values; `logit_softcap` bounds the logits,
cap * tanh(logits / cap); `zero_init_proj` starts the blocks' output projections at zero,
so every block starts as the identity. Parameter names follow GPT-2's (`transformer.wte`,
`transformer.h.0.attn.c_attn`, ...), so GPT-2 checkpoints map onto this model by key.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.config.choices import require_vocab_size
from qkv.config.gpt import GPTConfig
from qkv.decoding.sampling import Sampling, sample_stream
from qkv.errors import QkvError
from qkv.nn.attention import KVCache
from qkv.nn.blocks import TransformerBlock, block_options, make_norm
from qkv.nn.positional import RotaryEmbedding, make_positional


class GPT(nn.Module):
    """A stack of causal Transformer blocks that predicts the next token."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        require_vocab_size(config)
        self.config = config
        wpe = make_positional(config.positional, config.block_size, config.n_embd)
        rotary = None
        if config.positional == "rotary":  # one table of angles, shared by every layer
            rotary = RotaryEmbedding(config.head_size, config.block_size)
        blocks = [self._make_block(config, rotary) for _ in range(config.n_layer)]
        parts = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if wpe is not None:  # absolute positions are added to the embeddings
            parts["wpe"] = wpe
        parts.update(drop=nn.Dropout(config.dropout), h=nn.ModuleList(blocks))
        if config.value_embeddings:  # (V, H_kv D) per layer, added to the values
            width = (config.n_kv_head or config.n_head) * config.head_size
            tables = [nn.Embedding(config.vocab_size, width) for _ in blocks]
            parts["ve"] = nn.ModuleList(tables)
        # a post-norm stack already ends in a norm; pre-norm needs a last one
        last_norm = make_norm(config.norm_type, config.n_embd, config.bias)
        parts["ln_f"] = last_norm if config.norm == "pre" else nn.Identity()
        self.transformer = nn.ModuleDict(parts)
        if config.x0_mix:  # a_l, b_l of x = a_l x + b_l x_0 before block l
            self.resid_lambdas = nn.Parameter(torch.ones(config.n_layer))
            self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight  # weight tying: logits = x E^T
        self.apply(self._init_weights)
        self._scale_residual_projections()

    @staticmethod
    def _make_block(config: GPTConfig, rotary: nn.Module | None) -> nn.Module:
        options = block_options(config)
        return TransformerBlock(config.n_embd, config.n_head, causal=True, rotary=rotary, **options)

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
                if self.config.zero_init_proj:
                    nn.init.zeros_(param)
        for table in getattr(self.transformer, "ve", []):
            nn.init.zeros_(table.weight)  # value embeddings start with no effect

    def num_params(self, exclude_embeddings: bool = True) -> int:
        """Parameter count; by default without the position table (as GPT-2's papers count)."""
        total = sum(p.numel() for p in self.parameters())
        wpe = getattr(self.transformer, "wpe", None)
        if exclude_embeddings and isinstance(wpe, nn.Embedding):
            total -= wpe.weight.numel()
        return total

    def attention_modules(self) -> dict[str, list[nn.Module]]:
        """Each kind of attention the model has (named as its `AttentionMap`s are), with its
        module in every layer, first layer first: for looking inside (viz/explain.py)."""
        return {"self-attention": [block.attn for block in self.transformer.h]}

    def new_kv_caches(self) -> list[KVCache]:
        """One empty cache per layer, each with room for a full context."""
        return [KVCache(self.config.block_size) for _ in range(self.config.n_layer)]

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        *,
        kv_caches: list[KVCache] | None = None,
        return_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None] | tuple[Tensor, Tensor | None, list[Tensor]]:
        """idx: (B, T) token ids -> logits (B, T, V), and the mean cross-entropy if targets.

        With `kv_caches` (from `new_kv_caches`), idx holds only the tokens that follow those
        already cached; their positions continue from the cache's length.
        With `return_weights`, a third item: each layer's attention weights, (B, H, T, T_k),
        from the explicit softmax(q k^T / sqrt(D)) path (slower: for looking, not training).
        """
        start = kv_caches[0].length if kv_caches else 0
        end = start + idx.size(1)
        if end > self.config.block_size:
            raise QkvError(f"sequence of {end} tokens exceeds block_size {self.config.block_size}")
        positions = torch.arange(start, end, device=idx.device)  # (T,)
        x = self.transformer.wte(idx)  # (B, T, C)
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(positions)  # (B, T, C) + (T, C)
        x = x0 = self.transformer.drop(x)
        caches = kv_caches or [None] * len(self.transformer.h)
        weights = []  # per layer (B, H, T, T_k), when asked for
        for layer, (block, cache) in enumerate(zip(self.transformer.h, caches, strict=True)):
            if self.config.x0_mix:
                x = self.resid_lambdas[layer] * x + self.x0_lambdas[layer] * x0
            extra = self.transformer.ve[layer](idx) if self.config.value_embeddings else None
            out = block(
                x,
                positions=positions,
                cache=cache,
                return_weights=return_weights,
                value_extra=extra,
            )
            x, layer_weights = out if return_weights else (out, None)  # (B, T, C)
            weights.append(layer_weights)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V)
        if self.config.logit_softcap > 0:
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
        return (logits, loss, weights) if return_weights else (logits, loss)

    @torch.inference_mode()  # like no_grad, and also skips autograd's version counting
    def generate(
        self,
        idx: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> Tensor:
        """Extend idx (B, T) by max_new_tokens sampled tokens -> (B, T + max_new_tokens).

        Temperature 0 is greedy decoding. The model always sees the last block_size tokens
        at most. With `use_cache` (the default) each step feeds only the newest token and
        reuses the earlier tokens' keys and values; see `stream`.
        """
        sampling = Sampling(temperature, top_k, top_p, generator)
        new_tokens = list(self.stream(idx, max_new_tokens, sampling, use_cache))
        return torch.cat([idx, *new_tokens], dim=1)

    @torch.inference_mode()
    def stream(
        self,
        idx: Tensor,
        max_new_tokens: int,
        sampling: Sampling | None = None,
        use_cache: bool = True,
    ) -> Iterator[Tensor]:
        """Yield each new (B, 1) token as soon as it is sampled (for streaming output), drawn
        as `sampling` says (default: plain sampling at temperature 1).

        When the cache is full (the sequence outgrows block_size), the window slides: the
        context is cropped to the last block_size tokens and the cache is recomputed from it,
        exactly as the uncached path crops. Absolute positions change with every slide, so
        old keys cannot be reused; past the context, a step costs what an uncached one does.
        """
        next_logits = self._cached_next_logits() if use_cache else self._next_token_logits
        yield from sample_stream(next_logits, idx, max_new_tokens, sampling or Sampling())

    def _next_token_logits(self, idx: Tensor) -> Tensor:
        context = idx[:, -self.config.block_size :]  # (B, <=T)
        logits, _ = self(context)
        return logits[:, -1, :]  # (B, V)

    def _cached_next_logits(self) -> Callable[[Tensor], Tensor]:
        caches: list[KVCache] = []

        def next_logits(idx: Tensor) -> Tensor:
            nonlocal caches
            cached = caches[0].length if caches else -1
            if cached == idx.size(1) - 1 and cached < self.config.block_size:
                logits, _ = self(idx[:, -1:], kv_caches=caches)  # only the newest token
            else:  # first step, or the window slid: refill from the last block_size tokens
                caches = self.new_kv_caches()
                logits, _ = self(idx[:, -self.config.block_size :], kv_caches=caches)
            return logits[:, -1, :]  # (B, V)

        return next_logits
