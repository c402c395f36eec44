"""Per-cycle table of a finished training run: degeneracy and reward before vs after each eruption.

The question (issue 17, item 3): when the rollout entropy erupts and subsides during training,
does the agent come out better (the essay's healthy inhale / exhale) or carrying degenerate
patterns it picked up during the eruption (arXiv 2605.27954, "Cyclical Entropy Eruption":
sentence duplication and hallucinated actions acquired in an eruption persist across cycles)?

**Cycles** are the live monitor's (:mod:`agentropy.monitor.detector`, replayed over the run's
step series with :func:`~agentropy.monitor.tracker.replay`), not a second detector: a cycle
opens at an ``eruption`` alert on the chosen entropy channel (its ``onset_step``: the first of
the ``confirm`` steps above the level) and closes at the ``subsided`` alert with the same onset
(its ``end_step``: the step the entropy gave back ``subsidence`` of its amplitude). An eruption
with no ``subsided`` alert by the end of the run never subsided. The monitor, rather than the
analyzer's change-point cycles (:func:`agentropy.analysis.training.detect_cycles`), because its
``subsided`` alert already asks this question live (kind ``productive`` / ``degenerate`` /
``neutral``) with thresholds calibrated on this trainer's runs (RESULTS.md, "Monitor"): the
table shows what the user was told during training, measured over longer windows.

**Windows** (counted in logged steps, like the monitor's):

- *before*: the ``window`` steps before the onset, but none at or before the previous cycle's
  end on the same channel (the tail of one cycle is not the baseline of the next);
- *during*: onset to end (to the run's last step if the eruption never subsided);
- *after*: the ``window`` steps after the end, stopping before the next cycle's onset; for an
  eruption that never subsided, the run's last ``window`` steps (not before the onset).

Each window holds the mean of every :data:`TABLE_METRICS` series over its steps (missing steps
ignored; None if none). **Noise**: a metric's step-to-step noise is the standard deviation of
its first differences over the whole run divided by sqrt 2 (the per-step sd of a series whose
steps are independent around a slowly moving level). Not the robust MAD the detector uses: a
rate that is 0 at most steps (loops) has a MAD of 0, which would make every change
significant; a level shift adds one large difference among ~100 and barely moves the sd. A
change ``after - before`` is **significant** when ``|change| > z * noise * sqrt(1/n_before +
1/n_after)`` (the z-test of a difference of window means, as the monitor does for reward). A
degeneracy rate is *worse after* when it moved the bad way (loop or hallucination rate up,
valid-action rate down) significantly; the cycle *left degenerate patterns* when any one did.

:func:`persistence` asks the paper's question over the whole run: the rates over the
``window`` steps before the first eruption against the run's last ``window`` steps.

Everything here is pure: series in, rows out (no file I/O, no torch); the script
``experiments/cycles.py`` reads run directories and prints the table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from agentropy.monitor.config import MonitorConfig
from agentropy.monitor.detector import ENTROPY_METRICS
from agentropy.monitor.tracker import replay

__all__ = [
    "DEGENERACY",
    "TABLE_METRICS",
    "CycleRow",
    "CycleTableConfig",
    "Persistence",
    "WindowChange",
    "cycle_table",
    "persistence",
    "step_noise",
]

#: Degeneracy rates (the monitor's evidence names) and the direction that is worse (+1: up).
#: ``loop_rate`` is the duplication rate (episodes with a repeated call or a self-repeating
#: turn), ``hallucination_rate`` hallucinated calls or values, ``valid_action_rate`` parsed
#: actions (:mod:`agentropy.monitor.rates`).
DEGENERACY: dict[str, int] = {"loop_rate": 1, "hallucination_rate": 1, "valid_action_rate": -1}
#: Metrics averaged over each window: reward first, then the degeneracy rates, then the rest.
TABLE_METRICS: tuple[str, ...] = ("reward", *DEGENERACY, "failure_rate", "length")

CycleKind = Literal["productive", "degenerate", "neutral", "never_subsided"]


@dataclass(frozen=True, slots=True)
class CycleTableConfig:
    """Windows and significance of the per-cycle table (module docstring)."""

    window: int = 10
    """Logged steps in the before and after windows. Longer than the monitor's own (5 before,
    3 after): the question is what persists, not what the next step shows."""
    z: float = 2.0
    """Significance of a change between window means, in standard errors (the monitor's
    ``reward_z``)."""
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    """Thresholds of the detector whose cycles are tabulated (default: the live monitor's)."""

    def __post_init__(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(
                f"CycleTableConfig.window must be an integer >= 1, got {self.window!r}"
            )
        if not (isinstance(self.z, int | float) and math.isfinite(self.z) and self.z >= 0):
            raise ValueError(f"CycleTableConfig.z must be a finite number >= 0, got {self.z!r}")


@dataclass(frozen=True, slots=True)
class WindowChange:
    """One metric before vs after: the two window means, the change and whether it is real."""

    before: float | None
    after: float | None
    change: float | None
    """``after - before`` (None if either is missing)."""
    threshold: float | None
    """``z * noise * sqrt(1/n_before + 1/n_after)``: the smallest significant change."""
    significant: bool
    worse: bool
    """For a degeneracy rate: moved the bad way significantly (False for other metrics)."""


@dataclass(frozen=True, slots=True)
class CycleRow:
    """One eruption on one channel: where it was, what the monitor called it, before vs after."""

    channel: str
    """Entropy channel (``entropy`` or ``entropy_<phase>``)."""
    onset_step: int
    alert_step: int
    """Step at which the monitor confirmed the eruption."""
    peak_step: int
    level: float | None
    """Pre-eruption level the monitor froze at the onset, nats."""
    peak: float
    """Largest entropy from onset to end, nats."""
    end_step: int | None
    """Step the entropy subsided at (None: never)."""
    kind: CycleKind
    """The monitor's ``subsided`` kind, or ``never_subsided``."""
    diverged: bool
    """The monitor raised ``divergence`` during this eruption."""
    steps_before: tuple[int, int] | None
    """First and last step of the before window (None: empty)."""
    steps_after: tuple[int, int] | None
    before: dict[str, float | None]
    during: dict[str, float | None]
    after: dict[str, float | None]
    changes: dict[str, WindowChange]
    """Per :data:`TABLE_METRICS` metric, before vs after."""
    degenerate_after: bool
    """Some degeneracy rate is significantly worse after than before."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (NaN-free)."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Persistence:
    """The run's first and last windows: what training left behind across all its cycles."""

    steps_before: tuple[int, int] | None
    """Window before the first eruption (the run's first ``window`` steps if none erupted)."""
    steps_after: tuple[int, int] | None
    """The run's last ``window`` steps."""
    changes: dict[str, WindowChange]
    degenerate_after: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (NaN-free)."""
        return asdict(self)


# ------------------------------------------------------------------------------------ helpers


def _arrays(series: Mapping[str, Sequence[float | None]]) -> dict[str, np.ndarray]:
    """Float arrays with NaN for missing values, for the metrics present."""
    out = {}
    for m, vals in series.items():
        if m == "step":
            continue
        out[m] = np.asarray([np.nan if v is None else float(v) for v in vals], np.float64)
    return out


def step_noise(values: np.ndarray) -> float:
    """Step-to-step noise of a series (module docstring): sd of its first differences over
    the logged steps, / sqrt 2; 0 with fewer than 3 values. NaN steps are skipped."""
    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    if v.shape[0] < 3:
        return 0.0
    return float(np.std(np.diff(v), ddof=1) / math.sqrt(2.0))


def _window(x: np.ndarray, lo: int, hi: int) -> tuple[float | None, int]:
    """Mean and count of the non-NaN values at indices ``lo .. hi - 1``."""
    w = x[max(lo, 0) : max(hi, 0)]
    w = w[~np.isnan(w)]
    return (float(w.mean()), int(w.shape[0])) if w.shape[0] else (None, 0)


def _change(
    metric: str,
    x: np.ndarray,
    noise: float,
    before: tuple[int, int],
    after: tuple[int, int],
    z: float,
) -> WindowChange:
    b, nb = _window(x, *before)
    a, na = _window(x, *after)
    if b is None or a is None:
        return WindowChange(b, a, None, None, significant=False, worse=False)
    change = a - b
    thr = z * noise * math.sqrt(1.0 / nb + 1.0 / na)
    significant = abs(change) > thr
    worse = significant and DEGENERACY.get(metric, 0) * change > 0
    return WindowChange(b, a, change, thr, significant=significant, worse=worse)


def _span(steps: np.ndarray, lo: int, hi: int) -> tuple[int, int] | None:
    lo, hi = max(lo, 0), min(hi, steps.shape[0])
    return (int(steps[lo]), int(steps[hi - 1])) if hi > lo else None


def _changes(
    arrays: dict[str, np.ndarray],
    noise: dict[str, float],
    before: tuple[int, int],
    after: tuple[int, int],
    z: float,
) -> dict[str, WindowChange]:
    return {
        m: _change(m, arrays[m], noise[m], before, after, z) for m in TABLE_METRICS if m in arrays
    }


# ------------------------------------------------------------------------------------ table


def cycle_table(
    series: Mapping[str, Sequence[float | None]],
    config: CycleTableConfig | None = None,
    *,
    channels: Sequence[str] = ("entropy",),
) -> list[CycleRow]:
    """The per-cycle table of one run (module docstring), rows in onset order per channel.

    ``series`` is column-wise like :func:`~agentropy.monitor.tracker.replay`'s input: ``step``
    (increasing ints) plus any of :data:`~agentropy.monitor.METRICS` as equal-length
    sequences (None or NaN: not logged that step). ``channels`` are the entropy channels whose
    eruptions are tabulated; one absent from ``series`` gives no rows.
    """
    config = config if config is not None else CycleTableConfig()
    bad = [c for c in channels if c not in ENTROPY_METRICS]
    if bad:
        raise ValueError(f"unknown entropy channels {bad}; choose from {list(ENTROPY_METRICS)}")
    steps = np.asarray(list(series.get("step") or []), np.int64)
    n = steps.shape[0]
    arrays = _arrays(series)
    lengths = {m: a.shape[0] for m, a in arrays.items() if a.shape[0] != n}
    if lengths:
        raise ValueError(f"series lengths differ from step ({n}): {lengths}")
    if n and np.any(np.diff(steps) <= 0):
        raise ValueError("steps must be strictly increasing")
    noise = {m: step_noise(a) for m, a in arrays.items()}
    index = {int(s): i for i, s in enumerate(steps)}
    alerts = replay(series, config.monitor)
    w = config.window

    rows: list[CycleRow] = []
    for channel in channels:
        if channel not in arrays:
            continue
        # pair each eruption with the subsided alert that carries its onset step
        opened: list[dict[str, Any]] = []
        for a in alerts:
            if a.metric != channel:
                continue
            if a.name == "eruption":
                opened.append({"onset": int(a.evidence["onset_step"]), "alert": a.step,
                               "level": a.evidence.get("level"), "end": None, "kind": None,
                               "diverged": False})  # fmt: skip
            elif a.name == "divergence" and opened:
                opened[-1]["diverged"] = True
            elif a.name == "subsided" and opened:
                onset = a.evidence["onset_step"]
                cyc = next((c for c in reversed(opened) if c["onset"] == onset), None)
                if cyc is not None:
                    cyc["end"], cyc["kind"] = int(a.evidence["end_step"]), a.kind
        ent = arrays[channel]
        prev_end = -1  # index of the previous cycle's end on this channel
        for k, cyc in enumerate(opened):
            on = index[cyc["onset"]]
            end = None if cyc["end"] is None else index[cyc["end"]]
            nxt = index[opened[k + 1]["onset"]] if k + 1 < len(opened) else n
            before = (max(on - w, prev_end + 1), on)
            if end is None:
                during = (on, n)
                after = (max(on, n - w), n)
            else:
                during = (on, end + 1)
                after = (end + 1, min(end + 1 + w, nxt))
            seg = ent[during[0] : during[1]]
            peak_i = during[0] + int(np.nanargmax(seg)) if np.any(~np.isnan(seg)) else on
            changes = _changes(arrays, noise, before, after, config.z)
            rows.append(
                CycleRow(
                    channel=channel,
                    onset_step=cyc["onset"],
                    alert_step=cyc["alert"],
                    peak_step=int(steps[peak_i]),
                    level=cyc["level"],
                    peak=float(ent[peak_i]),
                    end_step=cyc["end"],
                    kind=cyc["kind"] if cyc["kind"] is not None else "never_subsided",
                    diverged=cyc["diverged"],
                    steps_before=_span(steps, *before),
                    steps_after=_span(steps, *after),
                    before={
                        m: _window(arrays[m], *before)[0] for m in TABLE_METRICS if m in arrays
                    },
                    during={
                        m: _window(arrays[m], *during)[0] for m in TABLE_METRICS if m in arrays
                    },
                    after={m: _window(arrays[m], *after)[0] for m in TABLE_METRICS if m in arrays},
                    changes=changes,
                    degenerate_after=any(c.worse for c in changes.values()),
                )
            )
            prev_end = end if end is not None else n
    return rows


def persistence(
    series: Mapping[str, Sequence[float | None]],
    rows: Sequence[CycleRow],
    config: CycleTableConfig | None = None,
) -> Persistence:
    """Rates before the first eruption in ``rows`` vs the run's last ``window`` steps: did
    anything the cycles left behind accumulate (the paper's claim)? With no cycle, the run's
    first ``window`` steps against its last (the background drift of training)."""
    config = config if config is not None else CycleTableConfig()
    steps = np.asarray(list(series.get("step") or []), np.int64)
    n = steps.shape[0]
    arrays = _arrays(series)
    noise = {m: step_noise(a) for m, a in arrays.items()}
    w = config.window
    if rows:
        first = int(np.searchsorted(steps, min(r.onset_step for r in rows)))
        before = (max(first - w, 0), first)
    else:
        before = (0, min(w, n))
    after = (max(n - w, before[1]), n)
    changes = _changes(arrays, noise, before, after, config.z)
    return Persistence(
        steps_before=_span(steps, *before),
        steps_after=_span(steps, *after),
        changes=changes,
        degenerate_after=any(c.worse for c in changes.values()),
    )
