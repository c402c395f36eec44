"""Entropy-coefficient schedules: pure ``init`` / ``update`` pairs, one per entropy term.

In the style of optax and :mod:`agentropy.control.temperature`: a schedule object holds only its
frozen config; ``init() -> State`` and ``update(State, measured) -> State`` are pure, and the
state is a NamedTuple with ``state_dict()`` / ``load(...)``, so a run is reproducible and
checkpointable from ``(config, state)``. ``term_kwargs(state)`` gives the keyword arguments of
the matching entropy term of :mod:`agentropy.rl.losses`, so the trainer never branches on the
loss name::

    schedule = RhythmSchedule(RhythmConfig())
    state = schedule.init()
    term, metrics = rhythm_term(entropy=..., mask=..., phase=..., trigger_offset=...,
                                **schedule.term_kwargs(state))
    state = schedule.update(state, metrics)  # reads entropy/{phase}_mean and tokens/{phase}

- :class:`FixedCoef`: the ``none`` and ``flat`` terms (coefficients that never move).
- :class:`TargetSchedule`: one coefficient stepped toward a target entropy (Skywork-OR1,
  arXiv 2505.22312: fixed step, clipped to ``[0, coef_max]``).
- :class:`RhythmSchedule`: the same rule per phase, signed, clipped to ``[-lambda_max,
  lambda_max]``.

``measured`` is a metrics dict over one step's tokens (an entropy term's metrics or
:func:`agentropy.rl.losses.entropy_metrics`); a coefficient whose tokens are absent from the
step (count 0) is left unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from agentropy.trace import PHASES

__all__ = [
    "SKYWORK_COEF_MAX",
    "SKYWORK_STEP",
    "CoefSchedule",
    "FixedCoef",
    "FixedState",
    "RhythmConfig",
    "RhythmSchedule",
    "RhythmState",
    "TargetConfig",
    "TargetSchedule",
    "TargetState",
]


#: Skywork-OR1's coefficient step per update (arXiv 2505.22312), shared by ``target`` and
#: ``rhythm``.
SKYWORK_STEP = 1e-4
#: Skywork-OR1's largest coefficient: ``target``'s upper clip, ``rhythm``'s ``lambda_max`` and
#: contraction weight.
SKYWORK_COEF_MAX = 5e-3


@dataclass(frozen=True, slots=True)
class TargetConfig:
    """One adaptive entropy coefficient toward a target entropy (Skywork-OR1 defaults)."""

    target: float = 0.2
    """Target token-mean entropy, nats (Skywork-OR1's ``tgt-ent``)."""
    step: float = SKYWORK_STEP
    """Coefficient change per update: ``+step`` when entropy < target, ``-step`` when above."""
    coef_max: float = SKYWORK_COEF_MAX
    """Upper clip of the coefficient; the lower clip is 0 (never a penalty)."""
    coef_init: float = 0.0
    """Coefficient before the first update."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.target) and self.target >= 0):
            raise ValueError(f"target must be a finite entropy >= 0 nats, got {self.target}")
        if not self.step > 0:
            raise ValueError(f"step must be > 0 (Skywork-OR1 uses {SKYWORK_STEP}), got {self.step}")
        if not self.coef_max >= 0:
            raise ValueError(f"coef_max must be >= 0, got {self.coef_max}")
        if not 0 <= self.coef_init <= self.coef_max:
            raise ValueError(
                f"coef_init must be in [0, coef_max={self.coef_max}], got {self.coef_init}"
            )


class TargetState(NamedTuple):
    """State of the ``target`` entropy term's coefficient."""

    coef: float
    """Current coefficient (the ``coef=`` of :func:`~agentropy.rl.losses.target_term`)."""
    n_updates: int = 0
    """Number of updates applied (for checkpoints and logs)."""

    def state_dict(self) -> dict[str, Any]:
        return {"coef": float(self.coef), "n_updates": int(self.n_updates)}

    @classmethod
    def load(cls, state: Mapping[str, Any]) -> TargetState:
        return cls(coef=float(state["coef"]), n_updates=int(state["n_updates"]))


@dataclass(frozen=True, slots=True)
class RhythmConfig:
    """Per-phase entropy targets, adaptive coefficients and the recover contraction term.

    Targets encode the breathing rhythm of a tool-using agent: think moderately, call tools
    near-deterministically, explore after a failure, answer crisply. All entropies in nats.
    """

    target_plan: float = 0.6
    """Free-text planning: room to consider alternatives, well below a flat distribution."""
    target_act: float = 0.1
    """Inside a tool call: names and JSON arguments should be near-deterministic (rStar2-Agent)."""
    target_recover: float = 1.2
    """After a failed tool: twice the plan target, to explore recoveries (ARPO's post-tool rise)."""
    target_answer: float = 0.1
    """Inside the final answer: the answer is known by then."""
    step: float = SKYWORK_STEP
    """Per-update change of each lambda_p (Skywork-OR1's step): ``+step`` below target."""
    lambda_max: float = SKYWORK_COEF_MAX
    """Each lambda_p is clipped to ``[-lambda_max, lambda_max]`` (Skywork-OR1's max, mirrored)."""
    lambda_init: float = 0.0
    """Every lambda_p before the first update."""
    horizon: int = 64
    """Recover tokens more than this many tokens after a trigger count as late (ARPO: the
    post-tool rise lasts ~10-50 tokens; half the analyzer's contraction horizon h = 128)."""
    band_hi: float = 1.5
    """Late recover tokens above this entropy (nats) are penalised: 1.25 x target_recover,
    mirroring the analyzer's contraction threshold of 1.25 x baseline."""
    contraction_coef: float = SKYWORK_COEF_MAX
    """Weight of the contraction term; equal to lambda_max so a 1-nat excess costs as much as
    the largest bonus pays for 1 nat of entropy."""

    def __post_init__(self) -> None:
        for p in PHASES:
            v = getattr(self, f"target_{p}")
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"target_{p} must be a finite entropy >= 0 nats, got {v}")
        if not self.step > 0:
            raise ValueError(f"step must be > 0 (Skywork-OR1 uses {SKYWORK_STEP}), got {self.step}")
        if not self.lambda_max >= 0:
            raise ValueError(f"lambda_max must be >= 0, got {self.lambda_max}")
        if abs(self.lambda_init) > self.lambda_max:
            raise ValueError(
                f"lambda_init must be in [-lambda_max, lambda_max] = "
                f"[{-self.lambda_max}, {self.lambda_max}], got {self.lambda_init}"
            )
        if isinstance(self.horizon, bool) or not isinstance(self.horizon, int) or self.horizon < 0:
            raise ValueError(f"horizon must be an int >= 0 tokens, got {self.horizon!r}")
        if not math.isfinite(self.band_hi) or self.band_hi < 0:
            raise ValueError(f"band_hi must be a finite entropy >= 0 nats, got {self.band_hi}")
        if not self.contraction_coef >= 0:
            raise ValueError(
                f"contraction_coef must be >= 0 (0 disables the term), got {self.contraction_coef}"
            )

    @property
    def targets(self) -> tuple[float, ...]:
        """Targets in :data:`~agentropy.trace.PHASES` order."""
        return tuple(getattr(self, f"target_{p}") for p in PHASES)

    def loss_kwargs(self) -> dict[str, Any]:
        """The fixed keyword arguments of :func:`~agentropy.rl.losses.rhythm_term` (add
        ``lambdas=state.lambdas``)."""
        return {
            "horizon": self.horizon,
            "band_hi": self.band_hi,
            "contraction_coef": self.contraction_coef,
        }


class RhythmState(NamedTuple):
    """State of the ``rhythm`` entropy term's per-phase coefficients."""

    lambdas: tuple[float, ...]
    """Per-phase lambda_p in :data:`~agentropy.trace.PHASES` order (pass as ``lambdas=``)."""
    n_updates: int = 0
    """Number of updates applied."""

    def state_dict(self) -> dict[str, Any]:
        return {
            "lambdas": {p: float(v) for p, v in zip(PHASES, self.lambdas, strict=True)},
            "n_updates": int(self.n_updates),
        }

    @classmethod
    def load(cls, state: Mapping[str, Any]) -> RhythmState:
        lam = state["lambdas"]
        missing = [p for p in PHASES if p not in lam]
        if missing:
            raise KeyError(f"rhythm state is missing lambdas for phases {missing}")
        return cls(tuple(float(lam[p]) for p in PHASES), int(state["n_updates"]))


class FixedState(NamedTuple):
    """State of a schedule whose coefficients never move (``none`` and ``flat`` terms)."""

    n_updates: int = 0
    """Number of updates applied."""

    def state_dict(self) -> dict[str, Any]:
        return {"n_updates": int(self.n_updates)}

    @classmethod
    def load(cls, state: Mapping[str, Any]) -> FixedState:
        return cls(int(state["n_updates"]))


class CoefSchedule(Protocol):
    """What the trainer needs of a schedule (all methods pure)."""

    def init(self) -> Any: ...

    def update(self, state: Any, measured: Mapping[str, float]) -> Any: ...

    def term_kwargs(self, state: Any) -> dict[str, Any]: ...

    def load(self, state: Mapping[str, Any]) -> Any: ...


class FixedCoef:
    """Constant keyword arguments for an entropy term (``FixedCoef(coef=1e-3)`` for ``flat``,
    ``FixedCoef()`` for ``none``)."""

    def __init__(self, **term_kwargs: Any) -> None:
        self._kwargs = dict(term_kwargs)

    def init(self) -> FixedState:
        return FixedState()

    def update(self, state: FixedState, measured: Mapping[str, float]) -> FixedState:
        return FixedState(state.n_updates + 1)

    def term_kwargs(self, state: FixedState) -> dict[str, Any]:
        return dict(self._kwargs)

    def load(self, state: Mapping[str, Any]) -> FixedState:
        return FixedState.load(state)


def _step_toward(value: float, measured: float, target: float, step: float) -> float:
    # Fixed-size step (Skywork-OR1): robust to the scale of the entropy error; at the target the
    # coefficient holds still.
    if measured < target:
        return value + step
    if measured > target:
        return value - step
    return value


def _check_state(state: Any, cls: type, config: Any) -> None:
    if not isinstance(state, cls):
        raise TypeError(
            f"state {type(state).__name__} does not match config {type(config).__name__}; "
            "pair TargetState with TargetConfig and RhythmState with RhythmConfig"
        )


class TargetSchedule:
    """The ``target`` term's coefficient: ``+step`` below target, ``-step`` above, in
    ``[0, coef_max]``; reads ``entropy/mean`` (and ``tokens/total`` if present)."""

    def __init__(self, config: TargetConfig | None = None) -> None:
        self.config = config if config is not None else TargetConfig()
        if not isinstance(self.config, TargetConfig):
            raise TypeError(f"expected a TargetConfig, got {type(self.config).__name__}")

    def init(self) -> TargetState:
        return TargetState(coef=self.config.coef_init)

    def update(self, state: TargetState, measured: Mapping[str, float]) -> TargetState:
        _check_state(state, TargetState, self.config)
        if measured.get("tokens/total", 1.0) <= 0:
            return state._replace(n_updates=state.n_updates + 1)
        h = _metric(measured, "entropy/mean")
        coef = _step_toward(state.coef, h, self.config.target, self.config.step)
        return TargetState(min(max(coef, 0.0), self.config.coef_max), state.n_updates + 1)

    def term_kwargs(self, state: TargetState) -> dict[str, Any]:
        return {"coef": state.coef, "target": self.config.target}

    def load(self, state: Mapping[str, Any]) -> TargetState:
        return TargetState.load(state)


class RhythmSchedule:
    """The ``rhythm`` term's per-phase lambdas: each steps toward its phase target, clipped to
    ``[-lambda_max, lambda_max]``; reads ``entropy/{p}_mean`` (and ``tokens/{p}``)."""

    def __init__(self, config: RhythmConfig | None = None) -> None:
        self.config = config if config is not None else RhythmConfig()
        if not isinstance(self.config, RhythmConfig):
            raise TypeError(f"expected a RhythmConfig, got {type(self.config).__name__}")

    def init(self) -> RhythmState:
        return RhythmState(lambdas=(self.config.lambda_init,) * len(PHASES))

    def update(self, state: RhythmState, measured: Mapping[str, float]) -> RhythmState:
        _check_state(state, RhythmState, self.config)
        cfg = self.config
        new = []
        for p, lam, tgt in zip(PHASES, state.lambdas, cfg.targets, strict=True):
            if measured.get(f"tokens/{p}", 1.0) <= 0:
                new.append(lam)
                continue
            v = _step_toward(lam, _metric(measured, f"entropy/{p}_mean"), tgt, cfg.step)
            new.append(min(max(v, -cfg.lambda_max), cfg.lambda_max))
        return RhythmState(tuple(new), state.n_updates + 1)

    def term_kwargs(self, state: RhythmState) -> dict[str, Any]:
        return {"lambdas": state.lambdas, **self.config.loss_kwargs()}

    def load(self, state: Mapping[str, Any]) -> RhythmState:
        return RhythmState.load(state)


def _metric(metrics: Mapping[str, float], key: str) -> float:
    try:
        v = float(metrics[key])
    except KeyError:
        raise KeyError(
            f"metric {key!r} missing; pass the entropy term's metrics (they include entropy/* "
            "keys when the term is given entropy and phase)"
        ) from None
    if not math.isfinite(v):
        raise ValueError(f"metric {key!r} is not finite ({v}); refusing to update coefficients")
    return v
