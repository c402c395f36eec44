"""``agentropy analyze`` on training scalars: TensorBoard event directories and CSV exports."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from agentropy.cli import app
from agentropy.trace.importers.scalars import is_scalar_input, read_scalar_runs
from test_monitor_sources import scalar_event, write_events


def _series(n: int = 90, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Entropy descends, erupts at step 40 (+1 nat), subsides by step 60; reward = -exp(H) + 3."""
    rng = np.random.default_rng(seed)
    h = np.full(n, 0.5)
    h[:40] = np.linspace(0.9, 0.5, 40)
    h[40:45] = np.linspace(0.5, 1.5, 5)
    h[45:60] = np.linspace(1.5, 0.45, 15)
    h[60:] = 0.45
    h = h + rng.normal(0, 0.01, n)
    return h, -np.exp(h) + 3.0 + rng.normal(0, 0.01, n)


def test_tensorboard_dir_cycles_and_fit(tmp_path):
    h, r = _series()
    events = [scalar_event(s, "actor/entropy", float(h[s])) for s in range(len(h))]
    events += [scalar_event(s, "critic/score/mean", float(r[s])) for s in range(len(h))]
    (tmp_path / "tb").mkdir()
    write_events(tmp_path / "tb" / "events.out.tfevents.1.host", events)
    assert is_scalar_input(tmp_path / "tb") and not is_scalar_input(tmp_path / "nothing")
    (run,) = read_scalar_runs(tmp_path / "tb")
    assert run.tags["entropy"] == "actor/entropy" and run.tags["reward"] == "critic/score/mean"
    res = CliRunner().invoke(app, ["analyze", str(tmp_path / "tb"), "--json", "-"])
    assert res.exit_code == 0, res.output
    (s,) = json.loads(res.output)["scalars"]
    cycles = s["channels"]["entropy"]["cycles"]
    assert len(cycles) == 1
    c = cycles[0]
    assert 38 <= c["start_step"] <= 41 and 43 <= c["peak_step"] <= 46 and c["subsided"]
    assert c["amplitude"] > 0.5
    assert s["fit"]["a"] == np.float64(s["fit"]["a"]) and abs(s["fit"]["a"] - 1.0) < 0.05
    assert s["fit"]["r2"] > 0.99


def test_wandb_csv_with_custom_tags_and_phase_channels(tmp_path):
    h, r = _series(seed=1)
    rows = ["_step,my/ent,my/rew,entropy/recover_mean"]
    rows += [f"{s},{h[s]},{r[s]},{h[s] * 2}" for s in range(len(h))]
    (tmp_path / "export.csv").write_text("\n".join(rows) + "\n")
    args = ["analyze", str(tmp_path / "export.csv"), "--entropy-tag", "my/ent",
            "--reward-tag", "my/rew", "--json", "-"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    (s,) = json.loads(res.output)["scalars"]
    assert set(s["channels"]) == {"entropy", "entropy_recover"}
    assert len(s["channels"]["entropy_recover"]["cycles"]) == 1
    assert s["fit"]["r2"] > 0.99


def test_scalar_errors_exit_2(tmp_path):
    (tmp_path / "a.csv").write_text("_step,loss\n1,0.5\n2,0.4\n")
    res = CliRunner().invoke(app, ["analyze", str(tmp_path / "a.csv")])
    assert (
        res.exit_code == 2 and "no entropy series" in res.output and "--entropy-tag" in res.output
    )
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"episode_id": "e", "turns": [{"role": "assistant", "entropy": [0.1]}]}\n')
    res = CliRunner().invoke(app, ["analyze", str(tmp_path / "a.csv"), str(trace)])
    assert res.exit_code == 2 and "not both" in res.output
