"""Tests for agentropy.rl.losses and .coefs: expected values recomputed independently in numpy/loops.

The trainer's objective is ``ppo_clip_loss + entropy term``; :func:`compose` builds exactly that
sum (what ``agentropy.rl.trainer.train`` and the TRL adapter compute) so the loss-level
assertions below check the composition, and :func:`np_ppo` checks the policy term alone.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from agentropy.rl import coefs as C
from agentropy.rl import losses as L
from agentropy.trace import PHASE_CODE, PHASES

torch.set_num_threads(1)

PLAN, ACT, RECOVER, ANSWER = (PHASE_CODE[p] for p in ("plan", "act", "recover", "answer"))


# ------------------------------------------------------------------------------------------
# helpers (independent of the module under test)
# ------------------------------------------------------------------------------------------


def np_ppo(lp, old, adv, mask, clip_low=0.2, clip_high=0.28, clamp=20.0):
    """Per-token PPO clipped loss by explicit loops, token-mean over mask."""
    lp, old, mask = np.asarray(lp, float), np.asarray(old, float), np.asarray(mask, float)
    adv = np.asarray(adv, float)
    if adv.ndim == 1:
        adv = np.repeat(adv[:, None], lp.shape[1], axis=1)
    total, n = 0.0, 0
    for b in range(lp.shape[0]):
        for t in range(lp.shape[1]):
            if mask[b, t] == 0:
                continue
            r = math.exp(min(max(lp[b, t] - old[b, t], -clamp), clamp))
            rc = min(max(r, 1 - clip_low), 1 + clip_high)
            total += max(-adv[b, t] * r, -adv[b, t] * rc)
            n += 1
    return total / max(n, 1)


def np_token_mean(x, mask):
    x, mask = np.asarray(x, float), np.asarray(mask, float)
    n = mask.sum()
    return float((x * mask).sum() / max(n, 1))


def safe_entropy_from_logits(logits):
    """(logprob over vocab, entropy) with 0 * log 0 = 0 and no NaN gradient for -inf logits."""
    logp = torch.log_softmax(logits, dim=-1)
    p = logp.exp()
    logp_safe = torch.where(p > 0, logp, torch.zeros_like(logp))
    return logp, -(p * logp_safe).sum(-1)


def compose(name, *, logprob, old_logprob, advantages, mask, entropy=None, phase=None,
            trigger_offset=None, clip_low=L.CLIP_LOW, clip_high=L.CLIP_HIGH, clip_ratio_c=None,
            agg_mode="token-mean", **coefs):  # fmt: skip
    """``loss = policy_loss + entropy_loss`` for loss ``name`` (vanilla, flat, target, rhythm)."""
    pg, m = L.ppo_clip_loss(
        logprob, old_logprob, advantages, mask, clip_low=clip_low, clip_high=clip_high,
        clip_ratio_c=clip_ratio_c, agg_mode=agg_mode,
    )  # fmt: skip
    term, tm = L.get_entropy_term(name)(
        entropy=entropy, mask=mask, phase=phase, trigger_offset=trigger_offset, agg_mode=agg_mode,
        **coefs,
    )  # fmt: skip
    loss = pg + term
    return loss, {**m, **tm, "loss/total": val(loss)}


def val(x):
    """Python float of a 0-dim tensor (detached: float() of a grad tensor warns)."""
    return float(x.detach())


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


# A small hand-checkable batch: 2 sequences x 4 tokens; last token of row 1 is padding.
LP = [[-0.5, -1.0, -0.2, -2.0], [-0.1, -3.0, -0.7, 0.0]]
OLD = [[-0.7, -0.5, -0.2, -1.0], [-0.4, -3.5, -0.3, 5.0]]
ADV = [1.0, -0.5]
MASK = [[1, 1, 1, 1], [1, 1, 1, 0]]
ENT = [[0.8, 0.1, 0.3, 1.9], [1.4, 2.0, 0.05, 9.0]]
PHASE = [[PLAN, ACT, ACT, RECOVER], [RECOVER, RECOVER, ANSWER, PLAN]]
TRIG = [[-1, -1, -1, 70], [10, 80, -1, -1]]


def batch(**over):
    d = {
        "logprob": t(LP).requires_grad_(True),
        "old_logprob": t(OLD),
        "advantages": t(ADV),
        "mask": t(MASK),
        "entropy": t(ENT).requires_grad_(True),
        "phase": t(PHASE, torch.int8),
        "trigger_offset": t(TRIG, torch.long),
    }
    d.update(over)
    return d


# ------------------------------------------------------------------------------------------
# aggregate
# ------------------------------------------------------------------------------------------


def loop_aggregate(x, mask, mode):
    x, mask = np.asarray(x, float), np.asarray(mask) != 0
    if mode == "token-mean":
        s = sum(x[b, i] for b in range(x.shape[0]) for i in range(x.shape[1]) if mask[b, i])
        return s / max(int(mask.sum()), 1)
    per_seq = []
    for b in range(x.shape[0]):
        vals = [x[b, i] for i in range(x.shape[1]) if mask[b, i]]
        if not vals:
            continue
        per_seq.append(sum(vals) / len(vals) if mode == "seq-mean-token-mean" else sum(vals))
    norm = x.shape[1] if mode == "seq-mean-token-sum-norm" else 1  # verl 0.9: / padded length
    return sum(per_seq) / max(len(per_seq), 1) / norm


@pytest.mark.parametrize("mode", L.AGG_MODES)
def test_aggregate_matches_loops(mode):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, generator=g, dtype=torch.float64)
    mask = torch.rand(5, 7, generator=g) > 0.4
    mask[2] = False  # one empty sequence
    got = L.aggregate(x, mask, mode)
    assert got.dim() == 0
    assert val(got) == pytest.approx(loop_aggregate(x.numpy(), mask.numpy(), mode), rel=1e-12)


@pytest.mark.parametrize("mode", L.AGG_MODES)
def test_aggregate_ignores_garbage_at_masked_positions(mode):
    x = t([[1.0, float("nan")], [float("inf"), 3.0]]).requires_grad_(True)
    mask = t([[1, 0], [0, 1]])
    out = L.aggregate(x, mask, mode)
    assert math.isfinite(val(out))
    out.backward()
    assert torch.equal(x.grad * (1 - mask), torch.zeros_like(x))
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("mode", L.AGG_MODES)
def test_aggregate_all_masked_is_zero(mode):
    x = torch.randn(3, 4, requires_grad=True)
    out = L.aggregate(x, torch.zeros(3, 4), mode)
    assert val(out) == 0.0
    out.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("mode", L.AGG_MODES)
def test_masked_sum_and_count_across_batches_equals_concatenation(mode):
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(3, 6, generator=g), torch.randn(5, 6, generator=g)
    m1, m2 = torch.rand(3, 6, generator=g) > 0.3, torch.rand(5, 6, generator=g) > 0.7
    m1[0] = False
    s1, c1 = L.masked_sum_and_count(x1, m1, mode)
    s2, c2 = L.masked_sum_and_count(x2, m2, mode)
    combined = (s1 + s2) / (c1 + c2).clamp(min=1)
    whole = L.aggregate(torch.cat([x1, x2]), torch.cat([m1, m2]), mode)
    assert val(combined) == pytest.approx(val(whole), rel=1e-6)
    # and the mean of means is (in general) different: the reason this function exists
    mean_of_means = (L.aggregate(x1, m1, mode) + L.aggregate(x2, m2, mode)) / 2
    assert val(mean_of_means) != pytest.approx(val(whole), rel=1e-6)


def test_norm_mode_is_seq_mean_token_sum_over_a_constant():
    g = torch.Generator().manual_seed(2)
    x, m = torch.randn(3, 6, generator=g), torch.rand(3, 6, generator=g) > 0.3
    mode = "seq-mean-token-sum-norm"
    seq_mean = L.aggregate(x, m, "seq-mean-token-sum")
    assert val(L.aggregate(x, m, mode)) == pytest.approx(val(seq_mean) / 6, rel=1e-6)
    fixed = L.aggregate(x, m, mode, scale_factor=4.0)
    assert val(fixed) == pytest.approx(val(seq_mean) / 4.0, rel=1e-6)
    with pytest.raises(ValueError, match="scale_factor"):
        L.aggregate(x, m, mode, scale_factor=0.0)


def test_aggregate_rejects_bad_mode_and_shape():
    with pytest.raises(ValueError, match="token-mean"):
        L.aggregate(torch.zeros(2, 2), torch.ones(2, 2), "mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same shape"):
        L.aggregate(torch.zeros(2, 2), torch.ones(2, 3))


# ------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------


def test_registry_lookup_and_unknown_name():
    assert set(L.available_losses()) == {"vanilla", "flat", "target", "rhythm", "clip_cov", "kl_cov",
                                         "top_entropy"}  # fmt: skip
    assert set(L.available_entropy_terms()) == {"none", "flat", "target", "rhythm"}
    assert L.get_entropy_term("vanilla") is L.no_entropy_term
    assert L.get_entropy_term("none") is L.no_entropy_term
    assert L.get_entropy_term("rhythm") is L.rhythm_term
    with pytest.raises(KeyError) as exc:
        L.get_entropy_term("rythm")
    msg = str(exc.value)
    assert "rythm" in msg
    for name in ("vanilla", "none", "flat", "target", "rhythm"):
        assert name in msg


def test_register_duplicate_name_rejected():
    with pytest.raises(ValueError, match="already registered"):
        L.register_entropy_term("none")(lambda **kw: None)


# ------------------------------------------------------------------------------------------
# losses against hand computations
# ------------------------------------------------------------------------------------------


def test_vanilla_matches_numpy_and_clip_higher_is_asymmetric():
    loss, m = compose("vanilla", **batch())
    assert val(loss) == pytest.approx(np_ppo(LP, OLD, ADV, MASK), rel=1e-6)
    assert m["loss/pg"] == pytest.approx(val(loss))
    assert "loss/entropy_bonus" not in m
    # clip-higher: ratio e^0.24 = 1.271 with A > 0 is within 1 + 0.28 but beyond 1 + 0.2
    one = {"old_logprob": t([[0.0]]), "advantages": t([1.0]), "mask": t([[1.0]])}
    lp = t([[0.24]]).requires_grad_(True)
    loss_hi, m_hi = compose("vanilla", logprob=lp, **one)
    assert val(loss_hi) == pytest.approx(-math.exp(0.24), rel=1e-6)
    assert m_hi["clip/frac"] == 0.0
    loss_sym, m_sym = compose("vanilla", logprob=lp, clip_high=0.2, **one)
    assert val(loss_sym) == pytest.approx(-1.2, rel=1e-6)
    assert m_sym["clip/frac"] == 1.0 and m_sym["clip/frac_high"] == 1.0


def test_dual_clip_caps_negative_advantage_tokens_with_verl_semantics():
    lp = t([[2.0, 2.0, -0.1]]).requires_grad_(True)
    old, adv, mask = torch.zeros(1, 3), t([[-1.0, 1.0, -1.0]]), torch.ones(1, 3)
    plain, m_plain = L.ppo_clip_loss(lp, old, adv, mask)
    dual, m = L.ppo_clip_loss(lp, old, adv, mask, clip_ratio_c=3.0)
    r0, r2 = math.exp(2.0), math.exp(-0.1)
    # token 0: A < 0 and ratio e^2: PPO loses e^2, dual-clip caps the loss at -A * c = 3;
    # token 1: A > 0 is never dual-clipped (-(1 + 0.28)); token 2: below the cap, unchanged.
    assert val(plain) == pytest.approx((r0 - 1.28 + r2) / 3, rel=1e-6)
    assert val(dual) == pytest.approx((3.0 - 1.28 + r2) / 3, rel=1e-6)
    assert m["clip/frac_dual"] == pytest.approx(1 / 3) and "clip/frac_dual" not in m_plain
    dual.backward()
    assert lp.grad[0, 0] == 0.0 and lp.grad[0, 2] != 0.0  # the capped token carries no gradient
    with pytest.raises(ValueError, match="clip_ratio_c"):
        L.ppo_clip_loss(lp, old, adv, mask, clip_ratio_c=1.0)


def test_entropy_term_alone_equals_the_old_bundled_loss_minus_its_ppo_term():
    # The old API bundled PPO and entropy: loss = pg - bonus + contraction. The split terms must
    # give the same number, and the entropy term must not depend on advantages or log-probs.
    kw = {"lambdas": (0.02, -0.01, 0.05, -0.03), "horizon": 64, "band_hi": 1.5,
          "contraction_coef": 0.7}  # fmt: skip
    b = batch()
    loss, m = compose("rhythm", **b, **kw)
    assert val(loss) == pytest.approx(
        m["loss/pg"] - m["loss/entropy_bonus"] + m["loss/contraction"], rel=1e-6
    )
    term, _ = L.rhythm_term(entropy=b["entropy"], mask=b["mask"], phase=b["phase"],
                            trigger_offset=b["trigger_offset"], **kw)  # fmt: skip
    assert val(term) == pytest.approx(m["loss/contraction"] - m["loss/entropy_bonus"], rel=1e-6)


def test_vanilla_per_token_advantages_and_metrics():
    adv_tok = t([[1.0, -2.0, 0.5, 0.0], [3.0, -1.0, 1.0, 7.0]])
    loss, m = compose("vanilla", **batch(advantages=adv_tok))
    assert val(loss) == pytest.approx(np_ppo(LP, OLD, adv_tok.numpy(), MASK), rel=1e-6)
    lr = np.array(LP) - np.array(OLD)
    k3 = np.expm1(lr) - lr
    assert m["kl/approx"] == pytest.approx(np_token_mean(k3, MASK), rel=1e-5)
    # vanilla still logs entropy when given it
    assert m["entropy/mean"] == pytest.approx(np_token_mean(ENT, MASK), rel=1e-6)


@pytest.mark.parametrize("mode", L.AGG_MODES)
def test_flat_is_vanilla_minus_coef_entropy(mode):
    coef = 0.03
    loss, m = compose("flat", **batch(), coef=coef, agg_mode=mode)
    van, _ = compose("vanilla", **batch(), agg_mode=mode)
    expected_bonus = coef * loop_aggregate(ENT, MASK, mode)
    assert m["loss/entropy_bonus"] == pytest.approx(expected_bonus, rel=1e-6)
    assert val(loss) == pytest.approx(val(van) - expected_bonus, rel=1e-6)
    if mode == "token-mean":
        assert val(van) == pytest.approx(np_ppo(LP, OLD, ADV, MASK), rel=1e-6)


def test_target_gate_follows_batch_entropy():
    h = np_token_mean(ENT, MASK)  # ~0.95 nats
    van, _ = compose("vanilla", **batch())
    below, m_below = compose("target", **batch(), coef=0.004, target=h + 0.1)
    assert val(below) == pytest.approx(val(van) - 0.004 * h, rel=1e-6)
    assert m_below["coef/entropy_effective"] == 0.004
    above, m_above = compose("target", **batch(), coef=0.004, target=h - 0.1)
    assert val(above) == pytest.approx(val(van), rel=1e-6)
    assert m_above["coef/entropy_effective"] == 0.0
    ungated, _ = compose("target", **batch(), coef=0.004, target=None)
    assert val(ungated) == pytest.approx(val(below), rel=1e-6)


def test_rhythm_matches_numpy():
    lambdas = (0.02, -0.01, 0.05, -0.03)
    horizon, band_hi, ccoef = 64, 1.5, 0.7
    loss, m = compose(
        "rhythm",
        **batch(),
        lambdas=lambdas,
        horizon=horizon,
        band_hi=band_hi,
        contraction_coef=ccoef,
    )
    ent, mask, ph, trig = (np.array(a, float) for a in (ENT, MASK, PHASE, TRIG))
    lam_tok = np.array(lambdas)[np.array(PHASE)]
    bonus = np_token_mean(lam_tok * ent, mask)
    # tokens: (0,3) recover, offset 70 > 64, H 1.9 > 1.5 -> excess 0.4;
    #         (1,1) recover, offset 80, H 2.0 -> excess 0.5; (1,0) offset 10 is within horizon
    sel = (mask > 0) & (ph == RECOVER) & (trig > horizon) & (ent > band_hi)
    assert sel.sum() == 2
    contraction = ccoef * (ent[sel] - band_hi).mean()
    assert contraction == pytest.approx(ccoef * 0.45)
    expected = np_ppo(LP, OLD, ADV, MASK) - bonus + contraction
    assert val(loss) == pytest.approx(expected, rel=1e-6)
    assert m["loss/entropy_bonus"] == pytest.approx(bonus, rel=1e-6)
    assert m["loss/contraction"] == pytest.approx(contraction, rel=1e-6)
    assert m["coef/lambda_recover"] == 0.05
    assert m["contraction/tokens"] == 2.0
    for p in PHASES:
        sel_p = (mask > 0) & (ph == PHASE_CODE[p])
        want = ent[sel_p].mean() if sel_p.any() else 0.0
        assert m[f"entropy/{p}_mean"] == pytest.approx(want, rel=1e-6)
        assert m[f"tokens/{p}"] == sel_p.sum()


def test_rhythm_with_equal_lambdas_and_no_contraction_is_flat():
    c = 0.01
    r, _ = compose(
        "rhythm",
        **batch(),
        lambdas=(c,) * len(PHASES),
        horizon=0,
        band_hi=0.0,
        contraction_coef=0.0,
    )
    f, _ = compose("flat", **batch(), coef=c)
    assert val(r) == pytest.approx(val(f), rel=1e-6)


def rhythm_contraction(entropy, phase, offset, horizon=64, band_hi=1.5):
    n = len(entropy)
    ent = t([entropy]).requires_grad_(True)
    loss, m = compose(
        "rhythm",
        logprob=torch.zeros(1, n),
        old_logprob=torch.zeros(1, n),
        advantages=t([0.0]),
        mask=torch.ones(1, n),
        entropy=ent,
        phase=t([phase], torch.long),
        trigger_offset=t([offset], torch.long),
        lambdas=(0.0,) * len(PHASES),
        horizon=horizon,
        band_hi=band_hi,
        contraction_coef=1.0,
    )
    loss.backward()
    return m["loss/contraction"], ent.grad[0]


def test_contraction_zero_unless_late_recover_above_band():
    r, p = RECOVER, PLAN
    # above band but within horizon; past horizon but below band; past horizon above band but
    # not recover; no trigger at all
    value, grad = rhythm_contraction([3.0, 1.0, 3.0, 3.0], [r, r, p, r], [64, 100, 100, -1])
    assert value == 0.0
    assert torch.equal(grad, torch.zeros(4))
    value, grad = rhythm_contraction([3.0, 1.0, 2.0, 3.0], [r, r, r, r], [64, 100, 100, -1])
    assert value == pytest.approx(0.5)
    assert grad[2] > 0  # minimising lowers that token's entropy
    assert torch.equal(grad[[0, 1, 3]], torch.zeros(3))


def test_entropy_terms_carry_gradient_with_the_documented_sign():
    kw = batch(advantages=t([0.0, 0.0]))
    lam = (0.01, -0.01, 0.0, 0.0)
    loss, _ = compose("rhythm", **kw, lambdas=lam, **C.RhythmConfig().loss_kwargs())
    loss.backward()
    g = kw["entropy"].grad
    ph, mask = np.array(PHASE), np.array(MASK)
    assert (g.numpy()[(ph == PLAN) & (mask > 0)] < 0).all()  # bonus: descent raises entropy
    assert (g.numpy()[(ph == ACT) & (mask > 0)] > 0).all()  # penalty: descent lowers it
    assert g[1, 3] == 0.0  # padding


# ------------------------------------------------------------------------------------------
# numerical safety
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["local", "agentropy.entropy"])
@pytest.mark.parametrize("name", ["vanilla", "flat", "target", "rhythm"])
def test_finite_gradients_with_neg_inf_logits_and_zero_grad_on_masked_tokens(name, source):
    g = torch.Generator().manual_seed(3)
    B, T, V = 3, 5, 7
    logits = torch.randn(B, T, V, generator=g)
    logits[..., 4:] = float("-inf")  # banned tokens everywhere
    logits[0, 1, 1:] = float("-inf")  # a fully peaked position: entropy exactly 0
    logits.requires_grad_(True)
    tokens = torch.randint(0, 4, (B, T), generator=g)
    tokens[0, 1] = 0
    if source == "local":
        logp_all, ent = safe_entropy_from_logits(logits)
        logprob = logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    else:
        from agentropy.entropy import logprobs_and_entropy

        logprob, ent = logprobs_and_entropy(logits, tokens)
    mask = torch.ones(B, T)
    mask[1, 3:] = 0  # padding
    mask[2, 1] = 0  # a tool token
    phase = torch.full((B, T), RECOVER, dtype=torch.long)
    offset = torch.full((B, T), 100, dtype=torch.long)
    kwargs = {
        "vanilla": {},
        "flat": {"coef": 0.1},
        "target": {"coef": 0.1, "target": None},
        "rhythm": {"lambdas": (0.1, 0.1, 0.1, 0.1), "horizon": 0, "band_hi": 0.0,
                   "contraction_coef": 1.0},
    }[name]  # fmt: skip
    loss, m = compose(
        name,
        logprob=logprob,
        old_logprob=logprob.detach() - 0.3,
        advantages=t([1.0, -1.0, 0.5]),
        mask=mask,
        entropy=ent,
        phase=phase,
        trigger_offset=offset,
        **kwargs,
    )
    assert math.isfinite(val(loss))
    assert all(math.isfinite(v) for v in m.values())
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    off = mask == 0
    assert torch.equal(logits.grad[off], torch.zeros_like(logits.grad[off]))
    assert logits.grad[~off].abs().sum() > 0


@pytest.mark.parametrize("name", ["vanilla", "flat"])
def test_padding_sentinels_do_not_leak(name):
    lp = t([[-0.5, float("nan"), 1.0]]).requires_grad_(True)
    ent = t([[0.4, float("inf"), float("nan")]]).requires_grad_(True)
    loss, m = compose(
        name,
        logprob=lp,
        old_logprob=t([[-0.4, float("-inf"), 1.0]]),
        advantages=t([1.0]),
        mask=t([[1, 0, 0]]),
        entropy=ent,
    )
    loss.backward()
    assert math.isfinite(val(loss))
    assert m["entropy/mean"] == pytest.approx(0.4)
    assert torch.equal(lp.grad[0, 1:], torch.zeros(2))
    if name == "flat":
        assert torch.equal(ent.grad[0, 1:], torch.zeros(2))
        assert ent.grad[0, 0] < 0
    else:
        assert ent.grad is None  # vanilla only logs entropy


def test_log_ratio_clamp_prevents_overflow():
    lp = t([[0.0, -1e4, -1e-3]]).requires_grad_(True)
    old = t([[-1e4, 0.0, float("-inf")]])
    loss, m = compose(
        "vanilla",
        logprob=lp,
        old_logprob=old,
        advantages=t([[-1.0, 1.0, -1.0]]),
        mask=torch.ones(1, 3),
    )
    assert math.isfinite(val(loss)) and math.isfinite(m["kl/approx"])
    loss.backward()
    assert torch.isfinite(lp.grad).all()
    # clamped ratios e^20, e^-20, e^20 -> per-token losses e^20, -(1 - 0.2), e^20
    expected = (2 * math.exp(20.0) - 0.8) / 3
    assert val(loss) == pytest.approx(expected, rel=1e-5)
    assert m["ratio/max"] == pytest.approx(math.exp(20.0), rel=1e-5)


def test_input_validation():
    with pytest.raises(ValueError, match="advantages"):
        compose("vanilla", **batch(advantages=torch.zeros(3)))
    with pytest.raises(ValueError, match="mask"):
        compose("vanilla", **batch(mask=torch.ones(2, 5)))
    with pytest.raises(ValueError, match="lambdas"):
        compose("rhythm", **batch(), lambdas=(0.0, 0.0), **C.RhythmConfig().loss_kwargs())
    with pytest.raises(ValueError, match="phase codes"):
        compose(
            "rhythm",
            **batch(phase=torch.full((2, 4), 9)), lambdas=(0.0,) * 4,
            **C.RhythmConfig().loss_kwargs(),
        )  # fmt: skip


# ------------------------------------------------------------------------------------------
# adaptive coefficients
# ------------------------------------------------------------------------------------------


def test_target_coefficient_moves_toward_target_and_clips():
    cfg = C.TargetConfig(target=0.5, step=1e-3, coef_max=2.5e-3)
    sched = C.TargetSchedule(cfg)
    s = sched.init()
    assert s == C.TargetState(coef=0.0)
    s_low = sched.update(s, {"entropy/mean": 0.1})
    assert s_low.coef == pytest.approx(1e-3) and s_low.n_updates == 1
    assert sched.update(s, {"entropy/mean": 0.9}).coef == 0.0  # clipped at 0
    for _ in range(10):
        s = sched.update(s, {"entropy/mean": 0.1})
    assert s.coef == pytest.approx(2.5e-3)  # clipped at coef_max
    s2 = sched.update(s, {"entropy/mean": 0.9, "tokens/total": 12.0})
    assert s2.coef == pytest.approx(1.5e-3)
    # no tokens: unchanged
    assert sched.update(s, {"entropy/mean": 0.0, "tokens/total": 0.0}).coef == s.coef
    assert C.TargetState.load(s2.state_dict()) == s2
    assert sched.load(s2.state_dict()) == s2


def test_rhythm_lambdas_move_per_phase_and_clip_at_lambda_max():
    cfg = C.RhythmConfig(step=2e-3, lambda_max=5e-3)
    sched = C.RhythmSchedule(cfg)
    s = sched.init()
    assert s.lambdas == (0.0,) * len(PHASES)
    metrics = {
        "entropy/plan_mean": cfg.target_plan - 0.2,  # below target -> bonus grows
        "entropy/act_mean": cfg.target_act + 0.3,  # above -> penalty grows
        "entropy/recover_mean": 0.0,  # no recover tokens: unchanged
        "tokens/recover": 0.0,
        "entropy/answer_mean": cfg.target_answer,  # at target -> unchanged
    }
    s1 = sched.update(s, metrics)
    lam = dict(zip(PHASES, s1.lambdas, strict=True))
    assert lam == pytest.approx({"plan": 2e-3, "act": -2e-3, "recover": 0.0, "answer": 0.0})
    for _ in range(5):
        s1 = sched.update(s1, metrics)
    lam = dict(zip(PHASES, s1.lambdas, strict=True))
    assert lam["plan"] == pytest.approx(cfg.lambda_max)
    assert lam["act"] == pytest.approx(-cfg.lambda_max)
    assert s1.n_updates == 6
    restored = C.RhythmState.load(s1.state_dict())
    assert restored == s1


def test_rhythm_update_from_loss_metrics_closes_the_loop():
    cfg = C.RhythmConfig()
    sched = C.RhythmSchedule(cfg)
    s = sched.init()
    _, m = compose("rhythm", **batch(), **sched.term_kwargs(s))
    s1 = sched.update(s, m)
    ent, ph, mask = np.array(ENT), np.array(PHASE), np.array(MASK)
    for p, lam, tgt in zip(PHASES, s1.lambdas, cfg.targets, strict=True):
        h = ent[(ph == PHASE_CODE[p]) & (mask > 0)].mean()
        assert lam == pytest.approx(cfg.step if h < tgt else -cfg.step)


def test_coef_state_errors():
    with pytest.raises(TypeError, match="does not match"):
        C.RhythmSchedule(C.RhythmConfig()).update(C.TargetState(0.0), {"entropy/mean": 0.1})
    with pytest.raises(KeyError, match="entropy/mean"):
        C.TargetSchedule(C.TargetConfig()).update(C.TargetState(0.0), {})
    with pytest.raises(ValueError, match="not finite"):
        C.TargetSchedule().update(C.TargetState(0.0), {"entropy/mean": float("nan")})
    with pytest.raises(TypeError):
        C.TargetSchedule(object())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (C.TargetConfig, {"step": 0.0}, "step"),
        (C.TargetConfig, {"coef_init": 1.0}, "coef_init"),
        (C.RhythmConfig, {"target_recover": -1.0}, "target_recover"),
        (C.RhythmConfig, {"lambda_init": 1.0}, "lambda_init"),
        (C.RhythmConfig, {"horizon": 2.5}, "horizon"),
        (C.RhythmConfig, {"contraction_coef": -1.0}, "contraction_coef"),
    ],
)
def test_config_validation(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_rhythm_config_has_a_target_per_phase():
    cfg = C.RhythmConfig()
    assert len(cfg.targets) == len(PHASES)
    assert set(cfg.loss_kwargs()) == {"horizon", "band_hi", "contraction_coef"}
