"""Compare sampling policies on the same held-out ToolWorld tasks (``agentropy eval``).

Every policy runs on exactly the same tasks with exactly the same injected faults (tasks, and the
faults they carry, are a pure function of the world seed, level, count and task seed), so the
per-level rows of the table differ only by how the agent was sampled. Each row reports, for one
(level, policy): success; recovery after failures (episodes with a failed/unexpected tool result
that still end with a correct answer, over episodes with such a failure); the mean spike ratio of
failed triggers (DESIGN.md definitions, via :mod:`agentropy.analysis`); eruptions by kind; frozen
responses; loops; tokens per episode and the overhead against the reference policy (``greedy``
when it is among the policies, else the first; :func:`~agentropy.analysis.recovery.default_reference`); latency p50 / p95 / coefficient of variation.

Each row comes from one analyzer pass over its episodes (:func:`policy_row`); bootstrap 95%
intervals on success and recovery come from :func:`agentropy.analysis.recovery.rate_ci` and the
latency columns from :func:`agentropy.analysis.recovery.latency_stats`.

A second table breaks recovery down per **fault class** (``fault_classes`` in ``eval.json``,
:func:`fault_class_rows`; classes from :data:`agentropy.env.faults.FAULT_CLASS`), one row per
(policy, class) over all evaluated levels. The unit is the episode whose task *plans* a fault of
the class (``Task.faults``): the same episodes in every policy's row, whatever the policy did
(an intention-to-treat denominator; ``fired`` counts the episodes in which such a fault actually
fired). An episode whose task plans faults of two classes counts in both rows; ``slow`` faults
belong to no class. Per row: recovery (the episode ends with a correct answer) with its 95%
interval, the mean spike ratio of the *first failed tool turn caused by a fault of the class*
(the analyzer's own per-trigger spike ratio, ``Evidence.failed_trigger_spike``; episodes where
that turn has no spike ratio, or no such fault fired, are left out of the mean, ``spike_n``
counts the rest), tokens per episode and latency (wall time: generation plus simulated tool
latency) per episode.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agentropy.analysis.recovery import (
    CONSTANT_POLICY,
    EXPLORE_POLICY,
    REFERENCE_POLICY,
    default_reference,
)
from agentropy.env.toolworld import LEVELS
from agentropy.trace import Episode

__all__ = [
    "COLUMNS",
    "DEFAULT_POLICIES",
    "EVAL_JSON",
    "FAULT_CLASS_COLUMNS",
    "EvalConfig",
    "add_overheads",
    "check_eval_outputs",
    "fault_class_rows",
    "policy_row",
    "run_eval",
]

#: The summary :func:`run_eval` writes into its output folder (next to ``traces/``).
EVAL_JSON = "eval.json"


#: Policies compared by default: the reference and the two the claims compare with it.
DEFAULT_POLICIES: tuple[str, ...] = (
    REFERENCE_POLICY,
    CONSTANT_POLICY,
    EXPLORE_POLICY,
)

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


#: Columns of one row of the per fault class table, in display order (the JSON keys of
#: ``fault_classes``); see the module docstring for the unit of each.
FAULT_CLASS_COLUMNS: tuple[str, ...] = (
    "policy",
    "fault_class",
    "episodes",
    "fired",
    "recovered",
    "recovery",
    "recovery_ci",
    "spike_n",
    "spike_mean",
    "tokens_per_episode",
    "latency_per_episode",
)


@dataclass(frozen=True)
class EvalConfig:
    """What ``agentropy eval`` runs."""

    policies: tuple[str, ...] = DEFAULT_POLICIES
    """Sampling policies by name (see :func:`agentropy.control.temperature.schedule_from_name`)."""
    levels: tuple[int, ...] = LEVELS
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
        if not self.levels or any(lv not in LEVELS for lv in self.levels):
            raise ValueError(
                f"levels must be among {', '.join(map(str, LEVELS))}; got {self.levels}"
            )
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if self.split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {self.split!r}")

    @property
    def reference(self) -> str:
        """Policy the token overhead is measured against."""
        return default_reference(self.policies)


def policy_row(episodes: Sequence[Episode], *, level: int, policy: str) -> dict[str, Any]:
    """One row of the eval table from one (level, policy) group of episodes.

    One analyzer pass: the summary gives eruptions, frozen responses and loops; its per-episode
    records (:meth:`~agentropy.analysis.summary.Analyzer.evidence`) give success, failures,
    failed-trigger spike ratios, tokens and latency.
    """
    from agentropy.analysis.recovery import latency_stats, rate_ci
    from agentropy.analysis.summary import Analyzer

    analyzer = Analyzer()
    if episodes:
        analyzer.add_episodes(list(episodes))
    summary = analyzer.summary()
    ev = analyzer.evidence()
    success = np.asarray(ev.success, np.int64) == 1
    failed = np.asarray(ev.failed_calls, np.int64) > 0
    succ = rate_ci(int(success.sum()), len(ev.success))
    rec = rate_ci(int((success & failed).sum()), int(failed.sum()))
    spikes = np.asarray(ev.failed_spikes, np.float64)
    kinds = summary["eruption_kinds"]
    lat = latency_stats([policy] * len(ev.latency_s), np.asarray(ev.latency_s, np.float64))
    lat_row = lat.get(policy, {})
    return {
        "level": level,
        "policy": policy,
        "episodes": len(ev.success),
        "success": succ["rate"],
        "success_ci": succ["ci"],
        "failure_episodes": int(failed.sum()),
        "recovery": rec["rate"],
        "recovery_ci": rec["ci"],
        "spike_mean": float(spikes.mean()) if spikes.size else None,
        "eruptions_productive": kinds["productive"],
        "eruptions_neutral": kinds["neutral"],
        "eruptions_divergent": kinds["divergent"],
        "frozen": len(summary["frozen"]),
        "loops": len(summary["loops"]),
        "tokens_per_episode": float(np.mean(ev.tokens)) if ev.tokens else float("nan"),
        "overhead": None,
        "latency_p50": lat_row.get("p50"),
        "latency_p95": lat_row.get("p95"),
        "latency_cv": lat_row.get("cv"),
    }


def fault_class_rows(
    episodes: Sequence[Episode], planned: Mapping[str, Sequence[str]], *, policy: str
) -> list[dict[str, Any]]:
    """One row per fault class (:data:`~agentropy.env.faults.FAULT_CLASSES` order) for one
    policy's episodes; keys :data:`FAULT_CLASS_COLUMNS` (see the module docstring).

    ``planned`` maps each episode's ``task_id`` to the kinds of its task's planned faults
    (``[f.kind for f in task.faults]``); an episode whose task is missing there is an error.
    One analyzer pass; spike ratios are the analyzer's, looked up by (episode, turn index).
    """
    from agentropy.analysis.recovery import rate_ci
    from agentropy.analysis.summary import Analyzer
    from agentropy.env.faults import FAULT_CLASS, FAULT_CLASSES

    episodes = list(episodes)
    analyzer = Analyzer()
    if episodes:
        analyzer.add_episodes(episodes)
    ev = analyzer.evidence()
    spike_at = {
        (e, t): s
        for e, t, s in zip(
            ev.failed_trigger_episode, ev.failed_trigger_turn, ev.failed_trigger_spike, strict=True
        )
    }
    acc: dict[str, dict[str, Any]] = {
        c: {
            "episodes": 0,
            "fired": 0,
            "known": 0,
            "recovered": 0,
            "spikes": [],
            "tok": [],
            "lat": [],
        }
        for c in FAULT_CLASSES
    }
    for i, episode in enumerate(episodes):
        kinds = planned.get(episode.task_id) if episode.task_id is not None else None
        if kinds is None:
            raise ValueError(
                f"episode {episode.episode_id!r}: task {episode.task_id!r} has no planned faults "
                "given; pass every task's fault kinds in `planned`"
            )
        classes = {FAULT_CLASS[k] for k in kinds if k in FAULT_CLASS}
        fired = {FAULT_CLASS[k] for k in episode.fault_kinds if k in FAULT_CLASS}
        first: dict[str, int] = {}  # class -> turn index of its first failed tool turn
        for t, turn in enumerate(episode.turns):
            kind = turn.meta.get("fault") if turn.failed else None
            if kind in FAULT_CLASS:
                first.setdefault(FAULT_CLASS[kind], t)
        for c in classes:
            a = acc[c]
            a["episodes"] += 1
            a["fired"] += c in fired
            if ev.success[i] >= 0:  # unknown success stays out of the rate
                a["known"] += 1
                a["recovered"] += ev.success[i]
            spike = spike_at.get((i, first[c])) if c in first else None
            if spike is not None:
                a["spikes"].append(spike)
            a["tok"].append(ev.tokens[i])
            a["lat"].append(ev.latency_s[i])
    rows = []
    for c in FAULT_CLASSES:
        a = acc[c]
        rec = rate_ci(a["recovered"], a["known"])
        lat = np.asarray(a["lat"], np.float64)
        lat = lat[~np.isnan(lat)]
        rows.append(
            {
                "policy": policy,
                "fault_class": c,
                "episodes": a["episodes"],
                "fired": a["fired"],
                "recovered": a["recovered"],
                "recovery": rec["rate"],
                "recovery_ci": rec["ci"],
                "spike_n": len(a["spikes"]),
                "spike_mean": float(np.mean(a["spikes"])) if a["spikes"] else None,
                "tokens_per_episode": float(np.mean(a["tok"])) if a["tok"] else None,
                "latency_per_episode": float(lat.mean()) if lat.size else None,
            }
        )
    return rows


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
    force: bool = False,
) -> dict[str, Any]:
    """Run every policy on the same tasks per level; return ``{"config", "rows",
    "fault_classes"}`` (rows: :data:`COLUMNS`; fault_classes: :data:`FAULT_CLASS_COLUMNS`).

    With ``out_dir``, writes one Parquet trace store per policy (``traces/<policy>.parquet``,
    every level's episodes) and then ``eval.json``, each atomically (a store appears whole or
    not at all); they are checked before the first episode (:func:`check_eval_outputs`:
    existing ones need ``force``).
    """
    import json

    from agentropy.agent.runner import RunnerConfig, rollout
    from agentropy.control.temperature import schedule_from_name
    from agentropy.env.toolworld import ToolWorld

    world = world if world is not None else ToolWorld()
    stores: dict[str, Path] = {}
    if out_dir is not None:
        stores = check_eval_outputs(out_dir, config.policies, force=force)
    runner_config = runner_config if runner_config is not None else RunnerConfig()
    schedules = {p: schedule_from_name(p) for p in config.policies}  # validate names up front
    rows: list[dict[str, Any]] = []
    by_policy: dict[str, list[Episode]] = {p: [] for p in config.policies}
    planned: dict[str, list[str]] = {}  # task_id -> kinds of its planned faults
    for level in config.levels:
        tasks = world.tasks(split=config.split, level=level, n=config.episodes, seed=config.seed)
        planned.update({t.task_id: [f.kind for f in t.faults] for t in tasks})
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
            "faults": world.config.faults,
        },
        "rows": rows,
        "fault_classes": [
            row
            for policy, episodes in by_policy.items()
            for row in fault_class_rows(episodes, planned, policy=policy)
        ],
    }
    if out_dir is not None:
        from agentropy.outputs import atomic_dir, atomic_write_text
        from agentropy.trace import write_parquet

        for policy, episodes in by_policy.items():
            # Written aside and renamed in: never a store with some of the levels.
            with atomic_dir(stores[policy], force=force) as tmp:
                write_parquet(episodes, tmp)
        result["traces"] = {p: str(s) for p, s in stores.items()}
        text = json.dumps(result, indent=2)
        atomic_write_text(Path(out_dir) / EVAL_JSON, text, force=force)
    return result


def check_eval_outputs(
    out_dir: str | Path, policies: Sequence[str], *, force: bool = False
) -> dict[str, Path]:
    """Check, before any episode, that :func:`run_eval` can write into ``out_dir``.

    Returns the trace store of each policy (``traces/<policy>.parquet``, the name made safe for
    file systems). Raises :class:`~agentropy.errors.OutputError` when ``eval.json`` or a store
    already exists (unless ``force``: never two evaluations mixed in one store, never an
    earlier one replaced unasked) or the folder does not take a write.
    """
    from agentropy.outputs import check_output

    out = Path(out_dir)
    check_output(out / EVAL_JSON, force=force)
    stores = {}
    for policy in policies:
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in policy)
        stores[policy] = check_output(out / "traces" / f"{safe}.parquet", force=force, is_dir=True)
    return stores
