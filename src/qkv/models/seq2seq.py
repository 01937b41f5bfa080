"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017).

Shape legend:
    B batch, S source length, T target length, C channels (d_model), H heads,
    V vocabulary size (shared by source and target), L layers

The model (paper, section 3 and figure 1):

    x_0 = E[src] * sqrt(C) + PE(0..S-1)                    source embedding   (B, S, C)
    x_l = Block_l(x_{l-1}, mask = source padding)          bidirectional self-attention + FFN
    memory = x_L                                           (B, S, C)
    y_0 = E[tgt_in] * sqrt(C) + PE(0..T-1)                 target, shifted right by <bos>
    y_l = DecoderBlock_l(y_{l-1}, memory)                  causal self-attn, cross-attn, FFN
    logits = y_L E^T                                       (B, T, V)

One matrix E embeds source and target tokens and projects back to the vocabulary when the two
share a vocabulary (section 3.4, after Press & Wolf, 2017); it is scaled by sqrt(d_model) on
the way in, so the embeddings (std d_model^-0.5) and the positional signal (values in [-1, 1])
have comparable sizes. Padding never reaches a real position: source keys that are padding
are masked out of the encoder's self-attention and of every cross-attention, and target
padding only ever follows the real tokens, which the causal mask already hides.

Decoding one token at a time (`start_decoding`) keeps each decoder layer's self-attention
keys and values in a growing `KVCache`, and projects the encoder's output to cross-attention
keys and values once.

The encoder's blocks are the GPT's `TransformerBlock` without the causal mask, the decoder's
are `DecoderBlock`s (that block plus cross-attention), so every option of the GPT's blocks
(pre-norm, RMSNorm, SwiGLU, grouped-query attention, rotary positions in self-attention)
works here too. Checkpoints written before the blocks were shared named the norms
`res_attn.norm`, `res_cross.norm` and `res_mlp.norm`; they are renamed to `ln_1`, `ln_cross`
and `ln_2` when loaded (`_rename_old_norms`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from qkv.config.choices import PAD_ID, require_vocab_size
from qkv.config.seq2seq import Seq2SeqConfig
from qkv.errors import QkvError
from qkv.nn.attention import KVCache, key_padding_mask, reorder_cache
from qkv.nn.blocks import DecoderBlock, TransformerBlock, block_options, make_norm
from qkv.nn.positional import RotaryEmbedding, make_positional

AttentionMaps = dict[str, list[Tensor]]
OLD_NORM_NAMES = {
    "res_attn.norm.": "ln_1.",
    "res_cross.norm.": "ln_cross.",
    "res_mlp.norm.": "ln_2.",
}


def _final_norm(config: Seq2SeqConfig) -> nn.Module:
    """A post-norm stack already ends in a norm; a pre-norm one needs a last one."""
    if config.norm == "pre":
        return make_norm(config.norm_type, config.n_embd, config.bias)
    return nn.Identity()


class Seq2SeqTransformer(nn.Module):
    """Encoder, decoder, and the shared embedding; see the module docstring."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        require_vocab_size(config)
        self.config = config
        c = config
        self.src_embed = nn.Embedding(c.vocab_size, c.n_embd)
        self.tgt_embed = (
            self.src_embed if c.tie_embeddings else nn.Embedding(c.vocab_size, c.n_embd)
        )
        self.positions = make_positional(c.positional, c.max_len, c.n_embd)  # None: rotary
        self.drop = nn.Dropout(c.dropout)
        rotary = None
        if c.positional == "rotary":  # one table of angles for every self-attention
            rotary = RotaryEmbedding(c.n_embd // c.n_head, c.max_len)
        options = dict(d_ff=c.d_ff, rotary=rotary, **block_options(c))
        self.encoder = nn.ModuleList(
            TransformerBlock(c.n_embd, c.n_head, causal=False, **options)
            for _ in range(c.n_encoder_layer)
        )
        self.decoder = nn.ModuleList(
            DecoderBlock(c.n_embd, c.n_head, **options) for _ in range(c.n_decoder_layer)
        )
        self.encoder_norm, self.decoder_norm = _final_norm(c), _final_norm(c)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.tgt_embed.weight  # logits = y E^T
        self.apply(self._init_weights)
        self.register_load_state_dict_pre_hook(_rename_old_norms)

    def _init_weights(self, module: nn.Module) -> None:
        """Glorot-uniform matrices, zero biases (the Annotated Transformer); embeddings
        N(0, d_model^-0.5), so that E * sqrt(d_model) has unit variance."""
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.n_embd**-0.5)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def attention_modules(self) -> dict[str, list[nn.Module]]:
        """Each kind of attention (named as its `AttentionMap`s are), one module per layer."""
        return {
            "encoder self-attention": [block.attn for block in self.encoder],
            "decoder self-attention": [block.attn for block in self.decoder],
            "cross-attention": [block.cross_attn for block in self.decoder],
        }

    # -- the two halves --------------------------------------------------------------------

    def _embed(self, embedding: nn.Embedding, ids: Tensor, start: int = 0) -> tuple[Tensor, Tensor]:
        """ids (B, T) -> embedded tokens (B, T, C) and their positions (T,)."""
        end = start + ids.size(1)
        if end > self.config.max_len:
            raise QkvError(
                f"a sequence of {end} tokens exceeds model.max_len={self.config.max_len}"
            )
        positions = torch.arange(start, end, device=ids.device)  # (T,)
        x = embedding(ids) * math.sqrt(self.config.n_embd)  # (B, T, C)
        if self.positions is not None:
            x = x + self.positions(positions)  # (B, T, C) + (T, C)
        return self.drop(x), positions

    @staticmethod
    def source_mask(src: Tensor) -> Tensor:
        """(B, S) ids -> (B, 1, 1, S): True at the real (non-padding) source tokens."""
        return key_padding_mask(src != PAD_ID)

    def encode(
        self, src: Tensor, src_mask: Tensor | None = None, *, return_weights: bool = False
    ) -> tuple[Tensor, list[Tensor]]:
        """src (B, S) -> memory (B, S, C), and the encoder's self-attention weights per layer
        (B, H, S, S) when asked (else an empty list)."""
        src_mask = self.source_mask(src) if src_mask is None else src_mask
        x, positions = self._embed(self.src_embed, src)
        maps = []
        for block in self.encoder:
            out = block(x, src_mask, positions, return_weights=return_weights)
            x, weights = out if return_weights else (out, None)  # (B, S, C)
            maps.append(weights)
        return self.encoder_norm(x), maps if return_weights else []

    def memory_kv(self, memory: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Each decoder layer's cross-attention keys and values of the source, (B, H, S, D)."""
        return [block.cross_attn.project_memory(memory) for block in self.decoder]

    def decode(
        self,
        tgt: Tensor,
        memory: Tensor,
        src_mask: Tensor,
        *,
        memory_kv: list[tuple[Tensor, Tensor]] | None = None,
        caches: list[KVCache] | None = None,
        return_weights: bool = False,
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """tgt (B, T) target ids, memory (B, S, C) -> logits (B, T, V), and per layer the
        self-attention (B, H, T, T) and cross-attention (B, H, T, S) weights when asked.

        `memory_kv` (from `memory_kv`) are the layers' cross-attention keys and values of the
        memory, computed once when decoding step by step (else each layer projects it).
        With `caches`, tgt holds only the tokens after those already cached; their positions
        continue from the caches' length.
        """
        start = caches[0].length if caches else 0
        y, positions = self._embed(self.tgt_embed, tgt, start)  # (B, T, C)
        caches = caches or [None] * len(self.decoder)
        memory_kv = memory_kv or [None] * len(self.decoder)
        self_maps, cross_maps = [], []
        for block, kv, cache in zip(self.decoder, memory_kv, caches, strict=True):
            out = block(
                y, memory, src_mask, memory_kv=kv, positions=positions, cache=cache,
                return_weights=return_weights,
            )  # fmt: skip
            y, self_w, cross_w = out if return_weights else (out, None, None)
            self_maps.append(self_w)
            cross_maps.append(cross_w)
        logits = self.lm_head(self.decoder_norm(y))  # (B, T, V)
        if not return_weights:
            return logits, [], []
        return logits, self_maps, cross_maps

    def forward(
        self, src: Tensor, tgt_in: Tensor, src_mask: Tensor | None = None, *,
        return_weights: bool = False,
    ) -> Tensor | tuple[Tensor, AttentionMaps]:  # fmt: skip
        """src (B, S), tgt_in (B, T) (the target shifted right: <bos> y_1 .. y_{T-1})
        -> logits (B, T, V) for y_1 .. y_T.

        `src_mask` (B, 1, 1, S) is True at real source tokens (default: src != <pad>).
        With `return_weights=True` the attention weights (computed by the explicit path) come
        back too, as {"encoder_self": L x (B, H, S, S), "decoder_self": L x (B, H, T, T),
        "cross": L x (B, H, T, S)}, one tensor per layer, first layer first.
        """
        src_mask = self.source_mask(src) if src_mask is None else src_mask
        memory, enc_maps = self.encode(src, src_mask, return_weights=return_weights)
        logits, self_maps, cross_maps = self.decode(
            tgt_in, memory, src_mask, return_weights=return_weights
        )
        if not return_weights:
            return logits
        return logits, {"encoder_self": enc_maps, "decoder_self": self_maps, "cross": cross_maps}

    # -- decoding one token at a time -----------------------------------------------------

    def start_decoding(self, src: Tensor, beams: int = 1, use_cache: bool = True) -> DecoderSession:
        """Encode src (B, S) once and return a session that decodes B * beams hypotheses,
        beams consecutive rows per source sentence."""
        src_mask = self.source_mask(src)
        memory, _ = self.encode(src, src_mask)
        memory = memory.repeat_interleave(beams, dim=0)  # (B * beams, S, C)
        src_mask = src_mask.repeat_interleave(beams, dim=0)
        return DecoderSession(self, memory, src_mask, use_cache)


class DecoderSession:
    """The decoder's state while it generates: the encoder's keys and values (computed once)
    and, with `use_cache`, each layer's self-attention cache (growing by one per step).

    Without the cache every step runs the decoder over the whole prefix again; the two give
    the same logits (tested), the cached one in O(T) per step instead of O(T^2).
    """

    def __init__(
        self, model: Seq2SeqTransformer, memory: Tensor, src_mask: Tensor, use_cache: bool
    ) -> None:
        self.model, self.memory = model, memory
        self.memory_kv = model.memory_kv(memory)  # once per sentence, reused at every step
        self.src_mask = src_mask
        n_layer, capacity = len(model.decoder), model.config.max_len
        self.caches = [KVCache(capacity) for _ in range(n_layer)] if use_cache else None
        self.prefix = memory.new_empty((memory.size(0), 0), dtype=torch.long)  # (N, t)

    @property
    def max_steps(self) -> int:
        """How many tokens the decoder can still take (the positional table's length)."""
        return self.model.config.max_len - self.prefix.size(1)

    def step(self, tokens: Tensor) -> Tensor:
        """Feed tokens (N, 1), the newest of each hypothesis; -> next-token logits (N, V)."""
        self.prefix = torch.cat([self.prefix, tokens], dim=1)  # (N, t + 1)
        new = tokens if self.caches is not None else self.prefix  # the cache holds the rest
        logits, _, _ = self.model.decode(
            new, self.memory, self.src_mask, memory_kv=self.memory_kv, caches=self.caches
        )
        return logits[:, -1, :]  # (N, V)

    def reorder(self, order: Tensor) -> None:
        """Row i of every hypothesis state becomes old row order[i] (beam search).

        Beams only ever move within their own sentence, whose source rows are identical, so
        the encoder's keys and values and the source mask need no reordering.
        """
        self.prefix = self.prefix.index_select(0, order)
        for cache in self.caches or []:
            reorder_cache(cache, order)


def _rename_old_norms(module, state_dict, prefix, *args) -> None:
    """Give a state dict from before the shared blocks today's names (a load_state_dict
    pre-hook): `encoder.0.res_attn.norm.weight` -> `encoder.0.ln_1.weight`, and so on."""
    for key in list(state_dict):
        for old, new in OLD_NORM_NAMES.items():
            if key.startswith(prefix) and f".{old}" in key:
                state_dict[key.replace(f".{old}", f".{new}")] = state_dict.pop(key)
