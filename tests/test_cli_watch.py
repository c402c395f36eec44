"""``agentropy watch``: --once, --json, --fail-on (exit 3), bad input (exit 2), following."""

from __future__ import annotations

import json
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from agentropy.cli import app
from agentropy.monitor.synthetic import planted_series
from test_monitor_sources import scalar_event, write_events

runner = CliRunner()


def unstable_run(path, steps: int = 8) -> None:
    """Our trainer's metrics.parquet for a run that blows up at step 3 (lr 3e-4 in RESULTS.md)."""
    h = [0.51, 0.50, 1.1, 1.4, 1.6, 1.5, 1.3, 1.2][:steps]
    r = [0.16, 0.17, 0.02, 0.0, 0.0, 0.0, 0.0, 0.0][:steps]
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table({
            "step": list(range(1, steps + 1)),
            "entropy/mean": h,
            "tokens/total": [100.0] * steps,
            "rollout/reward_mean": r,
        }),
        path / "metrics.parquet",
    )  # fmt: skip


def test_once_parquet_divergence_fails_with_status_3(tmp_path):
    unstable_run(tmp_path / "run")
    out = tmp_path / "alerts.json"
    res = runner.invoke(
        app, ["watch", str(tmp_path / "run"), "--once", "--json", str(out),
              "--fail-on", "divergence,collapse"],
    )  # fmt: skip
    assert res.exit_code == 3, res.output
    doc = json.loads(out.read_text())
    (run,) = doc["runs"]
    assert run["kind"] == "parquet" and run["steps"] == 8 and run["last_step"] == 8
    assert run["tags"] == {"entropy": "entropy/mean", "reward": "rollout/reward_mean"}
    names = [a["name"] for a in run["alerts"]]
    assert names[:2] == ["eruption", "divergence"]
    assert run["alerts"][1]["step"] - run["alerts"][0]["step"] <= 3
    assert doc["failed"] == ["divergence"]
    assert set(run["alerts"][0]) == {"name", "step", "metric", "kind", "evidence", "suggestion"}


def test_once_without_fail_on_exits_0(tmp_path):
    unstable_run(tmp_path / "run")
    res = runner.invoke(app, ["watch", str(tmp_path / "run" / "metrics.parquet"), "--once"])
    assert res.exit_code == 0, res.output
    assert "divergence" in res.output


def test_json_to_stdout_is_pure_json(tmp_path):
    rows, onset = planted_series("productive", seed=1)
    d = tmp_path / "tb"
    d.mkdir()
    events = []
    for i, row in enumerate(rows):
        events.append(scalar_event(i + 1, "actor/entropy", row["entropy"]))
        events.append(scalar_event(i + 1, "critic/score/mean", row["reward"]))
    write_events(d / "events.out.tfevents.1.host", events)
    res = runner.invoke(app, ["watch", str(d), "--once", "--json", "-"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    alerts = doc["runs"][0]["alerts"]
    assert [(a["name"], a["kind"]) for a in alerts] == [
        ("eruption", None),
        ("subsided", "productive"),
    ]
    assert alerts[0]["evidence"]["onset_step"] == onset


def test_custom_tags(tmp_path):
    f = tmp_path / "log.csv"
    lines = ["step,my_ent,my_rew"] + [f"{i},{0.5 + 0.005 * (i % 2)},0.3" for i in range(1, 21)]
    lines += ["21,1.5,0.3", "22,1.6,0.3"]
    f.write_text("\n".join(lines) + "\n")
    res = runner.invoke(
        app, ["watch", str(f), "--once", "--json", "-", "--entropy-tag", "my_ent",
              "--reward-tag", "my_rew"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    run = json.loads(res.stdout)["runs"][0]
    assert run["tags"] == {"entropy": "my_ent", "reward": "my_rew"}
    assert [a["name"] for a in run["alerts"]] == ["eruption"]


def test_bad_input_exits_2_with_one_line(tmp_path):
    res = runner.invoke(app, ["watch", str(tmp_path / "missing"), "--once"])
    assert res.exit_code == 2 and "no such file" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    unstable_run(tmp_path / "run")
    res = runner.invoke(app, ["watch", str(tmp_path / "run"), "--once", "--fail-on", "boom"])
    assert res.exit_code == 2 and "unknown alert names" in res.stderr
    res = runner.invoke(app, ["watch", str(tmp_path / "run"), "--once", "--tag", "loop_rate"])
    assert res.exit_code == 2 and "METRIC=TAG" in res.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("step,entropy\n1,x\n")
    res = runner.invoke(app, ["watch", str(bad), "--once"])
    assert res.exit_code == 2 and "line 2" in res.stderr


@pytest.mark.slow
def test_follows_a_growing_csv_until_stop_after(tmp_path):
    f = tmp_path / "log.csv"
    f.write_text("step,entropy,reward\n" + "".join(f"{i},0.5,0.3\n" for i in range(1, 11)))

    def grow() -> None:
        time.sleep(0.5)
        with f.open("a") as fh:
            # Three collapsed rewards: a severe drop needs `severe_batches` = 3 rewards since the
            # onset before it calls a divergence (one bad batch of rollouts is noise).
            fh.write("11,1.6,0.0\n12,1.7,0.0\n13,1.8,0.0\n")

    t = threading.Thread(target=grow)
    t.start()
    res = runner.invoke(
        app, ["watch", str(f), "--interval", "0.1", "--stop-after", "1.5",
              "--fail-on", "divergence"],
    )  # fmt: skip
    t.join()
    assert res.exit_code == 3, res.output
    assert "step 12" in res.output and "eruption" in res.output and "divergence" in res.output


@pytest.mark.slow
def test_waits_for_a_run_that_has_not_logged_yet(tmp_path):
    d = tmp_path / "later"

    def create() -> None:
        time.sleep(0.4)
        unstable_run(d)

    t = threading.Thread(target=create)
    t.start()
    res = runner.invoke(app, ["watch", str(d), "--interval", "0.1", "--stop-after", "1.2"])
    t.join()
    assert res.exit_code == 0, res.output
    assert "waiting for logs" in res.output and "divergence" in res.output
