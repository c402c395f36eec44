"""Training-step series, the cycle detector on planted cycles, and the R = -a exp(H) + b fit."""

from __future__ import annotations

import numpy as np
import pytest

from agentropy.analysis.summary import analyze_episodes
from agentropy.analysis.training import CycleConfig, detect_cycles, fit_exp_reward, step_series
from agentropy.trace import PHASE_CODE, Episode, ToolCall, Turn


def planted_series(
    seed: int, n: int = 800, n_cycles: int = 6, sigma: float = 0.02, amp=(0.15, 0.5)
):
    """Slow descent + noise + cycles (3-step rise, exponential subsidence); true peak indices."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    h = 1.0 - 0.4 * t / n + rng.normal(0, sigma, n)
    # Non-overlapping starts at least 80 steps apart.
    slots = rng.choice(np.arange(1, (n - 60) // 80), size=n_cycles, replace=False)
    starts = np.sort(slots * 80 + rng.integers(0, 20, n_cycles))
    peaks = []
    for s in starts:
        a = rng.uniform(*amp)
        rise = a * np.array([1 / 3, 2 / 3, 1.0])
        h[s + 1 : s + 4] += rise
        decay = a * np.exp(-np.arange(1, 60) / 8.0)
        h[s + 4 : s + 63] += decay[: len(h[s + 4 : s + 63])]
        peaks.append(s + 3)
    return t, h, np.asarray(peaks)


def match(detected: list[int], truth: np.ndarray, tol: int = 4) -> int:
    """Greedy one-to-one matching within tol steps."""
    used = set()
    hits = 0
    for d in detected:
        best = [i for i, p in enumerate(truth) if abs(p - d) <= tol and i not in used]
        if best:
            used.add(best[0])
            hits += 1
    return hits


def precision_recall(amp, seeds=range(8)):
    n_true = n_det = n_hit = 0
    for seed in seeds:
        steps, h, peaks = planted_series(seed, amp=amp)
        cycles, regimes = detect_cycles(steps, h)
        assert len(regimes) == len(steps)
        det = [c.peak for c in cycles]
        n_true += len(peaks)
        n_det += len(det)
        n_hit += match(det, peaks)
    return n_hit / max(n_det, 1), n_hit / n_true, (n_hit, n_det, n_true)


def test_detector_precision_recall_on_planted_cycles(capsys):
    # Noise sigma 0.02 nats; amplitudes 7.5-25 sigma (asserted) and 3-7.5 sigma (reported).
    precision, recall, counts = precision_recall((0.15, 0.5))
    hard = precision_recall((0.06, 0.15))
    with capsys.disabled():
        print(
            f"\ncycle detector, 8 planted series x 6 cycles, amplitude 7.5-25 sigma: precision "
            f"{precision:.3f}, recall {recall:.3f} (hits/detected/planted {counts}); "
            f"3-7.5 sigma: precision {hard[0]:.3f}, recall {hard[1]:.3f} {hard[2]}"
        )
    # A detector that finds nothing, or flags every noise wiggle, fails these floors.
    assert precision >= 0.8
    assert recall >= 0.8


def test_no_cycles_in_pure_descent(capsys):
    false = 0
    for seed in range(8):
        rng = np.random.default_rng(1000 + seed)
        h = np.linspace(1.0, 0.6, 800) + rng.normal(0, 0.02, 800)
        cycles, regimes = detect_cycles(np.arange(800), h)
        false += len(cycles)
        assert set(regimes) <= {"descent", "eruption", "subsidence"}
    with capsys.disabled():
        print(f"\ncycle detector on 8 cycle-free noisy descents: {false} false cycles")
    assert false <= 2


def test_cycle_fields_and_kinds():
    n = 300
    t = np.arange(n)
    h = np.full(n, 0.5)
    reward = np.full(n, 0.5)
    # Cycle 1 (t=50): rises 0.5 -> 1.0 over 3 steps, subsides by t=70; reward rises after.
    h[51:54] = [0.67, 0.83, 1.0]
    h[54:70] = np.linspace(0.95, 0.55, 16)
    reward[70:] = 0.6
    # Cycle 2 (t=150): same shape, reward falls after -> divergent.
    h[151:154] = [0.67, 0.83, 1.0]
    h[154:170] = np.linspace(0.95, 0.55, 16)
    reward[170:] = 0.4
    # Cycle 3 (t=250): rises and never comes down -> divergent.
    h[251:254] = [0.67, 0.83, 1.0]
    h[254:] = 1.0
    h = h + np.random.default_rng(0).normal(0, 0.005, n)
    cycles, regimes = detect_cycles(t, h, reward, CycleConfig(min_amplitude=0.2))
    assert [c.kind for c in cycles] == ["productive", "divergent", "divergent"]
    c1 = cycles[0]
    assert abs(c1.start - 50) <= 2 and abs(c1.peak - 53) <= 2
    assert 60 <= c1.end <= 75 and c1.subsided
    assert c1.amplitude == pytest.approx(0.5, abs=0.12)
    assert c1.reward_after > c1.reward_before
    assert not cycles[2].subsided
    assert regimes[52] == "eruption" and regimes[60] == "subsidence" and regimes[30] == "descent"


def test_exp_fit_recovers_planted_relation():
    rng = np.random.default_rng(0)
    h = rng.uniform(0.2, 1.5, 200)
    r = -0.5 * np.exp(h) + 2.0 + rng.normal(0, 0.01, 200)
    fit = fit_exp_reward(h, r)
    assert fit["a"] == pytest.approx(0.5, abs=0.02)
    assert fit["b"] == pytest.approx(2.0, abs=0.05)
    assert fit["r2"] > 0.99
    assert fit_exp_reward(np.ones(5), np.arange(5.0))["a"] is None
    assert fit_exp_reward(np.arange(2.0), np.arange(2.0))["a"] is None


def test_step_series_pools_tokens_not_means():
    # Step 0: one episode with 1 token at 3.0, one with 3 tokens at 1.0 -> pooled mean 1.5
    # (mean of means would be 2.0).
    def ep(eid, values, step, phase="plan", reward=1.0):
        ph = np.full(len(values), PHASE_CODE[phase], np.int8)
        turns = [
            Turn(role="assistant", entropy=np.asarray(values, np.float32), phase=ph),
            Turn(role="tool", call=ToolCall("lookup", {}), status="error"),
        ]
        return Episode(eid, turns=turns, step=step, reward=reward, success=False)

    eps = [
        ep("a", [3.0], 0),
        ep("b", [1.0, 1.0, 1.0], 0, phase="recover", reward=0.0),
        ep("c", [2.0, 2.0], 1),
    ]
    s = analyze_episodes(eps)["training"]["series"]
    assert s["step"] == [0, 1]
    assert s["entropy"] == [1.5, 2.0]
    assert s["entropy_plan"] == [3.0, 2.0]
    assert s["entropy_recover"] == [1.0, None]
    assert s["reward"] == [0.5, 1.0]
    assert s["length"] == [2.0, 2.0]
    assert s["failure_rate"] == [1.0, 1.0]
    # Episodes without a step are ignored by the series.
    out = step_series(
        np.array([np.nan]),
        np.ones((1, 5)),
        np.ones((1, 5)),
        np.array([1.0]),
        np.array([1]),
        np.array([0]),
        np.array([0]),
        np.array([False]),
        np.array([0]),
        np.array([0]),
    )
    assert out["step"].shape == (0,)


def test_cycles_in_summary_with_loop_and_hallucination_rates():
    steps, h, peaks = planted_series(3, n=300, n_cycles=2)
    eps = []
    for s in steps:
        # Two tokens per step whose mean is h[s]; a looping episode at every step of the run.
        vals = np.array([h[s], h[s]], np.float32)
        call = ToolCall("lookup", {"q": 1})
        turns = [Turn(role="assistant", entropy=vals)]
        if s % 2 == 0:
            turns += [Turn(role="tool", call=call, status="error")] * 3
        eps.append(Episode(f"e{s}", turns=turns, step=int(s), reward=float(s % 3)))
    out = analyze_episodes(eps)["training"]
    assert out["steps"] == 300
    found = [c["peak_step"] for c in out["cycles"]]
    assert match(found, peaks) == len(peaks)
    for c in out["cycles"]:
        assert set(c) >= {"start_step", "peak_step", "end_step", "amplitude", "kind"}
        assert c["loop_rate"] == pytest.approx(0.5, abs=0.1)
        assert c["hallucination_rate"] is None  # nothing checkable without question/tool list
