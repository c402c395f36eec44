"""The essay's claims, pre-registered, judged on the recovery-intervention experiment.

Each claim is a :class:`~agentropy.report.claim_rule.ClaimSpec` in :data:`SPECS`, written before
the data (null, direction, minimum effect that counts and why); :func:`intervention_claims` turns
the experiment's ``summary.json`` (:func:`agentropy.pipelines.intervention.summarize`) into one
:class:`~agentropy.report.claim_rule.Judgement` per row with the one rule
(:func:`~agentropy.report.claim_rule.judge`). The experiment runs the same agent on the same
held-out tasks and faults under several sampling arms, so every comparison below is **paired by
task** (whole tasks are resampled in the bootstrap), unless it says otherwise:

- ``recovery_high_vs_low`` (one row per fault class and ``any``): recovery of the high-spike arm
  (``phase``, recover T 1.2) minus the forced-low arm (recover T 0.1), points; the summary's
  paired difference (:func:`agentropy.analysis.recovery.paired_difference_ci`).
- ``spike_after_failure``: median spike ratio of each task's first failed call in the high-spike
  arm; bootstrap of the median over tasks. Caveat when more than
  :data:`~agentropy.analysis.summary.FLOOR_WARN_SHARE` of that arm's failed triggers have a
  baseline at the eps floor (the ratio is then mean entropy / eps).
- ``exploration_token_cost``: assistant tokens of the high-spike arm / the forced-low arm, summed
  over shared tasks (a ratio of sums, so long tasks weigh more, as they do in a token bill).
- ``response_time_unpredictable``: coefficient of variation of per-episode wall time, high-spike
  arm / forced-low arm, over shared tasks with a wall time in both.
- ``divergent_eruptions_loop``: share of divergent eruptions followed by a loop (one starting at
  or after the trigger) minus the share of contracted ones, every arm pooled; stratified
  bootstrap of the two rates (eruptions are not paired).
- ``phase_temperature``: success of ``phase`` minus ``constant`` (T = 1.0 everywhere) on the same
  tasks, points.

Where the summary lacks an arm, a class or any unit, the row is ``not measured`` with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from agentropy.analysis.recovery import (
    CONFIDENCE,
    N_BOOT,
    check_bootstrap,
    coefficient_of_variation,
    paired_difference_ci,
    percentile_interval,
    rate_draws,
)
from agentropy.analysis.summary import FLOOR_WARN_SHARE
from agentropy.report.claim_rule import ClaimSpec, Judgement, Measurement, judge
from agentropy.report.claims import format_ci, format_value

__all__ = [
    "EXPERIMENT_CONFIG",
    "SPECS",
    "claims_console_table",
    "intervention_claims",
]

#: The config that reproduces every row (``agentropy experiment --config``), from the repo root.
EXPERIMENT_CONFIG = "experiments/recovery_intervention.toml"

_ARMS_TEXT = "high-spike arm (recover T 1.2) vs forced-low arm (recover T 0.1), same tasks"

#: The claims, stated before the data; keyed by id, in the essay's order.
SPECS: dict[str, ClaimSpec] = {
    s.id: s
    for s in (
        ClaimSpec(
            id="recovery_high_vs_low",
            statement="A 3-4x entropy spike right after a failed API call goes with 22% higher "
            "recovery than agents forced into low entropy.",
            metric=f"recovery difference, points: {_ARMS_TEXT}",
            null=0.0,
            direction="greater",
            min_effect=0.10,
            rationale="the essay's +22% relative, on the 45-50% recovery the greedy agent "
            "reaches, is +10 to +11 points; less would not justify a hot recover phase.",
            experiment=EXPERIMENT_CONFIG,
            unit="pp",
            min_n=10,
        ),
        ClaimSpec(
            id="spike_after_failure",
            statement="Entropy spikes 3-4x right after a failed API call.",
            metric="median spike ratio at each task's first failed call, high-spike arm",
            null=1.0,
            direction="greater",
            min_effect=2.0,
            rationale="2x is DESIGN.md's eruption threshold: a smaller rise is not an eruption, "
            "let alone the essay's 3-4x.",
            experiment=EXPERIMENT_CONFIG,
            unit="x",
            min_n=10,
        ),
        ClaimSpec(
            id="exploration_token_cost",
            statement="Exploration costs up to +150% tokens.",
            metric=f"assistant tokens (sum over shared tasks) ratio, {_ARMS_TEXT}",
            null=1.0,
            direction="greater",
            min_effect=1.2,
            rationale="the essay's +150% is an upper bound; an overhead under +20% would not be "
            "worth the warning.",
            experiment=EXPERIMENT_CONFIG,
            unit="x",
            min_n=10,
        ),
        ClaimSpec(
            id="response_time_unpredictable",
            statement="Total response time becomes unpredictable.",
            metric=f"ratio of the coefficients of variation of episode wall time, {_ARMS_TEXT}",
            null=1.0,
            direction="greater",
            min_effect=1.25,
            rationale="a quarter more relative spread is the least that makes response time "
            "noticeably harder to budget for.",
            experiment=EXPERIMENT_CONFIG,
            unit="x",
            min_n=10,
        ),
        ClaimSpec(
            id="divergent_eruptions_loop",
            statement="Eruptions that do not contract end in hallucination loops.",
            metric="share of divergent eruptions followed by a loop minus the share of "
            "contracted ones, points (every arm pooled)",
            null=0.0,
            direction="greater",
            min_effect=0.10,
            rationale="10 points more loops after a divergent eruption is the least that would "
            "make a divergence guard worth its cost.",
            experiment=EXPERIMENT_CONFIG,
            unit="pp",
            min_n=5,
        ),
        ClaimSpec(
            id="phase_temperature",
            statement="Temperature should follow the task phase.",
            metric="success difference, points: phase controller (per-phase temperature) vs "
            "constant T 1.0 everywhere, same tasks",
            null=0.0,
            direction="greater",
            min_effect=0.05,
            rationale="below 5 points a per-phase controller is not worth its extra parameters "
            "over one temperature.",
            experiment=EXPERIMENT_CONFIG,
            unit="pp",
            min_n=10,
        ),
    )
}


def _interval(draws: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    lo, hi = percentile_interval(draws, confidence)
    return (lo, hi)


def _paired(
    stat: Callable[[np.ndarray], np.ndarray], n: int, rng: np.random.Generator, n_boot: int
) -> np.ndarray:
    """``stat`` of ``n_boot`` resamples of ``n`` paired units; ``stat`` maps an (m, n) index
    array to (m,) values. Chunked so memory stays near 2M cells at any ``n``."""
    chunk = max(1, 2_000_000 // max(n, 1))
    out = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        out.append(np.asarray(stat(idx), np.float64))
    return np.concatenate(out)


def _tasks(summary: Mapping[str, Any], arm: str) -> dict[str, Any] | None:
    return (summary.get("tasks") or {}).get(arm)


def _arms(summary: Mapping[str, Any], *roles: str) -> tuple[list[str], str]:
    """The arms behind ``roles`` (the summary's ``roles``: high, low, constant), and why they
    cannot be compared (empty when they can)."""
    mapping = summary.get("roles") or {}
    if any(r not in mapping for r in roles):
        return [], "the summary names no arms for the comparison (re-run summarize)"
    arms = [mapping[r] for r in roles]
    absent = [a for a in arms if _tasks(summary, a) is None]
    if absent:
        return arms, f"arm {', '.join(absent)} was not run (add it to the config's arms)"
    return arms, ""


def _paired_difference(d: Mapping[str, Any] | None, what: str) -> Measurement:
    if not d or not d.get("n"):
        return Measurement(missing=f"no {what}")
    ci = d.get("difference_ci")
    rel = d.get("relative")  # the essay's "+22%" is relative: shown, not judged
    return Measurement(
        value=d["difference"],
        ci=None if ci is None else (ci[0], ci[1]),
        n=int(d["n"]),
        detail=f"{d['n']} tasks; {d['rate_a']:.0%} vs {d['rate_b']:.0%}"
        + ("" if rel is None else f" (relative {rel:+.0%})")
        + f"; discordant {d['a_only']} / {d['b_only']}",
    )


def _recovery(summary: Mapping[str, Any]) -> list[tuple[str, Measurement]]:
    _, missing = _arms(summary, "high", "low")
    by_class = (summary.get("difference") or {}).get("by_class") or {}
    if missing or not by_class:
        return [("", Measurement(missing=missing or "the summary has no paired difference"))]
    faults = (summary.get("config") or {}).get("faults", "?")
    return [
        (c, _paired_difference(d, f"task planned a {c} fault (faults = {faults})"))
        for c, d in by_class.items()
    ]


def _spike(summary: Mapping[str, Any], rng: np.random.Generator, cfg: dict) -> Measurement:
    arms, missing = _arms(summary, "high")
    if missing:
        return Measurement(missing=missing)
    (high,) = arms
    tasks = _tasks(summary, high) or {}
    x = np.asarray([t["first_spike"] for t in tasks.values() if t["first_spike"] is not None])
    if x.size == 0:
        return Measurement(missing=f"no failed call with a spike ratio in the {high} arm")
    ci = None
    if x.size >= 2:
        draws = _paired(lambda idx: np.median(x[idx], axis=1), x.size, rng, cfg["n_boot"])
        ci = _interval(draws, cfg["confidence"])
    floor = (summary.get("baseline_floor") or {}).get(high) or {}
    caveat = ""
    if (floor.get("share") or 0.0) > FLOOR_WARN_SHARE:
        caveat = (
            f"{floor['at_floor']} of {floor['failed_triggers']} failed triggers "
            f"({floor['share']:.0%}) have a baseline at the eps floor ({floor['eps']:g} nats), so "
            "their ratios are mean entropy / eps and depend on eps."
        )
    return Measurement(
        value=float(np.median(x)), ci=ci, n=int(x.size),
        detail=f"{high}: {x.size} tasks with a failed call", caveat=caveat,
    )  # fmt: skip


def _shared(
    summary: Mapping[str, Any], arm_a: str, arm_b: str, key: str
) -> tuple[np.ndarray, np.ndarray]:
    """(n,) values of ``key`` of two arms on the tasks where both have one, in task order."""
    a, b = _tasks(summary, arm_a) or {}, _tasks(summary, arm_b) or {}
    shared = sorted(t for t in set(a) & set(b) if None not in (a[t][key], b[t][key]))
    return (
        np.asarray([a[t][key] for t in shared], np.float64),
        np.asarray([b[t][key] for t in shared], np.float64),
    )


def _ratio_measurement(
    summary: Mapping[str, Any],
    key: str,
    stat: Callable[[np.ndarray], np.ndarray],
    rng: np.random.Generator,
    cfg: dict,
    *,
    what: str,
    caveat: str = "",
) -> Measurement:
    """``stat(high) / stat(low)`` over shared tasks; ``stat`` reduces the last axis."""
    arms, missing = _arms(summary, "high", "low")
    if missing:
        return Measurement(missing=missing)
    a, b = _shared(summary, arms[0], arms[1], key)
    n = int(a.size)
    if n < 2:
        return Measurement(missing=f"{n} shared tasks with {what} in both arms (need 2)")

    def ratio(xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
        sa, sb = np.asarray(stat(xa), np.float64), np.asarray(stat(xb), np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(sb > 0, sa / np.where(sb > 0, sb, 1.0), np.inf)

    value = float(ratio(a, b))
    if not np.isfinite(value):
        return Measurement(missing=f"the {arms[1]} arm's {what} is zero: the ratio is undefined")
    draws = _paired(lambda idx: ratio(a[idx], b[idx]), n, rng, cfg["n_boot"])
    return Measurement(
        value=value, ci=_interval(draws, cfg["confidence"]), n=n,
        detail=f"{arms[0]} / {arms[1]}, {n} shared tasks", caveat=caveat,
    )  # fmt: skip


def _eruption_loops(summary: Mapping[str, Any], rng: np.random.Generator, cfg: dict) -> Measurement:
    pooled = {"divergent": [0, 0], "contracted": [0, 0]}
    arms = summary.get("eruption_loops") or {}
    for counts in arms.values():
        for g in pooled:
            pooled[g][0] += int(counts[g]["looped"])
            pooled[g][1] += int(counts[g]["n"])
    (kd, nd), (kc, nc) = pooled["divergent"], pooled["contracted"]
    if not arms or not nd or not nc:
        return Measurement(
            missing=f"no eruptions to compare (divergent {nd}, contracted {nc}, over "
            f"{len(arms)} arms)"
        )
    ci = None
    if nd >= 2 and nc >= 2:
        draws = rate_draws(kd, nd, rng, cfg["n_boot"]) - rate_draws(kc, nc, rng, cfg["n_boot"])
        ci = _interval(draws, cfg["confidence"])
    return Measurement(
        value=kd / nd - kc / nc, ci=ci, n=min(nd, nc),
        detail=f"looped after {kd}/{nd} divergent, {kc}/{nc} contracted eruptions",
    )  # fmt: skip


def _phase_vs_constant(summary: Mapping[str, Any], cfg: dict) -> Measurement:
    arms, missing = _arms(summary, "high", "constant")
    if missing:
        return Measurement(missing=missing)
    a, b = _shared(summary, arms[0], arms[1], "success")
    d = paired_difference_ci(
        a.astype(np.int64), b.astype(np.int64),
        confidence=cfg["confidence"], n_boot=cfg["n_boot"], seed=cfg["seed"],
    )  # fmt: skip
    return _paired_difference(d, f"shared task with an outcome in {arms[0]} and {arms[1]}")


def intervention_claims(
    summary: Mapping[str, Any],
    *,
    confidence: float = CONFIDENCE,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> list[Judgement]:
    """One judgement per row (module docstring), in :data:`SPECS` order; deterministic given
    ``seed``. The recovery rows take the summary's own paired intervals."""
    check_bootstrap(confidence, n_boot)
    cfg = {"confidence": confidence, "n_boot": n_boot, "seed": seed}

    def rng() -> np.random.Generator:  # one fresh stream per row: rows do not shift each other
        return np.random.default_rng(seed)

    rows = [judge(SPECS["recovery_high_vs_low"], m, scope=c) for c, m in _recovery(summary)]
    rows.append(judge(SPECS["spike_after_failure"], _spike(summary, rng(), cfg)))
    tokens = _ratio_measurement(
        summary, "tokens", lambda x: x.sum(axis=-1), rng(), cfg, what="tokens"
    )
    rows.append(judge(SPECS["exploration_token_cost"], tokens))
    latency = _ratio_measurement(
        summary, "latency_s", coefficient_of_variation, rng(), cfg, what="wall time",
        caveat="wall seconds compare only arms run under the same load (jobs at a time).",
    )  # fmt: skip
    rows.append(judge(SPECS["response_time_unpredictable"], latency))
    rows.append(judge(SPECS["divergent_eruptions_loop"], _eruption_loops(summary, rng(), cfg)))
    rows.append(judge(SPECS["phase_temperature"], _phase_vs_constant(summary, cfg)))
    return rows


def claims_console_table(judgements: Sequence[Judgement]) -> Any:
    """A rich table of the judgements (statement, minimum effect, measurement, verdict, reason)."""
    from rich.table import Table

    t = Table(
        title="Pre-registered claims (verdict: the CI against the minimum effect that counts)",
        title_justify="left",
    )
    for col in ("claim", "min effect", "measured [95% CI]", "n", "verdict", "reason"):
        t.add_column(col, justify="left", overflow="fold")
    for j in judgements:
        m, s = j.measurement, j.spec
        name = s.id + (f": {j.scope}" if j.scope else "")
        measured = (
            "-" if m.value is None else f"{format_value(m.value, s.unit)} {format_ci(m.ci, s.unit)}"
        )
        t.add_row(name, s.threshold, measured, str(m.n), j.verdict, j.reason)
    return t
