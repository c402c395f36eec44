"""``agentropy analyze PATH...``: breath analysis of traces, printed and optionally as JSON.

Reads JSONL trace files and Parquet trace stores (streamed part by part, see
:func:`agentropy.analysis.summary.iter_tables`), runs the within-episode analysis (eruptions,
contractions, frozen responses, loops), recovery-vs-spike statistics, token costs, latency and,
when episodes carry ``step``, training cycles. Prints a rich summary; ``--json OUT`` also writes
the machine-readable summary whose stable keys are listed in :mod:`agentropy.analysis.summary`
(``-`` writes it to stdout instead of the tables). Bad input exits with status 2 and a one-line
message naming file, line/row and field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from agentropy.analysis.summary import AnalyzeConfig
from agentropy.cli._common import guarded
from agentropy.cli._options import (
    FORCE_OPTION,
    NAN_POLICY_OPTION,
    NanPolicyChoice,
    field_option,
    nan_policy_of,
)

# Options shared by ``analyze`` and ``report`` (one definition each).
REFERENCE_OPTION: Any = field_option(AnalyzeConfig, "reference_policy", "--reference")
SEED_OPTION: Any = field_option(AnalyzeConfig, "seed", "--seed")


def _fmt(x: Any, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def _ci(entry: dict[str, Any]) -> str:
    ci = entry.get("ci")
    if not ci:
        return "-"
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _print_summary(s: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from agentropy.analysis.bounds import bounds_note
    from agentropy.analysis.summary import floor_note

    console = Console()
    kinds = s["eruption_kinds"]
    top = Table(title="agentropy analyze", show_header=False)
    top.add_column("metric")
    top.add_column("value", justify="right")
    rows = [
        ("episodes", s["episodes"]),
        ("assistant tokens", s["tokens"]),
        ("non-finite tokens dropped", s["dropped_nonfinite"]),
        ("triggers (tool turns)", s["triggers"]),
        ("tool failures", s["tool_failures"]),
        ("no_response triggers", s["no_response"]),
        ("eruptions", len(s["eruptions"])),
        (
            "  productive / neutral / divergent",
            "{productive} / {neutral} / {divergent}".format(**kinds),
        ),
        ("frozen responses", len(s["frozen"])),
        ("loops", len(s["loops"])),
    ]
    for k, v in rows:
        top.add_row(k, str(v))
    console.print(top)
    for note in (bounds_note(s), floor_note(s)):
        if note is not None:
            console.print(note, markup=False, highlight=False)

    rec = s["recovery"]
    t = Table(title="Recovery after failures by spike ratio (95% bootstrap CI)")
    for col in ("spike bin", "episode rate", "n", "CI", "turn rate", "n ", "CI "):
        t.add_column(col, justify="right")
    bins = [("all", rec["overall"], rec["turn_level"]["overall"])]
    bins += [
        (b, rec["by_spike_bin"][b], rec["turn_level"]["by_spike_bin"][b])
        for b in rec["by_spike_bin"]
    ]
    for label, e, u in bins:
        t.add_row(label, _fmt(e["rate"]), str(e["n"]), _ci(e), _fmt(u["rate"]), str(u["n"]), _ci(u))
    console.print(t)
    rel = rec["relative_3_4_vs_lt_1_5"]
    lg = rec["logistic"]
    console.print(
        f"relative recovery, 3-4x vs <1.5x spikes: {_fmt(rel['value'])} {_ci(rel)}; "
        f"logistic slope per unit spike: {_fmt(lg['slope'])}"
        + (f" (SE {_fmt(lg['se'][1])})" if lg["se"] else "")
    )

    costs = s["costs"]
    t = Table(title=f"Costs and latency per policy (reference: {costs['reference']})")
    for col in (
        "policy",
        "episodes",
        "tokens/ep",
        "overhead",
        "recover share",
        "p50 s",
        "p95 s",
        "CV",
    ):
        t.add_column(col, justify="right")
    for name, c in costs["policies"].items():
        lat = s["latency"].get(name, {})
        t.add_row(
            name,
            str(c["episodes"]),
            _fmt(c["tokens_per_episode"], ".1f"),
            _fmt(c["overhead"], "+.1%"),
            _fmt(c["recover_share"], ".1%"),
            _fmt(lat.get("p50")),
            _fmt(lat.get("p95")),
            _fmt(lat.get("cv")),
        )
    console.print(t)

    tr = s["training"]
    if tr["steps"]:
        t = Table(title=f"Training cycles over {tr['steps']} steps")
        for col in ("start", "peak", "end", "amplitude", "kind", "loop rate", "halluc. rate"):
            t.add_column(col, justify="right")
        for c in tr["cycles"]:
            t.add_row(
                str(c["start_step"]),
                str(c["peak_step"]),
                str(c["end_step"]),
                _fmt(c["amplitude"]),
                c["kind"],
                _fmt(c["loop_rate"]),
                _fmt(c["hallucination_rate"]),
            )
        console.print(t)
        fit = tr["fit"]
        console.print(
            f"R = -a exp(H) + b over the run: a={_fmt(fit['a'])} b={_fmt(fit['b'])} R^2={_fmt(fit['r2'])}"
        )


def analyze(
    paths: list[Path] = typer.Argument(..., help="JSONL trace files and/or Parquet trace stores."),
    json_out: str | None = typer.Option(
        None, "--json", help="Write the JSON summary to this file ('-' for stdout)."
    ),
    nan_policy: NanPolicyChoice = NAN_POLICY_OPTION,
    reference: str | None = REFERENCE_OPTION,
    tools: str | None = typer.Option(
        None,
        "--tools",
        help="Known tool names, comma-separated, or 'toolworld' for the built-in environment's "
        "tools; calls to other tools count as hallucinated.",
    ),
    seed: int = SEED_OPTION,
    force: bool = FORCE_OPTION,
    entropy_tag: str | None = typer.Option(
        None, "--entropy-tag", help="Training scalars: the tag holding mean entropy per step."
    ),
    reward_tag: str | None = typer.Option(
        None, "--reward-tag", help="Training scalars: the tag holding mean reward per step."
    ),
) -> None:
    """Eruptions, contractions, loops, recovery vs spike, costs and training cycles.

    PATH may also be training scalars (TensorBoard event directories, CSV exports e.g. from
    W&B): then the training-cycle analysis runs on their per-step entropy and reward.
    """
    if _scalar_paths(paths):
        _run_scalars(paths, json_out, entropy_tag, reward_tag, force)
        return
    _run(paths, json_out, nan_policy, reference, tools, seed, force)


@guarded
def _run(
    paths: list[Path],
    json_out: str | None,
    nan_policy: NanPolicyChoice,
    reference: str | None,
    tools: str | None,
    seed: int,
    force: bool,
) -> None:
    from agentropy.analysis.summary import analyze_paths
    from agentropy.outputs import atomic_write_text, check_output

    if json_out is not None and json_out != "-":
        check_output(json_out, force=force)  # before the analysis, not after it

    known = None
    if tools == "toolworld":
        from agentropy.env.toolworld import TOOL_NAMES

        known = frozenset(TOOL_NAMES)
    elif tools is not None:
        known = frozenset(t.strip() for t in tools.split(",") if t.strip())
    config = AnalyzeConfig(known_tools=known, reference_policy=reference, seed=seed)
    summary = analyze_paths(paths, config, nan_policy=nan_policy_of(nan_policy))
    text = json.dumps(summary, indent=2, allow_nan=False)
    if json_out == "-":
        typer.echo(text)
        return
    _print_summary(summary)
    if json_out is not None:
        atomic_write_text(json_out, text + "\n", force=force)


# ---------------------------------------------------------------- training scalars (TB / CSV)


@guarded
def _scalar_paths(paths: list[Path]) -> bool:
    """True when every path holds training scalars; mixing them with traces is an error."""
    from agentropy.trace.importers.scalars import is_scalar_input

    kinds = [is_scalar_input(p) for p in paths]
    if any(kinds) and not all(kinds):
        raise ValueError(
            "pass either trace files/stores or training scalars (TensorBoard/CSV), not both"
        )
    return bool(kinds) and all(kinds)


def scalar_training_summary(run: Any) -> dict[str, Any]:
    """Training-cycle analysis of one :class:`~agentropy.trace.importers.scalars.ScalarRun`:
    cycles and regimes of the entropy series (and of each phase series present), and the
    ``R = -a exp(H) + b`` fit when a reward series is present. JSON-ready."""
    import dataclasses

    from agentropy.analysis.training import detect_cycles, fit_exp_reward

    reward = run.series.get("reward")
    out: dict[str, Any] = {"run": run.name, "kind": run.kind, "steps": int(run.steps.shape[0]),
                           "tags": dict(run.tags), "channels": {}}  # fmt: skip
    for metric, x in run.series.items():
        if not metric.startswith("entropy"):
            continue
        cycles, regimes = detect_cycles(run.steps, x, reward)
        out["channels"][metric] = {
            "cycles": [dataclasses.asdict(c) for c in cycles],
            "regimes": {r: regimes.count(r) for r in ("descent", "eruption", "subsidence")},
        }
    out["fit"] = fit_exp_reward(run.series["entropy"], reward) if reward is not None else None
    return out


@guarded
def _run_scalars(
    paths: list[Path],
    json_out: str | None,
    entropy_tag: str | None,
    reward_tag: str | None,
    force: bool,
) -> None:
    from agentropy.outputs import atomic_write_text, check_output
    from agentropy.trace.importers.scalars import read_scalar_runs

    if json_out is not None and json_out != "-":
        check_output(json_out, force=force)
    runs = [r for p in paths for r in read_scalar_runs(p, entropy_tag=entropy_tag,
                                                       reward_tag=reward_tag)]  # fmt: skip
    summary = {"scalars": [scalar_training_summary(r) for r in runs]}
    text = json.dumps(summary, indent=2, allow_nan=False, default=_json_default)
    if json_out == "-":
        typer.echo(text)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for s in summary["scalars"]:
        t = Table(title=f"Training cycles: {s['run']} ({s['kind']}, {s['steps']} steps)")
        for col in ("channel", "start", "peak", "end", "amplitude", "kind"):
            t.add_column(col, justify="right")
        for channel, c in s["channels"].items():
            for cyc in c["cycles"]:
                t.add_row(channel, str(cyc["start_step"]), str(cyc["peak_step"]),
                          str(cyc["end_step"]), _fmt(cyc["amplitude"]), cyc["kind"])  # fmt: skip
        console.print(t)
        fit = s["fit"]
        if fit is not None:
            console.print(f"R = -a exp(H) + b: a={_fmt(fit['a'])} b={_fmt(fit['b'])} "
                          f"R^2={_fmt(fit['r2'])} (n={fit['n']})")  # fmt: skip
    if json_out is not None:
        atomic_write_text(json_out, text + "\n", force=force)


def _json_default(x: Any) -> Any:
    import numpy as np

    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def register(app: typer.Typer) -> None:
    """Add ``analyze`` to the CLI."""
    app.command("analyze")(analyze)
