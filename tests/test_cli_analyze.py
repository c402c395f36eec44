"""``agentropy analyze``: JSON keys, Parquet = JSONL, split files, and bad input (exit 2)."""

from __future__ import annotations

import json
import random
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from agentropy.cli import app
from agentropy.trace import Episode, ToolCall, TraceWriter, Turn, write_jsonl

runner = CliRunner()

TOP_KEYS = {
    "episodes",
    "tokens",
    "dropped_nonfinite",
    "triggers",
    "no_response",
    "tool_failures",
    "eruptions",
    "eruption_kinds",
    "frozen",
    "loops",
    "recovery",
    "costs",
    "latency",
    "training",
    "entropy_bounds",
    "baseline_floor",
    "config",
}


def episodes(n: int = 40, seed: int = 0) -> list[Episode]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        base = [0.25] * rng.randint(4, 20)
        spike = rng.choice([0.25, 0.5, 0.75, 1.0])
        turns = [
            Turn(
                role="assistant",
                entropy=np.asarray(base, np.float32),
                token_ids=np.arange(len(base)),
            ),
            Turn(role="tool", call=ToolCall("lookup", {"q": i}), status="error"),
            Turn(role="assistant", entropy=np.asarray([spike] * 16 + [0.25] * 8, np.float32)),
        ]
        if rng.random() < 0.5:
            turns.append(Turn(role="tool", call=ToolCall("lookup", {"q": i}), status="ok"))
            turns.append(Turn(role="assistant", entropy=np.asarray([0.25] * 4, np.float32)))
        out.append(
            Episode(
                f"e{i:03d}",
                turns=turns,
                success=rng.random() < 0.6,
                task_id=f"t{i % 10}",
                policy=rng.choice(["greedy", "phase"]),
                step=i,
                reward=rng.random(),
                latency_s=rng.random(),
            )
        )
    return out


def run_json(*args: str) -> dict:
    res = runner.invoke(app, ["analyze", *args, "--json", "-"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_json_keys_and_values(tmp_path):
    eps = episodes()
    write_jsonl(eps, tmp_path / "a.jsonl")
    s = run_json(str(tmp_path / "a.jsonl"))
    assert set(s) == TOP_KEYS
    assert s["entropy_bounds"] is None  # exact entropies: no bounds to report
    assert s["episodes"] == 40
    assert s["tool_failures"] == 40
    for e in s["eruptions"]:
        assert set(e) == {
            "episode_id",
            "turn_index",
            "spike_ratio",
            "baseline",
            "contracted",
            "tokens_to_contraction",
            "kind",
        }
        assert e["turn_index"] == 1
        assert e["spike_ratio"] >= 2.0
        # P = 16 tokens at v = S * B, then 0.25s: the first n whose window mean is in band.
        v = e["spike_ratio"] * 0.25
        post = [v] * 16 + [0.25] * 8
        want = next(n for n in range(8, 25) if np.mean(post[n - 8 : n]) <= 1.25 * 0.25)
        assert e["tokens_to_contraction"] == want
    n_eruptions = sum(1 for ep in eps if ep.turns[2].entropy[0] >= 0.5)
    assert len(s["eruptions"]) == n_eruptions
    assert set(s["recovery"]) >= {"overall", "by_spike_bin", "turn_level"}
    assert set(s["recovery"]["by_spike_bin"]) == {"<1.5", "1.5-2", "2-3", "3-4", ">=4"}
    for c in s["training"]["cycles"]:
        assert {"start_step", "peak_step", "end_step", "amplitude", "kind"} <= set(c)
    # Strict JSON: no NaN / Infinity literals anywhere.
    json.loads(json.dumps(s), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))


def test_parquet_store_jsonl_and_split_files_agree(tmp_path):
    eps = episodes(60, seed=1)
    write_jsonl(eps, tmp_path / "all.jsonl")
    write_jsonl(eps[:25], tmp_path / "p1.jsonl")
    write_jsonl(eps[25:], tmp_path / "p2.jsonl")
    with TraceWriter(tmp_path / "run.parquet", episodes_per_part=7) as w:
        for ep in eps:
            w.write(ep)
    whole = run_json(str(tmp_path / "all.jsonl"))
    assert run_json(str(tmp_path / "p1.jsonl"), str(tmp_path / "p2.jsonl")) == whole
    assert run_json(str(tmp_path / "run.parquet")) == whole


def test_rich_output_and_json_file(tmp_path):
    write_jsonl(episodes(), tmp_path / "a.jsonl")
    out = tmp_path / "s.json"
    res = runner.invoke(app, ["analyze", str(tmp_path / "a.jsonl"), "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "eruptions" in res.stdout and "Recovery" in res.stdout
    assert "top-k" not in res.stdout  # exact entropies: no bounds note
    assert json.loads(out.read_text())["episodes"] == 40


def test_nan_policy(tmp_path):
    line = {
        "episode_id": "x",
        "turns": [
            {"role": "assistant", "entropy": [0.2, None, 0.3]},
            {"role": "tool", "name": "lookup", "status": "error"},
            {"role": "assistant", "entropy": [1.0, 1.0]},
        ],
    }
    p = tmp_path / "n.jsonl"
    p.write_text(json.dumps(line) + "\n")
    res = runner.invoke(app, ["analyze", str(p)])
    assert res.exit_code == 2
    assert "n.jsonl" in res.output and "line 1" in res.output and "entropy" in res.output
    s = run_json(str(p), "--nan-policy", "drop")
    assert s["dropped_nonfinite"] == 1
    assert s["tokens"] == 4


def test_missing_file_and_bad_reference(tmp_path):
    res = runner.invoke(app, ["analyze", str(tmp_path / "nope.jsonl")])
    assert res.exit_code == 2 and "nope.jsonl" in res.output
    write_jsonl(episodes(), tmp_path / "a.jsonl")
    res = runner.invoke(app, ["analyze", str(tmp_path / "a.jsonl"), "--reference", "zzz"])
    assert res.exit_code == 2 and "zzz" in res.output


good_line = json.dumps(
    {
        "episode_id": "e1",
        "success": True,
        "turns": [
            {"role": "assistant", "entropy": [0.2, 0.1, 0.3]},
            {"role": "tool", "name": "lookup", "status": "error", "content": "upstream failure"},
            {"role": "assistant", "entropy": [1.4, 1.1, 0.6, 0.2]},
        ],
    }
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.integers(0, len(good_line) - 1),
    st.integers(1, 8),
    st.text(alphabet=string.printable, max_size=6),
)
@pytest.mark.slow
def test_fuzzed_input_never_tracebacks(tmp_path, pos, cut, junk):
    bad = good_line[:pos] + junk + good_line[pos + cut :]
    p = tmp_path / "f.jsonl"
    p.write_text(good_line + "\n" + bad + "\n")
    res = runner.invoke(app, ["analyze", str(p), "--json", "-"])
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code in (0, 2)
    if res.exit_code == 2:
        assert res.output.startswith("error: ") and "f.jsonl" in res.output
        assert "Traceback" not in res.output
    else:
        json.loads(res.stdout)


def test_nan_drop_parquet_matches_jsonl(tmp_path):
    eps = episodes(30, seed=2)
    nan = float("nan")
    eps[3].turns[0].entropy[[1, 2]] = nan
    eps[7].turns[2].entropy[:] = nan  # a whole turn dropped
    eps[8].turns[0].entropy[0] = float("inf")
    write_jsonl(eps, tmp_path / "a.jsonl")
    with TraceWriter(tmp_path / "run.parquet", episodes_per_part=4) as w:
        for ep in eps:
            w.write(ep)
    from_jsonl = run_json(str(tmp_path / "a.jsonl"), "--nan-policy", "drop")
    from_store = run_json(str(tmp_path / "run.parquet"), "--nan-policy", "drop")
    assert from_store == from_jsonl
    assert from_store["dropped_nonfinite"] == 2 + 24 + 1
    res = runner.invoke(app, ["analyze", str(tmp_path / "run.parquet")])
    assert res.exit_code == 2 and "row" in res.output and "entropy" in res.output


def test_known_tools_option(tmp_path):
    eps = episodes(10)
    eps[0].turns[1] = Turn(role="tool", call=ToolCall("teleport", {}), status="error")
    for ep in eps:
        ep.step = 0
    write_jsonl(eps, tmp_path / "a.jsonl")
    s = run_json(str(tmp_path / "a.jsonl"), "--tools", "toolworld")
    n_calls = sum(len(ep.tool_turns) for ep in eps)
    assert s["training"]["series"]["hallucination_rate"] == [1 / n_calls]
    s = run_json(str(tmp_path / "a.jsonl"))
    assert s["training"]["series"]["hallucination_rate"] == [None]
