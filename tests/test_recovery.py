"""Recovery statistics, bootstrap intervals, logistic fit, costs, latency, and aggregate
properties of the analyzer (permutation and split invariance)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentropy.analysis.recovery import (
    SPIKE_BIN_LABELS,
    cost_stats,
    latency_stats,
    logistic_fit,
    paired_difference_ci,
    rate_ci,
    relative_difference_ci,
    spike_bin,
)
from agentropy.analysis.summary import AnalyzeConfig, Analyzer, analyze_episodes
from agentropy.trace import PHASE_CODE, Episode, ToolCall, Turn


def test_spike_bins_are_left_closed():
    s = np.array([0.0, 1.4999, 1.5, 1.99, 2.0, 2.99, 3.0, 3.99, 4.0, 100.0])
    assert spike_bin(s).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert SPIKE_BIN_LABELS == ("<1.5", "1.5-2", "2-3", "3-4", ">=4")


def test_rate_ci_edge_cases():
    assert rate_ci(0, 0) == {"rate": None, "n": 0, "successes": 0, "ci": None}
    one = rate_ci(1, 1)
    assert one["rate"] == 1.0 and one["ci"] is None
    assert rate_ci(5, 5)["ci"] == [1.0, 1.0]
    assert rate_ci(0, 7)["ci"] == [0.0, 0.0]
    with pytest.raises(ValueError):
        rate_ci(3, 2)


def test_rate_ci_matches_row_resampling_bootstrap():
    rng = np.random.default_rng(1)
    y = rng.random(200) < 0.3
    got = rate_ci(int(y.sum()), 200, n_boot=20000)
    idx = rng.integers(0, 200, size=(20000, 200))
    means = y[idx].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    assert got["ci"][0] == pytest.approx(lo, abs=0.015)
    assert got["ci"][1] == pytest.approx(hi, abs=0.015)
    assert got["ci"][0] < got["rate"] < got["ci"][1]
    # Seeded: identical on repeat.
    assert rate_ci(int(y.sum()), 200, n_boot=20000) == got


def test_relative_difference():
    r = relative_difference_ci(61, 100, 50, 100)
    assert r["value"] == pytest.approx(0.22)
    lo, hi = r["ci"]
    assert lo < 0.22 < hi
    assert relative_difference_ci(3, 4, 0, 5)["value"] is None  # rate_b = 0
    assert relative_difference_ci(3, 4, 1, 0)["value"] is None
    # Tiny denominator bin: some bootstrap draws hit 0 -> the upper bound is unbounded (None).
    tiny = relative_difference_ci(5, 10, 1, 10)
    assert tiny["value"] == pytest.approx(4.0)
    assert tiny["ci"][1] is None


def test_logistic_fit_recovers_planted_coefficients():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.5, 5.0, 4000)
    p = 1 / (1 + np.exp(-(-1.0 + 0.6 * x)))
    y = rng.random(4000) < p
    fit = logistic_fit(x, y)
    assert fit["converged"]
    assert abs(fit["intercept"] + 1.0) < 3 * fit["se"][0]
    assert abs(fit["slope"] - 0.6) < 3 * fit["se"][1]
    assert fit["ci"][1][0] < 0.6 < fit["ci"][1][1]


def test_logistic_fit_degenerate():
    assert logistic_fit(np.array([1.0, 2.0]), np.array([0, 1]))["slope"] is None
    assert logistic_fit(np.arange(5.0), np.ones(5))["slope"] is None
    # Perfect separation: no finite MLE.
    assert logistic_fit(np.arange(10.0), np.arange(10) >= 5)["slope"] is None


def test_costs_and_latency():
    pol = ["greedy", "greedy", "greedy", "phase", "phase", "phase"]
    task = ["t1", "t1", "t2", "t1", "t2", "t3"]
    tokens = np.array([100, 200, 300, 180, 240, 999])
    recover = np.array([0, 10, 20, 30, 40, 50])
    phased = np.array([100, 200, 300, 180, 240, 999])
    c = cost_stats(pol, task, tokens, recover, phased)
    assert c["reference"] == "greedy"
    # Per-task means: greedy t1 = 150, t2 = 300; phase t1 = 180, t2 = 240 (t3 not shared).
    assert c["policies"]["phase"]["overhead"] == pytest.approx((180 + 240) / (150 + 300) - 1)
    assert c["policies"]["phase"]["shared_tasks"] == 2
    assert c["policies"]["greedy"]["overhead"] == 0.0
    assert c["policies"]["phase"]["recover_share"] == pytest.approx(120 / 1419)
    with pytest.raises(ValueError, match="reference"):
        cost_stats(pol, task, tokens, recover, phased, reference="nope")
    lat = np.array([1.0, 2.0, 3.0, 10.0, np.nan, 12.0])
    ls = latency_stats(pol, lat)
    g = np.array([1.0, 2.0, 3.0])
    assert ls["greedy"]["p50"] == 2.0
    assert ls["greedy"]["p95"] == pytest.approx(np.percentile(g, 95))
    assert ls["greedy"]["cv"] == pytest.approx(g.std(ddof=1) / g.mean())
    assert ls["phase"]["n"] == 2


# --- the analyzer end to end -----------------------------------------------------------------


def A(values, phase=None) -> Turn:
    ph = None if phase is None else np.full(len(values), PHASE_CODE[phase], np.int8)
    return Turn(role="assistant", entropy=np.asarray(values, np.float32), phase=ph)


def failure_episode(eid: str, spike: float, success: bool, next_ok: bool | None) -> Episode:
    """Baseline 0.5 before a failed call, then a post-trigger stream with spike ratio `spike`."""
    turns = [
        A([0.5] * 16, "plan"),
        Turn(role="tool", call=ToolCall("lookup", {"q": eid}), status="error"),
        A([0.5 * spike] * 16 + [0.5] * 8, "recover"),
    ]
    if next_ok is not None:
        turns.append(
            Turn(
                role="tool",
                call=ToolCall("backup_lookup", {"q": eid}),
                status="ok" if next_ok else "error",
            )
        )
        turns.append(A([0.5] * 4, "answer"))
    return Episode(eid, turns=turns, success=success, task_id=eid, policy="p")


def test_recovery_by_bin_from_episodes():
    eps = []
    # <1.5 bin: 10 episodes, 5 recover. 3-4 bin: 10 episodes, 7 recover. Plus one episode with no
    # failure (not a unit) and one with unknown success.
    for i in range(10):
        eps.append(failure_episode(f"a{i}", 1.0, i < 5, next_ok=i < 6))
        eps.append(failure_episode(f"b{i}", 3.5, i < 7, next_ok=None))
    eps.append(Episode("ok", turns=[A([0.5] * 4)], success=True))
    eps.append(failure_episode("u", 3.5, True, None))
    eps[-1].success = None
    s = analyze_episodes(eps)
    rec = s["recovery"]
    assert rec["overall"]["n"] == 20 and rec["overall"]["rate"] == 0.6
    assert rec["by_spike_bin"]["<1.5"]["rate"] == 0.5
    assert rec["by_spike_bin"]["3-4"]["rate"] == 0.7
    assert rec["by_spike_bin"]["2-3"]["n"] == 0
    assert rec["relative_3_4_vs_lt_1_5"]["value"] == pytest.approx(0.4)
    assert rec["unknown_success"] == 1
    turn = rec["turn_level"]
    assert turn["overall"]["n"] == 10 and turn["overall"]["rate"] == 0.6
    assert turn["no_next_call"] == 11 + 4  # 11 single-call episodes + 4 failed second calls
    assert s["tool_failures"] == 21 + 4  # 21 first failures + 4 failed second calls
    assert len(s["eruptions"]) == 11  # spike 3.5 episodes
    assert all(e["tokens_to_contraction"] == 24 for e in s["eruptions"])
    # recover tokens: 24 per failure episode (21); phased tokens: every token of those episodes
    # (10 x 44 with a second call, 11 x 40 without); the no-failure episode has no phases.
    assert s["costs"]["policies"]["p"]["recover_share"] == pytest.approx(21 * 24 / (440 + 440))


def random_episodes(seed: int, n: int) -> list[Episode]:
    rng = random.Random(seed)
    eps = []
    for i in range(n):
        turns = []
        for _ in range(rng.randint(1, 6)):
            if rng.random() < 0.5:
                turns.append(
                    A([rng.choice([0.25, 0.5, 1.0, 2.0]) for _ in range(rng.randint(0, 40))])
                )
            else:
                turns.append(
                    Turn(
                        role="tool",
                        call=ToolCall(rng.choice(["lookup", "calc"]), {"q": rng.randint(0, 1)}),
                        status=rng.choice(["ok", "error", "unexpected"]),
                    )
                )
        eps.append(
            Episode(
                f"e{i:03d}",
                turns=turns,
                success=rng.random() < 0.5,
                task_id=f"t{i % 4}",
                policy=rng.choice(["greedy", "phase"]),
                step=i % 7,
                reward=rng.random(),
                latency_s=rng.random() * 10,
            )
        )
    return eps


def assert_same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    else:
        assert a == b


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 40), st.randoms(use_true_random=False))
def test_permutation_and_split_invariance(seed, n, rnd):
    eps = random_episodes(seed, n)
    whole = analyze_episodes(eps)
    shuffled = eps[:]
    rnd.shuffle(shuffled)
    assert_same(whole, analyze_episodes(shuffled))
    cut = rnd.randint(0, n)
    assert_same(whole, analyze_episodes([eps[:cut], eps[cut:]]))


def test_analyzer_empty():
    s = Analyzer(AnalyzeConfig()).summary()
    assert s["episodes"] == 0
    assert s["recovery"]["overall"]["rate"] is None
    assert s["training"]["cycles"] == []


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 30), st.randoms(use_true_random=False))
def test_evidence_is_the_analyzers_records(seed, n, rnd):
    """Analyzer.evidence() holds, per episode, what the episodes say (one pass, any split)."""
    from agentropy.analysis.summary import Evidence

    eps = random_episodes(seed, n)
    cut = rnd.randint(0, n)
    analyzer = Analyzer(AnalyzeConfig())
    for part in (eps[:cut], eps[cut:]):
        if part:
            analyzer.add_episodes(part)
    ev = analyzer.evidence()
    assert ev.episode_id == [e.episode_id for e in eps]
    assert ev.tokens == [e.n_tokens for e in eps]
    assert ev.success == [-1 if e.success is None else int(e.success) for e in eps]
    assert ev.failed_calls == [sum(t.failed for t in e.turns) for e in eps]
    assert ev.policy == [e.policy or "unknown" for e in eps]
    summary = analyzer.summary()
    assert len(ev.failed_spikes) <= summary["tool_failures"]
    assert ev == Evidence.from_episodes(eps)
    # Every failed trigger, located by (episode row, turn index) across parts, with the spike
    # ratio the analyzer gave it (None: none); the others are failed_spikes, in order.
    where = list(zip(ev.failed_trigger_episode, ev.failed_trigger_turn, strict=True))
    assert where == [
        (i, t) for i, e in enumerate(eps) for t, turn in enumerate(e.turns) if turn.failed
    ]
    assert len(ev.failed_trigger_spike) == summary["tool_failures"]
    assert [x for x in ev.failed_trigger_spike if x is not None] == ev.failed_spikes


def test_paired_difference_by_hand():
    """Arm a recovers 6 of 8 tasks, arm b 4 of the same 8: +25 points, +50% relative; the
    paired interval holds the estimate and is ordered."""
    a = np.array([1, 1, 1, 1, 1, 1, 0, 0])
    b = np.array([1, 1, 1, 0, 0, 1, 0, 0])
    d = paired_difference_ci(a, b, n_boot=2000, seed=1)
    assert (d["n"], d["rate_a"], d["rate_b"]) == (8, 0.75, 0.5)
    assert (d["a_only"], d["b_only"]) == (2, 0)
    assert d["difference"] == pytest.approx(0.25) and d["relative"] == pytest.approx(0.5)
    lo, hi = d["difference_ci"]
    assert lo <= d["difference"] <= hi and lo < hi
    # Only the 2 discordant pairs (1, 0) and no (0, 1) move the difference: it is never negative.
    assert lo >= 0.0
    rlo, rhi = d["relative_ci"]
    assert rlo <= d["relative"] <= (np.inf if rhi is None else rhi)


def test_paired_difference_edges_and_errors():
    same = np.array([1, 0, 1, 1, 0])
    d = paired_difference_ci(same, same)
    assert d["difference"] == 0.0 and d["difference_ci"] == [0.0, 0.0]
    assert paired_difference_ci(np.array([], int), np.array([], int))["rate_a"] is None
    one = paired_difference_ci(np.array([1]), np.array([0]))
    assert one["difference"] == 1.0 and one["difference_ci"] is None
    zero_b = paired_difference_ci(np.array([1, 0, 1]), np.array([0, 0, 0]))
    assert zero_b["relative"] is None and zero_b["relative_ci"] is None
    with pytest.raises(ValueError, match="one length"):
        paired_difference_ci(np.array([1, 0]), np.array([1]))
    with pytest.raises(ValueError, match="0/1"):
        paired_difference_ci(np.array([0.5, 1.0]), np.array([1, 0]))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=2, max_size=60))
def test_paired_difference_matches_rates_and_brackets_estimate(pairs):
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    d = paired_difference_ci(a, b, n_boot=400)
    assert d["difference"] == pytest.approx(a.mean() - b.mean())
    lo, hi = d["difference_ci"]
    assert -1.0 <= lo <= hi <= 1.0
    # The resampled difference is centred on the estimate (its mean), so the interval brackets it.
    assert lo <= d["difference"] + 1e-12 and d["difference"] - 1e-12 <= hi
