"""experiments/sensitivity.py: its statistics (fast) and a small end-to-end run (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentropy.analysis.breath import BreathConfig
from agentropy.errors import OutputError
from agentropy.trace import Episode, ToolCall, TraceTable, Turn
from conftest import load_experiment

sens = load_experiment("sensitivity")


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(0.0, 10.0), min_size=1, max_size=30),
    st.lists(st.floats(0.0, 10.0), min_size=1, max_size=30),
)
def test_auc_matches_pairwise_count(pos, neg):
    p, n = np.asarray(pos), np.asarray(neg)
    want = ((p[:, None] > n[None, :]) + 0.5 * (p[:, None] == n[None, :])).mean()
    assert sens._auc(p, n) == pytest.approx(want)
    assert sens._auc(p, np.zeros(0)) is None


def test_cluster_bootstrap_median():
    rng = np.random.default_rng(0)
    values = np.array([1.0, 2.0, 3.0, 10.0, 20.0])
    group = np.array([0, 0, 1, 2, 2])
    draws = sens._weighted_median_draws(values, group, 3, rng, 500)
    # Every draw is the lower median of a resample of whole groups, so one of the values, and
    # both a group-0-only draw (median 1) and a group-2-only draw (median 10) are possible.
    assert set(np.unique(draws)) <= set(values.tolist())
    assert draws.min() <= 2.0 and draws.max() >= 10.0
    # One group holding everything: every draw is the (lower) median of all values.
    one = sens._weighted_median_draws(values, np.zeros(5, np.int64), 1, rng, 50)
    assert np.all(one == 3.0)


def test_settings_cover_every_axis_once_around_the_center():
    rows = sens.settings("mean/text")
    center = sens.baseline_config("mean/text")
    assert center == BreathConfig(baseline_stat="mean", baseline_tokens="text")
    axes = {p for p, _, _ in rows}
    assert axes == {"baseline", *sens.SWEEP}
    for param, value, cfg in rows:
        if param == "baseline":
            assert sens.baseline_config(value) == cfg
            continue
        assert getattr(cfg, param) == value
        # Only the swept field differs from the centre.
        assert sens.baseline_config("mean/text", cfg) == cfg
        changed = [
            f for f in BreathConfig.__dataclass_fields__ if getattr(cfg, f) != getattr(center, f)
        ]
        assert changed in ([], [param])


def _episode(i: int, pre: float, post: float, status: str) -> Episode:
    a = Turn(role="assistant", entropy=np.full(20, pre, np.float32))
    t = Turn(role="tool", call=ToolCall("lookup", {"q": i}), status=status)
    b = Turn(role="assistant", entropy=np.full(20, post, np.float32))
    return Episode(f"e{i}", turns=[a, t, b], success=status == "ok")


def test_setting_metrics_floor_and_flips():
    # Failures answered by a high-entropy stream, successes by a low one: AUC 1; the pre-trigger
    # text sits below eps = 0.05, so every failed baseline is at the floor.
    eps = [_episode(i, 0.01, 1.0, "error") for i in range(4)]
    eps += [_episode(10 + i, 0.01, 0.02, "ok") for i in range(4)]
    table = TraceTable.from_episodes(eps)
    rec, verdict = sens.setting_metrics(table, BreathConfig(), n_boot=100)
    assert rec["floor_share"] == 1.0
    assert rec["auc"] == 1.0
    assert rec["spike_failed_median"] == pytest.approx(1.0 / 0.05)
    assert rec["eruption_share_failed"] == 1.0 and rec["eruption_share_ok"] == 0.0
    assert rec["flip_share"] is None
    # A floor of 0.005 lifts the baselines off it; S = 1 / 0.01 still erupts: no flips.
    rec2, _ = sens.setting_metrics(
        table, BreathConfig(eps=0.005), center_verdict=verdict, n_boot=100
    )
    assert rec2["floor_share"] == 0.0 and rec2["flip_share"] == 0.0
    # A floor of 1.0: S = 1 < 2, no eruption: every failed verdict flips.
    rec3, _ = sens.setting_metrics(table, BreathConfig(eps=1.0), center_verdict=verdict, n_boot=100)
    assert rec3["eruptions_failed"] == 0 and rec3["flip_share"] == 1.0


@pytest.mark.slow
def test_small_run_writes_outputs_and_refuses_to_overwrite(quick_agent, tmp_path):
    out = tmp_path / "sens"
    argv = [
        "run", "--out", str(out), "--model", str(quick_agent.path), "--episodes", "2",
        "--levels", "3", "--qwen-steps", "2", "--n-boot", "100", "--no-progress",
        "--centers", "mean/all",
    ]  # fmt: skip
    result = sens.main(argv)
    data = json.loads((out / sens.JSON_NAME).read_text())
    assert set(data["datasets"]) == {"testbed", "qwen3-random", "qwen3-sft2"}
    assert data["qwen3_training"]["steps"] == 2
    n_settings = len(sens.settings(sens.DEFAULT_CENTER))
    for name, by_center in data["study"].items():
        assert set(by_center) == {"median/all", "mean/all"}
        for rows in by_center.values():
            assert len(rows) == n_settings
            assert sum(r["is_center"] for r in rows) == len(sens.SWEEP) + 1
        # The same episodes under every scorer.
        assert data["datasets"][name]["episodes"] == 4  # 2 tasks x 2 policies
    # Random init: near-uniform distributions, far above any floor.
    prof = data["datasets"]["qwen3-random"]["profile"]
    assert all(v["mean"] > 5.0 for v in prof.values() if v["tokens"])
    assert result["study"] == data["study"]
    assert "| baseline | median/all * |" in (out / sens.MD_NAME).read_text()
    assert "plotly" in (out / sens.HTML_NAME).read_text()[:5000].lower()
    with pytest.raises(OutputError):
        sens.main(argv)
