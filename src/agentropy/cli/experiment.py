"""``agentropy experiment``: train each arm on several seeds with the same rollout budget, then
compare held-out outcomes with t-intervals over seeds (see :mod:`agentropy.pipelines.experiment`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer

from agentropy.cli._common import guarded
from agentropy.cli._experiment_kinds import run_kind_config
from agentropy.cli._options import PROGRESS_OPTION, field_option

#: The config the options mirror, named so that importing the CLI does not import torch.
EXPERIMENT_CONFIG = "agentropy.pipelines.experiment:ExperimentConfig"


@guarded
def experiment_command(
    config: Path | None = typer.Option(
        None,
        "--config",
        help="Experiment TOML: arms, seeds, out, eval_episodes, eval_seed at the top level, the "
        "shared TrainConfig in a [train] table (e.g. experiments/objectives.toml). Options "
        "given on the command line override it; --set overrides [train]. A file with a top-level "
        'kind key (e.g. kind = "recovery_intervention") runs that experiment instead.',
    ),
    arms: str | None = field_option(
        EXPERIMENT_CONFIG,
        "arms",
        "--arms",
        default=None,
        help="Comma-separated arms [default: baseline,rhythm]: baseline (constant:1.0 + flat), "
        "rhythm (phase + rhythm), vanilla, target, and the peers clip_cov, kl_cov, top_entropy "
        "(constant:1.0 + the peer's policy term).",
    ),
    seeds: int | None = field_option(EXPERIMENT_CONFIG, "seeds", "--seeds", default=None),
    out: Path | None = field_option(EXPERIMENT_CONFIG, "out", "--out", default=None),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a shared TrainConfig field: key=value (repeatable)."
    ),
    model: Path | None = typer.Option(
        None, "--model", help="Starting model directory (default: the embedded agent)."
    ),
    eval_episodes: int | None = field_option(
        EXPERIMENT_CONFIG, "eval_episodes", "--eval-episodes", default=None
    ),
    faults: str | None = field_option(
        "agentropy.rl.config:TrainConfig", "faults", "--faults", default=None
    ),
    jobs: int | None = field_option(EXPERIMENT_CONFIG, "jobs", "--jobs", default=None),
    progress: bool = PROGRESS_OPTION,
    force: bool = field_option(EXPERIMENT_CONFIG, "force", "--force"),
) -> None:
    """Train every arm on every seed, evaluate on the same held-out tasks, compare.

    Prints success, recovery, eruptions by kind, loops and tokens per episode per level; per
    arm the greedy held-out gain and training cycles; and per arm novel-fault recovery (own
    policy and greedy), tokens per episode and per-phase entropy, as mean [95% t-interval] over
    seeds; writes OUT/experiment.json (an earlier experiment in OUT needs --force).
    """
    if config is not None and run_kind_config(config, force=force, progress=progress):
        return
    from rich.console import Console

    from agentropy.pipelines.experiment import (
        EXPERIMENT_JSON,
        ExperimentConfig,
        render_tables,
        run_experiment,
    )
    from agentropy.rl.config import apply_overrides

    exp = ExperimentConfig.from_toml(config) if config is not None else ExperimentConfig()
    train_changes: dict[str, Any] = {"progress": progress}  # TrainConfig fields to replace
    if model is not None:
        train_changes["model"] = str(model)
    if faults is not None:
        train_changes["faults"] = faults
    train = apply_overrides(dataclasses.replace(exp.train, **train_changes), set_)
    explicit: dict[str, Any] = {  # ExperimentConfig fields given on the command line (None: not)
        "arms": None if arms is None else tuple(a.strip() for a in arms.split(",") if a.strip()),
        "seeds": seeds,
        "out": None if out is None else str(out),
        "eval_episodes": eval_episodes,
        "jobs": jobs,
    }
    changes = {k: v for k, v in explicit.items() if v is not None}
    exp = dataclasses.replace(exp, train=train, force=force or exp.force, **changes)
    console = Console()
    report = run_experiment(exp, console=console if progress else None)
    for table in render_tables(report):
        console.print(table)
    console.print(f"wrote {Path(exp.out) / EXPERIMENT_JSON}")


def register(app: typer.Typer) -> None:
    """Add the ``experiment`` command to ``app``."""
    app.command("experiment")(experiment_command)
