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
    arms: str = field_option(
        EXPERIMENT_CONFIG,
        "arms",
        "--arms",
        convert=",".join,
        help="Comma-separated arms: baseline (constant:1.0 + flat), rhythm (phase + rhythm), "
        "vanilla, target.",
    ),
    seeds: int = field_option(EXPERIMENT_CONFIG, "seeds", "--seeds"),
    out: Path = field_option(EXPERIMENT_CONFIG, "out", "--out", convert=Path),
    config: Path | None = typer.Option(
        None,
        "--config",
        help="TOML TrainConfig shared by every run (the rollout budget); a file with a top-level "
        'kind key (e.g. kind = "recovery_intervention") runs that experiment instead.',
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a shared TrainConfig field: key=value (repeatable)."
    ),
    model: Path | None = typer.Option(
        None, "--model", help="Starting model directory (default: the embedded agent)."
    ),
    eval_episodes: int = field_option(EXPERIMENT_CONFIG, "eval_episodes", "--eval-episodes"),
    faults: str | None = field_option(
        "agentropy.rl.config:TrainConfig", "faults", "--faults", default=None
    ),
    progress: bool = PROGRESS_OPTION,
    force: bool = field_option(EXPERIMENT_CONFIG, "force", "--force"),
) -> None:
    """Train every arm on every seed, evaluate on the same held-out tasks, compare.

    Prints success, recovery, eruptions by kind, loops and tokens per episode per level, and
    per arm the greedy held-out gain and training cycles, as mean [95% t-interval] over
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
    from agentropy.rl.config import TrainConfig, apply_overrides

    train = TrainConfig.from_toml(config) if config is not None else TrainConfig()
    changes: dict[str, Any] = {"progress": progress}  # TrainConfig fields to replace
    if model is not None:
        changes["model"] = str(model)
    if faults is not None:
        changes["faults"] = faults
    train = apply_overrides(dataclasses.replace(train, **changes), set_)
    exp = ExperimentConfig(
        arms=tuple(a.strip() for a in arms.split(",") if a.strip()),
        seeds=seeds,
        out=str(out),
        train=train,
        eval_episodes=eval_episodes,
        force=force,
    )
    console = Console()
    report = run_experiment(exp, console=console if progress else None)
    for table in render_tables(report):
        console.print(table)
    console.print(f"wrote {out / EXPERIMENT_JSON}")


def register(app: typer.Typer) -> None:
    """Add the ``experiment`` command to ``app``."""
    app.command("experiment")(experiment_command)
