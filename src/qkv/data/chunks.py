"""A source's text cut into chunks that encode, one by one, to the ids of the whole.

The text is the files' texts joined (`sources`); its first `cut` characters are the train
split and the rest the val split, so the chunks break exactly at `cut`, as encoding
text[:cut] and text[cut:] apart always did. Elsewhere a chunk ends where cutting changes no
id:

- a character tokenizer: anywhere (`char_boundary`);
- a byte-level BPE: where GPT-2's pre-tokenizer starts a new piece anyway whatever follows
  (`bpe_boundary`), so every chunk's pieces, hence merges and ids, are the whole text's.
  Its regex is 's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
  (Radford et al., 2019). After a newline between two non-spaces (x\\nY), the newline is a
  piece of its own either way; before a space between two non-spaces (x Y), the space
  begins the next piece either way. A text with neither for `MAX_CHUNK` characters is cut
  there anyway: the one word cut in two may encode differently (bounded memory wins).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

CHUNK = 4 << 20  # characters per chunk, about
MAX_CHUNK = 8 * CHUNK  # a chunk without a boundary is cut here

Boundary = Callable[[str, int, int], int]  # (text, lo, hi) -> a cut in (lo, hi], or -1


@dataclass(frozen=True)
class Chunk:
    split: str  # train | val
    text: str
    end: int  # characters of the whole text up to this chunk's end


def char_boundary(text: str, lo: int, hi: int) -> int:
    """One token per character: any place is a boundary."""
    return min(hi, len(text))


def bpe_boundary(text: str, lo: int, hi: int) -> int:
    """The last place in (lo, hi] where GPT-2's pre-tokenizer cuts whatever follows."""
    end = min(hi, len(text) - 1)  # the character after the cut must be there to look at
    i = text.rfind("\n", lo, end)
    while i > lo:  # x\nY: cut after the newline
        if not text[i - 1].isspace() and not text[i + 1].isspace():
            return i + 1
        i = text.rfind("\n", lo, i)
    i = text.rfind(" ", lo, min(hi + 1, len(text) - 1))
    while i > lo:  # x Y: cut before the space
        if not text[i - 1].isspace() and not text[i + 1].isspace():
            return i
        i = text.rfind(" ", lo, i)
    return -1


def split_pieces(pieces: Iterable[str], start: int, cut: int) -> Iterator[tuple[str, str]]:
    """(split, piece) for the text's pieces from character `start`; a piece across `cut` is
    cut there."""
    position = start
    for piece in pieces:
        end = position + len(piece)
        if position < cut < end:
            yield "train", piece[: cut - position]
            yield "val", piece[cut - position :]
        elif piece:
            yield ("train" if end <= cut else "val"), piece
        position = end


def chunks(
    pieces: Iterable[str],
    start: int,
    cut: int,
    boundary: Boundary,
    size: int = CHUNK,
) -> Iterator[Chunk]:
    """The text from character `start` on (its `pieces`) as chunks of about `size`
    characters, each ending at a boundary, at `cut`, or at the end of the text."""
    buffer: list[str] = []
    held, split, position = 0, "train" if start < cut else "val", start
    for piece_split, piece in split_pieces(pieces, start, cut):
        if piece_split != split:  # the cut: everything before it goes out whole
            if held:
                yield Chunk(split, "".join(buffer), position + held)
                position += held
            buffer, held, split = [], 0, piece_split
        buffer.append(piece)
        held += len(piece)
        while held >= size:
            text = "".join(buffer)
            at = _first_boundary(text, boundary, size)
            if at <= 0:
                if held < MAX_CHUNK:
                    buffer = [text]
                    break
                at = size
            position += at
            yield Chunk(split, text[:at], position)
            buffer, held = [text[at:]], len(text) - at
    if held:
        yield Chunk(split, "".join(buffer), position + held)


def _first_boundary(text: str, boundary: Boundary, size: int) -> int:
    """A boundary past size/2, as near `size` as there is one: windows up to size, 2 size,
    4 size, ... (a text with long stretches without one gives longer chunks, not more)."""
    hi = size
    while True:
        at = boundary(text, size // 2, hi)
        if at > 0 or hi >= len(text):
            return at
        hi *= 2


def sub_chunks(text: str, boundary: Boundary, size: int) -> list[str]:
    """`text` cut at boundaries into parts of about `size` characters (for batch encoding)."""
    parts, rest = [], text
    while len(rest) > 2 * size:
        at = boundary(rest, size // 2, 2 * size)
        if at <= 0:
            break
        parts.append(rest[:at])
        rest = rest[at:]
    parts.append(rest)
    return parts
