"""The documentation site builds with warnings as errors, and the docstring examples run.

* ``mkdocs build --strict`` (``mkdocs.yml``): broken links and anchors, missing pages and
  docstrings that mkdocstrings cannot render fail the build.
* The ``>>>`` examples in the public modules' docstrings run with :mod:`doctest` (examples
  marked ``# doctest: +SKIP`` are skipped). The ```` ```python ```` blocks of ``docs/**/*.md``
  are run by ``tests/test_docs.py``.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Markdown that was not rendered: a fence, a bullet or a numbered item at the start of a text line.
_RAW = re.compile(r"^\s*(?:\* |- |\d+\. )|```")

#: Modules whose docstring examples are run (each takes well under a second).
DOCTEST_MODULES = (
    "difftrust",
    "difftrust.layer",
    "difftrust.cg",
    "difftrust.metrics",
    "difftrust.conic",
    "difftrust.reduced",
    "rl.envs",
    "rl.envs.safenav",
    "rl.envs.safety_gym_tasks",
    "rl.envs.safety_gym_import",
    "rl.envs.safety_gym",
    "rl.envs.safety_gym_build",
    "rl.policy",
    "rl.rollout",
    "rl.meta_cpo",
    "rl.runtime.config",
    "rl.runtime.checkpoint",
    "rl.runtime.seeding",
    "rl.runtime.logging",
    "rl.runtime.parallel",
)
NEEDS_SAFETY_GYMNASIUM = {"rl.envs.safety_gym_import", "rl.envs.safety_gym", "rl.envs.safety_gym_build"}


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    assert (site / "index.html").is_file()
    api = (site / "api" / "difftrust" / "index.html").read_text()
    assert "TrustRegionStep" in api and "FisherMetric" in api
    rl_api = (site / "api" / "rl" / "index.html").read_text()
    assert "MetaCPOTrainer" in rl_api
    concepts = (site / "concepts" / "index.html").read_text()
    for figure in ("trust_region_cases.png", "dual_function.png", "meta_gradient.png"):
        assert figure in concepts
        assert (site / "figures" / figure).is_file()
    for page in ("quickstart", "results", "howto/custom-tasks", "howto/cost-channels"):
        assert (site / page / "index.html").is_file(), page
    # docstring doctests render as code, not as nested block quotes
    assert "<blockquote>" not in api and "<blockquote>" not in rl_api
    # fences, lists and numbered steps render as such on every page (no raw Markdown left in
    # the text: a fence inside a list item, or an item glued to the paragraph before it)
    raw = []
    for page in sorted(site.rglob("*.html")):
        text = re.sub(r"<(pre|script)\b.*?</\1>", "", page.read_text(), flags=re.S)
        raw += [
            f"{page.relative_to(site)}: {line.strip()[:80]}"
            for line in text.splitlines()
            if _RAW.search(line)
        ]
    assert raw == []
    home = (site / "index.html").read_text()
    assert "<code>text" not in home and home.count("<li>") >= 2


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    if name in NEEDS_SAFETY_GYMNASIUM and importlib.util.find_spec("safety_gymnasium") is None:
        pytest.skip("safety-gymnasium is not installed")
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    module = importlib.import_module(name)
    tests = [t for t in doctest.DocTestFinder().find(module, name) if t.examples]
    assert tests, f"{name} has no docstring examples; drop it from DOCTEST_MODULES"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    for test in tests:
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(report)
