"""The temperature-schedule interface between the rollout runner and the controllers.

A schedule is a pure pair in the style of optax: ``init(batch_size) -> state`` and
``update(state, observation) -> (temperatures, state)``, one row per sequence. The runner calls
``update`` once per generated token, before sampling, with what it knows about each row; the
schedule answers with one temperature per row. A temperature of 0 means greedy (argmax) decoding.
Because state is explicit, schedules are deterministic, checkpointable and testable without a
model.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import torch

__all__ = [
    "ConstantTemperature",
    "StepObservation",
    "TemperatureSchedule",
]


class StepObservation(NamedTuple):
    """What the runner knows about each row just before sampling one token. All tensors are (B,)."""

    phase: torch.Tensor
    """int64 phase code (index into :data:`agentropy.trace.PHASES`) of the token about to be sampled."""
    entropy: torch.Tensor
    """float32 model entropy (T = 1) of this step's next-token distribution, nats."""
    prev_sampling_entropy: torch.Tensor
    """float32 sampling entropy of the row's previous token in the episode; NaN if there is none
    (or, when the schedule declares ``reads_sampling_entropy``, where it is not read)."""
    active: torch.Tensor
    """bool: the row is generating at this step (finished or waiting rows are False)."""
    reset: torch.Tensor
    """bool: the row starts a new episode at this step; its state is re-initialised."""


class TemperatureSchedule(Protocol):
    """Per-row, per-token sampling temperature. Implementations are pure and deterministic."""

    name: str
    # Optional attribute ``reads_sampling_entropy: tuple[int, ...]``: the phase codes of the
    # previous token for which ``update`` reads ``obs.prev_sampling_entropy``. Callers may leave
    # the other rows NaN and skip computing them (a full pass over the vocabulary per row); a
    # schedule without the attribute gets it for every row.

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

    def init(self, batch_size: int) -> None:
        return None

    def update(self, state: None, obs: StepObservation) -> tuple[torch.Tensor, None]:
        return torch.full(obs.phase.shape, self.temperature, dtype=torch.float32), state
