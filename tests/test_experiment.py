"""Experiment: arms x seeds on a micro budget produce every column; t-intervals; CLI."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import torch

from agentropy.agent.tiny import build_tokenizer
from agentropy.pipelines.experiment import (
    ARM_METRICS,
    ARMS,
    LEVEL_METRICS,
    ExperimentConfig,
    render_tables,
    run_experiment,
    t_interval,
)
from agentropy.rl.config import TrainConfig

torch.set_num_threads(1)


def test_t_interval_matches_the_formula() -> None:
    from scipy import stats

    r = t_interval([0.2, 0.4, 0.9])
    sd = float(torch.tensor([0.2, 0.4, 0.9]).double().std())
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert r["mean"] == pytest.approx(0.5)
    assert r["ci"] == pytest.approx([0.5 - half, 0.5 + half])
    assert t_interval([0.3]) == {"mean": 0.3, "ci": None, "n": 1}
    assert t_interval([None, 0.3, None])["n"] == 1
    assert t_interval([]) == {"mean": None, "ci": None, "n": 0}


def test_arms_share_the_budget_and_differ_in_policy_and_loss() -> None:
    exp = ExperimentConfig(train=TrainConfig(steps=3, tasks_per_step=2))
    a, b = exp.run_config("baseline", 0), exp.run_config("rhythm", 1)
    assert (a.policy, a.loss) == ("constant:1.0", "flat")
    assert (b.policy, b.loss) == ("phase", "rhythm")
    assert a.steps * a.episodes_per_step == b.steps * b.episodes_per_step
    assert (a.seed, b.seed) == (0, 1) and a.out != b.out
    with pytest.raises(ValueError, match="choose from"):
        ExperimentConfig(arms=("baseline", "hot"))


@pytest.mark.slow
def test_micro_experiment_produces_every_column(tmp_path: Any) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer()

    def load() -> tuple[Any, Any]:
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
            tie_word_embeddings=True, bos_token_id=None, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )  # fmt: skip
        return LlamaForCausalLM(config).eval(), tok

    train = TrainConfig(
        steps=2, tasks_per_step=2, group_size=2, max_turns=2, max_new_tokens=6, max_tokens=12,
        eval_episodes=2, levels=(0, 1), start_level=0, progress=False, tensorboard=False,
        minibatch_size=4, ppo_epochs=1,
    )  # fmt: skip
    exp = ExperimentConfig(seeds=2, out=str(tmp_path / "exp"), train=train, eval_episodes=3)
    report = run_experiment(exp, load=load)
    assert [r["arm"] for r in report["runs"]] == ["baseline"] * 2 + ["rhythm"] * 2
    assert {(e["arm"], e["level"]) for e in report["levels"]} == {
        (a, lv) for a in exp.arms for lv in (0, 1)
    }
    for e in report["levels"]:
        for m in LEVEL_METRICS:
            assert e[m]["n"] == 2 or m == "recovery", (e["arm"], m)
    for e in report["arms"]:
        assert e["policy"] == ARMS[e["arm"]]["policy"]
        for m in ARM_METRICS:
            assert e[m]["n"] == 2, m
    for r in report["runs"]:
        assert r["success_gain"] == pytest.approx(r["success_after"] - r["success_before"])
        assert r["greedy_gain"] == pytest.approx(r["greedy_after"] - r["greedy_before"])
        # Every run starts from the same model: one "before" per policy.
        same = [x for x in report["runs"] if x["arm"] == r["arm"]]
        assert {x["success_before"] for x in same} == {r["success_before"]}
        assert r["greedy_before"] == report["runs"][0]["greedy_before"]
        levels = r["levels"]
        assert r["success_after"] == pytest.approx(np.mean([x["success"] for x in levels]))
    on_disk = json.loads((tmp_path / "exp" / "experiment.json").read_text())
    assert on_disk["config"]["rollouts_per_run"] == 2 * 4
    assert on_disk["levels"][0]["success"]["n"] == 2
    tables = render_tables(report)
    from rich.console import Console

    console = Console(width=200, record=True)
    for t in tables:
        console.print(t)
    text = console.export_text()
    for col in ("success %", "recovery %", "erupt p/n/d", "loops", "tok/ep", "cycles",
                "own before %", "own after %", "own gain", "greedy before %", "greedy gain"):  # fmt: skip
        assert col in text


@pytest.mark.slow
def test_experiment_command(tmp_path: Any) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM
    from typer.testing import CliRunner

    from agentropy.cli import app

    tok = build_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    sets = ["steps=1", "tasks_per_step=2", "group_size=2", "max_turns=2", "max_new_tokens=6",
            "max_tokens=12", "eval_episodes=2", "levels=[0]", "start_level=0",
            "tensorboard=false"]  # fmt: skip
    args = ["experiment", "--arms", "baseline,rhythm", "--seeds", "1", "--out",
            str(tmp_path / "exp"), "--model", str(tmp_path / "m"), "--eval-episodes", "2",
            "--no-progress"]  # fmt: skip
    for s in sets:
        args += ["--set", s]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "success %" in res.output and "cycles" in res.output
    report = json.loads((tmp_path / "exp" / "experiment.json").read_text())
    assert [r["arm"] for r in report["runs"]] == ["baseline", "rhythm"]
    bad = CliRunner().invoke(app, ["experiment", "--arms", "nope"])
    assert bad.exit_code == 2 and "choose from" in bad.output
