"""``agentropy train``: GRPO on ToolWorld with a phase-aware entropy loss (see
:mod:`agentropy.rl.trainer`).

Configuration precedence, lowest first: :class:`~agentropy.rl.config.TrainConfig` defaults, the
``--config`` TOML file, the explicit options (``--out``, ``--steps``, ...), then each ``--set
key=value`` in order. ``--print-config`` prints the resolved TOML and exits.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from agentropy.cli._common import guarded


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to ``app``."""

    @app.command("train")
    @guarded
    def train_command(
        config: Path | None = typer.Option(
            None,
            "--config",
            help="TOML file of TrainConfig fields (nested: target and rhythm tables).",
        ),
        set_: list[str] = typer.Option(
            [],
            "--set",
            help="Override a field, repeatable: key=value, dotted when nested (rhythm.step=1e-3).",
        ),
        out: Path | None = typer.Option(None, "--out", help="Run directory."),
        model: Path | None = typer.Option(
            None, "--model", help="Hugging Face model directory (default: the embedded agent)."
        ),
        steps: int | None = typer.Option(None, "--steps", help="Training steps."),
        seed: int | None = typer.Option(None, "--seed", help="Run seed."),
        policy: str | None = typer.Option(
            None,
            "--policy",
            help="Sampling policy: constant:T, phase, edt (greedy is untrainable).",
        ),
        loss: str | None = typer.Option(
            None, "--loss", help="Policy loss: vanilla, flat, target, rhythm."
        ),
        resume: bool = typer.Option(
            False, "--resume", help="Continue from the newest checkpoint in the run directory."
        ),
        faults: str | None = typer.Option(
            None,
            "--faults",
            help="Fault family: seen (in expert transcripts), novel (never shown) or all.",
        ),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
        print_config: bool = typer.Option(
            False, "--print-config", help="Print the resolved config as TOML and exit."
        ),
    ) -> None:
        """Train a policy with multi-turn GRPO, on-policy under per-token temperatures.

        Writes metrics.parquet, traces/ (training episodes with step set: run `agentropy
        analyze OUT/traces` for training cycles), checkpoints/, final/ and summary.json.
        """
        from rich.console import Console

        from agentropy.rl.config import TrainConfig, apply_overrides

        cfg = TrainConfig.from_toml(config) if config is not None else TrainConfig()
        explicit = {
            "out": None if out is None else str(out),
            "model": None if model is None else str(model),
            "steps": steps,
            "seed": seed,
            "policy": policy,
            "loss": loss,
            "faults": faults,
        }
        if not progress:
            explicit["progress"] = False
        cfg = dataclasses.replace(cfg, **{k: v for k, v in explicit.items() if v is not None})
        cfg = apply_overrides(cfg, set_)
        console = Console()
        if print_config:
            console.print(cfg.to_toml(), markup=False, highlight=False, end="")
            return

        from agentropy.rl.trainer import train

        result = train(cfg, resume=resume, console=Console(stderr=True, quiet=not cfg.progress))
        before, after = result.held_out_before, result.held_out_after
        gain = "" if before is None or after is None else f" (gain {100 * (after - before):+.1f})"
        console.print(
            f"trained {result.steps} steps in {result.wall_s:.0f} s; held-out success "
            f"({cfg.resolved_eval_policy}) "
            f"{_pct(before)} -> {_pct(after)}{gain}; level {result.level}; wrote {cfg.out}"
        )


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"
