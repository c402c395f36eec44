"""``agentropy demo [--quick] [--out runs/demo]``: bootstrap, train, evaluate, report in one go.

A thin wrapper over :func:`agentropy.pipelines.demo.run_demo` (see there for the stages and budgets).
"""

from __future__ import annotations

from pathlib import Path

import typer

from agentropy.cli._common import guarded
from agentropy.cli._options import field_option

#: The config the options mirror (read from source: importing it here would slow every command).
DEMO_CONFIG = "agentropy.pipelines.demo:DemoConfig"


@guarded
def demo_command(
    quick: bool = field_option(DEMO_CONFIG, "quick", "--quick"),
    out: Path = field_option(DEMO_CONFIG, "out", "--out", convert=Path),
    model: Path | None = field_option(DEMO_CONFIG, "model", "--model"),
    train: bool = field_option(DEMO_CONFIG, "train", "--train/--no-train"),
    # Unset by default: the preset (quick or default budget) supplies these.
    train_steps: int | None = field_option(
        DEMO_CONFIG, "train_steps", "--train-steps", default=None
    ),
    episodes: int | None = field_option(DEMO_CONFIG, "eval_episodes", "--episodes", default=None),
    seed: int = field_option(DEMO_CONFIG, "seed", "--seed"),
    force: bool = field_option(DEMO_CONFIG, "force", "--force"),
    progress: bool = field_option(DEMO_CONFIG, "progress", "--progress/--no-progress"),
) -> None:
    """Bootstrap the tiny agent, train it briefly, compare sampling policies, write a report.

    Writes OUT/train (training run), OUT/eval (eval.json and traces), OUT/report.html and
    OUT/demo.json, and prints a summary: success per level and policy, the claims table,
    wall times.
    """
    from rich.console import Console

    from agentropy.pipelines.demo import DemoConfig, render_summary, run_demo

    config = DemoConfig.preset(
        quick=quick,
        out=str(out),
        model=None if model is None else str(model),
        train=train,
        train_steps=train_steps,
        eval_episodes=episodes,
        seed=seed,
        force=force,
        progress=progress,
    )
    record = run_demo(config, console=Console(stderr=True, quiet=not progress))
    console = Console()
    for item in render_summary(record):
        console.print(item)


def register(app: typer.Typer) -> None:
    """Add the ``demo`` command to ``app``."""
    app.command("demo")(demo_command)
