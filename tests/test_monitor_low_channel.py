"""A channel that starts at its collapse floor has nothing to collapse from.

Regression for the 2 false ``collapse`` alerts on the healthy seed-0 run of the session-7 agent
(recipe 85652a1f710b; RESULTS.md, "Monitor"): its act and answer phases sit below the 0.05-nat
floor from step 1 (references 0.031 and 0.008 nats), so a 7-step dip of their level read as a
collapse (act at step 12: level 0.024, reference 0.031; answer at step 13: level 0.009, *above*
its reference 0.008).
"""

from __future__ import annotations

import random

from agentropy.monitor import Alert, Monitor, MonitorConfig

# Logged per-step means (nats) of healthy seed 0 on the session-7 agent (runs/mon7/healthy-0,
# metrics.parquet, entropy/answer_mean, entropy/act_mean, rollout/reward_mean; 3 digits).
ANSWER = [
    0.008, 0.013, 0.006, 0.003, 0.003, 0.010, 0.009, 0.022, 0.007, 0.004,
    0.004, 0.015, 0.003, 0.007, 0.015, 0.003, 0.004, 0.010, 0.022, 0.002,
    0.014, 0.006, 0.037, 0.004, 0.009, 0.005, 0.002, 0.005, 0.014, 0.008,
    0.006, 0.003, 0.018, 0.003, 0.002, 0.006, 0.003, 0.004, 0.010, 0.005,
    0.003, 0.002, 0.005, 0.010, 0.003, 0.013, 0.005, 0.021, 0.006, 0.006,
]  # fmt: skip
ACT = [
    0.032, 0.022, 0.054, 0.036, 0.020, 0.054, 0.009, 0.030, 0.024, 0.019,
    0.004, 0.029, 0.032, 0.016, 0.048, 0.028, 0.029, 0.016, 0.031, 0.026,
    0.010, 0.027, 0.020, 0.029, 0.033, 0.032, 0.032, 0.014, 0.036, 0.023,
    0.011, 0.034, 0.022, 0.030, 0.050, 0.023, 0.027, 0.027, 0.025, 0.029,
    0.020, 0.045, 0.012, 0.039, 0.012, 0.026, 0.025, 0.034, 0.034, 0.043,
]  # fmt: skip
REWARD = [
    0.344, 0.469, 0.500, 0.469, 0.531, 0.719, 0.531, 0.594, 0.531, 0.719,
    0.625, 0.469, 0.500, 0.562, 0.438, 0.781, 0.188, 0.531, 0.406, 0.719,
    0.562, 0.500, 0.594, 0.688, 0.688, 0.594, 0.594, 0.375, 0.594, 0.781,
    0.562, 0.469, 0.656, 0.812, 0.656, 0.531, 0.469, 0.500, 0.688, 0.562,
    0.750, 0.656, 0.625, 0.656, 0.719, 0.594, 0.562, 0.656, 0.469, 0.719,
]  # fmt: skip


def collapses(rows: list[dict], config: MonitorConfig | None = None) -> list[Alert]:
    mon = Monitor(config)
    state = mon.init()
    out: list[Alert] = []
    for i, row in enumerate(rows):
        alerts, state = mon.update(state, row, step=i + 1)
        out += [a for a in alerts if a.name == "collapse"]
    return out


def test_real_channels_below_the_floor_from_the_start_raise_no_collapse():
    rows = [{"entropy_answer": a, "entropy_act": b, "reward": r}
            for a, b, r in zip(ANSWER, ACT, REWARD, strict=True)]  # fmt: skip
    assert collapses(rows) == []
    # each channel alone, too (no shared state hides an alert)
    for name, series in (("entropy_act", ACT), ("entropy_answer", ANSWER)):
        alone = [{name: v, "reward": r} for v, r in zip(series, REWARD, strict=True)]
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
