"""The typed public API: py.typed ships, every public module declares what it exports."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import agentropy

# Modules whose import needs an optional framework, and the CLI (commands, not an API).
SKIP = ("agentropy.integrations.trl", "agentropy.integrations.verl", "agentropy.integrations.vllm",
        "agentropy.cli", "agentropy.__main__")  # fmt: skip


def _public_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(agentropy.__path__, "agentropy."):
        leaf = info.name.rsplit(".", 1)[-1]
        if info.ispkg or leaf.startswith("_") or info.name.startswith(SKIP):
            continue
        names.append(info.name)
    return names


def test_py_typed_marker_ships_with_the_package() -> None:
    assert (Path(agentropy.__file__).parent / "py.typed").is_file()
    text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert 'agentropy = ["py.typed"]' in text  # package data: the wheel carries it


@pytest.mark.parametrize("name", _public_modules())
def test_public_module_declares_all_and_every_name_exists(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported, f"{name} has no __all__"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names missing attributes: {missing}"
    assert len(set(exported)) == len(exported)


def test_readme_public_api_table_matches_all() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Public API", 1)[1].split("\n\n", 3)[2]
    rows = [r for r in section.splitlines() if r.startswith("| `agentropy")]
    assert len(rows) >= 10
    for row in rows:
        cells = row.split(" | ")
        name = cells[0].strip("| `")
        listed = [n.strip("`") for n in cells[1].rstrip(" |").split(", ")]
        actual = list(importlib.import_module(name).__all__)
        expected = f"| `{name}` | " + ", ".join(f"`{n}`" for n in actual) + " |"
        assert listed == actual, f"README row for {name} is stale; replace it with:\n{expected}"
