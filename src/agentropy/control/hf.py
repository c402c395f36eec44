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

import torch
from transformers import LogitsProcessor

from agentropy.control.base import StepObservation, TemperatureSchedule
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
    (default: every row ``plan``), computes the step's model entropy (T = 1) from the raw scores,
    calls ``schedule.update`` and divides the scores by the returned temperatures.
    A call whose ``input_ids`` is not the previous call's plus one token starts a new generation: the state is re-initialised (``reset`` True for every row) and the records are
    cleared. With ``eos_token_id`` set, rows that have generated it are inactive (their state and
    records stop). Records, one list per row, one entry per generated token:
    ``temperatures`` (T used), ``phases`` (phase code), ``modes`` (the phase controller's guard
    mode; absent for other schedules).

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
        self._eos = torch.tensor(list(eos), dtype=torch.int64)
        self.zero_temperature: ZeroTemperature = zero_temperature
        reads = getattr(schedule, "reads_sampling_entropy", None)
        self._reads = None if reads is None else torch.tensor(list(reads), dtype=torch.int64)
        self.state: Any = None
        self._last_len = -1
        self._prompt_len = 0
        self._b = 0
        self._prev_sampling_entropy: torch.Tensor | None = None
        self._last_ids: torch.Tensor | None = None
        self._done: torch.Tensor | None = None
        # One (temperatures, phases, modes or None, active) tuple of (B,) tensors per step; the
        # per-row lists are built when first read (a Python loop over rows per step was a third
        # of the processor's cost).
        self._steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]]
        self._steps = []
        self._records: tuple[list[list[float]], list[list[int]], list[list[int]]] | None = None

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
            b = self._b
            if not self._steps:
                self._records = (
                    [[] for _ in range(b)],
                    [[] for _ in range(b)],
                    [[] for _ in range(b)],
                )
            else:
                temps_s, phases_s, modes_s, active_s = zip(*self._steps, strict=True)
                temps, phases, active = (
                    torch.stack(s, dim=1) for s in (temps_s, phases_s, active_s)
                )  # each (B, steps)
                # A schedule's state either always or never has a mode.
                modes = None if modes_s[0] is None else torch.stack(modes_s, dim=1)
                act = active.tolist()

                def rows(x: torch.Tensor | None) -> list[list]:
                    if x is None:
                        return [[] for _ in range(b)]
                    return [
                        [v for v, a in zip(r, ar, strict=True) if a]
                        for r, ar in zip(x.tolist(), act, strict=True)
                    ]

                self._records = (rows(temps), rows(phases), rows(modes))
        return self._records

    def reset(self) -> None:
        """Forget state and records (the next call starts a new generation)."""
        self.state = None
        self._last_len, self._last_ids = -1, None

    def _phases(self, input_ids: torch.Tensor) -> torch.Tensor:
        b = input_ids.shape[0]
        if self.phase_fn is None:
            return torch.full((b,), PHASE_CODE["plan"], dtype=torch.int64)
        raw = self.phase_fn(input_ids)
        if not isinstance(raw, torch.Tensor):
            raw = [PHASE_CODE[p] if isinstance(p, str) else int(p) for p in raw]
        # A copy: the records keep it, and a callback may reuse its buffer.
        phase = (
            torch.tensor(raw, dtype=torch.int64)
            if not isinstance(raw, torch.Tensor)
            else (raw.to(device="cpu", dtype=torch.int64, copy=True).reshape(-1))
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
            self.state = self.schedule.init(b)
            self._prompt_len, self._b = cur, b
            self._steps, self._records = [], None
            self._prev_sampling_entropy = torch.full((b,), math.nan)
            self._done = torch.zeros(b, dtype=torch.bool)
        self._last_len, self._last_ids = cur, input_ids
        assert self._done is not None and self._prev_sampling_entropy is not None
        if self._eos.numel() and cur > self._prompt_len:
            # Incremental: only the newest column can add a finished row.
            last = input_ids[:, -1].cpu()
            self._done = self._done | torch.isin(last, self._eos)
            active = ~self._done
        else:
            active = torch.ones(b, dtype=torch.bool)
        phase = self._phases(input_ids)
        obs = StepObservation(
            phase=phase,
            entropy=step_entropy(scores).cpu(),  # model entropy, T = 1
            prev_sampling_entropy=self._prev_sampling_entropy,
            active=active,
            reset=torch.full((b,), new, dtype=torch.bool),
        )
        temps, self.state = self.schedule.update(self.state, obs)
        out = warp_scores(scores, temps, zero_temperature=self.zero_temperature)
        self._prev_sampling_entropy = self._sampling_entropy(out, phase, active)
        self._steps.append((temps, phase, getattr(self.state, "mode", None), active))
        self._records = None
        return out

    def _sampling_entropy(
        self, out: torch.Tensor, phase: torch.Tensor, active: torch.Tensor
    ) -> torch.Tensor:
        """(B,) sampling entropy of this step's tokens (``out`` is already scaled; 0 if greedy),
        computed only for the rows whose next observation the schedule reads (its
        ``reads_sampling_entropy`` phases; all rows if it does not say); NaN elsewhere."""
        need = active if self._reads is None else active & torch.isin(phase, self._reads)
        h = torch.full(phase.shape, math.nan)
        if bool(need.all()):
            return step_entropy(out).cpu()
        if bool(need.any()):
            idx = need.nonzero().squeeze(1)
            h[idx] = step_entropy(out[idx.to(out.device)]).cpu()
        return h
