"""Why entropy moved: per-phase covariance of sampled tokens' log-prob and advantage.

Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models"
(arXiv 2505.22617): for a softmax policy with logits ``z``, one update changes the entropy at a
state ``s`` by, to first order,

    H(pi^{k+1} | s) - H(pi^k | s)  ~  -Cov_{a ~ pi^k(.|s)}( log pi^k(a|s),  z^{k+1}_{s,a} - z^k_{s,a} ).

Under natural policy gradient the logit change is ``eta * A(s, a)``, so
``dH ~ -eta * Cov(log pi, A)`` (the paper's ``npg`` case); under vanilla policy gradient with a
tabular softmax it is ``eta * pi(a|s) * A(s, a)``, so ``dH ~ -eta * Cov(log pi, pi * A)``
(``pg``). A high-probability token with a positive advantage (or a rare one with a negative
advantage) lowers entropy; a rare token with a positive advantage raises it. The paper's
Clip-Cov/KL-Cov estimate the covariance over a batch from the sampled tokens, centring log-probs
and advantages over the batch; so do we, per phase (centred within the phase) and over all
tokens:

    cov_g = sum_i m_i (x_i - xbar_g)(y_i - ybar_g) / n_g,   x = log pi(token),  y = A  (or pi * A)

over the sampled tokens ``i`` of group ``g`` (mask ``m``: assistant tokens only). ``eta`` (the
step in logit space) is not the optimiser's learning rate for a neural network, so the predicted
change ``-eta * cov`` is reported with ``eta = 1`` by default and :func:`agreement` fits the scale
on a run (least squares through the origin) while the Pearson correlation of predicted and
realised changes, with its bootstrap interval, is the scale-free measure of how well they agree.

**Entropy bonus.** The covariance is the policy-gradient term only. A loss with an entropy term
``-c * H`` (``loss=flat``, ``target``, ``rhythm``: per-phase ``c``) moves the logits too: its
gradient at a state is that of a policy gradient with the per-token pseudo-advantage
``c * (-log pi(a|s) - H(s))`` (same token weights when both terms share the aggregation, the
trainer's default), so to first order it changes the entropy by

    npg:  eta * c * Var_{a ~ pi}(log pi(a|s)) = eta * c * E_a[(log pi(a|s) + H(s))^2]
    pg:   eta * c * E_a[pi(a|s) (log pi(a|s) + H(s))^2],

always >= 0 for a bonus. With the exact entropy ``H(s)`` recorded at each sampled token,
``(log pi(a) + H(s))^2`` (times ``pi(a)`` for ``pg``) is an unbiased one-sample estimate of the
expectation; :func:`bonus_stats` sums it per group and :func:`bonus_metrics` logs
``cov/<group>_bonus_pred_dH``, to be added to ``cov/<group>_pred_dH`` (same ``eta`` units).
Not modelled: PPO clipping (inactive at the first update of a step), Adam's per-coordinate
scaling, ``rhythm``'s contraction term.

Reductions follow the project's rule (sum values and counts, divide once): :func:`covariance_stats`
returns sums ``(n, sum x, sum y, sum xy)`` per group that add across minibatches and ranks;
:func:`finalize` turns them into covariances. Use the log-probs of the policy *before* the update
(the rollout's, or the first-epoch recomputation) at T = 1: the covariance is under ``pi^k``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from agentropy.trace import PHASES

__all__ = [
    "GROUPS",
    "agreement",
    "attribution_metrics",
    "bonus_metrics",
    "bonus_stats",
    "covariance_stats",
    "entropy_change_attribution",
    "finalize",
]

#: Row order of the statistics: all tokens, then one row per phase.
GROUPS: tuple[str, ...] = ("all", *PHASES)

Variant = Literal["npg", "pg"]


def covariance_stats(
    logprob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    phase: torch.Tensor | None = None,
    *,
    variant: Variant = "npg",
) -> torch.Tensor:
    """Sufficient statistics of the log-prob / advantage covariance, per group.

    ``logprob`` (B, T) log-probs of the sampled tokens (nats, T = 1, current policy);
    ``advantages`` (B,) per sequence or (B, T) per token; ``mask`` (B, T) bool, True on the
    sampled assistant tokens that carry loss; ``phase`` (B, T) int phase codes into
    :data:`agentropy.trace.PHASES` (other values, e.g. -1, count only in ``all``), or None.
    ``variant`` ``npg`` uses ``y = A``; ``pg`` uses ``y = exp(logprob) * A``.

    Returns (5, 4) float64 ``[n, sum x, sum y, sum xy]`` for :data:`GROUPS`; sum the results of
    several minibatches (or all-reduce them across ranks) before :func:`finalize`.
    """
    if variant not in ("npg", "pg"):
        raise ValueError(f"variant must be 'npg' or 'pg', got {variant!r}")
    if logprob.dim() != 2 or mask.shape != logprob.shape:
        raise ValueError(
            f"logprob and mask must both be (B, T); got {tuple(logprob.shape)} and "
            f"{tuple(mask.shape)}"
        )
    x = logprob.detach().to(torch.float64)
    adv = advantages.detach().to(torch.float64)
    if adv.dim() == 1 and adv.shape[0] == x.shape[0]:
        adv = adv[:, None].expand_as(x)
    if adv.shape != x.shape:
        raise ValueError(
            f"advantages must be (B,) or (B, T) = {tuple(x.shape)}, got {tuple(advantages.shape)}"
        )
    m = mask.to(torch.bool)
    # Masked-out positions may hold padding sentinels (-inf, NaN): zero them before any product.
    x = torch.where(m, x, 0.0)
    y = torch.where(m, adv, 0.0)
    if variant == "pg":
        y = torch.where(m, torch.exp(x) * y, 0.0)
    if bool((m & ~(torch.isfinite(x) & torch.isfinite(y))).any()):
        raise ValueError("log-probs and advantages of masked-in tokens must be finite")
    groups = [m]
    for code in range(len(PHASES)):
        groups.append(m & (phase == code) if phase is not None else torch.zeros_like(m))
    rows = []
    for g in groups:
        w = g.to(torch.float64)
        rows.append(torch.stack([w.sum(), (w * x).sum(), (w * y).sum(), (w * x * y).sum()]))
    return torch.stack(rows)


def finalize(stats: torch.Tensor) -> dict[str, dict[str, float | int | None]]:
    """Covariance per group from summed :func:`covariance_stats`: ``{group: {"n", "cov"}}``.

    ``cov = sum xy / n - (sum x / n)(sum y / n)`` (population covariance over the group's tokens);
    None for a group without tokens.
    """
    stats = stats.to(torch.float64)
    if stats.shape != (len(GROUPS), 4):
        raise ValueError(f"stats must be ({len(GROUPS)}, 4), got {tuple(stats.shape)}")
    out: dict[str, dict[str, float | int | None]] = {}
    for name, (n, sx, sy, sxy) in zip(GROUPS, stats.tolist(), strict=True):
        cov = None if n <= 0 else sxy / n - (sx / n) * (sy / n)
        out[name] = {"n": round(n), "cov": cov}
    return out


def entropy_change_attribution(
    logprob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    phase: torch.Tensor | None = None,
    *,
    eta: float = 1.0,
    variant: Variant = "npg",
) -> dict[str, float]:
    """Per-phase covariance and the entropy change it predicts, as namespaced metrics.

    Same inputs as :func:`covariance_stats`. Returns ``cov/<group>`` (nats x advantage units),
    ``cov/<group>_pred_dH`` (``-eta * cov``, nats: the first-order entropy change of an update
    with logit step ``eta``) and ``cov/<group>_tokens`` for :data:`GROUPS` with tokens; log them
    next to the realised change of ``entropy/<phase>_mean`` between steps.
    """
    return attribution_metrics(
        covariance_stats(logprob, advantages, mask, phase, variant=variant), eta=eta
    )


def attribution_metrics(stats: torch.Tensor, *, eta: float = 1.0) -> dict[str, float]:
    """The metrics of :func:`entropy_change_attribution` from summed :func:`covariance_stats`
    (a trainer adds the statistics of a step's minibatches, then calls this once)."""
    out: dict[str, float] = {}
    for name, r in finalize(stats).items():
        if r["cov"] is None:
            continue
        cov = float(r["cov"])
        out[f"cov/{name}"] = cov
        out[f"cov/{name}_pred_dH"] = -eta * cov
        out[f"cov/{name}_tokens"] = float(r["n"] or 0)
    return out


def bonus_stats(
    logprob: torch.Tensor,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    coef: float | torch.Tensor,
    phase: torch.Tensor | None = None,
    *,
    variant: Variant = "npg",
) -> torch.Tensor:
    """Sufficient statistics of the entropy bonus's first-order entropy change, per group.

    ``logprob`` (B, T) log-probs of the sampled tokens (nats, T = 1); ``entropy`` (B, T) the
    exact model entropy at each of those positions (T = 1); ``mask`` (B, T) bool, as in
    :func:`covariance_stats`; ``coef`` the entropy coefficient ``c`` of the loss ``-c * H``:
    a number, or (len(PHASES),) one per phase (``rhythm``'s lambdas, indexed by ``phase``).
    Returns (5, 2) float64 ``[n, sum c (log pi + H)^2]`` (``pg``: ``c pi (log pi + H)^2``) for
    :data:`GROUPS`; sums of minibatches add. :func:`bonus_metrics` divides once.
    """
    if variant not in ("npg", "pg"):
        raise ValueError(f"variant must be 'npg' or 'pg', got {variant!r}")
    if logprob.dim() != 2 or mask.shape != logprob.shape or entropy.shape != logprob.shape:
        raise ValueError(
            f"logprob, entropy and mask must all be (B, T); got {tuple(logprob.shape)}, "
            f"{tuple(entropy.shape)} and {tuple(mask.shape)}"
        )
    m = mask.to(torch.bool)
    x = torch.where(m, logprob.detach().to(torch.float64), 0.0)
    h = torch.where(m, entropy.detach().to(torch.float64), 0.0)
    c = torch.as_tensor(coef, dtype=torch.float64)
    if c.dim() == 1:
        if c.shape[0] != len(PHASES) or phase is None:
            raise ValueError(
                f"a per-phase coef needs {len(PHASES)} values and phase codes, got shape "
                f"{tuple(c.shape)} and phase {'None' if phase is None else 'given'}"
            )
        codes = phase.long()
        if bool((m & ((codes < 0) | (codes >= len(PHASES)))).any()):
            raise ValueError(f"phase codes of masked-in tokens must be in [0, {len(PHASES)})")
        c = c[codes.clamp(0, len(PHASES) - 1)]
    elif c.dim() != 0:
        raise ValueError(f"coef must be a number or one per phase, got shape {tuple(c.shape)}")
    y = c * (x + h) ** 2
    if variant == "pg":
        y = torch.exp(x) * y
    y = torch.where(m, y, 0.0)
    if bool((m & ~(torch.isfinite(x) & torch.isfinite(h))).any()):
        raise ValueError("log-probs and entropies of masked-in tokens must be finite")
    rows = []
    for code in range(-1, len(PHASES)):
        g = m if code < 0 else (m & (phase == code) if phase is not None else torch.zeros_like(m))
        w = g.to(torch.float64)
        rows.append(torch.stack([w.sum(), (w * y).sum()]))
    return torch.stack(rows)


def bonus_metrics(stats: torch.Tensor, *, eta: float = 1.0) -> dict[str, float]:
    """``cov/<group>_bonus_pred_dH`` (nats, logit step ``eta``): the entropy bonus's predicted
    first-order entropy change, from summed :func:`bonus_stats`; groups without tokens are left
    out. Add it to ``cov/<group>_pred_dH`` for the prediction of the whole loss."""
    stats = stats.to(torch.float64)
    if stats.shape != (len(GROUPS), 2):
        raise ValueError(f"stats must be ({len(GROUPS)}, 2), got {tuple(stats.shape)}")
    return {
        f"cov/{name}_bonus_pred_dH": eta * s / n
        for name, (n, s) in zip(GROUPS, stats.tolist(), strict=True)
        if n > 0
    }


def agreement(
    predicted: Sequence[float],
    realised: Sequence[float],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """How well predicted entropy changes match realised ones over a run.

    ``predicted`` (S,) ``-cov`` (or ``-eta * cov``) per step; ``realised`` (S,) the entropy change
    that followed each update (entropy of the next step's rollouts minus this step's), nats.
    Pairs with a NaN are skipped. Returns ``n``, Pearson ``r`` with a percentile bootstrap
    interval ``ci`` (resampling steps), ``sign_agreement`` (share of steps where the signs match)
    and ``eta`` (least-squares scale through the origin: realised ~ eta * predicted). Values are
    None where undefined (fewer than 3 pairs, or a constant series).
    """
    import numpy as np

    p = np.asarray(predicted, np.float64)
    r = np.asarray(realised, np.float64)
    if p.shape != r.shape or p.ndim != 1:
        raise ValueError(
            f"predicted and realised must be 1-D of equal length, got {p.shape}, {r.shape}"
        )
    ok = np.isfinite(p) & np.isfinite(r)
    p, r = p[ok], r[ok]
    n = int(p.shape[0])
    out: dict[str, Any] = {"n": n, "r": None, "ci": None, "sign_agreement": None, "eta": None}
    if n == 0:
        return out
    out["sign_agreement"] = float(np.mean(np.sign(p) == np.sign(r)))
    pp = float((p * p).sum())
    out["eta"] = float((p * r).sum() / pp) if pp > 0 else None
    if n < 3 or p.std() == 0 or r.std() == 0:
        return out
    out["r"] = float(np.corrcoef(p, r)[0, 1])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    bp, br = p[idx], r[idx]
    bp = bp - bp.mean(1, keepdims=True)
    br = br - br.mean(1, keepdims=True)
    den = np.sqrt((bp * bp).sum(1) * (br * br).sum(1))
    rs = np.divide((bp * br).sum(1), den, out=np.full(n_boot, np.nan), where=den > 0)
    rs = rs[np.isfinite(rs)]
    if rs.shape[0]:
        a = (1.0 - level) / 2.0
        out["ci"] = [float(np.quantile(rs, a)), float(np.quantile(rs, 1.0 - a))]
    return out
