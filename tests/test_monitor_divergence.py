"""The severe divergence shortcut: one noisy reward batch is not a blow-up, a lasting loss is.

Regression for the false ``divergence`` on a healthy 50-step run of the shipped agent
(runs/mon/healthy-2, RESULTS.md "Monitor"): an answer-phase eruption at step 10-11 met one batch
with 1 success in 32 rollouts (reward 0.031 against ~0.19 around it), and the severe shortcut
(reward lost ``severe_drop`` of its pre-eruption value) fired on the two-value mean at once.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentropy.monitor import Alert, Monitor, MonitorConfig

ROLLOUTS = 32
# Logged per-step values of runs/mon/healthy-2 (metrics.parquet): answer-phase mean entropy
# (nats, rounded to 3 digits) and rollout reward as successes of 32 rollouts.
HEALTHY2_ANSWER = [
    0.071, 0.289, 0.131, 0.113, 0.081, 0.153, 0.151, 0.012, 0.066, 0.218,
    0.330, 0.142, 0.090, 0.147, 0.059, 0.139, 0.211, 0.174, 0.049, 0.029,
    0.042, 0.183, 0.124, 0.207, 0.224, 0.035, 0.115, 0.126, 0.157, 0.214,
    0.230, 0.065, 0.039, 0.161, 0.029, 0.046, 0.063, 0.143, 0.126, 0.286,
    0.054, 0.132, 0.061, 0.035, 0.102, 0.104, 0.032, 0.166, 0.176, 0.130,
]  # fmt: skip
HEALTHY2_SUCCESSES = [
    8, 5, 8, 7, 8, 5, 6, 8, 6, 5, 1, 7, 9, 7, 7, 4, 6, 4, 8, 3,
    8, 8, 4, 6, 6, 7, 8, 5, 7, 6, 6, 8, 8, 7, 8, 8, 7, 8, 4, 4,
    6, 8, 6, 5, 7, 5, 8, 6, 7, 4,
]  # fmt: skip
# runs/mon/unstable-0 (lr 3e-4): rollout entropy passes 1.5x its step-1 value at step 6.
UNSTABLE_ANSWER = [0.064, 0.231, 0.027, 0.403, 0.065, 0.572, 0.337, 0.681, 0.278, 0.216]
UNSTABLE_SUCCESSES = [7, 8, 6, 5, 8, 2, 4, 2, 4, 3]
UNSTABLE_ONSET = 6
#: The first rule's equivalent: the severe test on any number of rewards since the onset.
ANY_BATCH_RULE = MonitorConfig(severe_batches=1)


def feed(rows: list[dict], config: MonitorConfig | None = None) -> list[Alert]:
    mon = Monitor(config)
    state = mon.init()
    out: list[Alert] = []
    for i, row in enumerate(rows):
        alerts, state = mon.update(state, row, step=i + 1)
        out += alerts
    return out


def divergences(rows: list[dict], config: MonitorConfig | None = None) -> list[Alert]:
    return [a for a in feed(rows, config) if a.name == "divergence"]


def real_rows(answer: list[float], successes: list[int]) -> list[dict]:
    return [
        {"entropy_answer": h, "reward": k / ROLLOUTS}
        for h, k in zip(answer, successes, strict=True)
    ]


def test_healthy_seed2_has_no_divergence():
    rows = real_rows(HEALTHY2_ANSWER, HEALTHY2_SUCCESSES)
    assert divergences(rows) == []
    # the data still hold the trap: the first rule fires at step 11 on the one-success batch
    old = divergences(rows, ANY_BATCH_RULE)
    assert [(a.step, a.evidence["onset_step"], a.evidence["severe"]) for a in old] == [
        (11, 10, True)
    ]
    assert old[0].evidence["reward_batches_after"] == 2


def test_unstable_run_still_diverges_within_three_steps():
    div = divergences(real_rows(UNSTABLE_ANSWER, UNSTABLE_SUCCESSES))
    assert len(div) == 1
    ev = div[0].evidence
    assert ev["onset_step"] == UNSTABLE_ONSET and ev["severe"] is True
    assert div[0].step == UNSTABLE_ONSET + MonitorConfig().severe_batches - 1  # step 8
    assert ev["reward_batches_after"] == MonitorConfig().severe_batches
    assert -ev["reward_change"] >= MonitorConfig().severe_drop * ev["reward_before"]


def _run(r0: float, jitter: list[float], erupt: int, rewards_after: list[float]) -> list[dict]:
    """20 quiet steps (entropy 0.5, reward r0 * (1 + jitter)), then entropy 1.2 for ``erupt``
    steps with the given rewards, then entropy back at 0.5 (reward r0) for 10 steps."""
    rows = [
        {"entropy": 0.5 + 0.01 * (i % 2), "reward": r0 * (1.0 + jitter[i % len(jitter)])}
        for i in range(20)
    ]
    rows += [{"entropy": 1.2, "reward": rewards_after[i]} for i in range(erupt)]
    rows += [{"entropy": 0.5, "reward": r0} for _ in range(10)]
    return rows


@settings(max_examples=80, deadline=None)
@given(
    r0=st.floats(0.1, 0.6),
    jitter=st.lists(st.floats(-0.1, 0.1), min_size=3, max_size=8),
    erupt=st.integers(2, MonitorConfig().horizon - 1),
    data=st.data(),
)
def test_one_bad_batch_in_an_eruption_is_no_divergence(r0, jitter, erupt, data):
    """Any single reward, down to 0, inside an eruption shorter than the horizon, with the
    other rewards within 10% of the level: no divergence (the first rule fired on many)."""
    at = data.draw(st.integers(0, erupt - 1), label="dip index")
    dip = data.draw(st.floats(0.0, r0), label="dip reward")
    after = [r0 * (1.0 + jitter[i % len(jitter)]) for i in range(erupt)]
    after[at] = dip
    rows = _run(r0, jitter, erupt, after)
    names = [a.name for a in feed(rows)]
    assert "eruption" in names and "divergence" not in names


@settings(max_examples=80, deadline=None)
@given(
    r0=st.floats(0.1, 0.6),
    jitter=st.lists(st.floats(-0.1, 0.1), min_size=3, max_size=8),
    kept=st.floats(0.0, 0.4),
)
def test_sustained_reward_loss_diverges_at_the_third_batch(r0, jitter, kept):
    """Entropy up and reward down to <= 40% (+-10%) of its level for good: a severe divergence
    at the third reward since the onset, not a horizon later."""
    after = [r0 * kept * (1.0 + jitter[i % len(jitter)]) for i in range(15)]
    div = divergences(_run(r0, jitter, 15, after))
    assert len(div) == 1 and div[0].evidence["severe"] is True
    assert div[0].step == 21 + MonitorConfig().severe_batches - 1
    assert "reward falls" in div[0].suggestion


def test_severe_batches_validated():
    with pytest.raises(ValueError, match="severe_batches"):
        MonitorConfig(severe_batches=0)
    with pytest.raises(ValueError, match="after_window"):
        MonitorConfig(severe_batches=4, after_window=3)
