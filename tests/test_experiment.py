"""Experiment: arms x seeds on a micro budget produce every column; t-intervals; CLI."""

from __future__ import annotations

import dataclasses
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
    OPTIONAL_ARM_METRICS,
    TRAJECTORY_KEYS,
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
    # The peers: same budget, constant temperature like the baseline, their own loss.
    exp = ExperimentConfig(arms=("baseline", "clip_cov", "kl_cov", "top_entropy"), train=exp.train)
    runs = [exp.run_config(a, 0) for a in exp.arms]
    assert [(r.policy, r.loss) for r in runs[1:]] == [
        ("constant:1.0", "clip_cov"), ("constant:1.0", "kl_cov"), ("constant:1.0", "top_entropy")
    ]  # fmt: skip
    assert {r.steps * r.episodes_per_step for r in runs} == {3 * 2 * 4}
    with pytest.raises(ValueError, match="threads"):
        ExperimentConfig(jobs=2)  # threads = 0 would oversubscribe the cores
    with pytest.raises(ValueError, match="pass no `load`"):
        run_experiment(ExperimentConfig(jobs=2, train=TrainConfig(threads=1)), load=lambda: None)


def test_objectives_config_file_loads_and_errors_name_the_file(tmp_path: Any) -> None:
    from pathlib import Path

    from agentropy.errors import InputError

    root = Path(__file__).resolve().parents[1]
    exp = ExperimentConfig.from_toml(root / "experiments" / "objectives.toml")
    assert {"vanilla", "baseline", "rhythm", "top_entropy"} <= set(exp.arms)
    assert {"clip_cov", "kl_cov"} & set(exp.arms)
    assert exp.seeds >= 3 and exp.train.faults == "all"
    assert exp.run_config("top_entropy", 2).top_entropy_quantile == 0.2
    bad = tmp_path / "bad.toml"
    bad.write_text('arms = ["vanilla"]\nlr = 1e-5\n')
    with pytest.raises(InputError, match=r"bad.toml.*'lr'.*\[train\] table"):
        ExperimentConfig.from_toml(bad)
    bad.write_text("[train]\nlrr = 1e-5\n")
    with pytest.raises(InputError, match="did you mean 'lr'"):
        ExperimentConfig.from_toml(bad)
    bad.write_text("seeds = 0\n")
    with pytest.raises(InputError, match="seeds must be"):
        ExperimentConfig.from_toml(bad)


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
    exp = ExperimentConfig(
        arms=("baseline", "rhythm", "top_entropy"), seeds=2, out=str(tmp_path / "exp"),
        train=dataclasses.replace(train, faults="all"), eval_episodes=3,
    )  # fmt: skip
    report = run_experiment(exp, load=load)
    assert [r["arm"] for r in report["runs"]] == (
        ["baseline"] * 2 + ["rhythm"] * 2 + ["top_entropy"] * 2
    )
    assert {(e["arm"], e["level"]) for e in report["levels"]} == {
        (a, lv) for a in exp.arms for lv in (0, 1)
    }
    for e in report["levels"]:
        for m in LEVEL_METRICS:
            assert e[m]["n"] == 2 or m == "recovery", (e["arm"], m)
    for e in report["arms"]:
        assert e["policy"] == ARMS[e["arm"]]["policy"]
        for m in ARM_METRICS:
            assert e[m]["n"] == 2 or (m in OPTIONAL_ARM_METRICS and e[m]["n"] in (0, 1)), m
    for arm, traj in report["trajectories"].items():
        assert set(traj) == set(TRAJECTORY_KEYS)
        assert len(traj["rollout/success"]) == train.steps
        runs = [r for r in report["runs"] if r["arm"] == arm]
        assert traj["rollout/success"][0] == pytest.approx(
            np.mean([r["trajectory"]["rollout/success"][0] for r in runs])
        )
    for r in report["runs"]:
        assert r["success_gain"] == pytest.approx(r["success_after"] - r["success_before"])
        assert r["greedy_gain"] == pytest.approx(r["greedy_after"] - r["greedy_before"])
        # Every run starts from the same model: one "before" per policy.
        same = [x for x in report["runs"] if x["arm"] == r["arm"]]
        assert {x["success_before"] for x in same} == {r["success_before"]}
        assert r["greedy_before"] == report["runs"][0]["greedy_before"]
        levels = r["levels"]
        assert r["success_after"] == pytest.approx(np.mean([x["success"] for x in levels]))
        assert r["tokens_per_episode"] == pytest.approx(
            np.mean([x["tokens_per_episode"] for x in levels])
        )
        for key in ("novel_recovery_after", "novel_recovery_greedy_after"):
            assert r[key] is None or 0.0 <= r[key] <= 1.0
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
                "own before %", "own after %", "own gain", "greedy before %", "greedy gain",
                "novel own", "novel greedy", "H recover"):  # fmt: skip
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
    # An experiment file: its arms and [train] table; the command line overrides it.
    cfg = tmp_path / "objectives.toml"
    train = "\n".join(s.replace("levels=[0]", "levels = [0]").replace("=", " = ", 1)
                      for s in sets)  # fmt: skip
    cfg.write_text(f'arms = ["vanilla", "kl_cov"]\nseeds = 2\nout = "ignored"\n[train]\n{train}\n')
    res = CliRunner().invoke(app, [
        "experiment", "--config", str(cfg), "--seeds", "1", "--out", str(tmp_path / "exp2"),
        "--model", str(tmp_path / "m"), "--eval-episodes", "2", "--no-progress",
        "--set", "kl_cov_ratio=0.5", "--set", "threads=1", "--jobs", "2",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "novel" in res.output  # the objectives table (narrow terminal: headers wrap)
    report = json.loads((tmp_path / "exp2" / "experiment.json").read_text())
    assert [r["arm"] for r in report["runs"]] == ["vanilla", "kl_cov"]
    assert report["config"]["train"]["kl_cov_ratio"] == 0.5
    assert report["config"]["train"]["steps"] == 1 and report["config"]["jobs"] == 2
    # Two worker processes give the runs a sequential experiment gives (runs are pure).
    res = CliRunner().invoke(app, [
        "experiment", "--config", str(cfg), "--seeds", "1", "--out", str(tmp_path / "exp3"),
        "--model", str(tmp_path / "m"), "--eval-episodes", "2", "--no-progress",
        "--set", "kl_cov_ratio=0.5", "--set", "threads=1",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    serial = json.loads((tmp_path / "exp3" / "experiment.json").read_text())

    def outcome(row: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in row.items() if not k.startswith("latency")}  # wall time

    for a, b in zip(report["runs"], serial["runs"], strict=True):
        assert [outcome(x) for x in a["levels"]] == [outcome(x) for x in b["levels"]]
        assert a["trajectory"] == b["trajectory"]
