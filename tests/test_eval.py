"""`agentropy eval`: every policy on the same tasks, every column present, traces written."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from agentropy.agent.runner import RunnerConfig
from agentropy.cli import app
from agentropy.pipelines.compare import COLUMNS, EvalConfig, run_eval
from agentropy.trace import read_traces


@pytest.fixture(scope="module")
def random_agent(random_llama, tiny_tokenizer, tmp_path_factory):
    """The random tiny Llama saved in Hugging Face format with the tiny tokenizer (so the eval
    loads it through the generic AutoModel/AutoTokenizer path)."""
    path = tmp_path_factory.mktemp("agent")
    random_llama.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return random_llama, tiny_tokenizer, path


def test_run_eval_rows_have_every_column_and_share_tasks(random_agent):
    model, tok, _ = random_agent
    cfg = EvalConfig(policies=("greedy", "constant:1.0", "phase"), levels=(1, 3), episodes=3)
    result = run_eval(
        model, tok, config=cfg, runner_config=RunnerConfig(max_turns=2, max_new_tokens=8)
    )
    rows = result["rows"]
    assert len(rows) == 2 * 3
    for r in rows:
        assert set(r) == set(COLUMNS)
        assert r["episodes"] == 3
        assert 0.0 <= r["success"] <= 1.0
    for level in (1, 3):
        greedy = next(r for r in rows if r["level"] == level and r["policy"] == "greedy")
        assert greedy["overhead"] == pytest.approx(1.0)


@pytest.mark.parametrize("faults", ["seen", "novel"])
def test_same_seed_same_tasks_and_faults_for_every_policy(random_agent, tmp_path, faults):
    """The comparison is paired: every policy meets the same questions and the same planned
    faults (kind and target), whatever it samples."""
    from agentropy.env.toolworld import ToolWorld, ToolWorldConfig

    model, tok, _ = random_agent
    policies = ("greedy", "constant:1.0", "phase")
    cfg = EvalConfig(policies=policies, levels=(2, 3), episodes=6)
    run_eval(
        model,
        tok,
        config=cfg,
        world=ToolWorld(ToolWorldConfig(faults=faults)),
        runner_config=RunnerConfig(max_turns=2, max_new_tokens=8),
        out_dir=tmp_path,
    )

    def plan(policy: str) -> list[tuple]:
        safe = policy.replace(":", "_")
        episodes = read_traces(tmp_path / "traces" / f"{safe}.parquet")
        return sorted(
            (
                e.task_id,
                e.meta["question"],
                tuple((f["kind"], f["target"]) for f in e.meta["faults"]),
            )
            for e in episodes
        )

    plans = {policy: plan(policy) for policy in policies}
    assert len(plans["greedy"]) == 2 * 6
    assert any(faults for _, _, faults in plans["greedy"])  # L3 always plans a fault
    assert plans["constant:1.0"] == plans["greedy"] == plans["phase"]


def test_cli_eval_writes_json_and_traces_and_refuses_to_overwrite(random_agent, tmp_path):
    _, _, path = random_agent
    out = tmp_path / "ev"
    args = [
        "eval",
        "--model",
        str(path),
        "--policies",
        "greedy,phase",
        "--levels",
        "3",
        "--episodes",
        "2",
        "--max-turns",
        "2",
        "--max-new-tokens",
        "6",
        "--out",
        str(out),
        "--no-progress",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "ToolWorld L3" in res.output and "phase" in res.output
    data = json.loads((out / "eval.json").read_text())
    assert [r["policy"] for r in data["rows"]] == ["greedy", "phase"]
    assert "Per fault class" in res.output and "seen-ambiguous" in res.output
    assert [r["policy"] for r in data["fault_classes"]] == ["greedy"] * 3 + ["phase"] * 3
    greedy_eps = read_traces([data["traces"]["greedy"]])
    phase_eps = read_traces([data["traces"]["phase"]])
    # Same tasks, in the same order, for both policies.
    assert [e.task_id for e in greedy_eps] == [e.task_id for e in phase_eps]
    assert all(e.policy == "phase" for e in phase_eps)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2
    assert "exists" in again.output and "Traceback" not in again.output


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--policies", "greedy,hot", "unknown policy"),
        ("--levels", "7", "levels"),
        ("--episodes", "0", "episodes"),
    ],
)
def test_cli_eval_bad_options_exit_2(random_agent, flag, value, message):
    _, _, path = random_agent
    res = CliRunner().invoke(app, ["eval", "--model", str(path), flag, value, "--no-progress"])
    assert res.exit_code == 2, res.output
    assert message in res.output


def test_policy_row_reads_one_analysis_pass() -> None:
    """policy_row's columns are the analyzer's records and summary (no second analysis): counts
    from the summary, latency from analysis.recovery.latency_stats, rates from the episodes."""
    import numpy as np

    from agentropy.analysis.recovery import latency_stats
    from agentropy.analysis.summary import analyze_episodes
    from agentropy.pipelines.compare import policy_row
    from agentropy.trace import Episode, ToolCall, Turn

    def episode(i: int) -> Episode:
        spike = 3.0 if i % 3 else 1.0
        turns = [
            Turn(role="assistant", entropy=np.full(30, 0.2)),
            Turn(role="tool", call=ToolCall("lookup", {"q": i}), status="error" if i % 2 else "ok"),
            Turn(role="assistant", entropy=np.r_[np.full(16, 0.2 * spike), np.full(20, 0.2)]),
        ]
        return Episode(f"e{i}", turns=turns, success=i % 4 != 1, latency_s=1.0 + (i % 5))

    eps = [episode(i) for i in range(24)]
    row = policy_row(eps, level=1, policy="phase")
    summary = analyze_episodes(eps)
    lat = latency_stats(["phase"] * len(eps), np.array([e.latency_s for e in eps]))["phase"]
    assert (row["latency_p50"], row["latency_p95"], row["latency_cv"]) == (
        lat["p50"],
        lat["p95"],
        lat["cv"],
    )
    assert row["episodes"] == 24 and row["failure_episodes"] == 12
    assert row["success"] == pytest.approx(18 / 24)
    assert row["recovery"] == pytest.approx(sum(e.success for e in eps[1::2]) / 12)
    kinds = summary["eruption_kinds"]
    assert (
        row["eruptions_productive"],
        row["eruptions_neutral"],
        row["eruptions_divergent"],
    ) == (kinds["productive"], kinds["neutral"], kinds["divergent"])
    assert row["tokens_per_episode"] == 66.0 and row["spike_mean"] is not None
    assert row["frozen"] == len(summary["frozen"]) and row["loops"] == len(summary["loops"])


def test_fault_class_mapping_covers_every_failing_kind_once() -> None:
    from agentropy.env.faults import (
        AMBIGUOUS_FAULTS,
        FAULT_CLASS,
        FAULT_CLASSES,
        FAULT_KINDS,
        NOVEL_FAULTS,
    )

    assert set(FAULT_CLASS) == set(FAULT_KINDS) - {"slow"}
    assert set(FAULT_CLASS.values()) == set(FAULT_CLASSES)
    assert {k for k, c in FAULT_CLASS.items() if c == "novel"} == set(NOVEL_FAULTS)
    assert {k for k, c in FAULT_CLASS.items() if c == "seen-ambiguous"} == AMBIGUOUS_FAULTS
    assert {k for k, c in FAULT_CLASS.items() if c == "seen-informative"} == {
        "bad_args",
        "unexpected",
    }


def _fault_episode(i: int, faults: list[tuple[int, str]], *, success: bool, spike: float):
    """Episode ``e<i>``: 20 tokens at 0.2 nats, then per planned fault one lookup that fails with
    it followed by 16 tokens at ``0.2 * spike`` and 24 calm tokens; then a successful calc. The
    first failure therefore has spike ratio ``spike`` (baseline 0.2, DESIGN.md's k = 16)."""
    import numpy as np

    from agentropy.trace import Episode, ToolCall, Turn

    turns = [Turn(role="assistant", entropy=np.full(20, 0.2))]
    for j, (_, kind) in enumerate(faults):
        status = "unexpected" if kind in ("unexpected", "legacy_units") else "error"
        turns.append(
            Turn(
                role="tool",
                call=ToolCall("lookup", {"entity": f"x{j}"}),
                status=status,
                meta={"fault": kind},
            )
        )
        turns.append(
            Turn(role="assistant", entropy=np.r_[np.full(16, 0.2 * spike), np.full(24, 0.2)])
        )
    turns.append(Turn(role="tool", call=ToolCall("calc", {"expression": "1+1"}), status="ok"))
    turns.append(Turn(role="assistant", entropy=np.full(4, 0.2)))
    return Episode(
        f"e{i}",
        turns=turns,
        task_id=f"t{i}",
        success=success,
        fault_kinds=[k for _, k in faults],
        latency_s=float(i),
    )


def test_fault_class_rows_count_per_class_and_read_the_analyzers_spikes() -> None:
    """Counts add up per class (an episode planning two classes counts in both; slow in none),
    recovery and its CI, spike at the *first* failure of the class, tokens and latency."""
    from agentropy.analysis.summary import Analyzer
    from agentropy.env.faults import FAULT_CLASSES
    from agentropy.pipelines.compare import FAULT_CLASS_COLUMNS, fault_class_rows

    eps = [
        _fault_episode(0, [(0, "transient")], success=True, spike=3.0),
        _fault_episode(1, [(0, "outage")], success=False, spike=2.0),
        # two classes: counts in seen-ambiguous and novel; its novel failure comes second
        _fault_episode(2, [(0, "transient"), (1, "quota")], success=True, spike=4.0),
        _fault_episode(3, [(0, "bad_args")], success=True, spike=1.0),
        _fault_episode(4, [], success=True, spike=1.0),  # plans only slow: no class
        _fault_episode(5, [], success=False, spike=1.0),  # plans legacy_units, never fired
    ]
    planned = {
        "t0": ["transient"],
        "t1": ["outage"],
        "t2": ["transient", "quota"],
        "t3": ["bad_args", "slow"],
        "t4": ["slow"],
        "t5": ["legacy_units"],
    }
    rows = fault_class_rows(eps, planned, policy="phase")
    assert [r["fault_class"] for r in rows] == list(FAULT_CLASSES)
    assert all(tuple(r) == FAULT_CLASS_COLUMNS and r["policy"] == "phase" for r in rows)
    by = {r["fault_class"]: r for r in rows}
    amb, inf, nov = by["seen-ambiguous"], by["seen-informative"], by["novel"]
    assert (amb["episodes"], amb["fired"], amb["recovered"]) == (3, 3, 2)
    assert (inf["episodes"], inf["fired"], inf["recovered"]) == (1, 1, 1)
    assert (nov["episodes"], nov["fired"], nov["recovered"]) == (2, 1, 1)
    # 6 episodes, 2 in no class, 1 in two: 3 + 1 + 2 = 6 class memberships.
    assert sum(r["episodes"] for r in rows) == 6
    assert amb["recovery"] == pytest.approx(2 / 3) and nov["recovery"] == pytest.approx(0.5)
    for r in rows:
        lo, hi = r["recovery_ci"] if r["recovery_ci"] else (r["recovery"], r["recovery"])
        assert lo <= r["recovery"] <= hi
    assert inf["recovery_ci"] is None  # one episode: no interval
    # Spike at the first failure of the class, as the analyzer computed it.
    analyzer = Analyzer()
    analyzer.add_episodes(eps)
    ev = analyzer.evidence()
    where = zip(ev.failed_trigger_episode, ev.failed_trigger_turn, strict=True)
    spike = dict(zip(where, ev.failed_trigger_spike, strict=True))
    assert amb["spike_n"] == 3
    assert amb["spike_mean"] == pytest.approx((spike[0, 1] + spike[1, 1] + spike[2, 1]) / 3)
    assert amb["spike_mean"] == pytest.approx((3.0 + 2.0 + 4.0) / 3)
    assert nov["spike_n"] == 1 and nov["spike_mean"] == pytest.approx(spike[2, 3])
    assert inf["spike_mean"] == pytest.approx(1.0)
    assert amb["tokens_per_episode"] == pytest.approx((64 + 64 + 104) / 3)
    assert nov["latency_per_episode"] == pytest.approx((2.0 + 5.0) / 2)
    with pytest.raises(ValueError, match="planned"):
        fault_class_rows(eps, {"t0": []}, policy="phase")


def test_run_eval_fault_classes_share_episodes_across_policies(random_agent):
    """eval's fault_classes: every policy's row of a class counts the same planned episodes, and
    the counts add up to the tasks' planned classes."""
    from agentropy.env.faults import FAULT_CLASS, FAULT_CLASSES
    from agentropy.env.toolworld import ToolWorld, ToolWorldConfig
    from agentropy.pipelines.compare import FAULT_CLASS_COLUMNS

    model, tok, _ = random_agent
    world = ToolWorld(ToolWorldConfig(faults="all"))
    cfg = EvalConfig(policies=("greedy", "phase:recover=0.1"), levels=(2, 3), episodes=5)
    result = run_eval(
        model,
        tok,
        config=cfg,
        world=world,
        runner_config=RunnerConfig(max_turns=2, max_new_tokens=8),
    )
    assert result["config"]["faults"] == "all"
    rows = result["fault_classes"]
    assert len(rows) == 2 * len(FAULT_CLASSES)
    assert all(tuple(r) == FAULT_CLASS_COLUMNS for r in rows)
    tasks = [t for lv in (2, 3) for t in world.tasks(split="test", level=lv, n=5, seed=0)]
    for c in FAULT_CLASSES:
        want = sum(any(FAULT_CLASS.get(f.kind) == c for f in t.faults) for t in tasks)
        got = [r["episodes"] for r in rows if r["fault_class"] == c]
        assert got == [want, want]
        for r in rows:
            if r["fault_class"] == c:
                assert r["fired"] <= r["episodes"] and r["recovered"] <= r["episodes"]


def test_recovery_intervention_summary_pairs_arms_by_task(random_agent, tmp_path):
    """The recovery intervention's summarize (``agentropy.pipelines.intervention``, run by
    experiments/recovery_intervention.py): the phase-minus-forced-low difference is paired over
    the same tasks and equals the arms' recovery on them; arms run on different tasks or faults
    are refused."""
    from agentropy.env.faults import FAULT_CLASS
    from agentropy.env.toolworld import ToolWorld, ToolWorldConfig
    from agentropy.errors import InputError
    from agentropy.pipelines import intervention as ri

    model, tok, _ = random_agent
    world = ToolWorld(ToolWorldConfig(faults="all"))
    for arm in (ri.HIGH_ARM, ri.LOW_ARM):
        run_eval(
            model,
            tok,
            config=EvalConfig(policies=(ri.ARMS[arm],), levels=(3,), episodes=4),
            world=world,
            runner_config=RunnerConfig(max_turns=2, max_new_tokens=8),
            out_dir=tmp_path / arm,
        )
    result = ri.summarize(tmp_path)
    assert (tmp_path / ri.SUMMARY_JSON).exists()
    tasks = world.tasks(split="test", level=3, n=4, seed=0)
    faulted = [t for t in tasks if any(f.kind in FAULT_CLASS for f in t.faults)]
    diff = result["difference"]["by_class"]
    assert diff["any"]["n"] == len(faulted) > 0
    for c, d in diff.items():
        if c == "any":
            continue
        row = result["fault_classes"][ri.HIGH_ARM][c]
        assert d["n"] == row["episodes"]
        if d["n"]:
            assert d["rate_a"] == pytest.approx(row["recovery"])
            assert d["difference"] == pytest.approx(
                d["rate_a"] - result["fault_classes"][ri.LOW_ARM][c]["recovery"]
            )
    ev = tmp_path / ri.LOW_ARM / "eval.json"
    data = json.loads(ev.read_text())
    data["config"]["seed"] = 1
    ev.write_text(json.dumps(data))
    with pytest.raises(InputError, match="same tasks"):
        ri.summarize(tmp_path)
