"""Properties of agentropy.entropy against fp64 references (small vocabularies, fast tier)."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agentropy.entropy import (
    EntropyBounds,
    apply_temperature,
    logprobs_and_entropy,
    step_entropy,
    token_entropy,
    token_entropy_report,
    topk_entropy_bounds,
)

torch.set_num_threads(1)
FAST = settings(max_examples=40, deadline=None)
NEG_INF = float("-inf")


@st.composite
def logit_arrays(draw, *, min_v: int = 1, max_v: int = 12, neg_inf: bool = True, scale=30.0):
    """(B, T, V) float64 numpy logits; every row keeps at least one finite entry."""
    b = draw(st.integers(1, 3))
    t = draw(st.integers(1, 4))
    v = draw(st.integers(min_v, max_v))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, t, v)) * draw(st.floats(0.01, scale))
    if neg_inf and v > 1 and draw(st.booleans()):
        drop = rng.random((b, t, v)) < draw(st.floats(0.1, 0.9))
        drop[..., int(rng.integers(v))] = False  # at least one finite logit per row
        x[drop] = NEG_INF
    return x


def ref_entropy(x: torch.Tensor, temperature=1.0) -> torch.Tensor:
    """fp64 reference: softmax over x / T with 0 * log 0 = 0, differentiable and NaN-free."""
    z = x.double()
    if isinstance(temperature, torch.Tensor):
        t = temperature.double()
        z = z / t.reshape(t.shape + (1,) * (z.dim() - t.dim()))
    else:
        z = z / temperature
    logp = torch.log_softmax(z, -1)
    p = logp.exp()
    return -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)


# ------------------------------------------------------------------------------------------
# values
# ------------------------------------------------------------------------------------------


@FAST
@given(logit_arrays())
def test_entropy_between_zero_and_log_v(x):
    h = token_entropy(torch.from_numpy(x).float())
    assert h.dtype == torch.float32 and h.shape == x.shape[:-1]
    assert bool((h >= 0).all())
    n_finite = torch.from_numpy(np.isfinite(x).sum(-1))
    assert bool((h <= torch.log(n_finite.double()).float() + 1e-5).all())


@FAST
@given(st.integers(1, 50), st.floats(-1e4, 1e4), st.sampled_from([torch.float32, torch.bfloat16]))
def test_uniform_gives_log_v(v, c, dtype):
    h = token_entropy(torch.full((2, v), c).to(dtype))
    torch.testing.assert_close(h, torch.full((2,), math.log(v)), atol=1e-5, rtol=0)


@FAST
@given(st.integers(1, 20), st.data())
def test_one_hot_gives_zero(v, data):
    i = data.draw(st.integers(0, v - 1))
    x = torch.full((1, v), NEG_INF)
    x[0, i] = data.draw(st.floats(-1e6, 1e6))
    assert token_entropy(x).item() == 0.0
    # a finite but overwhelming gap behaves the same (exp underflows to exactly 0)
    y = torch.zeros(1, v)
    y[0, i] = 1e4
    assert token_entropy(y).item() == 0.0


@FAST
@given(
    logit_arrays(), st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16])
)
def test_matches_fp64_reference(x, dtype):
    xt = torch.from_numpy(x).to(dtype)
    expected = ref_entropy(xt)  # the reference sees the same (rounded) input values
    torch.testing.assert_close(token_entropy(xt).double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_vocabulary_accuracy(dtype):
    # At V ~ 32K, sums accumulated lane by lane drift by ~1e-5 relative; ours must not.
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(64, 32000, generator=gen) * 3).to(dtype)
    x[0, :100] = NEG_INF
    x[1] *= 10.0
    err = (token_entropy(x).double() - ref_entropy(x)).abs().max().item()
    assert err < 3e-6  # lane-accumulated sums give ~5e-6 here
    tokens = torch.arange(64) * 499 + 150
    lp, _ = logprobs_and_entropy(x, tokens)
    ref_lp = torch.log_softmax(x.double(), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(lp.double(), ref_lp, atol=2e-6, rtol=1e-6)


@FAST
@given(logit_arrays(), st.integers(1, 13))
def test_chunked_equals_unchunked(x, chunk):
    xt = torch.from_numpy(x).float()
    torch.testing.assert_close(
        token_entropy(xt, chunk_size=chunk), token_entropy(xt, chunk_size=10**6), atol=1e-6, rtol=0
    )


def test_non_contiguous_and_one_dim_inputs():
    x = torch.randn(3, 6, 9, dtype=torch.float64)
    sliced = x[:, :-1]  # leading dims cannot be merged without a copy
    torch.testing.assert_close(
        token_entropy(sliced).double(), ref_entropy(sliced), atol=1e-5, rtol=0
    )
    transposed = x.transpose(0, 1)
    torch.testing.assert_close(
        token_entropy(transposed, chunk_size=2).double(), ref_entropy(transposed), atol=1e-5, rtol=0
    )
    assert token_entropy(x[0, 0]).shape == ()
    assert token_entropy(torch.zeros(0, 5)).shape == (0,)


# ------------------------------------------------------------------------------------------
# temperature
# ------------------------------------------------------------------------------------------


@FAST
@given(logit_arrays(neg_inf=False, scale=5.0), st.floats(0.05, 20.0), st.floats(0.05, 20.0))
def test_entropy_grows_with_temperature(x, t1, t2):
    xt = torch.from_numpy(x).float()
    lo, hi = min(t1, t2), max(t1, t2)
    h_lo, h_hi = token_entropy(xt, temperature=lo), token_entropy(xt, temperature=hi)
    assert bool((h_lo <= h_hi + 1e-5).all())
    torch.testing.assert_close(h_lo.double(), ref_entropy(xt, lo), atol=1e-5, rtol=0)


@FAST
@given(st.integers(2, 12), st.data())
def test_small_temperature_approaches_zero_for_unique_max(v, data):
    x = torch.tensor(data.draw(st.lists(st.floats(-5, 5), min_size=v, max_size=v)))
    top2 = x.topk(2).values
    if float(top2[0] - top2[1]) < 0.01:
        x[x.argmax()] += 0.01  # make the maximum unique by a known margin
    hs = [token_entropy(x, temperature=t).item() for t in (1.0, 0.1, 0.01, 1e-4)]
    assert all(a >= b - 1e-6 for a, b in itertools.pairwise(hs))
    assert hs[-1] <= 1e-3 * (1 + v)
    # and a huge temperature flattens towards log V
    assert token_entropy(x, temperature=1e6).item() == pytest.approx(math.log(v), abs=1e-4)


@FAST
@given(logit_arrays(), st.data())
def test_per_row_and_per_token_temperature_equal_a_loop(x, data):
    xt = torch.from_numpy(x).float()
    b, t, _ = x.shape
    per_row = torch.tensor(data.draw(st.lists(st.floats(0.1, 5), min_size=b, max_size=b)))
    per_tok = torch.tensor(
        data.draw(st.lists(st.floats(0.1, 5), min_size=b * t, max_size=b * t))
    ).reshape(b, t)
    h_row = token_entropy(xt, temperature=per_row, chunk_size=2)
    h_tok = token_entropy(xt, temperature=per_tok, chunk_size=3)
    for i in range(b):
        torch.testing.assert_close(h_row[i], token_entropy(xt[i], temperature=float(per_row[i])))
        for j in range(t):
            torch.testing.assert_close(
                h_tok[i, j], token_entropy(xt[i, j], temperature=float(per_tok[i, j]))
            )
    torch.testing.assert_close(h_tok.double(), ref_entropy(xt, per_tok), atol=1e-5, rtol=0)


def test_temperature_divides_upcast_logits():
    # bf16 logits / 3 in bf16 would round; the result must equal the fp32 division.
    x = (torch.randn(4, 11) * 7).bfloat16()
    expected = ref_entropy(x.float() / 3.0)
    torch.testing.assert_close(
        token_entropy(x, temperature=3.0).double(), expected, atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_non_positive_temperature_raises(bad):
    x = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="temperature"):
        token_entropy(x, temperature=bad)
    temps = torch.ones(2, 3)
    temps[1, 2] = bad
    with pytest.raises(ValueError, match=re.escape("position (1, 2)")):
        token_entropy(x, temperature=temps)
    with pytest.raises(ValueError, match="temperature"):
        logprobs_and_entropy(x, torch.zeros(2, 3, dtype=torch.long), temperature=bad)


def test_temperature_shape_and_grad_are_checked():
    x = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="prefix"):
        token_entropy(x, temperature=torch.ones(3))
    with pytest.raises(ValueError, match="requires grad"):
        token_entropy(x, temperature=torch.ones(2, requires_grad=True))
    torch.testing.assert_close(
        token_entropy(x, temperature=torch.tensor(2.0)), token_entropy(x, temperature=2.0)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_apply_temperature_divides_upcast_logits_per_row_and_per_token(dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 4, 9, generator=g) * 6).to(dtype)
    x[0, 1, :4] = NEG_INF  # -inf stays -inf (probability 0)
    per_tok = torch.rand(3, 4, generator=g) * 3 + 0.1
    per_row = per_tok[:, 0].contiguous()
    for temps, shaped in ((per_tok, per_tok[..., None]), (per_row, per_row[:, None, None])):
        out = apply_temperature(x, temps)
        assert out.dtype == torch.float32 and out.shape == x.shape
        assert torch.equal(out, x.float() / shaped)  # upcast first, one fp32 division
    assert torch.equal(apply_temperature(x, 0.7), x.float() / torch.tensor(0.7))
    assert torch.equal(apply_temperature(x[:, :-1], 2.0), x[:, :-1].float() / 2.0)  # a view


def test_apply_temperature_returns_a_new_tensor_with_gradient():
    x = torch.randn(2, 5, requires_grad=True)
    same = apply_temperature(x, 1.0)
    assert torch.equal(same, x) and same.data_ptr() != x.data_ptr()
    apply_temperature(x, torch.tensor([0.5, 2.0])).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([[2.0] * 5, [0.5] * 5]))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_apply_temperature_rejects_non_positive_temperature(bad):
    x = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(x, bad)
    temps = torch.ones(2, 3)
    temps[1, 2] = bad
    with pytest.raises(ValueError, match=re.escape("position (1, 2)")):
        apply_temperature(x, temps)
    with pytest.raises(ValueError, match="prefix"):
        apply_temperature(x, torch.ones(3))
    with pytest.raises(ValueError, match="requires grad"):
        apply_temperature(x, torch.ones(2, requires_grad=True))
    with pytest.raises(ValueError, match="floating-point"):
        apply_temperature(torch.ones(2, 3, dtype=torch.long), 1.0)


@FAST
@given(logit_arrays(), st.data())
def test_scaled_logits_give_the_same_bits_as_temperature_inside_the_kernel(x, data):
    """A sampler that draws from apply_temperature(z, T) records exactly the log-probs and
    entropies the kernel computes at T (the runner relies on this)."""
    b, t, _ = x.shape
    xt = torch.from_numpy(x).to(torch.bfloat16)
    temps = torch.tensor(
        data.draw(st.lists(st.floats(0.05, 5), min_size=b * t, max_size=b * t))
    ).reshape(b, t)
    tokens = torch.from_numpy(x.argmax(-1))
    lp, h = logprobs_and_entropy(xt, tokens, temperature=temps, chunk_size=2)
    lp_s, h_s = logprobs_and_entropy(apply_temperature(xt, temps), tokens, chunk_size=2)
    assert torch.equal(lp, lp_s) and torch.equal(h, h_s)


# ------------------------------------------------------------------------------------------
# gradients
# ------------------------------------------------------------------------------------------


@FAST
@given(logit_arrays(), st.integers(1, 5), st.booleans())
def test_gradients_match_safe_reference(x, chunk, with_temperature):
    x64 = torch.from_numpy(x)
    temps = (
        torch.rand(x.shape[0], x.shape[1], dtype=torch.float64) + 0.5 if with_temperature else 1.0
    )
    weights = torch.randn(x.shape[:-1], dtype=torch.float64)
    ours_in = x64.float().requires_grad_()
    t32 = temps.float() if with_temperature else 1.0
    (g_ours,) = torch.autograd.grad(
        (token_entropy(ours_in, temperature=t32, chunk_size=chunk) * weights.float()).sum(), ours_in
    )
    ref_in = x64.float().double().requires_grad_()
    (g_ref,) = torch.autograd.grad(
        (ref_entropy(ref_in, t32 if with_temperature else 1.0) * weights).sum(), ref_in
    )
    assert bool(torch.isfinite(g_ours).all())
    assert g_ours.dtype == torch.float32
    torch.testing.assert_close(g_ours.double(), g_ref, atol=2e-5, rtol=1e-4)
    assert bool((g_ours[torch.from_numpy(np.isneginf(x))] == 0).all())


def test_gradient_with_neg_inf_and_bf16_and_no_grad():
    x = torch.randn(3, 6)
    x[:, 2] = NEG_INF
    x[1, :] = NEG_INF
    x[1, 4] = 0.0  # one-hot row
    xb = x.bfloat16().requires_grad_()
    token_entropy(xb).sum().backward()
    assert xb.grad.dtype == torch.bfloat16
    assert bool(torch.isfinite(xb.grad).all())
    assert bool((xb.grad[1] == 0).all())
    with torch.no_grad():
        h = token_entropy(x.requires_grad_())
    assert not h.requires_grad


def test_gradient_through_non_contiguous_view():
    base = torch.randn(2, 5, 7, requires_grad=True)
    h = token_entropy(base[:, :-1] * 2.0, chunk_size=3)
    (g,) = torch.autograd.grad(h.sum(), base)
    base_ref = base.detach().double().requires_grad_()
    (g_ref,) = torch.autograd.grad(ref_entropy(base_ref[:, :-1] * 2.0).sum(), base_ref)
    torch.testing.assert_close(g.double(), g_ref, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------
# masks and non-finite logits
# ------------------------------------------------------------------------------------------


@FAST
@given(logit_arrays(), st.data(), st.integers(1, 4))
def test_masked_positions_are_ignored(x, data, chunk):
    xt = torch.from_numpy(x).float()
    b, t, _ = x.shape
    mask = torch.tensor(data.draw(st.lists(st.booleans(), min_size=b * t, max_size=b * t))).reshape(
        b, t
    )
    garbage = xt.clone()
    garbage[~mask] = float("nan")  # padding may hold anything, including NaN
    temps = torch.where(mask, 2.0, 0.0)  # and T = 0 there is not an error
    inp = garbage.clone().requires_grad_()
    h = token_entropy(inp, mask=mask, temperature=temps, chunk_size=chunk)
    assert bool((h[~mask] == 0).all())
    full = token_entropy(xt, temperature=2.0)
    torch.testing.assert_close(h[mask], full[mask])
    (g,) = torch.autograd.grad(h.sum(), inp)
    assert bool((g[~mask] == 0).all()) and bool(torch.isfinite(g).all())
    rep = token_entropy_report(garbage, mask=mask)
    assert torch.equal(rep.valid, mask) and rep.n_nonfinite == 0


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("chunk", [1, 2, None])
def test_nan_and_pos_inf_raise_naming_the_first_position(value, chunk):
    x = torch.randn(2, 3, 5)
    x[1, 0, 3] = value
    x[1, 2, 1] = value
    with pytest.raises(ValueError, match=re.escape("logits[1, 0, 3]")):
        token_entropy(x, chunk_size=chunk)
    with pytest.raises(ValueError, match=re.escape("logits[1, 0, 3]")):
        logprobs_and_entropy(x, torch.zeros(2, 3, dtype=torch.long), chunk_size=chunk)
    mask = torch.ones(2, 3, dtype=torch.bool)
    mask[1, 0] = False  # the first bad position is masked: the error names the next one
    with pytest.raises(ValueError, match=re.escape("logits[1, 2, 1]")):
        token_entropy(x, mask=mask, chunk_size=chunk)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_step_entropy_has_the_bits_of_token_entropy(dtype):
    """The per-step fast path equals token_entropy bit for bit (finite rows, rows with -inf,
    peaked rows), and like it raises on NaN / +inf, naming the position."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(32, 1007, generator=g) * 4).to(dtype)
    x[3, :500] = NEG_INF
    x[5] = 0.0
    x[7, 9] = 80.0  # one-hot in practice: entropy ~0, clamped at 0
    assert torch.equal(step_entropy(x), token_entropy(x))
    assert torch.equal(step_entropy(x[:, 450:550]), token_entropy(x[:, 450:550]))  # a view
    finite = x.clone()
    finite[3] = 0.0
    assert torch.equal(step_entropy(finite), token_entropy(finite))
    for value in (float("nan"), float("inf")):
        bad = finite.clone()
        bad[4, 2] = value
        with pytest.raises(ValueError, match=re.escape("logits[4, 2]")):
            step_entropy(bad)


def test_all_neg_inf_row_raises():
    x = torch.randn(2, 4)
    x[1] = NEG_INF
    with pytest.raises(ValueError, match=re.escape("logits[1, :] are all -inf")):
        token_entropy(x)


def test_nan_policy_mask_counts_and_zeroes():
    x = torch.randn(3, 4, 6, requires_grad=False)
    x[0, 1, 2] = float("nan")
    x[2, 3, 0] = float("inf")
    x[2, 0] = NEG_INF
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[2, 3] = False  # a masked bad position is not counted
    rep = token_entropy_report(x, mask=mask, chunk_size=5)
    assert rep.n_nonfinite == 2
    bad = torch.zeros(3, 4, dtype=torch.bool)
    bad[0, 1] = bad[2, 0] = True
    assert torch.equal(rep.valid, mask & ~bad)
    assert bool((rep.entropy[~rep.valid] == 0).all())
    good = token_entropy(torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0))
    torch.testing.assert_close(rep.entropy[rep.valid], good[rep.valid])
    inp = x.clone().requires_grad_()
    h = token_entropy(inp, nan_policy="mask")
    (g,) = torch.autograd.grad(h.sum(), inp)
    assert bool(torch.isfinite(g).all()) and bool((g[0, 1] == 0).all())
    with pytest.raises(ValueError, match="nan_policy"):
        token_entropy(x, nan_policy="drop")


def test_argument_errors():
    with pytest.raises(ValueError, match="chunk_size"):
        token_entropy(torch.randn(2, 3), chunk_size=0)
    with pytest.raises(ValueError, match="mask"):
        token_entropy(torch.randn(2, 3), mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        token_entropy(torch.randn(2, 3), mask=torch.ones(2))
    with pytest.raises(ValueError, match="V >= 1"):
        token_entropy(torch.randn(2, 0))
    with pytest.raises(ValueError, match="floating"):
        token_entropy(torch.ones(2, 3, dtype=torch.long))


# ------------------------------------------------------------------------------------------
# logprobs_and_entropy
# ------------------------------------------------------------------------------------------


@FAST
@given(logit_arrays(), st.data(), st.floats(0.2, 4.0), st.integers(1, 5))
def test_logprobs_match_log_softmax_gather(x, data, temperature, chunk):
    xt = torch.from_numpy(x).float()
    v = x.shape[-1]
    finite = torch.from_numpy(np.isfinite(x))
    tokens = torch.tensor(
        [
            [
                int(data.draw(st.sampled_from(finite[i, j].nonzero().squeeze(1).tolist())))
                for j in range(x.shape[1])
            ]
            for i in range(x.shape[0])
        ]
    )
    assert int(tokens.max()) < v
    inp = xt.clone().requires_grad_()
    lp, h = logprobs_and_entropy(inp, tokens, temperature=temperature, chunk_size=chunk)
    ref_in = xt.double().requires_grad_()
    ref_lp = (
        torch.log_softmax(ref_in / temperature, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    )
    ref_h = ref_entropy(ref_in, temperature)
    torch.testing.assert_close(lp.double(), ref_lp, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(h, token_entropy(xt, temperature=temperature))
    w1, w2 = torch.randn(lp.shape), torch.randn(h.shape)
    (g,) = torch.autograd.grad((lp * w1).sum() + (h * w2).sum(), inp)
    (g_ref,) = torch.autograd.grad(
        (ref_lp * w1.double()).sum() + (ref_h * w2.double()).sum(), ref_in
    )
    torch.testing.assert_close(g.double(), g_ref, atol=2e-5, rtol=1e-4)


def test_logprob_of_impossible_token_is_neg_inf_with_finite_gradient():
    x = torch.randn(2, 5)
    x[0, 3] = NEG_INF
    inp = x.clone().requires_grad_()
    lp, h = logprobs_and_entropy(inp, torch.tensor([3, 1]))
    assert lp[0].item() == NEG_INF and math.isfinite(lp[1].item())
    (g,) = torch.autograd.grad(lp[1] + h.sum(), inp)
    assert bool(torch.isfinite(g).all())


def test_logprobs_mask_and_token_checks():
    x = torch.randn(2, 3, 5)
    tokens = torch.tensor([[0, 4, -100], [1, 2, 3]])
    with pytest.raises(ValueError, match=re.escape("position (0, 2)")):
        logprobs_and_entropy(x, tokens)
    mask = tokens >= 0
    lp, h = logprobs_and_entropy(x, tokens, mask=mask)
    assert lp[0, 2].item() == 0.0 and h[0, 2].item() == 0.0
    with pytest.raises(ValueError, match="shape"):
        logprobs_and_entropy(x, tokens[:, :2])
    with pytest.raises(ValueError, match="integer"):
        logprobs_and_entropy(x, tokens.float())


# ------------------------------------------------------------------------------------------
# top-k bounds
# ------------------------------------------------------------------------------------------


@FAST
@given(st.integers(1, 40), st.integers(0, 2**31 - 1), st.floats(0.05, 8.0))
def test_topk_bounds_bracket_true_entropy_for_every_k(v, seed, scale):
    rng = np.random.default_rng(seed)
    logp = torch.log_softmax(torch.from_numpy(rng.normal(size=(3, v)) * scale), -1)
    true_h = ref_entropy(logp)
    ordered = logp.sort(-1, descending=True).values
    for k in range(1, v + 1):
        est, lo, hi = topk_entropy_bounds(ordered[:, :k], v)
        assert bool((lo.double() <= true_h + 1e-5).all()), (k, lo, true_h)
        assert bool((true_h <= hi.double() + 1e-5).all()), (k, hi, true_h)
        assert bool((lo <= est).all()) and bool((est <= hi).all())
        if k == v:
            torch.testing.assert_close(lo.double(), true_h, atol=1e-5, rtol=0)
            torch.testing.assert_close(hi.double(), true_h, atol=1e-5, rtol=0)
    # the order of the given entries does not matter
    perm = torch.from_numpy(rng.permutation(min(v, 5)))
    a = topk_entropy_bounds(ordered[:, : min(v, 5)], v)
    b = topk_entropy_bounds(ordered[:, : min(v, 5)][:, perm], v)
    torch.testing.assert_close(a.lower, b.lower)
    torch.testing.assert_close(a.upper, b.upper)


def test_topk_bounds_formula_and_estimate():
    p = torch.tensor([0.5, 0.2, 0.1])
    v = 1000
    est, lo, hi = topk_entropy_bounds(p.log(), v)
    r = 0.2
    h_k = -(p * p.log()).sum().item()
    assert lo.item() == pytest.approx(h_k - r * math.log(min(0.1, r)), abs=1e-5)
    assert hi.item() == pytest.approx(h_k - r * math.log(r) + r * math.log(v - 3), abs=1e-5)
    assert est.item() == pytest.approx((lo.item() + hi.item()) / 2, abs=1e-6)
    renormalised = -((p / p.sum()) * (p / p.sum()).log()).sum().item()
    assert renormalised < lo.item()  # the naive "entropy" would fall outside the bounds
    # missing mass smaller than the smallest listed probability: min(p_k, r) = r
    q = torch.tensor([0.9, 0.07])
    _, lo_q, _ = topk_entropy_bounds(q.log(), v)
    h_q = -(q * q.log()).sum().item()
    assert lo_q.item() == pytest.approx(h_q - 0.03 * math.log(0.03), abs=1e-5)


def test_topk_bounds_from_openai_lists():
    positions = [
        [{"token": "a", "logprob": -0.1, "bytes": [97]}, {"token": "b", "logprob": -2.5}],
        [{"token": "c", "logprob": 0.0}],
        {"token": "x", "logprob": -0.3, "top_logprobs": [{"token": "x", "logprob": -0.3}]},
        [],
    ]
    bounds = topk_entropy_bounds(positions, 50)
    assert isinstance(bounds, EntropyBounds) and bounds.lower.shape == (4,)
    padded = torch.tensor(
        [[-0.1, -2.5], [0.0, NEG_INF], [-0.3, NEG_INF], [NEG_INF, NEG_INF]], dtype=torch.float64
    )
    expected = topk_entropy_bounds(padded, 50)
    for got, want in zip(bounds, expected, strict=True):
        torch.testing.assert_close(got, want)
    assert bounds.lower[1].item() == 0.0 and bounds.upper[1].item() == 0.0  # certain token
    assert bounds.lower[3].item() == 0.0
    assert bounds.upper[3].item() == pytest.approx(math.log(50), abs=1e-5)


def test_topk_bounds_reject_bad_input():
    with pytest.raises(ValueError, match=re.escape("top_logprobs[1][0]")):
        topk_entropy_bounds([[{"logprob": -1.0}], [{"logprob": float("nan")}]], 10)
    with pytest.raises(ValueError, match="logprob"):
        topk_entropy_bounds([[{"token": "a"}]], 10)
    with pytest.raises(ValueError, match="<= 0"):
        topk_entropy_bounds(torch.tensor([[0.5, -1.0]]), 10)
    with pytest.raises(ValueError, match="vocab_size"):
        topk_entropy_bounds(torch.tensor([[-1.0, -2.0, -3.0]]), 2)
    with pytest.raises(ValueError, match="vocab_size"):
        topk_entropy_bounds(torch.tensor([[-1.0]]), 0)
