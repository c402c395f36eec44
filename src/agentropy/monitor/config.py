"""Thresholds of the training-run monitor: :class:`MonitorConfig`, one frozen dataclass.

Each field is a documented, validated parameter of a rule described in
:mod:`agentropy.monitor.detector`; the defaults come from measurements (the planted-pattern
benchmark ``benchmarks/bench_monitor.py`` and real runs of our trainer, RESULTS.md "Monitor").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["MonitorConfig"]


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    """Thresholds of the detector (its rules: :mod:`agentropy.monitor.detector`).

    Defaults come from the planted-pattern benchmark (``benchmarks/bench_monitor.py``, 20 seeds
    x amplitudes +50/100/200% x relative noise 2/5/10%, per pattern): no alert on 180 quiet
    series with Gaussian noise (6 with Student-t noise), precision 1.0 for eruption,
    divergence, collapse and productive subsidence, and eruption recall 1.0 except +50% rises
    at 10% noise (0.58 Gaussian, 0.88 Student-t: the rise is then ~5 noise sd)."""

    window: int = 40
    """Quiet steps of history per channel for the noise estimate (and evidence history): the
    MAD of 20 differences underestimated the noise often enough for false eruptions."""
    level_window: int = 5
    """Latest quiet steps whose median is the level (short, so a slow descent does not lag)."""
    min_history: int = 8
    """Earlier values needed before the noise estimate is trusted (warm-up before)."""
    rise_sigma: float = 3.0
    """Eruption: rise above the level, in noise standard deviations (each of the ``confirm``
    steps). With two confirming steps, 3 gave no false eruption on the quiet and planted series
    (Gaussian or Student-t noise) while 5 missed a third of +50% eruptions at 10% noise."""
    rise_rel: float = 0.2
    """Eruption: rise above the level, as a fraction of the level (a +20% jump at least)."""
    warmup_rise_rel: float = 0.5
    """Eruption during warm-up (noise unknown): rise as a fraction of the level."""
    confirm: int = 2
    """Consecutive steps above the threshold before an eruption is declared (its onset is the
    first): one step above is as often a heavy-tailed outlier as an eruption (with 1, Student-t
    noise gave 138 false eruptions on 180 quiet series)."""
    min_rise: float = 0.02
    """Eruption: smallest rise, nats (keeps a collapsed channel's jitter from erupting)."""
    subsidence: float = 0.75
    """Fraction of the amplitude the entropy must give back to have subsided (the analyzer's)."""
    horizon: int = 10
    """Steps an eruption may last with degrading evidence before ``divergence``."""
    before_window: int = 5
    """Steps before the onset whose evidence is the 'before' of an eruption."""
    after_window: int = 3
    """Steps after subsidence (and latest steps during an eruption) whose evidence is 'after'."""
    reward_z: float = 2.0
    """z of a significant reward change (difference of window means over its noise)."""
    reward_margin: float = 0.0
    """Smallest reward change that counts, in reward units (on top of the z-test)."""
    reward_rel: float = 0.1
    """Smallest reward change that counts, as a fraction of the pre-eruption reward's magnitude
    (a statistically clear 2% dip over a long eruption is not a divergence)."""
    rate_margin: float = 0.05
    """Rise of the loop / hallucination rate (or fall of the valid-action rate) that counts."""
    severe_drop: float = 0.5
    """Share of the pre-eruption reward lost that makes a divergence immediate (judged on the
    mean of at least ``severe_batches`` rewards since the onset)."""
    severe_batches: int = 3
    """Rewards since the onset (batches, the latest ``after_window`` of them averaged) that the
    ``severe_drop`` shortcut needs; fewer, and a falling reward waits for more steps or the
    ``horizon``. A reward is a success rate over a few dozen rollouts (binomial sd ~0.07 at
    0.2 and 32 rollouts), as large as the severe line itself: on a healthy 50-step run of the
    shipped agent one batch with 1 success in 32 (0.031 against ~0.19 around it) took the
    two-value mean after an answer-phase onset 55% below the reward before it and raised a
    false divergence; over three batches it was 34%. The real lr 3e-4 blow-up still diverges
    2 steps after its onset (three batches: 61% lost). On planted series with 32-rollout
    rewards (``benchmarks/bench_monitor.py``, RESULTS.md "Monitor"), 3 cut the false
    divergences of channels that erupt by themselves from 11 to 3 in 200 quiet series and
    kept the median delay of planted blow-ups, at the cost of 6 of their 54 detections on
    those noisy channels (none on a clean one); leaving each window's lowest reward out
    instead halved the recall there.
    1: the first rule (any single reward counts). Degeneracy rates keep the immediate
    ``severe_rate`` test: their batch noise (sd <= 0.06 on healthy runs) is small against it.
    At most ``after_window`` (the mean never holds more)."""
    severe_rate: float = 0.3
    """Worsening of a degeneracy rate (absolute: a loop or hallucination rate up, or the
    valid-action rate down, by this much) that makes a divergence immediate, as
    ``severe_drop`` does for reward: a policy whose tool calls stop parsing is broken even
    when it never earned reward (measured: lr 3e-4 on the embedded agent took the valid-action
    rate from 0.63 to 0.09 in one step with reward 0 throughout; RESULTS.md, "Monitor"). The
    planted ``degenerate`` pattern (+0.2 loop rate) stays below it."""
    collapse_fraction: float = 0.25
    """Collapse floor as a fraction of the channel's reference (early) level."""
    collapse_floor: float = 0.05
    """Collapse floor, nats (the larger of the two applies)."""
    collapse_rearm: float = 1.5
    """A fired collapse re-arms once the collapse level (mean of the latest
    ``collapse_window`` values; during an eruption, the value) exceeds this multiple of the
    floor: hysteresis, so a channel hovering at the floor does not alert again and again."""
    collapse_window: int = 7
    """Latest values whose mean is the channel's collapse *level*, held against the floor
    (persistence: one step at 0 moves the level by a seventh of the channel's value). Per-step
    means of a phase with few tokens are noisy: on two healthy 50-step runs of the shipped
    agent the answer phase read 0.01-0.31 nats around 0.12 and the act phase dipped to 0.049,
    and the first rule (the latest value alone against the 0.05-nat floor) raised 9 false
    collapses there. On a grid (window 1-8, z 0-3; ``experiments/collapse_calibration.py``)
    7 is the shortest window that, with ``collapse_z`` = 2.5, raises at most 1 false collapse
    in 50 quiet 120-step series of a 0.12-nat channel with 75% gamma noise (0 at 25-50%; the
    first rule: 50, 563, 856); it raises none on the healthy runs (their level bound stays
    >= 1.6x the floor) and still catches every planted collapse, 3-4 steps after its noiseless
    curve crosses the floor (8-12 at 75% noise; the first rule: within 1, by noise). With
    <= 10% relative noise a drop to below a fifth of the floor fires at most
    ``collapse_window - 1`` steps after the crossing (tests/test_monitor_collapse.py)."""
    collapse_z: float = 2.5
    """Noise allowance of the collapse level, in standard errors: the alert needs
    ``level * (1 + collapse_z * rel / sqrt(collapse_window)) < floor``, ``rel`` the channel's
    relative step-to-step noise (:func:`~agentropy.monitor.detector.relative_noise`: robust,
    and the same at any level, so a collapsing channel keeps it while its level falls). A
    channel whose noise is as large as its level (the answer phase: ``rel`` 0.7-1.0) must
    average below ~0.55x the floor; a clean one (``rel`` 0.05) below ~0.95x. 0: the level
    alone decides (window 7: 1 false collapse on the healthy runs, 43 on the 75% series)."""
    trend_window: int = 5
    """Updates over which a collapsing channel's level must have fallen ('still falling'), and
    latest rewards whose least-squares slope must not be rising ('flat')."""

    def __post_init__(self) -> None:
        for name in ("window", "level_window", "min_history", "horizon", "before_window"):
            _check_int(self, name, 1)
        _check_int(self, "after_window", 1)
        _check_int(self, "confirm", 1)
        _check_int(self, "trend_window", 2)
        _check_int(self, "collapse_window", 1)
        _check_int(self, "severe_batches", 1)
        if self.severe_batches > self.after_window:
            raise ValueError(
                f"MonitorConfig.severe_batches ({self.severe_batches}) must be <= after_window "
                f"({self.after_window}): the reward mean holds at most after_window values"
            )
        if self.min_history < 3:
            raise ValueError(f"MonitorConfig.min_history must be >= 3, got {self.min_history}")
        for name in ("level_window", "before_window", "trend_window", "collapse_window"):
            if getattr(self, name) > self.window:
                raise ValueError(
                    f"MonitorConfig.{name} ({getattr(self, name)}) must be <= window "
                    f"({self.window}); raise window"
                )
        if self.collapse_window + self.trend_window > self.window:
            raise ValueError(
                f"MonitorConfig.collapse_window + trend_window ({self.collapse_window} + "
                f"{self.trend_window}) must be <= window ({self.window}): the collapse level "
                "is compared with the level trend_window updates earlier; raise window"
            )
        for name in (
            "rise_sigma",
            "rise_rel",
            "warmup_rise_rel",
            "min_rise",
            "reward_z",
            "collapse_z",
        ):
            _check_nonneg(self, name)
        for name in ("reward_margin", "reward_rel", "rate_margin", "collapse_floor", "severe_rate"):
            _check_nonneg(self, name)
        for name in ("subsidence", "severe_drop", "collapse_fraction"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise ValueError(f"MonitorConfig.{name} must be in (0, 1], got {v!r}")
        if not self.collapse_rearm >= 1.0:
            raise ValueError(
                f"MonitorConfig.collapse_rearm must be >= 1, got {self.collapse_rearm}"
            )


def _check_int(cfg: MonitorConfig, name: str, lo: int) -> None:
    v = getattr(cfg, name)
    if not (isinstance(v, int) and not isinstance(v, bool) and v >= lo):
        raise ValueError(f"MonitorConfig.{name} must be an integer >= {lo} (steps), got {v!r}")


def _check_nonneg(cfg: MonitorConfig, name: str) -> None:
    v = getattr(cfg, name)
    if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
        raise ValueError(f"MonitorConfig.{name} must be a finite number >= 0, got {v!r}")
