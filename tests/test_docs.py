"""Every ```python block of the docs runs (examples that cannot rot)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = sorted((Path(__file__).resolve().parents[1] / "docs").rglob("*.md"))
BLOCKS = [
    pytest.param(block, id=f"{path.name}-{i}")
    for path in DOCS
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S))
]


def test_docs_have_examples():
    assert any("difftrust.md" in str(p.id) for p in BLOCKS)


@pytest.mark.parametrize("block", BLOCKS)
def test_doc_example_runs(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "<doc>", "exec"), {"__name__": "__doc_example__"})
