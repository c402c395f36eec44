"""Covariance attribution of entropy change (arXiv 2505.22617): estimator, theory, agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agentropy.monitor.attribution import (
    GROUPS,
    agreement,
    covariance_stats,
    entropy_change_attribution,
    finalize,
)


def batch(seed: int = 0, b: int = 4, t: int = 9):
    g = torch.Generator().manual_seed(seed)
    logprob = -torch.rand(b, t, generator=g) * 3
    adv = torch.randn(b, generator=g)
    mask = torch.rand(b, t, generator=g) > 0.3
    phase = torch.randint(0, 4, (b, t), generator=g)
    return logprob, adv, mask, phase


def test_matches_numpy_population_covariance_per_phase():
    logprob, adv, mask, phase = batch()
    # padding sentinels where the mask is off must not leak in
    logprob = torch.where(mask, logprob, torch.tensor(-math.inf))
    got = finalize(covariance_stats(logprob, adv, mask, phase))
    y = adv[:, None].expand_as(logprob)
    for gi, name in enumerate(GROUPS):
        sel = mask if name == "all" else mask & (phase == gi - 1)
        x, yy = logprob[sel].double().numpy(), y[sel].double().numpy()
        assert got[name]["n"] == int(sel.sum())
        want = np.cov(x, yy, bias=True)[0, 1] if x.size else None
        if want is None:
            assert got[name]["cov"] is None
        else:
            assert got[name]["cov"] == pytest.approx(want, abs=1e-12)


def test_pg_variant_weights_advantage_by_probability():
    logprob, adv, mask, _ = batch(1)
    got = finalize(covariance_stats(logprob, adv, mask, variant="pg"))["all"]["cov"]
    x = logprob[mask].double()
    y = (logprob.double().exp() * adv[:, None].double())[mask]
    assert got == pytest.approx(float(((x - x.mean()) * (y - y.mean())).mean()), abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), cut=st.integers(1, 5))
def test_statistics_add_across_minibatches(seed, cut):
    """Summing per-minibatch statistics equals one pass over the batch (no mean of means)."""
    logprob, adv, mask, phase = batch(seed, b=6)
    whole = covariance_stats(logprob, adv, mask, phase)
    parts = covariance_stats(logprob[:cut], adv[:cut], mask[:cut], phase[:cut]) + covariance_stats(
        logprob[cut:], adv[cut:], mask[cut:], phase[cut:]
    )
    assert torch.allclose(whole, parts, atol=1e-9)


def _entropy(z: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(z, -1)
    return -(p * torch.log_softmax(z, -1)).sum(-1)


@pytest.mark.parametrize("variant", ["npg", "pg"])
def test_first_order_theory_on_a_tabular_softmax(variant):
    """Exact entropy change of one logit step vs -eta * Cov_pi(log pi, step / eta), per state."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(16, 12, generator=g, dtype=torch.float64) * 2  # 16 states, 12 actions
    a = torch.randn(16, 12, generator=g, dtype=torch.float64)
    p = torch.softmax(z, -1)
    logp = torch.log_softmax(z, -1)
    y = a if variant == "npg" else p * a
    for eta in (1e-2, 1e-3):
        dh = _entropy(z + eta * y) - _entropy(z)
        cov = (p * logp * y).sum(-1) - (p * logp).sum(-1) * (p * y).sum(-1)
        pred = -eta * cov
        assert torch.allclose(dh, pred, rtol=0, atol=50 * eta**2)  # second-order remainder


def test_sampled_estimator_is_unbiased_for_the_policy_covariance():
    """One state, many sampled tokens: the batch estimator converges to Cov_pi(log pi, A)."""
    g = torch.Generator().manual_seed(5)
    z = torch.randn(8, generator=g, dtype=torch.float64)
    a = torch.randn(8, generator=g, dtype=torch.float64)
    p = torch.softmax(z, -1)
    logp = torch.log_softmax(z, -1)
    exact = float((p * logp * a).sum() - (p * logp).sum() * (p * a).sum())
    tok = torch.multinomial(p, 200_000, replacement=True, generator=g)
    got = finalize(covariance_stats(logp[tok][None], a[tok][None], torch.ones(1, tok.numel())))
    assert got["all"]["cov"] == pytest.approx(exact, abs=5e-3)


def test_attribution_metrics_keys_and_sign():
    # a likely token with positive advantage and an unlikely one with negative: entropy falls
    logprob = torch.tensor([[-0.1, -3.0, -0.2, -2.5]])
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    phase = torch.tensor([[0, 0, 3, 3]])
    m = entropy_change_attribution(logprob, adv, mask, phase, eta=2.0)
    assert m["cov/all"] > 0 and m["cov/all_pred_dH"] == pytest.approx(-2.0 * m["cov/all"])
    assert m["cov/plan_tokens"] == 2 and "cov/act" not in m  # no act tokens
    assert m["cov/answer_pred_dH"] < 0


def test_bad_inputs_are_errors():
    logprob, adv, mask, _ = batch()
    with pytest.raises(ValueError, match="variant"):
        covariance_stats(logprob, adv, mask, variant="adam")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="advantages"):
        covariance_stats(logprob, adv[:2], mask)
    bad = logprob.clone()
    bad[mask.nonzero()[0].tolist()[0], mask.nonzero()[0].tolist()[1]] = math.nan
    with pytest.raises(ValueError, match="finite"):
        covariance_stats(bad, adv, mask)


def test_agreement_recovers_scale_and_correlation():
    rng = np.random.default_rng(0)
    pred = rng.normal(size=60)
    real = 0.3 * pred + rng.normal(scale=0.05, size=60)
    out = agreement(pred, real)
    assert out["n"] == 60 and out["r"] > 0.95
    assert out["ci"][0] <= out["r"] <= out["ci"][1]
    assert out["eta"] == pytest.approx(0.3, abs=0.03) and out["sign_agreement"] > 0.9
    noise = agreement(pred, rng.normal(size=60))
    assert noise["ci"][0] < 0 < noise["ci"][1]
    assert agreement([1.0, math.nan], [1.0, 2.0])["r"] is None
