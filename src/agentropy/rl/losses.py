"""Losses for multi-turn GRPO: one PPO policy term plus an entropy term picked by name.

The trainer's objective is one line, ``loss = policy_loss + entropy_loss`` (the composition of
verl's ``core_algos`` policy loss and its actor's entropy term, and of cleanrl's one loss line):

- :func:`ppo_clip_loss` is the policy term: PPO clipped surrogate with asymmetric "clip-higher"
  bounds ``[1 - clip_low, 1 + clip_high]`` (DAPO, arXiv 2503.14476: ``clip_high = 0.28``),
  optional dual-clip (Ye et al. 2019, arXiv 1912.09729; verl's ``clip_ratio_c``), log-ratio
  clamped before ``exp``.
- Entropy terms are registered by name (:func:`get_entropy_term`): ``none``, ``flat``,
  ``target``, ``rhythm``. Each maps per-token entropies to ``(term, metrics)``; the term is
  *added* to the loss, so a bonus is negative: ``term = -bonus + contraction`` with
  ``bonus = aggregate(coef * entropy)``. Minimising raises entropy where ``coef > 0`` and lowers
  it where ``coef < 0``; the contraction term only lowers entropy. Every term carries gradient
  (unlike EPO's released smoothing term, arXiv 2509.22576).

  - ``none``: 0 (the entropy is still logged: it is worth watching without an entropy loss).
  - ``flat``: one fixed coefficient (the common baseline).
  - ``target``: one adaptive coefficient toward a target entropy, applied only while the batch
    entropy is below target (Skywork-OR1, arXiv 2505.22312: target 0.2, step 1e-4, max 0.005).
  - ``rhythm`` (this project): per-phase signed coefficients plus a contraction term on
    ``recover`` tokens that stay above a band past a horizon after a trigger.

- The loss names users pick (``TrainConfig.loss``, ``--loss``) map to a policy term and an
  entropy term through :data:`LOSSES` (``vanilla`` is ``ppo`` with the ``none`` term). Besides
  ``ppo``, the policy terms of :mod:`agentropy.rl.policy_terms` are the published token-level
  variants of the PPO term used as peers: Clip-Cov and KL-Cov (arXiv 2505.22617) and
  high-entropy-minority training (arXiv 2506.01939, TRL's ``top_entropy_quantile``); they share
  the per-token surrogate :func:`ppo_token_losses` and reduce through :func:`aggregate`.

Everything reduces through the one masked reduction :func:`aggregate`, so losses and metrics
cover the same tokens (DESIGN.md, "Training" and "Rules that prevent known bugs"). The
adaptive coefficients live in :mod:`agentropy.rl.coefs` (pure ``init`` / ``update`` pairs).

Common inputs (keywords; ``B`` sequences of ``T`` tokens):

- ``logprob`` (B, T): log-prob of each sampled token under the current policy (differentiable).
- ``old_logprob`` (B, T): the same under the policy that sampled the rollout (no gradient).
- ``advantages`` (B,) or (B, T): per-sequence (broadcast over tokens) or per-token advantages.
- ``mask`` (B, T): 1 on sampled assistant tokens only; 0 on prompt, padding, tool and
  runner-injected tokens. Bool or numeric; any non-zero value counts as 1.
- ``entropy`` (B, T): model entropy per token in nats, differentiable.
- ``phase`` (B, T): int phase codes into :data:`agentropy.trace.PHASES`.
- ``trigger_offset`` (B, T): tokens since the last failed-tool trigger, ``-1`` where there is none.

Metrics are dicts of namespaced Python floats (``loss/pg``, ``clip/frac``, ``kl/approx``,
``loss/entropy_bonus``, ``entropy/recover_mean``, ``coef/lambda_recover`` ...).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple, get_args

import torch

from agentropy.trace import PHASE_CODE, PHASES

__all__ = [
    "AGG_MODES",
    "CLIP_HIGH",
    "CLIP_LOW",
    "FLAT_COEF",
    "LOG_RATIO_CLAMP",
    "LOSSES",
    "LOSS_POLICY_TERMS",
    "LOSS_TERMS",
    "AggMode",
    "EntropyTerm",
    "PPOTokens",
    "aggregate",
    "available_entropy_terms",
    "available_losses",
    "entropy_metrics",
    "flat_term",
    "get_entropy_term",
    "masked_sum_and_count",
    "no_entropy_term",
    "ppo_clip_loss",
    "ppo_metrics",
    "ppo_token_losses",
    "register_entropy_term",
    "rhythm_term",
    "target_term",
]

AggMode = Literal[
    "token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"
]
#: Reduction modes accepted by :func:`aggregate` (verl's ``loss_agg_mode`` names, same meaning).
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
EntropyTerm = Callable[..., tuple[torch.Tensor, Metrics]]


# --------------------------------------------------------------------------------------------
# The one masked reduction
# --------------------------------------------------------------------------------------------


def _check_mode(mode: str) -> None:
    if mode not in AGG_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {AGG_MODES}")


def masked_sum_and_count(
    x: torch.Tensor,
    mask: torch.Tensor,
    mode: AggMode = "token-mean",
    *,
    scale_factor: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Numerator and denominator of :func:`aggregate`.

    ``aggregate(x, mask, mode) == total / count.clamp(min=1)``.
    To reduce several micro-batches or ranks, sum the ``total`` s and the ``count`` s, then
    divide once (never average the per-batch means).

    - ``token-mean``: ``total`` = sum of ``x`` over masked-in tokens, ``count`` = their number.
    - ``seq-mean-token-sum``: ``total`` = sum over sequences of each sequence's token sum,
      ``count`` = number of sequences with at least one masked-in token.
    - ``seq-mean-token-mean``: ``total`` = sum over sequences of each sequence's token mean,
      ``count`` as above.
    - ``seq-mean-token-sum-norm`` (Dr. GRPO's constant normaliser, verl 0.9's ``agg_loss``):
      ``total`` as in ``seq-mean-token-sum``, ``count`` = non-empty sequences x ``scale_factor``
      (default ``T``, the padded length); additive across batches that share the constant.

    Args:
        x: (..., T) values (any float dtype). Values at masked-out positions are never read
            (``torch.where``, not multiplication), so NaN/inf there cannot leak into the result
            or into gradients.
        mask: (..., T), same shape as ``x``; non-zero marks tokens to include.
        mode: one of :data:`AGG_MODES`. Sequence modes treat the last dim as tokens and all
            leading dims as sequences.
        scale_factor: the ``-norm`` mode's divisor (verl's ``loss_scale_factor``); ignored by
            the other modes.

    Returns:
        ``(total, count)``, 0-dim tensors in ``x``'s dtype.
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
    if mode == "seq-mean-token-sum-norm":
        norm = float(x.shape[-1] if scale_factor is None else scale_factor)
        if not norm > 0:
            raise ValueError(f"scale_factor must be > 0, got {scale_factor}")
        return seq_sum.sum(), non_empty.sum() * norm
    # seq-mean-token-mean: empty sequences have seq_sum 0, so their clamped mean is 0.
    return (seq_sum / seq_count.clamp(min=1)).sum(), non_empty.sum()


def aggregate(
    x: torch.Tensor,
    mask: torch.Tensor,
    mode: AggMode = "token-mean",
    *,
    scale_factor: float | None = None,
) -> torch.Tensor:
    """Masked reduction of ``x`` to a 0-dim tensor; the one used by every loss and metric.

    - ``token-mean``: sum over all masked-in tokens / their number (count clamped to >= 1).
    - ``seq-mean-token-sum``: mean over non-empty sequences of each sequence's token sum.
    - ``seq-mean-token-mean``: mean over non-empty sequences of each sequence's token mean.
    - ``seq-mean-token-sum-norm``: ``seq-mean-token-sum`` / ``scale_factor`` (default ``T``, the
      padded length): Dr. GRPO's constant normaliser, exactly verl 0.9's ``agg_loss``.

    An all-masked input gives 0 (with zero gradient), never NaN. Shapes and the cross-batch
    recipe are documented in :func:`masked_sum_and_count`.
    """
    total, count = masked_sum_and_count(x, mask, mode, scale_factor=scale_factor)
    return total / count.clamp(min=1)


def _where(keep: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # Replace masked-out values by 0 *before* any arithmetic: padding may hold sentinels
    # (NaN, +-inf, 1.0) and where() sends exactly zero gradient to the replaced positions.
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _check_like(ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    shape = tuple(ref.shape)
    if ref.dim() != 2:
        raise ValueError(f"per-token inputs must be (B, T), got shape {shape}")
    for key, t in others.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{key} must have shape {shape}, got {tuple(t.shape)}")


# --------------------------------------------------------------------------------------------
# The policy term
# --------------------------------------------------------------------------------------------


class PPOTokens(NamedTuple):
    """Per-token pieces of the PPO surrogate (:func:`ppo_token_losses`); all (B, T), zero (or
    False) off the mask."""

    loss: torch.Tensor
    """Per-token clipped (and dual-clipped) surrogate loss, differentiable in ``logprob``."""
    log_ratio: torch.Tensor
    """``clamp(logprob - old_logprob)``, differentiable."""
    clipped: torch.Tensor
    """bool: the clipped branch is the active (pessimistic) one."""
    dual: torch.Tensor | None
    """bool: the dual-clip bound is active (None without dual-clip)."""
    adv: torch.Tensor
    """fp32 per-token advantages (broadcast from (B,) when per sequence)."""
    keep: torch.Tensor
    """bool mask of the tokens that carry loss."""


def ppo_token_losses(
    logprob: torch.Tensor,
    old_logprob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = CLIP_LOW,
    clip_high: float = CLIP_HIGH,
    clip_ratio_c: float | None = None,
    log_ratio_clamp: float = LOG_RATIO_CLAMP,
) -> PPOTokens:
    """The per-token PPO surrogate before aggregation (inputs as in :func:`ppo_clip_loss`).

    Shared by :func:`ppo_clip_loss` and the token-level variants of
    :mod:`agentropy.rl.policy_terms` (Clip-Cov, KL-Cov, top-entropy), which mask or add to
    ``loss`` per token and then reduce with the same :func:`aggregate`.
    """
    _check_like(logprob, old_logprob=old_logprob, mask=mask)
    shape = tuple(logprob.shape)
    if tuple(advantages.shape) not in (shape[:1], shape):
        raise ValueError(
            f"advantages must be (B,) = {shape[:1]} or (B, T) = {shape}, "
            f"got {tuple(advantages.shape)}"
        )
    if not (0.0 <= clip_low < 1.0) or clip_high < 0.0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    if clip_ratio_c is not None and not clip_ratio_c > 1.0:
        raise ValueError(f"clip_ratio_c must be > 1 (verl uses 3.0) or None, got {clip_ratio_c}")
    if log_ratio_clamp <= 0:
        raise ValueError(f"log_ratio_clamp must be > 0, got {log_ratio_clamp}")
    keep = mask != 0
    adv = advantages.float()
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1)  # (B, 1): one advantage per sequence, broadcast over tokens
    adv = _where(keep, adv.expand_as(logprob))  # (B, T)
    log_ratio = _where(keep, logprob.float() - old_logprob.float().detach())
    log_ratio = log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp)
    ratio = torch.exp(log_ratio)  # (B, T)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)  # pessimistic bound, (B, T)
    dual = None
    if clip_ratio_c is not None:
        bound = -adv * clip_ratio_c
        dual = (adv < 0) & (per_token > bound) & keep
        per_token = torch.where(adv < 0, torch.minimum(per_token, bound), per_token)
    is_clipped = (clipped.detach() > unclipped.detach()) & keep
    return PPOTokens(per_token, log_ratio, is_clipped, dual, adv, keep)


def ppo_metrics(terms: PPOTokens, loss: torch.Tensor) -> Metrics:
    """``loss/pg``, ``clip/frac`` (``_high`` / ``_low``), ``clip/frac_dual``, ``kl/approx``,
    ``ratio/max`` of one aggregated PPO loss (see :func:`ppo_clip_loss`)."""
    keep = terms.keep
    with torch.no_grad():
        is_clipped = terms.clipped.float()
        lr = terms.log_ratio.detach()
        metrics = {
            "loss/pg": float(loss.detach()),
            "clip/frac": float(aggregate(is_clipped, keep)),
            "clip/frac_high": float(aggregate(is_clipped * (lr > 0), keep)),
            "clip/frac_low": float(aggregate(is_clipped * (lr < 0), keep)),
            # k3 estimator of KL(old || new): (r - 1) - log r >= 0, low variance (Schulman).
            "kl/approx": float(aggregate(torch.expm1(lr) - lr, keep)),
            "ratio/max": float(_where(keep, torch.exp(lr)).max()) if keep.any() else 1.0,
        }
        if terms.dual is not None:
            metrics["clip/frac_dual"] = float(aggregate(terms.dual.float(), keep))
    return metrics


def ppo_clip_loss(
    logprob: torch.Tensor,
    old_logprob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = CLIP_LOW,
    clip_high: float = CLIP_HIGH,
    clip_ratio_c: float | None = None,
    log_ratio_clamp: float = LOG_RATIO_CLAMP,
    agg_mode: AggMode = "token-mean",
) -> tuple[torch.Tensor, Metrics]:
    """PPO clipped surrogate (clip-higher, optional dual-clip), aggregated; ``(loss, metrics)``.

    Per token, with ``r = exp(clamp(logprob - old_logprob, +-log_ratio_clamp))``:
    ``l = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))``; with dual-clip
    (``clip_ratio_c = c > 1``, verl's semantics) tokens with ``A < 0`` take ``min(l, -A c)``, so
    a huge ratio on a negative-advantage token cannot blow up the loss. ``loss = aggregate(l,
    mask, agg_mode)``. Metrics: ``loss/pg``, ``clip/frac`` (``frac_high`` / ``frac_low``),
    ``clip/frac_dual`` (dual-clip only), ``kl/approx`` (k3 estimate of KL(old || new)),
    ``ratio/max``.
    """
    terms = ppo_token_losses(
        logprob, old_logprob, advantages, mask, clip_low=clip_low, clip_high=clip_high,
        clip_ratio_c=clip_ratio_c, log_ratio_clamp=log_ratio_clamp,
    )  # fmt: skip
    loss = aggregate(terms.loss, terms.keep, agg_mode)
    return loss, ppo_metrics(terms, loss)


# --------------------------------------------------------------------------------------------
# Entropy terms, registered by name
# --------------------------------------------------------------------------------------------

_TERMS: dict[str, EntropyTerm] = {}

#: Loss names (``TrainConfig.loss``, ``--loss``) -> ``(policy term, entropy term)``. Policy
#: terms are registered in :mod:`agentropy.rl.policy_terms` (``ppo`` and the published
#: token-level variants of it); entropy terms below. The peers (Clip-Cov, KL-Cov, top-entropy)
#: are published as PPO modifications without an entropy bonus, so they pair with ``none``.
LOSSES: dict[str, tuple[str, str]] = {
    "vanilla": ("ppo", "none"),
    "flat": ("ppo", "flat"),
    "target": ("ppo", "target"),
    "rhythm": ("ppo", "rhythm"),
    "clip_cov": ("clip_cov", "none"),
    "kl_cov": ("kl_cov", "none"),
    "top_entropy": ("top_entropy", "none"),
}
#: Loss name -> its entropy term (a view of :data:`LOSSES`).
LOSS_TERMS: dict[str, str] = {name: term for name, (_, term) in LOSSES.items()}
#: Loss name -> its policy term (a view of :data:`LOSSES`).
LOSS_POLICY_TERMS: dict[str, str] = {name: term for name, (term, _) in LOSSES.items()}


def register_entropy_term(name: str) -> Callable[[EntropyTerm], EntropyTerm]:
    """Decorator registering an entropy term under ``name`` (names are unique)."""

    def deco(fn: EntropyTerm) -> EntropyTerm:
        if name in _TERMS:
            raise ValueError(
                f"entropy term {name!r} is already registered (by {_TERMS[name].__name__})"
            )
        _TERMS[name] = fn
        return fn

    return deco


def get_entropy_term(name: str) -> EntropyTerm:
    """The entropy term registered under ``name`` or under a loss name of :data:`LOSS_TERMS`;
    unknown names raise ``KeyError`` listing the known."""
    try:
        return _TERMS[LOSS_TERMS.get(name, name)]
    except KeyError:
        raise KeyError(
            f"unknown entropy term or loss {name!r}; known entropy terms: "
            f"{', '.join(available_entropy_terms())}; losses: {', '.join(available_losses())}"
        ) from None


def available_entropy_terms() -> tuple[str, ...]:
    """Registered entropy-term names, sorted."""
    return tuple(sorted(_TERMS))


def available_losses() -> tuple[str, ...]:
    """Loss names accepted by the trainer and the CLI, sorted."""
    return tuple(sorted(LOSSES))


def entropy_metrics(
    entropy: torch.Tensor, mask: torch.Tensor, phase: torch.Tensor | None = None
) -> Metrics:
    """Entropy metrics over masked-in tokens, overall and per phase (token-mean, nats).

    Keys: ``entropy/mean``, ``tokens/total`` and, when ``phase`` is given, for every phase ``p``
    in :data:`~agentropy.trace.PHASES`: ``entropy/{p}_mean`` and ``tokens/{p}``. Token counts
    let callers combine micro-batches by summing ``mean * count`` and ``count``, then dividing.
    """
    with torch.no_grad():
        keep = mask != 0
        ent = _where(keep, entropy.detach().float())
        total, count = masked_sum_and_count(ent, keep)
        out = {"entropy/mean": float(total / count.clamp(min=1)), "tokens/total": float(count)}
        if phase is not None:
            for name, code in PHASE_CODE.items():
                p_total, p_count = masked_sum_and_count(ent, keep & (phase == code))
                out[f"entropy/{name}_mean"] = float(p_total / p_count.clamp(min=1))
                out[f"tokens/{name}"] = float(p_count)
    return out


def _entropy_inputs(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    phase: torch.Tensor | None,
    trigger_offset: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, Metrics]:
    """Checked shapes, the bool mask, fp32 entropy zeroed off the mask, and entropy metrics."""
    _check_like(entropy, mask=mask, phase=phase, trigger_offset=trigger_offset)
    keep = mask != 0
    return keep, _where(keep, entropy.float()), entropy_metrics(entropy, keep, phase)


@register_entropy_term("none")
def no_entropy_term(
    *,
    entropy: torch.Tensor | None = None,
    mask: torch.Tensor,
    phase: torch.Tensor | None = None,
    trigger_offset: torch.Tensor | None = None,
    agg_mode: AggMode = "token-mean",
) -> tuple[torch.Tensor, Metrics]:
    """No entropy term: ``(0, entropy metrics)``; ``entropy`` is optional and only logged."""
    zero = torch.zeros((), device=mask.device)
    if entropy is None:
        return zero, {}
    _, _, metrics = _entropy_inputs(entropy, mask, phase, trigger_offset)
    return zero, metrics


@register_entropy_term("flat")
def flat_term(
    *,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    coef: float = FLAT_COEF,
    phase: torch.Tensor | None = None,
    trigger_offset: torch.Tensor | None = None,
    agg_mode: AggMode = "token-mean",
) -> tuple[torch.Tensor, Metrics]:
    """``-coef * aggregate(entropy, mask, agg_mode)``: one global entropy coefficient.

    Sign: ``coef > 0`` is a bonus (raises entropy), ``coef < 0`` a penalty. ``trigger_offset``
    is ignored.
    """
    keep, ent, metrics = _entropy_inputs(entropy, mask, phase, trigger_offset)
    bonus = float(coef) * aggregate(ent, keep, agg_mode)
    metrics.update({"loss/entropy_bonus": float(bonus.detach()), "coef/entropy": coef})
    return -bonus, metrics


@register_entropy_term("target")
def target_term(
    *,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    coef: float,
    target: float | None,
    phase: torch.Tensor | None = None,
    trigger_offset: torch.Tensor | None = None,
    agg_mode: AggMode = "token-mean",
) -> tuple[torch.Tensor, Metrics]:
    """Skywork-OR1 adaptive entropy: ``-coef_eff * aggregate(entropy, mask, agg_mode)``.

    ``coef`` is the current coefficient (:class:`agentropy.rl.coefs.TargetState`); ``target`` is
    ``TargetConfig.target``. Following Skywork-OR1, the bonus is active only while the batch
    mean entropy (token-mean) is below ``target``: ``coef_eff = coef * [H < target]``; pass
    ``target=None`` to always apply ``coef``. Sign as in :func:`flat_term`.
    """
    keep, ent, metrics = _entropy_inputs(entropy, mask, phase, trigger_offset)
    active = True
    if target is not None:
        active = bool(aggregate(ent.detach(), keep) < target)
    coef_eff = float(coef) if active else 0.0
    bonus = coef_eff * aggregate(ent, keep, agg_mode)
    metrics.update({
        "loss/entropy_bonus": float(bonus.detach()),
        "coef/entropy": float(coef),
        "coef/entropy_effective": coef_eff,
    })  # fmt: skip
    return -bonus, metrics


@register_entropy_term("rhythm")
def rhythm_term(
    *,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    phase: torch.Tensor,
    trigger_offset: torch.Tensor,
    lambdas: Sequence[float] | torch.Tensor,
    horizon: int,
    band_hi: float,
    contraction_coef: float,
    agg_mode: AggMode = "token-mean",
) -> tuple[torch.Tensor, Metrics]:
    """Phase-aware entropy: ``-aggregate(lambda[phase] * entropy, mask, agg_mode) + contraction``.

    - ``lambdas``: (len(PHASES),) current per-phase coefficients
      (:class:`agentropy.rl.coefs.RhythmState`), in :data:`~agentropy.trace.PHASES` order;
      ``> 0`` bonus, ``< 0`` penalty. Each token is weighted by its phase's coefficient inside
      one reduction, so with equal lambdas this is exactly :func:`flat_term`.
    - ``contraction = contraction_coef * aggregate((entropy - band_hi)+, S, "token-mean")`` over
      ``S`` = masked-in tokens with phase ``recover``, ``trigger_offset > horizon`` and
      ``entropy > band_hi``: recover text still erupting ``horizon`` tokens after a failed tool.
      Zero when ``S`` is empty.

    ``horizon`` (tokens), ``band_hi`` (nats) and ``contraction_coef`` come from
    :meth:`agentropy.rl.coefs.RhythmConfig.loss_kwargs`. Both parts carry gradient.
    """
    keep, ent, metrics = _entropy_inputs(entropy, mask, phase, trigger_offset)
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

    late = keep & (phase_l == PHASE_CODE["recover"]) & (trigger_offset > horizon)
    over = late & (ent.detach() > band_hi)
    excess_mean = aggregate(torch.relu(ent - band_hi), over)
    contraction = float(contraction_coef) * excess_mean

    metrics["loss/entropy_bonus"] = float(bonus.detach())
    metrics["loss/contraction"] = float(contraction.detach())
    metrics.update({f"coef/lambda_{p}": v for p, v in zip(PHASES, lam_values, strict=True)})
    with torch.no_grad():
        metrics["contraction/tokens"] = float(over.sum())
        metrics["contraction/frac_late_recover"] = float(aggregate(over.float(), late))
        metrics["contraction/excess_mean"] = float(excess_mean.detach())
    return contraction - bonus, metrics
