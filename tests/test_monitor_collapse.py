"""The collapse rule: sampling noise below the floor is not a collapse, a level that stays down is.

Regression for the 9 false ``collapse`` alerts on two healthy 50-step runs of the shipped agent
(RESULTS.md, "Monitor"): their answer and act phases are per-step means over few tokens that dip
below the 0.05-nat floor for single steps while the run is healthy.
"""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from agentropy.monitor import Alert, Monitor, MonitorConfig
from agentropy.monitor.detector import relative_noise

# Logged per-step means (nats) of healthy seed 1 (runs/mon/healthy-1, metrics.parquet,
# entropy/answer_mean and entropy/act_mean, rounded to 3 digits): the first collapse rule
# fired on them at steps 17, 24, 43 (answer) and 22 (act).
HEALTHY_ANSWER = [
    0.093, 0.315, 0.035, 0.167, 0.101, 0.121, 0.089, 0.250, 0.050, 0.284,
    0.070, 0.296, 0.111, 0.037, 0.077, 0.057, 0.048, 0.009, 0.028, 0.122,
    0.046, 0.031, 0.082, 0.039, 0.278, 0.122, 0.266, 0.213, 0.030, 0.072,
    0.139, 0.056, 0.165, 0.065, 0.138, 0.071, 0.171, 0.086, 0.159, 0.069,
    0.201, 0.135, 0.048, 0.068, 0.012, 0.040, 0.252, 0.078, 0.021, 0.147,
]  # fmt: skip
HEALTHY_ACT = [
    0.098, 0.057, 0.067, 0.067, 0.081, 0.085, 0.076, 0.089, 0.093, 0.083,
    0.072, 0.112, 0.083, 0.120, 0.119, 0.081, 0.072, 0.095, 0.092, 0.109,
    0.110, 0.049, 0.109, 0.085, 0.099, 0.095, 0.120, 0.088, 0.096, 0.085,
    0.101, 0.059, 0.088, 0.063, 0.098, 0.078, 0.095, 0.090, 0.108, 0.083,
    0.074, 0.071, 0.076, 0.059, 0.071, 0.069, 0.121, 0.121, 0.066, 0.072,
]  # fmt: skip
HEALTHY_REWARD = [
    0.250, 0.094, 0.188, 0.125, 0.188, 0.188, 0.156, 0.031, 0.219, 0.125,
    0.188, 0.219, 0.281, 0.250, 0.156, 0.188, 0.219, 0.250, 0.281, 0.156,
    0.250, 0.188, 0.312, 0.250, 0.031, 0.125, 0.125, 0.250, 0.250, 0.219,
    0.188, 0.219, 0.188, 0.250, 0.281, 0.219, 0.188, 0.125, 0.156, 0.250,
    0.281, 0.250, 0.188, 0.250, 0.219, 0.219, 0.125, 0.250, 0.281, 0.188,
]  # fmt: skip
#: The first rule's equivalent: the latest value alone (no noise allowance) below the floor.
SINGLE_STEP_RULE = MonitorConfig(collapse_window=1, collapse_z=0.0)


def collapses(rows: list[dict], config: MonitorConfig | None = None) -> list[Alert]:
    mon = Monitor(config)
    state = mon.init()
    out: list[Alert] = []
    for i, row in enumerate(rows):
        alerts, state = mon.update(state, row, step=i + 1)
        out += [a for a in alerts if a.name == "collapse"]
    return out


def healthy_rows() -> list[dict]:
    return [
        {"entropy_answer": a, "entropy_act": b, "reward": r}
        for a, b, r in zip(HEALTHY_ANSWER, HEALTHY_ACT, HEALTHY_REWARD, strict=True)
    ]


def test_real_healthy_phases_raise_no_collapse():
    assert collapses(healthy_rows()) == []
    # the same series under the single-step rule: the false alarms this rule exists to stop
    old = collapses(healthy_rows(), SINGLE_STEP_RULE)
    assert {a.metric for a in old} == {"entropy_answer", "entropy_act"} and len(old) >= 3


def test_relative_noise_is_level_free_and_bounded():
    rng = random.Random(0)
    xs = [1 + 0.1 * rng.gauss(0, 1) for _ in range(400)]
    assert abs(relative_noise(xs) - 0.1) < 0.02
    assert math.isclose(relative_noise([1e-3 * x for x in xs]), relative_noise(xs))
    assert relative_noise([0.0, 0.0, 0.0]) == 0.0 and relative_noise([0.5, 0.4]) == 0.0
    assert relative_noise([0.0, 1.0] * 10) <= 2.0 / 0.6745  # differences lie in [-2, 2]


@settings(max_examples=60, deadline=None)
@given(
    level=st.floats(0.1, 1.0),
    noise=st.floats(0.0, 0.3),
    extra_gap=st.integers(0, 8),
    offset=st.integers(0, 10),
    depth=st.floats(0.0, 1.0, exclude_max=True),
    seed=st.integers(0, 10_000),
)
def test_single_step_dips_below_the_floor_are_not_a_collapse(
    level, noise, extra_gap, offset, depth, seed
):
    """A channel at >= 2x the floor with +-30% noise, dropping below the floor (to any depth, 0
    included) on single steps at most once per ``collapse_window``, never collapses: any window
    mean is >= 6/7 x 0.7 x level = 0.6 x level, above the floor whatever the noise allowance."""
    mon = Monitor()
    gap = mon.config.collapse_window + extra_gap
    rng = random.Random(seed)
    rows = []
    for i in range(80):
        dip = i >= offset and (i - offset) % gap == 0
        h = depth * mon.config.collapse_floor if dip else level * (1 + rng.uniform(-noise, noise))
        rows.append({"entropy": h, "reward": 0.3 + 0.01 * (i % 3)})
    assert collapses(rows) == []


@settings(max_examples=60, deadline=None)
@given(
    level=st.floats(0.1, 2.0),
    noise=st.floats(0.0, 0.1),
    before=st.integers(12, 30),
    tau=st.one_of(st.just(0.0), st.floats(0.5, 6.0)),
    end=st.floats(0.0, 0.2),
    seed=st.integers(0, 10_000),
)
def test_sustained_collapse_fires_within_the_window(level, noise, before, tau, end, seed):
    """A drop from a steady level to below 20% of the floor, sudden (tau 0) or decaying with
    time constant tau steps, with relative noise <= 10%, fires ``collapse`` at most
    ``collapse_window - 1`` steps after its noiseless curve crosses the floor."""
    mon = Monitor()
    low = end * mon.config.collapse_floor
    curve = [level] * before
    curve += [low + (level - low) * (math.exp(-(k + 1) / tau) if tau else 0.0) for k in range(40)]
    rng = random.Random(seed)
    rows = [{"entropy": c * (1 + rng.uniform(-noise, noise)), "reward": 0.3} for c in curve]
    got = collapses(rows)
    assert len(got) == 1, [a.to_dict() for a in got]
    ev = got[0].evidence
    cross = next(i + 1 for i, c in enumerate(curve) if c < ev["floor"])
    assert cross <= got[0].step <= cross + mon.config.collapse_window - 1
    assert ev["level_bound"] < ev["floor"] and ev["level"] < ev["level_before"]


def test_collapse_to_a_constant_fires_and_a_recovery_does_not():
    rows = [{"entropy": 0.5 + 0.01 * (i % 2), "reward": 0.3} for i in range(20)]
    assert [a.step for a in collapses([*rows, *[{"entropy": 0.0, "reward": 0.3}] * 20])] == [26]
    # the same drop, but the channel is back above the floor before the level is down
    back = [{"entropy": 0.0, "reward": 0.3}] * 3 + [{"entropy": 0.5, "reward": 0.3}] * 20
    assert collapses([*rows, *back]) == []


def test_config_validates_the_collapse_windows():
    import pytest

    for field, value in (("collapse_window", 0), ("collapse_z", -1.0), ("collapse_z", math.nan)):
        with pytest.raises(ValueError, match=field):
            MonitorConfig(**{field: value})
    with pytest.raises(ValueError, match="collapse_window \\+ trend_window"):
        MonitorConfig(window=10, collapse_window=7, trend_window=5)


# --- A channel that starts at its collapse floor has nothing to collapse from ----------------
# Regression for the 2 false ``collapse`` alerts on a healthy seed-0 run of the session-6 agent
# (recipe 85652a1f710b; RESULTS.md, "Monitor"): its act and answer phases sit below the 0.05-nat
# floor from step 1 (references 0.031 and 0.008 nats), so a 7-step dip of their level read as
# a collapse (act at step 12: level 0.024, reference 0.031; answer at step 13: level 0.009,
# *above* its reference 0.008).

# Logged per-step means (nats) of healthy seed 0 on the session-6 agent, run in session 7 (runs/mon7/healthy-0,
# metrics.parquet, entropy/answer_mean, entropy/act_mean, rollout/reward_mean; 3 digits).
LOW_ANSWER = [
    0.008, 0.013, 0.006, 0.003, 0.003, 0.010, 0.009, 0.022, 0.007, 0.004,
    0.004, 0.015, 0.003, 0.007, 0.015, 0.003, 0.004, 0.010, 0.022, 0.002,
    0.014, 0.006, 0.037, 0.004, 0.009, 0.005, 0.002, 0.005, 0.014, 0.008,
    0.006, 0.003, 0.018, 0.003, 0.002, 0.006, 0.003, 0.004, 0.010, 0.005,
    0.003, 0.002, 0.005, 0.010, 0.003, 0.013, 0.005, 0.021, 0.006, 0.006,
]  # fmt: skip
LOW_ACT = [
    0.032, 0.022, 0.054, 0.036, 0.020, 0.054, 0.009, 0.030, 0.024, 0.019,
    0.004, 0.029, 0.032, 0.016, 0.048, 0.028, 0.029, 0.016, 0.031, 0.026,
    0.010, 0.027, 0.020, 0.029, 0.033, 0.032, 0.032, 0.014, 0.036, 0.023,
    0.011, 0.034, 0.022, 0.030, 0.050, 0.023, 0.027, 0.027, 0.025, 0.029,
    0.020, 0.045, 0.012, 0.039, 0.012, 0.026, 0.025, 0.034, 0.034, 0.043,
]  # fmt: skip
LOW_REWARD = [
    0.344, 0.469, 0.500, 0.469, 0.531, 0.719, 0.531, 0.594, 0.531, 0.719,
    0.625, 0.469, 0.500, 0.562, 0.438, 0.781, 0.188, 0.531, 0.406, 0.719,
    0.562, 0.500, 0.594, 0.688, 0.688, 0.594, 0.594, 0.375, 0.594, 0.781,
    0.562, 0.469, 0.656, 0.812, 0.656, 0.531, 0.469, 0.500, 0.688, 0.562,
    0.750, 0.656, 0.625, 0.656, 0.719, 0.594, 0.562, 0.656, 0.469, 0.719,
]  # fmt: skip


def test_real_channels_below_the_floor_from_the_start_raise_no_collapse():
    rows = [{"entropy_answer": a, "entropy_act": b, "reward": r}
            for a, b, r in zip(LOW_ANSWER, LOW_ACT, LOW_REWARD, strict=True)]  # fmt: skip
    assert collapses(rows) == []
    # each channel alone, too (no shared state hides an alert)
    for name, series in (("entropy_act", LOW_ACT), ("entropy_answer", LOW_ANSWER)):
        alone = [{name: v, "reward": r} for v, r in zip(series, LOW_REWARD, strict=True)]
        assert collapses(alone) == []


def test_low_start_arms_once_it_rises_then_a_fall_collapses():
    """The same low channel climbs to a real level (arms) and then falls to near zero: that
    is a collapse and fires once; one that never leaves its low start stays silent."""
    rng = random.Random(0)
    low = [0.03 * (1 + 0.2 * rng.gauss(0, 1)) for _ in range(20)]
    high = [0.4 * (1 + 0.05 * rng.gauss(0, 1)) for _ in range(20)]
    down = [0.002 * (1 + 0.1 * rng.gauss(0, 1)) for _ in range(20)]
    got = collapses([{"entropy": h, "reward": 0.5} for h in low + high + down])
    assert len(got) == 1 and got[0].step > 40
    assert collapses([{"entropy": h, "reward": 0.5} for h in low + down]) == []


def test_a_channel_just_above_the_band_still_collapses():
    """The band is ``collapse_rearm`` x the floor (0.075 nats by default): a channel that
    starts at 0.09 and falls to near zero still fires."""
    rng = random.Random(1)
    start = [0.09 * (1 + 0.05 * rng.gauss(0, 1)) for _ in range(20)]
    down = [0.002 * (1 + 0.1 * rng.gauss(0, 1)) for _ in range(20)]
    got = collapses([{"entropy": h, "reward": 0.5} for h in start + down])
    assert len(got) == 1 and got[0].step > 20
