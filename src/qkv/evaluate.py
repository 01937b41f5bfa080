"""`qkv eval`: how good a checkpoint is, as each model kind measures it.

A language model (DESIGN.md's definition): the mean next-token loss over the whole val split.
Every val token but the first is predicted once, from consecutive non-overlapping windows of
the model's context length (the first token of each window is predicted from little context,
which is why this number reads a little higher than the random-window estimate during
training). Reported in nats per token, and in bits per character:

    val_loss = (1 / N) sum_t -ln p(x_t | x_<t)        bpc = N * val_loss / (ln 2 * n_chars)

n_chars is the number of characters in the scored tokens' text. It is summed from a count per
token id (`Tokenizer.char_counts`) rather than by decoding each id: a byte-level BPE token can
hold part of a character, and decoding that part alone gives U+FFFD, which would count a split
emoji twice. The count credits a character to the token that holds its first byte, so it adds
up exactly over any run of tokens.

An encoder-decoder: exact match, BLEU and chrF (sacrebleu; Papineni et al., 2002; Popovic,
2015) of its translations of the test split, or of every pair of a TSV file. BLEU counts
character n-grams for a character-level model (sacrebleu's "char" tokenisation: one-word
outputs such as a date have no 4-grams of words) and words ("13a") for a BPE one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from qkv.data import eval_windows, prepare_corpus
from qkv.data.tasks import pair_splits, read_pairs
from qkv.decoding.translate import check_decoding_options, translate_texts
from qkv.errors import QkvError
from qkv.tokenizer import Tokenizer


@dataclass
class EvalOptions:
    """What `qkv eval` may be told; each kind reads the options that concern it."""

    data: str | None = None  # default: the data the model trained on
    batch_size: int = 32  # windows per forward pass (language models)
    beam: int = 4  # beam size (encoder-decoders; 1 is greedy)
    alpha: float = 0.6  # length penalty (encoder-decoders)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise QkvError(f"--batch-size must be >= 1, got {self.batch_size}")
        check_decoding_options(self.beam, self.alpha)


@dataclass
class EvalResult:
    val_loss: float  # nats per token
    bpc: float  # bits per character
    tokens: int  # tokens scored

    def line(self) -> str:
        return f"val_loss={self.val_loss:.4f} bpc={self.bpc:.4f} tokens={self.tokens}"


@torch.no_grad()
def evaluate(model, ids: np.ndarray, tokenizer: Tokenizer, batch_size: int = 32) -> EvalResult:
    """Score every target of `ids` once with `model` (in eval mode, on its own device)."""
    model.eval()
    device = next(model.parameters()).device
    total_nats, count = 0.0, 0
    for x, y in eval_windows(ids, model.config.block_size, batch_size):
        logits, _ = model(x.to(device))
        loss = F.cross_entropy(
            logits.flatten(0, 1).float(), y.to(device).flatten(), reduction="sum"
        )
        total_nats += loss.item()
        count += y.numel()
    n_chars = _chars_of(tokenizer, ids)
    return EvalResult(total_nats / count, total_nats / (math.log(2) * n_chars), count)


def _chars_of(tokenizer: Tokenizer, ids, block: int = 1 << 22) -> int:
    """Characters in the text of ids[1:] (the scored targets), counted a block at a time so
    a large val split is never copied whole."""
    counts = tokenizer.char_counts()
    return sum(
        int(counts[np.asarray(ids[i : i + block], dtype=np.int64)].sum())
        for i in range(1, len(ids), block)
    )


def evaluate_language_model(checkpoint, model, options: EvalOptions) -> EvalResult:
    """The val split of `options.data` (default: the text the model trained on)."""
    config, tokenizer = checkpoint.config, checkpoint.tokenizer
    source = options.data or config.data.source
    data = config.data
    corpus = prepare_corpus(
        source,
        data.val_fraction,
        tokenizer,
        kind=data.tokenizer,
        vocab_size=data.vocab_size,
        text_field=data.text_field,
    )
    if len(corpus.val) < 2:
        raise QkvError(f"{source}: the val split has {len(corpus.val)} token(s), nothing to score")
    return evaluate(model, corpus.val, tokenizer, options.batch_size)


@dataclass
class TranslationScores:
    exact_match: float  # the fraction of outputs equal to their reference
    bleu: float
    chrf: float
    examples: int

    def line(self) -> str:
        return (
            f"exact_match={self.exact_match:.4f} bleu={self.bleu:.2f} chrf={self.chrf:.2f} "
            f"examples={self.examples}"
        )


def score_translations(
    hypotheses: list[str], references: list[str], char_level: bool
) -> TranslationScores:
    """Exact match, corpus BLEU and chrF of hypotheses against one reference each."""
    import sacrebleu

    exact = sum(h == r for h, r in zip(hypotheses, references, strict=True)) / len(references)
    tokenize = "char" if char_level else "13a"
    bleu = sacrebleu.corpus_bleu(hypotheses, [references], tokenize=tokenize).score
    chrf = sacrebleu.corpus_chrf(hypotheses, [references]).score
    return TranslationScores(exact, bleu, chrf, len(references))


def evaluate_translation(checkpoint, model, options: EvalOptions) -> TranslationScores:
    """The test split the model's config describes, or every pair of `options.data`."""
    config = checkpoint.config
    pairs = read_pairs(options.data) if options.data else pair_splits(config.data).test
    sources, references = [s for s, _ in pairs], [t for _, t in pairs]
    hypotheses = translate_texts(model, checkpoint.tokenizer, sources, options.beam, options.alpha)
    return score_translations(hypotheses, references, config.data.tokenizer == "char")
