"""Which tokenizer a run gets, and reading tokenizer.json back."""

from __future__ import annotations

from pathlib import Path

from qkv.config.tree import read_json_config
from qkv.errors import QkvError
from qkv.tokenizer.base import Tokenizer
from qkv.tokenizer.bpe import DEFAULT_BPE_VOCAB, BPETokenizer
from qkv.tokenizer.char import CharTokenizer
from qkv.tokenizer.specials import Seq2SeqTokenizer


def new_tokenizer(
    kind: str, text: str, n_train_chars: int, vocab_size: int | None = None
) -> Tokenizer:
    """The tokenizer a fresh run asks for (`data.tokenizer`): char, bpe, or a directory.

    A character vocabulary is read from the whole text (else the val split could hold a
    character it cannot encode); a BPE learns its merges from the train split only, so the
    val split stays unseen (it still encodes: every byte is a token).
    """
    if kind == "char":
        return CharTokenizer.from_text(text)
    if kind == "bpe":
        return BPETokenizer.train(text[:n_train_chars], vocab_size or DEFAULT_BPE_VOCAB)
    directory = Path(kind).expanduser()
    if not directory.is_dir():
        raise QkvError(
            f"data.tokenizer={kind!r}: use 'char', 'bpe', or a directory with a tokenizer"
        )
    return BPETokenizer.from_pretrained(directory)


def load_tokenizer(path: Path) -> Tokenizer:
    """Read tokenizer.json: qkv's character format or a `tokenizers` (BPE) file."""
    hint = f"is {path.parent} a qkv checkpoint?"
    tree = read_json_config(path, hint, what="tokenizer file")
    if "model" in tree and "kind" not in tree:
        return BPETokenizer.from_file(path)
    kind = tree.get("kind")
    if kind == Seq2SeqTokenizer.kind:
        return Seq2SeqTokenizer.from_dict(tree, str(path))
    if kind != "char":
        raise QkvError(f"{path}: unknown tokenizer kind {kind!r}")
    chars = tree.get("chars")
    if not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
        raise QkvError(f"{path}: 'chars' must be a list of characters")
    return CharTokenizer(chars)
