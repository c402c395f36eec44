"""``agentropy train``: GRPO on ToolWorld with a phase-aware entropy loss (see
:mod:`agentropy.rl.trainer`).

Configuration precedence, lowest first: :class:`~agentropy.rl.config.TrainConfig` defaults, the
``--config`` TOML file, the explicit options (``--out``, ``--steps``, ...), then each ``--set
key=value`` in order. ``--print-config`` prints the resolved TOML and exits. The explicit options
take their help from the TrainConfig fields and default to "unset" so the TOML file can supply
them.

A run killed at any point restarts: after its first checkpoint with ``--resume`` (bit-identical
to an uninterrupted run), before it by running again (it starts over in place and says so).

``--stop-on divergence,collapse`` sets the config's ``stop_on``: the live monitor's alerts of those
kinds (:data:`agentropy.monitor.ALERT_NAMES`) end training at the step they fire, after a
checkpoint of that step. A run ended that way still writes ``final/`` and ``summary.json``
(``stopped_by``: the alert), says so on stderr and exits with status 3 (``ALERT_EXIT``, as
``watch --fail-on``), so a script tells it from a finished run (0) and from an error (1, 2).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer

from agentropy.cli._common import ALERT_EXIT, guarded
from agentropy.cli._options import PROGRESS_OPTION, alert_names, field_option
from agentropy.monitor import ALERT_NAMES

#: The config the options mirror, named so that importing the CLI does not import torch.
TRAIN_CONFIG = "agentropy.rl.config:TrainConfig"


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
    out: Path | None = field_option(TRAIN_CONFIG, "out", "--out", default=None),
    model: Path | None = field_option(TRAIN_CONFIG, "model", "--model", default=None),
    steps: int | None = field_option(TRAIN_CONFIG, "steps", "--steps", default=None),
    seed: int | None = field_option(TRAIN_CONFIG, "seed", "--seed", default=None),
    policy: str | None = field_option(TRAIN_CONFIG, "policy", "--policy", default=None),
    loss: str | None = field_option(TRAIN_CONFIG, "loss", "--loss", default=None),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the newest checkpoint in the run directory."
    ),
    faults: str | None = field_option(TRAIN_CONFIG, "faults", "--faults", default=None),
    stop_on: str | None = typer.Option(
        None,
        "--stop-on",
        help="Comma-separated monitor alert names that end training at the step they fire, "
        f"after a checkpoint; the command then exits with status {ALERT_EXIT}. Names: "
        f"{', '.join(ALERT_NAMES)}. Replaces the config's stop_on ('' clears it).",
    ),
    progress: bool = PROGRESS_OPTION,
    print_config: bool = typer.Option(
        False, "--print-config", help="Print the resolved config as TOML and exit."
    ),
) -> None:
    """Train a policy with multi-turn GRPO, on-policy under per-token temperatures.

    Writes metrics.parquet, traces/ (training episodes with step set: run `agentropy
    analyze OUT/traces` for training cycles), checkpoints/, final/ and summary.json.
    """
    _run(config, set_, out, model, steps, seed, policy, loss, resume, faults, stop_on, progress,
         print_config)  # fmt: skip


@guarded
def _run(
    config: Path | None,
    set_: list[str],
    out: Path | None,
    model: Path | None,
    steps: int | None,
    seed: int | None,
    policy: str | None,
    loss: str | None,
    resume: bool,
    faults: str | None,
    stop_on: str | None,
    progress: bool,
    print_config: bool,
) -> None:
    from rich.console import Console

    # Checked before the config (and torch) loads: a typo costs no start-up.
    stop = None if stop_on is None else alert_names(stop_on, "--stop-on")

    from agentropy.rl.config import TrainConfig, apply_overrides

    cfg = TrainConfig.from_toml(config) if config is not None else TrainConfig()
    explicit: dict[str, Any] = {  # TrainConfig fields given on the command line (None: not)
        "out": None if out is None else str(out),
        "model": None if model is None else str(model),
        "steps": steps,
        "seed": seed,
        "policy": policy,
        "loss": loss,
        "faults": faults,
        "stop_on": stop,
    }
    if not progress:
        explicit["progress"] = False
    cfg = dataclasses.replace(cfg, **{k: v for k, v in explicit.items() if v is not None})
    cfg = apply_overrides(cfg, set_)
    console = Console()
    if print_config:
        console.print(cfg.to_toml(), markup=False, highlight=False, end="")
        return

    from agentropy.rl.run import latest_checkpoint
    from agentropy.rl.trainer import train

    if resume and not cfg.progress:
        # The trainer says it on its (quiet) progress console; say it here too.
        ckpt = latest_checkpoint(cfg.out)
        if ckpt is not None:
            typer.echo(f"resuming {cfg.out} from {ckpt.name}", err=True)
    result = train(cfg, resume=resume, console=Console(stderr=True, quiet=not cfg.progress))
    before, after = result.held_out_before, result.held_out_after
    gain = "" if before is None or after is None else f" (gain {100 * (after - before):+.1f})"
    console.print(
        f"trained {result.steps} steps in {result.wall_s:.0f} s; held-out success "
        f"({cfg.resolved_eval_policy}) "
        f"{_pct(before)} -> {_pct(after)}{gain}; level {result.level}; wrote {cfg.out}"
    )
    alert = result.stopped_by
    if alert is not None:
        typer.echo(
            f"stopped early at step {alert['step']}: {alert['name']} alert on {alert['metric']} "
            f"(stop_on: {', '.join(cfg.stop_on)}); {alert['suggestion']}",
            err=True,
        )
        raise typer.Exit(code=ALERT_EXIT)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to ``app``."""
    app.command("train")(train_command)
