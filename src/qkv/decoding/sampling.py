"""Sampling the next token from a model's logits: temperature, top-k, top-p (nucleus).

Shape legend: B batch, T time, V vocabulary.

    p(token) = softmax(logits / temperature)

Temperature below 1 sharpens the distribution, above 1 flattens it, and 0 means greedy
(argmax). Top-k keeps the k most likely tokens (Fan et al., 2018); top-p keeps the smallest set
of most likely tokens whose probability adds up to at least p (Holtzman et al., 2020). Both
renormalise what they keep.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from qkv.errors import QkvError
from qkv.tokenizer.base import Tokenizer, decode_stream


def check_sampling_options(
    max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None
) -> None:
    """Reject options that have no meaning, with one line each."""
    if max_new_tokens < 0:
        raise QkvError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise QkvError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise QkvError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise QkvError(f"top_p must be in (0, 1], got {top_p}")


def filter_top_k(logits: Tensor, k: int) -> Tensor:
    """Set every logit below the k-th largest of its row to -inf. logits: (B, V)."""
    k = min(k, logits.size(-1))
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: Tensor, p: float) -> Tensor:
    """Keep the smallest most-likely set with total probability >= p. logits: (B, V)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # probability of the tokens ranked above
    drop_sorted = mass_before >= p  # the most likely token always stays (mass_before = 0)
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sample_next(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick one token per row of logits (B, V) -> (B, 1)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = filter_top_k(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = filter_top_p(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)


@dataclass(frozen=True)
class Sampling:
    """How each next token is drawn: temperature (0: greedy), top-k, top-p, the generator."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    generator: torch.Generator | None = None

    def next_token(self, logits: Tensor) -> Tensor:
        """logits (B, V) -> one token per row (B, 1)."""
        return sample_next(logits, self.temperature, self.top_k, self.top_p, self.generator)


def sample_stream(
    next_logits: Callable[[Tensor], Tensor], idx: Tensor, max_new_tokens: int, sampling: Sampling
) -> Iterator[Tensor]:
    """Autoregressive sampling: feed the sequence so far, sample, append, repeat.

    `next_logits` maps the ids so far (B, T) to the next token's logits (B, V); each new token
    (B, 1) is yielded as soon as it is drawn.
    """
    check_sampling_options(max_new_tokens, sampling.temperature, sampling.top_k, sampling.top_p)
    for _ in range(max_new_tokens):
        token = sampling.next_token(next_logits(idx))
        idx = torch.cat([idx, token], dim=1)  # (B, T + 1)
        yield token


def stream_text(
    model, tokenizer: Tokenizer, prompt: str, max_new_tokens: int, sampling: Sampling
) -> Iterator[str]:
    """The prompt's text, then the text of each new token as soon as it is sampled.

    Without a prompt, sampling starts where the tokenizer says texts start (a newline, or
    GPT-2's <|endoftext|>, shown as nothing). A byte-level token may end inside a character:
    only whole characters come out (`decode_stream`).
    """
    for _, piece in stream_samples(model, tokenizer, prompt, max_new_tokens, sampling, 1):
        yield piece


def stream_samples(
    model,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int,
    sampling: Sampling,
    num_samples: int = 1,
) -> Iterator[tuple[int, str]]:
    """`num_samples` continuations of one prompt, decoded as one batch: (sample, text) pairs.

    Every row starts from the same prompt, so the batch (M, T) needs no padding, and each step
    reads the weights once for all M rows: at batch 1 a step is bound by reading the weights
    (`qkv.decoding.quantize`), so M samples cost far less than M times one. Rows are
    independent (attention never crosses rows), so a greedy row is the token sequence a
    batch of one gives. Sample 0 streams as it is drawn; the others follow, each the prompt's
    text and then its own, as `stream_text` gives them.
    """
    if num_samples < 1:
        raise QkvError(f"num_samples must be >= 1, got {num_samples}")
    text, ids = (prompt, tokenizer.encode(prompt)) if prompt else tokenizer.empty_prompt()
    device = next(model.parameters()).device
    idx = torch.tensor([ids] * num_samples, device=device)  # (M, T)
    later: list[list[int]] = [[] for _ in range(num_samples - 1)]

    def first_row() -> Iterator[int]:
        for token in model.stream(idx, max_new_tokens, sampling):  # (M, 1)
            for row, new in zip(later, token[1:, 0].tolist(), strict=True):
                row.append(new)
            yield token[0, 0].item()

    yield 0, text
    for piece in decode_stream(tokenizer, first_row()):
        yield 0, piece
    for sample, row in enumerate(later, start=1):
        yield sample, text
        for piece in decode_stream(tokenizer, row):
            yield sample, piece
