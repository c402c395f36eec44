"""The recovery intervention as a pipeline (summary records for the claims), its pre-registered
claims on summaries whose answer is known, and ``agentropy experiment --config`` dispatch."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agentropy.analysis.recovery import SPIKE_BIN_LABELS, paired_difference_ci
from agentropy.errors import InputError
from agentropy.pipelines.intervention import (
    ARMS,
    KIND,
    ROLES,
    InterventionConfig,
    load_summary,
    render_tables,
    summarize,
)
from agentropy.report.intervention_claims import SPECS, intervention_claims
from agentropy.trace import Episode, ToolCall, Turn, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
N_BOOT = 400
RECOVER_KEYS = ("tokens_per_episode", "temperature", "sampling_entropy", "entropy")


# --------------------------------------------------------------------------------------------
# Claims on hand-built summaries
# --------------------------------------------------------------------------------------------


def _summary(
    n: int = 40,
    *,
    high_success: float = 1.0,
    low_success: float = 0.0,
    constant_success: float = 0.0,
    spike: float = 3.0,
    token_ratio: float = 2.0,
    high_cv: float = 0.8,
    low_cv: float = 0.2,
    loops: tuple[tuple[int, int], tuple[int, int]] = ((30, 40), (2, 40)),
    floor_share: float = 0.0,
    arms: tuple[str, ...] = ("forced-low", "phase", "constant"),
) -> dict[str, Any]:
    """A summary in :func:`summarize`'s format with the effects set by the arguments."""
    rng = np.random.default_rng(1)
    z = rng.standard_normal(n)
    z = (z - z.mean()) / z.std(ddof=1)  # exactly mean 0, sd 1

    def tasks(success: float, tok: float, cv: float, spk: float | None) -> dict[str, Any]:
        k = round(success * n)
        return {
            f"t{i:03d}": {
                "success": i < k,
                "tokens": int(tok * (100 + i % 7)),
                "latency_s": float(5.0 * np.exp(cv * z[i])),  # CV about cv (lognormal)
                "classes": ["seen-ambiguous"],
                "first_spike": None if spk is None else spk * (1 + 0.05 * z[i]),
            }
            for i in range(n)
        }

    per_arm = {
        "phase": tasks(high_success, token_ratio, high_cv, spike),
        "forced-low": tasks(low_success, 1.0, low_cv, 1.0),
        "constant": tasks(constant_success, 1.0, low_cv, 1.0),
    }
    per_arm = {a: t for a, t in per_arm.items() if a in arms}
    by_class: dict[str, Any] = {}
    if "phase" in per_arm and "forced-low" in per_arm:
        a = np.array([t["success"] for t in per_arm["phase"].values()])
        b = np.array([t["success"] for t in per_arm["forced-low"].values()])
        by_class = {
            "seen-ambiguous": paired_difference_ci(a, b, n_boot=N_BOOT),
            "novel": paired_difference_ci(a[:0], b[:0]),
            "any": paired_difference_ci(a, b, n_boot=N_BOOT),
        }
    (kd, nd), (kc, nc) = loops
    return {
        "config": {"levels": [3], "episodes": n, "seed": 0, "split": "test", "faults": "seen"},
        "arms": {a: ARMS[a] for a in per_arm},
        "roles": ROLES,
        "difference": {"high": "phase", "low": "forced-low", "by_class": by_class},
        "baseline_floor": {
            a: {
                "share": floor_share,
                "at_floor": round(floor_share * n),
                "failed_triggers": n,
                "eps": 0.05,
            }
            for a in per_arm
        },
        "eruption_loops": {
            "phase": {"divergent": {"looped": kd, "n": nd}, "contracted": {"looped": kc, "n": nc}}
        },
        "tasks": per_arm,
        # The tables' inputs, empty: the claims never read them.
        "fault_classes": {a: {} for a in per_arm},
        "recover_phase": {a: dict.fromkeys(RECOVER_KEYS) for a in per_arm},
        "by_spike_bin": {a: {b: {"rate": None, "n": 0} for b in SPIKE_BIN_LABELS} for a in per_arm},
    }


def _verdicts(summary: dict[str, Any]) -> dict[str, str]:
    rows = intervention_claims(summary, n_boot=N_BOOT)
    return {r.spec.id + (f":{r.scope}" if r.scope else ""): r.verdict for r in rows}


def test_clear_effects_are_supported() -> None:
    v = _verdicts(_summary())
    assert v == {
        "recovery_high_vs_low:seen-ambiguous": "supported",
        "recovery_high_vs_low:novel": "not measured",
        "recovery_high_vs_low:any": "supported",
        "spike_after_failure": "supported",
        "exploration_token_cost": "supported",
        "response_time_unpredictable": "supported",
        "divergent_eruptions_loop": "supported",
        "phase_temperature": "supported",
    }


def test_small_significant_effects_are_refuted() -> None:
    """Effects that are real (CI excludes the null) but below the pre-registered minimum."""
    rows = intervention_claims(
        _summary(
            n=400, spike=1.3, token_ratio=1.05, high_cv=0.22, low_cv=0.2,
            high_success=0.55, low_success=0.52, constant_success=0.53,
            loops=((210, 400), (200, 400)),
        ),
        n_boot=N_BOOT,
    )  # fmt: skip
    by_id = {r.spec.id: r for r in rows if not r.scope}
    for key in ("spike_after_failure", "exploration_token_cost"):
        assert by_id[key].verdict == "refuted", by_id[key].reason
        assert "a real effect" in by_id[key].reason
    assert by_id["phase_temperature"].verdict == "refuted"
    assert by_id["divergent_eruptions_loop"].verdict == "refuted"


def test_missing_inputs_are_not_measured_with_the_reason() -> None:
    rows = intervention_claims(_summary(arms=("phase",), loops=((0, 0), (0, 0))), n_boot=N_BOOT)
    assert all(r.verdict == "not measured" or r.spec.id == "spike_after_failure" for r in rows)
    reasons = {r.spec.id: r.reason for r in rows}
    assert "forced-low was not run" in reasons["exploration_token_cost"]
    assert "constant was not run" in reasons["phase_temperature"]
    assert "no eruptions" in reasons["divergent_eruptions_loop"]
    novel = next(r for r in intervention_claims(_summary(), n_boot=N_BOOT) if r.scope == "novel")
    assert novel.reason == "no task planned a novel fault (faults = seen)"
    old = {k: v for k, v in _summary().items() if k != "roles"}
    assert {r.verdict for r in intervention_claims(old, n_boot=N_BOOT)} <= {
        "not measured",
        "supported",  # the loop claim needs no arm roles
    }


def test_floor_caveat_and_determinism() -> None:
    s = _summary(floor_share=0.6)
    rows = intervention_claims(s, n_boot=N_BOOT, seed=3)
    spike = next(r for r in rows if r.spec.id == "spike_after_failure")
    assert "baseline at the eps floor" in spike.measurement.caveat
    assert "Caveat:" in spike.reason
    ok = next(
        r for r in intervention_claims(_summary(), n_boot=N_BOOT) if r.spec.id == spike.spec.id
    )
    assert ok.measurement.caveat == ""
    again = intervention_claims(s, n_boot=N_BOOT, seed=3)
    assert [r.to_dict() for r in rows] == [r.to_dict() for r in again]
    json.dumps([r.to_dict() for r in rows])  # plain JSON


def test_every_spec_names_a_config_that_loads() -> None:
    for spec in SPECS.values():
        path = ROOT / spec.experiment
        assert path.exists(), spec.experiment
        config = InterventionConfig.from_toml(path)
        assert set(config.arms) >= set(ROLES.values())
    for path in sorted((ROOT / "experiments").glob("*.toml")):
        data = tomllib.loads(path.read_text())
        if data.get("kind") == KIND:
            InterventionConfig.from_toml(path)


def test_config_errors_name_the_file_and_field(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('kind = "recovery_intervention"\nepisdoes = 3\n')
    with pytest.raises(InputError, match="field 'episdoes'"):
        InterventionConfig.from_toml(p)
    p.write_text('kind = "recovery_intervention"\nfaults = "some"\n')
    with pytest.raises(InputError, match="faults must be one of"):
        InterventionConfig.from_toml(p)
    p.write_text('kind = "training"\n')
    with pytest.raises(InputError, match="kind"):
        InterventionConfig.from_toml(p)


# --------------------------------------------------------------------------------------------
# summarize on synthetic arms
# --------------------------------------------------------------------------------------------


def _episode(task: int, *, success: bool, post: float, loop: bool, policy: str) -> Episode:
    """A failed lookup (outage) after 20 plan tokens at 0.2 nats, then ``post``-nats text;
    ``loop``: the same failing call twice more (three in a row: a loop)."""
    turns = [
        Turn(role="assistant", entropy=np.full(20, 0.2, np.float32)),
        Turn(role="tool", call=ToolCall("lookup", {"q": task}), status="error"),
        Turn(role="assistant", entropy=np.full(16, post, np.float32)),
    ]
    if loop:
        for _ in range(2):
            turns.append(Turn(role="tool", call=ToolCall("lookup", {"q": task}), status="error"))
            turns.append(Turn(role="assistant", entropy=np.full(16, post, np.float32)))
    return Episode(
        f"{policy}-{task}", turns=turns, task_id=f"t{task}", success=success, policy=policy,
        latency_s=1.0 + task % 3, meta={"faults": [{"kind": "outage"}]},
    )  # fmt: skip


def _write_arm(out: Path, arm: str, episodes: list[Episode]) -> None:
    policy = ARMS[arm]
    (out / arm / "traces").mkdir(parents=True)
    path = out / arm / "traces" / "t.jsonl"
    write_jsonl(episodes, path)
    cfg = {"policies": [policy], "levels": [3], "episodes": len(episodes), "seed": 0,
           "split": "test", "reference": policy, "faults": "seen"}  # fmt: skip
    # The traces path as eval writes it, relative to a working directory that is gone now.
    data = {"config": cfg, "fault_classes": [], "traces": {policy: "elsewhere/t.jsonl"}}
    (out / arm / "eval.json").write_text(json.dumps(data))


def test_summarize_keeps_what_the_claims_need(tmp_path: Path) -> None:
    n = 12
    _write_arm(tmp_path, "phase", [
        _episode(i, success=True, post=0.8, loop=i % 2 == 0, policy="phase") for i in range(n)
    ])  # fmt: skip
    _write_arm(tmp_path, "forced-low", [
        _episode(i, success=i < 3, post=0.2, loop=False, policy="phase:recover=0.1")
        for i in range(n)
    ])  # fmt: skip
    result = summarize(tmp_path)
    assert load_summary(tmp_path) == json.loads(json.dumps(result))
    assert result["roles"] == ROLES and set(result["tasks"]) == {"phase", "forced-low"}
    rec = result["tasks"]["phase"]["t0"]
    assert rec["success"] is True and rec["classes"] == ["seen-ambiguous"]
    assert rec["first_spike"] == pytest.approx(4.0) and rec["tokens"] == 20 + 3 * 16
    assert result["tasks"]["forced-low"]["t1"]["first_spike"] == pytest.approx(1.0)
    assert result["tasks"]["forced-low"]["t1"]["tokens"] == 36
    any_class = result["difference"]["by_class"]["any"]
    assert any_class["n"] == n and any_class["difference"] == pytest.approx(9 / 12)
    loops = result["eruption_loops"]
    assert loops["forced-low"]["divergent"]["n"] + loops["forced-low"]["contracted"]["n"] == 0
    assert loops["phase"]["divergent"]["looped"] + loops["phase"]["contracted"]["looped"] >= n // 2
    rows = {r.spec.id: r for r in intervention_claims(result, n_boot=N_BOOT) if not r.scope}
    assert rows["spike_after_failure"].measurement.value == pytest.approx(4.0)
    assert rows["exploration_token_cost"].measurement.value == pytest.approx(
        sum(68 if i % 2 == 0 else 36 for i in range(n)) / (36 * n)
    )
    assert "constant was not run" in rows["phase_temperature"].reason
    assert len(render_tables(result)) == 4


def test_summarize_refuses_mismatched_arms(tmp_path: Path) -> None:
    _write_arm(tmp_path, "phase", [_episode(0, success=True, post=0.8, loop=False, policy="phase")])
    _write_arm(tmp_path, "forced-low", [
        _episode(0, success=True, post=0.2, loop=False, policy="phase:recover=0.1")
    ])  # fmt: skip
    data = json.loads((tmp_path / "phase" / "eval.json").read_text())
    data["config"]["seed"] = 1
    (tmp_path / "phase" / "eval.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="same tasks and faults"):
        summarize(tmp_path)
    with pytest.raises(InputError, match=r"no <arm>/eval\.json"):
        summarize(tmp_path / "nothing")


# --------------------------------------------------------------------------------------------
# agentropy experiment --config
# --------------------------------------------------------------------------------------------


def test_experiment_config_dispatches_by_kind(tmp_path: Path, monkeypatch: Any) -> None:
    from typer.testing import CliRunner

    from agentropy.cli import app
    from agentropy.pipelines import intervention

    seen: dict[str, Any] = {}

    def fake_run(config: InterventionConfig, **kw: Any) -> dict[str, Any]:
        seen.update(config=config, **kw)
        Path(config.out).mkdir(parents=True, exist_ok=True)
        return _summary()

    monkeypatch.setattr(intervention, "run_intervention", fake_run)
    cfg = tmp_path / "ri.toml"
    out = tmp_path / "ri"
    cfg.write_text(f'kind = "recovery_intervention"\nout = "{out}"\nepisodes = 3\nlevels = [3]\n')
    res = CliRunner().invoke(app, ["experiment", "--config", str(cfg), "--force", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert seen["config"].episodes == 3 and seen["config"].force is True
    assert seen["config_file"] == str(cfg)
    assert "Pre-registered claims" in res.output
    claims = json.loads((out / "claims.json").read_text())
    assert [c["id"] for c in claims][:3] == ["recovery_high_vs_low"] * 3
    assert {c["verdict"] for c in claims} <= {"supported", "not measured"}

    cfg.write_text('kind = "nope"\n')
    res = CliRunner().invoke(app, ["experiment", "--config", str(cfg)])
    assert res.exit_code == 2 and "unknown kind 'nope'" in res.output


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def test_report_shows_the_preregistered_claims(tmp_path: Path) -> None:
    """``agentropy report TRACES --intervention DIR``: one row per judgement with the spec's
    null, direction, minimum effect, the measurement, verdict, reason and config file."""
    from typer.testing import CliRunner

    from agentropy.cli import app
    from test_report import small_traces

    summary = _summary(loops=((0, 0), (0, 0)))  # one row not measured
    (tmp_path / "ri").mkdir()
    (tmp_path / "ri" / "summary.json").write_text(json.dumps(summary))
    traces = tmp_path / "t.jsonl"
    write_jsonl(small_traces(6), traces)
    out = tmp_path / "r.html"
    args = ["report", str(traces), "--out", str(out), "--intervention", str(tmp_path / "ri")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    page = out.read_text()
    table = page[page.index('<table id="claims-v2-table">') :].split("</table>", 1)[0]
    rows = table.split("<tr data-claim=")[1:]
    expected = intervention_claims(summary, seed=0)
    assert len(rows) == len(expected) == 8
    for row, j in zip(rows, expected, strict=True):
        assert row.startswith(f'"{j.spec.id}"')
        assert f'<td class="{j.verdict.replace(" ", "-")}">{j.verdict}</td>' in row
        assert "experiments/recovery_intervention.toml" in row
        assert j.spec.threshold.replace(">", "&gt;") in row
    assert "no eruptions to compare" in table
    # Without --intervention the section says how to get the table.
    res = CliRunner().invoke(app, ["report", str(traces), "--out", str(out), "--force"])
    assert res.exit_code == 0 and 'id="claims-v2-table"' not in out.read_text()
    assert "No pre-registered claims given" in out.read_text()
    bad = CliRunner().invoke(app, [*args, "--force", "--intervention", str(tmp_path / "none")])
    assert bad.exit_code == 2 and "run the recovery intervention first" in bad.output
