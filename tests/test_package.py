"""Package-level guarantees: cheap import, version, the CLI entry point."""

from __future__ import annotations

import subprocess
import sys

import pytest

import agentropy

HEAVY = ("torch", "transformers", "pyarrow", "plotly", "scipy", "ruptures", "trl", "verl", "vllm")


def test_version_is_a_string():
    assert isinstance(agentropy.__version__, str)
    assert agentropy.__version__.count(".") == 2


def test_import_agentropy_imports_nothing_heavy():
    code = (
        "import sys, agentropy, agentropy.errors; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"`import agentropy` pulled in heavy modules: {out}"


@pytest.mark.slow
def test_console_script_version():
    out = subprocess.run(
        [sys.executable, "-m", "agentropy", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"agentropy {agentropy.__version__}"
