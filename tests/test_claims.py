"""Claims table: the verdict rule, and each claim on synthetic inputs whose answer is known
(clearly supported, clearly not supported, too little data)."""

from __future__ import annotations

import numpy as np
import pytest

from agentropy.analysis.summary import analyze_episodes
from agentropy.report.claims import (
    CLAIM_SPECS,
    ClaimRow,
    ClaimsConfig,
    Evidence,
    claim_divergent_eruptions_fail,
    claim_exploration_latency_variance,
    claim_exploration_token_cost,
    claim_level_drop,
    claim_phase_beats_constant,
    claim_spike_3_4_recovery,
    claim_spike_after_failure,
    claims_table,
    format_ci,
    format_value,
)
from agentropy.trace import Episode, ToolCall, Turn

CFG = ClaimsConfig(n_boot=1000)


# --------------------------------------------------------------------------------------------
# The rule
# --------------------------------------------------------------------------------------------


def test_rows_use_the_preregistered_rule() -> None:
    """A tiny spike with a tight CI excludes the null 1.0 but not the 2x minimum: refuted."""
    tiny = Evidence(failed_spikes=[1.01 + 0.001 * (i % 5) for i in range(200)])
    row = claim_spike_after_failure(tiny, CFG)
    assert row.ci is not None and row.ci[0] > 1.0  # type: ignore[operator]
    assert row.verdict == "refuted" and "a real effect" in row.reason
    assert "2.00x" in row.rule and row.to_dict()["reason"] == row.reason
    assert {s.min_effect > s.null for s in CLAIM_SPECS.values()} == {True}
    with pytest.raises(ValueError, match="verdict"):
        ClaimRow("k", "c", "-", None, None, 0, "", "maybe", "")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Each claim: supported / not supported / too little data
# --------------------------------------------------------------------------------------------


def _ev(**kw: list) -> Evidence:
    ev = Evidence()
    n = len(next(iter(kw.values())))
    defaults = {
        "episode_id": [f"e{i}" for i in range(n)],
        "policy": ["greedy"] * n,
        "task_id": [f"t{i}" for i in range(n)],
        "success": [1] * n,
        "tokens": [10] * n,
        "recover_tokens": [0] * n,
        "phased_tokens": [10] * n,
        "latency_s": [1.0] * n,
    }
    for k, v in {**defaults, **kw}.items():
        setattr(ev, k, list(v))
    return ev


def test_claim1_spike_after_failure() -> None:
    rng = np.random.default_rng(0)
    up = Evidence(failed_spikes=list(2.5 + 0.3 * rng.standard_normal(40)))
    row = claim_spike_after_failure(up, CFG)
    assert row.verdict == "supported" and row.n == 40
    assert row.measurement == pytest.approx(np.median(up.failed_spikes))
    assert row.ci[0] <= row.measurement <= row.ci[1]  # type: ignore[index]
    down = Evidence(failed_spikes=list(0.6 + 0.05 * rng.standard_normal(40)))
    assert claim_spike_after_failure(down, CFG).verdict == "refuted"
    few = Evidence(failed_spikes=[3.0, 3.1, 2.9])
    assert claim_spike_after_failure(few, CFG).verdict == "inconclusive"
    assert claim_spike_after_failure(Evidence(), CFG).measurement is None


def test_claim2_relative_recovery_from_summary() -> None:
    def summ(value: float | None, ci: list | None, n_a: int, n_b: int) -> dict:
        rel = {"value": value, "ci": ci, "n_a": n_a, "n_b": n_b}
        return {"recovery": {"relative_3_4_vs_lt_1_5": rel}}

    assert claim_spike_3_4_recovery(summ(0.3, [0.15, 0.5], 30, 30)).verdict == "supported"
    assert claim_spike_3_4_recovery(summ(-0.5, [-0.7, -0.2], 30, 30)).verdict == "refuted"
    assert claim_spike_3_4_recovery(summ(0.3, [0.1, 0.5], 3, 30)).verdict == "inconclusive"
    assert claim_spike_3_4_recovery(summ(0.3, [0.15, None], 30, 30)).verdict == "supported"
    row = claim_spike_3_4_recovery(summ(None, None, 0, 10))
    assert row.verdict == "not measured" and row.note and row.reason == row.note


def _recovery_episode(i: int, spike: float, recovered: bool) -> Episode:
    return Episode(
        f"r{i:03d}",
        turns=[
            Turn(role="assistant", entropy=np.full(20, 0.2, np.float32)),
            Turn(role="tool", call=ToolCall("lookup", {"q": i}), status="error"),
            Turn(role="assistant", entropy=np.full(16, 0.2 * spike, np.float32)),
        ],
        success=recovered,
    )


def test_claim2_through_the_analyzer() -> None:
    # 3.5x spikes recover 80% of the time, 1.0x spikes 20%: +300% relative, clearly supported.
    eps = [_recovery_episode(i, 3.5, i % 5 != 0) for i in range(40)]
    eps += [_recovery_episode(100 + i, 1.0, i % 5 == 0) for i in range(40)]
    row = claim_spike_3_4_recovery(analyze_episodes(eps))
    assert row.measurement == pytest.approx(0.8 / 0.2 - 1)
    assert row.verdict == "supported" and row.n == 40


def test_claim3_token_cost() -> None:
    n = 20
    pol = ["greedy"] * n + ["phase"] * n
    tasks = [f"t{i}" for i in range(n)] * 2
    more = _ev(
        policy=pol,
        task_id=tasks,
        tokens=[10 + i % 3 for i in range(n)] + [20 + i % 3 for i in range(n)],
        recover_tokens=[0] * n + [5] * n,
        phased_tokens=[10] * n + [20] * n,
    )
    row = claim_exploration_token_cost(more, CFG)
    assert row.verdict == "supported" and row.n == n
    assert row.measurement == pytest.approx(
        sum(20 + i % 3 for i in range(n)) / sum(10 + i % 3 for i in range(n)) - 1
    )
    assert "25.0% of tokens in recover" in row.note
    fewer = _ev(policy=pol, task_id=tasks, tokens=[20] * n + [10 + i % 2 for i in range(n)])
    assert claim_exploration_token_cost(fewer, CFG).verdict == "refuted"
    few = _ev(
        policy=["greedy", "greedy", "phase", "phase"],
        task_id=["t0", "t1", "t0", "t1"],
        tokens=[10, 11, 30, 31],
    )
    row = claim_exploration_token_cost(few, CFG)
    assert row.n == 2 and row.verdict == "inconclusive"
    unshared = _ev(policy=pol, task_id=[f"a{i}" for i in range(n)] + [f"b{i}" for i in range(n)])
    assert claim_exploration_token_cost(unshared, CFG).measurement is None


def test_claim4_latency_variance() -> None:
    rng = np.random.default_rng(1)
    n = 40
    pol = ["greedy"] * n + ["phase"] * n
    steady = list(1.0 + 0.02 * rng.standard_normal(n))
    wild = list(1.0 + 1.0 * np.abs(rng.standard_normal(n)))
    row = claim_exploration_latency_variance(_ev(policy=pol, latency_s=steady + wild), CFG)
    assert row.verdict == "supported" and row.measurement > 0.1  # type: ignore[operator]
    row = claim_exploration_latency_variance(_ev(policy=pol, latency_s=wild + steady), CFG)
    assert row.verdict == "refuted"
    short = _ev(policy=pol[n - 3 : n + 3], latency_s=(steady[:3] + wild[:3]))
    assert claim_exploration_latency_variance(short, CFG).verdict == "inconclusive"
    nolat = _ev(policy=pol, latency_s=[float("nan")] * (2 * n))
    assert claim_exploration_latency_variance(nolat, CFG).measurement is None


def _eruptions(kinds_success: list[tuple[str, int]]) -> tuple[dict, Evidence]:
    eruptions = [
        {"episode_id": f"e{i}", "turn_index": 1, "kind": k, "spike_ratio": 3.0}
        for i, (k, _) in enumerate(kinds_success)
    ]
    ev = _ev(success=[s for _, s in kinds_success])
    return {"eruptions": eruptions, "loops": []}, ev


def test_claim5_divergent_eruptions() -> None:
    bad_div = [("divergent", 0)] * 18 + [("divergent", 1)] * 2
    good_con = [("productive", 1)] * 18 + [("neutral", 0)] * 2
    summary, ev = _eruptions(bad_div + good_con)
    row = claim_divergent_eruptions_fail(summary, ev, CFG)
    assert row.measurement == pytest.approx(0.9 - 0.1)
    assert row.verdict == "supported" and row.n == 20
    summary, ev = _eruptions([("divergent", 1)] * 20 + [("productive", 0)] * 20)
    assert claim_divergent_eruptions_fail(summary, ev, CFG).verdict == "refuted"
    summary, ev = _eruptions([("divergent", 0)] * 3 + [("productive", 1)] * 30)
    assert claim_divergent_eruptions_fail(summary, ev, CFG).verdict == "inconclusive"
    # A loop at or after the trigger counts as a bad outcome even in a successful episode.
    summary, ev = _eruptions([("divergent", 1)] * 10 + [("productive", 1)] * 10)
    summary["loops"] = [
        {"episode_id": f"e{i}", "turn_index": 3, "type": "ngram"} for i in range(10)
    ]
    row = claim_divergent_eruptions_fail(summary, ev, CFG)
    assert row.measurement == pytest.approx(1.0) and row.verdict == "supported"
    # Unknown outcome without a loop: left out.
    summary, ev = _eruptions([("divergent", -1)] * 10 + [("productive", 1)] * 10)
    assert claim_divergent_eruptions_fail(summary, ev, CFG).n == 0


def _rows(policy_success: dict[str, list[float]], n: int = 40) -> list[dict]:
    return [
        {"level": lv, "policy": p, "episodes": n, "success": s}
        for p, rates in policy_success.items()
        for lv, s in enumerate(rates)
    ]


def test_claim6_phase_vs_constant() -> None:
    rows = _rows({"phase": [0.9, 0.8, 0.7, 0.6], "constant:1.0": [0.5, 0.4, 0.3, 0.2]})
    row = claim_phase_beats_constant(rows, CFG)
    assert row.measurement == pytest.approx(0.4) and row.verdict == "supported"
    rows = _rows({"phase": [0.5, 0.4, 0.3, 0.2], "constant:1.0": [0.9, 0.8, 0.7, 0.6]})
    assert claim_phase_beats_constant(rows, CFG).verdict == "refuted"
    rows = _rows({"phase": [0.9], "constant:1.0": [0.5]}, n=5)
    assert claim_phase_beats_constant(rows, CFG).verdict == "inconclusive"
    none = claim_phase_beats_constant([], CFG)
    assert none.verdict == "not measured" and none.note == "no eval rows given"


def test_claim7_level_drop() -> None:
    row = claim_level_drop(_rows({"greedy": [0.9, 0.8, 0.5, 0.2]}), CFG)
    assert row.measurement == pytest.approx(1 - 0.2 / 0.85) and row.verdict == "supported"
    flat = claim_level_drop(_rows({"greedy": [0.8, 0.8, 0.8, 0.8]}), CFG)
    assert flat.verdict == "refuted"
    assert claim_level_drop(_rows({"greedy": [0.8, 0.8, 0.5, 0.2]}, n=6), CFG).verdict == (
        "inconclusive"
    )
    zero = claim_level_drop(_rows({"greedy": [0.0, 0.0, 0.0, 0.0]}), CFG)
    assert zero.measurement is None and zero.verdict == "not measured"


def test_table_is_deterministic_and_complete() -> None:
    eps = [_recovery_episode(i, 3.5, i % 3 != 0) for i in range(30)]
    summary = analyze_episodes(eps)
    ev = Evidence.from_episodes(eps)
    rows = _rows({"greedy": [0.9, 0.8, 0.5, 0.2], "phase": [0.9] * 4, "constant:1.0": [0.8] * 4})
    a = [c.to_dict() for c in claims_table(summary, ev, rows, CFG)]
    b = [c.to_dict() for c in claims_table(summary, ev, rows, CFG)]
    assert a == b
    assert [c["key"] for c in a] == [
        "spike_after_failure",
        "spike_3_4_recovery",
        "exploration_token_cost",
        "exploration_latency_variance",
        "divergent_eruptions_fail",
        "phase_beats_constant",
        "level_drop",
    ]
    assert a[0]["n"] == 30 and a[0]["measurement"] == pytest.approx(3.5, rel=1e-5)
    # Every failed trigger spikes 3.5x: a zero-width CI at 3.5 excludes 1.0.
    assert a[0]["verdict"] == "supported"
    # One policy only: no token overhead to measure, never a guess.
    assert a[2]["verdict"] == "not measured" and a[2]["n"] == 0


def test_formatting() -> None:
    assert format_value(0.22, "%") == "+22.0%"
    assert format_value(2.5, "x") == "2.50x"
    assert format_value(-0.05, "pp") == "-5.0 pp"
    assert format_value(0.1234, "num") == "+0.123"
    assert format_value(None, "x") == "-"
    assert format_ci((None, 0.5), "%") == "[-inf, +50.0%]"
    assert format_ci(None, "%") == "-"
