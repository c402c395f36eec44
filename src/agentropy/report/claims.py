"""The essay's claims as testable hypotheses, each with our measurement, a CI and a rule verdict.

Every row of the claims table is computed, never written by hand: a measurement, its 95 %
percentile-bootstrap confidence interval (seeded, so the table is deterministic), the number of
units ``n`` behind it, and a verdict from the one pre-registered rule shared with every claims
table (:func:`agentropy.report.claim_rule.judge`): each claim states its null, its direction and
the **minimum effect that counts**, and is

- **supported** only if the whole CI lies beyond the minimum effect;
- **refuted** if the whole CI falls short of it (a smaller or opposite effect; a tiny effect with
  a tight CI is refuted, not supported);
- **inconclusive** if the CI contains it, there is no CI, or fewer units than the claim's
  minimum ``n``;
- **not measured** when the traces give no value (an empty group, an undefined ratio).

A missing CI bound (an infinite bootstrap quantile, e.g. a ratio whose denominator can be drawn as
zero) counts as unbounded on that side.

The claims (null value, minimum effect, minimum ``n``; every claim predicts a value above its
null; definitions of spike ratio, eruption, contraction and loop are DESIGN.md's, computed by
:mod:`agentropy.analysis`):

1. ``spike_after_failure`` -- entropy spikes after failed tool calls. Unit: failed (``error`` /
   ``unexpected``) trigger with a spike ratio. Measurement: median spike ratio; CI: bootstrap of
   the median. Null 1.0 (no spike), minimum effect 2.0 (the eruption threshold); min n 10.
2. ``spike_3_4_recovery`` -- a 3-4x spike recovers more often than a forced-low (< 1.5x) one
   (essay: +22 %). Measurement: the analyzer's episode-level
   ``recovery.relative_3_4_vs_lt_1_5`` (``(rate_3_4 - rate_lt_1_5) / rate_lt_1_5``, stratified
   bootstrap). Null 0, minimum effect +10 %; min n 5 episodes in each bin.
3. ``exploration_token_cost`` -- exploration costs tokens (essay: up to +150 %). Measurement:
   token overhead of the exploring policy vs the reference on the tasks both ran (per-task mean
   tokens, summed, ratio minus 1; the analyzer's ``costs`` definition); CI: paired bootstrap over
   shared tasks. Null 0, minimum effect +20 %; min n 10 shared tasks. The exploring policy's
   share of tokens in the ``recover`` phase is reported alongside.
4. ``exploration_latency_variance`` -- exploration makes latency less predictable. Measurement:
   coefficient of variation (sample std / mean) of episode latency of the exploring policy minus
   the reference's; CI: bootstrap within each policy. Null 0, minimum effect +0.10; min n 10
   episodes per policy.
5. ``divergent_eruptions_fail`` -- eruptions that never contract end in loops or failure more
   often. Unit: eruption whose episode outcome is known. Bad outcome: the episode did not
   succeed, or a loop starts at or after the eruption's trigger. Measurement: bad rate of
   divergent eruptions minus bad rate of contracted (productive + neutral) ones; CI: stratified
   bootstrap. Null 0, minimum effect +10 points; min n 5 per group.
6. ``phase_beats_constant`` -- phase-aware temperature beats a global constant. Measurement:
   success of ``phase`` minus success of ``constant:1.0`` pooled over the levels both ran (eval
   rows); CI: bootstrap stratified by level and policy. Null 0, minimum effect +5 points; min n 20
   episodes per policy.
7. ``level_drop`` -- success falls from L0/L1 to L3 by more than 30 % (the essay's GAIA
   motivation). Measurement: relative drop ``1 - success(L3) / success(L0 + L1)`` of the reference
   policy (eval rows); CI: stratified bootstrap. Null 0 (no drop), minimum effect 0.30 (the claim);
   min n 20 episodes at L0 + L1 and at L3.

Per-episode inputs that the analyzer summary does not carry (failed-trigger spike ratios, episode
outcomes, per-episode tokens and latency) come from the same analyzer pass:
:meth:`agentropy.analysis.summary.Analyzer.evidence` returns them as an :class:`Evidence`, so the
claims never analyse the traces a second time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agentropy.analysis.recovery import (
    CONFIDENCE,
    CONSTANT_POLICY,
    EXPLORE_POLICY,
    N_BOOT,
    REFERENCE_POLICY,
    check_bootstrap,
    coefficient_of_variation,
    per_task_mean,
    percentile_interval,
    rate_draws,
)
from agentropy.analysis.summary import Evidence
from agentropy.report.claim_rule import (
    UNITS,
    VERDICTS,
    ClaimSpec,
    Measurement,
    Verdict,
    format_ci,
    format_value,
    judge,
)

__all__ = [
    "CLAIM_SPECS",
    "UNITS",
    "VERDICTS",
    "ClaimRow",
    "ClaimsConfig",
    "Verdict",
    "claim_divergent_eruptions_fail",
    "claim_exploration_latency_variance",
    "claim_exploration_token_cost",
    "claim_level_drop",
    "claim_phase_beats_constant",
    "claim_spike_3_4_recovery",
    "claim_spike_after_failure",
    "claims_table",
    "format_ci",
    "format_value",
]


@dataclass(frozen=True, slots=True)
class ClaimRow:
    """One row of the claims table."""

    key: str
    """Stable identifier, e.g. ``spike_after_failure``."""
    claim: str
    """The essay's claim, phrased as a testable hypothesis."""
    essay: str
    """The figure the essay gives (or ``-``)."""
    measurement: float | None
    """Our estimate (None: not measurable on this data)."""
    ci: tuple[float | None, float | None] | None
    """95 % bootstrap interval of the measurement (None: no interval)."""
    n: int
    """Units behind the measurement (the smallest group for comparisons)."""
    n_detail: str
    """Units per group, e.g. ``divergent 12, contracted 30``."""
    verdict: Verdict
    """From :func:`agentropy.report.claim_rule.judge`, never by hand."""
    rule: str
    """Null, minimum effect and minimum n, in words."""
    unit: str = "x"
    """How to display the measurement: ``x`` (ratio), ``%`` (relative change), ``pp``
    (difference of rates, percentage points) or ``num`` (signed plain number)."""
    note: str = ""
    """Extra context (e.g. the recover-phase token share), or why the row is not measured."""
    reason: str = ""
    """Why the rule gave this verdict, with the numbers."""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {self.unit!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view."""
        return {
            "key": self.key,
            "claim": self.claim,
            "essay": self.essay,
            "measurement": self.measurement,
            "ci": None if self.ci is None else list(self.ci),
            "n": self.n,
            "n_detail": self.n_detail,
            "verdict": self.verdict,
            "rule": self.rule,
            "unit": self.unit,
            "note": self.note,
            "reason": self.reason,
        }


# --------------------------------------------------------------------------------------------
# Bootstrap helpers (percentile intervals, seeded)
# --------------------------------------------------------------------------------------------


def _interval(draws: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    lo, hi = percentile_interval(draws, confidence)
    return (lo, hi)


def _boot(
    stat: Any, n: int, rng: np.random.Generator, n_boot: int, max_cells: int = 2_000_000
) -> np.ndarray:
    """``stat(idx)`` over ``n_boot`` resamples of ``n`` indices, in chunks of bounded memory.

    ``stat`` maps an ``(m, n)`` int array of resampled indices to ``(m,)`` values.
    """
    chunk = max(1, max_cells // max(n, 1))
    out = []
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        out.append(np.asarray(stat(rng.integers(0, n, size=(m, n))), np.float64))
    return np.concatenate(out)


@dataclass(frozen=True, slots=True)
class ClaimsConfig:
    """Which policies the comparisons use, and the bootstrap settings."""

    explore_policy: str = EXPLORE_POLICY
    """Policy whose exploration costs are measured (claims 3, 4) and that claim 6 tests."""
    reference_policy: str = REFERENCE_POLICY
    """Baseline of claims 3, 4 and the policy claim 7 is measured on."""
    constant_policy: str = CONSTANT_POLICY
    """The global-constant temperature claim 6 compares against."""
    confidence: float = CONFIDENCE
    """Confidence level of the intervals."""
    n_boot: int = N_BOOT
    """Bootstrap resamples."""
    seed: int = 0
    """Bootstrap seed (the table is deterministic given the inputs)."""

    def __post_init__(self) -> None:
        check_bootstrap(self.confidence, self.n_boot)


#: Per claim key: the essay's figure, the null value, the minimum effect that counts, the
#: minimum n and what it counts, the display unit and why the minimum effect is where it is.
#: Every claim predicts a measurement above its null (``direction="greater"``).
_CLAIMS: dict[str, tuple[str, float, float, int, str, str, str]] = {
    "spike_after_failure": ("spike after failure", 1.0, 2.0, 10, "failed triggers", "x",
                            "2x is DESIGN.md's eruption threshold"),
    "spike_3_4_recovery": ("+22%", 0.0, 0.10, 5, "episodes per bin", "%",
                           "under +10% relative the spike would not be worth having"),
    "exploration_token_cost": ("up to +150%", 0.0, 0.20, 10, "shared tasks", "%",
                               "an overhead under +20% would not be worth the warning"),
    "exploration_latency_variance": ("higher variance", 0.0, 0.10, 10, "episodes per policy",
                                     "num", "+0.10 CV is a quarter more spread at CV 0.4"),
    "divergent_eruptions_fail": ("-", 0.0, 0.10, 5, "eruptions per group", "pp",
                                 "10 points is the least that makes a divergence guard pay"),
    "phase_beats_constant": ("phase > constant", 0.0, 0.05, 20, "episodes per policy", "pp",
                             "under 5 points one temperature does as well"),
    "level_drop": ("GAIA: 30.3% (L1) -> 0% (L3)", 0.0, 0.30, 20, "episodes at L0+L1 and at L3",
                   "%", "the claim itself: a drop of more than 30%"),
}  # fmt: skip


def _spec(key: str) -> ClaimSpec:
    essay, null, min_effect, min_n, _, unit, why = _CLAIMS[key]
    return ClaimSpec(
        id=key, statement=f"essay: {essay}", metric=key, null=null, direction="greater",
        min_effect=min_effect, rationale=why, experiment="(the traces and eval rows given)",
        unit=unit, min_n=min_n,
    )  # fmt: skip


#: The pre-registered spec of each claim of this table (the rows phrase the hypothesis).
CLAIM_SPECS: dict[str, ClaimSpec] = {k: _spec(k) for k in _CLAIMS}


def _row(
    key: str,
    claim: str,
    *,
    measurement: float | None,
    ci: tuple[float | None, float | None] | None,
    n: int,
    n_detail: str,
    note: str = "",
) -> ClaimRow:
    """The row of claim ``key``: essay figure, unit and verdict from :data:`CLAIM_SPECS`."""
    essay, _, _, min_n, per, unit, _ = _CLAIMS[key]
    spec = CLAIM_SPECS[key]
    finite = measurement is not None and np.isfinite(measurement)
    m = Measurement(
        value=float(measurement) if finite else None,  # type: ignore[arg-type]
        ci=ci, n=n, missing="" if finite else (note or "no value on these traces"),
    )  # fmt: skip
    j = judge(spec, m)
    return ClaimRow(
        key=key,
        claim=claim,
        essay=essay,
        measurement=measurement,
        ci=ci,
        n=n,
        n_detail=n_detail,
        verdict=j.verdict,
        rule=f"null {format_value(spec.null, unit)}; supported if the CI lies beyond "
        f"{spec.threshold}; min n {min_n} {per}",
        unit=unit,
        note=note,
        reason=j.reason,
    )


# --------------------------------------------------------------------------------------------
# The claims
# --------------------------------------------------------------------------------------------


def claim_spike_after_failure(ev: Evidence, cfg: ClaimsConfig) -> ClaimRow:
    """Claim 1: median spike ratio of failed triggers, vs 1.0."""
    x = np.asarray(ev.failed_spikes, np.float64)
    n = int(x.size)
    med: float | None = float(np.median(x)) if n else None
    ci = None
    if n >= 2:
        rng = np.random.default_rng(cfg.seed)
        draws = _boot(lambda idx: np.median(x[idx], axis=1), n, rng, cfg.n_boot)
        ci = _interval(draws, cfg.confidence)
    return _row(
        "spike_after_failure",
        "Entropy spikes after failed tool calls (median spike ratio of failed triggers > 1)",
        measurement=med,
        ci=ci,
        n=n,
        n_detail=f"{n} failed triggers",
    )


def claim_spike_3_4_recovery(summary: Mapping[str, Any]) -> ClaimRow:
    """Claim 2: relative recovery of 3-4x vs < 1.5x spikes (the analyzer's estimate and CI)."""
    rel = (summary.get("recovery") or {}).get("relative_3_4_vs_lt_1_5") or {}
    n_a, n_b = int(rel.get("n_a") or 0), int(rel.get("n_b") or 0)
    ci_raw = rel.get("ci")
    ci = None if ci_raw is None else (ci_raw[0], ci_raw[1])
    n = min(n_a, n_b)
    note = "" if rel.get("value") is not None else "undefined: empty bin or zero recovery at <1.5x"
    return _row(
        "spike_3_4_recovery",
        "A 3-4x spike after a failure recovers more often than a forced-low (<1.5x) one",
        measurement=rel.get("value"),
        ci=ci,
        n=n,
        n_detail=f"3-4x: {n_a}, <1.5x: {n_b} episodes",
        note=note,
    )


def _policy_mask(ev: Evidence, name: str) -> np.ndarray:
    return np.asarray([p == name for p in ev.policy], bool)


def claim_exploration_token_cost(ev: Evidence, cfg: ClaimsConfig) -> ClaimRow:
    """Claim 3: token overhead of the exploring policy vs the reference on shared tasks."""
    explore, ref = cfg.explore_policy, cfg.reference_policy

    mine = per_task_mean(ev.policy, ev.task_id, ev.tokens, explore)
    base = per_task_mean(ev.policy, ev.task_id, ev.tokens, ref)
    shared = sorted(set(mine) & set(base))
    n = len(shared)
    value = ci = None
    if n:
        a = np.asarray([mine[t] for t in shared])
        b = np.asarray([base[t] for t in shared])
        if b.sum() > 0:
            value = float(a.sum() / b.sum() - 1.0)
        if n >= 2:
            rng = np.random.default_rng(cfg.seed)

            def overhead(idx: np.ndarray) -> np.ndarray:
                den = b[idx].sum(axis=1)
                safe = np.where(den > 0, den, 1.0)
                return np.where(den > 0, a[idx].sum(axis=1) / safe - 1.0, np.inf)

            ci = _interval(_boot(overhead, n, rng, cfg.n_boot), cfg.confidence)
    sel = _policy_mask(ev, explore)
    phased = int(np.asarray(ev.phased_tokens)[sel].sum()) if sel.any() else 0
    recover = int(np.asarray(ev.recover_tokens)[sel].sum()) if sel.any() else 0
    note = f"{explore}: {recover / phased:.1%} of tokens in recover" if phased else ""
    return _row(
        "exploration_token_cost",
        f"Exploration costs tokens: {explore} uses more tokens per episode than {ref}",
        measurement=value,
        ci=ci,
        n=n,
        n_detail=f"{n} shared tasks",
        note=note,
    )


def claim_exploration_latency_variance(ev: Evidence, cfg: ClaimsConfig) -> ClaimRow:
    """Claim 4: latency CV of the exploring policy minus the reference's."""
    lat = np.asarray(ev.latency_s, np.float64)
    groups = []
    for name in (cfg.explore_policy, cfg.reference_policy):
        v = lat[_policy_mask(ev, name)] if lat.size else np.zeros(0)
        groups.append(v[np.isfinite(v)])
    a, b = groups
    n = int(min(a.size, b.size))
    value = ci = None
    if a.size >= 2 and b.size >= 2:
        value = float(coefficient_of_variation(a) - coefficient_of_variation(b))
        rng = np.random.default_rng(cfg.seed)
        da = _boot(lambda idx: coefficient_of_variation(a[idx], axis=1), a.size, rng, cfg.n_boot)
        db = _boot(lambda idx: coefficient_of_variation(b[idx], axis=1), b.size, rng, cfg.n_boot)
        ci = _interval(da - db, cfg.confidence)
        if not np.isfinite(value):
            value = None
    return _row(
        "exploration_latency_variance",
        f"Exploration makes latency less predictable: latency CV of {cfg.explore_policy} "
        f"exceeds {cfg.reference_policy}'s",
        measurement=value,
        ci=ci,
        n=n,
        n_detail=f"{cfg.explore_policy}: {a.size}, {cfg.reference_policy}: {b.size} episodes",
        note="measurement: difference of coefficients of variation",
    )


def claim_divergent_eruptions_fail(
    summary: Mapping[str, Any], ev: Evidence, cfg: ClaimsConfig
) -> ClaimRow:
    """Claim 5: bad-outcome rate of divergent minus contracted eruptions."""
    success = dict(zip(ev.episode_id, ev.success, strict=True))
    loop_turns: dict[str, list[int]] = {}
    for lp in summary.get("loops") or []:
        loop_turns.setdefault(lp["episode_id"], []).append(int(lp["turn_index"]))
    counts = {"divergent": [0, 0], "contracted": [0, 0]}  # [bad, n]
    for er in summary.get("eruptions") or []:
        eid = er["episode_id"]
        looped = any(t >= er["turn_index"] for t in loop_turns.get(eid, []))
        s = success.get(eid, -1)
        if s == -1 and not looped:
            continue  # outcome unknown
        bad = looped or s == 0
        group = "divergent" if er["kind"] == "divergent" else "contracted"
        counts[group][0] += int(bad)
        counts[group][1] += 1
    (kd, nd), (kc, nc) = counts["divergent"], counts["contracted"]
    n = min(nd, nc)
    value = ci = None
    if nd and nc:
        value = kd / nd - kc / nc
        if nd >= 2 and nc >= 2:
            rng = np.random.default_rng(cfg.seed)
            draws = rate_draws(kd, nd, rng, cfg.n_boot) - rate_draws(kc, nc, rng, cfg.n_boot)
            ci = _interval(draws, cfg.confidence)
    return _row(
        "divergent_eruptions_fail",
        "Eruptions without contraction end in loops or failure more often than contracted ones",
        measurement=value,
        ci=ci,
        n=n,
        n_detail=f"divergent: {nd}, contracted: {nc} eruptions",
        note="measurement: difference in failure-or-loop rate",
    )


def _row_counts(rows: Sequence[Mapping[str, Any]], policy: str) -> dict[int, tuple[int, int]]:
    """``{level: (successes, episodes)}`` of ``policy`` from eval rows."""
    out: dict[int, tuple[int, int]] = {}
    for r in rows:
        if r.get("policy") != policy or r.get("success") is None:
            continue
        n = int(r["episodes"])
        k = round(float(r["success"]) * n)
        out[int(r["level"])] = (k, n)
    return out


def claim_phase_beats_constant(rows: Sequence[Mapping[str, Any]], cfg: ClaimsConfig) -> ClaimRow:
    """Claim 6: success of the phase policy minus the constant-temperature policy (eval rows)."""
    a = _row_counts(rows, cfg.explore_policy)
    b = _row_counts(rows, cfg.constant_policy)
    levels = sorted(set(a) & set(b))
    na = sum(a[lv][1] for lv in levels)
    nb = sum(b[lv][1] for lv in levels)
    n = min(na, nb)
    value = ci = None
    if levels and na and nb:
        ka = sum(a[lv][0] for lv in levels)
        kb = sum(b[lv][0] for lv in levels)
        value = ka / na - kb / nb
        rng = np.random.default_rng(cfg.seed)
        zero = np.zeros(cfg.n_boot)  # (n_boot,) start of the level-weighted sums of draws
        da = sum((rate_draws(*a[lv], rng, cfg.n_boot) * a[lv][1] for lv in levels), zero) / na
        db = sum((rate_draws(*b[lv], rng, cfg.n_boot) * b[lv][1] for lv in levels), zero) / nb
        if na >= 2 and nb >= 2:
            ci = _interval(da - db, cfg.confidence)
    return _row(
        "phase_beats_constant",
        f"Phase-aware temperature ({cfg.explore_policy}) succeeds more often than a global "
        f"constant ({cfg.constant_policy})",
        measurement=value,
        ci=ci,
        n=n,
        n_detail=f"{cfg.explore_policy}: {na}, {cfg.constant_policy}: {nb} episodes; "
        f"levels {','.join(str(lv) for lv in levels) or '-'}",
        note="" if rows else "no eval rows given",
    )


def claim_level_drop(rows: Sequence[Mapping[str, Any]], cfg: ClaimsConfig) -> ClaimRow:
    """Claim 7: relative success drop from L0/L1 to L3 of the reference policy (eval rows)."""
    c = _row_counts(rows, cfg.reference_policy)
    low = [lv for lv in (0, 1) if lv in c]
    k_lo = sum(c[lv][0] for lv in low)
    n_lo = sum(c[lv][1] for lv in low)
    k3, n3 = c.get(3, (0, 0))
    n = min(n_lo, n3)
    value = ci = None
    if n_lo and n3 and k_lo:
        value = 1.0 - (k3 / n3) / (k_lo / n_lo)
        if n_lo >= 2 and n3 >= 2:
            rng = np.random.default_rng(cfg.seed)
            d_lo = sum(rate_draws(*c[lv], rng, cfg.n_boot) * c[lv][1] for lv in low) / n_lo
            d3 = rate_draws(k3, n3, rng, cfg.n_boot)
            with np.errstate(divide="ignore", invalid="ignore"):
                draws = np.where(d_lo > 0, 1.0 - d3 / np.where(d_lo > 0, d_lo, 1.0), -np.inf)
            ci = _interval(draws, cfg.confidence)
    note = "" if rows else "no eval rows given"
    if rows and n_lo and not k_lo:
        note = "undefined: no success at L0/L1"
    return _row(
        "level_drop",
        f"Success of {cfg.reference_policy} falls from L0/L1 to L3 by more than 30%",
        measurement=value,
        ci=ci,
        n=n,
        n_detail=f"L0+L1: {n_lo}, L3: {n3} episodes",
        note=note,
    )


def claims_table(
    summary: Mapping[str, Any],
    evidence: Evidence,
    eval_rows: Sequence[Mapping[str, Any]] | None = None,
    config: ClaimsConfig = ClaimsConfig(),
) -> list[ClaimRow]:
    """Every claim, in the essay's order (module docstring gives the rules)."""
    rows = list(eval_rows or [])
    return [
        claim_spike_after_failure(evidence, config),
        claim_spike_3_4_recovery(summary),
        claim_exploration_token_cost(evidence, config),
        claim_exploration_latency_variance(evidence, config),
        claim_divergent_eruptions_fail(summary, evidence, config),
        claim_phase_beats_constant(rows, config),
        claim_level_drop(rows, config),
    ]
