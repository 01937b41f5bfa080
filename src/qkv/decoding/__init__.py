"""From a model to tokens: sampling a GPT (`sampling`), greedy decoding and beam search of an
encoder-decoder (`beam`), batch translation of strings (`translate`), and quantized weights
for decoding (`quantize`, imported on its own: it needs torchao)."""

from qkv.decoding.beam import (
    beam_search,
    greedy_decode,
    length_penalty,
    next_log_probs,
    translate_ids,
)
from qkv.decoding.sampling import (
    Sampling,
    sample_next,
    sample_stream,
    stream_samples,
    stream_text,
)

__all__ = [
    "Sampling",
    "beam_search",
    "greedy_decode",
    "length_penalty",
    "next_log_probs",
    "sample_next",
    "sample_stream",
    "stream_samples",
    "stream_text",
    "translate_ids",
]
