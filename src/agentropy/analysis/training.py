"""Entropy cycles across training steps: per-step series, regimes, cycles and ``R = -a exp(H) + b``.

Definitions (DESIGN.md "Definitions", "Across training"; thresholds in :class:`CycleConfig`):

- **Per-step series** from episodes carrying ``step``: mean model entropy on assistant tokens
  overall and per phase, pooled as sum / count over all tokens of the step (no mean of means);
  mean reward, mean assistant tokens, mean tool calls per episode; failure rate = failed tool
  turns / tool turns; loop rate = episodes with a loop / episodes; hallucinated-call rate =
  hallucinated calls / checked calls (see :mod:`agentropy.analysis.loops` for what is detectable).
- **Regimes**: *eruption* (sharp rise), *subsidence* (decline after a peak), *descent* (every
  other step: the slow background decline). A **cycle** is an eruption plus its subsidence.
- **Detector**: the entropy series is segmented into constant-mean pieces by penalised PELT
  under the L2 cost (``ruptures.KernelCPD`` with a linear kernel) with penalty ``penalty * sigma^2 * log(n)``, where ``sigma`` is the noise level
  estimated robustly from first differences (MAD / 0.6745 / sqrt 2). A maximal run of rising
  segment means whose total rise over the segment before it exceeds
  ``max(min_amplitude, min_amplitude_sigma * sigma)`` is an eruption: ``start`` = last step of the
  segment before the rise, ``peak`` = step of the largest entropy inside the rise, ``amplitude`` =
  top segment mean - pre-eruption segment mean. Its subsidence ends (``end``) at the last step of
  the first later segment (before the next eruption) whose mean is back within
  ``(1 - subsidence) * amplitude`` of the pre-eruption mean; if there is none, the entropy never
  subsided and ``end`` is the last step before the next eruption (or of the run).
- **Kind**: ``divergent`` if the entropy never subsides, or the mean reward over
  ``reward_window`` steps from ``end`` is below the mean over ``reward_window`` steps up to
  ``start`` by more than ``reward_margin``; ``productive`` if it is above by more than the margin;
  ``neutral`` otherwise (including no reward).
- **Fit** ``R = -a exp(H) + b``: ordinary least squares of reward on ``exp(H)`` (linear in a, b),
  with ``R^2``; over the whole run and per cycle (steps ``start..end``). Fewer than 3 points or a
  constant ``exp(H)`` give None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from agentropy.trace import PHASES

__all__ = [
    "ENTROPY_COLUMNS",
    "Cycle",
    "CycleConfig",
    "detect_cycles",
    "fit_exp_reward",
    "noise_sigma",
    "step_series",
]


#: Column names of the per-step entropy series: overall, then one per phase.
ENTROPY_COLUMNS: tuple[str, ...] = ("all", *PHASES)


@dataclass(frozen=True, slots=True)
class CycleConfig:
    """Thresholds of the training-cycle detector (module docstring)."""

    penalty: float = 2.0
    """Pelt penalty in units of ``sigma^2 * log(n)`` (larger: fewer change points)."""
    min_size: int = 2
    """Minimum segment length, steps."""
    min_amplitude_sigma: float = 2.0
    """Smallest eruption rise, in noise standard deviations."""
    min_amplitude: float = 0.0
    """Smallest eruption rise, nats (absolute floor)."""
    subsidence: float = 0.75
    """Fraction of the amplitude the entropy must give back for the eruption to have subsided."""
    reward_window: int = 5
    """Steps averaged for the reward before the eruption and after the subsidence."""
    reward_margin: float = 0.0
    """Reward difference above which a cycle is productive (below minus which, divergent)."""

    def __post_init__(self) -> None:
        if not self.penalty > 0:
            raise ValueError(f"CycleConfig.penalty must be > 0, got {self.penalty!r}")
        if not isinstance(self.min_size, int) or self.min_size < 1:
            raise ValueError(f"CycleConfig.min_size must be an integer >= 1, got {self.min_size!r}")
        if self.min_amplitude_sigma < 0 or self.min_amplitude < 0:
            raise ValueError("CycleConfig.min_amplitude and min_amplitude_sigma must be >= 0")
        if not 0.0 < self.subsidence <= 1.0:
            raise ValueError(f"CycleConfig.subsidence must be in (0, 1], got {self.subsidence!r}")
        if not isinstance(self.reward_window, int) or self.reward_window < 1:
            raise ValueError(
                f"CycleConfig.reward_window must be an integer >= 1, got {self.reward_window!r}"
            )
        if self.reward_margin < 0:
            raise ValueError(f"CycleConfig.reward_margin must be >= 0, got {self.reward_margin!r}")


@dataclass(frozen=True, slots=True)
class Cycle:
    """One eruption + subsidence, as indices into the step series and their step numbers."""

    start: int
    peak: int
    end: int
    start_step: int
    peak_step: int
    end_step: int
    amplitude: float
    """Top segment mean minus pre-eruption segment mean, nats."""
    subsided: bool
    reward_before: float | None
    reward_after: float | None
    kind: str
    """``productive`` | ``neutral`` | ``divergent``."""


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def step_series(
    step: np.ndarray,
    entropy_sum: np.ndarray,
    entropy_count: np.ndarray,
    reward: np.ndarray,
    tokens: np.ndarray,
    tool_calls: np.ndarray,
    failed_calls: np.ndarray,
    has_loop: np.ndarray,
    halluc_checked: np.ndarray,
    halluc: np.ndarray,
) -> dict[str, np.ndarray]:
    """Per-step series from per-episode aggregates; episodes with NaN ``step`` are ignored.

    Inputs are per episode: ``step`` (E,) float (NaN: none), ``entropy_sum`` / ``entropy_count``
    (E, 5) over :data:`ENTROPY_COLUMNS`, ``reward`` (E,) float (NaN: none), the rest (E,) counts.
    Returns arrays of shape (S,) keyed ``step``, ``episodes``, ``entropy`` (and
    ``entropy_<phase>``), ``reward``, ``length``, ``tool_calls``, ``failure_rate``,
    ``loop_rate``, ``hallucination_rate``; NaN where undefined.
    """
    step = np.asarray(step, np.float64)
    sel = ~np.isnan(step)
    steps, inv = np.unique(step[sel], return_inverse=True)
    s = steps.shape[0]

    def total(x: np.ndarray) -> np.ndarray:
        return np.bincount(inv, weights=np.asarray(x, np.float64)[sel], minlength=s)

    out: dict[str, np.ndarray] = {"step": steps.astype(np.int64)}
    n_ep = np.bincount(inv, minlength=s).astype(np.float64)
    out["episodes"] = n_ep.astype(np.int64)
    es = np.asarray(entropy_sum, np.float64)
    ec = np.asarray(entropy_count, np.float64)
    for j, col in enumerate(ENTROPY_COLUMNS):
        name = "entropy" if col == "all" else f"entropy_{col}"
        out[name] = _ratio(total(es[:, j]), total(ec[:, j]))
    r = np.asarray(reward, np.float64)
    has_r = ~np.isnan(r)
    out["reward"] = _ratio(total(np.where(has_r, r, 0.0)), total(has_r))
    out["length"] = _ratio(total(tokens), n_ep)
    out["tool_calls"] = _ratio(total(tool_calls), n_ep)
    out["failure_rate"] = _ratio(total(failed_calls), total(tool_calls))
    out["loop_rate"] = _ratio(total(has_loop), n_ep)
    out["hallucination_rate"] = _ratio(total(halluc), total(halluc_checked))
    return out


def noise_sigma(x: np.ndarray) -> float:
    """Robust noise standard deviation of a series from its first differences (MAD-based)."""
    d = np.diff(np.asarray(x, np.float64))
    if d.shape[0] == 0:
        return 0.0
    mad = float(np.median(np.abs(d - np.median(d))))
    return mad / 0.6745 / np.sqrt(2.0)


def _mean_window(r: np.ndarray | None, lo: int, hi: int) -> float | None:
    if r is None:
        return None
    w = r[max(lo, 0) : max(hi, 0)]
    w = w[~np.isnan(w)]
    return float(w.mean()) if w.shape[0] else None


def detect_cycles(
    steps: np.ndarray,
    entropy: np.ndarray,
    reward: np.ndarray | None = None,
    config: CycleConfig = CycleConfig(),
) -> tuple[list[Cycle], list[str]]:
    """Cycles and per-step regimes of a training entropy series.

    ``steps`` (S,) int step numbers (sorted), ``entropy`` (S,) mean entropy per step, nats (NaN
    steps are carried by linear interpolation), ``reward`` (S,) or None. Returns the cycles in step
    order and a regime label (``descent`` | ``eruption`` | ``subsidence``) per step.
    """
    import ruptures as rpt

    x = np.asarray(entropy, np.float64)
    steps = np.asarray(steps)
    n = x.shape[0]
    regimes = ["descent"] * n
    ok = ~np.isnan(x)
    if ok.sum() < 2 * config.min_size + 1:
        return [], regimes
    if not ok.all():
        x = np.interp(np.arange(n), np.flatnonzero(ok), x[ok])
    r = None if reward is None else np.asarray(reward, np.float64)
    sigma = noise_sigma(x)
    scale = max(float(np.abs(x).max()), 1.0)
    sigma = max(sigma, 1e-9 * scale)  # a noiseless series still needs a positive penalty
    pen = config.penalty * sigma**2 * np.log(n)
    # KernelCPD with a linear kernel is penalised PELT under the L2 cost (same change points as
    # rpt.Pelt(model="l2")) but runs in C: ~1000x faster on long runs.
    algo = rpt.KernelCPD(kernel="linear", min_size=config.min_size, jump=1)
    bkps = algo.fit(x[:, None]).predict(pen=pen)
    bounds = [0, *bkps]
    seg_lo = np.asarray(bounds[:-1])
    seg_hi = np.asarray(bounds[1:])
    means = np.array([x[a:b].mean() for a, b in zip(seg_lo, seg_hi, strict=True)])
    n_seg = means.shape[0]
    threshold = max(config.min_amplitude, config.min_amplitude_sigma * sigma)

    # Rises: maximal runs of increasing segment means, kept if their total rise is large.
    rises: list[tuple[int, int]] = []  # (pre segment, top segment)
    j = 1
    while j < n_seg:
        if means[j] > means[j - 1]:
            top = j
            while top + 1 < n_seg and means[top + 1] > means[top]:
                top += 1
            if means[top] - means[j - 1] > threshold:
                rises.append((j - 1, top))
            j = top + 1
        else:
            j += 1

    cycles: list[Cycle] = []
    for c, (pre, top) in enumerate(rises):
        start = int(seg_hi[pre] - 1)
        rise_lo, rise_hi = int(seg_lo[pre + 1]), int(seg_hi[top])
        peak = rise_lo + int(np.argmax(x[rise_lo:rise_hi]))
        amp = float(means[top] - means[pre])
        limit_seg = rises[c + 1][0] if c + 1 < len(rises) else n_seg - 1  # next pre segment
        level = means[pre] + (1.0 - config.subsidence) * amp
        subsided = False
        end = int(seg_hi[limit_seg] - 1) if limit_seg > top else rise_hi - 1
        for s in range(top + 1, limit_seg + 1):
            if means[s] <= level:
                subsided = True
                end = int(seg_hi[s] - 1)
                break
        before = _mean_window(r, start - config.reward_window + 1, start + 1)
        after = _mean_window(r, end, end + config.reward_window)
        if not subsided:
            kind = "divergent"
        elif before is None or after is None:
            kind = "neutral"
        elif after > before + config.reward_margin:
            kind = "productive"
        elif after < before - config.reward_margin:
            kind = "divergent"
        else:
            kind = "neutral"
        for i in range(start + 1, peak + 1):
            regimes[i] = "eruption"
        for i in range(peak + 1, end + 1):
            regimes[i] = "subsidence"
        cycles.append(
            Cycle(
                start=start,
                peak=peak,
                end=end,
                start_step=int(steps[start]),
                peak_step=int(steps[peak]),
                end_step=int(steps[end]),
                amplitude=amp,
                subsided=subsided,
                reward_before=before,
                reward_after=after,
                kind=kind,
            )
        )
    return cycles, regimes


def fit_exp_reward(entropy: np.ndarray, reward: np.ndarray) -> dict[str, Any]:
    """Least-squares fit of ``R = -a exp(H) + b``: ``{"a", "b", "r2", "n"}`` (None if degenerate).

    ``entropy`` and ``reward`` (n,); pairs with a NaN are skipped. ``r2`` is None when the reward
    is constant.
    """
    h = np.asarray(entropy, np.float64)
    r = np.asarray(reward, np.float64)
    ok = ~(np.isnan(h) | np.isnan(r))
    x, y = np.exp(h[ok]), r[ok]
    n = int(x.shape[0])
    out: dict[str, Any] = {"a": None, "b": None, "r2": None, "n": n}
    if n < 3 or x.max() == x.min():
        return out
    xc = x - x.mean()
    slope = float((xc * (y - y.mean())).sum() / (xc * xc).sum())
    b = float(y.mean() - slope * x.mean())
    out["a"], out["b"] = -slope, b
    ss_tot = float(((y - y.mean()) ** 2).sum())
    if ss_tot > 0:
        resid = y - (slope * x + b)
        out["r2"] = 1.0 - float((resid**2).sum()) / ss_tot
    return out
