"""``agentropy rollout``: sample ToolWorld episodes with a model and store them as traces.

Runs :func:`agentropy.agent.runner.rollout` level by level (each level's episodes are written
before the next level starts) and prints one summary row per level: success, tool calls,
failures, recovery (DESIGN.md: episodes with a failed or unexpected tool result that still
succeeded, over episodes with such a result), assistant tokens, and mean model entropy per phase
(token-weighted: sum over tokens / count, never a mean of means).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from agentropy.agent.config import RunnerConfig
from agentropy.cli._common import fail, guarded
from agentropy.cli._options import FORCE_OPTION, PROGRESS_OPTION, field_option
from agentropy.env.toolworld import LEVELS, ToolWorldConfig


def _out_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    raise fail(f"--out must end in .parquet (trace store) or .jsonl (interchange), got {path}")


def level_summary(episodes: list[Any]) -> dict[str, Any]:
    """Per-level numbers of the rollout table (pure; episodes of one level)."""
    import numpy as np

    from agentropy.trace import PHASES

    n = len(episodes)
    calls = sum(len(e.tool_turns) for e in episodes)
    failures = sum(sum(t.failed for t in e.tool_turns) for e in episodes)
    with_failure = [e for e in episodes if any(t.failed for t in e.tool_turns)]
    sums = dict.fromkeys(PHASES, 0.0)
    counts = dict.fromkeys(PHASES, 0)
    tokens = 0
    for e in episodes:
        for t in e.assistant_turns:
            tokens += t.n_tokens
            if t.phase is None:
                continue
            for code, name in enumerate(PHASES):
                sel = t.phase == code
                sums[name] += float(np.sum(t.entropy[sel], dtype=np.float64))
                counts[name] += int(sel.sum())
    return {
        "episodes": n,
        "success": sum(bool(e.success) for e in episodes) / n if n else None,
        "tool_calls": calls / n if n else None,
        "failures": failures / n if n else None,
        "recovered": sum(bool(e.success) for e in with_failure),
        "failure_episodes": len(with_failure),
        "tokens": tokens / n if n else None,
        "entropy": {p: (sums[p] / counts[p] if counts[p] else None) for p in PHASES},
    }


def render_table(rows: dict[int, dict[str, Any]], title: str) -> Any:
    """A rich table with one row per level."""
    from rich.table import Table

    from agentropy.trace import PHASES

    table = Table(title=title, title_justify="left")
    for col in ("level", "n", "success", "tool calls", "failures", "recovery", "tokens"):
        table.add_column(col, justify="left" if col == "level" else "right")
    for p in PHASES:
        table.add_column(f"H {p}", justify="right")

    def num(x: float | None, fmt: str = "{:.2f}") -> str:
        return "-" if x is None else fmt.format(x)

    for level, r in sorted(rows.items()):
        rec = "-"
        if r["failure_episodes"]:
            pct = 100 * r["recovered"] / r["failure_episodes"]
            rec = f"{r['recovered']}/{r['failure_episodes']} ({pct:.0f}%)"
        table.add_row(
            f"L{level}",
            str(r["episodes"]),
            num(None if r["success"] is None else 100 * r["success"], "{:.0f}%"),
            num(r["tool_calls"]),
            num(r["failures"]),
            rec,
            num(r["tokens"], "{:.1f}"),
            *(num(r["entropy"][p], "{:.3f}") for p in PHASES),
        )
    return table


def rollout_command(
    out: Path = typer.Option(
        ..., "--out", help="Output: a .parquet trace store or a .jsonl interchange file."
    ),
    model: Path | None = typer.Option(
        None, "--model", help="Hugging Face model directory (default: the embedded agent)."
    ),
    level: list[int] = typer.Option(
        list(LEVELS), "--level", help="ToolWorld level; repeat for several (default: all)."
    ),
    episodes: int = typer.Option(16, "--episodes", help="Episodes per level."),
    temperature: float = typer.Option(
        1.0, "--temperature", help="Constant sampling temperature; 0 = greedy."
    ),
    policy: str | None = typer.Option(
        None,
        "--policy",
        help="Sampling policy by name (greedy, constant:T, phase, edt); overrides --temperature.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for tasks and sampling."),
    split: str = typer.Option("test", "--split", help="Task split: train or test."),
    faults: str = field_option(ToolWorldConfig, "faults", "--faults"),
    batch_size: int = field_option(RunnerConfig, "batch_size", "--batch-size"),
    max_turns: int = field_option(RunnerConfig, "max_turns", "--max-turns"),
    max_new_tokens: int = field_option(RunnerConfig, "max_new_tokens", "--max-new-tokens"),
    max_tokens: int = field_option(RunnerConfig, "max_tokens", "--max-tokens"),
    progress: bool = PROGRESS_OPTION,
    force: bool = FORCE_OPTION,
) -> None:
    """Sample episodes on ToolWorld tasks and write them as traces, with a summary table."""
    _run(**locals())


@guarded
def _run(
    *,
    out: Path,
    model: Path | None,
    level: list[int],
    episodes: int,
    temperature: float,
    policy: str | None,
    seed: int,
    split: str,
    faults: str,
    batch_size: int,
    max_turns: int,
    max_new_tokens: int,
    max_tokens: int,
    progress: bool,
    force: bool,
) -> None:
    from agentropy.outputs import check_output

    if temperature < 0:
        raise fail(f"--temperature must be >= 0 (0 = greedy), got {temperature:g}")
    if episodes < 1:
        raise fail(f"--episodes must be >= 1, got {episodes}")
    if split not in ("train", "test"):
        raise fail(f"--split must be train or test, got {split!r}")
    fmt = _out_format(out)
    # Before any generation: an existing output needs --force, and the directory must take a
    # write (read-only or full disks fail now, not after the work is done).
    check_output(out, force=force, is_dir=fmt == "parquet")
    from agentropy.control.base import ConstantTemperature  # imports torch: after the check

    if policy is not None:
        from agentropy.control.temperature import schedule_from_name

        schedule = schedule_from_name(policy)
    else:
        schedule = ConstantTemperature(temperature)
    from agentropy.agent.runner import rollout

    config = RunnerConfig(
        max_turns=max_turns,
        max_new_tokens=max_new_tokens,
        max_tokens=max_tokens,
        batch_size=batch_size,
    )
    from agentropy.env.toolworld import ToolWorld

    world = ToolWorld(ToolWorldConfig(faults=faults))
    tasks_by_level = {
        lv: world.tasks(split=split, level=lv, n=episodes, seed=seed) for lv in dict.fromkeys(level)
    }
    from agentropy.agent.loading import load_model

    if model is None:
        _say_which_agent()
    lm, tokenizer = load_model(model)

    from agentropy.trace import TraceWriter, write_jsonl

    rows: dict[int, dict[str, Any]] = {}
    collected: list[Any] = []
    if fmt == "parquet" and force and out.exists():
        TraceWriter(out, overwrite=True).close()  # --force: start the store afresh
    writer = TraceWriter(out) if fmt == "parquet" else None
    try:
        for lv, tasks in tasks_by_level.items():
            eps = rollout(
                lm,
                tokenizer,
                world,
                tasks,
                schedule=schedule,
                config=config,
                seed=seed,
                progress=progress,
            )
            rows[lv] = level_summary(eps)
            if writer is not None:
                writer.write_many(eps)
                writer.flush()  # a level's episodes are safe before the next level starts
            else:
                collected.extend(eps)
    finally:
        if writer is not None:
            writer.close()
    if fmt == "jsonl":
        write_jsonl(collected, out, force=force)
    from rich.console import Console

    Console(width=120).print(render_table(rows, f"rollout: {schedule.name}, {split} split"))
    n = sum(r["episodes"] for r in rows.values())
    typer.echo(f"wrote {n} episodes to {out}")


def _say_which_agent() -> None:
    """Say, before a possibly long bootstrap, which embedded agent is used and whether it exists."""
    from agentropy.agent.shipped import shipped_agent_path
    from agentropy.agent.tiny import INFO_FILE, TinyRecipe, agent_path

    if shipped_agent_path(TinyRecipe()) is not None:
        return  # the shipped default agent: nothing to build
    path = agent_path(TinyRecipe())
    if (path / INFO_FILE).is_file():
        return
    quick = agent_path(TinyRecipe.quick())
    hint = f" (a quick agent exists: pass --model {quick})" if (quick / INFO_FILE).is_file() else ""
    typer.echo(
        f"no embedded agent at {path}: bootstrapping it first, which takes minutes{hint}",
        err=True,
    )


def register(app: typer.Typer) -> None:
    """Add the ``rollout`` command to ``app``."""
    app.command("rollout")(rollout_command)
