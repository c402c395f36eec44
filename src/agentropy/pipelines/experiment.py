"""Arms x seeds training experiment: does training the rhythm beat a flat entropy bonus?

Each *arm* is a sampling policy plus a loss (:data:`ARMS`): ``baseline`` samples at a constant
temperature 1.0 and trains with the ``flat`` entropy bonus (common practice); ``rhythm`` samples
with the phase controller and trains with the phase-aware ``rhythm`` loss; ``vanilla`` (no
entropy term) and ``target`` (Skywork-OR1) are the other entropy terms; ``clip_cov``, ``kl_cov``
(arXiv 2505.22617) and ``top_entropy`` (arXiv 2506.01939) are the published peers that act on
the PPO term itself (:mod:`agentropy.rl.policy_terms`), sampled at constant 1.0 like the
baseline so that only the objective differs. Every arm shares one
:class:`~agentropy.rl.config.TrainConfig` (same steps, tasks per step, group size: the same
rollout budget) and runs once per seed (``seed = 0 .. seeds-1``; seeds drive task draws and
sampling), each from the same starting model.

After training, each run is evaluated on the same held-out test-split tasks and faults per level
with *its own arm's* sampling policy (an arm is what would be deployed: policy and weights), and
:func:`agentropy.pipelines.compare.policy_row` turns the episodes into success, recovery after failures,
eruptions by kind, loops and tokens per episode. The starting model is evaluated the same way
once per arm policy (same tasks, same sampling seed), so each run has a held-out success gain
under its own policy (``success_gain``, mean over levels), and once more greedily before and
after (``greedy_gain``): GRPO raises the sampled policy's expected reward, which need not move the
argmax. Per arm the run also reports the training cycles the analyzer finds in the run's training
traces (:func:`agentropy.analysis.summary.analyze_paths`: ``training.cycles``).

Further per-run outcomes: **novel-fault recovery** with the arm's own policy and greedily,
before and after training (the ``novel`` row of
:func:`agentropy.pipelines.compare.fault_class_rows`: episodes whose task plans a novel fault
that end with a correct answer; None when the world draws no novel faults, so train with
``faults = "all"`` to measure it); the held-out **per-phase model entropy** (token-mean, nats,
own policy, after training; :func:`agentropy.rl.trainer.rollout_entropy`); **tokens per
episode** (mean over levels); and the **training trajectories** of :data:`TRAJECTORY_KEYS`
(one value per step from the run's ``metrics.parquet``; per arm the mean over seeds,
``experiment.json``'s ``trajectories``).

:meth:`ExperimentConfig.from_toml` reads an experiment file (``agentropy experiment --config``;
``experiments/objectives.toml`` reproduces the side-by-side comparison of objectives).

Intervals: a Student-t 95% interval over seeds (``mean +- t_{0.975, n-1} * sd / sqrt(n)``), since
the seed is the unit of replication and a bootstrap over 3 seeds would be too narrow; ``null``
with one seed. Writes ``experiment.json`` and prints rich tables.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from agentropy.analysis.recovery import CONFIDENCE, CONSTANT_POLICY, EXPLORE_POLICY
from agentropy.errors import InputError, read_toml
from agentropy.rl.config import TrainConfig, build_config
from agentropy.trace import PHASES

__all__ = [
    "ARMS",
    "ARM_METRICS",
    "EXPERIMENT_JSON",
    "LEVEL_METRICS",
    "OPTIONAL_ARM_METRICS",
    "TRAJECTORY_KEYS",
    "ArmSettings",
    "ExperimentConfig",
    "render_tables",
    "run_experiment",
    "t_interval",
]


class ArmSettings(TypedDict):
    """What an arm sets in its runs' :class:`~agentropy.rl.config.TrainConfig`."""

    policy: str
    """Sampling policy name (``TrainConfig.policy``)."""
    loss: str
    """Loss name (``TrainConfig.loss``)."""


#: Arms by name: the sampling policy and loss each one trains (and is evaluated) with.
ARMS: dict[str, ArmSettings] = {
    "baseline": {"policy": CONSTANT_POLICY, "loss": "flat"},
    "rhythm": {"policy": EXPLORE_POLICY, "loss": "rhythm"},
    "vanilla": {"policy": CONSTANT_POLICY, "loss": "vanilla"},
    "target": {"policy": CONSTANT_POLICY, "loss": "target"},
    "clip_cov": {"policy": CONSTANT_POLICY, "loss": "clip_cov"},
    "kl_cov": {"policy": CONSTANT_POLICY, "loss": "kl_cov"},
    "top_entropy": {"policy": CONSTANT_POLICY, "loss": "top_entropy"},
}

#: The summary :func:`run_experiment` writes into its folder (next to one folder per arm).
EXPERIMENT_JSON = "experiment.json"

#: Per (arm, level) metrics, averaged over seeds (keys of ``experiment.json``'s ``levels``).
LEVEL_METRICS: tuple[str, ...] = (
    "success",
    "recovery",
    "eruptions_productive",
    "eruptions_neutral",
    "eruptions_divergent",
    "loops",
    "tokens_per_episode",
)

#: Per arm metrics, averaged over seeds (keys of ``experiment.json``'s ``arms``); success and
#: greedy rates are means over levels of the final evaluation's tasks.
ARM_METRICS: tuple[str, ...] = (
    "success_before",
    "success_after",
    "success_gain",
    "greedy_before",
    "greedy_after",
    "greedy_gain",
    "training_cycles",
    "cycles_productive",
    "cycles_divergent",
    "train_wall_s",
    "novel_recovery_before",
    "novel_recovery_after",
    "novel_recovery_greedy_before",
    "novel_recovery_greedy_after",
    "tokens_per_episode",
    *(f"entropy_{p}" for p in PHASES),
)
#: Arm metrics that are None in a run without such episodes or tokens (no novel fault drawn, no
#: token of a phase); their intervals count only the runs that have them.
OPTIONAL_ARM_METRICS: frozenset[str] = frozenset(
    m for m in ARM_METRICS if m.startswith(("novel_recovery", "entropy_"))
)
#: Per-step training metrics kept per run and averaged per arm (``experiment.json``'s
#: ``trajectories``): model entropy per phase at sampling time, tokens per episode, success.
TRAJECTORY_KEYS: tuple[str, ...] = (
    "rollout/entropy",
    *(f"rollout/entropy_{p}" for p in PHASES),
    "rollout/tokens_per_episode",
    "rollout/success",
)


@dataclass(frozen=True)
class ExperimentConfig:
    """What ``agentropy experiment`` runs."""

    arms: tuple[str, ...] = ("baseline", "rhythm")
    """Arm names (keys of :data:`ARMS`)."""
    seeds: int = 3
    """Runs per arm, with seeds 0 .. seeds-1."""
    out: str = "runs/experiment"
    """Directory: ``<arm>/seed-<k>/`` run directories and ``experiment.json``."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Shared training config; each run overrides ``policy``, ``loss``, ``seed`` and ``out``."""
    eval_episodes: int = 50
    """Held-out test-split tasks per level in the final evaluation of each run."""
    eval_seed: int = 2000
    """Task seed of the final evaluation (the same tasks and faults for every run)."""
    jobs: int = 1
    """(arm, seed) runs trained at once, each in its own worker process (``spawn``); give each
    run ``train.threads = 1`` so that ``jobs`` runs share the cores without oversubscription.
    Results do not depend on it: every run is a pure function of its config and seed."""
    force: bool = False
    """Replace an earlier experiment's ``experiment.json`` and the folders of the arms run now
    (kept aside until this one completes, put back if it fails). Without it they are an error,
    before any work."""

    def __post_init__(self) -> None:
        if not self.arms:
            raise ValueError("give at least one arm, e.g. --arms baseline,rhythm")
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise ValueError(f"unknown arms {unknown}; choose from {', '.join(ARMS)}")
        if len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms repeat: {self.arms}")
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise ValueError(f"seeds must be an integer >= 1, got {self.seeds!r}")
        if self.eval_episodes < 1:
            raise ValueError(f"eval_episodes must be >= 1, got {self.eval_episodes}")
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            raise ValueError(f"jobs must be an integer >= 1, got {self.jobs!r}")
        if self.jobs > 1 and self.train.threads == 0:
            raise ValueError(
                f"jobs = {self.jobs} needs train.threads set (e.g. 1: one torch thread per "
                "run), or each worker would use every core"
            )

    @classmethod
    def from_toml(cls, path: str | Path) -> ExperimentConfig:
        """Read an experiment file: top-level keys are fields of this class (``arms`` a list),
        the shared :class:`~agentropy.rl.config.TrainConfig` is the ``[train]`` table (its nested
        ``[train.rhythm]`` / ``[train.target]``). Errors name the file
        (:class:`~agentropy.errors.InputError`); unknown keys suggest the closest one."""
        p = Path(path)
        data = read_toml(p)
        try:
            return build_config(cls, data)  # type: ignore[no-any-return]
        except ValueError as err:
            hint = ""
            if str(err).startswith("unknown config key") and "." not in str(err).split("'")[1]:
                hint = " (training settings go in the [train] table)"
            raise InputError(f"{err}{hint}", path=p) from None

    def run_config(self, arm: str, seed: int) -> TrainConfig:
        """The TrainConfig of one run."""
        return dataclasses.replace(
            self.train,
            **ARMS[arm],
            seed=seed,
            out=str(Path(self.out) / arm / f"seed-{seed}"),
        )


def t_interval(values: Sequence[float | None], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Mean and Student-t interval over seeds; None values (undefined in a run) are dropped."""
    from scipy import stats

    x = np.array([v for v in values if v is not None], dtype=float)
    if x.size == 0:
        return {"mean": None, "ci": None, "n": 0}
    mean = float(x.mean())
    if x.size < 2:
        return {"mean": mean, "ci": None, "n": int(x.size)}
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return {"mean": mean, "ci": [mean - half, mean + half], "n": int(x.size)}


def run_experiment(
    config: ExperimentConfig,
    *,
    load: Callable[[], tuple[Any, Any]] | None = None,
    console: Any = None,
) -> dict[str, Any]:
    """Train and evaluate every (arm, seed); return (and write) ``experiment.json``'s content.

    ``load`` returns a fresh ``(model, tokenizer)`` for each run (default: load
    ``config.train.model``, the embedded agent when None; the only choice with ``jobs > 1``,
    where each (arm, seed) run trains in a worker process). ``config.out`` must not hold
    ``experiment.json`` or a folder of the arms run, unless ``config.force``
    (:func:`agentropy.outputs.output_group`; ``experiment.json`` is written last, atomically).
    """
    if load is None:
        load = functools.partial(_load_model, config.train.model)
    elif config.jobs > 1:
        # Worker processes rebuild everything from picklable inputs; a closure is not one.
        raise ValueError("jobs > 1 loads config.train.model in each worker; pass no `load`")
    from agentropy.outputs import output_group

    # Checked before the first model is loaded. A failed or interrupted experiment keeps its
    # finished runs (hours of training) unless it was replacing an earlier experiment, which is
    # then put back whole.
    names = [*config.arms, EXPERIMENT_JSON]
    with output_group(config.out, names, force=config.force, keep_partial=True) as out:
        return _run(config, out, load, console)


def _load_model(model: str | None) -> tuple[Any, Any]:
    from agentropy.agent.loading import load_model

    return load_model(model)  # type: ignore[no-any-return]


def _evaluate(
    config: ExperimentConfig, model: Any, tokenizer: Any, policy: str, arm: str
) -> dict[str, Any]:
    """On the fixed held-out tasks, faults and sampling seed: policy_row per level, mean
    success over levels, novel-fault recovery, per-phase entropy, tokens per episode."""
    from agentropy.agent.runner import RunnerConfig, rollout
    from agentropy.control.temperature import schedule_from_name
    from agentropy.env.toolworld import ToolWorld, ToolWorldConfig
    from agentropy.pipelines.compare import fault_class_rows, policy_row
    from agentropy.rl.trainer import rollout_entropy

    tc = config.train
    world = ToolWorld(ToolWorldConfig(seed=tc.world_seed, faults=tc.faults))
    runner_config = RunnerConfig(
        max_turns=tc.max_turns, max_new_tokens=tc.max_new_tokens, max_tokens=tc.max_tokens,
        batch_size=tc.rollout_batch_size,
    )  # fmt: skip
    rows, episodes, planned = [], [], {}
    for level in tc.levels:
        tasks = world.tasks(
            split="test", level=level, n=config.eval_episodes, seed=config.eval_seed
        )
        planned.update({t.task_id: [f.kind for f in t.faults] for t in tasks})
        level_eps = rollout(
            model, tokenizer, world, tasks, schedule=schedule_from_name(policy),
            config=runner_config, seed=config.eval_seed, policy_name=policy,
        )  # fmt: skip
        for e in level_eps:
            e.episode_id = f"L{level}-{e.episode_id}"  # unique across levels
        episodes += level_eps
        rows.append(policy_row(level_eps, level=level, policy=arm))
    classes = {r["fault_class"]: r for r in fault_class_rows(episodes, planned, policy=arm)}
    entropy = rollout_entropy(episodes)
    return {
        "levels": rows,
        "success": float(np.mean([row["success"] for row in rows])),
        "novel_recovery": classes["novel"]["recovery"],
        "tokens_per_episode": float(np.mean([row["tokens_per_episode"] for row in rows])),
        **{f"entropy_{p}": entropy.get(f"rollout/entropy_{p}") for p in PHASES},
    }


def _train_run(
    config: ExperimentConfig, arm: str, seed: int, load: Callable[[], tuple[Any, Any]]
) -> dict[str, Any]:
    """Train one (arm, seed) run from a fresh model, then evaluate it with its own policy and
    greedily; the run's record without the starting model's numbers. Top-level and fed only
    picklable arguments, so that it can run in a worker process."""
    from agentropy.analysis.summary import analyze_paths
    from agentropy.env.toolworld import ToolWorld, ToolWorldConfig
    from agentropy.rl.trainer import read_metrics, train

    run_cfg = config.run_config(arm, seed)
    world = ToolWorld(ToolWorldConfig(seed=run_cfg.world_seed, faults=run_cfg.faults))
    model, tokenizer = load()
    result = train(run_cfg, model=model, tokenizer=tokenizer, world=world)
    own = _evaluate(config, model, tokenizer, run_cfg.policy, arm)
    greedy = _evaluate(config, model, tokenizer, "greedy", arm)
    training = analyze_paths(Path(run_cfg.out) / "traces")["training"]
    kinds = [c.get("kind") for c in training["cycles"]]
    steps = read_metrics(run_cfg.out)
    return {
        "arm": arm,
        "seed": seed,
        "out": run_cfg.out,
        "levels": own["levels"],
        "success_after": own["success"],
        "greedy_after": greedy["success"],
        "training_cycles": len(kinds),
        "cycles_productive": kinds.count("productive"),
        "cycles_divergent": kinds.count("divergent"),
        "train_wall_s": result.wall_s,
        "novel_recovery_after": own["novel_recovery"],
        "novel_recovery_greedy_after": greedy["novel_recovery"],
        "tokens_per_episode": own["tokens_per_episode"],
        **{f"entropy_{p}": own[f"entropy_{p}"] for p in PHASES},
        "trajectory": {k: [row.get(k) for row in steps] for k in TRAJECTORY_KEYS},
    }


def _run(
    config: ExperimentConfig,
    out: Path,
    load: Callable[[], tuple[Any, Any]],
    console: Any,
) -> dict[str, Any]:
    from agentropy.outputs import atomic_write_text

    tc = config.train

    def note(text: str) -> None:
        if console is not None:
            console.print(text)

    # The starting model under every policy the runs are evaluated with (deterministic: once).
    model, tokenizer = load()
    start = {p: _evaluate(config, model, tokenizer, p, "start")
             for p in dict.fromkeys([ARMS[a]["policy"] for a in config.arms] + ["greedy"])}  # fmt: skip
    del model, tokenizer
    jobs = [(arm, seed) for arm in config.arms for seed in range(config.seeds)]
    trained: list[dict[str, Any]] = []
    if config.jobs == 1:
        for arm, seed in jobs:
            note(f"[bold]{arm}[/] seed {seed}: training {config.run_config(arm, seed).out}")
            trained.append(_train_run(config, arm, seed, load))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: a forked child would inherit torch's thread pools and locks mid-state.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=config.jobs, mp_context=ctx) as pool:
            futures = [pool.submit(_train_run, config, arm, seed, load) for arm, seed in jobs]
            note(f"training {len(jobs)} runs in {config.jobs} worker processes")
            for (arm, seed), future in zip(jobs, futures, strict=True):
                trained.append(future.result())  # in submission order: deterministic report
                note(f"[bold]{arm}[/] seed {seed}: done ({trained[-1]['train_wall_s']:.0f} s)")
    runs: list[dict[str, Any]] = []
    for r in trained:
        before, greedy = start[ARMS[r["arm"]]["policy"]], start["greedy"]
        runs.append({
            **r,
            "success_before": before["success"],
            "success_gain": r["success_after"] - before["success"],
            "greedy_before": greedy["success"],
            "greedy_gain": r["greedy_after"] - greedy["success"],
            "novel_recovery_before": before["novel_recovery"],
            "novel_recovery_greedy_before": greedy["novel_recovery"],
        })  # fmt: skip

    level_table = []
    for arm in config.arms:
        arm_runs = [r for r in runs if r["arm"] == arm]
        for level in tc.levels:
            rows = [next(x for x in r["levels"] if x["level"] == level) for r in arm_runs]
            entry: dict[str, Any] = {"arm": arm, "level": level}
            for m in LEVEL_METRICS:
                entry[m] = t_interval([row[m] for row in rows])
            level_table.append(entry)
    arm_table = []
    for arm in config.arms:
        arm_runs = [r for r in runs if r["arm"] == arm]
        entry = {"arm": arm, **ARMS[arm]}
        for m in ARM_METRICS:
            entry[m] = t_interval([r[m] for r in arm_runs])
        arm_table.append(entry)
    trajectories = {
        arm: {k: _mean_by_step([r["trajectory"][k] for r in runs if r["arm"] == arm])
              for k in TRAJECTORY_KEYS}
        for arm in config.arms
    }  # fmt: skip
    report = {
        "config": {
            "arms": list(config.arms),
            "seeds": config.seeds,
            "eval_episodes": config.eval_episodes,
            "eval_seed": config.eval_seed,
            "train": config.train.to_dict(),
            "rollouts_per_run": config.train.steps * config.train.episodes_per_step,
            "jobs": config.jobs,
            "interval": "Student-t 95% over seeds",
        },
        "levels": level_table,
        "arms": arm_table,
        "trajectories": trajectories,
        "runs": runs,
    }
    atomic_write_text(out / EXPERIMENT_JSON, json.dumps(_json_safe(report), indent=2) + "\n")
    return report


def _mean_by_step(series: list[list[float | None]]) -> list[float | None]:
    """Mean over runs at each step (runs may have stopped early: shorter series); None where no
    run has a value."""
    out: list[float | None] = []
    for step in range(max((len(x) for x in series), default=0)):
        values = [v for x in series if step < len(x) and (v := x[step]) is not None]
        out.append(float(np.mean(values)) if values else None)
    return out


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _cell(entry: dict[str, Any], fmt: str = "{:.2f}", scale: float = 1.0) -> str:
    if entry["mean"] is None:
        return "-"
    text = fmt.format(scale * entry["mean"])
    if entry["ci"] is not None:
        lo, hi = entry["ci"]
        text += f" [{fmt.format(scale * lo)}, {fmt.format(scale * hi)}]"
    return text


def render_tables(report: dict[str, Any]) -> list[Any]:
    """Rich tables: per (arm, level) outcomes, per arm training summaries, then per arm
    novel-fault recovery, tokens per episode and per-phase entropy (means; intervals in the
    JSON)."""
    from rich.table import Table

    n = report["config"]["seeds"]
    levels = Table(title=f"held-out, mean [95% t-interval] over {n} seeds", title_justify="left")
    for col in ("arm", "level", "success %", "recovery %", "erupt p/n/d", "loops", "tok/ep"):
        levels.add_column(col, justify="left" if col == "arm" else "right")
    for e in report["levels"]:
        # Means only: three intervals in one cell would be unreadable (they are in the JSON).
        erupt = "/".join(
            _cell({**e[f"eruptions_{k}"], "ci": None}, "{:.1f}")
            for k in ("productive", "neutral", "divergent")
        )
        levels.add_row(
            e["arm"], f"L{e['level']}", _cell(e["success"], "{:.0f}", 100),
            _cell(e["recovery"], "{:.0f}", 100), erupt, _cell(e["loops"], "{:.1f}"),
            _cell(e["tokens_per_episode"], "{:.0f}"),
        )  # fmt: skip
    caption = "; ".join(f"{e['arm']} = {e['policy']} + {e['loss']}" for e in report["arms"])
    arms = Table(
        title="training: held-out success (mean over levels) with the arm's own policy and "
        "greedy, before and after; analyzer's training cycles",
        title_justify="left", caption=caption, caption_justify="left",
    )  # fmt: skip
    for col in ("arm", "own before %", "own after %", "own gain", "greedy before %",
                "greedy after %", "greedy gain", "cycles", "prod.", "div.", "wall s"):  # fmt: skip
        arms.add_column(col, justify="left" if col == "arm" else "right")
    for e in report["arms"]:
        arms.add_row(
            e["arm"], _cell(e["success_before"], "{:.1f}", 100),
            _cell(e["success_after"], "{:.1f}", 100), _cell(e["success_gain"], "{:+.1f}", 100),
            _cell(e["greedy_before"], "{:.1f}", 100),
            _cell(e["greedy_after"], "{:.1f}", 100), _cell(e["greedy_gain"], "{:+.1f}", 100),
            _cell(e["training_cycles"], "{:.1f}"), _cell(e["cycles_productive"], "{:.1f}"),
            _cell(e["cycles_divergent"], "{:.1f}"), _cell(e["train_wall_s"], "{:.0f}"),
        )  # fmt: skip
    outcomes = Table(
        title="objectives: novel-fault recovery % (own policy, greedy; before -> after), tokens "
        "per episode and held-out model entropy per phase (nats), after training",
        title_justify="left",
    )  # fmt: skip
    for col in ("arm", "novel own", "novel greedy", "tok/ep", *(f"H {p}" for p in PHASES)):
        outcomes.add_column(col, justify="left" if col == "arm" else "right")

    def change(e: dict[str, Any], key: str) -> str:
        pair = (_cell({**e[f"{key}_before"], "ci": None}, "{:.0f}", 100),
                _cell({**e[f"{key}_after"], "ci": None}, "{:.0f}", 100))  # fmt: skip
        return "-" if pair == ("-", "-") else f"{pair[0]} -> {pair[1]}"

    for e in report["arms"]:
        outcomes.add_row(
            e["arm"], change(e, "novel_recovery"), change(e, "novel_recovery_greedy"),
            _cell(e["tokens_per_episode"], "{:.0f}"),
            *(_cell({**e[f"entropy_{p}"], "ci": None}, "{:.2f}") for p in PHASES),
        )  # fmt: skip
    return [levels, arms, outcomes]
