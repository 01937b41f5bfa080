"""The planted-bug list in tools/mutants.py stays true to the code and to docs/testing.md.

Running the mutants takes about a minute and `.ci/run` does it after the suite; these checks
are the cheap part: every edit still applies to exactly one place, every catching test
exists, and the docs show the list as it is.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_mutants():
    spec = importlib.util.spec_from_file_location("mutants", ROOT / "tools" / "mutants.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutants"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


MUTANTS = load_mutants()


@pytest.mark.parametrize("mutant", MUTANTS.MUTANTS, ids=lambda m: m.name)
def test_each_mutant_edits_one_place_and_names_tests_that_exist(mutant):
    source = (ROOT / mutant.path).read_text(encoding="utf-8")
    assert source.count(mutant.before) == 1
    assert mutant.after != mutant.before and mutant.caught_by
    for node in mutant.caught_by:
        file, name = node.split("::")
        assert re.search(rf"^def {name}\(", (ROOT / file).read_text(), re.M), node


def test_the_mutant_names_are_unique():
    names = [m.name for m in MUTANTS.MUTANTS]
    assert len(names) == len(set(names))


def test_docs_testing_shows_the_current_table():
    assert MUTANTS.markdown() in (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
