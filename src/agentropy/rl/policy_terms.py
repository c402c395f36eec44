"""Policy terms by name: the PPO surrogate and its published token-level variants (the peers).

The trainer's objective is ``loss = policy_term + entropy_term``; the loss name picks both
(:data:`agentropy.rl.losses.LOSSES`). ``ppo`` is :func:`agentropy.rl.losses.ppo_clip_loss`.
The other policy terms are the two published entropy mechanisms that act *on the PPO term*
rather than adding an entropy bonus, implemented as masks or per-token additions on the same
per-token surrogate (:func:`agentropy.rl.losses.ppo_token_losses`) and reduced through the same
:func:`agentropy.rl.losses.aggregate`, so every arm covers the same tokens and shares the clip
bounds, dual-clip and aggregation mode:

- ``clip_cov`` and ``kl_cov`` (Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning
  for Reasoning Language Models", arXiv 2505.22617). Entropy falls when tokens with a high
  covariance between their log-prob and their advantage dominate the update (confident tokens
  with positive advantage). Per token, over the masked tokens of the batch passed to the loss,
  ``cov_i = (A_i - mean A) (log pi_i - mean log pi)`` (:func:`centred_covariance`).

  - Clip-Cov: among the tokens the PPO clip left active, those with
    ``clip_cov_lb < cov < clip_cov_ub`` are candidates; ``max(1, floor(ratio * n))`` of them
    (``n`` = masked tokens), drawn uniformly at random, lose their policy gradient (their loss
    is multiplied by 0) (:func:`clip_cov_mask`).
  - KL-Cov: the ``max(1, floor(ratio * n))`` tokens with the largest ``cov`` get a penalty
    ``coef * |log pi - log pi_old|`` added to their loss (:func:`kl_cov_mask`).

  Defaults are verl's (``verl/trainer/ppo/core_algos.py``, ``compute_policy_loss_clip_cov`` /
  ``_kl_cov``, adapted there from the paper's code): ``clip_cov_ratio = 2e-4``,
  ``clip_cov_lb = 1``, ``clip_cov_ub = 5``, ``kl_cov_ratio = 2e-4``, ``ppo_kl_coef = 1``.
  Deviations, each deliberate: (1) ``ratio = 0`` selects no token (verl asserts ``ratio > 0``),
  so the term reduces exactly to ``ppo`` and can be switched off; (2) KL-Cov keeps the PPO clip
  on every token (verl's and the paper's KL-Cov use the unclipped surrogate ``-A r``), so that
  the arms of an experiment differ only in their entropy mechanism; with one PPO epoch over one
  minibatch the ratio is 1 and the two agree. With our minibatches of a few hundred tokens the
  default ratios select one token per minibatch (verl applies them per micro-batch of
  long reasoning responses, i.e. to a few tokens each): raise the ratios to strengthen them.

- ``top_entropy`` (Wang et al. 2025, "Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive
  Effective Reinforcement Learning for LLM Reasoning", arXiv 2506.01939): only the tokens whose
  entropy is in the top ``quantile`` of the batch keep their policy-gradient loss; the rest are
  multiplied by 0 (:func:`top_entropy_mask`). As TRL's ``GRPOTrainer.get_high_entropy_mask``
  (``GRPOConfig.top_entropy_quantile``): the threshold is ``torch.quantile`` (linear
  interpolation) of the masked tokens' entropies at ``1 - quantile``, and tokens with entropy
  ``>= threshold`` are kept, so ``quantile = 1`` keeps every token. TRL's default is 1.0 (off);
  the paper's value, 0.2, is the default here since choosing the loss opts in. Entropy: the
  model entropy at T = 1 (detached), as every entropy term here (trainer docstring, point 3);
  TRL uses the entropy of ``logits / T`` with its one global T, the same at T = 1 (the
  ``constant:1.0`` policy of the experiment's peer arms).

Masked-out (detached) tokens still count in the denominator of the reduction, as in verl
(``loss * corr`` then ``agg_loss`` over the response mask) and TRL (``per_token_loss *
entropy_mask``, normalised by the completion mask): the peers rescale the gradient, they do not
renormalise it. The covariance and the entropy threshold are computed per call, i.e. per
minibatch (verl: per micro-batch; TRL: per batch gathered across processes).

Common keyword inputs, ``B`` sequences of ``T`` tokens: ``logprob``, ``old_logprob``,
``advantages``, ``mask`` as in :func:`agentropy.rl.losses.ppo_clip_loss`; ``entropy`` (B, T)
model entropy in nats (only ``top_entropy`` reads it); ``clip_low``, ``clip_high``,
``clip_ratio_c``, ``agg_mode``. Each returns ``(loss, metrics)``: the PPO metrics plus
``select/frac`` (share of masked tokens the mechanism touched) and its own ``select/*`` keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from agentropy.rl.losses import (
    CLIP_HIGH,
    CLIP_LOW,
    LOSS_POLICY_TERMS,
    AggMode,
    aggregate,
    ppo_clip_loss,
    ppo_metrics,
    ppo_token_losses,
)

__all__ = [
    "CLIP_COV_LB",
    "CLIP_COV_RATIO",
    "CLIP_COV_UB",
    "KL_COV_COEF",
    "KL_COV_RATIO",
    "TOP_ENTROPY_QUANTILE",
    "PolicyTerm",
    "available_policy_terms",
    "centred_covariance",
    "clip_cov_mask",
    "clip_cov_term",
    "get_policy_term",
    "kl_cov_mask",
    "kl_cov_term",
    "ppo_term",
    "register_policy_term",
    "selection_count",
    "top_entropy_mask",
    "top_entropy_term",
]

#: Clip-Cov: share of masked tokens whose gradient is detached (verl's ``clip_cov_ratio``).
CLIP_COV_RATIO = 2e-4
#: Clip-Cov: candidates have covariance above this (verl's ``clip_cov_lb``).
CLIP_COV_LB = 1.0
#: Clip-Cov: candidates have covariance below this (verl's ``clip_cov_ub``).
CLIP_COV_UB = 5.0
#: KL-Cov: share of masked tokens, by largest covariance, that get the KL penalty (verl's
#: ``kl_cov_ratio``).
KL_COV_RATIO = 2e-4
#: KL-Cov: coefficient of ``|log pi - log pi_old|`` on the selected tokens (verl's
#: ``ppo_kl_coef``).
KL_COV_COEF = 1.0
#: top-entropy: share of masked tokens, by highest entropy, that keep their policy gradient
#: (arXiv 2506.01939's 20%; TRL's ``top_entropy_quantile``, whose default 1.0 is "off").
TOP_ENTROPY_QUANTILE = 0.2

Metrics = dict[str, float]
PolicyTerm = Callable[..., tuple[torch.Tensor, Metrics]]

_POLICY_TERMS: dict[str, PolicyTerm] = {}


def register_policy_term(name: str) -> Callable[[PolicyTerm], PolicyTerm]:
    """Decorator registering a policy term under ``name`` (names are unique)."""

    def deco(fn: PolicyTerm) -> PolicyTerm:
        if name in _POLICY_TERMS:
            raise ValueError(
                f"policy term {name!r} is already registered (by {_POLICY_TERMS[name].__name__})"
            )
        _POLICY_TERMS[name] = fn
        return fn

    return deco


def get_policy_term(name: str) -> PolicyTerm:
    """The policy term registered under ``name`` or under a loss name of
    :data:`agentropy.rl.losses.LOSSES`; unknown names raise ``KeyError`` listing the known."""
    try:
        return _POLICY_TERMS[LOSS_POLICY_TERMS.get(name, name)]
    except KeyError:
        raise KeyError(
            f"unknown policy term or loss {name!r}; known policy terms: "
            f"{', '.join(available_policy_terms())}"
        ) from None


def available_policy_terms() -> tuple[str, ...]:
    """Registered policy-term names, sorted."""
    return tuple(sorted(_POLICY_TERMS))


# --------------------------------------------------------------------------------------------
# Token selections (pure, no gradient)
# --------------------------------------------------------------------------------------------


def _check_ratio(name: str, ratio: float) -> None:
    if not (math.isfinite(ratio) and 0.0 <= ratio <= 1.0):
        raise ValueError(f"{name} must be in [0, 1] (a share of tokens), got {ratio}")


def selection_count(ratio: float, n: int) -> int:
    """Tokens a covariance mechanism touches among ``n``: ``max(1, floor(ratio * n))`` (verl's
    count), 0 when ``ratio`` is 0 or there are no tokens, never more than ``n``."""
    _check_ratio("ratio", ratio)
    if ratio == 0.0 or n <= 0:
        return 0
    return min(n, max(1, int(ratio * n)))


def centred_covariance(
    logprob: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Per-token centred covariance ``(A - mean A)(log pi - mean log pi)``, (B, T) fp32.

    Means are token-means over the masked tokens of the batch; ``advantages`` (B,) broadcast
    over tokens or (B, T). Detached; 0 off the mask. Its mean over the masked tokens is the
    batch covariance of log-prob and advantage that drives the entropy change
    (arXiv 2505.22617; :mod:`agentropy.monitor.attribution` reports it per phase).
    """
    keep = mask != 0
    lp = torch.where(keep, logprob.detach().float(), 0.0)
    adv = advantages.detach().float()
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1)
    adv = torch.where(keep, adv.expand_as(lp), 0.0)
    n = keep.sum().clamp(min=1)
    cov = (adv - adv.sum() / n) * (lp - lp.sum() / n)
    return torch.where(keep, cov, 0.0)


def clip_cov_mask(
    cov: torch.Tensor,
    mask: torch.Tensor,
    *,
    ratio: float = CLIP_COV_RATIO,
    lb: float = CLIP_COV_LB,
    ub: float = CLIP_COV_UB,
    exclude: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip-Cov's tokens: ``(selected, candidates)``, (B, T) bool each.

    Candidates: masked tokens not in ``exclude`` (the tokens the PPO clip already made
    gradient-free) with ``lb < cov < ub``. Selected: :func:`selection_count` ``(ratio, n)`` of
    them (``n`` = masked tokens), uniformly at random without replacement (``generator``; None
    = torch's global generator, which the trainer checkpoints), or all candidates if fewer.
    """
    _check_ratio("clip_cov_ratio", ratio)
    if not lb < ub:
        raise ValueError(f"clip_cov_lb must be below clip_cov_ub, got {lb} and {ub}")
    keep = mask != 0
    candidates = keep & (cov > lb) & (cov < ub)
    if exclude is not None:
        candidates = candidates & ~exclude
    k = selection_count(ratio, int(keep.sum()))
    flat = candidates.flatten().nonzero().squeeze(1)  # indices into the flattened (B * T)
    chosen = flat[torch.randperm(flat.numel(), generator=generator)[:k].to(flat.device)]
    selected = torch.zeros(candidates.numel(), dtype=torch.bool, device=cov.device)
    selected[chosen] = True
    return selected.view_as(candidates), candidates


def kl_cov_mask(
    cov: torch.Tensor, mask: torch.Tensor, *, ratio: float = KL_COV_RATIO
) -> torch.Tensor:
    """KL-Cov's tokens, (B, T) bool: the :func:`selection_count` ``(ratio, n)`` masked tokens
    with the largest ``cov`` (ties broken by ``torch.topk``)."""
    _check_ratio("kl_cov_ratio", ratio)
    keep = (mask != 0).flatten()
    k = selection_count(ratio, int(keep.sum()))
    selected = torch.zeros_like(keep)
    if k:
        idx = keep.nonzero().squeeze(1)
        top = torch.topk(cov.flatten()[idx], k, largest=True).indices
        selected[idx[top]] = True
    return selected.view_as(cov)


def top_entropy_mask(
    entropy: torch.Tensor, mask: torch.Tensor, *, quantile: float = TOP_ENTROPY_QUANTILE
) -> tuple[torch.Tensor, float]:
    """High-entropy minority tokens: ``(keep, threshold)``.

    ``threshold = torch.quantile(entropy[mask], 1 - quantile)`` (linear interpolation, as TRL);
    ``keep`` (B, T) bool = masked tokens with ``entropy >= threshold``. About ``quantile`` of
    the masked tokens (exactly all of them at ``quantile = 1``; more where entropies tie at the
    threshold). No masked token: nothing kept, threshold NaN.
    """
    if not (math.isfinite(quantile) and 0.0 < quantile <= 1.0):
        raise ValueError(
            f"top_entropy_quantile must be in (0, 1] (the paper uses 0.2), got {quantile}"
        )
    keep = mask != 0
    values = entropy.detach().float()[keep]
    if values.numel() == 0:
        return torch.zeros_like(keep), float("nan")
    threshold = torch.quantile(values, 1.0 - quantile)
    return keep & (entropy.detach().float() >= threshold), float(threshold)


# --------------------------------------------------------------------------------------------
# Policy terms
# --------------------------------------------------------------------------------------------


@register_policy_term("ppo")
def ppo_term(
    *,
    logprob: torch.Tensor,
    old_logprob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    entropy: torch.Tensor | None = None,
    clip_low: float = CLIP_LOW,
    clip_high: float = CLIP_HIGH,
    clip_ratio_c: float | None = None,
    agg_mode: AggMode = "token-mean",
) -> tuple[torch.Tensor, Metrics]:
    """:func:`agentropy.rl.losses.ppo_clip_loss` with the policy terms' keywords (``entropy``
    is ignored)."""
    return ppo_clip_loss(
        logprob, old_logprob, advantages, mask, clip_low=clip_low, clip_high=clip_high,
        clip_ratio_c=clip_ratio_c, agg_mode=agg_mode,
    )  # fmt: skip


@register_policy_term("clip_cov")
def clip_cov_term(
    *,
    logprob: torch.Tensor,
    old_logprob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    entropy: torch.Tensor | None = None,
    clip_low: float = CLIP_LOW,
    clip_high: float = CLIP_HIGH,
    clip_ratio_c: float | None = None,
    agg_mode: AggMode = "token-mean",
    ratio: float = CLIP_COV_RATIO,
    lb: float = CLIP_COV_LB,
    ub: float = CLIP_COV_UB,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Clip-Cov: the PPO loss with the gradient of :func:`clip_cov_mask` tokens detached.

    ``loss = aggregate(l * (1 - selected), mask, agg_mode)`` with ``l`` the per-token PPO
    surrogate; ``ratio = 0`` is exactly :func:`ppo_term`. Metrics add ``select/frac`` and
    ``select/candidate_frac`` (shares of masked tokens).
    """
    terms = ppo_token_losses(
        logprob, old_logprob, advantages, mask, clip_low=clip_low, clip_high=clip_high,
        clip_ratio_c=clip_ratio_c,
    )  # fmt: skip
    cov = centred_covariance(logprob, advantages, terms.keep)
    selected, candidates = clip_cov_mask(
        cov, terms.keep, ratio=ratio, lb=lb, ub=ub, exclude=terms.clipped, generator=generator
    )
    # where(), not multiplication: the detached tokens get exactly zero gradient.
    per_token = torch.where(selected, torch.zeros((), device=logprob.device), terms.loss)
    loss = aggregate(per_token, terms.keep, agg_mode)
    metrics = ppo_metrics(terms, loss)
    metrics["select/frac"] = float(aggregate(selected.float(), terms.keep))
    metrics["select/candidate_frac"] = float(aggregate(candidates.float(), terms.keep))
    return loss, metrics


@register_policy_term("kl_cov")
def kl_cov_term(
    *,
    logprob: torch.Tensor,
    old_logprob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    entropy: torch.Tensor | None = None,
    clip_low: float = CLIP_LOW,
    clip_high: float = CLIP_HIGH,
    clip_ratio_c: float | None = None,
    agg_mode: AggMode = "token-mean",
    ratio: float = KL_COV_RATIO,
    coef: float = KL_COV_COEF,
) -> tuple[torch.Tensor, Metrics]:
    """KL-Cov: the PPO loss plus ``coef * |log pi - log pi_old|`` on :func:`kl_cov_mask` tokens.

    ``loss = aggregate(l + coef * |log r| * selected, mask, agg_mode)``; ``ratio = 0`` or
    ``coef = 0`` is exactly :func:`ppo_term`. ``|log r|`` is verl's per-token KL estimate; it is
    0 (with zero gradient) before the first update of a step and pulls the selected tokens back
    toward the sampling policy after it. Metrics add ``select/frac`` and ``loss/kl_cov`` (the
    penalty's share of the loss).
    """
    if not (math.isfinite(coef) and coef >= 0.0):
        raise ValueError(f"kl_cov_coef must be a finite number >= 0 (verl uses 1.0), got {coef}")
    terms = ppo_token_losses(
        logprob, old_logprob, advantages, mask, clip_low=clip_low, clip_high=clip_high,
        clip_ratio_c=clip_ratio_c,
    )  # fmt: skip
    selected = kl_cov_mask(centred_covariance(logprob, advantages, terms.keep), terms.keep,
                           ratio=ratio)  # fmt: skip
    zero = torch.zeros((), device=logprob.device)
    penalty = torch.where(selected, float(coef) * terms.log_ratio.abs(), zero)  # (B, T)
    loss = aggregate(terms.loss + penalty, terms.keep, agg_mode)
    metrics = ppo_metrics(terms, loss)
    metrics["select/frac"] = float(aggregate(selected.float(), terms.keep))
    metrics["loss/kl_cov"] = float(aggregate(penalty.detach(), terms.keep, agg_mode))
    return loss, metrics


@register_policy_term("top_entropy")
def top_entropy_term(
    *,
    logprob: torch.Tensor,
    old_logprob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    entropy: torch.Tensor,
    clip_low: float = CLIP_LOW,
    clip_high: float = CLIP_HIGH,
    clip_ratio_c: float | None = None,
    agg_mode: AggMode = "token-mean",
    quantile: float = TOP_ENTROPY_QUANTILE,
) -> tuple[torch.Tensor, Metrics]:
    """High-entropy minority training: the PPO loss on :func:`top_entropy_mask` tokens only.

    ``loss = aggregate(l * keep, mask, agg_mode)``; ``quantile = 1`` is exactly
    :func:`ppo_term`. Metrics add ``select/frac`` (share of masked tokens trained on) and
    ``select/entropy_threshold`` (nats).
    """
    terms = ppo_token_losses(
        logprob, old_logprob, advantages, mask, clip_low=clip_low, clip_high=clip_high,
        clip_ratio_c=clip_ratio_c,
    )  # fmt: skip
    if tuple(entropy.shape) != tuple(logprob.shape):
        raise ValueError(
            f"entropy must have shape {tuple(logprob.shape)}, got {tuple(entropy.shape)}"
        )
    keep_hi, threshold = top_entropy_mask(entropy, terms.keep, quantile=quantile)
    per_token = torch.where(keep_hi, terms.loss, torch.zeros((), device=logprob.device))
    loss = aggregate(per_token, terms.keep, agg_mode)
    metrics = ppo_metrics(terms, loss)
    metrics["select/frac"] = float(aggregate(keep_hi.float(), terms.keep))
    if math.isfinite(threshold):
        metrics["select/entropy_threshold"] = threshold
    return loss, metrics
