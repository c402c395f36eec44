"""transformers backend of the temperature controller: per-row temperature as a LogitsProcessor.

``transformers`` applies custom ``logits_processor`` entries before its own temperature / top-k /
top-p warpers (REFERENCE.md), so per-row temperature works by dividing each row's fp32 logits by
that row's T here (:func:`agentropy.entropy.apply_temperature`) and leaving ``generate``'s own ``temperature`` at 1.0 (with ``top_k=None`` /
``top_p=None`` the sampling distribution is then exactly ``softmax(z / T)``, as DESIGN.md requires:
temperature applied once, to fp32 logits, before softmax).

Rows with ``T == 0`` (greedy) are handled inside a sampling ``generate``: by default their scores
become the argmax logit at the argmax position and ``-inf`` elsewhere, so ``do_sample=True``
draws the argmax deterministically (ties go to the lowest token id, like ``torch.argmax``).
``zero_temperature="error"`` instead rejects ``T <= 0``. ``T < 0`` and NaN are always errors.

:class:`ScheduledTemperatureProcessor` owns a :class:`~agentropy.control.base.TemperatureSchedule`
and its state, asks a callback for each row's phase, computes the model entropy (T = 1) of the
step and the sampling entropy of the previous step itself, and records the temperature used for
every generated token per row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from transformers import LogitsProcessor

from agentropy.control.base import (
    StepObservation,
    TemperatureSchedule,
    _any,
    _extremes,
    as_array,
    state_arrays,
    state_tensors,
)
from agentropy.entropy import _divide, apply_temperature, step_entropy
from agentropy.trace import PHASE_CODE

__all__ = ["ScheduledTemperatureProcessor", "TemperatureLogitsProcessor", "warp_scores"]

ZeroTemperature = Literal["argmax", "error"]

#: ``phase_fn(input_ids (B, t) int64) -> (B,)`` phase per row: int codes (tensor or list) or names.
PhaseFn = Callable[[torch.Tensor], "torch.Tensor | Sequence[int] | Sequence[str]"]


def warp_scores(
    scores: torch.Tensor,
    temperatures: torch.Tensor | Sequence[float],
    *,
    zero_temperature: ZeroTemperature = "argmax",
) -> torch.Tensor:
    """What the processors return: each row of ``scores`` (B, V) divided by its temperature (B,),
    with greedy rows allowed; fp32 (B, V).

    The division is :func:`agentropy.entropy.apply_temperature` (fp32 upcast first, once). ``T ==
    0`` rows: argmax logit kept, ``-inf`` elsewhere (``zero_temperature="argmax"``), so a
    sampling ``generate`` draws the argmax; or ValueError (``"error"``). Negative or NaN
    temperatures raise ValueError.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (batch, vocab), got shape {tuple(scores.shape)}")
    t = torch.as_tensor(temperatures, dtype=torch.float32, device=scores.device).reshape(-1)
    if t.shape[0] != scores.shape[0]:
        raise ValueError(
            f"{t.shape[0]} temperatures for {scores.shape[0]} rows of scores; with beams or "
            "num_return_sequences give one temperature per expanded row"
        )
    lo, hi = torch.stack([*torch.aminmax(t)]).tolist() if t.numel() else (1.0, 1.0)
    if lo > 0 and hi < math.inf:
        # Every row samples (the usual step): the division alone, with apply_temperature's
        # arithmetic (same bits) and the check above in place of its own.
        return _divide(scores, t)
    if not bool((t >= 0).all()):  # also catches NaN
        raise ValueError(f"temperatures must be >= 0 (0 = greedy), got {t.tolist()}")
    zero = t == 0
    any_zero = bool(zero.any())
    if any_zero and zero_temperature == "error":
        raise ValueError(
            f"temperature 0 in rows {zero.nonzero().flatten().tolist()} while sampling; T must be "
            '> 0 (use zero_temperature="argmax" to decode those rows greedily)'
        )
    out = apply_temperature(scores, torch.where(zero, 1.0, t))
    if any_zero:
        z = scores.to(torch.float32)
        top = z.argmax(dim=-1, keepdim=True)
        greedy = torch.full_like(z, -math.inf).scatter(1, top, z.gather(1, top))
        out = torch.where(zero[:, None], greedy, out)
    return out


class TemperatureLogitsProcessor(LogitsProcessor):
    """Divide each row's fp32 logits by that row's current temperature.

    Set ``processor.temperatures`` ((B,) tensor or list) before each step, or pass a callable
    ``temperatures_fn(input_ids) -> (B,)``. Use with ``generate(do_sample=True, temperature=1.0)``.
    """

    def __init__(
        self,
        temperatures: torch.Tensor | Sequence[float] | None = None,
        *,
        temperatures_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        zero_temperature: ZeroTemperature = "argmax",
    ) -> None:
        if zero_temperature not in ("argmax", "error"):
            raise ValueError(
                f'zero_temperature must be "argmax" or "error", got {zero_temperature!r}'
            )
        if (temperatures is None) == (temperatures_fn is None):
            raise ValueError("give exactly one of temperatures or temperatures_fn")
        self.temperatures = temperatures
        self.temperatures_fn = temperatures_fn
        self.zero_temperature: ZeroTemperature = zero_temperature

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        t: torch.Tensor | Sequence[float]
        if self.temperatures_fn is not None:
            t = self.temperatures_fn(input_ids)
        elif self.temperatures is not None:
            t = self.temperatures
        else:
            raise ValueError(
                "set processor.temperatures (or pass temperatures_fn) before generating"
            )
        return warp_scores(scores, t, zero_temperature=self.zero_temperature)


class ScheduledTemperatureProcessor(LogitsProcessor):
    """A schedule, its state and a phase callback wrapped as one ``LogitsProcessor``.

    Each call is one decoding step: it reads each row's phase from ``phase_fn(input_ids)``
    (default: every row ``plan``), computes the step's model entropy (T = 1) from the raw scores
    (unless the schedule declares ``reads_model_entropy = False``), steps the schedule and
    divides the scores by the returned temperatures. A call whose ``input_ids`` is not the
    previous call's plus one token starts a new generation: the state is re-initialised
    (``reset`` True for every row) and the records are cleared. With ``eos_token_id`` set, rows
    that have generated it are inactive (their state and records stop). Records, one list per
    row, one entry per generated token: ``temperatures`` (T used), ``phases`` (phase code),
    ``modes`` (the phase controller's guard mode; absent for other schedules).

    The processor runs once per generated token, so its fixed cost per call is what matters
    (BENCHMARKS.md, issue 18): a schedule with ``update_arrays`` is stepped on NumPy arrays (the
    state stays NumPy between steps; :attr:`state` converts on read), the records are columns
    of preallocated arrays, sampling entropy is computed only for the rows the schedule reads.

    Example::

        proc = ScheduledTemperatureProcessor(schedule_from_name("phase"), phase_fn=tracker)
        model.generate(ids, logits_processor=[proc], do_sample=True, temperature=1.0,
                       top_k=None, top_p=None)
        proc.temperatures[0]  # per-token temperatures of row 0
    """

    def __init__(
        self,
        schedule: TemperatureSchedule,
        phase_fn: PhaseFn | None = None,
        *,
        eos_token_id: int | Sequence[int] | None = None,
        zero_temperature: ZeroTemperature = "argmax",
    ) -> None:
        if zero_temperature not in ("argmax", "error"):
            raise ValueError(
                f'zero_temperature must be "argmax" or "error", got {zero_temperature!r}'
            )
        self.schedule = schedule
        self.phase_fn = phase_fn
        eos = (
            []
            if eos_token_id is None
            else [eos_token_id]
            if isinstance(eos_token_id, int)
            else eos_token_id
        )
        self._eos = [int(e) for e in eos]
        self.zero_temperature: ZeroTemperature = zero_temperature
        reads = getattr(schedule, "reads_sampling_entropy", None)
        self._reads = None if reads is None else tuple(int(r) for r in reads)
        self._reads_model = bool(getattr(schedule, "reads_model_entropy", True))
        self._arrays = hasattr(schedule, "update_arrays")
        # Finer than reads_sampling_entropy: which rows' sampling entropy a later step can read.
        self._rows_fn = getattr(schedule, "sampling_entropy_rows", None) if self._arrays else None
        self._state: Any = None  # NumPy arrays if self._arrays, else the schedule's tensors
        self._last_len = -1
        self._prompt_len = 0
        self._b = 0
        self._last_ids: torch.Tensor | None = None
        # Per generation: constant (B,) arrays (schedules never write their inputs), the
        # sampling entropy of the previous step, finished rows.
        self._ones = self._zeros = self._nan = self._plan = np.zeros(0)
        self._prev_h = self._done = np.zeros(0)
        # Records: (B, capacity) columns, the first _n filled; the per-row lists are built when
        # first read (a Python loop over rows per step was a third of the processor's cost).
        self._n = 0
        self._rec: dict[str, np.ndarray] = {}
        self._has_mode = False
        self._records: tuple[list[list[float]], list[list[int]], list[list[int]]] | None = None

    @property
    def state(self) -> Any:
        """The schedule's state after the last step (tensors; None before the first call)."""
        return state_tensors(self._state) if self._arrays else self._state

    @state.setter
    def state(self, value: Any) -> None:
        self._state = state_arrays(value) if self._arrays else value

    @property
    def temperatures(self) -> list[list[float]]:
        """Temperature used for each generated token, one list per row."""
        return self._built()[0]

    @property
    def phases(self) -> list[list[int]]:
        """Phase code of each generated token, one list per row."""
        return self._built()[1]

    @property
    def modes(self) -> list[list[int]]:
        """Guard mode of each generated token, one list per row (empty for schedules without)."""
        return self._built()[2]

    def _built(self) -> tuple[list[list[float]], list[list[int]], list[list[int]]]:
        if self._records is None:
            b, n = self._b, self._n
            act = self._rec["active"][:, :n].tolist() if n else [[] for _ in range(b)]

            def rows(key: str) -> list[list]:
                if not n or (key == "mode" and not self._has_mode):
                    return [[] for _ in range(b)]
                return [
                    [v for v, a in zip(r, ar, strict=True) if a]
                    for r, ar in zip(self._rec[key][:, :n].tolist(), act, strict=True)
                ]

            self._records = (rows("temperature"), rows("phase"), rows("mode"))
        return self._records

    def reset(self) -> None:
        """Forget state and records (the next call starts a new generation)."""
        self._state = None
        self._last_len, self._last_ids = -1, None

    def _start(self, b: int, cur: int) -> None:
        """A new generation of ``b`` rows whose prompts are ``cur`` tokens long."""
        self._state = self.schedule.init(b)
        if self._arrays:
            self._state = state_arrays(self._state)
        self._prompt_len, self._b = cur, b
        self._ones, self._zeros = np.ones(b, dtype=bool), np.zeros(b, dtype=bool)
        self._nan = np.full(b, math.nan, dtype=np.float32)
        self._plan = np.full(b, PHASE_CODE["plan"], dtype=np.int64)
        self._prev_h, self._done = self._nan, self._zeros
        self._has_mode = hasattr(self._state, "mode")
        cap = 64
        self._n, self._records = 0, None
        self._rec = {
            "temperature": np.zeros((b, cap), dtype=np.float32),
            "phase": np.zeros((b, cap), dtype=np.int64),
            "mode": np.zeros((b, cap), dtype=np.int8),
            "active": np.zeros((b, cap), dtype=bool),
        }

    def _phases(self, input_ids: torch.Tensor) -> np.ndarray:
        b = input_ids.shape[0]
        if self.phase_fn is None:
            return self._plan
        raw = self.phase_fn(input_ids)
        if isinstance(raw, torch.Tensor):
            phase = as_array(raw).reshape(-1).astype(np.int64, copy=False)
        else:
            phase = np.array(
                [PHASE_CODE[p] if isinstance(p, str) else int(p) for p in raw], dtype=np.int64
            )
        if phase.shape[0] != b:
            raise ValueError(f"phase_fn returned {phase.shape[0]} phases for {b} rows")
        return phase

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        b, cur = input_ids.shape
        # ConstantTemperature's state is None, so "started" is tracked by _last_len, not state.
        new = (
            self._last_ids is None
            or cur != self._last_len + 1
            or self._b != b
            or not torch.equal(input_ids[:, :-1], self._last_ids)
        )
        if new:
            self._start(b, cur)
        self._last_len, self._last_ids = cur, input_ids
        active = self._ones
        if self._eos and cur > self._prompt_len:
            # Incremental: only the newest column can add a finished row.
            last = as_array(input_ids[:, -1])
            for e in self._eos:
                self._done = self._done | (last == e)
            if _any(self._done):
                active = np.logical_not(self._done)
        phase = self._phases(input_ids)
        entropy = as_array(step_entropy(scores)) if self._reads_model else self._nan  # T = 1
        obs = StepObservation(
            phase=phase,
            entropy=entropy,
            prev_sampling_entropy=self._prev_h,
            active=active,
            reset=self._ones if new else self._zeros,
        )
        update_arrays = getattr(self.schedule, "update_arrays", None) if self._arrays else None
        if update_arrays is not None:
            temps, self._state = update_arrays(self._state, obs)
        else:
            t, self._state = self.schedule.update(
                self._state, StepObservation(*map(torch.from_numpy, obs))
            )
            temps = as_array(torch.as_tensor(t, dtype=torch.float32).reshape(-1))
        temps = temps.astype(np.float32, copy=False)
        t_lo, t_hi = _extremes(temps, 0.0, 0.0)
        if temps.shape == (b,) and t_lo > 0 and t_hi < math.inf:  # NaN fails
            # Every row samples (the usual step): warp_scores' division without its checks.
            out = _divide(scores, torch.from_numpy(temps).to(scores.device))
        else:
            out = warp_scores(
                scores, torch.from_numpy(temps), zero_temperature=self.zero_temperature
            )
        self._prev_h = self._sampling_entropy(out, phase, active)
        self._record(temps, phase, active)
        return out

    def _record(self, temps: np.ndarray, phase: np.ndarray, active: np.ndarray) -> None:
        rec, n = self._rec, self._n
        if n == rec["active"].shape[1]:  # full: double the capacity
            rec = self._rec = {
                k: np.concatenate([v, np.zeros_like(v)], axis=1) for k, v in rec.items()
            }
        rec["temperature"][:, n] = temps
        rec["phase"][:, n] = phase
        rec["active"][:, n] = active
        if self._has_mode:
            rec["mode"][:, n] = self._state.mode
        self._n, self._records = n + 1, None

    def _sampling_entropy(
        self, out: torch.Tensor, phase: np.ndarray, active: np.ndarray
    ) -> np.ndarray:
        """(B,) sampling entropy of this step's tokens (``out`` is already scaled; 0 if greedy),
        computed only for the rows a later step of the schedule can read (its
        ``sampling_entropy_rows``, else its ``reads_sampling_entropy`` phases, else all rows);
        NaN elsewhere."""
        if self._rows_fn is not None:
            need = self._rows_fn(self._state, phase)
            if active is not self._ones:
                need = need & active
        elif self._reads is None:
            need = active
        elif not self._reads:
            return self._nan
        else:
            need = phase == self._reads[0]
            for code in self._reads[1:]:
                need = need | (phase == code)
            if active is not self._ones:
                need = need & active
        idx = need.nonzero()[0]
        if idx.size == need.shape[0]:
            return as_array(step_entropy(out))
        if not idx.size:
            return self._nan
        h = self._nan.copy()
        h[idx] = as_array(step_entropy(out[torch.from_numpy(idx).to(out.device)]))
        return h
