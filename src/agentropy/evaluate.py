"""Compare sampling policies on the same held-out ToolWorld tasks (``agentropy eval``).

Every policy runs on exactly the same tasks with exactly the same injected faults (tasks, and the
faults they carry, are a pure function of the world seed, level, count and task seed), so the
per-level rows of the table differ only by how the agent was sampled. Each row reports, for one
(level, policy): success; recovery after failures (episodes with a failed/unexpected tool result
that still end with a correct answer, over episodes with such a failure); the mean spike ratio of
failed triggers (DESIGN.md definitions, via :mod:`agentropy.analysis`); eruptions by kind; frozen
responses; loops; tokens per episode and the overhead against the reference policy (``greedy``
when it is among the policies, else the first); latency p50 / p95 / coefficient of variation.

Bootstrap 95% intervals on success and recovery come from the analyzer's
:func:`agentropy.analysis.recovery.rate_ci`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agentropy.trace import Episode

#: Columns of one row of the eval table, in display order (the JSON keys of ``rows``).
COLUMNS: tuple[str, ...] = (
    "level",
    "policy",
    "episodes",
    "success",
    "success_ci",
    "failure_episodes",
    "recovery",
    "recovery_ci",
    "spike_mean",
    "eruptions_productive",
    "eruptions_neutral",
    "eruptions_divergent",
    "frozen",
    "loops",
    "tokens_per_episode",
    "overhead",
    "latency_p50",
    "latency_p95",
    "latency_cv",
)


@dataclass(frozen=True)
class EvalConfig:
    """What ``agentropy eval`` runs."""

    policies: tuple[str, ...] = ("greedy", "constant:1.0", "phase")
    """Sampling policies by name (see :func:`agentropy.control.temperature.schedule_from_name`)."""
    levels: tuple[int, ...] = (0, 1, 2, 3)
    """ToolWorld levels."""
    episodes: int = 50
    """Held-out episodes per level and policy."""
    seed: int = 0
    """Seed of the task draw and of sampling (the same for every policy)."""
    split: str = "test"
    """Task split: ``test`` (held-out entities) or ``train``."""

    def __post_init__(self) -> None:
        if not self.policies:
            raise ValueError("give at least one policy, e.g. --policies greedy,phase")
        if len(set(self.policies)) != len(self.policies):
            raise ValueError(f"duplicate policies in {self.policies}")
        if not self.levels or any(lv not in (0, 1, 2, 3) for lv in self.levels):
            raise ValueError(f"levels must be among 0, 1, 2, 3; got {self.levels}")
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if self.split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {self.split!r}")

    @property
    def reference(self) -> str:
        """Policy the token overhead is measured against."""
        return "greedy" if "greedy" in self.policies else self.policies[0]


def _latency(x: np.ndarray) -> tuple[float | None, float | None, float | None]:
    x = x[np.isfinite(x)]
    if x.size == 0:
        return None, None, None
    mean = float(x.mean())
    cv = float(x.std(ddof=1) / mean) if x.size > 1 and mean > 0 else None
    return float(np.percentile(x, 50)), float(np.percentile(x, 95)), cv


def _failed_spike_ratios(episodes: Sequence[Episode]) -> np.ndarray:
    from agentropy.analysis.breath import analyze_triggers
    from agentropy.trace import TraceTable

    table = TraceTable.from_episodes(list(episodes))
    trig = analyze_triggers(table)
    spikes = trig.stats.spike_ratio[trig.failed]
    return spikes[np.isfinite(spikes)]


def policy_row(episodes: Sequence[Episode], *, level: int, policy: str) -> dict[str, Any]:
    """One row of the eval table from one (level, policy) group of episodes."""
    from agentropy.analysis.recovery import rate_ci
    from agentropy.analysis.summary import analyze_episodes

    summary = analyze_episodes(list(episodes))
    failed_eps = [e for e in episodes if any(t.failed for t in e.turns)]
    succ = rate_ci(sum(bool(e.success) for e in episodes), len(episodes))
    rec = rate_ci(sum(bool(e.success) for e in failed_eps), len(failed_eps))
    spikes = _failed_spike_ratios(episodes)
    kinds = {"productive": 0, "neutral": 0, "divergent": 0}
    for er in summary["eruptions"]:
        kinds[er["kind"]] += 1
    p50, p95, cv = _latency(np.array([e.latency_s or np.nan for e in episodes], dtype=float))
    return {
        "level": level,
        "policy": policy,
        "episodes": len(episodes),
        "success": succ["rate"],
        "success_ci": succ["ci"],
        "failure_episodes": len(failed_eps),
        "recovery": rec["rate"],
        "recovery_ci": rec["ci"],
        "spike_mean": float(spikes.mean()) if spikes.size else None,
        "eruptions_productive": kinds["productive"],
        "eruptions_neutral": kinds["neutral"],
        "eruptions_divergent": kinds["divergent"],
        "frozen": len(summary["frozen"]),
        "loops": len(summary["loops"]),
        "tokens_per_episode": float(np.mean([e.n_tokens for e in episodes])),
        "overhead": None,
        "latency_p50": p50,
        "latency_p95": p95,
        "latency_cv": cv,
    }


def add_overheads(rows: list[dict[str, Any]], reference: str) -> None:
    """Set ``overhead`` = tokens per episode / the reference policy's, per level (in place)."""
    ref = {r["level"]: r["tokens_per_episode"] for r in rows if r["policy"] == reference}
    for r in rows:
        base = ref.get(r["level"])
        r["overhead"] = r["tokens_per_episode"] / base if base else None


def run_eval(
    model: Any,
    tokenizer: Any,
    *,
    config: EvalConfig = EvalConfig(),
    world: Any = None,
    runner_config: Any = None,
    out_dir: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run every policy on the same tasks per level; return ``{"config", "rows"}``.

    With ``out_dir``, writes ``eval.json`` and one Parquet trace store per policy
    (``traces/<policy>.parquet``) holding every level's episodes.
    """
    import json

    from agentropy.agent.runner import RunnerConfig, rollout
    from agentropy.control.temperature import schedule_from_name
    from agentropy.env.toolworld import ToolWorld

    world = world if world is not None else ToolWorld()
    stores: dict[str, Path] = {}
    if out_dir is not None:
        for policy in config.policies:
            safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in policy)
            stores[policy] = Path(out_dir) / "traces" / f"{safe}.parquet"
            if stores[policy].exists():
                # Never mix two evaluations in one store, and never delete an earlier one.
                raise ValueError(f"{stores[policy]} exists: choose another --out or remove it")
    runner_config = runner_config if runner_config is not None else RunnerConfig()
    schedules = {p: schedule_from_name(p) for p in config.policies}  # validate names up front
    rows: list[dict[str, Any]] = []
    by_policy: dict[str, list[Episode]] = {p: [] for p in config.policies}
    for level in config.levels:
        tasks = world.tasks(split=config.split, level=level, n=config.episodes, seed=config.seed)
        for policy, schedule in schedules.items():
            episodes = rollout(
                model,
                tokenizer,
                world,
                tasks,
                schedule=schedule,
                config=runner_config,
                seed=config.seed,
                policy_name=policy,
                progress=progress,
            )
            for e in episodes:
                e.episode_id = f"L{level}-{policy}-{e.episode_id}"
            by_policy[policy] += episodes
            rows.append(policy_row(episodes, level=level, policy=policy))
    add_overheads(rows, config.reference)
    result = {
        "config": {
            "policies": list(config.policies),
            "levels": list(config.levels),
            "episodes": config.episodes,
            "seed": config.seed,
            "split": config.split,
            "reference": config.reference,
        },
        "rows": rows,
    }
    if out_dir is not None:
        from agentropy.trace import write_parquet

        for policy, episodes in by_policy.items():
            write_parquet(episodes, stores[policy])
        result["traces"] = {p: str(s) for p, s in stores.items()}
        (Path(out_dir) / "eval.json").write_text(json.dumps(result, indent=2))
    return result
