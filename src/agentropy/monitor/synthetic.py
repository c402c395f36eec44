"""Planted patterns for validating the detector: synthetic per-step series with known alerts.

Every series is ``steps`` training steps of the metrics in
:data:`agentropy.monitor.detector.METRICS` (overall entropy and the evidence metrics) around a
healthy background, with one planted pattern starting at a random ``onset``:

- background: entropy ``e(t) = base * (0.7 + 0.3 exp(-t / 80))`` (the slow descent of RL runs)
  with Gaussian noise of standard deviation ``noise * e(t)`` (``noise`` is relative); reward
  ``0.3 + 0.1 (1 - exp(-t / 60))`` plus N(0, 0.03); loop rate 0.05, hallucination rate 0.03,
  valid-action rate 0.9 (each plus N(0, 0.01)), length 200 tokens plus N(0, 10).
- ``quiet``: nothing planted (every alert is a false alarm);
- ``productive``: entropy rises by ``amplitude * e(onset)`` over two steps, then decays back
  with a time constant of 3 steps; from the peak on, reward is 0.15 higher;
- ``degenerate``: the same eruption; from the onset on, the loop rate is 0.2 higher (the
  duplication an eruption leaves behind);
- ``divergence``: entropy rises as above and stays up; reward falls by 0.2 over 4 steps and the
  loop rate climbs by 0.15;
- ``collapse``: from the onset, entropy decays toward 0.01 nats with a time constant of 6 steps,
  reward flat;
- ``nonfinite``: entropy is NaN at the onset step.

``skewed=True`` draws the entropy from a gamma distribution instead (mean the planted curve, sd
``noise`` times it): the right-skewed per-step means of a phase with few tokens, mostly
near-deterministic with a few uncertain ones (the shipped agent's answer phase reads 0.01-0.31
nats around 0.12, sd/mean 0.56-0.73; its act phase 0.05-0.13, sd/mean 0.2). With ``base`` 0.12
this is the channel the first collapse rule raised false alarms on (RESULTS.md, "Monitor").

``rollouts=n`` makes the reward a success rate: each step's value is the share of ``n``
Bernoulli rollouts that succeed with the planted reward curve as probability (binomial noise,
sd ``sqrt(p (1 - p) / n)``: 0.07 at p 0.2 and 32 rollouts, the shipped agent's GRPO batches,
where one batch with 1 success in 32 raised a false divergence). ``reward_scale`` multiplies
the planted reward curve (0.5: a background of ~0.17, the shipped agent's rollout reward).

:func:`expected` says which alerts a pattern should raise and by when; :func:`score` matches a
detector's alerts against it. ``benchmarks/bench_monitor.py`` turns this into precision and
recall per alert type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from agentropy.monitor.detector import Alert

__all__ = ["PATTERNS", "Expected", "expected", "planted_series", "score"]

#: Planted patterns, ``quiet`` first.
PATTERNS: tuple[str, ...] = (
    "quiet",
    "productive",
    "degenerate",
    "divergence",
    "collapse",
    "nonfinite",
)


@dataclass(frozen=True, slots=True)
class Expected:
    """One alert a planted pattern should raise: its label and the step window it may fire in."""

    label: str
    """``name`` or ``subsided:<kind>``."""
    lo: int
    hi: int


def planted_series(
    pattern: str,
    *,
    steps: int = 120,
    amplitude: float = 1.0,
    noise: float = 0.05,
    base: float = 0.6,
    heavy_tails: bool = False,
    skewed: bool = False,
    rollouts: int | None = None,
    reward_scale: float = 1.0,
    seed: int = 0,
) -> tuple[list[dict[str, float | None]], int]:
    """One synthetic run: per-step metric dicts (step ``i + 1`` is row ``i``) and the onset step.

    ``heavy_tails`` draws the entropy noise from a Student t with 3 degrees of freedom scaled to
    the same standard deviation (occasional 4-6 sigma outliers, as real per-step means show when
    a batch happens to hold unusual tasks) instead of a Gaussian; ``skewed`` draws each entropy
    value from a gamma distribution with the same mean and relative sd (module docstring).
    ``rollouts`` draws the reward as a success rate over that many rollouts and
    ``reward_scale`` scales the reward curve (module docstring).
    """
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; expected one of {PATTERNS}")
    if heavy_tails and skewed:
        raise ValueError("planted_series: choose heavy_tails or skewed noise, not both")
    if skewed and not noise > 0:
        raise ValueError(f"planted_series: skewed noise needs noise > 0, got {noise!r}")
    if rollouts is not None and not (isinstance(rollouts, int) and rollouts >= 1):
        raise ValueError(f"planted_series: rollouts must be an integer >= 1, got {rollouts!r}")
    if not 0.0 < reward_scale <= 2.0:
        raise ValueError(f"planted_series: reward_scale must be in (0, 2], got {reward_scale!r}")
    rng = np.random.default_rng(seed)
    t = np.arange(1, steps + 1, dtype=np.float64)
    onset = int(rng.integers(steps // 4, steps // 2))
    e = base * (0.7 + 0.3 * np.exp(-t / 80.0))
    reward = 0.3 + 0.1 * (1.0 - np.exp(-t / 60.0))
    loop = np.full(steps, 0.05)
    bump = np.zeros(steps)
    after = t >= onset
    k = t - onset  # steps since onset (negative before)
    if pattern in ("productive", "degenerate", "divergence"):
        rise = amplitude * e[onset - 1]
        shape = np.where(k < 0, 0.0, np.minimum(k + 1, 2) / 2)  # reach the peak over 2 steps
        if pattern == "divergence":
            bump = rise * shape
            reward = reward - 0.2 * np.clip((k + 1) / 4, 0, 1) * after
            loop = loop + 0.15 * np.clip((k + 1) / 4, 0, 1) * after
        else:
            decay = np.where(k <= 1, 1.0, np.exp(-(k - 1) / 3.0))
            bump = rise * shape * decay
            if pattern == "productive":
                reward = reward + 0.15 * (k >= 1)
            else:
                loop = loop + 0.2 * after
    elif pattern == "collapse":
        e0 = e[onset - 1]
        e = np.where(after, 0.01 + (e0 - 0.01) * np.exp(-np.maximum(k, 0) / 6.0), e)
    if skewed:  # gamma with mean m and sd noise * m: shape 1 / noise^2, scale m * noise^2
        ent = np.maximum(rng.gamma(1.0 / noise**2, (e + bump) * noise**2), 1e-4)
    else:
        z = rng.standard_t(3, steps) / math.sqrt(3.0) if heavy_tails else rng.normal(0, 1, steps)
        ent = np.maximum(e + bump + noise * z * e, 1e-4)
    if rollouts is None:
        reward = reward_scale * reward + rng.normal(0, 0.03, steps)
    else:
        p = np.clip(reward_scale * reward, 0.0, 1.0)
        reward = rng.binomial(rollouts, p).astype(np.float64) / rollouts
    loop = np.clip(loop + rng.normal(0, 0.01, steps), 0, 1)
    hall = np.clip(0.03 + rng.normal(0, 0.01, steps), 0, 1)
    valid = np.clip(0.9 + rng.normal(0, 0.01, steps), 0, 1)
    length = 200 + rng.normal(0, 10, steps)
    rows: list[dict[str, float | None]] = []
    for i in range(steps):
        rows.append({
            "entropy": math.nan if pattern == "nonfinite" and i + 1 == onset else float(ent[i]),
            "reward": float(reward[i]),
            "loop_rate": float(loop[i]),
            "hallucination_rate": float(hall[i]),
            "valid_action_rate": float(valid[i]),
            "length": float(length[i]),
        })  # fmt: skip
    return rows, onset


def expected(pattern: str, onset: int, steps: int, *, horizon: int = 10) -> list[Expected]:
    """Alerts a detector should raise on a planted pattern (label and step window)."""
    if pattern == "quiet":
        return []
    if pattern == "nonfinite":
        return [Expected("nonfinite", onset, onset)]
    if pattern == "collapse":
        return [Expected("collapse", onset, steps)]
    out = [Expected("eruption", onset, onset + 2)]
    if pattern == "divergence":
        out.append(Expected("divergence", onset, onset + horizon + 2))
    else:
        out.append(Expected(f"subsided:{pattern}", onset + 1, onset + 25))
    return out


def _label(a: Alert) -> str:
    return f"{a.name}:{a.kind}" if a.name == "subsided" else a.name


def score(alerts: list[Alert], wanted: list[Expected]) -> tuple[dict[str, int], dict[str, int]]:
    """Match alerts with expectations: ``(true positives, false positives)`` per label.

    An alert is a true positive when an unmatched expectation has its label and the alert's step
    lies in its window (each expectation matches at most once); every other alert is a false
    positive. Recall of a label = its true positives / its expectations.
    """
    tp: dict[str, int] = {}
    fp: dict[str, int] = {}
    open_ = list(wanted)
    for a in alerts:
        lab = _label(a)
        hit = next((w for w in open_ if w.label == lab and w.lo <= a.step <= w.hi), None)
        if hit is not None:
            open_.remove(hit)
            tp[lab] = tp.get(lab, 0) + 1
        else:
            fp[lab] = fp.get(lab, 0) + 1
    return tp, fp
