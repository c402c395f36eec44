"""``agentropy watch PATH...``: follow training runs' logs and warn while they train.

Each PATH is a TensorBoard log directory (several runs inside are watched separately), a CSV
export (file or directory), our trainer's run directory or its ``metrics.parquet`` (see
:mod:`agentropy.trace.importers.scalars`). Every new step goes through the streaming detector
(:mod:`agentropy.monitor.detector`); the terminal shows per-phase entropy, reward and the alerts.
verl's and TRL's metric names are recognised by default; ``--entropy-tag``, ``--reward-tag`` and
``--tag METRIC=TAG`` point at others.

``--once`` processes what exists and exits; otherwise the logs are polled every ``--interval``
seconds until Ctrl-C (or ``--stop-after`` seconds). ``--json OUT`` writes the alerts (rewritten
atomically as they come, so it survives an interrupted watch; an existing OUT needs
``--force``). ``--fail-on divergence,collapse`` makes the exit status 3 when any such alert
fired (for scripts and CI). Bad input, an unwritable OUT: status 2.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from agentropy.cli._common import ALERT_EXIT, guarded
from agentropy.cli._options import FORCE_OPTION, alert_names
from agentropy.monitor import ALERT_NAMES

#: Exit status when an alert named in ``--fail-on`` fired (the same as ``train --stop-on``).
FAIL_EXIT = ALERT_EXIT


@dataclass
class RunWatch:
    """One run being followed: its source, detector state, and what has been seen."""

    source: Any
    monitor: Any
    tags: Any
    state: Any = None
    pending: dict[int, dict[str, float]] = field(default_factory=dict)
    last_step: int | None = None
    steps: int = 0
    late: int = 0
    latest: dict[str, float | None] = field(default_factory=dict)
    raw_tags: set[str] = field(default_factory=set)
    alerts: list[Any] = field(default_factory=list)
    last_data: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.state is None:
            self.state = self.monitor.init()

    def poll(self, *, final: bool, settle_s: float) -> list[Any]:
        """Read new scalars and feed complete steps to the detector; returns new alerts.

        TensorBoard writes a step's tags one by one, so the newest step is held back until a
        later step appears, the run has been quiet for ``settle_s`` seconds, or ``final``.
        Rows of CSV and Parquet logs are complete when written.
        """
        new = self.source.poll()
        now = time.monotonic()
        if new:
            self.last_data = now
        for step, tags in new.items():
            if self.last_step is not None and step <= self.last_step:
                self.late += 1
                continue
            self.pending.setdefault(step, {}).update(tags)
        if not self.pending:
            return []
        ready = sorted(self.pending)
        hold = self.source.kind == "tensorboard" and not final and now - self.last_data < settle_s
        if hold:
            ready = ready[:-1]
        fired: list[Any] = []
        for step in ready:
            raw = self.pending.pop(step)
            self.raw_tags.update(raw)
            metrics = self.tags.resolve(raw)
            alerts, self.state = self.monitor.update(self.state, metrics, step=step)
            self.last_step = step
            self.steps += 1
            self.latest = {k: v for k, v in metrics.items() if v is not None} | {"step": step}
            fired += alerts
        self.alerts += fired
        return fired

    def summary(self) -> dict[str, Any]:
        return {
            "run": self.source.name,
            "path": str(self.source.path),
            "kind": self.source.kind,
            "steps": self.steps,
            "last_step": self.last_step,
            "late_steps_ignored": self.late,
            "tags": self.tags.source_of(self.raw_tags),
            "alerts": [a.to_dict() for a in self.alerts],
        }


def _parse_tags(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        metric, sep, tag = item.partition("=")
        if not sep or not metric.strip() or not tag.strip():
            raise ValueError(f"--tag expects METRIC=TAG (e.g. loop_rate=rollout/dup), got {item!r}")
        out[metric.strip()] = tag.strip()
    return out


def _view(runs: list[RunWatch], recent: int = 12) -> Any:
    from rich.console import Group
    from rich.table import Table

    from agentropy.monitor import ENTROPY_METRICS

    t = Table(title="agentropy watch", expand=False)
    cols = ["run", "step", *[m.removeprefix("entropy_") for m in ENTROPY_METRICS], "reward",
            "loops", "halluc.", "valid", "alerts"]  # fmt: skip
    for c in cols:
        t.add_column(c, justify="left" if c == "run" else "right")
    for r in runs:
        v = r.latest

        def f(k: str, v: dict = v) -> str:
            x = v.get(k)
            return "-" if x is None else f"{x:.3g}"

        t.add_row(
            r.source.name, str(r.last_step if r.last_step is not None else "-"),
            *[f(m) for m in ENTROPY_METRICS], f("reward"), f("loop_rate"),
            f("hallucination_rate"), f("valid_action_rate"), str(len(r.alerts)),
        )  # fmt: skip
    a = Table(title="alerts (latest first)", expand=False)
    for c in ("step", "run", "alert", "metric", "suggestion"):
        a.add_column(c, justify="right" if c == "step" else "left")
    style = {"divergence": "bold red", "collapse": "bold red", "nonfinite": "bold red",
             "eruption": "yellow", "subsided": "green"}  # fmt: skip
    # latest step first; within a step, the alert fired last first
    every = [(x, r.source.name, i) for r in runs for i, x in enumerate(r.alerts)]
    every.sort(key=lambda p: (-p[0].step, -p[2]))
    for x, name, _ in every[:recent]:
        label = f"{x.name}:{x.kind}" if x.kind else x.name
        a.add_row(str(x.step), name, f"[{style.get(x.name, '')}]{label}", x.metric, x.suggestion)
    return Group(t, a) if every else t


def _write_json(
    path: str | None, runs: list[RunWatch], fail_on: frozenset[str], *, force: bool
) -> None:
    """Write the alerts document to ``path`` (``-``: stdout), atomically: an interrupted watch
    leaves the previous complete document. ``force``: replace an existing file (the watch's own
    earlier writes, or a file the user let ``--force`` replace)."""
    if path is None:
        return
    fired = sorted({a.name for r in runs for a in r.alerts} & fail_on)
    doc = {"runs": [r.summary() for r in runs], "fail_on": sorted(fail_on), "failed": fired}
    text = json.dumps(doc, indent=2, allow_nan=False)
    if path == "-":
        typer.echo(text)
        return
    from agentropy.outputs import atomic_write_text

    atomic_write_text(path, text + "\n", force=force)


def watch(
    paths: list[Path] = typer.Argument(
        ..., help="TensorBoard log dirs, CSV exports, trainer run dirs or metrics.parquet files."
    ),
    once: bool = typer.Option(False, "--once", help="Process what exists now and exit."),
    json_out: str | None = typer.Option(
        None, "--json", help="Write the alerts as JSON to this file ('-' for stdout, at the end)."
    ),
    fail_on: str | None = typer.Option(
        None,
        "--fail-on",
        help="Comma-separated alert names (e.g. divergence,collapse): exit with status "
        f"{ALERT_EXIT} if any fired. Names: {', '.join(ALERT_NAMES)}.",
    ),
    entropy_tag: str | None = typer.Option(
        None, "--entropy-tag", help="Tag of the per-step entropy (default: verl, TRL, ours)."
    ),
    reward_tag: str | None = typer.Option(
        None, "--reward-tag", help="Tag of the per-step reward (default: verl, TRL, ours)."
    ),
    tag: list[str] = typer.Option(
        [], "--tag", help="METRIC=TAG for any other monitor metric (repeatable)."
    ),
    interval: float = typer.Option(5.0, "--interval", help="Seconds between polls when following."),
    stop_after: float = typer.Option(
        0.0, "--stop-after", help="Stop following after this many seconds (0: until Ctrl-C)."
    ),
    settle: float = typer.Option(
        30.0,
        "--settle",
        help="Seconds a TensorBoard run must be quiet before its newest step counts as complete.",
    ),
    force: bool = FORCE_OPTION,
) -> None:
    """Follow training logs: live per-phase entropy, eruption/divergence/collapse alerts."""
    code = _run(paths, once, json_out, fail_on, entropy_tag, reward_tag, tag, interval,
                stop_after, settle, force)  # fmt: skip
    if code:
        raise typer.Exit(code=code)


@guarded
def _run(
    paths: list[Path],
    once: bool,
    json_out: str | None,
    fail_on_text: str | None,
    entropy_tag: str | None,
    reward_tag: str | None,
    tag: list[str],
    interval: float,
    stop_after: float,
    settle: float,
    force: bool,
) -> int:
    from rich.console import Console

    from agentropy.errors import InputError
    from agentropy.monitor import Monitor
    from agentropy.outputs import check_output
    from agentropy.trace.importers.scalars import TagMap, discover

    fail_on = frozenset(alert_names(fail_on_text, "--fail-on"))
    if not interval > 0:
        raise ValueError(f"--interval must be > 0 seconds, got {interval}")
    if json_out not in (None, "-"):
        check_output(json_out, force=force)  # before following: not at the first alert
    # Once this watch has written --json, rewriting it is replacing its own output.
    owned = force
    tags = TagMap.default(entropy_tag=entropy_tag, reward_tag=reward_tag, extra=_parse_tags(tag))
    monitor = Monitor()
    console = Console(stderr=json_out == "-")
    runs: list[RunWatch] = []
    waiting: list[Path] = []
    for p in paths:
        try:
            runs += [RunWatch(s, monitor, tags) for s in discover(p)]
        except InputError:
            if once:
                raise
            waiting.append(p)  # the run may not have logged yet: look again at every poll
            console.print(f"waiting for logs under {p}")

    def poll(final: bool) -> list[Any]:
        for p in list(waiting):
            try:
                runs.extend(RunWatch(s, monitor, tags) for s in discover(p))
                waiting.remove(p)
            except InputError:
                pass
        fired = []
        for r in runs:
            fired += [(r, a) for a in r.poll(final=final, settle_s=settle)]
        nonlocal owned
        if fired and json_out != "-":
            _write_json(json_out, runs, fail_on, force=owned)
            owned = True
        return fired

    if once:
        poll(final=True)
        if json_out != "-":
            console.print(_view(runs, recent=50))
    else:
        start = time.monotonic()
        live = console.is_terminal
        try:
            if live:
                from rich.live import Live

                with Live(_view(runs), console=console, refresh_per_second=2) as screen:
                    while not stop_after or time.monotonic() - start < stop_after:
                        poll(final=False)
                        screen.update(_view(runs))
                        time.sleep(interval)
            else:
                while not stop_after or time.monotonic() - start < stop_after:
                    for r, a in poll(final=False):
                        console.print(f"step {a.step} {r.source.name} {a.name}"
                                      f"{':' + a.kind if a.kind else ''} {a.metric}: {a.suggestion}")  # fmt: skip
                    time.sleep(interval)
        except KeyboardInterrupt:
            pass
        poll(final=True)
    _write_json(json_out, runs, fail_on, force=owned)
    fired = {a.name for r in runs for a in r.alerts} & fail_on
    if fired:
        console.print(f"[bold red]failing: {', '.join(sorted(fired))} fired[/]", highlight=False)
        return FAIL_EXIT
    return 0


def register(app: typer.Typer) -> None:
    """Add ``watch`` to the CLI."""
    app.command("watch")(watch)
