"""The documentation's examples run, and the metric-name page matches the code's table."""

from __future__ import annotations

import doctest
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(DOCS.glob("*.md"))


def test_docs_exist() -> None:
    names = {p.name for p in PAGES}
    assert {"index.md", "verbs.md", "trace-format.md", "metrics.md", "architecture.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_doc_examples_run(page: Path) -> None:
    result = doctest.testfile(
        str(page), module_relative=False, optionflags=doctest.ELLIPSIS, verbose=False
    )
    assert result.failed == 0, f"{page.name}: {result.failed} example(s) failed"


def test_every_example_page_has_examples() -> None:
    # Pages that promise runnable examples must keep them (a deleted block is a lost test).
    for name in ("index.md", "verbs.md", "trace-format.md"):
        assert ">>> " in (DOCS / name).read_text(), name


def test_metric_page_is_generated_from_the_code() -> None:
    out = subprocess.run(
        [sys.executable, str(DOCS / "gen_metrics.py"), "--check"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


def test_breath_metric_names_are_the_trl_adapter_keys() -> None:
    from agentropy.integrations._trl_core import BREATH_KEYS
    from agentropy.metrics import METRICS

    documented = {m.name for m in METRICS if m.name.startswith("breath/") and "trl" in m.producers}
    assert documented == set(BREATH_KEYS)


@pytest.mark.slow
def test_site_builds_strict(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (the docs extra)")
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=DOCS.parent, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "index.html").is_file() and (tmp_path / "api" / "index.html").is_file()
