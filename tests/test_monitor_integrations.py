"""The monitor in other frameworks: TRL ``MonitorCallback`` (fast with stand-in objects, slow
with a real CPU ``GRPOTrainer``), the verl hook, and a real TensorBoard directory."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from test_monitor_tracker import TRL_LOGS
from test_trl_integration import TRL_GC_WARNING, _trainer, fitted_model, tokenizer  # noqa: F401


def _state(step: int, history: list[dict[str, Any]]) -> Any:
    return SimpleNamespace(global_step=step, log_history=history)


@pytest.mark.slow
def test_trl_callback_stops_on_divergence_and_annotates_the_log(tmp_path: Path) -> None:
    pytest.importorskip("trl")
    from rich.console import Console

    from agentropy.integrations.trl import MonitorCallback

    out = io.StringIO()
    cb = MonitorCallback(stop_on=["divergence"], console=Console(file=out))
    args = SimpleNamespace(output_dir=str(tmp_path), should_save=True)
    control = SimpleNamespace(should_training_stop=False)
    history: list[dict[str, Any]] = []
    for i, logs in enumerate(TRL_LOGS, start=1):
        history.append({**logs, "step": i})
        cb.on_log(args, _state(i, history), control, logs=dict(logs))
        if control.should_training_stop:
            break
    assert control.should_training_stop and cb.tracker.stop_reason.name == "divergence"
    assert history[-1]["monitor/divergence"] == 1.0
    assert sum(h["monitor/alerts"] for h in history) == len(cb.alerts) == 2
    assert "monitor divergence on entropy" in out.getvalue()
    # Checkpoint and resume: the state written at on_save comes back at on_train_begin.
    (tmp_path / f"checkpoint-{i}").mkdir()
    cb.on_save(args, _state(i, history), control)
    again = MonitorCallback()
    again.on_train_begin(args, _state(i, history), control)
    assert again.tracker.state == cb.tracker.state
    again.on_log(args, _state(i, history), control, logs=dict(TRL_LOGS[0]))  # replayed: skipped
    assert again.tracker.state == cb.tracker.state


def test_verl_hook_reads_verl_metric_names_and_stops() -> None:
    from agentropy.integrations import VerlMonitor

    hook = VerlMonitor(stop_on=["divergence"])
    rows = [
        {"actor/entropy": h, "critic/score/mean": r, "response_length/mean": 200.0,
         "timing_s/step": 3.0}
        for h, r in [(0.5, 0.4), (0.49, 0.42), (1.2, 0.1), (1.5, 0.0), (1.6, 0.0), (1.6, 0.0)]
    ]  # fmt: skip
    stopped_at = None
    for step, metrics in enumerate(rows, start=1):
        if hook(metrics, step):
            stopped_at = step
            break
        assert metrics["monitor/alerts"] >= 0.0  # counts are added to the dict verl logs
    assert stopped_at is not None and stopped_at <= 3 + 3
    assert [a.name for a in hook.alerts] == ["eruption", "divergence"]
    assert json.loads(json.dumps(hook.state_dict()))["monitor"]["step"] == stopped_at


@pytest.mark.slow
def test_watch_a_real_tensorboard_directory(tmp_path: Path) -> None:
    """Event files written by torch.utils.tensorboard (not our own writer), read by ``watch``."""
    from torch.utils.tensorboard import SummaryWriter
    from typer.testing import CliRunner

    from agentropy.cli import app

    w = SummaryWriter(str(tmp_path / "tb"))
    h = [0.5, 0.49, 0.51, 0.5, 0.48, 0.5, 0.49, 0.5, 0.51, 0.5, 1.2, 1.5, 1.6, 1.6]
    r = [0.4] * 10 + [0.05] * 4
    for step, (hv, rv) in enumerate(zip(h, r, strict=True), start=1):
        w.add_scalar("actor/entropy", hv, step)
        w.add_scalar("critic/score/mean", rv, step)
    w.close()
    res = CliRunner().invoke(
        app, ["watch", str(tmp_path / "tb"), "--once", "--json", "-", "--fail-on", "divergence"]
    )
    assert res.exit_code == 3, res.output
    run = json.loads(res.stdout)["runs"][0]
    assert run["kind"] == "tensorboard" and run["steps"] == 14
    assert run["tags"] == {"entropy": "actor/entropy", "reward": "critic/score/mean"}
    names = [a["name"] for a in run["alerts"]]
    assert names[:2] == ["eruption", "divergence"], names
    assert run["alerts"][1]["step"] <= 11 + 3  # onset 11: within 3 steps


@pytest.mark.slow
@pytest.mark.filterwarnings(TRL_GC_WARNING)
def test_plain_grpo_trainer_with_the_callback(tokenizer, fitted_model, tmp_path):  # noqa: F811
    from trl import GRPOTrainer

    from agentropy.integrations.trl import MonitorCallback

    cb = MonitorCallback()
    trainer = _trainer(
        GRPOTrainer, tokenizer, fitted_model, tmp_path, callbacks=[cb],
        config={"save_strategy": "steps", "save_steps": 2, "max_steps": 3},
    )  # fmt: skip
    trainer.train()
    assert cb.tracker.state.step == 3
    channels = dict(cb.tracker.state.channels)
    assert "entropy" in channels  # from TRL's own "entropy" log
    logged = [h for h in trainer.state.log_history if "monitor/alerts" in h]
    assert [h["step"] for h in logged] == [1, 2, 3]
    saved = json.loads((tmp_path / "checkpoint-2" / "agentropy_monitor_state.json").read_text())
    assert saved["monitor"]["step"] == 2


@pytest.mark.slow
@pytest.mark.filterwarnings(TRL_GC_WARNING)
def test_breath_trainer_gives_the_monitor_phase_channels(tokenizer, fitted_model, tmp_path):  # noqa: F811
    from agentropy import integrations as adapter
    from agentropy.integrations.trl import MonitorCallback

    cb = MonitorCallback()
    trainer = _trainer(adapter.BreathGRPOTrainer, tokenizer, fitted_model, tmp_path, callbacks=[cb])
    trainer.train()
    channels = dict(cb.tracker.state.channels)
    assert {"entropy", "entropy_act", "entropy_recover"} <= set(channels)
    evidence = dict(cb.tracker.state.evidence)
    assert {"reward", "failure_rate", "valid_action_rate"} <= set(evidence)
