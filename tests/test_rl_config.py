"""TrainConfig: validation with fix-it messages, TOML round trip, ``--set`` overrides, CLI."""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
from typing import Any

import pytest
from typer.testing import CliRunner

from agentropy.cli import app
from agentropy.errors import InputError
from agentropy.rl.coefs import RhythmConfig, TargetConfig
from agentropy.rl.config import TrainConfig, apply_overrides, parse_override


def test_defaults_are_valid_and_documented() -> None:
    import ast
    import inspect

    from agentropy.rl import config as mod

    cfg = TrainConfig()
    assert cfg.episodes_per_step == cfg.tasks_per_step * cfg.group_size
    # Every field has a docstring right under it (it becomes the reference documentation).
    tree = ast.parse(inspect.getsource(mod))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TrainConfig")
    body = cls.body
    documented = {
        a.target.id
        for a, nxt in itertools.pairwise(body)
        if isinstance(a, ast.AnnAssign)
        and isinstance(nxt, ast.Expr)
        and isinstance(nxt.value, ast.Constant)
    }
    assert documented == {f.name for f in dataclasses.fields(TrainConfig)}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"group_size": 1}, "group_size must be >= 2"),
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"loss": "entropy"}, "choose one of clip_cov, flat, kl_cov, rhythm, target, top_entropy"),
        ({"clip_cov_ratio": -0.1}, "clip_cov_ratio must be in [0, 1]"),
        ({"kl_cov_ratio": 1.5}, "kl_cov_ratio must be in [0, 1]"),
        ({"clip_cov_lb": 5.0, "clip_cov_ub": 1.0}, "clip_cov_lb must be below clip_cov_ub"),
        ({"kl_cov_coef": -1.0}, "kl_cov_coef must be"),
        (
            {"top_entropy_quantile": 0.0},
            "top_entropy_quantile must be in .0, 1. .the paper uses 0.2",
        ),
        ({"top_entropy_quantile": 1.2}, "top_entropy_quantile must be in"),
        ({"policy": "hot"}, "unknown policy"),
        ({"eval_policy": "constant:-1"}, "temperature"),
        ({"levels": (0, 4)}, "levels must be"),
        ({"levels": (1, 1)}, "must not repeat"),
        ({"start_level": 3, "levels": (0, 1)}, "add it to levels or start at 0"),
        ({"clip_low": 1.0}, "clip_low must be in [0, 1)"),
        ({"promote_threshold": 0.0}, "promote_threshold"),
        ({"mix_lower": 1.0}, "mix_lower"),
        ({"lr": 0.0}, "lr must be"),
        ({"agg_mode": "mean"}, "agg_mode must be one of"),
        ({"checkpoint_every": -1}, "0 = only at the end"),
        ({"threads": -1}, "0 = torch default"),
        ({"clip_ratio_c": 1.0}, "clip_ratio_c must be > 1"),
        ({"adv_std": "sample"}, "adv_std must be one of"),
    ],
)
def test_validation_says_how_to_fix(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        TrainConfig(**change)


def test_eval_policy_defaults_to_the_training_policy() -> None:
    assert TrainConfig(policy="phase").resolved_eval_policy == "phase"
    assert TrainConfig(policy="phase", eval_policy="greedy").resolved_eval_policy == "greedy"
    with pytest.raises(ValueError, match="temperature"):
        TrainConfig(policy="constant:-1")  # "train" resolves to the (invalid) training policy
    with pytest.raises(ValueError, match="partial_credit"):
        TrainConfig(partial_credit=1.0)


CHANGED = [
    {},
    {"lr": 3e-5, "steps": 7, "policy": "phase:recover=1,horizon=16", "loss": "rhythm"},
    {"model": "/tmp/some model/", "levels": (2, 3), "start_level": 3, "tensorboard": False},
    {"threads": 1, "eval_policy": "constant:0.5", "agg_mode": "seq-mean-token-mean"},
    {"rhythm": RhythmConfig(step=1e-3, horizon=16), "target": TargetConfig(target=0.35)},
    {"out": 'runs/with "quotes" and \\ backslash', "flat_coef": -1e-3, "mix_lower": 0.0},
    {"partial_credit": 0.5, "eval_policy": "train"},
    {
        "clip_ratio_c": 3.0,
        "adv_std": "unbiased",
        "entropy_token_mean": True,
        "agg_mode": "seq-mean-token-sum-norm",
    },
]


@pytest.mark.parametrize("change", CHANGED)
def test_toml_round_trip(change: dict[str, Any], tmp_path: Any) -> None:
    cfg = dataclasses.replace(TrainConfig(), **change)
    path = tmp_path / "c.toml"
    path.write_text(cfg.to_toml())
    assert TrainConfig.from_toml(path) == cfg
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_loss_name_picks_the_entropy_term_and_its_schedule() -> None:
    from agentropy.rl.coefs import FixedCoef, RhythmSchedule, TargetSchedule

    terms = {name: TrainConfig(loss=name).entropy_term for name in ("vanilla", "flat", "target",
                                                                   "rhythm")}  # fmt: skip
    assert terms == {"vanilla": "none", "flat": "flat", "target": "target", "rhythm": "rhythm"}
    flat = TrainConfig(loss="flat", flat_coef=2e-3).entropy_schedule()
    assert isinstance(flat, FixedCoef) and flat.term_kwargs(flat.init()) == {"coef": 2e-3}
    assert TrainConfig(loss="vanilla").entropy_schedule().term_kwargs(flat.init()) == {}
    assert isinstance(TrainConfig(loss="target").entropy_schedule(), TargetSchedule)
    assert isinstance(TrainConfig(loss="rhythm").entropy_schedule(), RhythmSchedule)
    cfg = TrainConfig(agg_mode="seq-mean-token-sum")
    assert cfg.entropy_agg_mode == "seq-mean-token-sum"
    assert cfg.policy_term == "ppo"
    assert dataclasses.replace(cfg, entropy_token_mean=True).entropy_agg_mode == "token-mean"


def test_toml_errors_name_the_file_and_the_fix(tmp_path: Any) -> None:
    path = tmp_path / "c.toml"
    path.write_text("stpes = 4\n")
    with pytest.raises(InputError, match="did you mean 'steps'") as err:
        TrainConfig.from_toml(path)
    assert "c.toml" in str(err.value)
    path.write_text("[rhythm]\nstepp = 1e-3\n")
    with pytest.raises(InputError, match=r"rhythm\.stepp.*did you mean 'step'"):
        TrainConfig.from_toml(path)
    path.write_text('steps = "ten"\n')
    with pytest.raises(InputError, match="steps must be an integer"):
        TrainConfig.from_toml(path)
    path.write_text("steps = \n")
    with pytest.raises(InputError, match="not valid TOML"):
        TrainConfig.from_toml(path)
    with pytest.raises(InputError, match="not found"):
        TrainConfig.from_toml(tmp_path / "missing.toml")


def test_overrides_parse_toml_values_and_bare_strings() -> None:
    assert parse_override("lr=3e-5") == (["lr"], 3e-5)
    assert parse_override("rhythm.step = 1e-3") == (["rhythm", "step"], 1e-3)
    assert parse_override("policy=constant:1.0") == (["policy"], "constant:1.0")
    assert parse_override("policy=phase:recover=1.0") == (["policy"], "phase:recover=1.0")
    assert parse_override("levels=[0, 1]") == (["levels"], [0, 1])
    cfg = apply_overrides(
        TrainConfig(),
        ["lr=3e-5", "rhythm.step=1e-3", "levels=0,1", "start_level=0", "tensorboard=false",
         "model=agents/x", "model=none", "steps=5", "steps=6"],
    )  # fmt: skip
    assert cfg.lr == 3e-5 and cfg.rhythm.step == 1e-3 and cfg.levels == (0, 1)
    assert cfg.tensorboard is False and cfg.model is None and cfg.steps == 6  # later wins
    assert isinstance(apply_overrides(TrainConfig(), ["lr=1"]).lr, float)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("lr", "must look like key=value"),
        ("lrr=1", "did you mean 'lr'"),
        ("rhythm.nope=1", "unknown key"),
        ("lr.x=1", "not a nested section"),
        ("steps=abc", "steps must be an integer"),
        ("steps=1.5", "steps must be an integer"),
        ("tensorboard=2", "true or false"),
        ("group_size=1", "group_size must be >= 2"),
    ],
)
def test_bad_overrides(item: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        apply_overrides(TrainConfig(), [item])


def test_cli_print_config_applies_file_options_then_set(tmp_path: Any) -> None:
    path = tmp_path / "c.toml"
    path.write_text('steps = 3\nloss = "target"\n[rhythm]\nhorizon = 8\n')
    res = CliRunner().invoke(app, [
        "train", "--config", str(path), "--steps", "9", "--policy", "phase",
        "--set", "rhythm.horizon=12", "--set", "steps=11", "--print-config",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    out = tmp_path / "printed.toml"
    out.write_text(res.output)
    cfg = TrainConfig.from_toml(out)
    assert (cfg.steps, cfg.loss, cfg.policy, cfg.rhythm.horizon) == (11, "target", "phase", 12)
    bad = CliRunner().invoke(app, ["train", "--loss", "nope", "--print-config"])
    assert bad.exit_code == 2 and "error:" in bad.output and "choose one of" in bad.output
    peer = CliRunner().invoke(app, ["train", "--loss", "clip_cov", "--set",
                                    "clip_cov_ratio=0.01", "--print-config"])  # fmt: skip
    assert peer.exit_code == 0, peer.output
    assert 'loss = "clip_cov"' in peer.output and "clip_cov_ratio = 0.01" in peer.output


def test_peer_losses_pick_their_policy_term_and_its_settings() -> None:
    from agentropy.rl.policy_terms import get_policy_term

    shared = {"clip_low": 0.1, "clip_high": 0.3, "clip_ratio_c": 3.0, "agg_mode": "token-mean"}
    base = {"clip_low": 0.1, "clip_high": 0.3, "clip_ratio_c": 3.0}
    cases = {
        "vanilla": ("ppo", {}),
        "clip_cov": ("clip_cov", {"ratio": 0.01, "lb": 0.5, "ub": 4.0}),
        "kl_cov": ("kl_cov", {"ratio": 0.02, "coef": 0.5}),
        "top_entropy": ("top_entropy", {"quantile": 0.3}),
    }
    for loss, (term, own) in cases.items():
        cfg = TrainConfig(
            loss=loss, **base, clip_cov_ratio=0.01, clip_cov_lb=0.5, clip_cov_ub=4.0,
            kl_cov_ratio=0.02, kl_cov_coef=0.5, top_entropy_quantile=0.3,
        )  # fmt: skip
        assert cfg.policy_term == term and cfg.entropy_term == "none"
        assert cfg.policy_term_kwargs() == {**shared, **own}
        assert get_policy_term(loss) is get_policy_term(term)
    # Defaults are the frameworks' / papers' (one definition, in agentropy.rl.policy_terms).
    d = TrainConfig()
    assert (d.clip_cov_ratio, d.clip_cov_lb, d.clip_cov_ub) == (2e-4, 1.0, 5.0)
    assert (d.kl_cov_ratio, d.kl_cov_coef, d.top_entropy_quantile) == (2e-4, 1.0, 0.2)
    # The new fields round-trip through TOML like every other.
    cfg = TrainConfig(loss="top_entropy", top_entropy_quantile=0.25, clip_cov_lb=0.5)
    assert TrainConfig.from_dict(tomllib.loads(cfg.to_toml())) == cfg
