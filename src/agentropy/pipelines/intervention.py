"""Recovery as an intervention, not a correlation (issue 17, item 1).

The essay claims that a 3-4x entropy spike after a failed API call goes with 22% higher recovery
than agents forced into low entropy. Correlating spike size with recovery across episodes
(``agentropy analyze``'s by-spike-bin table) cannot separate cause from selection: the episodes
that spike may simply be the harder or the easier ones. Here the spike is *set*: the same agent
meets the same held-out tasks with the same injected faults (``agentropy eval`` with one
``--seed``: tasks and faults are a pure function of it), and the arms (:data:`ARMS`) differ in
how the agent samples after a failure:

- ``forced-low``: ``phase:recover=0.1``, the phase controller with a near-greedy recover phase
  and every other phase as in ``phase`` (so against ``phase`` only the recover phase differs;
  past ``recover_budget`` recover tokens both fall back to the plan temperature);
- ``phase``: the phase controller's defaults (recover 1.2: the high-spike arm);
- ``constant``: ``constant:1.0`` (every phase at 1.0: the usual sampling);
- ``edt``: entropy-based dynamic temperature with its defaults.

Per arm and fault class (seen-ambiguous, seen-informative, novel: ``agentropy.env.faults.
FAULT_CLASS``) the summary gives recovery with a 95% bootstrap interval (``eval.json``'s
``fault_classes``: the unit is the episode whose task plans a fault of the class), the mean
spike ratio at the first failure of the class, tokens and wall seconds per episode; and per arm a
check that the intervention took: recover-phase tokens per episode (if the agent writes no
recover text, the arms cannot differ) with their mean temperature, sampling entropy and model
entropy. The spike ratio is DESIGN.md's, of *model* entropy (T = 1): a recover temperature
changes it only through the text it makes the agent write, while the sampling entropy (what
the agent actually draws from) follows the temperature directly. The essay's "+22%" becomes
``phase`` minus ``forced-low`` recovery on the same tasks, in points and relative, with a
**paired percentile bootstrap** interval over tasks
(:func:`agentropy.analysis.recovery.paired_difference_ci`: whole task pairs are resampled, so
the pairing by task is kept). The observational view stays as a second table: recovery by the
spike bin of each episode's first failure, per arm.

For the pre-registered claims (:mod:`agentropy.report.intervention_claims`) the summary also
keeps, per arm, one record per task (success, assistant tokens, wall seconds, planned fault
classes, spike ratio of the first failure), the analyzer's baseline-floor count, and how often
divergent and contracted eruptions are followed by a loop.

Each arm runs as its own ``agentropy eval`` process (``jobs`` at a time, one thread each); wall
seconds per episode are only comparable between arms run under the same load.

Run from a config (``experiments/recovery_intervention.toml``)::

    AGENTROPY_HOME=/tmp/home agentropy experiment --config experiments/recovery_intervention.toml

or with ``python experiments/recovery_intervention.py run|summarize`` (the same code).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentropy.errors import InputError, read_toml

__all__ = [
    "ARMS",
    "CONSTANT_ARM",
    "FAULT_SETS",
    "HIGH_ARM",
    "KIND",
    "LOW_ARM",
    "ROLES",
    "SUMMARY_JSON",
    "InterventionConfig",
    "load_summary",
    "render_tables",
    "run_intervention",
    "summarize",
]

#: Arm name -> sampling policy (``agentropy.control.temperature.schedule_from_name``).
ARMS: dict[str, str] = {
    "forced-low": "phase:recover=0.1",
    "phase": "phase",
    "constant": "constant:1.0",
    "edt": "edt",
}
#: The essay's comparison: high-spike arm minus forced-low arm.
HIGH_ARM, LOW_ARM = "phase", "forced-low"
#: The global-constant temperature arm the phase controller is compared with.
CONSTANT_ARM = "constant"
#: The arm behind each role the claims compare (written into the summary as ``roles``, so the
#: claims read the arms from the data instead of importing this module).
ROLES: dict[str, str] = {"high": HIGH_ARM, "low": LOW_ARM, "constant": CONSTANT_ARM}
#: ``kind`` of an ``agentropy experiment --config`` file that runs this experiment.
KIND = "recovery_intervention"
#: The summary :func:`summarize` writes into the output folder.
SUMMARY_JSON = "summary.json"
#: Values of ``agentropy eval --faults``.
FAULT_SETS: tuple[str, ...] = ("seen", "novel", "all")


@dataclass(frozen=True)
class InterventionConfig:
    """One run of the intervention (also the schema of its TOML config, plus ``kind``)."""

    out: str = "runs/recovery-intervention"
    """Folder: one ``<arm>/`` folder per arm (``eval.json``, traces, log) and ``summary.json``."""
    episodes: int = 40
    """Held-out tasks per level (the same tasks and faults in every arm)."""
    levels: tuple[int, ...] = (2, 3)
    """Task levels (faults are injected at L2 and L3)."""
    faults: str = "all"
    """Fault set: ``seen``, ``novel`` or ``all``."""
    seed: int = 0
    """Task, fault and sampling seed, shared by the arms."""
    arms: tuple[str, ...] = tuple(ARMS)
    """Arms to run (keys of :data:`ARMS`)."""
    jobs: int = 2
    """Arms run at once, one thread each."""
    batch_size: int = 16
    """Episodes sampled together by each eval process."""
    model: str | None = None
    """Model directory (None: the shipped agent)."""
    force: bool = False
    """Replace an earlier run's arm outputs."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.arms) - set(ARMS))
        if unknown or not self.arms:
            raise ValueError(f"arms must be a non-empty subset of {list(ARMS)}, got {self.arms}")
        if self.faults not in FAULT_SETS:
            raise ValueError(f"faults must be one of {FAULT_SETS}, got {self.faults!r}")
        for name in ("episodes", "jobs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not self.levels or any(not isinstance(lv, int) or lv < 0 for lv in self.levels):
            raise ValueError(f"levels must be non-negative integers, got {self.levels!r}")

    @classmethod
    def from_toml(cls, path: str | Path) -> InterventionConfig:
        """Read a config file whose ``kind`` is :data:`KIND`; unknown keys are an error."""
        p = Path(path)
        data = read_toml(p)
        kind = data.pop("kind", None)
        if kind != KIND:
            raise InputError(f"expected kind = {KIND!r}, got {kind!r}", path=p, field="kind")
        names = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in names:
                raise InputError(f"unknown key; expected one of {sorted(names)}", path=p, field=key)
        for key in ("levels", "arms"):
            if key in data:
                if not isinstance(data[key], list):
                    raise InputError("must be a list", path=p, field=key)
                data[key] = tuple(data[key])
        try:
            return cls(**data)
        except (TypeError, ValueError) as err:
            raise InputError(str(err), path=p) from None


def run_intervention(
    config: InterventionConfig, *, console: Any = None, config_file: str | None = None
) -> dict[str, Any]:
    """One ``agentropy eval`` process per arm, ``config.jobs`` at a time, then :func:`summarize`.

    Returns the summary (also written to ``<out>/summary.json``, with ``config_file`` recorded);
    ``console`` (rich) gets progress lines and the tables.
    """
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    say = console.print if console is not None else (lambda *_: None)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    pending = list(config.arms)
    running: dict[str, tuple[subprocess.Popen[bytes], Any, float]] = {}
    failed = []
    while pending or running:
        while pending and len(running) < config.jobs:
            arm = pending.pop(0)
            cmd = [
                sys.executable, "-m", "agentropy", "eval",
                "--policies", ARMS[arm], "--levels", ",".join(map(str, config.levels)),
                "--episodes", str(config.episodes), "--seed", str(config.seed),
                "--faults", config.faults, "--batch-size", str(config.batch_size),
                "--out", str(out / arm), "--no-progress",
            ]  # fmt: skip
            if config.model:
                cmd += ["--model", config.model]
            if config.force:
                cmd.append("--force")
            (out / arm).mkdir(exist_ok=True)
            log = open(out / arm / "eval.log", "wb")  # noqa: SIM115 (closed when the arm ends)
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            running[arm] = (proc, log, time.perf_counter())
            say(f"started {arm} ({ARMS[arm]}): pid {proc.pid}")
        time.sleep(1.0)
        for arm, (proc, log, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[arm]
            log.close()
            say(f"finished {arm}: exit {proc.returncode}, {time.perf_counter() - t0:.0f} s")
            if proc.returncode != 0:
                failed.append(arm)
    if failed:
        raise RuntimeError(f"arms failed: {', '.join(failed)} (see {out}/<arm>/eval.log)")
    result = summarize(out, list(config.arms), config_file=config_file)
    if console is not None:
        for table in render_tables(result):
            console.print(table)
    return result


def _arm_data(out: Path, arm: str) -> tuple[dict[str, Any], list[Any]]:
    from agentropy.trace import read_traces

    data = json.loads((out / arm / "eval.json").read_text())
    policy = data["config"]["policies"][0]
    path = Path(data["traces"][policy])
    if not path.exists():  # eval.json keeps the path as given; the folder may have moved since
        path = out / arm / "traces" / path.name
    return data, read_traces([path])


def _arm_records(episodes: list[Any]) -> dict[str, Any]:
    """One analyzer pass over an arm's episodes: what the summary and the claims keep."""
    import numpy as np

    from agentropy.analysis.summary import AnalyzeConfig, Analyzer
    from agentropy.env.faults import FAULT_CLASS

    analyzer = Analyzer(AnalyzeConfig())
    if episodes:
        analyzer.add_episodes(episodes)
    summ, ev = analyzer.summary(), analyzer.evidence()
    classes = {
        e.episode_id: sorted(
            {FAULT_CLASS[f["kind"]] for f in e.meta.get("faults", []) if f["kind"] in FAULT_CLASS}
        )
        for e in episodes
    }
    first_spike: dict[int, float] = {}
    for i, s in zip(ev.failed_trigger_episode, ev.failed_trigger_spike, strict=True):
        if s is not None and i not in first_spike:
            first_spike[i] = float(s)
    tasks: dict[str, dict[str, Any]] = {}
    for i, (eid, task) in enumerate(zip(ev.episode_id, ev.task_id, strict=True)):
        lat = float(ev.latency_s[i])
        tasks[str(task if task is not None else eid)] = {
            "success": None if ev.success[i] < 0 else bool(ev.success[i]),
            "tokens": int(ev.tokens[i]),
            "latency_s": lat if np.isfinite(lat) else None,
            "classes": classes.get(eid, []),
            "first_spike": first_spike.get(i),
        }
    # Eruptions followed by a loop (one starting at or after the eruption's trigger).
    loop_turns: dict[str, list[int]] = {}
    for lp in summ.get("loops") or []:
        loop_turns.setdefault(lp["episode_id"], []).append(int(lp["turn_index"]))
    outcome = {"divergent": {"looped": 0, "n": 0}, "contracted": {"looped": 0, "n": 0}}
    for er in summ.get("eruptions") or []:
        group = outcome["divergent" if er["kind"] == "divergent" else "contracted"]
        group["n"] += 1
        group["looped"] += any(t >= er["turn_index"] for t in loop_turns.get(er["episode_id"], []))
    return {
        "tasks": tasks,
        "by_spike_bin": summ["recovery"]["by_spike_bin"],
        "baseline_floor": summ.get("baseline_floor"),
        "eruption_loops": outcome,
    }


def summarize(
    out: str | Path, arms: Sequence[str] | None = None, *, config_file: str | None = None
) -> dict[str, Any]:
    """Read every arm's eval.json and traces; write and return ``<out>/summary.json``.

    ``config_file``: the config that ran the experiment, recorded in the summary.
    """
    import numpy as np

    from agentropy.analysis.recovery import paired_difference_ci
    from agentropy.env.faults import FAULT_CLASSES
    from agentropy.outputs import atomic_write_text

    out = Path(out)
    arms = [a for a in (arms or list(ARMS)) if (out / a / "eval.json").exists()]
    if not arms:
        raise InputError(f"no <arm>/eval.json for any of the arms {list(ARMS)}", path=out)
    configs, classes, records, recover = {}, {}, {}, {}
    for arm in arms:
        data, episodes = _arm_data(out, arm)
        # Everything but the policy (and the reference, which is the arm's own policy) must match.
        configs[arm] = {
            k: v for k, v in data["config"].items() if k not in ("policies", "reference")
        }
        classes[arm] = {r["fault_class"]: r for r in data["fault_classes"]}
        records[arm] = _arm_records(episodes)
        recover[arm] = _recover_phase(episodes)
    if len({json.dumps(c, sort_keys=True) for c in configs.values()}) > 1:
        raise InputError(f"arms were not run on the same tasks and faults: {configs}", path=out)

    differences: dict[str, Any] = {}
    if HIGH_ARM in records and LOW_ARM in records:
        hi, lo = records[HIGH_ARM]["tasks"], records[LOW_ARM]["tasks"]
        shared = sorted(
            t for t in set(hi) & set(lo) if None not in (hi[t]["success"], lo[t]["success"])
        )
        for c in (*FAULT_CLASSES, "any"):  # any: tasks planning a fault of some class
            tasks = [
                t for t in shared if (hi[t]["classes"] if c == "any" else c in hi[t]["classes"])
            ]
            a = np.array([hi[t]["success"] for t in tasks], np.int64)
            b = np.array([lo[t]["success"] for t in tasks], np.int64)
            differences[c] = paired_difference_ci(a, b)

    result = {
        "config": next(iter(configs.values())),
        "config_file": config_file,
        "arms": {a: ARMS.get(a) for a in arms},
        "roles": ROLES,
        "fault_classes": classes,
        "recover_phase": recover,
        "difference": {"high": HIGH_ARM, "low": LOW_ARM, "by_class": differences},
        "by_spike_bin": {a: r["by_spike_bin"] for a, r in records.items()},
        "baseline_floor": {a: r["baseline_floor"] for a, r in records.items()},
        "eruption_loops": {a: r["eruption_loops"] for a, r in records.items()},
        "tasks": {a: r["tasks"] for a, r in records.items()},
    }
    # Derived from the arms alone, so a later summary of the same arms replaces it.
    atomic_write_text(
        out / SUMMARY_JSON, json.dumps(_json_safe(result), indent=2) + "\n", force=True
    )
    return result


def load_summary(path: str | Path) -> dict[str, Any]:
    """A summary written by :func:`summarize`, from ``summary.json`` or the folder holding it."""
    p = Path(path)
    if p.is_dir():
        p = p / SUMMARY_JSON
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise InputError("no such file (run the recovery intervention first)", path=p) from None
    except json.JSONDecodeError as err:
        raise InputError(f"not valid JSON: {err.msg}", path=p, line=err.lineno) from None
    if not isinstance(data, dict) or not isinstance(data.get("arms"), dict):
        raise InputError("not a recovery-intervention summary (no 'arms')", path=p)
    return data


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


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


def render_tables(result: Mapping[str, Any]) -> list[Any]:
    """Rich tables of a summary: recovery by arm and class, the manipulation check, the paired
    difference, and the observational by-spike-bin view."""
    from rich.table import Table

    from agentropy.analysis.recovery import SPIKE_BIN_LABELS
    from agentropy.env.faults import FAULT_CLASSES

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.0f}%"

    def ci(c: list[float | None] | None, scale: float = 100.0) -> str:
        if not c or c[0] is None:
            return ""
        hi = "inf" if c[1] is None else f"{scale * c[1]:+.0f}"
        return f" [{scale * c[0]:+.0f}, {hi}]"

    def num(x: float | None, fmt: str = "{:.2f}") -> str:
        return "-" if x is None else fmt.format(x)

    arms = list(result["arms"])
    cfg = result["config"]
    tables = []
    t = Table(
        title=f"Recovery by arm and fault class (levels {cfg['levels']}, faults {cfg['faults']}, "
        f"seed {cfg['seed']}, {cfg['episodes']} tasks per level)",
        title_justify="left",
    )
    for col in ("arm", "policy", "fault class", "n (fired)", "recovery [95% CI]", "spike (n)",
                "tok/ep", "wall s/ep"):  # fmt: skip
        t.add_column(col, justify="left" if col in ("arm", "policy", "fault class") else "right")
    for arm in arms:
        for c in FAULT_CLASSES:
            r = result["fault_classes"][arm].get(c)
            if r is None:  # an eval.json from before fault classes existed
                continue
            rci = r["recovery_ci"]
            rec = pct(r["recovery"]) + (f" [{100 * rci[0]:.0f},{100 * rci[1]:.0f}]" if rci else "")
            t.add_row(
                arm, result["arms"][arm], c, f"{r['episodes']} ({r['fired']})", rec,
                f"{num(r['spike_mean'])} ({r['spike_n']})", num(r["tokens_per_episode"], "{:.1f}"),
                num(r["latency_per_episode"]),
            )  # fmt: skip
    tables.append(t)

    t = Table(title="Did the intervention take? Recover-phase tokens per arm", title_justify="left")
    for col in ("arm", "tokens/ep", "mean T", "sampling H (nats)", "model H (nats)"):
        t.add_column(col, justify="left" if col == "arm" else "right")
    for arm in arms:
        r = result["recover_phase"][arm]
        t.add_row(
            arm, num(r["tokens_per_episode"], "{:.1f}"), num(r["temperature"]),
            num(r["sampling_entropy"]), num(r["entropy"]),
        )  # fmt: skip
    tables.append(t)

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
        tables.append(t)

    t = Table(
        title="Observational view: recovery by the spike bin of each episode's first failure",
        title_justify="left",
    )
    t.add_column("arm")
    for b in SPIKE_BIN_LABELS:
        t.add_column(b, justify="right")
    for arm in arms:
        cells = [result["by_spike_bin"][arm][b] for b in SPIKE_BIN_LABELS]
        t.add_row(arm, *(f"{pct(x['rate'])} ({x['n']})" for x in cells))
    tables.append(t)
    return tables
