"""Sequence-to-sequence data that needs no download: generated tasks and TSV files of pairs.

Every task is a list of (source, target) strings, drawn from a seed, in three splits whose
examples share nothing the model could memorise:

- `dates`: a date written in one of several languages and styles -> ISO 8601, e.g.
  "jeudi 26 novembre 2026", "26.11.26", "Nov 26, 2026", "26 de noviembre de 2026" ->
  "2026-11-26". The text comes from Babel's CLDR locale data (`babel.dates.format_date`).
  The splits are disjoint *by date*: a test date never appears in training, in any style.
  The task is well-posed (one source string, one date): years run 1950-2049, so a two-digit
  year names one year, and numeric styles are kept only when the day comes before the month
  (en_US's "11/26/26" is left out, since "03/04/26" would read differently in London).
- `numbers`: an integer below 100,000 written in words in one of seven languages (num2words)
  -> its digits. Disjoint by number.
- `copy`, `reverse`, `sort`: a random lowercase string (3 to `synthetic_len` letters) -> itself,
  reversed, its letters sorted. Disjoint by string.
- a TSV file: one `source<TAB>target` pair per line, shuffled with the seed and split 90/5/5.
"""

from __future__ import annotations

import datetime
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qkv.errors import QkvError

Pair = tuple[str, str]
TASKS = ("dates", "numbers", "copy", "reverse", "sort")

DATE_LOCALES = ("en_US", "en_GB", "fr_FR", "de_DE", "es_ES", "it_IT", "pt_BR", "pt_PT", "nl_NL")
# a few styles beyond each locale's full/long/medium/short
EXTRA_DATE_PATTERNS = (
    ("en_US", "EEE, MMM d, y"),
    ("en_GB", "EEE d MMM yy"),
    ("fr_FR", "EEE d MMM y"),
    ("de_DE", "EEEE, d. MMM y"),
    ("de_DE", "d.M.y"),
    ("es_ES", "EEE d 'de' MMMM 'de' y"),
    ("it_IT", "d/M/y"),
    ("nl_NL", "d-M-yy"),
    ("pt_BR", "d 'de' MMM 'de' yy"),
)
FIRST_DATE, LAST_DATE = datetime.date(1950, 1, 1), datetime.date(2049, 12, 31)

NUMBER_LANGUAGES = ("en", "fr", "de", "es", "it", "pt", "nl")
NUMBER_LIMIT = 100_000


@dataclass
class PairSplits:
    """Train, val and test pairs."""

    train: list[Pair]
    val: list[Pair]
    test: list[Pair]


def is_well_posed_pattern(pattern: str) -> bool:
    """A numeric date pattern reads the same everywhere only if the day comes first."""
    if "MMM" in pattern:  # the month is a word
        return True
    return pattern.index("d") < pattern.index("M")


def date_patterns() -> list[tuple[str, str]]:
    """Every (locale, CLDR pattern) the `dates` task writes dates in."""
    from babel.dates import get_date_format

    patterns = []
    for locale in DATE_LOCALES:
        for width in ("full", "long", "medium", "short"):
            patterns.append((locale, get_date_format(width, locale=locale).pattern))
    patterns.extend(EXTRA_DATE_PATTERNS)
    unique = list(dict.fromkeys(patterns))
    return [(loc, pat) for loc, pat in unique if is_well_posed_pattern(pat)]


def format_date(date: datetime.date, locale: str, pattern: str) -> str:
    from babel.dates import format_date as babel_format_date

    return babel_format_date(date, pattern, locale=locale)


def _disjoint_pools(items: list, n_val: int, n_test: int, seed: int) -> tuple[list, list, list]:
    """Shuffle `items` with `seed`; the first n_test go to test, the next n_val to val."""
    if n_val + n_test >= len(items):
        raise QkvError(
            f"data.n_val + data.n_test = {n_val + n_test} leaves none of the {len(items)} "
            "examples to train on"
        )
    items = list(items)
    random.Random(seed).shuffle(items)
    return items[n_test + n_val :], items[n_test : n_test + n_val], items[:n_test]


def dates_task(n_train: int, n_val: int, n_test: int, seed: int = 0) -> PairSplits:
    days = (LAST_DATE - FIRST_DATE).days + 1
    every_date = [FIRST_DATE + datetime.timedelta(days=i) for i in range(days)]
    train, val, test = _disjoint_pools(every_date, n_val, n_test, seed)
    patterns = date_patterns()
    rng = random.Random(seed + 1)

    def pairs(dates: list[datetime.date]) -> list[Pair]:
        return [(format_date(d, *rng.choice(patterns)), d.isoformat()) for d in dates]

    return PairSplits(pairs(rng.choices(train, k=n_train)), pairs(val), pairs(test))


def number_in_words(number: int, language: str) -> str:
    from num2words import num2words

    return num2words(number, lang=language)


def numbers_task(n_train: int, n_val: int, n_test: int, seed: int = 0) -> PairSplits:
    train, val, test = _disjoint_pools(list(range(NUMBER_LIMIT)), n_val, n_test, seed)
    rng = random.Random(seed + 1)

    def pairs(numbers: list[int]) -> list[Pair]:
        return [(number_in_words(n, rng.choice(NUMBER_LANGUAGES)), str(n)) for n in numbers]

    return PairSplits(pairs(rng.choices(train, k=n_train)), pairs(val), pairs(test))


SYNTHETIC: dict[str, Callable[[str], str]] = {
    "copy": lambda s: s,
    "reverse": lambda s: s[::-1],
    "sort": lambda s: "".join(sorted(s)),
}
_SPLIT_OF_BUCKET = {0: "test", 1: "val"}  # crc32 % 20: 5% of strings test, 5% val, 90% train


def synthetic_split(text: str) -> str:
    """Which split a string belongs to: fixed by its hash, so no string is in two splits."""
    return _SPLIT_OF_BUCKET.get(zlib.crc32(text.encode()) % 20, "train")


def synthetic_task(
    name: str, n_train: int, n_val: int, n_test: int, seed: int = 0, max_len: int = 12
) -> PairSplits:
    if max_len < 3:
        raise QkvError(f"data.synthetic_len must be at least 3, got {max_len}")
    rng = random.Random(seed)
    wanted = {"train": n_train, "val": n_val, "test": n_test}
    found: dict[str, list[Pair]] = {split: [] for split in wanted}
    while any(len(found[s]) < n for s, n in wanted.items()):
        length = rng.randint(3, max_len)
        text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(length))
        split = synthetic_split(text)
        if len(found[split]) < wanted[split]:
            found[split].append((text, SYNTHETIC[name](text)))
    return PairSplits(found["train"], found["val"], found["test"])


def read_pairs(path: str | Path) -> list[Pair]:
    """source<TAB>target lines -> pairs. Blank lines are skipped; a line without a tab is a
    one-line error naming the file and the line; the first tab splits source from target."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise QkvError(f"{path}: no such file, and not a task ({', '.join(TASKS)})") from None
    except UnicodeDecodeError as exc:
        raise QkvError(f"{path}: not valid UTF-8 (byte {exc.start}); convert it first") from None
    except OSError as exc:
        raise QkvError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if "\t" not in line:
            raise QkvError(
                f"{path}:{number}: no tab in this line; each line must be source<TAB>target"
            )
        source, target = line.split("\t", 1)
        pairs.append((source, target))
    return pairs


def split_pairs(pairs: list[Pair], seed: int, origin: str) -> PairSplits:
    """Shuffle with `seed`; 5% test, 5% val (at least one each), the rest train."""
    if len(pairs) < 3:
        raise QkvError(f"{origin}: {len(pairs)} pair(s); need at least 3 (train, val, test)")
    n_held = max(1, len(pairs) // 20)
    train, val, test = _disjoint_pools(pairs, n_held, n_held, seed)
    return PairSplits(train, val, test)


def load_pairs(
    source: str, n_train: int, n_val: int, n_test: int, seed: int = 0, synthetic_len: int = 12
) -> PairSplits:
    """A task by name, or a TSV file by path."""
    if source == "dates":
        return dates_task(n_train, n_val, n_test, seed)
    if source == "numbers":
        return numbers_task(n_train, n_val, n_test, seed)
    if source in SYNTHETIC:
        return synthetic_task(source, n_train, n_val, n_test, seed, synthetic_len)
    return split_pairs(read_pairs(source), seed, source)


def pair_splits(data) -> PairSplits:
    """The splits a seq2seq run's [data] table (`Seq2SeqDataConfig`) describes."""
    return load_pairs(
        data.source, data.n_train, data.n_val, data.n_test, data.seed, data.synthetic_len
    )
