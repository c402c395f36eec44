"""agentropy.monitor.cycles (per-cycle table on planted series) and experiments/cycles.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from agentropy.monitor.cycles import (
    TABLE_METRICS,
    CycleTableConfig,
    cycle_table,
    persistence,
    step_noise,
)
from agentropy.monitor.synthetic import planted_series
from conftest import load_experiment

script = load_experiment("cycles")


def _columns(rows: list[dict[str, float | None]]) -> dict[str, list[float | None]]:
    out: dict[str, list[float | None]] = {"step": [float(i + 1) for i in range(len(rows))]}
    for k in rows[0]:
        out[k] = [r[k] for r in rows]
    return out


def _planted(pattern: str, seed: int = 0, **kw: object) -> tuple[dict[str, list], int]:
    rows, onset = planted_series(pattern, seed=seed, **kw)  # type: ignore[arg-type]
    return _columns(rows), onset


# ------------------------------------------------------------------------------ step noise


def test_step_noise_is_sd_of_differences_over_sqrt2_skipping_nan():
    x = np.array([1.0, 3.0, np.nan, 2.0, 6.0])
    d = np.diff([1.0, 3.0, 2.0, 6.0])
    assert step_noise(x) == pytest.approx(np.std(d, ddof=1) / math.sqrt(2))
    assert step_noise(np.array([1.0, 5.0])) == 0.0


def test_step_noise_recovers_iid_sd_and_ignores_one_level_shift():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.05, 400)
    assert step_noise(x) == pytest.approx(0.05, rel=0.1)
    shifted = x + 0.2 * (np.arange(400) >= 200)  # a persistent change: one large difference
    assert step_noise(shifted) == pytest.approx(step_noise(x), rel=0.1)


# ------------------------------------------------------------------------- planted patterns


def test_quiet_series_has_no_cycle():
    series, _ = _planted("quiet")
    assert cycle_table(series) == []


def test_productive_eruption_is_productive_and_leaves_no_degeneracy():
    series, onset = _planted("productive")
    (row,) = cycle_table(series)
    assert row.kind == "productive" and row.end_step is not None
    assert onset <= row.onset_step <= onset + 1 and row.onset_step <= row.peak_step <= row.end_step
    assert not row.degenerate_after and not row.diverged
    reward = row.changes["reward"]
    assert reward.significant and reward.change is not None and reward.change > 0.1
    assert row.peak > (row.level or 0.0)


def test_degenerate_eruption_flags_the_duplication_rate_it_left():
    series, _ = _planted("degenerate")
    (row,) = cycle_table(series)
    assert row.kind == "degenerate" and row.degenerate_after
    loop = row.changes["loop_rate"]
    assert loop.worse and loop.change == pytest.approx(0.2, abs=0.02)
    assert row.before["loop_rate"] == pytest.approx(0.05, abs=0.01)
    # the planted loop rate stays up, so the run ends worse than before its first eruption
    assert persistence(series, [row]).changes["loop_rate"].worse


def test_eruption_that_never_subsides_uses_the_run_end_as_after_window():
    series, _ = _planted("divergence")
    n = len(series["step"])
    (row,) = cycle_table(series, CycleTableConfig(window=10))
    assert row.kind == "never_subsided" and row.end_step is None and row.diverged
    assert row.steps_after == (n - 9, n)
    assert row.steps_before == (row.onset_step - 10, row.onset_step - 1)
    assert row.changes["loop_rate"].worse
    assert row.changes["reward"].change is not None and row.changes["reward"].change < -0.1


def test_windows_stop_at_neighbouring_cycles():
    # two clean eruptions on a flat, slightly noisy channel: 0.5 nats, 1.0 for 3 steps at 20 and 45
    n = 70
    wiggle = 0.01 * np.sin(np.arange(n) * 2.1)
    ent = 0.5 + wiggle
    ent[19:22] = 1.0
    ent[44:47] = 1.0
    series = {"step": list(range(1, n + 1)), "entropy": list(ent), "reward": [0.3] * n}
    rows = cycle_table(series, CycleTableConfig(window=40))
    assert [r.onset_step for r in rows] == [20, 45]
    first, second = rows
    assert first.end_step is not None and second.end_step is not None
    assert first.steps_before == (1, 19)  # clipped at the run's start
    assert first.steps_after == (first.end_step + 1, 44)  # stops before the next onset
    assert second.steps_before == (first.end_step + 1, 44)  # starts after the previous end
    assert second.steps_after == (second.end_step + 1, n)
    assert all(r.kind == "neutral" for r in rows)  # reward never moved


def test_significance_is_a_z_test_on_window_means():
    n = 60
    ent = 0.5 + 0.01 * np.sin(np.arange(n) * 2.1)
    ent[29:32] = 1.0
    halluc = np.full(n, 0.1) + 0.02 * np.cos(np.arange(n) * 1.3)
    halluc[35:] += 0.05
    series = {"step": list(range(1, n + 1)), "entropy": list(ent),
              "hallucination_rate": list(halluc)}  # fmt: skip
    cfg = CycleTableConfig(window=8, z=2.0)
    (row,) = cycle_table(series, cfg)
    ch = row.changes["hallucination_rate"]
    assert row.steps_before is not None and row.steps_after is not None
    b = halluc[row.steps_before[0] - 1 : row.steps_before[1]]
    a = halluc[row.steps_after[0] - 1 : row.steps_after[1]]
    thr = 2.0 * step_noise(halluc) * math.sqrt(1 / len(b) + 1 / len(a))
    assert ch.before == pytest.approx(b.mean()) and ch.after == pytest.approx(a.mean())
    assert ch.threshold == pytest.approx(thr)
    assert ch.worse == (a.mean() - b.mean() > thr) and ch.worse
    # a z so large that nothing is significant
    (loose,) = cycle_table(series, CycleTableConfig(window=8, z=100.0))
    assert not loose.changes["hallucination_rate"].worse and not loose.degenerate_after
    # metrics that are not logged have no change; rates that do not move are not worse
    assert set(row.changes) == {"hallucination_rate"} and set(TABLE_METRICS) > set(row.changes)


def test_phase_channels_and_validation():
    series, _ = _planted("productive")
    assert cycle_table(series, channels=("entropy_recover",)) == []  # channel not logged
    with pytest.raises(ValueError, match="unknown entropy channels"):
        cycle_table(series, channels=("entropy_typo",))
    with pytest.raises(ValueError, match="lengths differ"):
        cycle_table({**series, "reward": series["reward"][:-1]})
    with pytest.raises(ValueError, match="window"):
        CycleTableConfig(window=0)
    with pytest.raises(ValueError, match="z"):
        CycleTableConfig(z=math.nan)


def test_rows_are_json_ready():
    series, _ = _planted("divergence")
    (row,) = cycle_table(series)
    doc = json.loads(json.dumps(row.to_dict(), allow_nan=False))
    assert doc["kind"] == "never_subsided" and doc["changes"]["loop_rate"]["worse"] is True


# ------------------------------------------------------------------------------ the script


def _write_run(run: Path, pattern: str, seed: int = 0, decoy: bool = False) -> int:
    """A trainer-like run directory: metrics.parquet with our trainer's tag names."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows, onset = planted_series(pattern, seed=seed)
    table = {
        "step": [i + 1 for i in range(len(rows))],
        "rollout/entropy": [r["entropy"] for r in rows],
        # the loss-side tag the monitor reads by default; flat here, so only the rollout
        # entropy can show the planted eruption
        "entropy/mean": [0.5 if decoy else r["entropy"] for r in rows],
        "rollout/reward_mean": [r["reward"] for r in rows],
        "breath/loop_rate": [r["loop_rate"] for r in rows],
        "breath/hallucination_rate": [r["hallucination_rate"] for r in rows],
        "breath/valid_action_rate": [r["valid_action_rate"] for r in rows],
    }
    run.mkdir(parents=True)
    pq.write_table(pa.table(table), run / "metrics.parquet")
    return onset


# slow: pyarrow, rich and ruptures (the analyzer cross-check) imports take 2-3 s on the shared
# 2 cores; the error paths below keep the script in the fast tier
@pytest.mark.slow
def test_summarize_reads_runs_prefers_rollout_entropy_and_writes_json(tmp_path, capsys):
    _write_run(tmp_path / "exp" / "vanilla" / "seed-0", "degenerate", decoy=True)
    _write_run(tmp_path / "exp" / "rhythm" / "seed-0", "quiet")
    out = tmp_path / "cycles.json"
    report = script.main(["summarize", str(tmp_path / "exp"), "--json", str(out)])
    names = [r["run"] for r in report["runs"]]
    assert len(names) == 2 and "rhythm" in names[0] and "vanilla" in names[1]
    quiet, degen = report["runs"]
    assert quiet["cycles"] == [] and degen["kinds"]["degenerate"] == 1
    # the analyzer's change points, as a cross-check, agree on this clean case
    assert quiet["analyzer_cycles"] == [] and len(degen["analyzer_cycles"]) == 1
    assert degen["analyzer_cycles"][0]["peak_step"] == degen["cycles"][0]["peak_step"]
    doc = json.loads(out.read_text())
    assert doc["runs"][1]["cycles"][0]["changes"]["loop_rate"]["worse"] is True
    assert "_rows" not in doc["runs"][0]
    text = capsys.readouterr().out
    assert "degenerate" in text and "no eruption" in text and "first vs last" in text
    assert "analyzer (change points, overall entropy) exp/vanilla/seed-0: 1 cycles" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["summarize", "{tmp}/missing"], "no such file"),
        (["summarize", "{tmp}/run", "--json", "{tmp}/run/metrics.parquet"], "force"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    _write_run(tmp_path / "run", "quiet")
    with pytest.raises(SystemExit) as exc:
        script.main([a.format(tmp=tmp_path) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_bad_channel_is_a_usage_error(tmp_path, capsys):
    _write_run(tmp_path / "run", "quiet")
    with pytest.raises(SystemExit) as exc:
        script.main(["summarize", str(tmp_path / "run"), "--channels", "entropy_bogus"])
    assert exc.value.code == 2 and "entropy_bogus" in capsys.readouterr().err
