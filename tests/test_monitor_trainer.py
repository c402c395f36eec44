"""The monitor inside our trainer: metrics, attribution, stop_on, checkpointed state; the rates."""

from __future__ import annotations

import itertools
import json
from typing import Any

import numpy as np
import pytest
import torch

from agentropy.agent.tiny import build_tokenizer
from agentropy.monitor import Alert, Tracker
from agentropy.monitor.attribution import GROUPS
from agentropy.monitor.rates import RATE_NAMES, episode_rates
from agentropy.rl import trainer as trainer_mod
from agentropy.rl.config import TrainConfig
from agentropy.rl.trainer import (
    backfill_realised,
    build_batch,
    policy_outputs,
    read_metrics,
    rollout_entropy,
    train,
)
from agentropy.trace import Episode, ToolCall, Turn
from conftest import tiny_lm

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tok() -> Any:
    return build_tokenizer()


def _config(tmp_path: Any, **kw: Any) -> TrainConfig:
    base = dict(
        out=str(tmp_path / "run"), steps=3, tasks_per_step=2, group_size=2, max_turns=2,
        max_new_tokens=8, max_tokens=16, eval_episodes=2, levels=(0, 1), start_level=0,
        mix_lower=0.0, progress=False, tensorboard=False, lr=1e-2, minibatch_size=2,
        policy="phase", eval_every=100,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _model(tok: Any) -> Any:
    return tiny_lm(tok, seed=0, heads=2, tie_word_embeddings=True, bos_token_id=None)


def test_trainer_logs_monitor_attribution_and_rates(tok: Any, tmp_path: Any) -> None:
    cfg = _config(tmp_path)
    result = train(cfg, model=_model(tok), tokenizer=tok)
    rows = read_metrics(cfg.out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["cov/all_tokens"] == r["tokens/total"] > 0
        assert r["cov/all_pred_dH"] == pytest.approx(-r["cov/all"])
        assert r["rollout/entropy"] > 0
        assert r["monitor/alerts"] == sum(r[f"monitor/{n}"] for n in ("eruption", "subsided",
                                                                      "divergence", "collapse",
                                                                      "nonfinite"))  # fmt: skip
        assert r["time/monitor_s"] < r["time/step_s"]
        for name in RATE_NAMES:
            assert f"breath/{name}" in r
    # Realised change of step s's update = rollout entropy of s + 1 minus that of s; the last
    # step's is not known yet.
    for a, b in itertools.pairwise(rows):
        assert a["cov/all_realised_dH"] == pytest.approx(
            b["rollout/entropy"] - a["rollout/entropy"]
        )
    assert rows[-1].get("cov/all_realised_dH") is None
    # The checkpoint holds the monitor state the run ended with.
    state = torch.load(f"{cfg.out}/checkpoints/step-000003/state.pt", weights_only=True)
    saved = json.loads(state["trainer"]["monitor"])
    assert saved["monitor"]["step"] == 3
    assert result.stopped_by is None and result.steps == 3


def test_stop_on_ends_training_with_a_checkpoint(
    tok: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Fires(Tracker):
        """Fires a divergence at step 2 on top of whatever the detector says."""

        def step(self, step: int, raw: Any) -> list[Alert]:
            alerts = super().step(step, raw)
            if step == 2:
                alerts = [*alerts, Alert("divergence", 2, "entropy", {}, "planted")]
                self.alerts.append(alerts[-1])
                if self.stop_reason is None and "divergence" in self.stop_on:
                    self.stop_reason = alerts[-1]
            return alerts

    monkeypatch.setattr(trainer_mod, "Tracker", Fires)
    cfg = _config(tmp_path, steps=5, stop_on=("divergence",), checkpoint_every=0)
    result = train(cfg, model=_model(tok), tokenizer=tok)
    assert [r["step"] for r in read_metrics(cfg.out)] == [1, 2]
    assert read_metrics(cfg.out)[-1]["monitor/divergence"] == 1.0
    assert result.steps == 2 and result.stopped_by["name"] == "divergence"
    assert trainer_mod.latest_checkpoint(cfg.out).name == "step-000002"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped_by"]["suggestion"] == "planted"


def test_stop_on_names_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown alert names"):
        TrainConfig(stop_on=("blowup",))
    cfg = TrainConfig(stop_on=("divergence", "collapse"))
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_monitor_config_round_trips_through_toml(tmp_path: Any) -> None:
    cfg = TrainConfig(stop_on=("collapse",))
    path = tmp_path / "c.toml"
    path.write_text(cfg.to_toml())
    back = TrainConfig.from_toml(path, ["monitor.horizon=4"])
    assert back.monitor.horizon == 4 and back.stop_on == ("collapse",)


def test_model_logprob_is_at_temperature_one(tok: Any) -> None:
    from agentropy.agent.runner import RunnerConfig, rollout
    from agentropy.control.temperature import schedule_from_name
    from agentropy.env.toolworld import ToolWorld, ToolWorldConfig

    model = _model(tok)
    world = ToolWorld(ToolWorldConfig())
    tasks = world.tasks(split="train", level=1, n=2, seed=0)
    eps = rollout(
        model, tok, world, tasks, schedule=schedule_from_name("constant:0.7"),
        config=RunnerConfig(max_turns=2, max_new_tokens=8, max_tokens=16, record_inputs=True),
        seed=0,
    )  # fmt: skip
    batch = build_batch(eps, tok.pad_token_id)
    with torch.no_grad():
        logprob, _, lp1 = policy_outputs(model, batch)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        ref = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, batch.targets[..., None])
    m = batch.mask
    assert torch.allclose(lp1[m], ref[..., 0][m], atol=1e-5)
    assert not torch.allclose(logprob[m], lp1[m], atol=1e-3)  # T = 0.7 differs


def _ep(eid: str, calls: list[tuple[str, dict, str]], end: str) -> Episode:
    turns: list[Turn] = []
    for name, args, status in calls:
        turns.append(Turn(role="assistant", entropy=np.array([0.5, 0.4])))
        call = ToolCall(name=name, arguments=args) if name else None
        turns.append(Turn(role="tool", call=call, status=status, content="value 42"))
    turns.append(Turn(role="assistant", entropy=np.array([0.2])))
    return Episode(episode_id=eid, turns=turns, meta={"end_reason": end, "question": "Kalo age?"})


def test_episode_rates_follow_the_definitions() -> None:
    same = ("lookup", {"entity": "Kalo"}, "error")
    eps = [
        _ep("loop", [same, same, same], "answer"),  # 3 identical calls: a loop
        _ep("bad", [(None, {}, "error"), ("teleport", {"entity": "Kalo"}, "error")], "no_action"),
        _ep("ok", [("lookup", {"entity": "Kalo"}, "ok")], "answer"),
    ]
    r = episode_rates(eps, known_tools=("lookup", "calc"))
    assert r["breath/loop_rate"] == pytest.approx(1 / 3)
    assert r["breath/failure_rate"] == pytest.approx(5 / 6)
    # actions: 6 tool turns (one unparsed) + 3 endings (one no_action): 7 valid of 9.
    assert r["breath/valid_action_rate"] == pytest.approx(7 / 9)
    assert r["breath/hallucination_rate"] > 0  # the unknown tool
    assert episode_rates([]) == dict.fromkeys((f"breath/{n}" for n in RATE_NAMES), None)


def test_rollout_entropy_and_backfill() -> None:
    t = Turn(role="assistant", entropy=np.array([1.0, 3.0]), phase=np.array([0, 2]))
    ep = Episode(episode_id="e", turns=[t])
    h = rollout_entropy([ep])
    assert h["rollout/entropy"] == 2.0 and h["rollout/entropy_plan"] == 1.0
    assert "rollout/entropy_act" not in h
    prev = dict(h)
    backfill_realised(prev, {"rollout/entropy": 2.5, "rollout/entropy_plan": 0.5})
    assert prev["cov/all_realised_dH"] == 0.5 and prev["cov/plan_realised_dH"] == -0.5
    assert set(GROUPS) >= {"all", "plan"}
