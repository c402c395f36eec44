"""``agentropy demo [--quick] [--out runs/demo]``: bootstrap, train, evaluate, report in one go.

A thin wrapper over :func:`agentropy.pipelines.demo.run_demo` (see there for the stages and budgets).
"""

from __future__ import annotations

from pathlib import Path

import typer

from agentropy.cli._common import guarded


def register(app: typer.Typer) -> None:
    """Add the ``demo`` command to ``app``."""

    @app.command("demo")
    @guarded
    def demo_command(
        quick: bool = typer.Option(
            False, "--quick", help="Small agent and few episodes (about 2 minutes)."
        ),
        out: Path = typer.Option(Path("runs/demo"), "--out", help="Run directory."),
        model: Path | None = typer.Option(
            None,
            "--model",
            help="Model directory to use instead of bootstrapping the embedded tiny agent.",
        ),
        train: bool = typer.Option(
            True, "--train/--no-train", help="Run the short RL training stage."
        ),
        train_steps: int | None = typer.Option(None, "--train-steps", help="GRPO steps."),
        episodes: int | None = typer.Option(
            None, "--episodes", help="Evaluation episodes per level and policy."
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of training, tasks and sampling."),
        force: bool = typer.Option(
            False, "--force", help="Replace the outputs of an earlier demo in --out."
        ),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars."),
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
