"""The tests that the docs name as proof exist, under those names.

docs/failures.md names the test behind every one-line error and docs/testing.md the tests
that catch each planted bug; a renamed or moved test must take its docs along. And every
module stays at most 350 lines, as the standard asks.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = {path.name: path.read_text(encoding="utf-8") for path in (ROOT / "tests").glob("test_*.py")}


def named_tests(doc: str) -> list[tuple[str, str]]:
    """(file, test) for each `test_file.py::test_name` in a doc; a bare `test_name` right
    after one belongs to the same file."""
    found, current = [], None
    text = (ROOT / "docs" / doc).read_text(encoding="utf-8")
    for match in re.finditer(r"`(?:(test_\w+\.py)::)?(test_\w+)(?:\[[^\]]*\])?`", text):
        current = match.group(1) or current
        found.append((current, match.group(2)))
    return found


@pytest.mark.parametrize("doc", ["failures.md", "testing.md"])
def test_every_test_a_doc_names_exists_in_its_file(doc):
    named = named_tests(doc)
    assert named
    missing = [
        f"{file}::{name}"
        for file, name in named
        if not re.search(rf"^def {name}\(", TESTS.get(file, ""), re.M)
    ]
    assert missing == []


MAX_MODULE_LINES = 350  # the standard: small modules, read in one sitting


def test_every_module_and_test_file_is_at_most_350_lines():
    files = [*ROOT.glob("src/qkv/**/*.py"), *ROOT.glob("tests/*.py"), *ROOT.glob("benchmarks/*.py")]
    too_long = {
        str(path.relative_to(ROOT)): lines
        for path in files
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert files and too_long == {}
