"""``agentropy train --stop-on KIND[,KIND]``: validated names (exit 2, one line), the config's
``stop_on`` set from the option, and a real run that a monitor alert ends (exit 3, message,
checkpoint of that step, ``summary.json["stopped_by"]``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from agentropy.cli import app
from agentropy.cli._common import ALERT_EXIT
from agentropy.monitor import ALERT_NAMES, MonitorConfig
from agentropy.rl.config import TrainConfig
from agentropy.rl.run import latest_checkpoint
from agentropy.rl.trainer import read_metrics
from conftest import tiny_lm

runner = CliRunner()


def test_unknown_names_are_one_line_errors_listing_the_valid_ones() -> None:
    res = runner.invoke(app, ["train", "--stop-on", "divergence,blowup", "--print-config"])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "--stop-on: unknown alert names ['blowup']" in lines[0]
    assert f"choose from {', '.join(ALERT_NAMES)}" in lines[0]
    # watch --fail-on takes the same names and says the same thing.
    res = runner.invoke(app, ["watch", ".", "--once", "--fail-on", "blowup"])
    assert res.exit_code == 2 and f"choose from {', '.join(ALERT_NAMES)}" in res.stderr


def test_the_option_sets_stop_on_over_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(TrainConfig(stop_on=("divergence",)).to_toml())

    def printed(*args: str) -> TrainConfig:
        res = runner.invoke(app, ["train", "--config", str(path), *args, "--print-config"])
        assert res.exit_code == 0, res.output
        (tmp_path / "out.toml").write_text(res.output)
        return TrainConfig.from_toml(tmp_path / "out.toml")

    assert printed().stop_on == ("divergence",)
    assert printed("--stop-on", " collapse, nonfinite,collapse").stop_on == (
        "collapse",
        "nonfinite",
    )
    assert printed("--stop-on", "").stop_on == ()


def _model_dir(path: Path) -> Path:
    from agentropy.agent.tiny import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    tiny_lm(tok, seed=0, heads=2, tie_word_embeddings=True, bos_token_id=None).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.slow
def test_a_run_ended_by_an_alert_exits_3_with_a_checkpoint(tmp_path: Path) -> None:
    # A monitor this sensitive must fire within three steps of any real run: entropy that rises
    # at all is an eruption (no warm-up margin, one confirming step), entropy at step 3 below
    # step 1 is a collapse (a one-value level, its floor above any entropy; the reward cannot
    # count as rising). Which of the two fires depends on the run; that one of them ends it
    # does not.
    monitor = MonitorConfig(warmup_rise_rel=0.0, min_rise=0.0, confirm=1, min_history=3,
                            trend_window=2, collapse_window=1, collapse_floor=100.0,
                            reward_z=100.0)  # fmt: skip
    cfg = TrainConfig(
        steps=6, tasks_per_step=2, group_size=2, max_turns=2, max_new_tokens=8, max_tokens=16,
        eval_episodes=2, levels=(0, 1), start_level=0, mix_lower=0.0, tensorboard=False,
        lr=1e-2, minibatch_size=2, policy="phase", eval_every=100, checkpoint_every=0,
        threads=1, monitor=monitor,
    )  # fmt: skip
    path = tmp_path / "c.toml"
    path.write_text(cfg.to_toml())
    out = tmp_path / "run"
    res = runner.invoke(app, [
        "train", "--config", str(path), "--model", str(_model_dir(tmp_path / "m")),
        "--out", str(out), "--stop-on", "eruption,collapse", "--no-progress",
    ])  # fmt: skip
    assert res.exit_code == ALERT_EXIT == 3, res.output
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    alert = summary["stopped_by"]
    assert alert["name"] in ("eruption", "collapse")
    step = alert["step"]
    assert 2 <= step <= 3 and summary["steps"] == step
    assert [r["step"] for r in read_metrics(out)] == list(range(1, step + 1))
    assert latest_checkpoint(out).name == f"step-{step:06d}"
    assert (out / "final").is_dir()
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith(
        f"stopped early at step {step}: {alert['name']} alert on {alert['metric']} "
        "(stop_on: eruption, collapse); "
    )
    assert f"trained {step} steps" in res.stdout
