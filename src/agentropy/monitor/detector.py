"""The streaming training-run detector: one ``update`` per training step, typed alerts out.

A pure pair in the style of optax (like :mod:`agentropy.control.temperature`):
``Monitor(config).init() -> MonitorState`` and
``Monitor(config).update(state, metrics, step=...) -> (alerts, MonitorState)``. The state is an
immutable NamedTuple of plain Python values, so a run is reproducible from ``(config, state)``;
:func:`state_dict` / :func:`load_state` turn it into JSON (NaN-free) for checkpoints. The detector
needs no torch or numpy arrays: a handful of floats per step, microseconds per update.

**Inputs** per step (:data:`METRICS`, each a float or ``None`` when the step did not log it; the
names are those of :func:`agentropy.analysis.training.step_series`): model entropy overall and
per phase (``entropy``, ``entropy_plan`` ... ``entropy_answer``, nats), ``reward``, ``length``
(tokens per episode), ``loop_rate`` (duplication), ``hallucination_rate``, ``valid_action_rate``
(share of tool calls that parse), ``failure_rate`` (failed tool calls / calls). Map a
framework's own tag names onto these with :mod:`agentropy.trace.importers.scalars`.

**Entropy channels.** Each entropy metric present is tracked on its own (so ``entropy_recover``
can erupt while ``entropy_plan`` stays calm); reward and the rates are shared evidence. A channel
is *quiet* or *erupting*. While quiet it keeps its last ``window`` values.

- ``eruption`` (onset): on a quiet channel with at least one earlier value, the *level* ``L`` is
  the median of its last ``level_window`` values and ``sigma`` the robust noise of its history
  (MAD of first differences / 0.6745 / sqrt 2, as in :func:`agentropy.analysis.training.noise_sigma`;
  differences remove a slow descent). A value ``H`` is *above* when
  ``H - L > max(min_rise, rise_sigma * sigma, rise_rel * L)``; with fewer than ``min_history``
  earlier values the noise is unknown and the threshold is ``max(min_rise, warmup_rise_rel * L)``
  (a run that blows up at step 2 is still caught). ``confirm`` consecutive values above (``L``
  and the threshold frozen at the first) declare the eruption, alerted at the confirming step
  with ``onset_step`` the first; a lone value above is an outlier and joins the history. At
  onset the channel freezes ``L`` and records the evidence before it: the mean of the last
  ``before_window`` values of each evidence metric. After a subsidence the channel re-arms only
  once a value is back within the threshold (the tail of a large eruption is not a new one).
- ``subsided``: an erupting channel whose value is back to ``L + (1 - subsidence) * (peak - L)``
  (it gave back ``subsidence`` of the amplitude; the analyzer's definition) is quiet again; after
  ``after_window`` more steps (fewer if a new eruption starts first) the alert compares evidence
  after with before and says its ``kind``: ``degenerate`` if the loop or hallucination rate rose,
  or the valid-action rate fell, by more than ``rate_margin`` (the paper behind "cyclical entropy
  eruption", arXiv 2605.27954, reports such patterns persist across cycles, so this wins);
  ``productive`` if reward rose significantly; ``neutral`` otherwise.
- ``divergence``: an erupting channel whose evidence is degrading (reward fell significantly over
  the last ``after_window`` steps versus before the onset, or a degeneracy rate worsened) and
  either ``horizon`` steps have passed without subsidence, or the degradation is *severe*
  (reward lost ``severe_drop`` of its pre-eruption value, judged on the mean of at least
  ``severe_batches`` rewards since the onset, or a degeneracy rate worsened by
  ``severe_rate``): a blow-up that destroys the reward, or the tool calls, within a few steps
  is flagged then, not ``horizon`` steps later. A reward is a success rate over a few dozen
  rollouts, so one batch far below the rest is binomial noise, not a blow-up: three batches
  must carry the loss.
  With no evidence metric at all, ``horizon`` steps without subsidence suffice. Once per eruption.
- ``collapse``: a quiet channel (with a reference level: the median of its first
  ``min_history`` values) whose *collapse level* ``C``, the mean of its last
  ``collapse_window`` values, is below the floor ``F = max(collapse_floor, collapse_fraction *
  reference)`` by more than its noise, ``C * (1 + collapse_z * rel / sqrt(collapse_window)) <
  F`` (``rel`` the channel's robust relative noise, :func:`relative_noise`, which a falling
  level leaves unchanged); whose level is lower than it was ``trend_window`` updates earlier
  (still falling: the level, not the noisy latest values); and whose reward is not rising
  significantly over the last ``trend_window`` steps. A phase with ~100 tokens per step has
  per-step means that scatter far (the shipped agent's answer phase reads 0.01-0.31 nats
  around 0.12): single steps below the floor are sampling noise, a level that stays below it
  is a collapse. A drop to a constant is caught like a noisy decay (the level keeps falling
  until the window holds only collapsed values). Fires once, and re-arms when the level (or,
  during an eruption, the value) climbs above ``collapse_rearm`` times the floor. A channel
  whose reference is already within that band (``reference <= collapse_rearm * F``: the
  session-7 agent's act and answer phases sit at 0.03 and 0.008 nats from step 1) starts
  disarmed, as if it had collapsed: it has no height to collapse from, and a dip of its level
  is noise (it raised 2 false collapses in 25 healthy steps); it arms once its level climbs
  above ``collapse_rearm * F`` like a re-armed channel.
- ``nonfinite``: any metric that is NaN or infinite (once, until it is finite again); the value
  is then treated as missing.

Windows and the horizon count *updates* (logged steps), not step numbers: a framework that
logs every ``k`` optimizer steps gets horizons ``k`` times longer in optimizer steps, and the
statistics always average the same number of values.

"Significant" for reward is a z-test on the difference of two window means:
``|after - before| > max(reward_margin, reward_rel * |before|,
reward_z * sigma_r * sqrt(1/n_before + 1/n_after))``, ``sigma_r`` the robust noise of the reward
history (0 until three rewards are known).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NamedTuple

from agentropy.monitor.config import MonitorConfig
from agentropy.trace import PHASES

__all__ = [
    "ALERT_NAMES",
    "ENTROPY_METRICS",
    "EVIDENCE_METRICS",
    "METRICS",
    "Alert",
    "ChannelState",
    "Monitor",
    "MonitorConfig",
    "MonitorState",
    "load_state",
    "state_dict",
]

AlertName = Literal["eruption", "subsided", "divergence", "collapse", "nonfinite"]
#: Alert names, in the order a cycle produces them.
ALERT_NAMES: tuple[str, ...] = ("eruption", "subsided", "divergence", "collapse", "nonfinite")
SubsidedKind = Literal["productive", "degenerate", "neutral"]

#: Entropy series tracked as channels: overall, then one per phase.
ENTROPY_METRICS: tuple[str, ...] = ("entropy", *(f"entropy_{p}" for p in PHASES))
#: Shared evidence: reward, length and the rates that tell a productive eruption from a bad one.
EVIDENCE_METRICS: tuple[str, ...] = (
    "reward",
    "length",
    "loop_rate",
    "hallucination_rate",
    "valid_action_rate",
    "failure_rate",
)
#: Every metric :meth:`Monitor.update` accepts.
METRICS: tuple[str, ...] = ENTROPY_METRICS + EVIDENCE_METRICS

#: Degeneracy rates and the direction that is worse (+1: rising is worse).
_DEGENERACY: tuple[tuple[str, int], ...] = (
    ("loop_rate", 1),
    ("hallucination_rate", 1),
    ("valid_action_rate", -1),
)


# ------------------------------------------------------------------------------------ alerts


@dataclass(frozen=True, slots=True)
class Alert:
    """One warning: what fired, where, on which numbers, and what to do about it."""

    name: AlertName
    """``eruption`` | ``subsided`` | ``divergence`` | ``collapse`` | ``nonfinite``."""
    step: int
    """Training step at which the alert fired (for ``subsided``: after its after-window)."""
    metric: str
    """The metric that fired (an entropy channel, or any metric for ``nonfinite``)."""
    evidence: dict[str, Any] = field(default_factory=dict)
    """Values and thresholds the decision used (floats rounded to 6 significant digits)."""
    suggestion: str = ""
    """One line: what the user should check or do."""
    kind: SubsidedKind | None = None
    """For ``subsided``: ``productive`` | ``degenerate`` | ``neutral``; otherwise None."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (keys: name, step, metric, kind, evidence, suggestion)."""
        d = asdict(self)
        return {k: d[k] for k in ("name", "step", "metric", "kind", "evidence", "suggestion")}


def _r(x: float | None) -> float | None:
    return None if x is None else float(f"{x:.6g}")


# ------------------------------------------------------------------------------------ states


class ChannelState(NamedTuple):
    """State of one entropy channel."""

    history: tuple[float, ...] = ()
    """Latest ``window`` values while quiet (oldest first)."""
    reference: float | None = None
    """Median of the channel's first ``min_history`` values (the collapse reference)."""
    erupting: bool = False
    onset_step: int | None = None
    level: float | None = None
    """Frozen pre-eruption level, nats."""
    threshold: float | None = None
    """Rise threshold at onset, nats."""
    peak: float | None = None
    peak_step: int | None = None
    before: tuple[tuple[str, float, int], ...] = ()
    """(metric, mean, count) of each evidence metric over ``before_window`` steps before onset."""
    diverged: bool = False
    """``divergence`` already fired for the current eruption."""
    elapsed: int = 0
    """Updates of this channel since the onset (the onset's own update is 0)."""
    settled: int = 0
    """Updates of this channel since it subsided, that one included (0: not settling)."""
    settle_end: int | None = None
    """Step the channel subsided at while its ``subsided`` alert waits for the after-window."""
    settle_onset: int | None = None
    settle_peak: float | None = None
    settle_level: float | None = None
    settle_before: tuple[tuple[str, float, int], ...] = ()
    collapsed: bool = False
    """``collapse`` fired, or the channel's reference was already at its floor (within
    ``collapse_rearm`` times it), and the level has not since climbed above that band."""
    pending: tuple[tuple[int, float], ...] = ()
    """(step, value) of the latest steps above the rise threshold, awaiting ``confirm``."""
    pending_level: float | None = None
    pending_threshold: float | None = None
    pending_sigma: float | None = None
    armed: bool = True
    """A new eruption may start (False from a subsidence until the value is back within the
    rise threshold of the level: the tail of a large eruption is not a second one)."""


class MonitorState(NamedTuple):
    """Whole detector state: last step, evidence history, one :class:`ChannelState` per channel."""

    step: int | None = None
    """Last step seen (updates must come with increasing steps)."""
    evidence: tuple[tuple[str, tuple[tuple[int, float], ...]], ...] = ()
    """Per evidence metric, its latest ``window`` (step, value) pairs."""
    channels: tuple[tuple[str, ChannelState], ...] = ()
    nonfinite: tuple[str, ...] = ()
    """Metrics whose latest value was non-finite (their alert already fired)."""


# ------------------------------------------------------------------------------------ helpers


def noise_sigma(values: tuple[float, ...] | list[float]) -> float:
    """Robust noise standard deviation from first differences: MAD / 0.6745 / sqrt 2 (0 if < 3)."""
    if len(values) < 3:
        return 0.0
    d = [b - a for a, b in itertools.pairwise(values)]
    med = statistics.median(d)
    mad = statistics.median(abs(x - med) for x in d)
    return mad / 0.6745 / math.sqrt(2.0)


def relative_noise(values: tuple[float, ...] | list[float]) -> float:
    """Robust relative noise of a non-negative series: the noise standard deviation as a share
    of the level (0 if fewer than 3 values).

    The MAD of the symmetric relative first differences ``(b - a) / ((a + b) / 2)`` (0 when both
    are 0), / 0.6745 / sqrt 2, as :func:`noise_sigma` does with plain differences: for
    independent values with relative sd ``c`` it is ``c`` (to first order), whatever the level.
    So it survives a collapse (the level falls, the relative noise does not), a drift (removed
    by differencing) and zeros (each difference lies in [-2, 2]).
    """
    if len(values) < 3:
        return 0.0
    d = [0.0 if a + b == 0 else 2.0 * (b - a) / (a + b) for a, b in itertools.pairwise(values)]
    med = statistics.median(d)
    mad = statistics.median(abs(x - med) for x in d)
    return mad / 0.6745 / math.sqrt(2.0)


def _mean_of(values: tuple[float, ...] | list[float]) -> float:
    return sum(values) / len(values)


def _slope(values: list[float]) -> float:
    """Least-squares slope per step of equally spaced values (0 for fewer than 2)."""
    n = len(values)
    if n < 2:
        return 0.0
    xm = (n - 1) / 2.0
    ym = sum(values) / n
    num = sum((i - xm) * (v - ym) for i, v in enumerate(values))
    den = sum((i - xm) ** 2 for i in range(n))
    return num / den


def _mean(pairs: list[tuple[int, float]]) -> tuple[float, int] | None:
    if not pairs:
        return None
    return sum(v for _, v in pairs) / len(pairs), len(pairs)


# ------------------------------------------------------------------------------------ monitor


_SUGGEST = {
    "eruption": "{what} jumped {ratio:.2g}x above its level: watch reward and "
    "loop/hallucination rates; a productive eruption contracts within ~{horizon} steps.",
    "productive": "eruption contracted and reward improved: healthy exploration, nothing to do.",
    "degenerate": "eruption contracted but left more {what}: inspect samples; add a repetition "
    "or invalid-call penalty, or lower the recover temperature.",
    "neutral": "eruption contracted with no clear change in reward or degeneracy rates.",
    "divergence": "{what} has not contracted since step {onset} while {why}: lower "
    "the learning rate or entropy bonus, or roll back to a checkpoint before step {onset}.",
    "collapse": "{what} has stayed below its floor and is not recovering, with flat reward: "
    "raise the entropy target/coefficient or sampling temperature, or use clip-higher.",
    "nonfinite": "non-finite {metric}: look for overflow (exp of log-ratios, fp16 logits) and "
    "skip or roll back this step.",
}


def _what(metric: str) -> str:
    """How a suggestion names an entropy channel."""
    phase = metric.removeprefix("entropy_")
    return "model entropy" if metric == "entropy" else f"{phase}-phase entropy"


class Monitor:
    """The detector: holds only its frozen config; every bit of state is passed in and out."""

    def __init__(self, config: MonitorConfig | None = None) -> None:
        self.config = config if config is not None else MonitorConfig()

    def init(self) -> MonitorState:
        """Fresh state: no steps seen."""
        return MonitorState()

    def update(
        self, state: MonitorState, metrics: Mapping[str, float | None], *, step: int
    ) -> tuple[list[Alert], MonitorState]:
        """Feed one training step; returns the alerts it fired (maybe none) and the next state.

        ``metrics`` maps names from :data:`METRICS` to floats (``None`` or absent: not logged this
        step). ``step`` must be greater than the previous update's. Unknown names are an error
        (a typo would otherwise silently disable a check).
        """
        c = self.config
        unknown = sorted(set(metrics) - set(METRICS))
        if unknown:
            raise ValueError(f"unknown monitor metrics {unknown}; expected names from {METRICS}")
        step = int(step)
        if state.step is not None and step <= state.step:
            raise ValueError(
                f"monitor steps must increase: got step {step} after step {state.step}"
            )
        alerts: list[Alert] = []
        values: dict[str, float] = {}
        bad: list[str] = []
        for name in METRICS:
            v = metrics.get(name)
            if v is None:
                continue
            v = float(v)
            if math.isfinite(v):
                values[name] = v
                continue
            bad.append(name)
            if name not in state.nonfinite:
                alerts.append(
                    Alert("nonfinite", step, name, {"value": repr(v)},
                          _SUGGEST["nonfinite"].format(metric=name))
                )  # fmt: skip

        evidence = dict(state.evidence)
        for name in EVIDENCE_METRICS:
            if name in values:
                evidence[name] = (*evidence.get(name, ()), (step, values[name]))[-c.window :]
        new_evidence = {k: list(v) for k, v in evidence.items()}
        sigma_r = noise_sigma([v for _, v in new_evidence.get("reward", [])])

        channels = dict(state.channels)
        for name in ENTROPY_METRICS:
            if name not in values:
                continue
            ch = channels.get(name, ChannelState())
            fired, ch = self._channel(ch, name, values[name], step, new_evidence, sigma_r)
            alerts += fired
            channels[name] = ch
        new_state = MonitorState(
            step=step,
            evidence=tuple((k, tuple(v)) for k, v in evidence.items()),
            channels=tuple((k, channels[k]) for k in ENTROPY_METRICS if k in channels),
            nonfinite=tuple(bad),
        )
        return alerts, new_state

    # ---------------------------------------------------------------------------- per channel

    def _channel(
        self,
        ch: ChannelState,
        name: str,
        h: float,
        step: int,
        ev: dict[str, list[tuple[int, float]]],
        sigma_r: float,
    ) -> tuple[list[Alert], ChannelState]:
        c = self.config
        alerts: list[Alert] = []
        if ch.collapsed and ch.reference is not None:
            floor = self._collapse_floor(ch.reference)
            # an erupting channel's values are confirmed (``confirm`` steps above its level)
            # but kept out of its quiet history: the value itself says whether it came back
            back = h if ch.erupting else _mean_of((*ch.history, h)[-c.collapse_window :])
            if back > c.collapse_rearm * floor:
                ch = ch._replace(collapsed=False)
        if ch.erupting:
            ch = ch._replace(elapsed=ch.elapsed + 1)
            peak, peak_step = (h, step) if h > (ch.peak or -math.inf) else (ch.peak, ch.peak_step)
            ch = ch._replace(peak=peak, peak_step=peak_step)
            level = ch.level if ch.level is not None else 0.0
            back = level + (1.0 - c.subsidence) * ((ch.peak or level) - level)
            if h <= back:
                ch = ch._replace(
                    erupting=False, armed=False, settled=1, settle_end=step,
                    settle_onset=ch.onset_step,
                    settle_peak=ch.peak, settle_level=ch.level, settle_before=ch.before,
                    history=(*ch.history, h)[-c.window :],
                )  # fmt: skip
                return self._settle(ch, name, step, ev, sigma_r, force=False)
            if not ch.diverged:
                alert = self._divergence(ch, name, step, ev, sigma_r)
                if alert is not None:
                    alerts.append(alert)
                    ch = ch._replace(diverged=True)
            return alerts, ch

        # ---- quiet channel
        hist = ch.history
        if ch.pending:  # earlier steps above the threshold, waiting for confirmation
            level, thr = ch.pending_level or 0.0, ch.pending_threshold or 0.0
            if h - level > thr:
                pending = (*ch.pending, (step, h))
                if len(pending) >= c.confirm:
                    return self._onset(ch, name, pending, step, ev, sigma_r)
                return alerts, ch._replace(pending=pending)
            # not confirmed: an outlier; its values join the history like any other
            hist = (*hist, *(v for _, v in ch.pending))[-c.window :]
            ch = ch._replace(history=hist, pending=(), pending_level=None,
                             pending_threshold=None, pending_sigma=None)  # fmt: skip
        if hist:
            level = statistics.median(hist[-c.level_window :])
            if len(hist) >= c.min_history:
                sigma = noise_sigma(hist)
                thr = max(c.min_rise, c.rise_sigma * sigma, c.rise_rel * level)
            else:
                sigma = None
                thr = max(c.min_rise, c.warmup_rise_rel * level)
            if not ch.armed and h - level <= thr:
                ch = ch._replace(armed=True)
            elif ch.armed and h - level > thr:
                ch = ch._replace(pending_level=level, pending_threshold=thr, pending_sigma=sigma)
                if c.confirm <= 1:
                    return self._onset(ch, name, ((step, h),), step, ev, sigma_r)
                return alerts, ch._replace(pending=((step, h),))
        hist = (*hist, h)[-c.window :]
        ch = ch._replace(history=hist)
        if ch.reference is None and len(hist) >= c.min_history:
            ref = statistics.median(hist[: c.min_history])
            # a channel that starts at its floor has nothing to collapse from: disarmed
            at_floor = ref <= c.collapse_rearm * self._collapse_floor(ref)
            ch = ch._replace(reference=ref, collapsed=ch.collapsed or at_floor)
        if ch.settle_end is not None:
            ch = ch._replace(settled=ch.settled + 1)
        if ch.settle_end is not None and ch.settled >= c.after_window:
            done, ch = self._settle(ch, name, step, ev, sigma_r, force=True)
            alerts += done
        collapse = self._collapse(ch, name, h, step, ev, sigma_r)
        if collapse is not None:
            alerts.append(collapse)
            ch = ch._replace(collapsed=True)
        return alerts, ch

    def _onset(
        self,
        ch: ChannelState,
        name: str,
        pending: tuple[tuple[int, float], ...],
        step: int,
        ev: dict[str, list[tuple[int, float]]],
        sigma_r: float,
    ) -> tuple[list[Alert], ChannelState]:
        """Start an eruption confirmed at ``step``; its onset is the first step above threshold."""
        c = self.config
        alerts: list[Alert] = []
        first = pending[0][0]
        if ch.settle_end is not None:  # a new eruption before the after-window ended
            alerts, ch = self._settle(ch, name, first - 1, ev, sigma_r, force=True)
        level, thr, sigma = ch.pending_level or 0.0, ch.pending_threshold, ch.pending_sigma
        before = []
        for m in EVIDENCE_METRICS:
            got = _mean([p for p in ev.get(m, []) if p[0] < first][-c.before_window :])
            if got is not None:
                before.append((m, got[0], got[1]))
        peak_step, peak = max(pending, key=lambda p: p[1])
        h = pending[-1][1]
        ch = ch._replace(
            erupting=True, onset_step=first, level=level, threshold=thr, peak=peak,
            peak_step=peak_step, before=tuple(before), diverged=False, pending=(),
            elapsed=len(pending) - 1,
            pending_level=None, pending_threshold=None, pending_sigma=None,
        )  # fmt: skip
        ratio = h / level if level > 0 else math.inf
        alerts.append(
            Alert(
                "eruption", step, name,
                {"onset_step": first, "value": _r(h), "level": _r(level),
                 "rise": _r(h - level), "threshold": _r(thr), "sigma": _r(sigma),
                 "warmup": sigma is None, "confirm_steps": len(pending)},
                _SUGGEST["eruption"].format(what=_what(name), ratio=ratio, horizon=c.horizon),
            )
        )  # fmt: skip
        if step > first:  # the confirmation step may already show the reward collapsing
            div = self._divergence(ch, name, step, ev, sigma_r)
            if div is not None:
                alerts.append(div)
                ch = ch._replace(diverged=True)
        return alerts, ch

    def _reward_change(
        self,
        before: dict[str, tuple[float, int]],
        after: dict[str, tuple[float, int]],
        sigma_r: float,
    ) -> tuple[float | None, float | None]:
        """(after - before reward difference, its significance threshold), None if unknown."""
        c = self.config
        if "reward" not in before or "reward" not in after:
            return None, None
        (b, nb), (a, na) = before["reward"], after["reward"]
        thr = max(
            c.reward_margin,
            c.reward_rel * abs(b),
            c.reward_z * sigma_r * math.sqrt(1.0 / nb + 1.0 / na),
        )
        return a - b, thr

    def _after(
        self, ev: dict[str, list[tuple[int, float]]], lo: int, hi: int, last: int | None = None
    ) -> dict[str, tuple[float, int]]:
        """Mean and count per evidence metric of its values at steps ``lo..hi`` (the ``last``
        of them, if given)."""
        out = {}
        for m in EVIDENCE_METRICS:
            got = _mean([p for p in ev.get(m, []) if lo <= p[0] <= hi][-(last or 0) :])
            if got is not None:
                out[m] = got
        return out

    def _worse_rates(
        self, before: dict[str, tuple[float, int]], after: dict[str, tuple[float, int]]
    ) -> list[tuple[str, float]]:
        """Degeneracy rates that worsened by more than ``rate_margin``: (metric, worsening)."""
        out = []
        for m, sign in _DEGENERACY:
            if m in before and m in after:
                worse = sign * (after[m][0] - before[m][0])
                if worse > self.config.rate_margin:
                    out.append((m, worse))
        return out

    def _settle(
        self,
        ch: ChannelState,
        name: str,
        step: int,
        ev: dict[str, list[tuple[int, float]]],
        sigma_r: float,
        *,
        force: bool,
    ) -> tuple[list[Alert], ChannelState]:
        c = self.config
        end = ch.settle_end if ch.settle_end is not None else step
        if not force and ch.settled < c.after_window:
            return [], ch
        before = {m: (v, n) for m, v, n in ch.settle_before}
        after = self._after(ev, end, step)
        worse = self._worse_rates(before, after)
        delta, thr = self._reward_change(before, after, sigma_r)
        if worse:
            kind: SubsidedKind = "degenerate"
        elif delta is not None and thr is not None and delta > thr:
            kind = "productive"
        else:
            kind = "neutral"
        evidence: dict[str, Any] = {
            "onset_step": ch.settle_onset,
            "end_step": end,
            "level": _r(ch.settle_level),
            "peak": _r(ch.settle_peak),
            "reward_change": _r(delta),
            "reward_threshold": _r(thr),
            "rate_margin": c.rate_margin,
        }
        for m in EVIDENCE_METRICS:
            evidence[f"{m}_before"] = _r(before[m][0]) if m in before else None
            evidence[f"{m}_after"] = _r(after[m][0]) if m in after else None
        what = " and ".join(m.removesuffix("_rate") for m, _ in worse) or ""
        text = _SUGGEST[kind].format(what=what.replace("valid_action", "invalid calls"))
        ch = ch._replace(
            settled=0, settle_end=None, settle_onset=None, settle_peak=None, settle_level=None,
            settle_before=(),
        )  # fmt: skip
        return [Alert("subsided", step, name, evidence, text, kind)], ch

    def _divergence(
        self,
        ch: ChannelState,
        name: str,
        step: int,
        ev: dict[str, list[tuple[int, float]]],
        sigma_r: float,
    ) -> Alert | None:
        c = self.config
        onset = ch.onset_step if ch.onset_step is not None else step
        elapsed = ch.elapsed
        before = {m: (v, n) for m, v, n in ch.before}
        after = self._after(ev, onset, step, last=c.after_window)
        worse = self._worse_rates(before, after)
        delta, thr = self._reward_change(before, after, sigma_r)
        fell = delta is not None and thr is not None and -delta > thr
        severe = False
        if fell and delta is not None and after["reward"][1] >= c.severe_batches:
            b = before["reward"][0]
            severe = b > 0 and -delta >= c.severe_drop * b
        severe = severe or any(w >= c.severe_rate for _, w in worse)
        has_evidence = bool(before) or bool(after)
        if fell or worse:
            if not (severe or elapsed >= c.horizon):
                return None
        elif has_evidence or elapsed < c.horizon:
            return None
        why = []
        if fell:
            why.append("reward falls")
        why += [f"{m} rises" if s > 0 else f"{m} falls" for m, s in _DEGENERACY
                if m in dict(worse)]  # fmt: skip
        evidence: dict[str, Any] = {
            "onset_step": onset,
            "updates_since_onset": elapsed,
            "horizon": c.horizon,
            "severe": severe,
            "level": _r(ch.level),
            "peak": _r(ch.peak),
            "reward_change": _r(delta),
            "reward_threshold": _r(thr),
            "reward_batches_after": after["reward"][1] if "reward" in after else None,
        }
        for m in EVIDENCE_METRICS:
            evidence[f"{m}_before"] = _r(before[m][0]) if m in before else None
            evidence[f"{m}_after"] = _r(after[m][0]) if m in after else None
        reason = " and ".join(why) or "no reward or rate metric is logged"
        return Alert(
            "divergence", step, name, evidence,
            _SUGGEST["divergence"].format(what=_what(name), onset=onset, why=reason),
        )  # fmt: skip

    def _collapse_floor(self, reference: float) -> float:
        """The collapse floor ``F`` of a channel with this reference level, nats."""
        c = self.config
        return max(c.collapse_floor, c.collapse_fraction * reference)

    def _collapse(
        self,
        ch: ChannelState,
        name: str,
        h: float,
        step: int,
        ev: dict[str, list[tuple[int, float]]],
        sigma_r: float,
    ) -> Alert | None:
        c = self.config
        if ch.collapsed or ch.reference is None:
            return None
        floor = self._collapse_floor(ch.reference)
        m, k = c.collapse_window, c.trend_window
        if len(ch.history) < m + k:
            return None
        level = _mean_of(ch.history[-m:])
        if level >= floor:  # the bound is >= the level: skip the noise estimate
            return None
        rel = relative_noise(ch.history)
        bound = level * (1.0 + c.collapse_z * rel / math.sqrt(m))
        if bound >= floor:
            return None
        before = _mean_of(ch.history[-m - k : -k])
        if level >= before:  # not falling (any more): a recovering or flat channel
            return None
        rewards = [v for s, v in ev.get("reward", []) if s > step - c.trend_window]
        rise = None
        if len(rewards) >= 2:
            rise = _slope(rewards) * (len(rewards) - 1)
            if rise > max(c.reward_margin, c.reward_z * sigma_r):
                return None
        return Alert(
            "collapse", step, name,
            {"value": _r(h), "level": _r(level), "relative_noise": _r(rel),
             "level_bound": _r(bound), "floor": _r(floor), "reference": _r(ch.reference),
             "level_before": _r(before), "collapse_window": m, "trend_window": k,
             "reward_rise": _r(rise),
             "reward_threshold": _r(max(c.reward_margin, c.reward_z * sigma_r))},
            _SUGGEST["collapse"].format(what=_what(name)),
        )  # fmt: skip


# ------------------------------------------------------------------------------ checkpoints


def _plain(x: Any) -> Any:
    """Tuples (also nested) as lists, for JSON."""
    return [_plain(v) for v in x] if isinstance(x, tuple) else x


def state_dict(state: MonitorState) -> dict[str, Any]:
    """JSON-ready snapshot of a :class:`MonitorState` (lists, numbers, strings, None; no NaN)."""
    return {
        "type": "MonitorState",
        "step": state.step,
        "evidence": {k: [list(p) for p in v] for k, v in state.evidence},
        "channels": {
            k: {f: _plain(getattr(ch, f)) for f in ChannelState._fields} for k, ch in state.channels
        },
        "nonfinite": list(state.nonfinite),
    }


def load_state(d: Mapping[str, Any]) -> MonitorState:
    """Inverse of :func:`state_dict`; a snapshot from another version is an error, not a guess."""
    if d.get("type") != "MonitorState":
        raise ValueError(f"not a monitor state (type {d.get('type')!r}, expected 'MonitorState')")
    channels = []
    for k, fields in d["channels"].items():
        missing = set(ChannelState._fields) - set(fields)
        if missing:
            raise ValueError(f"monitor state channel {k!r} is missing fields {sorted(missing)}")
        vals = dict(fields)
        vals["history"] = tuple(float(x) for x in vals["history"])
        for f in ("before", "settle_before"):
            vals[f] = tuple((str(m), float(v), int(n)) for m, v, n in vals[f])
        vals["pending"] = tuple((int(s), float(v)) for s, v in vals["pending"])
        channels.append((k, ChannelState(**{f: vals[f] for f in ChannelState._fields})))
    return MonitorState(
        step=d["step"],
        evidence=tuple(
            (k, tuple((int(s), float(v)) for s, v in pairs)) for k, pairs in d["evidence"].items()
        ),
        channels=tuple(channels),
        nonfinite=tuple(d["nonfinite"]),
    )
