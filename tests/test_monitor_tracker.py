"""Tracker: raw framework metrics in, alerts and stop_on out, checkpointable; cheap import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agentropy.monitor import Tracker

# TRL's on_log keys (no "train/" prefix) for a run that blows up at step 3
TRL_LOGS = [
    {"entropy": h, "reward": r, "completions/mean_length": 40.0, "learning_rate": 3e-4,
     "epoch": 0.1 * i, "note": "text is ignored"}
    for i, (h, r) in enumerate(
        zip([0.51, 0.50, 1.1, 1.4, 1.6, 1.5], [0.16, 0.17, 0.02, 0.0, 0.0, 0.0], strict=True)
    )
]  # fmt: skip


def test_stop_on_divergence_from_trl_logs():
    tr = Tracker(stop_on=["divergence"])
    for i, logs in enumerate(TRL_LOGS, start=1):
        tr.step(i, logs)
        if tr.should_stop:
            break
    assert tr.stop_reason is not None and tr.stop_reason.name == "divergence"
    assert i <= 3 + 3  # onset at step 3
    assert [a.name for a in tr.alerts] == ["eruption", "divergence"]


def test_without_stop_on_never_stops_and_replayed_steps_are_skipped():
    tr = Tracker()
    for i, logs in enumerate(TRL_LOGS, start=1):
        tr.step(i, logs)
    assert not tr.should_stop and tr.alerts
    assert tr.step(2, TRL_LOGS[0]) == []  # a resumed run replaying an old step


def test_state_dict_round_trip_through_json():
    a, b = Tracker(), Tracker()
    for i, logs in enumerate(TRL_LOGS[:3], start=1):
        a.step(i, logs)
    b.load_state_dict(json.loads(json.dumps(a.state_dict(), allow_nan=False)))
    assert [x.to_dict() for x in b.alerts] == [x.to_dict() for x in a.alerts]
    for i, logs in enumerate(TRL_LOGS[3:], start=4):
        assert [x.to_dict() for x in a.step(i, logs)] == [x.to_dict() for x in b.step(i, logs)]


def test_bad_stop_on():
    with pytest.raises(ValueError, match="unknown alert names"):
        Tracker(stop_on=["explosion"])


def test_import_monitor_is_cheap():
    code = (
        "import sys, agentropy.monitor, agentropy.trace.importers.scalars; "
        "print(','.join(m for m in ('torch', 'pyarrow', 'scipy', 'ruptures', 'trl') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_broken_tool_calls_without_reward_diverge_at_once():
    """The real lr 3e-4 run (RESULTS.md, "Monitor"): reward 0 throughout, entropy 0.94 -> 6.3,
    valid tool calls 0.63 -> 0.09 -> 0: divergence at the confirming step, not a horizon later."""
    h = [0.935, 2.963, 4.144, 4.697, 6.264]
    valid = [0.625, 0.087, 0.0, 0.0, None]
    tr = Tracker(stop_on=["divergence"])
    for i, (e, v) in enumerate(zip(h, valid, strict=True), start=1):
        tr.step(i, {"entropy/mean": e, "rollout/reward_mean": 0.0, "breath/valid_action_rate": v})
    div = [a for a in tr.alerts if a.name == "divergence"]
    assert div and div[0].step == 3 and div[0].evidence["severe"] is True
    assert tr.should_stop
    # A drift of the rate smaller than severe_rate waits for the horizon.
    tr = Tracker()
    for i, (e, v) in enumerate(zip(h, [0.625, 0.55, 0.5, 0.5, 0.5], strict=True), start=1):
        tr.step(i, {"entropy/mean": e, "rollout/reward_mean": 0.0, "breath/valid_action_rate": v})
    assert not [a for a in tr.alerts if a.name == "divergence"]
