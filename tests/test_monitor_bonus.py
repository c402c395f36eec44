"""The entropy bonus's first-order entropy change (agentropy.monitor.attribution.bonus_stats)."""

from __future__ import annotations

import math

import pytest
import torch

from agentropy.monitor.attribution import GROUPS, bonus_metrics, bonus_stats
from agentropy.trace import PHASES


def softmax_entropy(z: torch.Tensor) -> torch.Tensor:
    lp = torch.log_softmax(z, -1)
    return -(lp.exp() * lp).sum(-1)


def sampled(z: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` sampled tokens per state of logits ``z`` (S, V): their log-probs and the states'
    exact entropies, both (S, n)."""
    g = torch.Generator().manual_seed(seed)
    lp = torch.log_softmax(z.double(), -1)
    a = torch.multinomial(lp.exp(), n, replacement=True, generator=g)
    h = softmax_entropy(z.double())[:, None].expand(-1, n)
    return lp.gather(1, a), h


@pytest.mark.parametrize("variant", ["npg", "pg"])
def test_predicts_the_entropy_change_of_a_bonus_step(variant):
    """A small logit step on ``c * H`` (npg: the centred soft advantage; pg: autograd's exact
    gradient) changes each state's entropy by what the sampled estimate predicts, within its
    Monte Carlo error; a penalty (c < 0) lowers it by the same amount."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 7, generator=g, dtype=torch.float64) * 2
    eta = 1e-4
    for c in (0.5, -0.5):
        if variant == "npg":
            lp = torch.log_softmax(z, -1)
            dz = eta * c * (-lp - softmax_entropy(z)[:, None])
        else:
            zz = z.clone().requires_grad_(True)
            (c * softmax_entropy(zz).sum()).backward()
            assert zz.grad is not None
            dz = eta * zz.grad
        realised = softmax_entropy(z + dz) - softmax_entropy(z)  # (S,)
        lp, h = sampled(z, 40_000, seed=2)
        for s in range(z.shape[0]):
            st = bonus_stats(
                lp[s : s + 1], h[s : s + 1], torch.ones_like(lp[s : s + 1], dtype=torch.bool),
                c, variant=variant,
            )  # fmt: skip
            pred = bonus_metrics(st, eta=eta)["cov/all_bonus_pred_dH"]
            assert math.copysign(1, pred) == math.copysign(1, c)
            assert pred == pytest.approx(float(realised[s]), rel=0.05)


def test_per_phase_coefficients_groups_and_mask():
    """Per-phase coefficients weight each token by its phase's value; phase rows add up to the
    ``all`` row; masked-out padding (-inf, NaN) is ignored; a phase without tokens is left out."""
    g = torch.Generator().manual_seed(3)
    lp = -torch.rand(4, 6, generator=g) * 3
    h = torch.rand(4, 6, generator=g) * 2
    mask = torch.rand(4, 6, generator=g) > 0.3
    phase = torch.randint(0, 3, (4, 6), generator=g)  # last phase unused
    lp = torch.where(mask, lp, torch.tensor(-math.inf))
    h = torch.where(mask, h, torch.tensor(math.nan))
    lam = torch.tensor([1e-3, 2e-3, -1e-3, 5e-3])
    st = bonus_stats(lp, h, mask, lam, phase)
    assert st.shape == (len(GROUPS), 2)
    assert float(st[1:, 0].sum()) == float(st[0, 0]) == int(mask.sum())
    assert float(st[1:, 1].sum()) == pytest.approx(float(st[0, 1]), abs=1e-15)
    m = bonus_metrics(st)
    want = (lam[phase].double() * (lp.double() + h.double()) ** 2)[mask].mean()
    assert m["cov/all_bonus_pred_dH"] == pytest.approx(float(want), rel=1e-12)
    sel = mask & (phase == 2)
    want2 = (lam[2].double() * (lp.double() + h.double()) ** 2)[sel].mean()
    assert m[f"cov/{PHASES[2]}_bonus_pred_dH"] == pytest.approx(float(want2), rel=1e-12)
    assert f"cov/{PHASES[3]}_bonus_pred_dH" not in m
    # one global coefficient equals the same value per phase
    same = bonus_stats(lp, h, mask, torch.full((len(PHASES),), 2e-3, dtype=torch.float64), phase)
    assert torch.allclose(bonus_stats(lp, h, mask, 2e-3, phase), same, rtol=1e-12, atol=0)


def test_rejects_bad_input():
    lp, h, mask = torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="per-phase coef"):
        bonus_stats(lp, h, mask, torch.ones(len(PHASES)))  # no phase codes
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        bonus_stats(lp, h[:, :2], mask, 1e-3)
    with pytest.raises(ValueError, match="finite"):
        bonus_stats(lp, torch.full((2, 3), math.inf), mask, 1e-3)
    with pytest.raises(ValueError, match="variant"):
        bonus_stats(lp, h, mask, 1e-3, variant="x")  # type: ignore[arg-type]
