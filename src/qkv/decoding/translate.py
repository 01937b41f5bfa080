"""Strings in, strings out: batch translation with a seq2seq model."""

from __future__ import annotations

from qkv.config.choices import EOS_ID
from qkv.data.pairs import pad
from qkv.decoding.beam import translate_ids
from qkv.errors import QkvError

TRANSLATE_BATCH = 64  # sentences decoded together


def check_decoding_options(beam: int, alpha: float) -> None:
    if beam < 1:
        raise QkvError(f"--beam must be >= 1, got {beam}")
    if alpha < 0:
        raise QkvError(f"--alpha must be >= 0, got {alpha}")


def translate_texts(
    model, tokenizer, texts: list[str], beam: int = 4, alpha: float = 0.6
) -> list[str]:
    """Translate strings in batches (greedy for beam 1, else beam search with length penalty
    alpha); a character outside the vocabulary, or a source too long, is a QkvError."""
    check_decoding_options(beam, alpha)
    device = next(model.parameters()).device
    limit = model.config.max_len
    outputs = []
    for start in range(0, len(texts), TRANSLATE_BATCH):
        chunk = texts[start : start + TRANSLATE_BATCH]
        rows = [tokenizer.encode(text) + [EOS_ID] for text in chunk]
        too_long = [len(r) for r in rows if len(r) > limit]
        if too_long:
            raise QkvError(f"an input has {too_long[0]} tokens; this model reads at most {limit}")
        ids = translate_ids(model, pad(rows, device), beam, alpha)
        outputs += [tokenizer.decode(row) for row in ids]
    return outputs
