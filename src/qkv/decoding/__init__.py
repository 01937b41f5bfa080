"""From a model to tokens: sampling a GPT (`sampling`), greedy decoding and beam search of an
encoder-decoder (`beam`), and batch translation of strings (`translate`)."""

from qkv.decoding.beam import (
    beam_search,
    greedy_decode,
    length_penalty,
    next_log_probs,
    translate_ids,
)
from qkv.decoding.sampling import Sampling, sample_next, sample_stream, stream_text

__all__ = [
    "Sampling",
    "beam_search",
    "greedy_decode",
    "length_penalty",
    "next_log_probs",
    "sample_next",
    "sample_stream",
    "stream_text",
    "translate_ids",
]
