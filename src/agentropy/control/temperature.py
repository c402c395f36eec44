"""Per-row, per-token temperature controllers: the phase controller (ours) and EDT (a peer).

Every schedule is a pure pair in the style of optax (see :mod:`agentropy.control.base`):
``init(batch_size) -> State`` and ``update(State, StepObservation) -> (temperatures (B,), State)``,
where ``State`` is a NamedTuple of tensors, one row per sequence. Nothing is hidden in the
schedule object (it only holds its frozen config), so a run is reproducible from
``(config, state)``, and :func:`state_dict` / :func:`load_state` checkpoint the state as plain
lists (``torch.save`` with ``weights_only=True`` and JSON both work).

**Phase controller** (``phase``; DESIGN.md "Phases and the temperature controller"). Each phase
(:data:`agentropy.trace.PHASES`: plan, act, recover, answer) has its own temperature; two guards
act on ``recover`` tokens, checked in this order on each active step:

1. *Budget guard*: once a row has sampled ``recover_budget`` recover tokens in the episode,
   every further recover token of that episode uses the ``plan`` temperature.
2. *Divergence guard* (forced exhale). A *trigger* is the start of a recover stretch (the row's
   previous token was not ``recover``, or there is none). At the trigger the controller freezes
   the row's baseline ``B`` exactly as DESIGN.md defines it for the analyzer: the median model
   entropy (T = 1) of the last ``baseline_window`` (64) assistant tokens before the trigger in the
   episode, floored at ``eps`` (0.05 nats), ``eps`` if there are none. The *contraction threshold*
   is ``contraction_factor * B`` (1.25 B, DESIGN.md's contraction band). Let ``k`` be the number
   of recover tokens already sampled in the stretch and ``m`` the mean sampling entropy (at the
   temperature actually used, from ``StepObservation.prev_sampling_entropy``) of the last
   ``min(k, contraction_window)`` of them (window 8, as in DESIGN.md). The guard is *engaged* on a
   step iff ``k >= horizon`` and ``m > threshold``; every consecutive engaged step increments a
   counter ``d`` and the temperature is ``T_plan + (T_recover - T_plan) * decay**d`` (geometric
   decay toward ``plan``). The guard *releases* (``d = 0``, back to ``T_recover``) on the first
   step with ``m <= threshold`` or when the phase leaves ``recover``; it engages again (from
   ``d = 1``) if ``m`` climbs back above the threshold within the same stretch. So the first
   ``horizon`` recover tokens of a stretch are always sampled at ``T_recover``.

Sampling entropy, not model entropy, is compared with the threshold (as DESIGN.md says): it is
what the policy actually emits, and lowering T lowers it, which is how the guard releases.

**EDT** (``edt``; Zhang, Bao & Huang 2024, "EDT: Improving Large Language Models' Generation by
Entropy-based Dynamic Temperature Sampling", arXiv 2403.14541): ``T = T0 * N ** (theta / H)``
with ``H`` the model entropy of this step's distribution (nats). ``N = 0.8`` is the paper's
published constant; ``T0`` and ``theta`` were tuned per task in the paper (no universal default),
so ours (``T0 = 1.0``, ``theta = 1.0``) are a documented choice. ``H = 0`` gives ``N ** inf = 0``;
temperatures are floored at ``min_temperature`` so that the sampling distribution stays a proper
(on-policy) softmax instead of a division by ~0.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple

import numpy as np
import torch

from agentropy.control.base import (
    ArrayT,
    ConstantTemperature,
    StepObservation,
    TemperatureSchedule,
    _all,
    _any,
    _extremes,
    obs_arrays,
    state_arrays,
    state_tensors,
)
from agentropy.trace import PHASE_CODE, PHASES

__all__ = [
    "MODE_BUDGET",
    "MODE_FORCED_EXHALE",
    "MODE_NORMAL",
    "SCHEDULE_NAMES",
    "EDTConfig",
    "EDTState",
    "EDTTemperature",
    "PhaseState",
    "PhaseTemperature",
    "PhaseTemperatureConfig",
    "load_state",
    "schedule_from_name",
    "state_dict",
]

_RECOVER = PHASE_CODE["recover"]

#: Guard modes reported in :attr:`PhaseState.mode` (one int8 per row, for the last active step).
MODE_NORMAL, MODE_FORCED_EXHALE, MODE_BUDGET = 0, 1, 2


# ----------------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class PhaseTemperatureConfig:
    """Temperatures per phase and the guard parameters of the phase controller.

    Defaults: ``plan`` 0.7 is the usual chat temperature for free text; ``act`` 0.3 because a tool
    call's syntax must be exact and its arguments are copied from context (sampling noise there
    only manufactures bad-argument failures); ``recover`` 1.2 to inhale after a failed tool call,
    spreading mass over alternative recoveries (ambiguous failures can only be resolved by
    exploring), with the guards bounding the cost; ``answer`` 0.2, near-greedy because answers are
    checked exactly, yet not 0 so every token keeps a proper sampling distribution (on-policy
    log-probs and distinct samples within a GRPO group).
    """

    plan: float = 0.7
    """Temperature of ``plan`` tokens (free text, no unresolved failure); also the forced-exhale
    target and the post-budget temperature of ``recover`` tokens."""
    act: float = 0.3
    """Temperature of ``act`` tokens (inside a tool call)."""
    recover: float = 1.2
    """Temperature of ``recover`` tokens (after a failed/unexpected tool result)."""
    answer: float = 0.2
    """Temperature of ``answer`` tokens (inside the final answer)."""
    horizon: int = 32
    """Recover tokens of a stretch always sampled at ``recover`` before the divergence guard may
    engage (a quarter of DESIGN.md's h = 128 contraction horizon: room for a short inhale)."""
    decay: float = 0.85
    """Per-token geometric factor of the gap ``T - T_plan`` while the guard is engaged (gap halves
    in ~4 tokens, 90% closed in ~14)."""
    contraction_factor: float = 1.25
    """Threshold = ``contraction_factor * baseline`` (DESIGN.md's contraction band)."""
    contraction_window: int = 8
    """Recover tokens averaged when comparing sampling entropy with the threshold (DESIGN.md's 8)."""
    baseline_window: int = 64
    """Assistant tokens before the trigger whose median model entropy is the baseline (W = 64)."""
    eps: float = 0.05
    """Floor of the baseline, nats (DESIGN.md's eps)."""
    recover_budget: int = 256
    """Recover tokens per episode sampled at ``recover``; later ones use ``plan``."""

    def __post_init__(self) -> None:
        for name in PHASES:
            t = getattr(self, name)
            if not (isinstance(t, int | float) and math.isfinite(t) and t >= 0.0):
                raise ValueError(
                    f"PhaseTemperatureConfig.{name} must be a finite temperature >= 0 "
                    f"(0 = greedy), got {t!r}"
                )
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"decay must be in (0, 1) (geometric decay), got {self.decay!r}")
        if not self.contraction_factor > 0.0:
            raise ValueError(f"contraction_factor must be > 0, got {self.contraction_factor!r}")
        if not self.eps > 0.0:
            raise ValueError(f"eps must be > 0 nats, got {self.eps!r}")
        for name in ("horizon", "recover_budget"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 0):
                raise ValueError(f"{name} must be an integer >= 0 (tokens), got {v!r}")
        for name in ("contraction_window", "baseline_window"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be an integer >= 1 (tokens), got {v!r}")

    def phase_temperatures(self) -> torch.Tensor:
        """(4,) float32 temperatures indexed by phase code."""
        return torch.tensor([getattr(self, p) for p in PHASES], dtype=torch.float32)


@dataclass(frozen=True)
class EDTConfig:
    """Entropy-based dynamic temperature, ``T = t0 * n ** (theta / H)`` (arXiv 2403.14541)."""

    t0: float = 1.0
    """Temperature as H -> inf (the upper bound, since ``n < 1``); tuned per task in the paper."""
    n: float = 0.8
    """Base of the power, in (0, 1): the paper's published value 0.8."""
    theta: float = 1.0
    """Entropy scale, nats (T = t0 * n at H = theta); tuned per task in the paper."""
    min_temperature: float = 0.01
    """Floor on T (the formula gives T -> 0 as H -> 0; the floor keeps sampling well defined)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.t0) and self.t0 > 0.0):
            raise ValueError(f"EDT t0 must be a finite temperature > 0, got {self.t0!r}")
        if not 0.0 < self.n < 1.0:
            raise ValueError(f"EDT n must be in (0, 1) (the paper uses 0.8), got {self.n!r}")
        if not (math.isfinite(self.theta) and self.theta > 0.0):
            raise ValueError(f"EDT theta must be > 0 nats, got {self.theta!r}")
        if not 0.0 < self.min_temperature <= self.t0:
            raise ValueError(
                f"EDT min_temperature must be in (0, t0={self.t0}], got {self.min_temperature!r}"
            )


# ------------------------------------------------------------------------------------ states


class PhaseState(NamedTuple, Generic[ArrayT]):
    """Per-row state of the phase controller. Every field has leading dimension B.

    ``update`` takes and returns ``PhaseState[torch.Tensor]``, ``update_arrays`` the same
    fields as NumPy arrays (same dtypes, same bits).
    """

    prev_phase: ArrayT
    """(B,) int64 phase code of the row's previous token in the episode; -1 if none."""
    history: ArrayT
    """(B, baseline_window) float32 ring buffer of model entropies of the row's last assistant
    tokens (NaN = empty slot)."""
    n_history: ArrayT
    """(B,) int64 assistant tokens pushed into ``history`` this episode."""
    baseline: ArrayT
    """(B,) float32 baseline of the latest trigger, nats (NaN before the first trigger)."""
    recover_window: ArrayT
    """(B, contraction_window) float32 ring buffer of sampling entropies of the current
    stretch's recover tokens (NaN = empty, or never read: see
    :meth:`PhaseTemperature.sampling_entropy_rows`)."""
    recover_steps: ArrayT
    """(B,) int64 recover tokens sampled in the current stretch (since the latest trigger)."""
    recover_total: ArrayT
    """(B,) int64 recover tokens sampled this episode (the budget guard's counter)."""
    decay_steps: ArrayT
    """(B,) int64 consecutive steps the divergence guard has been engaged (0 = released)."""
    temperature: ArrayT
    """(B,) float32 temperature returned at the row's last active step."""
    mode: ArrayT
    """(B,) int8 guard mode of the row's last active step: 0 normal, 1 forced exhale, 2 budget."""


class EDTState(NamedTuple, Generic[ArrayT]):
    """EDT is memoryless; the state only carries the last temperature per row."""

    temperature: ArrayT
    """(B,) float32 temperature returned at the row's last active step."""


# ---------------------------------------------------------------------------------- schedules


def _check_obs(obs: StepObservation[Any], batch_size: int) -> None:
    if obs.phase.shape != (batch_size,):
        raise ValueError(
            f"observation has {tuple(obs.phase.shape)} rows but the state has ({batch_size},); "
            "init the schedule with the runner's batch size"
        )


def _validate_active(obs: StepObservation[np.ndarray], *, phase: bool = True) -> None:
    """Raise, naming the rows, if an active row has an invalid phase code or model entropy
    (called only when the step's cheap range check failed)."""
    active = obs.active.astype(bool)
    e = obs.entropy
    with np.errstate(invalid="ignore"):
        bad = active & ~((e >= 0) & (e < math.inf))  # NaN fails both comparisons
    if phase:
        bad_phase = active & ((obs.phase < 0) | (obs.phase >= len(PHASES)))
        if bad_phase.any():
            raise ValueError(
                f"phase codes of active rows must be in [0, {len(PHASES)}) "
                f"(agentropy.trace.PHASES), got {sorted(set(obs.phase[bad_phase].tolist()))}"
            )
    if bad.any():
        raise ValueError(
            f"model entropy of active rows must be finite and >= 0 nats, got {e[bad].tolist()} "
            f"in rows {np.flatnonzero(bad).tolist()}"
        )


class PhaseTemperature:
    """The phase controller (policy name ``phase``); see the module docstring for the rules."""

    reads_sampling_entropy: tuple[int, ...] = (_RECOVER,)
    """Only a continuing recover stretch reads ``prev_sampling_entropy`` (the previous token was
    ``recover``), so callers may leave it NaN for other rows and skip computing it."""

    def __init__(self, config: PhaseTemperatureConfig | None = None) -> None:
        self.config = config if config is not None else PhaseTemperatureConfig()
        self.name = _config_name("phase", self.config, PhaseTemperatureConfig())
        self._table = self.config.phase_temperatures()
        self._table_np = self._table.numpy()
        self._decay = torch.tensor(self.config.decay, dtype=torch.float32)

    def init(self, batch_size: int) -> PhaseState[torch.Tensor]:
        """Fresh state for ``batch_size`` rows (each row at the start of an episode)."""
        c, b = self.config, batch_size
        return PhaseState(
            prev_phase=torch.full((b,), -1, dtype=torch.int64),
            history=torch.full((b, c.baseline_window), math.nan, dtype=torch.float32),
            n_history=torch.zeros(b, dtype=torch.int64),
            baseline=torch.full((b,), math.nan, dtype=torch.float32),
            recover_window=torch.full((b, c.contraction_window), math.nan, dtype=torch.float32),
            recover_steps=torch.zeros(b, dtype=torch.int64),
            recover_total=torch.zeros(b, dtype=torch.int64),
            decay_steps=torch.zeros(b, dtype=torch.int64),
            temperature=torch.full((b,), c.plan, dtype=torch.float32),
            mode=torch.zeros(b, dtype=torch.int8),
        )

    def update(
        self, state: PhaseState[torch.Tensor], obs: StepObservation[torch.Tensor]
    ) -> tuple[torch.Tensor, PhaseState[torch.Tensor]]:
        """Temperatures (B,) float32 for the tokens about to be sampled, and the next state.

        Rows with ``obs.reset`` are re-initialised first; inactive rows keep their state and get
        back their last temperature (the runner does not sample them). This is
        :meth:`update_arrays` on NumPy views of the (CPU) state and observation.
        """
        _check_obs(obs, state.prev_phase.shape[0])
        _, new = self.update_arrays(state_arrays(state), obs_arrays(obs))
        out = state_tensors(new)
        return out.temperature, out

    def update_arrays(
        self, state: PhaseState[np.ndarray], obs: StepObservation[np.ndarray]
    ) -> tuple[np.ndarray, PhaseState[np.ndarray]]:
        """:meth:`update` on NumPy arrays: ``(temperatures (B,) float32, next state)``.

        A step is a few dozen operations on (B,) arrays once per generated token; each NumPy
        call costs about a µs (a torch call several), and that fixed cost is the whole of the
        controller's overhead. So the common step (every row active, no reset) takes the fewest
        calls: no masking, and work that cannot change the result is skipped (the recover
        bookkeeping when no row is in recover, the median when no row triggers, the window mean
        when no row is past the horizon). The inputs are never written to; the new state is
        fresh arrays or unchanged input arrays. The two operations whose NumPy and torch kernels
        may round differently (``pow`` and ``nanmean``, only on rows past the horizon) run in
        torch, so the result is the same bits as a pure torch step.
        """
        c = self.config
        b = state.prev_phase.shape[0]
        _check_obs(obs, b)
        st = state
        if _any(obs.reset):
            rows = obs.reset.astype(bool, copy=False)
            fresh = state_arrays(self.init(b))
            st = PhaseState(*(_np_where_rows(rows, f, x) for f, x in zip(fresh, st, strict=True)))
        active = obs.active.astype(bool, copy=False)
        phase = obs.phase.astype(np.int64, copy=False)
        entropy = obs.entropy.astype(np.float32, copy=False)
        all_active = _all(active)
        if all_active:
            e = entropy
        else:  # inactive rows may hold anything: mask them to valid values
            phase = np.where(active, phase, 0)
            e = np.where(active, entropy, np.float32(0))
        # Negative codes are huge as unsigned: one reduction checks both ends.
        _, top = _extremes(phase.view(np.uint64), 0, 0)
        e_lo, e_hi = _extremes(e, 0.0, 0.0)
        if not (top < len(PHASES) and e_lo >= 0 and e_hi < math.inf):  # NaN fails
            _validate_active(obs)  # raises, naming the rows
        is_rec = phase == _RECOVER  # inactive rows were masked to plan
        temps = self._table_np[phase]

        if _any(is_rec):
            temps, fields = self._recover_step(st, obs, active, all_active, is_rec, temps)
        else:  # no guard can act; the guard counter releases
            fields = _released(st, active, all_active)

        # Model entropy of this step joins the baseline history after the trigger used it.
        history = st.history.copy()
        if all_active:
            history[np.arange(b), st.n_history % c.baseline_window] = entropy
            prev_phase = phase.copy()  # the caller may reuse its phase buffer
        else:
            rows = active.nonzero()[0]
            history[rows, st.n_history[rows] % c.baseline_window] = entropy[rows]
            temps = np.where(active, temps, st.temperature)
            prev_phase = np.where(active, phase, st.prev_phase)
        new = st._replace(
            prev_phase=prev_phase,
            history=history,
            n_history=st.n_history + active,
            temperature=temps.astype(np.float32, copy=False),
            **fields,
        )
        return new.temperature, new

    def sampling_entropy_rows(self, state: PhaseState[np.ndarray], phase: np.ndarray) -> np.ndarray:
        """(B,) bool: the rows whose sampling entropy of the token just sampled (phase code
        ``phase``, ``state`` the state its step returned) a later step can read.

        Only the divergence guard reads sampling entropy: the mean of the last
        ``contraction_window`` recover tokens of a stretch, once ``horizon`` of them were
        sampled. So the token numbered ``k`` in its stretch (``state.recover_steps``) is read only
        if ``k >= horizon - contraction_window + 1``; the slot of an earlier one is overwritten
        before any read. A caller may pass NaN for the other rows and skip computing them
        (with the defaults, the first 24 tokens of every recover stretch): the temperatures are
        the same, and only ``recover_window`` slots that are never read differ.
        """
        need = phase == _RECOVER
        first = self.config.horizon - self.config.contraction_window + 1
        if first > 1:
            need &= state.recover_steps >= first
        return need

    def _recover_step(
        self,
        st: PhaseState[np.ndarray],
        obs: StepObservation[np.ndarray],
        active: np.ndarray,
        all_active: bool,
        is_rec: np.ndarray,
        temps: np.ndarray,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Triggers, baselines and both guards, for a step where some active row is in recover
        (``is_rec`` is False on inactive rows). Work is skipped when it cannot change the result
        (a median only for trigger rows, the budget and the window mean only when some row may
        be past them)."""
        c = self.config
        cont = is_rec & (st.prev_phase == _RECOVER)  # the previous token was a recover token
        trigger = is_rec ^ cont

        # Baseline frozen at the trigger, from the tokens *before* it (DESIGN.md "Baseline").
        # A trigger clears the recover window and the stretch's step counter.
        baseline, steps, window = st.baseline, st.recover_steps, st.recover_window
        if _any(trigger):
            idx = trigger.nonzero()[0]
            baseline = baseline.copy()
            baseline[idx] = _nan_median(st.history[idx], st.n_history[idx], c.eps)
            steps = np.where(trigger, 0, steps)
            window = np.where(trigger[:, None], np.float32(math.nan), window)
        # A continuing step appends the sampling entropy of the previous token (the stretch's
        # most recent recover token) at its ring slot: one masked write over the (B, window)
        # buffer instead of a gather and a scatter.
        slot = np.maximum(steps - 1, 0) % c.contraction_window
        write = cont[:, None] & (slot[:, None] == np.arange(c.contraction_window))
        prev = obs.prev_sampling_entropy.astype(np.float32, copy=False)
        window = np.where(write, prev[:, None], window)

        fields = {"baseline": baseline, "recover_window": window}
        fields["recover_steps"] = steps + is_rec
        fields["recover_total"] = st.recover_total + is_rec
        over_budget = None
        if _extremes(st.recover_total, 0, 0)[1] >= c.recover_budget:
            over_budget = is_rec & (st.recover_total >= c.recover_budget)
            if _any(over_budget):
                temps = np.where(over_budget, np.float32(c.plan), temps)
            else:
                over_budget = None
        engaged = None
        if _extremes(steps, 0, 0)[1] >= c.horizon:
            engaged = cont & (steps >= c.horizon)
            if over_budget is not None:
                engaged &= ~over_budget
            if _any(engaged):
                mean = torch.nanmean(torch.from_numpy(window), dim=1)  # NaN when empty: False
                thr = c.contraction_factor * torch.from_numpy(baseline)
                engaged &= (mean > thr).numpy()
            if not _any(engaged):
                engaged = None
        if engaged is None and over_budget is None:
            fields.update(_released(st, active, all_active))
            return temps, fields
        if engaged is not None:
            decay_steps = np.where(active, (st.decay_steps + 1) * engaged, st.decay_steps)
            d = torch.from_numpy(decay_steps.astype(np.float32))
            t_guarded = (c.plan + (c.recover - c.plan) * torch.pow(self._decay, d)).numpy()
            # The guarded temperature applies where the budget guard does not (disjoint).
            temps = np.where(engaged, t_guarded, temps)
        else:
            decay_steps = np.where(active, 0, st.decay_steps)
        mode = np.zeros(st.mode.shape, dtype=np.int8)
        if engaged is not None:
            mode[engaged] = MODE_FORCED_EXHALE
        if over_budget is not None:
            mode[over_budget] = MODE_BUDGET
        fields["decay_steps"] = decay_steps
        fields["mode"] = mode if all_active else np.where(active, mode, st.mode)
        return temps, fields


def _released(st: PhaseState[np.ndarray], active: np.ndarray, all_active: bool) -> dict:
    """``decay_steps`` and ``mode`` of a step where no guard acts: released (0, normal) on
    active rows, unchanged elsewhere."""
    if all_active:
        b = active.shape[0]
        return {"decay_steps": np.zeros(b, dtype=np.int64), "mode": np.zeros(b, dtype=np.int8)}
    return {
        "decay_steps": np.where(active, 0, st.decay_steps),
        "mode": np.where(active, np.int8(MODE_NORMAL), st.mode),
    }


def _np_where_rows(rows: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where(rows.reshape(-1, *([1] * (a.ndim - 1))), a, b)


def _nan_median(history: np.ndarray, n_pushed: np.ndarray, eps: float) -> np.ndarray:
    """Median of each row's filled slots of ``history`` (k, W) float32 (``min(n_pushed, W)`` of
    them; the rest are NaN), floored at ``eps``; ``eps`` for a row with none (DESIGN.md
    "Baseline").

    The operations of ``torch.nanquantile(history, 0.5, dim=1)``, in float32: sort with NaN last,
    rank ``0.5 * (n - 1)``, then torch's ``lerp`` of the neighbours (``end - (end - start) * (1 -
    w)`` for ``w >= 0.5``, else ``start + w * (end - start)``), so the middle pair is averaged
    like numpy's median and the bits are torch's."""
    n = np.minimum(n_pushed, history.shape[1])
    ordered = np.sort(history, axis=1)
    rows = np.arange(n.shape[0])
    # Rank 0.5 (n - 1): for odd n an integer (w = 0, torch gives start + 0 * diff = start, and
    # here end = start, so end - 0 * 0.5 is the same bits), for even n a half (w = 0.5: end -
    # diff * 0.5). For n = 0 both neighbours are NaN slots (index -1 and 0 of an empty row)
    # and fmax turns the NaN into eps.
    lo = ordered[rows, (n - 1) >> 1]
    hi = ordered[rows, n >> 1]
    return np.fmax(hi - (hi - lo) * np.float32(0.5), np.float32(eps))


class EDTTemperature:
    """EDT, ``T = t0 * n ** (theta / H)`` per token (policy name ``edt``; arXiv 2403.14541)."""

    reads_sampling_entropy: tuple[int, ...] = ()
    """EDT never reads ``prev_sampling_entropy``."""

    def __init__(self, config: EDTConfig | None = None) -> None:
        self.config = config if config is not None else EDTConfig()
        self.name = _config_name("edt", self.config, EDTConfig())
        self._n = torch.tensor(self.config.n, dtype=torch.float64)

    def init(self, batch_size: int) -> EDTState[torch.Tensor]:
        return EDTState(temperature=torch.full((batch_size,), self.config.t0, dtype=torch.float32))

    def update(
        self, state: EDTState[torch.Tensor], obs: StepObservation[torch.Tensor]
    ) -> tuple[torch.Tensor, EDTState[torch.Tensor]]:
        """Temperatures (B,) float32 and the next state; inactive rows keep their last T
        (:meth:`update_arrays` on NumPy views)."""
        _check_obs(obs, state.temperature.shape[0])
        _, new = self.update_arrays(state_arrays(state), obs_arrays(obs))
        out = state_tensors(new)
        return out.temperature, out

    def update_arrays(
        self, state: EDTState[np.ndarray], obs: StepObservation[np.ndarray]
    ) -> tuple[np.ndarray, EDTState[np.ndarray]]:
        """:meth:`update` on NumPy arrays.

        The float64 operations torch runs for ``t0 * n ** (theta / h)`` (``theta / h`` is
        ``h.reciprocal() * theta`` in torch), in NumPy except for ``pow``, whose NumPy and torch
        kernels may round differently: the same bits as the torch formula, a quarter of its
        dispatch cost."""
        c = self.config
        b = state.temperature.shape[0]
        _check_obs(obs, b)
        active = obs.active.astype(bool, copy=False)
        all_active = _all(active)
        e = obs.entropy if all_active else np.where(active, obs.entropy, 0)
        lo, hi = _extremes(e, 1.0, 0.0)
        if not (lo >= 0 and hi < math.inf):  # NaN fails
            _validate_active(obs, phase=False)
        h = obs.entropy.astype(np.float64)
        if lo > 0 and all_active:
            x = np.reciprocal(h) * c.theta
        else:  # theta / 0 = inf and n ** inf = 0: H = 0 needs no branch; the floor does the rest
            with np.errstate(divide="ignore"):
                x = np.reciprocal(h) * c.theta
        p = torch.pow(self._n, torch.from_numpy(x)).numpy()
        t = np.maximum(p * c.t0, c.min_temperature).astype(np.float32)
        if not all_active:
            prev = state.temperature
            if _any(obs.reset):
                prev = np.where(obs.reset.astype(bool, copy=False), np.float32(c.t0), prev)
            t = np.where(active, t, prev)
        return t, EDTState(temperature=t)


# ------------------------------------------------------------------------------------ by name

#: Policy names understood by :func:`schedule_from_name` (with their syntax).
SCHEDULE_NAMES: tuple[str, ...] = (
    "greedy",
    "constant:T",
    "phase[:key=value,...]",
    "edt[:key=value,...]",
)


def schedule_from_name(name: str) -> TemperatureSchedule:
    """Build a sampling policy from its name.

    - ``greedy``: T = 0 for every token.
    - ``constant:T``: one temperature ``T >= 0`` (``constant:0`` is greedy).
    - ``phase``: the phase controller with :class:`PhaseTemperatureConfig` defaults; override
      fields with ``phase:recover=1.0,horizon=16``.
    - ``edt``: EDT with :class:`EDTConfig` defaults; override with ``edt:t0=0.8,theta=0.5``.

    The returned schedule's ``name`` is canonical (defaults omitted), so it round-trips.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"empty policy name; choose one of {', '.join(SCHEDULE_NAMES)}")
    head, sep, arg = name.strip().partition(":")
    head = head.strip().lower()
    if head == "greedy":
        if sep:
            raise ValueError(f"'greedy' takes no argument, got {name!r}; use 'constant:T' instead")
        return ConstantTemperature(0.0)
    if head == "constant":
        try:
            t = float(arg)
        except ValueError:
            raise ValueError(
                f"policy {name!r}: expected 'constant:T' with a number T >= 0, e.g. 'constant:0.7'"
            ) from None
        if not (math.isfinite(t) and t >= 0.0):
            raise ValueError(
                f"policy {name!r}: temperature must be a finite number >= 0 (0 = greedy), got {t}"
            )
        return ConstantTemperature(t)
    if head == "phase":
        return PhaseTemperature(_config_from_args(PhaseTemperatureConfig, name, arg))
    if head == "edt":
        return EDTTemperature(_config_from_args(EDTConfig, name, arg))
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(SCHEDULE_NAMES)}")


def _config_from_args(cls: type, name: str, arg: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in arg.split(","))):
        key, eq, value = (s.strip() for s in item.partition("="))
        if not eq or key not in fields:
            raise ValueError(
                f"policy {name!r}: bad override {item!r}; expected key=value with key one of "
                f"{', '.join(fields)}"
            )
        default = fields[key].default
        try:
            kwargs[key] = int(value) if isinstance(default, int) else float(value)
        except ValueError:
            kind = "an integer" if isinstance(default, int) else "a number"
            raise ValueError(f"policy {name!r}: {key} must be {kind}, got {value!r}") from None
    return cls(**kwargs)


def _config_name(head: str, config: Any, default: Any) -> str:
    diff = [
        f"{f.name}={_short(getattr(config, f.name))}"
        for f in dataclasses.fields(config)
        if getattr(config, f.name) != getattr(default, f.name)
    ]
    return head if not diff else f"{head}:{','.join(diff)}"


def _short(v: float) -> str:
    """Shortest text that parses back to exactly ``v`` (so policy names round-trip)."""
    g = format(v, "g")
    return g if float(g) == v else repr(v)


# ------------------------------------------------------------------------------- checkpoints

_STATE_TYPES: dict[str, type[PhaseState[torch.Tensor]] | type[EDTState]] = {
    "PhaseState": PhaseState,
    "EDTState": EDTState,
}


def state_dict(state: Any) -> dict[str, Any]:
    """Plain-Python snapshot of a schedule state (lists, str, None): JSON- and torch.save-safe.

    NaN (empty slots) is stored as ``None`` so the JSON is standard. ``None`` (the state of
    :class:`~agentropy.control.base.ConstantTemperature`) is stored as ``{"type": None}``.
    """
    if state is None:
        return {"type": None}
    kind = type(state).__name__
    if kind not in _STATE_TYPES:
        raise TypeError(
            f"cannot serialise state of type {kind}; expected one of {list(_STATE_TYPES)}"
        )
    out: dict[str, Any] = {"type": kind, "fields": {}, "dtypes": {}, "shapes": {}}
    for key, value in state._asdict().items():
        out["dtypes"][key] = str(value.dtype).removeprefix("torch.")
        out["shapes"][key] = list(value.shape)
        listed = value.tolist()
        if value.is_floating_point():
            listed = _nan_to_none(listed)
        out["fields"][key] = listed
    return out


def load_state(d: dict[str, Any]) -> Any:
    """Inverse of :func:`state_dict`."""
    kind = d.get("type")
    if kind is None:
        return None
    if kind not in _STATE_TYPES:
        raise ValueError(f"unknown state type {kind!r}; expected one of {list(_STATE_TYPES)}")
    cls = _STATE_TYPES[kind]
    values = []
    for key in cls._fields:
        if key not in d["fields"]:
            raise ValueError(f"state {kind} is missing field {key!r}")
        dtype = getattr(torch, d["dtypes"][key])
        data = d["fields"][key]
        if dtype.is_floating_point:
            data = _none_to_nan(data)
        values.append(torch.tensor(data, dtype=dtype).reshape(d["shapes"][key]))
    return cls(*values)


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return None if isinstance(x, float) and math.isnan(x) else x


def _none_to_nan(x: Any) -> Any:
    if isinstance(x, list):
        return [_none_to_nan(v) for v in x]
    return math.nan if x is None else x
