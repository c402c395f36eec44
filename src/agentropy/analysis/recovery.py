"""Recovery after tool failures versus the entropy spike, token costs and latency variance.

Definitions (DESIGN.md "Definitions"):

- **Episode-level recovery**: an episode with at least one failed (``error``) or ``unexpected``
  tool result that still ends with a correct answer (``success``). Episodes whose ``success`` is
  unknown are left out of the rates.
- **Turn-level recovery**: for a failed tool turn, the next tool call in the episode succeeds
  (status ``ok``). Failed turns with no later tool call have no turn-level outcome and are left out
  (counted as ``no_next_call``).
- **Spike bins**: ``< 1.5``, ``1.5-2``, ``2-3``, ``3-4``, ``>= 4`` (left-closed intervals).
  Episode-level: an episode is represented by its *first* failed trigger that has a spike ratio
  (the first failure is the one the episode's later course depends on; later spikes are already
  conditioned on how the first was handled). Turn-level: every failed trigger with a spike ratio
  and a next call is one unit, binned by its own spike ratio.
- **Confidence intervals**: percentile bootstrap, 95 %, seeded. For a rate (the mean of 0/1
  outcomes) a nonparametric bootstrap resample's mean is exactly ``Binomial(n, p_hat) / n``, so
  the resamples are drawn from that distribution directly (same distribution as resampling rows,
  O(1) memory in ``n``). The relative difference between two bins resamples each bin
  independently (a stratified bootstrap). ``n < 2`` gives no interval (None); all-equal outcomes
  give a zero-width interval.
- **Logistic fit** ``P(recovered) = sigmoid(intercept + slope * S)`` by Newton / IRLS, with
  standard errors from the inverse Fisher information and Wald 95 % intervals. Separable or
  degenerate data (fewer than 3 units, one outcome class, constant ``S``, no convergence) give
  None for the coefficients.
- **Relative recovery difference** of 3-4x vs < 1.5x spikes: ``(rate_3_4 - rate_lt_1_5) /
  rate_lt_1_5`` -- the form of the claim "a 3-4x spike after a failed API call gives a 22 %
  higher recovery rate". Undefined (None) when ``rate_lt_1_5`` is 0 or a bin is empty; bootstrap
  draws with a zero denominator count as +inf, and an infinite bound is reported as None.
- **Paired difference** of two arms run on the same units (the same tasks and faults, one
  episode each): ``rate_a - rate_b`` and ``(rate_a - rate_b) / rate_b`` with a *paired*
  percentile bootstrap over units (resampling whole pairs keeps the pairing, which the
  stratified bootstrap above would throw away). For 0/1 outcomes a resample of ``n`` pairs is a
  multinomial draw over the four outcome pairs, drawn directly like :func:`rate_draws`.
- **Costs**: token overhead of a policy = its mean assistant tokens per episode on the task_ids it
  shares with the reference policy, divided by the reference's on the same tasks (each task
  weighted equally: per-task means first), minus 1. Share of tokens in ``recover`` = recover
  tokens / tokens with a known phase.
- **Latency**: per-policy episode wall time p50, p95 (linear interpolation) and coefficient of
  variation ``std / mean`` (sample std, ddof = 1; None for fewer than 2 episodes or mean 0).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "CONFIDENCE",
    "CONSTANT_POLICY",
    "EXPLORE_POLICY",
    "MIN_N_BOOT",
    "N_BOOT",
    "REFERENCE_POLICY",
    "SPIKE_BIN_EDGES",
    "SPIKE_BIN_LABELS",
    "UNKNOWN_POLICY",
    "check_bootstrap",
    "coefficient_of_variation",
    "cost_stats",
    "default_reference",
    "latency_stats",
    "logistic_fit",
    "paired_difference_ci",
    "per_task_mean",
    "percentile_interval",
    "rate_ci",
    "rate_draws",
    "recovery_stats",
    "relative_difference_ci",
    "spike_bin",
]


#: Confidence level of every bootstrap interval in the analysis, the claims and the eval table.
CONFIDENCE: float = 0.95
#: Bootstrap resamples per interval (seeded, so intervals are deterministic).
N_BOOT: int = 4000
#: Fewest resamples a configuration may ask for (fewer gives unstable interval ends).
MIN_N_BOOT: int = 100
#: The policy token overhead and latency spread are measured against, when present.
REFERENCE_POLICY: str = "greedy"
#: The exploring policy whose costs are compared with the reference's (phase-aware temperature).
EXPLORE_POLICY: str = "phase"
#: The global-constant temperature the exploring policy is compared with.
CONSTANT_POLICY: str = "constant:1.0"
#: Policy name of episodes that carry none.
UNKNOWN_POLICY: str = "unknown"


def check_bootstrap(confidence: float, n_boot: int) -> None:
    """Raise ``ValueError`` (saying what is allowed) for a bad confidence level or resample count;
    shared by every config that carries bootstrap settings."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if n_boot < MIN_N_BOOT:
        raise ValueError(f"n_boot must be >= {MIN_N_BOOT}, got {n_boot!r}")


def default_reference(policies: Sequence[str]) -> str:
    """:data:`REFERENCE_POLICY` when it is among ``policies``, else the first of them."""
    if not policies:
        raise ValueError("no policies to choose a reference from")
    return REFERENCE_POLICY if REFERENCE_POLICY in policies else policies[0]


#: Left edges of the spike-ratio bins after the first; see :data:`SPIKE_BIN_LABELS`.
SPIKE_BIN_EDGES: tuple[float, ...] = (1.5, 2.0, 3.0, 4.0)
SPIKE_BIN_LABELS: tuple[str, ...] = ("<1.5", "1.5-2", "2-3", "3-4", ">=4")


def spike_bin(spike_ratio: np.ndarray) -> np.ndarray:
    """Bin index (0..4, see :data:`SPIKE_BIN_LABELS`) of each spike ratio; (n,) int64."""
    return np.searchsorted(np.asarray(SPIKE_BIN_EDGES), np.asarray(spike_ratio), side="right")


def percentile_interval(draws: np.ndarray, confidence: float) -> list[float | None]:
    """``[lo, hi]`` percentile interval of bootstrap draws (NaN draws skipped; an infinite or
    missing end is None, i.e. unbounded on that side)."""
    draws = np.asarray(draws, np.float64)
    draws = draws[~np.isnan(draws)]
    if draws.size == 0:
        return [None, None]
    alpha = 1.0 - confidence
    # inverted_cdf picks order statistics (no interpolation), so +inf draws stay +inf and never
    # produce inf - inf = NaN.
    lo, hi = np.quantile(draws, [alpha / 2, 1 - alpha / 2], method="inverted_cdf")
    return [float(v) if np.isfinite(v) else None for v in (lo, hi)]


def rate_draws(k: int, n: int, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """(n_boot,) bootstrap means of ``n`` 0/1 outcomes with ``k`` ones: resampling them with
    replacement makes the resample mean Binomial(n, k/n) / n, drawn here directly."""
    return rng.binomial(n, k / n, size=n_boot) / n


def coefficient_of_variation(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Sample std (ddof 1) / mean along ``axis``; NaN where the mean is not positive."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=axis)
    std = x.std(axis=axis, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mean > 0, std / np.where(mean > 0, mean, 1.0), np.nan)


def rate_ci(
    successes: int,
    n: int,
    *,
    confidence: float = CONFIDENCE,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict[str, Any]:
    """``{"rate", "n", "successes", "ci"}`` of a 0/1 outcome, with a percentile bootstrap CI.

    ``rate`` is None for ``n == 0``; ``ci`` is None for ``n < 2``.
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return {"rate": None, "n": 0, "successes": 0, "ci": None}
    p = successes / n
    ci = None
    if n >= 2:
        draws = rate_draws(successes, n, np.random.default_rng(seed), n_boot)
        ci = percentile_interval(draws, confidence)
    return {"rate": p, "n": int(n), "successes": int(successes), "ci": ci}


def relative_difference_ci(
    k_a: int,
    n_a: int,
    k_b: int,
    n_b: int,
    *,
    confidence: float = CONFIDENCE,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict[str, Any]:
    """``(rate_a - rate_b) / rate_b`` with a stratified percentile bootstrap CI.

    Returns ``{"value", "ci", "n_a", "n_b"}``; value None when a bin is empty or rate_b == 0.
    """
    out: dict[str, Any] = {"value": None, "ci": None, "n_a": int(n_a), "n_b": int(n_b)}
    if n_a == 0 or n_b == 0 or k_b == 0:
        return out
    ra, rb = k_a / n_a, k_b / n_b
    out["value"] = (ra - rb) / rb
    if n_a >= 2 and n_b >= 2:
        rng = np.random.default_rng(seed)
        da = rate_draws(k_a, n_a, rng, n_boot)
        db = rate_draws(k_b, n_b, rng, n_boot)
        safe = np.where(db > 0, db, 1.0)
        draws = np.where(db > 0, (da - db) / safe, np.inf)
        out["ci"] = percentile_interval(draws, confidence)
    return out


def paired_difference_ci(
    a: np.ndarray,
    b: np.ndarray,
    *,
    confidence: float = CONFIDENCE,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict[str, Any]:
    """Difference of two arms' rates on the same units, with paired percentile bootstrap CIs.

    ``a``, ``b``: (n,) 0/1 outcomes, unit ``i`` the same task (same faults) in both arms.
    Returns ``{"n", "a_only", "b_only", "rate_a", "rate_b", "difference", "difference_ci",
    "relative", "relative_ci"}``: ``difference = rate_a - rate_b`` (a fraction, not points) and
    ``relative = difference / rate_b`` (None when ``rate_b`` is 0; draws with a zero denominator
    count as +inf, an infinite bound is None). Rates are None for ``n == 0``; intervals None for
    ``n < 2``. Only the discordant units (``a_only``: a recovered and b did not; ``b_only``: the
    reverse) move the difference: with none, every resample gives 0 and the interval has zero
    width, which at small ``n`` says little, so read it with those two counts.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two (n,) outcome arrays of one length, got {a.shape}, {b.shape}")
    if not (np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all()):
        raise ValueError("paired outcomes must be 0/1 (or bool)")
    n = int(a.shape[0])
    out: dict[str, Any] = {
        "n": n,
        "a_only": 0,
        "b_only": 0,
        "rate_a": None,
        "rate_b": None,
        "difference": None,
        "difference_ci": None,
        "relative": None,
        "relative_ci": None,
    }
    if n == 0:
        return out
    a, b = a.astype(bool), b.astype(bool)
    # Counts of the outcome pairs (a, b) = (1, 1), (1, 0), (0, 1), (0, 0).
    counts = np.array([(a & b).sum(), (a & ~b).sum(), (~a & b).sum(), (~a & ~b).sum()])
    k_b = int(counts[0] + counts[2])
    out["a_only"], out["b_only"] = int(counts[1]), int(counts[2])
    out["rate_a"] = float(a.mean())
    out["rate_b"] = k_b / n
    out["difference"] = float(counts[1] - counts[2]) / n
    if k_b > 0:
        out["relative"] = float(counts[1] - counts[2]) / k_b
    if n >= 2:
        rng = np.random.default_rng(seed)
        draws = rng.multinomial(n, counts / n, size=n_boot)  # (n_boot, 4)
        gain = (draws[:, 1] - draws[:, 2]).astype(np.float64)
        out["difference_ci"] = percentile_interval(gain / n, confidence)
        if k_b > 0:
            base = (draws[:, 0] + draws[:, 2]).astype(np.float64)
            rel = np.where(base > 0, gain / np.where(base > 0, base, 1.0), np.inf)
            out["relative_ci"] = percentile_interval(rel, confidence)
    return out


def logistic_fit(
    x: np.ndarray, y: np.ndarray, *, max_iter: int = 100, tol: float = 1e-10
) -> dict[str, Any]:
    """Fit ``P(y = 1) = sigmoid(intercept + slope * x)`` by Newton's method (IRLS).

    ``x`` (n,) float, ``y`` (n,) 0/1. Returns ``{"intercept", "slope", "se", "ci", "n",
    "converged"}`` where ``se`` and ``ci`` (Wald, 95 %) are ``[intercept, slope]`` lists; None
    values when the fit is degenerate (see module docstring).
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    n = int(x.shape[0])
    none: dict[str, Any] = {
        "intercept": None,
        "slope": None,
        "se": None,
        "ci": None,
        "n": n,
        "converged": False,
    }
    if n < 3 or y.min() == y.max() or x.min() == x.max():
        return none
    # Standardise x so that Newton steps are well conditioned, then map back.
    mu, sd = float(x.mean()), float(x.std())
    z = (x - mu) / sd
    design = np.stack([np.ones(n), z], axis=1)
    beta = np.zeros(2)
    converged = False
    for _ in range(max_iter):
        eta = np.clip(design @ beta, -30.0, 30.0)
        p = 1.0 / (1.0 + np.exp(-eta))
        w = p * (1.0 - p)
        hess = design.T @ (design * w[:, None])
        grad = design.T @ (y - p)
        if np.linalg.cond(hess) > 1e12:
            break
        step = np.linalg.solve(hess, grad)
        beta = beta + step
        if np.max(np.abs(step)) < tol:
            converged = True
            break
    # Perfect separation drives |beta| to infinity: treat as no fit.
    if not converged or np.max(np.abs(beta)) > 25.0:
        return none
    eta = design @ beta
    p = 1.0 / (1.0 + np.exp(-eta))
    hess = design.T @ (design * (p * (1.0 - p))[:, None])
    cov_z = np.linalg.inv(hess)
    # beta_x = [b0 - b1 * mu / sd, b1 / sd] = A @ beta_z.
    a = np.array([[1.0, -mu / sd], [0.0, 1.0 / sd]])
    b = a @ beta
    cov = a @ cov_z @ a.T
    se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    return {
        "intercept": float(b[0]),
        "slope": float(b[1]),
        "se": [float(se[0]), float(se[1])],
        "ci": [
            [float(b[0] - 1.959964 * se[0]), float(b[0] + 1.959964 * se[0])],
            [float(b[1] - 1.959964 * se[1]), float(b[1] + 1.959964 * se[1])],
        ],
        "n": n,
        "converged": True,
    }


def recovery_stats(
    spike: np.ndarray,
    recovered: np.ndarray,
    *,
    confidence: float = CONFIDENCE,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict[str, Any]:
    """Recovery rate overall and by spike bin, the logistic fit and the 3-4x vs < 1.5x difference.

    ``spike`` (n,) float64 spike ratio per unit (NaN: unit has no spike ratio; it counts in
    ``overall`` only), ``recovered`` (n,) bool. Order of units does not matter.
    """
    spike = np.asarray(spike, np.float64)
    rec = np.asarray(recovered, bool)
    ci = functools.partial(rate_ci, confidence=confidence, n_boot=n_boot, seed=seed)
    has = ~np.isnan(spike)
    bins = spike_bin(np.where(has, spike, 0.0))
    by_bin = {}
    counts = {}
    for b, label in enumerate(SPIKE_BIN_LABELS):
        sel = has & (bins == b)
        k, n = int(rec[sel].sum()), int(sel.sum())
        counts[label] = (k, n)
        by_bin[label] = ci(k, n)
    k34, n34 = counts["3-4"]
    k15, n15 = counts["<1.5"]
    return {
        "overall": ci(int(rec.sum()), int(rec.shape[0])),
        "by_spike_bin": by_bin,
        "relative_3_4_vs_lt_1_5": relative_difference_ci(
            k34, n34, k15, n15, confidence=confidence, n_boot=n_boot, seed=seed
        ),
        "logistic": logistic_fit(spike[has], rec[has]),
    }


def per_task_mean(
    policy: Sequence[str],
    task_id: Sequence[str | None],
    values: Sequence[float] | np.ndarray,
    name: str,
) -> dict[str, float]:
    """``{task_id: mean value}`` over the episodes of policy ``name`` (episodes without a task
    are skipped); per-episode inputs (E,). The unit of the paired token-overhead comparisons."""
    sums: dict[str, list[float]] = {}
    for t, v, p in zip(task_id, values, policy, strict=True):
        if p == name and t is not None:
            s = sums.setdefault(t, [0.0, 0.0])
            s[0] += v
            s[1] += 1
    return {t: s[0] / s[1] for t, s in sums.items()}


def cost_stats(
    policy: list[str | None],
    task_id: list[str | None],
    tokens: np.ndarray,
    recover_tokens: np.ndarray,
    phased_tokens: np.ndarray,
    *,
    reference: str | None = None,
) -> dict[str, Any]:
    """Per-policy tokens per episode, overhead vs ``reference`` and share of ``recover`` tokens.

    Per-episode inputs (E,). ``reference`` defaults to :func:`default_reference` of the policy
    names in sorted order. Episodes without a policy are grouped under :data:`UNKNOWN_POLICY`.
    Returns ``{"reference": str | None, "policies": {name: {...}}}``.
    """
    tokens = np.asarray(tokens, np.float64)
    names = [UNKNOWN_POLICY if p is None else p for p in policy]
    uniq = sorted(set(names))
    if reference is None and uniq:
        reference = default_reference(uniq)
    if reference is not None and reference not in uniq:
        raise ValueError(f"reference policy {reference!r} not in the traces (have {uniq})")
    pol = np.asarray(names, dtype=object)

    def per_task(name: str) -> dict[str, float]:
        return per_task_mean(names, task_id, tokens, name)

    ref_tasks = per_task(reference) if reference is not None else {}
    out: dict[str, Any] = {}
    for name in uniq:
        sel = pol == name
        rec = float(np.asarray(recover_tokens)[sel].sum())
        phased = float(np.asarray(phased_tokens)[sel].sum())
        entry: dict[str, Any] = {
            "episodes": int(sel.sum()),
            "tokens": int(tokens[sel].sum()),
            "tokens_per_episode": float(tokens[sel].mean()) if sel.any() else None,
            "recover_share": rec / phased if phased > 0 else None,
            "overhead": None,
            "shared_tasks": 0,
        }
        mine = per_task(name)
        shared = sorted(set(mine) & set(ref_tasks))
        if shared:
            ref_total = sum(ref_tasks[t] for t in shared)
            entry["shared_tasks"] = len(shared)
            if ref_total > 0:
                entry["overhead"] = sum(mine[t] for t in shared) / ref_total - 1.0
        out[name] = entry
    return {"reference": reference, "policies": out}


def latency_stats(policy: list[str | None], latency_s: np.ndarray) -> dict[str, Any]:
    """Per-policy episode latency p50, p95 and coefficient of variation (NaN latencies skipped)."""
    lat = np.asarray(latency_s, np.float64)
    names = np.asarray([UNKNOWN_POLICY if p is None else p for p in policy], dtype=object)
    out: dict[str, Any] = {}
    for name in sorted(set(names.tolist())):
        v = lat[(names == name) & ~np.isnan(lat)]
        entry: dict[str, Any] = {"n": int(v.shape[0]), "p50": None, "p95": None, "cv": None}
        if v.shape[0]:
            entry["p50"] = float(np.percentile(v, 50))
            entry["p95"] = float(np.percentile(v, 95))
            cv = coefficient_of_variation(v) if v.shape[0] >= 2 else np.nan
            entry["cv"] = float(cv) if np.isfinite(cv) else None
        out[name] = entry
    return out
