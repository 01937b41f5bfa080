"""docs/guide.md runs as a reader pasting its blocks would: every ```python fence, in order,
in one namespace, in an empty directory. Each block checks its own claims with `assert`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "guide.md"
FENCE = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python fences of a markdown text, in order."""
    return FENCE.findall(text)


def test_the_guide_has_its_blocks():
    blocks = python_blocks(GUIDE.read_text(encoding="utf-8"))
    assert len(blocks) >= 15
    assert "model.positional" in blocks[0] or "positional" in blocks[0]


def test_every_python_block_of_the_guide_runs_in_order(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__guide__"}
    for n, block in enumerate(python_blocks(GUIDE.read_text(encoding="utf-8"))):
        code = compile(block, f"docs/guide.md, python block {n + 1}", "exec")
        try:
            exec(code, namespace)
        except Exception as exc:
            pytest.fail(f"python block {n + 1} of docs/guide.md failed: {exc!r}\n{block}")
    assert (tmp_path / "copier.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "equivariant: True | invariant: False" in out
