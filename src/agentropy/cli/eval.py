"""``agentropy eval``: sampling policies side by side on the same held-out tasks and faults."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from agentropy.agent.config import RunnerConfig
from agentropy.cli._common import guarded
from agentropy.cli._options import FORCE_OPTION, PROGRESS_OPTION, field_option
from agentropy.pipelines.compare import EVAL_JSON, EvalConfig

#: Episodes decoded together: larger than the runner's default, since evaluation only decodes.
EVAL_BATCH_SIZE = 16


def _join_ints(values: tuple[int, ...]) -> str:
    return ",".join(map(str, values))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _num(x: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def _ci(ci: list[float | None] | None) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return ""
    return f" [{100 * ci[0]:.0f},{100 * ci[1]:.0f}]"


def render_table(rows: list[dict[str, Any]], level: int) -> Any:
    """A rich table of one level's rows."""
    from rich.table import Table

    table = Table(title=f"ToolWorld L{level}", title_justify="left")
    for col, justify in (
        ("policy", "left"),
        ("n", "right"),
        ("success [95% CI]", "right"),
        ("recovery (n)", "right"),
        ("spike", "right"),
        ("erupt p/n/d", "right"),
        ("frozen", "right"),
        ("loops", "right"),
        ("tok/ep", "right"),
        ("overhead", "right"),
        ("lat p50/p95 s", "right"),
        ("lat CV", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        if r["level"] != level:
            continue
        table.add_row(
            r["policy"],
            str(r["episodes"]),
            _pct(r["success"]) + _ci(r["success_ci"]),
            f"{_pct(r['recovery'])} ({r['failure_episodes']})",
            _num(r["spike_mean"]),
            f"{r['eruptions_productive']}/{r['eruptions_neutral']}/{r['eruptions_divergent']}",
            str(r["frozen"]),
            str(r["loops"]),
            _num(r["tokens_per_episode"], "{:.1f}"),
            _num(r["overhead"], "{:.2f}x"),
            f"{_num(r['latency_p50'])}/{_num(r['latency_p95'])}",
            _num(r["latency_cv"]),
        )
    return table


def render_fault_class_table(rows: list[dict[str, Any]], levels: tuple[int, ...]) -> Any:
    """A rich table of the per fault class rows (``fault_classes`` of eval.json)."""
    from rich.table import Table

    table = Table(title=f"Per fault class, levels {_join_ints(levels)}", title_justify="left")
    for col in (
        "policy",
        "fault class",
        "n (fired)",
        "recovery [95% CI]",
        "spike at 1st (n)",
        "tok/ep",
        "lat/ep s",
    ):
        table.add_column(col, justify="left" if col in ("policy", "fault class") else "right")
    for r in rows:
        table.add_row(
            r["policy"],
            r["fault_class"],
            f"{r['episodes']} ({r['fired']})",
            _pct(r["recovery"]) + _ci(r["recovery_ci"]),
            f"{_num(r['spike_mean'])} ({r['spike_n']})",
            _num(r["tokens_per_episode"], "{:.1f}"),
            _num(r["latency_per_episode"]),
        )
    return table


@guarded
def eval_command(
    model: Path | None = typer.Option(
        None, "--model", help="Hugging Face model directory (default: the embedded agent)."
    ),
    policies: str = field_option(EvalConfig, "policies", "--policies", convert=",".join),
    levels: str = field_option(EvalConfig, "levels", "--levels", convert=_join_ints),
    episodes: int = field_option(EvalConfig, "episodes", "--episodes"),
    seed: int = field_option(EvalConfig, "seed", "--seed"),
    out: Path | None = typer.Option(
        None, "--out", help="Directory for eval.json and traces/<policy>.parquet."
    ),
    split: str = field_option(EvalConfig, "split", "--split"),
    faults: str = field_option("agentropy.env.toolworld:ToolWorldConfig", "faults", "--faults"),
    batch_size: int = field_option(
        RunnerConfig, "batch_size", "--batch-size", default=EVAL_BATCH_SIZE
    ),
    # Unset by default: RunnerConfig's own defaults apply (defined there only).
    max_turns: int | None = field_option(RunnerConfig, "max_turns", "--max-turns", default=None),
    max_new_tokens: int | None = field_option(
        RunnerConfig, "max_new_tokens", "--max-new-tokens", default=None
    ),
    progress: bool = PROGRESS_OPTION,
    force: bool = FORCE_OPTION,
) -> None:
    """Run every policy on the same held-out tasks with the same injected faults.

    Prints a table per level (success, recovery after failures, mean spike ratio after
    failures, eruptions by kind, frozen responses, loops, tokens per episode and overhead vs
    greedy, latency p50/p95/CV), then one per fault class (seen-ambiguous, seen-informative,
    novel: recovery of the episodes whose task plans such a fault, the spike ratio at its
    first failure, tokens and latency per episode) and, with --out, writes eval.json plus the
    traces (an existing eval.json or trace store needs --force).
    """
    from rich.console import Console

    from agentropy.pipelines.compare import check_eval_outputs, run_eval

    try:
        level_list = tuple(int(x) for x in levels.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--levels must be comma-separated integers, got {levels!r}") from None
    config = EvalConfig(
        policies=tuple(p.strip() for p in policies.split(",") if p.strip()),
        levels=level_list,
        episodes=episodes,
        seed=seed,
        split=split,
    )
    # Options left unset keep RunnerConfig's defaults (defined there only).
    given: dict[str, Any] = {"max_turns": max_turns, "max_new_tokens": max_new_tokens}
    runner_config = RunnerConfig(
        batch_size=batch_size, **{k: v for k, v in given.items() if v is not None}
    )
    if out is not None:  # before torch and the model load: existing outputs, unwritable disks
        check_eval_outputs(out, config.policies, force=force)
    from agentropy.agent.loading import load_model
    from agentropy.env.toolworld import ToolWorld, ToolWorldConfig

    world = ToolWorld(ToolWorldConfig(faults=faults))
    lm, tokenizer = load_model(model)
    result = run_eval(
        lm,
        tokenizer,
        config=config,
        world=world,
        runner_config=runner_config,
        out_dir=out,
        progress=progress,
        force=force,
    )
    # Wide enough for every column when output is piped or captured (rich defaults to 80).
    console = Console() if sys.stdout.isatty() else Console(width=160)
    for level in config.levels:
        console.print(render_table(result["rows"], level))
    console.print(
        f"overhead = tokens per episode / {config.reference}'s on the same tasks; "
        "erupt p/n/d = productive/neutral/divergent eruptions"
    )
    console.print(render_fault_class_table(result["fault_classes"], config.levels))
    console.print(
        "n = episodes whose task plans a fault of the class (one with two classes counts in "
        "both), fired = those where it fired; spike at 1st = mean spike ratio at the first "
        "failure of the class"
    )
    if out is not None:
        console.print(f"wrote {out / EVAL_JSON} and {len(config.policies)} trace stores")


def register(app: typer.Typer) -> None:
    """Add the ``eval`` command to ``app``."""
    app.command("eval")(eval_command)
