"""Peer policy terms (Clip-Cov, KL-Cov, top-entropy): their math as properties of the PPO term.

Each peer is the PPO per-token surrogate with some tokens detached (Clip-Cov, top-entropy) or
penalised (KL-Cov), reduced by the one ``aggregate``. So: off-settings equal PPO exactly; the
gradient of a peer is PPO's gradient times the kept-token mask; the selected share matches the
configured ratio; and the covariance is the monitor's covariance per token.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agentropy.monitor.attribution import covariance_stats, finalize
from agentropy.rl import policy_terms as P
from agentropy.rl.losses import AGG_MODES, aggregate, ppo_clip_loss, ppo_token_losses

SEEDS = st.integers(0, 2**31 - 1)
SHAPES = st.tuples(st.integers(1, 5), st.integers(1, 40))
MODES = st.sampled_from(AGG_MODES)


def make_batch(seed: int, shape: tuple[int, int], *, drift: float = 0.3) -> dict[str, Any]:
    """Random inputs: log-probs of sampled tokens, a drifted old policy, per-sequence
    advantages (some zero, as GRPO's equal-reward groups), a ragged mask, distinct entropies."""
    g = torch.Generator().manual_seed(seed)
    b, t = shape
    lp = -torch.rand(b, t, generator=g) * 4.0
    old = lp + drift * torch.randn(b, t, generator=g)
    adv = torch.randn(b, generator=g) * 1.5
    adv[torch.rand(b, generator=g) < 0.2] = 0.0
    mask = torch.rand(b, t, generator=g) < 0.8
    entropy = torch.rand(b, t, generator=g) * 3.0  # continuous: ties have probability 0
    return {"logprob": lp, "old_logprob": old, "advantages": adv, "mask": mask, "entropy": entropy}


def loss_and_grad(term: Any, batch: dict[str, Any], **kw: Any) -> tuple[torch.Tensor, torch.Tensor]:
    lp = batch["logprob"].clone().requires_grad_()
    loss, _ = term(**{**batch, "logprob": lp}, **kw)
    (grad,) = torch.autograd.grad(loss, lp, allow_unused=True)
    return loss.detach(), torch.zeros_like(lp) if grad is None else grad


def ppo_loss_and_grad(batch: dict[str, Any], mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    lp = batch["logprob"].clone().requires_grad_()
    loss, _ = ppo_clip_loss(lp, batch["old_logprob"], batch["advantages"], batch["mask"],
                            agg_mode=mode)  # fmt: skip
    (grad,) = torch.autograd.grad(loss, lp)
    return loss.detach(), grad


@settings(max_examples=40, deadline=None)
@given(seed=SEEDS, shape=SHAPES, mode=MODES)
def test_off_settings_are_exactly_ppo(seed: int, shape: tuple[int, int], mode: str) -> None:
    batch = make_batch(seed, shape)
    ref_loss, ref_grad = ppo_loss_and_grad(batch, mode)
    for term, kw in [
        (P.ppo_term, {}),
        (P.clip_cov_term, {"ratio": 0.0, "lb": -1e9, "ub": 1e9}),
        (P.kl_cov_term, {"ratio": 0.0}),
        (P.kl_cov_term, {"ratio": 1.0, "coef": 0.0}),
        (P.top_entropy_term, {"quantile": 1.0}),
    ]:
        loss, grad = loss_and_grad(term, batch, agg_mode=mode, **kw)
        assert torch.equal(loss, ref_loss), (term.__name__, kw)
        assert torch.equal(grad, ref_grad), (term.__name__, kw)


@settings(max_examples=40, deadline=None)
@given(seed=SEEDS, shape=SHAPES, mode=MODES, ratio=st.floats(0.01, 1.0))
def test_clip_cov_gradient_is_ppo_gradient_with_selected_tokens_detached(
    seed: int, shape: tuple[int, int], mode: str, ratio: float
) -> None:
    batch = make_batch(seed, shape)
    kw = {"ratio": ratio, "lb": -0.5, "ub": 2.0}  # a band wide enough to hold candidates
    loss, grad = loss_and_grad(
        P.clip_cov_term, batch, agg_mode=mode, generator=torch.Generator().manual_seed(seed), **kw
    )
    # The same draw again: the selection is a pure function of the inputs and the generator.
    terms = ppo_token_losses(batch["logprob"], batch["old_logprob"], batch["advantages"],
                             batch["mask"])  # fmt: skip
    cov = P.centred_covariance(batch["logprob"], batch["advantages"], batch["mask"])
    selected, candidates = P.clip_cov_mask(
        cov, batch["mask"], exclude=terms.clipped, generator=torch.Generator().manual_seed(seed),
        **kw,
    )  # fmt: skip
    _, ref_grad = ppo_loss_and_grad(batch, mode)
    assert torch.all(grad[selected] == 0)
    torch.testing.assert_close(grad, torch.where(selected, 0.0, ref_grad))
    # Count: max(1, floor(ratio * n)) of the candidates (all of them if fewer).
    n = int(batch["mask"].sum())
    assert int(selected.sum()) == min(P.selection_count(ratio, n), int(candidates.sum()))
    assert not (selected & ~candidates).any()
    assert not (candidates & (terms.clipped | ~batch["mask"])).any()
    assert torch.all((cov[candidates] > -0.5) & (cov[candidates] < 2.0))
    expected = aggregate(torch.where(selected, 0.0, terms.loss), batch["mask"], mode)
    torch.testing.assert_close(loss, expected.detach())


@settings(max_examples=40, deadline=None)
@given(seed=SEEDS, shape=SHAPES, mode=MODES, ratio=st.floats(0.01, 1.0), coef=st.floats(0, 3))
def test_kl_cov_penalises_exactly_the_top_covariance_tokens(
    seed: int, shape: tuple[int, int], mode: str, ratio: float, coef: float
) -> None:
    batch = make_batch(seed, shape)
    loss, grad = loss_and_grad(P.kl_cov_term, batch, agg_mode=mode, ratio=ratio, coef=coef)
    ref_loss, ref_grad = ppo_loss_and_grad(batch, mode)
    mask = batch["mask"]
    cov = P.centred_covariance(batch["logprob"], batch["advantages"], mask)
    selected = P.kl_cov_mask(cov, mask, ratio=ratio)
    n = int(mask.sum())
    assert int(selected.sum()) == P.selection_count(ratio, n)
    if selected.any() and (mask & ~selected).any():
        assert cov[selected].min() >= cov[mask & ~selected].max()
    log_ratio = (batch["logprob"] - batch["old_logprob"]).clamp(-20, 20)
    penalty = aggregate(torch.where(selected, coef * log_ratio.abs(), 0.0), mask, mode)
    torch.testing.assert_close(loss, ref_loss + penalty)
    # Unselected tokens keep PPO's gradient; selected ones add coef * sign(log r) / normaliser.
    torch.testing.assert_close(grad[~selected], ref_grad[~selected])


@settings(max_examples=40, deadline=None)
@given(seed=SEEDS, shape=SHAPES, mode=MODES, quantile=st.floats(0.05, 1.0))
def test_top_entropy_trains_the_top_quantile_only(
    seed: int, shape: tuple[int, int], mode: str, quantile: float
) -> None:
    batch = make_batch(seed, shape)
    mask = batch["mask"]
    loss, grad = loss_and_grad(P.top_entropy_term, batch, agg_mode=mode, quantile=quantile)
    keep, threshold = P.top_entropy_mask(batch["entropy"], mask, quantile=quantile)
    _, ref_grad = ppo_loss_and_grad(batch, mode)
    torch.testing.assert_close(grad, torch.where(keep, ref_grad, 0.0))
    terms = ppo_token_losses(batch["logprob"], batch["old_logprob"], batch["advantages"], mask)
    torch.testing.assert_close(loss, aggregate(torch.where(keep, terms.loss, 0.0), mask, mode))
    n = int(mask.sum())
    if n == 0:
        assert not keep.any() and math.isnan(threshold)
        return
    ent = batch["entropy"]
    # The kept share is the quantile, up to one token (linear interpolation of the threshold).
    assert abs(int(keep.sum()) - quantile * n) <= 1.0 + 1e-6
    assert int(keep.sum()) >= 1
    assert not (keep & ~mask).any()
    if (mask & ~keep).any():
        assert ent[keep].min() > ent[mask & ~keep].max()
    assert threshold == pytest.approx(float(torch.quantile(ent[mask], 1 - quantile)))


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS, shape=SHAPES)
def test_centred_covariance_is_the_monitors_batch_covariance(
    seed: int, shape: tuple[int, int]
) -> None:
    batch = make_batch(seed, shape)
    mask = batch["mask"]
    cov = P.centred_covariance(batch["logprob"], batch["advantages"], mask)
    assert torch.all(cov[~mask] == 0)
    stats = finalize(covariance_stats(batch["logprob"], batch["advantages"], mask))["all"]
    if stats["cov"] is None:
        assert not mask.any()
    else:
        assert float(aggregate(cov, mask)) == pytest.approx(stats["cov"], abs=1e-5)


def test_selection_count_and_validation() -> None:
    assert P.selection_count(0.0, 100) == 0
    assert P.selection_count(2e-4, 100) == 1  # verl: at least one token
    assert P.selection_count(0.5, 11) == 5
    assert P.selection_count(1.0, 3) == 3
    assert P.selection_count(0.3, 0) == 0
    batch = make_batch(0, (2, 8))
    with pytest.raises(ValueError, match="clip_cov_ratio must be in"):
        P.clip_cov_term(**batch, ratio=1.5)
    with pytest.raises(ValueError, match="below clip_cov_ub"):
        P.clip_cov_term(**batch, lb=5.0, ub=1.0)
    with pytest.raises(ValueError, match="kl_cov_coef"):
        P.kl_cov_term(**batch, coef=-1.0)
    with pytest.raises(ValueError, match="top_entropy_quantile must be in"):
        P.top_entropy_term(**batch, quantile=0.0)
    with pytest.raises(ValueError, match="entropy must have shape"):
        P.top_entropy_term(**{**batch, "entropy": batch["entropy"][:, :3]})


def test_registry_resolves_loss_names_and_rejects_unknown() -> None:
    from agentropy.rl.losses import LOSSES

    for loss, (term, _) in LOSSES.items():
        assert P.get_policy_term(loss) is P.get_policy_term(term)
    assert P.get_policy_term("vanilla") is P.ppo_term
    assert P.get_policy_term("top_entropy") is P.top_entropy_term
    assert set(P.available_policy_terms()) == {"ppo", "clip_cov", "kl_cov", "top_entropy"}
    with pytest.raises(KeyError, match="known policy terms"):
        P.get_policy_term("clipcov")
    with pytest.raises(ValueError, match="already registered"):
        P.register_policy_term("ppo")(P.ppo_term)


def test_metrics_report_the_selected_share() -> None:
    batch = make_batch(3, (4, 30))
    n = int(batch["mask"].sum())
    _, m = P.top_entropy_term(**batch, quantile=0.2)
    assert abs(m["select/frac"] - 0.2) <= 1 / n + 1e-6
    assert m["select/entropy_threshold"] > 0 and "loss/pg" in m and "clip/frac" in m
    _, m = P.kl_cov_term(**batch, ratio=0.1)
    assert m["select/frac"] == pytest.approx(P.selection_count(0.1, n) / n)
    assert m["loss/kl_cov"] >= 0
    _, m = P.clip_cov_term(**batch, ratio=0.1, lb=-1.0, ub=1.0)
    assert 0 < m["select/frac"] <= m["select/candidate_frac"]
