"""Text in, batches of token ids out: corpora, the token cache, the train/val split, batches."""

from qkv.data.dataset import Corpus, prepare_corpus, read_text_source
from qkv.data.sampler import BatchSampler, eval_windows

__all__ = ["BatchSampler", "Corpus", "eval_windows", "prepare_corpus", "read_text_source"]
