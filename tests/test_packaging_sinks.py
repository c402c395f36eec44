"""The trainer's metric sinks: Weights & Biases beside TensorBoard, checked before any work.

W&B runs in offline mode (``WANDB_MODE=offline``): no network, files under the run directory.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from agentropy.rl.config import TrainConfig
from agentropy.rl.run import Sinks, check_sinks
from agentropy.trace import episode_from_dict

EPISODE = {
    "episode_id": "e1",
    "success": True,
    "turns": [
        {"role": "assistant", "entropy": [0.2, 0.1, 0.3], "phase": ["plan"] * 3},
        {"role": "tool", "name": "lookup", "status": "error", "content": "upstream failure"},
        {"role": "assistant", "entropy": [1.4, 1.1, 0.6, 0.2], "phase": ["recover"] * 4},
    ],
}


class _FakeRun:
    """Records what a W&B run is asked to do (the real one is tested offline, slow tier)."""

    def __init__(self) -> None:
        self.logged: list[tuple[dict[str, float], int]] = []
        self.alerts: list[dict[str, str]] = []

    def log(self, data: dict[str, float], *, step: int) -> None:
        self.logged.append((data, step))

    def alert(self, *, title: str, text: str, level: str) -> None:
        self.alerts.append({"title": title, "text": text, "level": level})


class _Quiet:
    def print(self, *args: Any, **kwargs: Any) -> None:
        pass


def test_missing_wandb_is_one_line_naming_the_extra_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from agentropy.cli import app

    monkeypatch.setitem(sys.modules, "wandb", None)  # find_spec("wandb") is None: not installed
    with pytest.raises(ImportError, match=r"pip install 'agentropy\[wandb\]'"):
        check_sinks(TrainConfig(out=str(tmp_path / "x"), wandb=True))
    check_sinks(TrainConfig(out=str(tmp_path / "x")))  # not asked for: nothing to check
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--out", str(out), "--set", "wandb=true"])
    assert res.exit_code == 2, res.output
    assert "agentropy[wandb]" in res.output and len(res.output.strip().splitlines()) == 1
    assert not out.exists()  # failed before the run directory, the model, anything


def test_monitor_alerts_are_counted_and_divergence_notifies(tmp_path: Path) -> None:
    from agentropy.monitor import Alert

    sinks = Sinks(tmp_path, tensorboard=False, console=_Quiet())
    run = _FakeRun()
    sinks.wandb = run
    try:
        sinks.log_alerts([], step=3)
        assert run.logged == []  # nothing fired: nothing logged
        sinks.log_alerts(
            [
                Alert("eruption", 7, "entropy_recover"),
                Alert("eruption", 7, "entropy"),
                Alert("divergence", 7, "entropy", suggestion="lower the recover temperature"),
            ],
            step=7,
        )
    finally:
        sinks.wandb = None
        sinks.close()
    assert run.logged == [({"breath/alert_eruption": 2.0, "breath/alert_divergence": 1.0}, 7)]
    assert len(run.alerts) == 1 and "divergence" in run.alerts[0]["title"]
    assert run.alerts[0]["text"] == "lower the recover temperature"


@pytest.mark.slow
def test_wandb_sink_logs_metric_rows_and_breath_metrics_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    sinks = Sinks(
        tmp_path, tensorboard=False, console=_Quiet(), wandb_project="agentropy-test",
        run_config={"loss": "rhythm"},
    )  # fmt: skip
    try:
        assert sinks.wandb is not None and sinks.wandb.offline
        assert sinks.wandb.config["loss"] == "rhythm"
        logged: list[tuple[dict[str, float], int]] = []
        real_log = sinks.wandb.log

        def spy(data: dict[str, float], *, step: int) -> None:
            logged.append((dict(data), step))
            real_log(data, step=step)

        monkeypatch.setattr(sinks.wandb, "log", spy)
        sinks.write_episodes([episode_from_dict(EPISODE)])
        sinks.write_metrics([{"step": 1, "loss/total": 0.5, "entropy/mean": float("nan")}])
        from agentropy.monitor import Alert

        sinks.log_alerts([Alert("divergence", 2, "entropy", suggestion="check")], step=2)
    finally:
        sinks.close()
    assert len(logged) == 2 and logged[0][1] == 1
    assert logged[1] == ({"breath/alert_divergence": 1.0}, 2)
    summary = logged[0][0]
    assert summary["loss/total"] == 0.5
    assert "entropy/mean" not in summary  # non-finite values are never logged
    # The trainer logs the same breath/* window metrics as the TRL adapter.
    assert summary["breath/episodes"] == 1.0 and summary["breath/tool_failures"] == 1.0
    assert summary["breath/tokens_recover"] == 4.0
    assert summary["breath/eruptions"] == 1.0
    assert any((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
