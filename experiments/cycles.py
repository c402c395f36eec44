"""Entropy cycles across training: the per-cycle table of finished runs (issue 17, item 3).

For each run (a trainer run directory, its ``metrics.parquet``, or a folder holding run
directories, e.g. an experiment's ``out``) this reads the per-step series, replays the live
monitor over the rollout entropy (``rollout/entropy``, the sampling-time model entropy; per
phase ``rollout/entropy_<phase>``) and prints, per eruption, reward and the degeneracy rates in
the window before its onset, during it and in the window after it subsided (or the run's last
window if it never did), with a mark where a rate got significantly worse
(:mod:`agentropy.monitor.cycles` has the definitions). A last row per run compares the window
before its first eruption with its last window: what the cycles left behind. Below the table,
as a cross-check, the cycles the analyzer's change-point detector finds in the same overall
entropy series (``agentropy analyze``'s ``training.cycles``).

Run (``experiments/cycles.toml`` trains the runs)::

    PYTHONPATH=src python experiments/cycles.py summarize runs/cycles runs/cycles-lr1e-4 \\
        --json runs/cycles.json

Bad input (a missing run, a file that is not a metrics log) is a one-line error and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentropy.errors import InputError
from agentropy.monitor.cycles import (
    CycleRow,
    CycleTableConfig,
    Persistence,
    WindowChange,
    cycle_table,
    persistence,
)
from agentropy.monitor.detector import ENTROPY_METRICS
from agentropy.trace import PHASES

#: The rollout entropy our trainer logs, preferred over the loss-side ``entropy/*`` tags.
ROLLOUT_TAGS: dict[str, str] = {
    "entropy": "rollout/entropy",
    **{f"entropy_{p}": f"rollout/entropy_{p}" for p in PHASES},
}

#: Table columns: metric, heading.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("reward", "reward"),
    ("loop_rate", "duplication"),
    ("hallucination_rate", "hallucinated"),
    ("valid_action_rate", "valid actions"),
)


_DEFAULTS = CycleTableConfig()


def runs_under(path: str | Path) -> list[Path]:
    """Metric logs under ``path``: itself if it is a log or a run directory, else every run
    directory (a folder with ``metrics.parquet``) below it, sorted."""
    p = Path(path)
    if p.is_dir() and not (p / "metrics.parquet").is_file():
        found = sorted(f.parent for f in p.rglob("metrics.parquet") if f.is_file())
        if found:
            return found
    return [p]


def read_series(path: str | Path) -> list[tuple[str, dict[str, list[float | None]]]]:
    """(name, column-wise series) of every run in ``path``, mapped onto the monitor's metric
    names with the rollout entropy preferred (:data:`ROLLOUT_TAGS`)."""
    from agentropy.trace.importers.scalars import TagMap, discover

    tags = TagMap.default(extra=ROLLOUT_TAGS)
    out = []
    for src in discover(path):
        raw = src.poll()
        steps = sorted(raw)
        rows = [tags.resolve(raw[s]) for s in steps]
        series: dict[str, list[float | None]] = {"step": [float(s) for s in steps]}
        for metric in tags.tags:
            vals = [r[metric] for r in rows]
            if any(v is not None for v in vals):
                series[metric] = vals
        if "entropy" not in series:
            raise InputError("no entropy series (rollout/entropy or entropy/mean)", path=src.path)
        out.append((src.name, series))
    return out


def analyzer_cycles(series: dict[str, list[float | None]]) -> list[dict[str, Any]]:
    """Cross-check: the analyzer's change-point cycles
    (:func:`agentropy.analysis.training.detect_cycles`) on the same overall entropy series."""
    import numpy as np

    from agentropy.analysis.training import detect_cycles

    def arr(m: str) -> np.ndarray:
        return np.asarray([np.nan if v is None else v for v in series[m]], np.float64)

    reward = arr("reward") if "reward" in series else None
    steps = np.asarray(series["step"], np.int64)
    cycles, _ = detect_cycles(steps, arr("entropy"), reward)
    return [
        {"start_step": c.start_step, "peak_step": c.peak_step, "end_step": c.end_step,
         "amplitude": c.amplitude, "subsided": c.subsided, "kind": c.kind}
        for c in cycles
    ]  # fmt: skip


def summarize(
    paths: Sequence[str | Path],
    config: CycleTableConfig | None = None,
    *,
    channels: Sequence[str] = ("entropy",),
) -> dict[str, Any]:
    """The per-cycle tables and persistence rows of every run under ``paths`` (JSON-ready)."""
    config = config if config is not None else CycleTableConfig()
    runs = []
    for p in paths:
        for run_dir in runs_under(p):
            # label: the folder given and the run's path below it, or the path as given
            label = str(Path(p).name / run_dir.relative_to(p)) if run_dir != Path(p) else str(p)
            found = read_series(run_dir)
            for name, series in found:
                rows = cycle_table(series, config, channels=channels)
                runs.append({
                    "run": label if len(found) == 1 else f"{label}/{name}",
                    "path": str(run_dir),
                    "steps": len(series["step"]),
                    "channels": [c for c in channels if c in series],
                    "cycles": [r.to_dict() for r in rows],
                    "kinds": {k: sum(r.kind == k for r in rows) for k in
                              ("productive", "degenerate", "neutral", "never_subsided")},
                    "degenerate_after": sum(r.degenerate_after for r in rows),
                    "persistence": (kept := persistence(series, rows, config)).to_dict(),
                    "analyzer_cycles": analyzer_cycles(series),
                    "_rows": rows,
                    "_persistence": kept,
                })  # fmt: skip
    return {
        "config": {"window": config.window, "z": config.z, "channels": list(channels)},
        "runs": runs,
    }


def _pair(c: WindowChange | None) -> str:
    if c is None or c.before is None or c.after is None:
        return "-"
    mark = "!" if c.worse else ("*" if c.significant else "")
    return f"{c.before:.2f}->{c.after:.2f}{mark}"


def _worse(changes: dict[str, WindowChange]) -> str:
    names = dict(COLUMNS)
    return ", ".join(names[m] for m, c in changes.items() if c.worse) or "none"


def _span(s: Sequence[int] | None) -> str:
    return "-" if s is None else f"{s[0]}-{s[1]}"


def render(report: dict[str, Any]) -> Any:
    """A rich table: one row per cycle, then one persistence row per run."""
    from rich.table import Table

    multi = len(report["config"]["channels"]) > 1
    t = Table(
        title="Entropy cycles across training: before -> after "
        "(! significantly worse, * significant change)",
        title_justify="left",
    )
    for head in ("run", *(["channel"] if multi else []), "onset/peak/end", "entropy",
                 "kind", "before | after"):  # fmt: skip
        t.add_column(head)
    for _, head in COLUMNS:
        t.add_column(head, justify="right")
    t.add_column("worse after")
    for run in report["runs"]:
        rows: list[CycleRow] = run["_rows"]
        if not rows:
            t.add_row(run["run"], *([""] if multi else []), "no eruption", "", "", "",
                      *("" for _ in COLUMNS), "")  # fmt: skip
        for r in rows:
            end = "never" if r.end_step is None else str(r.end_step)
            level = "?" if r.level is None else f"{r.level:.3f}"
            kind = r.kind + (" +divergence" if r.diverged else "")
            t.add_row(
                run["run"], *([r.channel] if multi else []),
                f"{r.onset_step}/{r.peak_step}/{end}", f"{level}->{r.peak:.3f}", kind,
                f"{_span(r.steps_before)} | {_span(r.steps_after)}",
                *(_pair(r.changes.get(m)) for m, _ in COLUMNS), _worse(r.changes),
            )  # fmt: skip
        p: Persistence = run["_persistence"]
        t.add_row(
            run["run"], *(["all"] if multi else []), "first vs last", "", "run",
            f"{_span(p.steps_before)} | {_span(p.steps_after)}",
            *(_pair(p.changes.get(m)) for m, _ in COLUMNS), _worse(p.changes), end_section=True,
        )  # fmt: skip
    return t


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("summarize", help="per-cycle table of finished runs")
    s.add_argument("runs", nargs="+", help="run directories, metrics.parquet files, or folders "
                   "holding run directories (an experiment's out)")  # fmt: skip
    s.add_argument("--window", type=int, default=_DEFAULTS.window,
                   help="logged steps in the before and after windows")  # fmt: skip
    s.add_argument("--z", type=float, default=_DEFAULTS.z,
                   help="significance of a before/after change, in standard errors")  # fmt: skip
    s.add_argument("--channels", default="entropy", help="comma-separated entropy channels "
                   f"({', '.join(ENTROPY_METRICS)}) or 'all'")  # fmt: skip
    s.add_argument("--json", default=None, help="also write the report here (JSON)")
    s.add_argument("--force", action="store_true", help="replace an existing --json file")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser()
    args = p.parse_args(argv)
    channels = (
        list(ENTROPY_METRICS)
        if args.channels == "all"
        else [c.strip() for c in args.channels.split(",") if c.strip()]
    )
    try:
        config = CycleTableConfig(window=args.window, z=args.z)
        bad = [c for c in channels if c not in ENTROPY_METRICS]
        if bad or not channels:
            raise ValueError(f"--channels: unknown {bad}; choose from {', '.join(ENTROPY_METRICS)}")
    except ValueError as err:
        p.error(str(err))
    from agentropy.errors import OutputError
    from agentropy.outputs import atomic_write_text, check_output

    try:
        if args.json:
            check_output(args.json, force=args.force)  # before any work
        report = summarize(args.runs, config, channels=channels)
        if args.json:
            doc = {**report, "runs": [{k: v for k, v in r.items() if not k.startswith("_")}
                                      for r in report["runs"]]}  # fmt: skip
            atomic_write_text(args.json, json.dumps(doc, indent=2, allow_nan=False), force=True)
    except (InputError, OutputError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    from rich.console import Console

    console = Console(width=200)
    console.print(render(report))
    for run in report["runs"]:
        found = run["analyzer_cycles"]
        text = ", ".join(f"{c['start_step']}/{c['peak_step']}/{c['end_step']} "
                         f"+{c['amplitude']:.3f} {c['kind']}" for c in found)  # fmt: skip
        console.print(f"analyzer (change points, overall entropy) {run['run']}: "
                      f"{len(found)} cycles{': ' + text if found else ''}")  # fmt: skip
    return report


if __name__ == "__main__":
    main()
