"""The temperature-schedule interface between the rollout runner and the controllers.

A schedule is a pure pair in the style of optax: ``init(batch_size) -> state`` and
``update(state, observation) -> (temperatures, state)``, one row per sequence. The runner calls
``update`` once per generated token, before sampling, with what it knows about each row; the
schedule answers with one temperature per row. A temperature of 0 means greedy (argmax) decoding.
Because state is explicit, schedules are deterministic, checkpointable and testable without a
model.

A schedule may also offer ``update_arrays``: the same step on NumPy arrays (state, observation
and temperatures), for CPU callers that step once per generated token. There the conversions
between torch and NumPy (several µs each, a dozen per step) would cost more than the step itself,
so such a caller keeps the state as NumPy arrays and converts only when the state is read.
"""

from __future__ import annotations

from typing import Any, Generic, NamedTuple, Protocol, TypeVar

import numpy as np
import torch

__all__ = [
    "ConstantTemperature",
    "StepObservation",
    "TemperatureSchedule",
    "as_array",
    "obs_arrays",
    "state_arrays",
    "state_tensors",
]

#: The array type of observations and states: ``torch.Tensor`` for ``update``, ``np.ndarray``
#: for ``update_arrays``.
ArrayT = TypeVar("ArrayT", torch.Tensor, np.ndarray)


class StepObservation(NamedTuple, Generic[ArrayT]):
    """What the runner knows about each row just before sampling one token. All arrays are (B,)
    (tensors for ``update``, NumPy arrays of the same dtypes for ``update_arrays``)."""

    phase: ArrayT
    """int64 phase code (index into :data:`agentropy.trace.PHASES`) of the token about to be sampled."""
    entropy: ArrayT
    """float32 model entropy (T = 1) of this step's next-token distribution, nats (NaN allowed
    when the schedule declares ``reads_model_entropy = False``)."""
    prev_sampling_entropy: ArrayT
    """float32 sampling entropy of the row's previous token in the episode; NaN if there is none
    (or, when the schedule declares ``reads_sampling_entropy``, where it is not read)."""
    active: ArrayT
    """bool: the row is generating at this step (finished or waiting rows are False)."""
    reset: ArrayT
    """bool: the row starts a new episode at this step; its state is re-initialised."""


class TemperatureSchedule(Protocol):
    """Per-row, per-token sampling temperature. Implementations are pure and deterministic."""

    name: str
    # Optional attribute ``reads_sampling_entropy: tuple[int, ...]``: the phase codes of the
    # previous token for which ``update`` reads ``obs.prev_sampling_entropy``. Callers may leave
    # the other rows NaN and skip computing them (a full pass over the vocabulary per row); a
    # schedule without the attribute gets it for every row. Optional, finer:
    # ``sampling_entropy_rows(state, phase) -> (B,) bool`` (NumPy state after the step that
    # sampled the tokens, and their phases): the rows whose sampling entropy a later step reads.
    # Optional ``reads_model_entropy: bool`` (True if absent): False lets callers skip the model
    # entropy (NaN in its place). Optional ``update_arrays(state, obs) -> (temperatures,
    # state)``: ``update`` on NumPy arrays (see the module docstring).

    def init(self, batch_size: int) -> Any:
        """Initial state for ``batch_size`` rows."""
        ...

    def update(self, state: Any, obs: StepObservation) -> tuple[torch.Tensor, Any]:
        """Return ``(temperatures (B,) float32, new_state)``; 0 means greedy for that row."""
        ...


class ConstantTemperature:
    """One temperature for every row and token (``constant:T``; ``T = 0`` is greedy)."""

    def __init__(self, temperature: float) -> None:
        if not temperature >= 0.0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
        self.temperature = float(temperature)
        self.name = "greedy" if self.temperature == 0.0 else f"constant:{self.temperature:g}"
        self.reads_sampling_entropy: tuple[int, ...] = ()
        self.reads_model_entropy = False

    def init(self, batch_size: int) -> None:
        return None

    def update(self, state: None, obs: StepObservation) -> tuple[torch.Tensor, None]:
        return torch.full(obs.phase.shape, self.temperature, dtype=torch.float32), state

    def update_arrays(
        self, state: None, obs: StepObservation[np.ndarray]
    ) -> tuple[np.ndarray, None]:
        return np.full(obs.phase.shape, self.temperature, dtype=np.float32), state


def as_array(x: torch.Tensor) -> np.ndarray:
    """A NumPy view of a CPU tensor (a copy from other devices, or of a tensor that needs a
    gradient). ``Tensor.numpy`` alone is half the cost of ``detach().cpu().numpy()``."""
    try:
        return x.numpy()
    except (RuntimeError, TypeError):
        return x.detach().cpu().resolve_conj().resolve_neg().numpy()


def obs_arrays(obs: StepObservation[torch.Tensor]) -> StepObservation[np.ndarray]:
    """An observation of tensors as NumPy arrays (views of CPU tensors)."""
    return StepObservation(*map(as_array, obs))


def state_arrays(state: Any) -> Any:
    """A schedule state (a NamedTuple of tensors, or None) as NumPy arrays (views of CPU
    tensors), the form ``update_arrays`` takes."""
    return None if state is None else type(state)(*map(as_array, state))


def state_tensors(state: Any) -> Any:
    """A NumPy state of ``update_arrays`` as tensors sharing its memory (None stays None)."""
    return None if state is None else type(state)(*map(torch.from_numpy, state))


# NumPy's ``ndarray.any()``/``.max()`` go through a Python wrapper and the generic reduction
# (~2.5 µs on a (32,) array here); ``count_nonzero`` and ``argmax`` are direct C calls (~0.5 µs).
# The controller runs a dozen of them per generated token.


def _any(mask: np.ndarray) -> bool:
    """``mask.any()`` for a bool array, faster on small arrays."""
    return int(np.count_nonzero(mask)) > 0


def _all(mask: np.ndarray) -> bool:
    """``mask.all()`` for a bool array, faster on small arrays."""
    return np.count_nonzero(mask) == mask.size


def _extremes(x: np.ndarray, lo: float, hi: float) -> tuple[Any, Any]:
    """``(x.min(), x.max())`` of a 1-D array (NaN if any is NaN, like ``min``/``max``);
    ``(lo, hi)`` if it is empty."""
    if not x.size:
        return lo, hi
    return x[x.argmin()], x[x.argmax()]
