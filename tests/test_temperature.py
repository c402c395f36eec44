"""Tests of the pure temperature controllers (phase controller with guards, EDT, by-name lookup)."""

from __future__ import annotations

import dataclasses
import io
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agentropy.control.base import ConstantTemperature, StepObservation
from agentropy.control.temperature import (
    MODE_BUDGET,
    MODE_FORCED_EXHALE,
    MODE_NORMAL,
    EDTConfig,
    EDTTemperature,
    PhaseState,
    PhaseTemperature,
    PhaseTemperatureConfig,
    load_state,
    schedule_from_name,
    state_dict,
)
from agentropy.trace import PHASE_CODE, PHASES

P, A, R, ANS = (PHASE_CODE[p] for p in ("plan", "act", "recover", "answer"))
NAN = math.nan


def obs(phase, entropy=None, prev=None, active=None, reset=None) -> StepObservation:
    b = len(phase)
    return StepObservation(
        phase=torch.tensor(phase, dtype=torch.int64),
        entropy=torch.tensor(entropy if entropy is not None else [0.5] * b, dtype=torch.float32),
        prev_sampling_entropy=torch.tensor(prev if prev is not None else [NAN] * b),
        active=torch.tensor(active if active is not None else [True] * b),
        reset=torch.tensor(reset if reset is not None else [False] * b),
    )


def run(schedule, steps, batch=1):
    """Feed (phase, entropy, prev_sampling_entropy) triples for one row; return temps and states."""
    state = schedule.init(batch)
    temps, states = [], []
    for phase, ent, prev in steps:
        t, state = schedule.update(state, obs([phase], [ent], [prev]))
        temps.append(float(t[0]))
        states.append(state)
    return temps, states


def states_equal(a, b) -> bool:
    return all(
        x.dtype == y.dtype
        and x.shape == y.shape
        and torch.equal(x.nan_to_num(-7.0), y.nan_to_num(-7.0))
        for x, y in zip(a, b, strict=True)
    )


# --------------------------------------------------------------------------- phase temperatures


def test_each_phase_gets_its_configured_temperature():
    for cfg in (
        PhaseTemperatureConfig(),
        PhaseTemperatureConfig(plan=0.9, act=0.1, recover=1.5, answer=0.0),
    ):
        sched = PhaseTemperature(cfg)
        temps, _ = sched.update(sched.init(4), obs([P, A, R, ANS]))
        expected = torch.tensor([getattr(cfg, p) for p in PHASES], dtype=torch.float32)
        assert torch.equal(temps, expected)
        assert temps.dtype == torch.float32


def test_defaults_order_exhale_below_plan_below_inhale():
    c = PhaseTemperatureConfig()
    assert c.answer < c.act < c.plan < c.recover
    assert c.answer > 0  # answers stay sampled (on-policy log-probs)


def test_config_validation_says_what_is_wrong():
    with pytest.raises(ValueError, match="recover"):
        PhaseTemperatureConfig(recover=-0.1)
    with pytest.raises(ValueError, match="decay"):
        PhaseTemperatureConfig(decay=1.0)
    with pytest.raises(ValueError, match="horizon"):
        PhaseTemperatureConfig(horizon=-1)
    with pytest.raises(ValueError, match="n must be in"):
        EDTConfig(n=1.2)


def test_invalid_phase_code_in_active_row_raises_but_inactive_rows_are_ignored():
    sched = PhaseTemperature()
    with pytest.raises(ValueError, match="phase codes"):
        sched.update(sched.init(2), obs([P, 7]))
    temps, _ = sched.update(sched.init(2), obs([P, 7], active=[True, False]))
    assert temps[0] == pytest.approx(0.7)


def test_batch_size_mismatch_raises():
    sched = PhaseTemperature()
    with pytest.raises(ValueError, match="batch size"):
        sched.update(sched.init(3), obs([P, P]))


# ---------------------------------------------------------------------- determinism, checkpoints


def _mixed_sequence(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Mostly recover, so that long stretches exercise both guards.
    phases = torch.randint(0, 4, (n, 3), generator=g)
    phases = torch.where(torch.rand((n, 3), generator=g) < 0.7, R, phases)
    ent = torch.rand((n, 3), generator=g) * 3
    prev = torch.rand((n, 3), generator=g) * 3
    active = torch.rand((n, 3), generator=g) > 0.2
    reset = torch.rand((n, 3), generator=g) > 0.95
    return [StepObservation(phases[i], ent[i], prev[i], active[i], reset[i]) for i in range(n)]


def _cfg():
    return PhaseTemperatureConfig(
        horizon=2, contraction_window=3, baseline_window=5, recover_budget=9
    )


def test_phase_controller_is_deterministic():
    seq = _mixed_sequence()
    outs = []
    for _ in range(2):
        sched = PhaseTemperature(_cfg())
        state, temps, modes = sched.init(3), [], set()
        for o in seq:
            t, state = sched.update(state, o)
            temps.append(t)
            modes |= set(state.mode.tolist())
        outs.append((torch.stack(temps), state))
    assert torch.equal(outs[0][0], outs[1][0])
    assert states_equal(outs[0][1], outs[1][1])
    assert modes == {MODE_NORMAL, MODE_FORCED_EXHALE, MODE_BUDGET}  # both guards were exercised


@pytest.mark.parametrize("name", ["phase", "edt"])
def test_state_round_trip_json_and_torch_save_then_continue_identically(name):
    sched = schedule_from_name(name) if name == "edt" else PhaseTemperature(_cfg())
    seq = _mixed_sequence(seed=1)
    state = sched.init(3)
    for o in seq[:30]:
        _, state = sched.update(state, o)
    d = state_dict(state)
    from_json = load_state(json.loads(json.dumps(d, allow_nan=False)))  # standard JSON, no NaN
    buf = io.BytesIO()
    torch.save(d, buf)
    buf.seek(0)
    from_torch = load_state(torch.load(buf, weights_only=True))
    assert states_equal(from_json, state)
    assert states_equal(from_torch, state)
    a, b = state, from_json
    for o in seq[30:]:
        ta, a = sched.update(a, o)
        tb, b = sched.update(b, o)
        assert torch.equal(ta, tb)
    assert states_equal(a, b)


@pytest.mark.parametrize("name", ["phase", "edt", "constant:0.7"])
def test_update_arrays_equals_update_and_never_writes_its_inputs(name):
    """``update_arrays`` (NumPy, what the processor steps) gives the same bits as ``update``
    (tensors), and leaves the state and observation it was given untouched."""
    import numpy as np

    from agentropy.control.base import obs_arrays, state_arrays

    sched = PhaseTemperature(_cfg()) if name == "phase" else schedule_from_name(name)
    seq = _mixed_sequence(seed=4)
    state = sched.init(3)
    arrays = state_arrays(sched.init(3))
    for o in seq:
        t, state = sched.update(state, o)
        o_np = obs_arrays(StepObservation(*(f.clone() for f in o)))
        before = [np.copy(x) for x in (*(arrays or ()), *o_np)]
        t_np, new = sched.update_arrays(arrays, o_np)
        after = [*(arrays or ()), *o_np]
        assert all(np.array_equal(x, y, equal_nan=True) for x, y in zip(before, after, strict=True))
        assert t_np.dtype == np.float32 and np.array_equal(t_np, t.numpy())
        arrays = new
    if state is not None:
        assert states_equal(state, type(arrays)(*map(torch.from_numpy, arrays)))


@pytest.mark.parametrize(
    "cfg",
    [
        PhaseTemperatureConfig(horizon=6, contraction_window=2, recover_budget=40),
        PhaseTemperatureConfig(horizon=9, contraction_window=4, contraction_factor=0.5),
        PhaseTemperatureConfig(horizon=1, contraction_window=3, baseline_window=4),
    ],
)
def test_sampling_entropy_left_nan_where_never_read_changes_no_temperature(cfg):
    """Feeding NaN as the previous sampling entropy wherever ``sampling_entropy_rows`` said it
    is never read gives the same temperatures and modes, step for step, as feeding every value;
    only never-read window slots differ."""
    import numpy as np

    from agentropy.control.base import obs_arrays, state_arrays

    sched = PhaseTemperature(cfg)
    g = torch.Generator().manual_seed(5)
    b, n = 4, 300
    # Long recover stretches (so the guard engages), a few resets and inactive steps.
    phases = torch.where(
        torch.rand(n, b, generator=g) < 0.93, R, torch.randint(0, 4, (n, b), generator=g)
    )
    full, skip = state_arrays(sched.init(b)), state_arrays(sched.init(b))
    needed = np.ones(b, dtype=bool)
    modes, skipped = set(), 0
    for i in range(n):
        o = obs_arrays(
            StepObservation(
                phase=phases[i],
                entropy=torch.rand(b, generator=g) * 2,
                prev_sampling_entropy=torch.rand(b, generator=g) * 3,
                active=torch.rand(b, generator=g) > 0.1,
                reset=torch.rand(b, generator=g) > 0.99,
            )
        )
        t_full, full = sched.update_arrays(full, o)
        prev = np.where(needed, o.prev_sampling_entropy, np.float32(NAN))
        t_skip, skip = sched.update_arrays(skip, o._replace(prev_sampling_entropy=prev))
        assert np.array_equal(t_full, t_skip) and np.array_equal(full.mode, skip.mode), i
        rows = sched.sampling_entropy_rows(skip, o.phase)
        needed = np.where(o.active, rows, needed)
        skipped += int(np.count_nonzero(o.active & (o.phase == R) & ~rows))
        modes |= set(skip.mode.tolist())
    assert MODE_FORCED_EXHALE in modes
    assert (skipped > 100) if cfg.horizon > cfg.contraction_window else (skipped == 0)
    for name in PhaseState._fields:
        if name != "recover_window":
            assert np.array_equal(getattr(full, name), getattr(skip, name), equal_nan=True)


def test_constant_state_round_trips():
    assert load_state(json.loads(json.dumps(state_dict(None)))) is None


def test_rows_are_independent_batch_equals_row_by_row():
    sched = PhaseTemperature(_cfg())
    seq = _mixed_sequence(seed=2)
    state = sched.init(3)
    rows = [sched.init(1) for _ in range(3)]
    for o in seq:
        t, state = sched.update(state, o)
        for r in range(3):
            tr, rows[r] = sched.update(rows[r], StepObservation(*(f[r : r + 1] for f in o)))
            assert float(tr[0]) == float(t[r])


def test_inactive_rows_keep_state_and_reset_rows_restart():
    sched = PhaseTemperature(PhaseTemperatureConfig(recover_budget=2))
    state = sched.init(2)
    for _ in range(3):
        _, state = sched.update(state, obs([R, R]))
    assert state.recover_total.tolist() == [3, 3]
    before = state
    t, state = sched.update(state, obs([P, A], active=[False, True]))
    assert float(t[0]) == float(before.temperature[0])  # inactive: last temperature
    assert states_equal([f[0] for f in state], [f[0] for f in before])
    # A reset row starts a new episode: its recover budget is available again.
    t, state = sched.update(state, obs([R, R], reset=[True, False]))
    assert t.tolist() == pytest.approx([1.2, 0.7])
    assert state.recover_total.tolist() == [1, 4]


# ----------------------------------------------------------------------------------- guards

GUARD = PhaseTemperatureConfig(
    plan=0.7, recover=1.2, horizon=4, decay=0.5, contraction_window=2, baseline_window=4
)


def test_baseline_is_median_of_last_w_model_entropies_floored():
    sched = PhaseTemperature(GUARD)
    steps = [(P, e, NAN) for e in (0.1, 0.2, 0.3, 0.9, 5.0)] + [(R, 1.0, 1.0)]
    _, states = run(sched, steps)
    # last W=4 before the trigger: 0.2, 0.3, 0.9, 5.0 -> median (0.3 + 0.9) / 2
    assert float(states[-1].baseline[0]) == pytest.approx(0.6)
    _, states = run(sched, [(P, 0.01, NAN), (R, 2.0, NAN)])
    assert float(states[-1].baseline[0]) == pytest.approx(GUARD.eps)  # floored
    _, states = run(sched, [(R, 2.0, NAN)])
    assert float(states[-1].baseline[0]) == pytest.approx(GUARD.eps)  # no tokens before


def test_divergence_guard_engages_after_horizon_decays_geometrically_and_releases():
    sched = PhaseTemperature(GUARD)
    # Baseline 0.4 -> threshold 0.5. Sampling entropies of recover tokens stay at 2.0.
    steps = [(P, 0.4, 0.3)] * 6
    steps += [(R, 2.0, 0.3)]  # trigger (k = 0); prev token was plan: not in the window
    steps += [(R, 2.0, 2.0)] * 6  # k = 1..6
    steps += [(R, 2.0, 0.1)]  # window (2.0, 0.1) mean 1.05 > 0.5: still engaged
    steps += [(R, 2.0, 0.1)]  # window (0.1, 0.1) mean 0.1 <= 0.5: released
    steps += [(R, 2.0, 2.0)]  # window (0.1, 2.0) mean 1.05: engaged again from d = 1
    steps += [(P, 2.0, 2.0)]  # phase leaves recover: released
    temps, states = run(sched, steps)
    rec = temps[6:]
    gap = 0.5
    expected = [1.2] * 4  # k = 0..3 < horizon
    expected += [0.7 + gap * 0.5**d for d in (1, 2, 3)]  # k = 4, 5, 6
    expected += [0.7 + gap * 0.5**4]  # k = 7, still above
    expected += [1.2]  # k = 8, released
    expected += [0.7 + gap * 0.5]  # k = 9, engaged again
    expected += [0.7]  # plan
    assert rec == pytest.approx(expected, abs=1e-6)
    modes = [int(s.mode[0]) for s in states[6:]]
    n, f = MODE_NORMAL, MODE_FORCED_EXHALE
    assert modes == [n] * 4 + [f] * 4 + [n, f, n]
    assert int(states[-1].decay_steps[0]) == 0


def test_contracting_stretch_never_engages_and_new_trigger_restarts_horizon():
    sched = PhaseTemperature(GUARD)
    steps = [(P, 0.4, 0.3)] * 6 + [(R, 2.0, 0.3)] + [(R, 2.0, 0.45)] * 10
    temps, _ = run(sched, steps)
    assert temps[6:] == pytest.approx([1.2] * 11)  # 0.45 <= 1.25 * 0.4
    # Diverging stretch, then a tool call, then a new stretch: horizon counts from the new trigger.
    steps = [(P, 0.4, 0.3)] * 6 + [(R, 2.0, 0.3)] + [(R, 2.0, 2.0)] * 6
    steps += [(A, 0.1, 2.0)] * 2 + [(R, 2.0, 0.1)] + [(R, 2.0, 2.0)] * 3
    temps, states = run(sched, steps)
    assert temps[11] < 1.2  # engaged in the first stretch
    assert temps[13:15] == pytest.approx([0.3, 0.3])  # act
    assert temps[15:] == pytest.approx([1.2] * 4)  # new stretch, k = 0..3 < horizon
    assert int(states[-1].recover_steps[0]) == 4


def test_budget_guard_uses_plan_temperature_past_the_episode_budget():
    cfg = PhaseTemperatureConfig(recover_budget=3, horizon=100)
    sched = PhaseTemperature(cfg)
    steps = [(R, 1.0, 1.0)] * 2 + [(A, 0.1, 0.1)] + [(R, 1.0, 1.0)] * 3
    temps, states = run(sched, steps)
    # Budget counts recover tokens across stretches of the episode: 2 + 1 at 1.2, then plan.
    assert temps == pytest.approx([1.2, 1.2, 0.3, 1.2, 0.7, 0.7])
    assert [int(s.mode[0]) for s in states] == [0, 0, 0, 0, MODE_BUDGET, MODE_BUDGET]
    assert int(states[-1].recover_total[0]) == 5


def test_budget_guard_overrides_a_forced_exhale():
    cfg = dataclasses.replace(GUARD, recover_budget=6)
    sched = PhaseTemperature(cfg)
    steps = [(P, 0.4, 0.3)] * 6 + [(R, 2.0, 0.3)] + [(R, 2.0, 2.0)] * 8
    temps, states = run(sched, steps)
    assert temps[6 + 4] < 1.2 and temps[6 + 4] > 0.7  # forced exhale at k = 4, 5
    assert temps[6 + 6 :] == pytest.approx([0.7] * 3)  # budget exhausted at k = 6
    assert int(states[-1].mode[0]) == MODE_BUDGET


# -------------------------------------------------------------------------------------- EDT


def test_edt_matches_the_formula_by_hand():
    cfg = EDTConfig()
    assert (cfg.n, cfg.t0, cfg.theta) == (0.8, 1.0, 1.0)
    h = [0.0, 0.05, 0.5, 1.0, 3.0]
    sched = EDTTemperature(cfg)
    temps, _ = sched.update(sched.init(5), obs([P] * 5, h))
    for t, e in zip(temps.tolist(), h, strict=True):
        hand = (
            max(cfg.t0 * cfg.n ** (cfg.theta / e), cfg.min_temperature)
            if e > 0
            else cfg.min_temperature
        )
        assert t == pytest.approx(hand, rel=1e-6)
    assert temps[3] == pytest.approx(0.8)  # H = theta -> T = t0 * n
    custom = schedule_from_name("edt:t0=0.9,theta=0.25")
    t, _ = custom.update(custom.init(1), obs([P], [2.0]))
    assert float(t[0]) == pytest.approx(0.9 * 0.8 ** (0.25 / 2.0), rel=1e-6)


def test_edt_rejects_non_finite_entropy():
    sched = EDTTemperature()
    with pytest.raises(ValueError, match="entropy"):
        sched.update(sched.init(1), obs([P], [NAN]))


# ---------------------------------------------------------------------------------- by name


def test_schedule_from_name_builds_each_policy():
    greedy = schedule_from_name("greedy")
    assert isinstance(greedy, ConstantTemperature) and greedy.name == "greedy"
    t, _ = greedy.update(greedy.init(2), obs([P, R]))
    assert t.tolist() == [0.0, 0.0]
    const = schedule_from_name("constant:0.5")
    assert const.update(None, obs([R]))[0].tolist() == [0.5]
    assert isinstance(schedule_from_name("phase"), PhaseTemperature)
    assert isinstance(schedule_from_name("edt"), EDTTemperature)
    custom = schedule_from_name("phase:recover=1.0,horizon=16")
    assert custom.config.recover == 1.0 and custom.config.horizon == 16
    precise = PhaseTemperature(PhaseTemperatureConfig(recover=1.23456789)).name
    assert schedule_from_name(precise).config.recover == 1.23456789
    for name in ("greedy", "constant:0.7", "phase", "edt", custom.name, "edt:theta=0.5"):
        assert schedule_from_name(name).name == name  # canonical names round-trip


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("nucleus", "unknown policy.*greedy.*constant:T.*phase.*edt"),
        ("", "empty policy name"),
        ("constant:-0.5", ">= 0"),
        ("constant:", "constant:T"),
        ("constant:hot", "constant:T"),
        ("constant:nan", ">= 0"),
        ("greedy:1", "no argument"),
        ("phase:recover=-1", "recover"),
        ("phase:bogus=1", "bogus.*plan"),
        ("phase:horizon=2.5", "horizon must be an integer"),
        ("edt:theta", "key=value"),
    ],
)
def test_schedule_from_name_errors_are_helpful(name, match):
    with pytest.raises(ValueError, match=match):
        schedule_from_name(name)


# ------------------------------------------------------------------------------- properties


@settings(max_examples=25, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from([P, A, R, R, R, ANS]),
            st.floats(0.0, 5.0),
            st.floats(0.0, 5.0),
            st.booleans(),
        ),
        min_size=1,
        max_size=60,
    ),
    horizon=st.integers(0, 6),
    budget=st.integers(0, 20),
)
def test_temperatures_stay_between_plan_and_recover_in_recover(steps, horizon, budget):
    cfg = PhaseTemperatureConfig(horizon=horizon, recover_budget=budget, contraction_window=3)
    sched = PhaseTemperature(cfg)
    state = sched.init(1)
    for phase, ent, prev, active in steps:
        t, state = sched.update(state, obs([phase], [ent], [prev], active=[active]))
        t = float(t[0])
        if active and phase == R:
            assert cfg.plan - 1e-6 <= t <= cfg.recover + 1e-6
            assert (t == pytest.approx(cfg.recover)) == (int(state.mode[0]) == MODE_NORMAL)
        elif active:
            assert t == pytest.approx(getattr(cfg, PHASES[phase]))
    assert int(state.recover_total[0]) == sum(1 for p, _, _, a in steps if a and p == R)


def test_baseline_median_has_the_bits_of_torch_nanquantile():
    """The controller's NumPy median equals ``torch.nanquantile(h, 0.5)`` bit for bit (floored
    at eps; eps for an empty history), for every fill level of the ring buffer."""
    import numpy as np

    from agentropy.control.temperature import _nan_median

    g = torch.Generator().manual_seed(0)
    for w in (1, 2, 7, 64):
        n = torch.arange(0, 3 * w + 1)
        h = torch.full((len(n), w), math.nan)
        for r, k in enumerate(n.tolist()):
            m = min(k, w)
            h[r, torch.randperm(w, generator=g)[:m]] = torch.rand(m, generator=g) * 4
        ref = torch.nanquantile(h, 0.5, dim=1).nan_to_num(nan=0.05).clamp_min(0.05)
        got = torch.from_numpy(_nan_median(h.numpy(), n.numpy().astype(np.int64), 0.05))
        assert torch.equal(got, ref), w
