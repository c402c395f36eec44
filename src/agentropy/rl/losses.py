"""Policy losses for multi-turn GRPO: pure tensor functions registered by name.

Every loss maps per-token tensors to ``(loss, metrics)``: ``loss`` is a 0-dim tensor to minimise,
``metrics`` a dict of namespaced Python floats (``loss/pg``, ``entropy/recover_mean``,
``coef/lambda_recover``, ``clip/frac``, ``kl/approx`` ...). Losses and metrics reduce through the
one masked reduction :func:`aggregate`, so both always cover the same tokens (DESIGN.md,
"Training" and "Rules that prevent known bugs").

Common inputs (all losses take them as keywords; shapes use ``B`` sequences of ``T`` tokens):

- ``logprob`` (B, T): log-prob of each sampled token under the current policy (differentiable).
- ``old_logprob`` (B, T): the same under the policy that sampled the rollout (no gradient).
- ``advantages`` (B,) or (B, T): per-sequence (broadcast over tokens) or per-token advantages.
- ``mask`` (B, T): 1 on sampled assistant tokens only; 0 on prompt, padding, tool and
  runner-injected tokens. Bool or numeric; any non-zero value counts as 1.
- ``entropy`` (B, T): model entropy per token in nats, differentiable (needed by entropy losses).
- ``phase`` (B, T): int phase codes into :data:`agentropy.trace.PHASES`.
- ``trigger_offset`` (B, T): tokens since the last failed-tool trigger, ``-1`` where there is none.

Definitions and sources:

- PPO clipped surrogate with asymmetric "clip-higher" bounds ``[1 - clip_low, 1 + clip_high]``
  (DAPO, arXiv 2503.14476: ``clip_high = 0.28``); the log-ratio is clamped before ``exp``.
- ``flat``: one fixed entropy coefficient (the common baseline).
- ``target``: one adaptive coefficient moved by a fixed step toward a target entropy and clipped
  to ``[0, coef_max]``, applied only while the batch entropy is below target (Skywork-OR1,
  arXiv 2505.22312: target 0.2, step 1e-4, max 0.005).
- ``rhythm`` (this project): per-phase targets with per-phase signed coefficients plus a
  contraction term on ``recover`` tokens that stay above a band past a horizon after a trigger.
  Unlike EPO's released smoothing term (arXiv 2509.22576), every entropy term here carries
  gradient.

Sign convention (all entropy losses): ``loss = pg - bonus + contraction`` where
``bonus = aggregate(coef * entropy)``. Minimising the loss raises entropy where ``coef > 0``
(bonus) and lowers it where ``coef < 0`` (penalty); the contraction term only lowers entropy.

Adaptive coefficients are optax-style pure pairs: :func:`init_coef_state` and
:func:`update_coef_state` return NamedTuple states with ``state_dict()`` / ``load(...)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, get_args

import torch

from agentropy.trace import PHASE_CODE, PHASES

__all__ = [
    "AGG_MODES",
    "CLIP_HIGH",
    "CLIP_LOW",
    "FLAT_COEF",
    "LOG_RATIO_CLAMP",
    "AggMode",
    "LossFn",
    "RhythmConfig",
    "RhythmState",
    "TargetConfig",
    "TargetState",
    "aggregate",
    "available_losses",
    "entropy_metrics",
    "flat_loss",
    "get_loss",
    "init_coef_state",
    "masked_sum_and_count",
    "register_loss",
    "rhythm_loss",
    "target_loss",
    "update_coef_state",
    "vanilla_loss",
]

AggMode = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"]
#: Reduction modes accepted by :func:`aggregate`.
AGG_MODES: tuple[str, ...] = get_args(AggMode)

#: Lower PPO clip: the ratio is clipped below at ``1 - CLIP_LOW`` (PPO's usual 0.2).
CLIP_LOW = 0.2
#: Upper PPO clip: ``1 + CLIP_HIGH``; DAPO's clip-higher value, looser so that unlikely tokens
#: with positive advantage can grow (prevents entropy collapse).
CLIP_HIGH = 0.28
#: Log-ratios are clamped to ``[-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP]`` before ``exp``: ``e^20`` is
#: ~4.9e8, finite in fp32, so a stale or corrupted old log-prob cannot produce inf/NaN.
LOG_RATIO_CLAMP = 20.0
#: Flat entropy coefficient default (verl's historical ``entropy_coeff``).
FLAT_COEF = 1e-3

Metrics = dict[str, float]
LossFn = Callable[..., tuple[torch.Tensor, Metrics]]


# --------------------------------------------------------------------------------------------
# The one masked reduction
# --------------------------------------------------------------------------------------------


def _check_mode(mode: str) -> None:
    if mode not in AGG_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {AGG_MODES}")


def masked_sum_and_count(
    x: torch.Tensor, mask: torch.Tensor, mode: AggMode = "token-mean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Numerator and denominator of :func:`aggregate`, additive across batches.

    ``aggregate(x, mask, mode) == total / count.clamp(min=1)``. To reduce over several
    micro-batches or ranks, sum the ``total`` s and the ``count`` s, then divide once (never
    average the per-batch means).

    - ``token-mean``: ``total`` = sum of ``x`` over masked-in tokens, ``count`` = their number.
    - ``seq-mean-token-sum``: ``total`` = sum over sequences of each sequence's token sum,
      ``count`` = number of sequences with at least one masked-in token.
    - ``seq-mean-token-mean``: ``total`` = sum over sequences of each sequence's token mean,
      ``count`` as above.

    Args:
        x: (..., T) values (any float dtype). Values at masked-out positions are never read
            (``torch.where``, not multiplication), so NaN/inf there cannot leak into the result
            or into gradients.
        mask: (..., T), same shape as ``x``; non-zero marks tokens to include.
        mode: one of :data:`AGG_MODES`. Sequence modes treat the last dim as tokens and all
            leading dims as sequences.

    Returns:
        ``(total, count)``, 0-dim tensors in ``x``'s dtype (count is an integer value).
    """
    _check_mode(mode)
    if x.shape != mask.shape:
        raise ValueError(
            f"x and mask must have the same shape, got {tuple(x.shape)} and {tuple(mask.shape)}"
        )
    keep = mask != 0
    values = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))
    if mode == "token-mean":
        return values.sum(), keep.sum().to(x.dtype)
    if x.dim() < 1:
        raise ValueError(f"mode {mode!r} needs x of shape (..., T), got a scalar")
    seq_sum = values.sum(dim=-1)
    seq_count = keep.sum(dim=-1).to(x.dtype)
    non_empty = (seq_count > 0).to(x.dtype)
    if mode == "seq-mean-token-sum":
        return seq_sum.sum(), non_empty.sum()
    # seq-mean-token-mean: empty sequences have seq_sum 0, so their clamped mean is 0.
    return (seq_sum / seq_count.clamp(min=1)).sum(), non_empty.sum()


def aggregate(x: torch.Tensor, mask: torch.Tensor, mode: AggMode = "token-mean") -> torch.Tensor:
    """Masked reduction of ``x`` to a 0-dim tensor; the one used by every loss and metric.

    - ``token-mean``: sum over all masked-in tokens / their number (count clamped to >= 1).
    - ``seq-mean-token-sum``: mean over non-empty sequences of each sequence's token sum.
    - ``seq-mean-token-mean``: mean over non-empty sequences of each sequence's token mean.

    An all-masked input gives 0 (with zero gradient), never NaN. Shapes and the cross-batch
    recipe are documented in :func:`masked_sum_and_count`.
    """
    total, count = masked_sum_and_count(x, mask, mode)
    return total / count.clamp(min=1)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

_LOSSES: dict[str, LossFn] = {}


def register_loss(name: str) -> Callable[[LossFn], LossFn]:
    """Decorator registering a loss under ``name`` (names are unique)."""

    def deco(fn: LossFn) -> LossFn:
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} is already registered (by {_LOSSES[name].__name__})")
        _LOSSES[name] = fn
        return fn

    return deco


def get_loss(name: str) -> LossFn:
    """The loss registered under ``name``; unknown names raise ``KeyError`` listing the known."""
    try:
        return _LOSSES[name]
    except KeyError:
        raise KeyError(
            f"unknown loss {name!r}; known losses: {', '.join(available_losses())}"
        ) from None


def available_losses() -> tuple[str, ...]:
    """Registered loss names, sorted."""
    return tuple(sorted(_LOSSES))


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------


def _check_shapes(
    logprob: torch.Tensor,
    old_logprob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    **others: torch.Tensor | None,
) -> None:
    shape = tuple(logprob.shape)
    if logprob.dim() != 2:
        raise ValueError(f"logprob must be (B, T), got shape {shape}")
    named = {"old_logprob": old_logprob, "mask": mask, **others}
    for key, t in named.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{key} must have logprob's shape {shape}, got {tuple(t.shape)}")
    if tuple(advantages.shape) not in (shape[:1], shape):
        raise ValueError(
            f"advantages must be (B,) = {shape[:1]} or (B, T) = {shape}, "
            f"got {tuple(advantages.shape)}"
        )


def _where(keep: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # Replace masked-out values by 0 *before* any arithmetic: padding may hold sentinels
    # (NaN, +-inf, 1.0) and where() sends exactly zero gradient to the replaced positions.
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _pg_term(
    logprob: torch.Tensor,
    old_logprob: torch.Tensor,
    advantages: torch.Tensor,
    keep: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
    log_ratio_clamp: float,
    agg_mode: AggMode,
) -> tuple[torch.Tensor, Metrics]:
    """PPO clipped surrogate (clip-higher) and its diagnostics; ``keep`` is the bool mask."""
    if not (0.0 <= clip_low < 1.0) or clip_high < 0.0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    if log_ratio_clamp <= 0:
        raise ValueError(f"log_ratio_clamp must be > 0, got {log_ratio_clamp}")
    adv = advantages.float()
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1)  # (B, 1): one advantage per sequence, broadcast over tokens
    adv = _where(keep, adv.expand_as(logprob))
    log_ratio = _where(keep, logprob.float() - old_logprob.float().detach())
    log_ratio = log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp)
    ratio = torch.exp(log_ratio)  # (B, T)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)  # pessimistic bound, (B, T)
    loss = aggregate(per_token, keep, agg_mode)

    with torch.no_grad():
        is_clipped = (clipped > unclipped).float()
        lr = log_ratio.detach()
        metrics = {
            "loss/pg": float(loss.detach()),
            "clip/frac": float(aggregate(is_clipped, keep)),
            "clip/frac_high": float(aggregate(is_clipped * (lr > 0), keep)),
            "clip/frac_low": float(aggregate(is_clipped * (lr < 0), keep)),
            # k3 estimator of KL(old || new): (r - 1) - log r >= 0, low variance (Schulman).
            "kl/approx": float(aggregate(torch.expm1(lr) - lr, keep)),
            "ratio/max": float(_where(keep, ratio.detach()).max()) if keep.any() else 1.0,
        }
    return loss, metrics


def entropy_metrics(
    entropy: torch.Tensor, mask: torch.Tensor, phase: torch.Tensor | None = None
) -> Metrics:
    """Entropy metrics over masked-in tokens, overall and per phase (token-mean, nats).

    Keys: ``entropy/mean``, ``tokens/total`` and, when ``phase`` is given, for every phase ``p``
    in :data:`~agentropy.trace.PHASES`: ``entropy/{p}_mean`` and ``tokens/{p}``. Token counts
    let callers combine micro-batches by summing ``mean * count`` and ``count``, then dividing.
    """
    with torch.no_grad():
        ent = entropy.detach().float()
        keep = mask != 0
        total, count = masked_sum_and_count(ent, keep)
        out = {"entropy/mean": float(total / count.clamp(min=1)), "tokens/total": float(count)}
        if phase is not None:
            for name, code in PHASE_CODE.items():
                p_total, p_count = masked_sum_and_count(ent, keep & (phase == code))
                out[f"entropy/{name}_mean"] = float(p_total / p_count.clamp(min=1))
                out[f"tokens/{name}"] = float(p_count)
    return out


def _finish(
    pg: torch.Tensor,
    pg_metrics: Metrics,
    *,
    bonus: torch.Tensor | None = None,
    contraction: torch.Tensor | None = None,
    entropy: torch.Tensor | None,
    keep: torch.Tensor,
    phase: torch.Tensor | None,
    extra: Metrics | None = None,
) -> tuple[torch.Tensor, Metrics]:
    loss = pg
    metrics = dict(pg_metrics)
    if bonus is not None:
        loss = loss - bonus
        metrics["loss/entropy_bonus"] = float(bonus.detach())
    if contraction is not None:
        loss = loss + contraction
        metrics["loss/contraction"] = float(contraction.detach())
    metrics["loss/total"] = float(loss.detach())
    if entropy is not None:
        metrics.update(entropy_metrics(entropy, keep, phase))
    if extra:
        metrics.update(extra)
    return loss, metrics


def _prepare(
    logprob: torch.Tensor,
    old_logprob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    entropy: torch.Tensor | None,
    phase: torch.Tensor | None,
    trigger_offset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    _check_shapes(
        logprob, old_logprob, advantages, mask,
        entropy=entropy, phase=phase, trigger_offset=trigger_offset,
    )  # fmt: skip
    keep = mask != 0
    ent = None if entropy is None else _where(keep, entropy.float())
    return keep, ent


def _surrogate(
    logprob: torch.Tensor,
    old_logprob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    entropy: torch.Tensor | None,
    phase: torch.Tensor | None,
    trigger_offset: torch.Tensor | None,
    *,
    clip_low: float,
    clip_high: float,
    log_ratio_clamp: float,
    agg_mode: AggMode,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, Metrics]:
    """What every loss starts with: checked inputs, ``keep`` mask, masked entropy, PPO term."""
    keep, ent = _prepare(logprob, old_logprob, advantages, mask, entropy, phase, trigger_offset)
    pg, m = _pg_term(
        logprob, old_logprob, advantages, keep,
        clip_low=clip_low, clip_high=clip_high, log_ratio_clamp=log_ratio_clamp,
        agg_mode=agg_mode,
    )  # fmt: skip
    return keep, ent, pg, m


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


@register_loss("vanilla")
def vanilla_loss(
    *,
    logprob: torch.Tensor,
    old_logprob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    entropy: torch.Tensor | None = None,
    phase: torch.Tensor | None = None,
    trigger_offset: torch.Tensor | None = None,
    clip_low: float = CLIP_LOW,
    clip_high: float = CLIP_HIGH,
    log_ratio_clamp: float = LOG_RATIO_CLAMP,
    agg_mode: AggMode = "token-mean",
) -> tuple[torch.Tensor, Metrics]:
    """PPO clipped surrogate with clip-higher; no entropy term.

    ``loss = aggregate(max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)), mask, agg_mode)`` with
    ``r = exp(clamp(logprob - old_logprob, +-log_ratio_clamp))``. ``entropy`` / ``phase`` are
    optional and only logged (entropy is worth watching even without an entropy loss);
    ``trigger_offset`` is accepted for a uniform call signature and ignored.
    """
    keep, ent, pg, m = _surrogate(
        logprob, old_logprob, advantages, mask, entropy, phase, None,
        clip_low=clip_low, clip_high=clip_high, log_ratio_clamp=log_ratio_clamp,
        agg_mode=agg_mode,
    )  # fmt: skip
    return _finish(pg, m, entropy=ent, keep=keep, phase=phase)


@register_loss("flat")
def flat_loss(
    *,
    logprob: torch.Tensor,
    old_logprob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    entropy: torch.Tensor,
    phase: torch.Tensor | None = None,
    trigger_offset: torch.Tensor | None = None,
    coef: float = FLAT_COEF,
    clip_low: float = CLIP_LOW,
    clip_high: float = CLIP_HIGH,
    log_ratio_clamp: float = LOG_RATIO_CLAMP,
    agg_mode: AggMode = "token-mean",
) -> tuple[torch.Tensor, Metrics]:
    """``vanilla - coef * aggregate(entropy, mask, agg_mode)``: one global entropy coefficient.

    Sign: ``coef > 0`` is a bonus (raises entropy), ``coef < 0`` a penalty. ``trigger_offset``
    is ignored.
    """
    keep, ent, pg, m = _surrogate(
        logprob, old_logprob, advantages, mask, entropy, phase, None,
        clip_low=clip_low, clip_high=clip_high, log_ratio_clamp=log_ratio_clamp,
        agg_mode=agg_mode,
    )  # fmt: skip
    assert ent is not None
    bonus = float(coef) * aggregate(ent, keep, agg_mode)
    return _finish(
        pg, m, bonus=bonus, entropy=ent, keep=keep, phase=phase, extra={"coef/entropy": coef}
    )


@register_loss("target")
def target_loss(
    *,
    logprob: torch.Tensor,
    old_logprob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    entropy: torch.Tensor,
    coef: float,
    target: float | None,
    phase: torch.Tensor | None = None,
    trigger_offset: torch.Tensor | None = None,
    clip_low: float = CLIP_LOW,
    clip_high: float = CLIP_HIGH,
    log_ratio_clamp: float = LOG_RATIO_CLAMP,
    agg_mode: AggMode = "token-mean",
) -> tuple[torch.Tensor, Metrics]:
    """Skywork-OR1 adaptive entropy: ``vanilla - coef_eff * aggregate(entropy, mask, agg_mode)``.

    ``coef`` is the current coefficient (``TargetState.coef``, from :func:`update_coef_state`);
    ``target`` is ``TargetConfig.target``. Following Skywork-OR1, the bonus is active only while
    the batch mean entropy (token-mean) is below ``target``: ``coef_eff = coef * [H < target]``;
    pass ``target=None`` to always apply ``coef``. Sign as in :func:`flat_loss`.
    """
    keep, ent, pg, m = _surrogate(
        logprob, old_logprob, advantages, mask, entropy, phase, None,
        clip_low=clip_low, clip_high=clip_high, log_ratio_clamp=log_ratio_clamp,
        agg_mode=agg_mode,
    )  # fmt: skip
    assert ent is not None
    active = True
    if target is not None:
        active = bool(aggregate(ent.detach(), keep) < target)
    coef_eff = float(coef) if active else 0.0
    bonus = coef_eff * aggregate(ent, keep, agg_mode)
    extra = {"coef/entropy": float(coef), "coef/entropy_effective": coef_eff}
    return _finish(pg, m, bonus=bonus, entropy=ent, keep=keep, phase=phase, extra=extra)


@register_loss("rhythm")
def rhythm_loss(
    *,
    logprob: torch.Tensor,
    old_logprob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    entropy: torch.Tensor,
    phase: torch.Tensor,
    trigger_offset: torch.Tensor,
    lambdas: Sequence[float] | torch.Tensor,
    horizon: int,
    band_hi: float,
    contraction_coef: float,
    clip_low: float = CLIP_LOW,
    clip_high: float = CLIP_HIGH,
    log_ratio_clamp: float = LOG_RATIO_CLAMP,
    agg_mode: AggMode = "token-mean",
) -> tuple[torch.Tensor, Metrics]:
    """Phase-aware entropy: per-phase signed coefficients plus a contraction term.

    ``loss = pg - aggregate(lambda[phase] * entropy, mask, agg_mode) + contraction`` where

    - ``lambdas``: (len(PHASES),) current per-phase coefficients (``RhythmState.lambdas``),
      in :data:`~agentropy.trace.PHASES` order; ``> 0`` bonus, ``< 0`` penalty. Each token is
      weighted by its phase's coefficient inside one reduction, so with equal lambdas this is
      exactly :func:`flat_loss`.
    - ``contraction = contraction_coef * aggregate((entropy - band_hi)+, S, "token-mean")`` over
      ``S`` = masked-in tokens with phase ``recover``, ``trigger_offset > horizon`` and
      ``entropy > band_hi``: recover text still erupting ``horizon`` tokens after a failed tool.
      Zero when ``S`` is empty.

    ``horizon`` (tokens), ``band_hi`` (nats) and ``contraction_coef`` come from
    :meth:`RhythmConfig.loss_kwargs`. Both entropy terms carry gradient.
    """
    keep, ent, pg, m = _surrogate(
        logprob, old_logprob, advantages, mask, entropy, phase, trigger_offset,
        clip_low=clip_low, clip_high=clip_high, log_ratio_clamp=log_ratio_clamp,
        agg_mode=agg_mode,
    )  # fmt: skip
    assert ent is not None
    lam_in = torch.as_tensor(lambdas, dtype=torch.float64).detach().cpu()
    if tuple(lam_in.shape) != (len(PHASES),):
        raise ValueError(f"lambdas must have one value per phase {PHASES}, got {lambdas!r}")
    lam_values = [float(v) for v in lam_in]
    lam = torch.tensor(lam_values, dtype=torch.float32, device=ent.device)
    phase_l = phase.long()
    valid_phase = (phase_l >= 0) & (phase_l < len(PHASES))
    if bool((keep & ~valid_phase).any()):
        raise ValueError(f"phase codes of masked-in tokens must be in [0, {len(PHASES)})")
    token_lam = lam[phase_l.clamp(0, len(PHASES) - 1)]  # (B, T)
    bonus = aggregate(token_lam * ent, keep, agg_mode)

    over = keep & (phase_l == PHASE_CODE["recover"]) & (trigger_offset > horizon)
    over = over & (ent.detach() > band_hi)
    excess = torch.relu(ent - band_hi)
    excess_mean = aggregate(excess, over)
    contraction = float(contraction_coef) * excess_mean

    extra = {f"coef/lambda_{p}": v for p, v in zip(PHASES, lam_values, strict=True)}
    with torch.no_grad():
        late = keep & (phase_l == PHASE_CODE["recover"]) & (trigger_offset > horizon)
        extra["contraction/tokens"] = float(over.sum())
        extra["contraction/frac_late_recover"] = float(aggregate(over.float(), late))
        extra["contraction/excess_mean"] = float(excess_mean.detach())
    return _finish(
        pg, m, bonus=bonus, contraction=contraction, entropy=ent, keep=keep, phase=phase,
        extra=extra,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Adaptive coefficient states (optax-style pure init / update)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TargetConfig:
    """One adaptive entropy coefficient toward a target entropy (Skywork-OR1 defaults)."""

    target: float = 0.2
    """Target token-mean entropy, nats (Skywork-OR1's ``tgt-ent``)."""
    step: float = 1e-4
    """Coefficient change per update: ``+step`` when entropy < target, ``-step`` when above."""
    coef_max: float = 5e-3
    """Upper clip of the coefficient; the lower clip is 0 (never a penalty)."""
    coef_init: float = 0.0
    """Coefficient before the first update."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.target) and self.target >= 0):
            raise ValueError(f"target must be a finite entropy >= 0 nats, got {self.target}")
        if not self.step > 0:
            raise ValueError(f"step must be > 0 (e.g. 1e-4), got {self.step}")
        if not self.coef_max >= 0:
            raise ValueError(f"coef_max must be >= 0, got {self.coef_max}")
        if not 0 <= self.coef_init <= self.coef_max:
            raise ValueError(
                f"coef_init must be in [0, coef_max={self.coef_max}], got {self.coef_init}"
            )


class TargetState(NamedTuple):
    """State of the ``target`` loss's coefficient."""

    coef: float
    """Current coefficient (pass as ``coef=`` to :func:`target_loss`)."""
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
    step: float = 1e-4
    """Per-update change of each lambda_p (Skywork-OR1's step): ``+step`` below target."""
    lambda_max: float = 5e-3
    """Each lambda_p is clipped to ``[-lambda_max, lambda_max]`` (Skywork-OR1's max, mirrored)."""
    lambda_init: float = 0.0
    """Every lambda_p before the first update."""
    horizon: int = 64
    """Recover tokens more than this many tokens after a trigger count as late (ARPO: the
    post-tool rise lasts ~10-50 tokens; half the analyzer's contraction horizon h = 128)."""
    band_hi: float = 1.5
    """Late recover tokens above this entropy (nats) are penalised: 1.25 x target_recover,
    mirroring the analyzer's contraction threshold of 1.25 x baseline."""
    contraction_coef: float = 5e-3
    """Weight of the contraction term; equal to lambda_max so a 1-nat excess costs as much as
    the largest bonus pays for 1 nat of entropy."""

    def __post_init__(self) -> None:
        for p in PHASES:
            v = getattr(self, f"target_{p}")
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"target_{p} must be a finite entropy >= 0 nats, got {v}")
        if not self.step > 0:
            raise ValueError(f"step must be > 0 (e.g. 1e-4), got {self.step}")
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
        """The fixed keyword arguments of :func:`rhythm_loss` (add ``lambdas=state.lambdas``)."""
        return {
            "horizon": self.horizon,
            "band_hi": self.band_hi,
            "contraction_coef": self.contraction_coef,
        }


class RhythmState(NamedTuple):
    """State of the ``rhythm`` loss's per-phase coefficients."""

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


def init_coef_state(config: TargetConfig | RhythmConfig) -> TargetState | RhythmState:
    """Initial coefficient state for ``config``."""
    if isinstance(config, TargetConfig):
        return TargetState(coef=config.coef_init)
    if isinstance(config, RhythmConfig):
        return RhythmState(lambdas=(config.lambda_init,) * len(PHASES))
    raise TypeError(f"expected TargetConfig or RhythmConfig, got {type(config).__name__}")


def _step_toward(value: float, measured: float, target: float, step: float) -> float:
    # Fixed-size step (Skywork-OR1): robust to the scale of the entropy error; at the target the
    # coefficient holds still.
    if measured < target:
        return value + step
    if measured > target:
        return value - step
    return value


def update_coef_state(
    state: TargetState | RhythmState,
    entropy_metrics: Mapping[str, float],
    config: TargetConfig | RhythmConfig,
) -> TargetState | RhythmState:
    """New coefficient state after one training step; pure.

    ``entropy_metrics`` is the metrics dict of a loss (or :func:`entropy_metrics`) over the step's
    tokens. ``target`` reads ``entropy/mean`` (and ``tokens/total`` if present); ``rhythm`` reads
    ``entropy/{p}_mean`` (and ``tokens/{p}``) for each phase. A coefficient whose tokens are
    absent from the step (count 0) is left unchanged.
    """
    if isinstance(config, TargetConfig) and isinstance(state, TargetState):
        if entropy_metrics.get("tokens/total", 1.0) <= 0:
            return state._replace(n_updates=state.n_updates + 1)
        h = _metric(entropy_metrics, "entropy/mean")
        coef = _step_toward(state.coef, h, config.target, config.step)
        return TargetState(min(max(coef, 0.0), config.coef_max), state.n_updates + 1)
    if isinstance(config, RhythmConfig) and isinstance(state, RhythmState):
        new = []
        for p, lam, tgt in zip(PHASES, state.lambdas, config.targets, strict=True):
            if entropy_metrics.get(f"tokens/{p}", 1.0) <= 0:
                new.append(lam)
                continue
            h = _metric(entropy_metrics, f"entropy/{p}_mean")
            v = _step_toward(lam, h, tgt, config.step)
            new.append(min(max(v, -config.lambda_max), config.lambda_max))
        return RhythmState(tuple(new), state.n_updates + 1)
    raise TypeError(
        f"state {type(state).__name__} does not match config {type(config).__name__}; "
        "pair TargetState with TargetConfig and RhythmState with RhythmConfig"
    )


def _metric(metrics: Mapping[str, float], key: str) -> float:
    try:
        v = float(metrics[key])
    except KeyError:
        raise KeyError(
            f"metric {key!r} missing; pass the loss's metrics (they include entropy/* keys "
            "when the loss is given entropy and phase)"
        ) from None
    if not math.isfinite(v):
        raise ValueError(f"metric {key!r} is not finite ({v}); refusing to update coefficients")
    return v
