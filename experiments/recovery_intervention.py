"""Recovery as an intervention, not a correlation (issue 17, item 1).

The essay claims that a 3-4x entropy spike after a failed API call goes with 22% higher recovery
than agents forced into low entropy. Correlating spike size with recovery across episodes
(``agentropy analyze``'s by-spike-bin table) cannot separate cause from selection: the episodes
that spike may simply be the harder or the easier ones. Here the spike is *set*: the same agent
meets the same held-out tasks with the same injected faults (``agentropy eval`` with one
``--seed``: tasks and faults are a pure function of it), and the arms differ in how the agent
samples after a failure:

- ``forced-low``: ``phase:recover=0.1``, the phase controller with a near-greedy recover phase
  and every other phase as in ``phase`` (so against ``phase`` only the recover phase differs;
  past ``recover_budget`` recover tokens both fall back to the plan temperature);
- ``phase``: the phase controller's defaults (recover 1.2: the high-spike arm);
- ``constant``: ``constant:1.0`` (every phase at 1.0: the usual sampling);
- ``edt``: entropy-based dynamic temperature with its defaults.

Per arm and fault class (seen-ambiguous, seen-informative, novel: ``agentropy.env.faults.
FAULT_CLASS``) it prints recovery with a 95% bootstrap interval (``eval.json``'s
``fault_classes``: the unit is the episode whose task plans a fault of the class), the mean
spike ratio at the first failure of the class, tokens and wall seconds per episode; and per arm a
check that the intervention took: recover-phase tokens per episode (if the agent writes no
recover text, the arms cannot differ) with their mean temperature, sampling entropy and model
entropy. The spike ratio is DESIGN.md's, of *model* entropy (T = 1): a recover temperature
changes it only through the text it makes the agent write, while the sampling entropy (what
the agent actually draws from) follows the temperature directly. The
essay's "+22%" becomes ``phase`` minus ``forced-low`` recovery on the same tasks, in points and
relative, with a **paired percentile bootstrap** interval over tasks
(:func:`agentropy.analysis.recovery.paired_difference_ci`: whole task pairs are resampled, so
the pairing by task is kept). The observational view stays as a second table: recovery by the
spike bin of each episode's first failure, per arm.

Each arm runs as its own ``agentropy eval`` process (``--jobs`` at a time, one thread each);
wall seconds per episode are only comparable between arms run under the same load.

Run (the shipped agent; ``--model DIR`` for another)::

    AGENTROPY_HOME=/tmp/home PYTHONPATH=src python experiments/recovery_intervention.py run \\
        --out runs/ri --episodes 40 --levels 2,3 --faults all --seed 0 --jobs 2
    PYTHONPATH=src python experiments/recovery_intervention.py summarize runs/ri

``run`` summarizes at the end; ``summarize`` re-reads ``<out>/<arm>/eval.json`` and the traces
and writes ``<out>/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: Arm name -> sampling policy (``agentropy.control.temperature.schedule_from_name``).
ARMS: dict[str, str] = {
    "forced-low": "phase:recover=0.1",
    "phase": "phase",
    "constant": "constant:1.0",
    "edt": "edt",
}
#: The essay's comparison: high-spike arm minus forced-low arm.
HIGH_ARM, LOW_ARM = "phase", "forced-low"
SUMMARY_JSON = "summary.json"


def run(args: argparse.Namespace) -> None:
    """One ``agentropy eval`` process per arm, ``args.jobs`` at a time, then :func:`summarize`."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    pending = list(args.arms)
    running: dict[str, tuple[subprocess.Popen[bytes], Any, float]] = {}
    failed = []
    while pending or running:
        while pending and len(running) < args.jobs:
            arm = pending.pop(0)
            cmd = [
                sys.executable, "-m", "agentropy", "eval",
                "--policies", ARMS[arm], "--levels", args.levels,
                "--episodes", str(args.episodes), "--seed", str(args.seed),
                "--faults", args.faults, "--batch-size", str(args.batch_size),
                "--out", str(out / arm), "--no-progress",
            ]  # fmt: skip
            if args.model:
                cmd += ["--model", args.model]
            if args.force:
                cmd.append("--force")
            (out / arm).mkdir(exist_ok=True)
            log = open(out / arm / "eval.log", "wb")  # noqa: SIM115 (closed when the arm ends)
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            running[arm] = (proc, log, time.perf_counter())
            print(f"started {arm} ({ARMS[arm]}): pid {proc.pid}", flush=True)
        time.sleep(1.0)
        for arm, (proc, log, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[arm]
            log.close()
            print(f"finished {arm}: exit {proc.returncode}, {time.perf_counter() - t0:.0f} s")
            if proc.returncode != 0:
                failed.append(arm)
    if failed:
        raise SystemExit(f"arms failed: {', '.join(failed)} (see <out>/<arm>/eval.log)")
    summarize(out, args.arms)


def _arm_data(out: Path, arm: str) -> tuple[dict[str, Any], list[Any]]:
    from agentropy.trace import read_traces

    data = json.loads((out / arm / "eval.json").read_text())
    policy = data["config"]["policies"][0]
    return data, read_traces([data["traces"][policy]])


def summarize(out: Path, arms: list[str] | None = None) -> dict[str, Any]:
    """Read every arm's eval.json and traces; print the tables; write ``summary.json``."""
    import numpy as np

    from agentropy.analysis.recovery import SPIKE_BIN_LABELS, paired_difference_ci
    from agentropy.analysis.summary import analyze_episodes
    from agentropy.env.faults import FAULT_CLASS, FAULT_CLASSES

    arms = [a for a in (arms or list(ARMS)) if (out / a / "eval.json").exists()]
    if not arms:
        raise SystemExit(f"no <arm>/eval.json under {out}")
    configs, classes, per_task, recover, by_bin = {}, {}, {}, {}, {}
    for arm in arms:
        data, episodes = _arm_data(out, arm)
        # Everything but the policy (and the reference, which is the arm's own policy) must match.
        cfg = {k: v for k, v in data["config"].items() if k not in ("policies", "reference")}
        configs[arm] = cfg
        classes[arm] = {r["fault_class"]: r for r in data["fault_classes"]}
        # task_id -> (success, classes its planned faults belong to); planned faults as the
        # session recorded them (the same Task.faults eval counted).
        per_task[arm] = {
            e.task_id: (
                bool(e.success),
                {FAULT_CLASS[f["kind"]] for f in e.meta["faults"] if f["kind"] in FAULT_CLASS},
            )
            for e in episodes
        }
        recover[arm] = _recover_phase(episodes)
        by_bin[arm] = analyze_episodes(episodes)["recovery"]["by_spike_bin"]
    if len({json.dumps(c, sort_keys=True) for c in configs.values()}) > 1:
        raise SystemExit(f"arms were not run on the same tasks and faults: {configs}")

    differences: dict[str, Any] = {}
    if HIGH_ARM in per_task and LOW_ARM in per_task:
        hi, lo = per_task[HIGH_ARM], per_task[LOW_ARM]
        shared = sorted(set(hi) & set(lo))
        for c in (*FAULT_CLASSES, "any"):  # any: tasks planning a fault of some class
            tasks = [t for t in shared if (hi[t][1] if c == "any" else c in hi[t][1])]
            a = np.array([hi[t][0] for t in tasks], np.int64)
            b = np.array([lo[t][0] for t in tasks], np.int64)
            differences[c] = paired_difference_ci(a, b)

    result = {
        "config": next(iter(configs.values())),
        "arms": {a: ARMS.get(a) for a in arms},
        "fault_classes": classes,
        "recover_phase": recover,
        "difference": {"high": HIGH_ARM, "low": LOW_ARM, "by_class": differences},
        "by_spike_bin": by_bin,
    }
    (out / SUMMARY_JSON).write_text(json.dumps(result, indent=2))
    _print(result, arms, SPIKE_BIN_LABELS, FAULT_CLASSES)
    return result


def _recover_phase(episodes: list[Any]) -> dict[str, float | None]:
    """Recover-phase tokens per episode and their mean temperature, sampling entropy and model
    entropy (nats): the manipulation check of the arms."""
    import numpy as np

    from agentropy.trace import PHASE_CODE

    code = PHASE_CODE["recover"]
    cols: dict[str, list[np.ndarray]] = {"temperature": [], "sampling_entropy": [], "entropy": []}
    for e in episodes:
        for t in e.assistant_turns:
            if t.phase is None:
                continue
            sel = t.phase == code
            for k in cols:
                v = getattr(t, k)
                if v is not None:
                    cols[k].append(np.asarray(v, np.float64)[sel])
    flat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}
    n = int(flat["entropy"].size)
    out: dict[str, float | None] = {"tokens_per_episode": n / len(episodes) if episodes else None}
    for k, v in flat.items():
        out[k] = float(v.mean()) if v.size else None
    return out


def _print(result: dict[str, Any], arms: list[str], bins: tuple[str, ...], fcs: tuple) -> None:
    from rich.console import Console
    from rich.table import Table

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.0f}%"

    def ci(c: list[float | None] | None, scale: float = 100.0) -> str:
        if not c or c[0] is None:
            return ""
        hi = "inf" if c[1] is None else f"{scale * c[1]:+.0f}"
        return f" [{scale * c[0]:+.0f}, {hi}]"

    def num(x: float | None, fmt: str = "{:.2f}") -> str:
        return "-" if x is None else fmt.format(x)

    console = Console(width=150)
    cfg = result["config"]
    t = Table(
        title=f"Recovery by arm and fault class (levels {cfg['levels']}, faults {cfg['faults']}, "
        f"seed {cfg['seed']}, {cfg['episodes']} tasks per level)",
        title_justify="left",
    )
    for col in ("arm", "policy", "fault class", "n (fired)", "recovery [95% CI]", "spike (n)",
                "tok/ep", "wall s/ep"):  # fmt: skip
        t.add_column(col, justify="left" if col in ("arm", "policy", "fault class") else "right")
    for arm in arms:
        for c in fcs:
            r = result["fault_classes"][arm][c]
            rci = r["recovery_ci"]
            rec = pct(r["recovery"]) + (f" [{100 * rci[0]:.0f},{100 * rci[1]:.0f}]" if rci else "")
            t.add_row(
                arm, result["arms"][arm], c, f"{r['episodes']} ({r['fired']})", rec,
                f"{num(r['spike_mean'])} ({r['spike_n']})", num(r["tokens_per_episode"], "{:.1f}"),
                num(r["latency_per_episode"]),
            )  # fmt: skip
    console.print(t)

    t = Table(title="Did the intervention take? Recover-phase tokens per arm", title_justify="left")
    for col in ("arm", "tokens/ep", "mean T", "sampling H (nats)", "model H (nats)"):
        t.add_column(col, justify="left" if col == "arm" else "right")
    for arm in arms:
        r = result["recover_phase"][arm]
        t.add_row(
            arm, num(r["tokens_per_episode"], "{:.1f}"), num(r["temperature"]),
            num(r["sampling_entropy"]), num(r["entropy"]),
        )  # fmt: skip
    console.print(t)

    diff = result["difference"]
    if diff["by_class"]:
        t = Table(
            title=f"The essay's '+22%': {diff['high']} minus {diff['low']} recovery, same tasks "
            "(paired percentile bootstrap over tasks, 95%)",
            title_justify="left",
        )
        for col in ("fault class", "tasks", diff["high"], diff["low"], "only high/only low",
                    "difference, points", "relative"):  # fmt: skip
            t.add_column(col, justify="left" if col == "fault class" else "right")
        for c, d in diff["by_class"].items():
            t.add_row(
                c, str(d["n"]), pct(d["rate_a"]), pct(d["rate_b"]), f"{d['a_only']}/{d['b_only']}",
                num(None if d["difference"] is None else 100 * d["difference"], "{:+.0f}")
                + ci(d["difference_ci"]),
                num(None if d["relative"] is None else 100 * d["relative"], "{:+.0f}%")
                + ci(d["relative_ci"]),
            )  # fmt: skip
        console.print(t)

    t = Table(
        title="Observational view: recovery by the spike bin of each episode's first failure",
        title_justify="left",
    )
    t.add_column("arm")
    for b in bins:
        t.add_column(b, justify="right")
    for arm in arms:
        cells = [result["by_spike_bin"][arm][b] for b in bins]
        t.add_row(arm, *(f"{pct(x['rate'])} ({x['n']})" for x in cells))
    console.print(t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run every arm with agentropy eval, then summarize")
    r.add_argument("--out", required=True)
    r.add_argument("--model", default=None, help="model directory (default: the shipped agent)")
    r.add_argument("--episodes", type=int, default=40, help="held-out tasks per level")
    r.add_argument("--levels", default="2,3")
    r.add_argument("--faults", default="all", choices=("seen", "novel", "all"))
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--jobs", type=int, default=2, help="arms run at once (one thread each)")
    r.add_argument("--batch-size", type=int, default=16)
    r.add_argument("--arms", default=",".join(ARMS), help=f"subset of {', '.join(ARMS)}")
    r.add_argument("--force", action="store_true", help="replace an earlier run's outputs")
    s = sub.add_parser("summarize", help="print and write the summary of a finished run")
    s.add_argument("out")
    args = p.parse_args()
    if args.cmd == "run":
        args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
        unknown = sorted(set(args.arms) - set(ARMS))
        if unknown:
            p.error(f"unknown arms {unknown}; choose from {', '.join(ARMS)}")
        run(args)
    else:
        summarize(Path(args.out))


if __name__ == "__main__":
    main()
