"""``agentropy entropy-check``: validate trace files and print what they hold.

Reads each FILE (a JSONL trace or a Parquet trace store, see :mod:`agentropy.trace`), validating
every field, and prints a summary table per file: episodes, turns, assistant tokens, tool calls by
status, mean model entropy per phase, and how many non-finite tokens ``--nan-policy drop``
removed. Bad input exits with status 2 and a one-line message naming file, line/row and field.
Means are sums over tokens divided once by token counts (no mean of means).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import typer

from agentropy.cli._common import guarded
from agentropy.cli._options import NAN_POLICY_OPTION, NanPolicyChoice, nan_policy_of
from agentropy.trace import PHASES, TOOL_STATUSES, Episode, NanPolicy, iter_episodes_counted


@dataclass
class TraceSummary:
    """Counts and entropy sums over a stream of episodes (accumulate, then divide once)."""

    episodes: int = 0
    successes: int = 0
    """Episodes with ``success`` true."""
    outcome_known: int = 0
    """Episodes whose ``success`` is set."""
    assistant_turns: int = 0
    tool_turns: int = 0
    tokens: int = 0
    tool_status: dict[str, int] = field(default_factory=dict)
    """Tool turns per status (``none`` for a missing status)."""
    entropy_sum: dict[str, float] = field(default_factory=dict)
    """Sum of model entropy (nats) per phase name, ``none`` for tokens without phase."""
    entropy_count: dict[str, int] = field(default_factory=dict)
    dropped: int = 0
    """Non-finite tokens dropped under ``nan_policy="drop"``."""

    def add(self, episode: Episode) -> None:
        self.episodes += 1
        if episode.success is not None:
            self.outcome_known += 1
            self.successes += int(bool(episode.success))
        for turn in episode.turns:
            if turn.role == "tool":
                self.tool_turns += 1
                key = turn.status or "none"
                self.tool_status[key] = self.tool_status.get(key, 0) + 1
                continue
            self.assistant_turns += 1
            if turn.entropy is None or turn.n_tokens == 0:
                continue
            ent = turn.entropy.astype(np.float64)
            self.tokens += len(ent)
            if turn.phase is None:
                self._add_entropy("none", float(ent.sum()), len(ent))
                continue
            for code, name in enumerate(PHASES):
                sel = turn.phase == code
                if sel.any():
                    self._add_entropy(name, float(ent[sel].sum()), int(sel.sum()))

    def _add_entropy(self, key: str, total: float, count: int) -> None:
        self.entropy_sum[key] = self.entropy_sum.get(key, 0.0) + total
        self.entropy_count[key] = self.entropy_count.get(key, 0) + count

    def mean_entropy(self, key: str | None = None) -> float | None:
        """Mean model entropy over all tokens (``key=None``) or one phase; None if no tokens."""
        keys = list(self.entropy_sum) if key is None else [key]
        count = sum(self.entropy_count.get(k, 0) for k in keys)
        if count == 0:
            return None
        return sum(self.entropy_sum.get(k, 0.0) for k in keys) / count


def summarize(episodes: Iterable[Episode], *, dropped: int = 0) -> TraceSummary:
    """Summary of ``episodes`` (``dropped``: non-finite tokens already removed by the reader)."""
    summary = TraceSummary(dropped=dropped)
    for episode in episodes:
        summary.add(episode)
    return summary


def _summarize_path(path: Path, nan_policy: NanPolicy) -> TraceSummary:
    # Streams Parquet stores part by part, so memory stays bounded on large runs.
    summary = TraceSummary()
    for episode, dropped in iter_episodes_counted(path, nan_policy=nan_policy):
        summary.add(episode)
        summary.dropped += dropped
    return summary


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _render(path: Path, s: TraceSummary, nan_policy: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    # The path on a line of its own, never wrapped, so it can be copied or grepped.
    console.print(str(path), soft_wrap=True, highlight=False, markup=False, style="bold")
    table = Table(show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("episodes", str(s.episodes))
    if s.outcome_known:
        table.add_row("successful", f"{s.successes} / {s.outcome_known}")
    table.add_row("turns (assistant / tool)", f"{s.assistant_turns} / {s.tool_turns}")
    table.add_row("assistant tokens", str(s.tokens))
    table.add_row("tool calls", str(s.tool_turns))
    for status in (*TOOL_STATUSES, "none"):
        n = s.tool_status.get(status, 0)
        if n or status != "none":
            label = "no status" if status == "none" else status
            table.add_row(f"  tool results: {label}", str(n))
    table.add_row(f"non-finite tokens dropped ({nan_policy})", str(s.dropped))
    console.print(table)

    ent = Table(title="model entropy (nats) by phase", title_justify="left")
    ent.add_column("role / phase")
    ent.add_column("tokens", justify="right")
    ent.add_column("mean entropy", justify="right")
    ent.add_row("assistant (all)", str(s.tokens), _fmt(s.mean_entropy()))
    for phase in (*PHASES, "none"):
        n = s.entropy_count.get(phase, 0)
        if n or phase != "none":
            label = "(no phase)" if phase == "none" else phase
            ent.add_row(f"  {label}", str(n), _fmt(s.mean_entropy(phase) if n else None))
    console.print(ent)


def entropy_check(
    files: list[Path] = typer.Argument(
        ...,
        metavar="FILE...",
        help="JSONL trace files (.jsonl/.json, optionally .gz) or Parquet trace stores.",
    ),
    nan_policy: NanPolicyChoice = NAN_POLICY_OPTION,
) -> None:
    """Validate trace files and print a summary of what they hold."""
    _run(files, nan_policy_of(nan_policy))


@guarded
def _run(files: list[Path], policy: NanPolicy) -> None:
    for path in files:
        _render(path, _summarize_path(path, policy), policy)


def register(app: typer.Typer) -> None:
    """Add ``entropy-check`` to the ``agentropy`` app."""
    app.command("entropy-check")(entropy_check)
