"""``agentropy demo``: option validation and output-directory safety (fast); the whole pipeline
end to end on the quick agent with even smaller sizes (slow)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentropy.cli import app
from agentropy.errors import OutputError
from agentropy.pipelines.compare import DEFAULT_POLICIES
from agentropy.pipelines.demo import DemoConfig, render_summary, run_demo
from agentropy.report.claim_rule import VERDICTS

runner = CliRunner()


def test_presets_and_validation() -> None:
    quick = DemoConfig.preset(quick=True)
    full = DemoConfig.preset()
    assert quick.quick and not full.quick
    assert quick.eval_episodes < full.eval_episodes and quick.train_steps < full.train_steps
    assert DemoConfig.preset(quick=True, eval_episodes=2, train_steps=None).eval_episodes == 2
    with pytest.raises(ValueError, match="eval_episodes"):
        DemoConfig(eval_episodes=0)
    with pytest.raises(ValueError, match="group_size"):
        DemoConfig(group_size=1)
    with pytest.raises(ValueError, match="levels"):
        DemoConfig(levels=(0, 4))


def test_cli_bad_option_exits_2(tmp_path: Path) -> None:
    res = runner.invoke(app, ["demo", "--quick", "--episodes", "0", "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert res.output.count("\n") == 1 and res.output.startswith("error:")


def test_existing_demo_is_refused_before_any_work(tmp_path: Path) -> None:
    """An earlier demo's outputs (any of them) are refused up front, naming them; other files
    do not count. Replacement with --force: tests/test_reliability_outputs.py."""
    (tmp_path / "eval").mkdir()
    (tmp_path / "report.html").write_text("old")
    (tmp_path / "mine.txt").write_text("keep")
    config = DemoConfig(out=str(tmp_path), model=str(tmp_path / "no-model"), progress=False)
    with pytest.raises(OutputError, match=r"earlier outputs \(eval, report.html\).*--force"):
        run_demo(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval", "mine.txt", "report.html"]


@pytest.mark.slow
def test_quick_demo_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quick_agent
) -> None:
    """The quick pipeline with smaller sizes than ``--quick`` (2 training steps, 2 episodes per
    level and policy) so that it fits a few minutes on a loaded 2-core machine. The quick agent
    is the session's (conftest: bootstrapping is tested in test_tiny)."""
    monkeypatch.setenv("AGENTROPY_HOME", str(quick_agent.home))
    config = DemoConfig.preset(
        quick=True,
        out=str(tmp_path / "demo"),
        train_steps=2,
        tasks_per_step=2,
        group_size=2,
        train_eval_episodes=2,
        train_eval_every=2,
        eval_episodes=2,
        max_turns=4,
        max_tokens=128,
        progress=False,
    )
    record = run_demo(config)
    out = tmp_path / "demo"
    assert (out / "train" / "metrics.parquet").exists()
    assert record["training"].startswith("2 steps")
    assert len(record["eval_rows"]) == len(DEFAULT_POLICIES) * 4
    assert {r["episodes"] for r in record["eval_rows"]} == {2}
    assert record["claims"][0]["key"] == "spike_after_failure"
    assert all(c["verdict"] in VERDICTS for c in record["claims"])
    saved = json.loads((out / "demo.json").read_text())
    assert saved["claims"] == record["claims"]
    page = (out / "report.html").read_text()
    assert quick_agent.path.name in page  # the cached quick agent, named in the metadata
    assert "://" not in page
    assert '<div class="chart" id="fig-training"></div>' in page  # training traces carry steps
    assert "2 steps; held-out success (phase sampling)" in page
    assert len(re.findall(r'<td class="l">L\d</td>', page)) == len(DEFAULT_POLICIES) * 4
    assert any("report:" in str(x) for x in render_summary(record))
    with pytest.raises(OutputError, match="holds earlier outputs"):
        run_demo(config)

    # A given model directory instead of the bootstrap, and training skipped: said plainly.
    agent_dir = quick_agent.path
    small = dataclasses.replace(
        config, out=str(tmp_path / "d2"), model=str(agent_dir), train=False, levels=(0,)
    )
    record = run_demo(small)
    assert record["training"].startswith("skipped")
    assert not (tmp_path / "d2" / "train").exists()
    page = (tmp_path / "d2" / "report.html").read_text()
    assert "skipped (--no-train)" in page and "No training data" in page
