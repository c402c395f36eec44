"""The default agent as a fixed artifact shipped in the repository (``agent/default/``).

Every command that runs "the embedded agent" loads the files under :data:`SHIPPED_DIR`
(safetensors weights, tokenizer, config, the training record ``agentropy_tiny.json`` and the
build record ``build.json``), so a fresh clone evaluates, trains and demos exactly the agent
RESULTS.md was measured with, without building anything. The shipped agent is used only while
its recorded recipe hash equals ``TinyRecipe().recipe_hash`` (which covers the recipe fields, the
training-format version, the ToolWorld version and the chat template); after a change to any of
them the default agent is rebuilt into the cache as before, until :func:`rebuild` (``agentropy
bootstrap --rebuild``) replaces the shipped files.

``build.json`` holds what the training record does not: the recipe hash, a hash of the training
transcripts (:func:`transcript_hash`), library versions, thread count, wall time of the build,
and the evaluation table of the shipped weights (greedy, held-out test split, per level and
fault family).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

__all__ = [
    "BUILD_FILE",
    "SHIPPED_DIR",
    "build_record",
    "library_versions",
    "read_build_record",
    "rebuild",
    "ship",
    "shipped_agent_path",
    "transcript_hash",
]

SHIPPED_DIR = Path(__file__).resolve().parent / "default"
"""Where the shipped default agent lives (inside the package)."""
BUILD_FILE = "build.json"
"""Name of the build record in an agent directory."""
_MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
"""Files copied from a built agent into the shipped directory (those that exist)."""
_NUMERIC_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "numpy")
"""Packages whose versions shape the agent's numerics (recorded; pinned in the constraints)."""


def library_versions() -> dict[str, str]:
    """Versions of python and of the packages that shape the agent's numerics."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in _NUMERIC_PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def read_build_record(path: str | os.PathLike[str] = SHIPPED_DIR) -> dict[str, Any]:
    """The ``build.json`` record of an agent directory (``{}`` if it has none)."""
    file = Path(path) / BUILD_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def shipped_agent_path(recipe: Any = None) -> Path | None:
    """The shipped agent's directory if it is complete and was built from ``recipe``.

    ``recipe`` defaults to ``TinyRecipe()``. None when the files are missing or the recorded
    recipe hash differs (the code, data or template changed since the agent was shipped).
    """
    from agentropy.agent import tiny

    recipe = recipe if recipe is not None else tiny.TinyRecipe()
    if not (SHIPPED_DIR / "model.safetensors").is_file():
        return None
    if not (SHIPPED_DIR / "config.json").is_file() or not (SHIPPED_DIR / tiny.INFO_FILE).is_file():
        return None
    if read_build_record(SHIPPED_DIR).get("recipe_hash") != recipe.recipe_hash:
        return None
    return SHIPPED_DIR


def transcript_hash(recipe: Any) -> str:
    """sha256 (16 hex digits) of the training transcripts ``recipe`` builds, as rendered JSON.

    The recipe hash keys on versions; this keys on the data itself, so a test can prove the
    shipped agent's record still matches what the current code generates.
    """
    from agentropy.agent import tiny

    world = tiny.corpus._world(recipe.world_seed)
    conversations = tiny.corpus._expert_conversations(
        world, split="train", levels=recipe.levels, n=recipe.n_tasks_per_level, seed=recipe.seed
    )
    conversations = tiny.corpus._rename_entities(
        world, conversations, prob=recipe.rename_prob, seed=recipe.seed
    )
    digest = hashlib.sha256()
    for level, messages in conversations:
        digest.update(json.dumps([level, messages], sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _eval_table(path: Path, *, episodes: int, families: tuple[str, ...]) -> list[dict[str, Any]]:
    """Greedy held-out success and recovery per level and fault family."""
    from agentropy.agent import tiny
    from agentropy.agent.runner import RunnerConfig
    from agentropy.env.toolworld import ToolWorld, ToolWorldConfig
    from agentropy.pipelines.compare import EvalConfig, run_eval

    model, tokenizer = tiny.load_agent(path)
    rows = []
    for family in families:
        world = ToolWorld(ToolWorldConfig(faults=family))
        levels = (0, 1, 2, 3) if family == "seen" else (2, 3)  # L0/L1 carry no faults
        config = EvalConfig(policies=("greedy",), levels=levels, episodes=episodes)
        result = run_eval(
            model, tokenizer, config=config, world=world, runner_config=RunnerConfig(batch_size=32)
        )
        for row in result["rows"]:
            rows.append(
                {
                    "faults": family,
                    "level": row["level"],
                    "policy": row["policy"],
                    "episodes": row["episodes"],
                    "success": row["success"],
                    "success_ci": row["success_ci"],
                    "failure_episodes": row["failure_episodes"],
                    "recovery": row["recovery"],
                }
            )
    return rows


def build_record(
    recipe: Any, *, wall_s: float, threads: int, eval_rows: list[dict[str, Any]], eval_episodes: int
) -> dict[str, Any]:
    """The ``build.json`` content for an agent built from ``recipe``."""
    return {
        "recipe_hash": recipe.recipe_hash,
        "transcript_hash": transcript_hash(recipe),
        "library_versions": library_versions(),
        "threads": threads,
        "build_wall_s": round(wall_s, 1),
        "eval": {
            "command": "agentropy bootstrap --rebuild",
            "split": "test",
            "episodes_per_level": eval_episodes,
            "rows": eval_rows,
        },
        "train_record": "agentropy_tiny.json (recipe, loss curve, held-out token metrics)",
    }


def ship(
    built: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] = SHIPPED_DIR,
    wall_s: float,
    threads: int,
    eval_episodes: int = 200,
) -> Path:
    """Copy the agent built in ``built`` (by ``bootstrap(TinyRecipe())``) to ``out`` with records.

    Copies the model and tokenizer files and the training record, evaluates the copy
    (``eval_episodes`` held-out tasks per level, greedy, seen and novel faults; 0 skips) and
    writes ``build.json`` (``wall_s``: the build's wall time; ``threads``: torch threads used).
    The directory is assembled aside and renamed into place. Returns ``out``.
    """
    from agentropy.agent import tiny

    built, out = Path(built), Path(out)
    recipe = tiny.TinyRecipe()
    if tiny.read_agent_info(built).get("recipe_hash") != recipe.recipe_hash:
        raise ValueError(f"{built} was not built from the default recipe {recipe.recipe_hash}")
    from agentropy.outputs import atomic_dir

    # Assembled aside, fsynced and swapped in (force: rebuilding replaces the shipped agent).
    with atomic_dir(out, force=True) as tmp:
        for name in (*_MODEL_FILES, tiny.INFO_FILE):
            if (built / name).is_file():
                shutil.copy2(built / name, tmp / name)
        rows: list[dict[str, Any]] = []
        if eval_episodes > 0:
            rows = _eval_table(tmp, episodes=eval_episodes, families=("seen", "novel"))
        record = build_record(
            recipe, wall_s=wall_s, threads=threads, eval_rows=rows, eval_episodes=eval_episodes
        )
        (tmp / BUILD_FILE).write_text(json.dumps(record, indent=2) + "\n")
        # mkdtemp and the cache copy are owner-only; the shipped files are for every user.
        tmp.chmod(0o755)
        for file in tmp.iterdir():
            file.chmod(0o644)
    return out


def rebuild(
    *,
    out: str | os.PathLike[str] = SHIPPED_DIR,
    num_threads: int | None = None,
    eval_episodes: int = 200,
    progress: bool = True,
) -> Path:
    """Rebuild the default agent from ``TinyRecipe()`` and :func:`ship` it to ``out``.

    Trains from scratch (replacing the cache entry), then copies, evaluates and records it.
    """
    import torch

    from agentropy.agent import tiny

    start = time.perf_counter()
    threads = num_threads if num_threads is not None else torch.get_num_threads()
    built = tiny.bootstrap(
        tiny.TinyRecipe(), progress=progress, force=True, num_threads=num_threads
    )
    wall_s = time.perf_counter() - start
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return ship(built, out=out, wall_s=wall_s, threads=threads, eval_episodes=eval_episodes)
    finally:
        torch.set_num_threads(previous)
