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


ROOT = Path(__file__).resolve().parents[1]
#: Where the repository names files to a reader (the benchmark reports under docs/results and
#: benchmarks/results quote their own generators' history and are checked by their tests).
NAMING_SCOPE = ("README.md", "CHANGELOG.md", "mkdocs.yml", "pyproject.toml", "Makefile", "CITATION.cff")
NAMING_DIRS = ("docs/", "rl/", "difftrust/")
FILE_NAME = re.compile(r"(?<![\w.])[\w-]+(?:/[\w.-]+)*\.(?:md|py|toml|yml|yaml|cff)\b")


_NOT_THE_REPOSITORY = {
    ".git",
    ".venv",
    "site",
    "runs",
    "build",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
}


def _repository_files() -> list[str]:
    """Every file of the checkout (relative POSIX paths), without virtual environments, build
    outputs and caches (works without git, e.g. in an unpacked source archive)."""
    out = []
    for path in ROOT.rglob("*"):
        parts = path.relative_to(ROOT).parts
        if any(
            p in _NOT_THE_REPOSITORY or p.startswith(".hypothesis") or p.endswith(".egg-info") for p in parts
        ):
            continue
        if path.is_file():
            out.append(path.relative_to(ROOT).as_posix())
    return out


def test_no_file_names_a_file_outside_the_repository():
    files = _repository_files()
    names = {Path(f).name for f in files}
    scope = [
        f
        for f in files
        if (f in NAMING_SCOPE or (f.startswith(NAMING_DIRS) and not f.startswith("docs/results/")))
        and f.endswith((".md", ".py", ".yml", ".toml", ".cff", "Makefile"))
    ]
    assert "README.md" in scope and any(f.startswith("docs/") for f in scope)
    missing = [
        f"{f}: {name}"
        for f in scope
        for name in FILE_NAME.findall((ROOT / f).read_text())
        if Path(name).name not in names
    ]
    assert missing == []
