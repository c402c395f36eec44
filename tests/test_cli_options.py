"""CLI options mirror the config dataclasses: one default, one help text (``cli/_options.py``)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import typer

from agentropy.agent.config import RunnerConfig
from agentropy.cli import app
from agentropy.cli._options import field_default, field_help
from agentropy.pipelines.compare import EvalConfig
from agentropy.pipelines.demo import DemoConfig


def _params(command: str) -> dict[str, typer.core.TyperOption]:  # type: ignore[name-defined]
    group = typer.main.get_command(app)
    return {p.name: p for p in group.commands[command].params}  # type: ignore[attr-defined]


def test_defaults_and_help_come_from_the_config_fields():
    cases = [
        ("eval", "episodes", EvalConfig, "episodes"),
        ("eval", "seed", EvalConfig, "seed"),
        ("eval", "split", EvalConfig, "split"),
        ("rollout", "max_turns", RunnerConfig, "max_turns"),
        ("rollout", "batch_size", RunnerConfig, "batch_size"),
        ("demo", "out", DemoConfig, "out"),
        ("demo", "seed", DemoConfig, "seed"),
    ]
    for command, param, cls, name in cases:
        p = _params(command)[param]
        default = getattr(cls(), name)
        assert str(p.default) == str(default), (command, param)
        assert p.help == field_help(cls, name), (command, param)
    eval_params = _params("eval")
    assert eval_params["policies"].default == ",".join(EvalConfig().policies)
    assert eval_params["levels"].default == ",".join(map(str, EvalConfig().levels))


def test_config_named_by_string_reads_help_and_literal_defaults_from_source():
    from agentropy.rl.config import TrainConfig

    ref = "agentropy.rl.config:TrainConfig"
    for f in dataclasses.fields(TrainConfig):
        if isinstance(f.default, int | float | str) and not isinstance(f.default, bool):
            assert field_default(ref, f.name) == f.default, f.name
    assert field_help(ref, "steps") == field_help(TrainConfig, "steps")
    assert _params("train")["steps"].help == field_help(TrainConfig, "steps")
    assert _params("train")["steps"].default is None  # unset: the TOML config may set it


def test_importing_the_cli_does_not_import_torch():
    code = "import sys, agentropy.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_one_nan_policy_choice():
    from agentropy.cli import analyze, check, report
    from agentropy.cli._options import NanPolicyChoice

    assert check.NanPolicyChoice is NanPolicyChoice is analyze.NanPolicyChoice
    assert report.NanPolicyChoice is NanPolicyChoice


def test_commands_are_module_level_functions():
    import importlib

    from agentropy.cli import COMMAND_MODULES

    group = typer.main.get_command(app)
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"agentropy.cli.{name}")
        funcs = {getattr(module, n) for n in dir(module) if callable(getattr(module, n))}
        commands = [c for c in group.commands.values() if c.callback in funcs]  # type: ignore[attr-defined]
        wrapped = [
            c
            for c in group.commands.values()
            if getattr(c.callback, "__module__", None) == module.__name__  # type: ignore[attr-defined]
        ]
        assert commands or wrapped, name
