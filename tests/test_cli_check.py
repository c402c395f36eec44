"""`agentropy entropy-check` (and the root --version / --help), in-process via CliRunner."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from agentropy import __version__
from agentropy.cli import app
from agentropy.cli.check import summarize
from agentropy.trace import Episode, ToolCall, Turn, write_jsonl, write_parquet
from trace_cases import MINIMAL

runner = CliRunner()


def episodes() -> list[Episode]:
    """Two episodes with known counts: 9 tokens, 3 tool calls (ok, error, unexpected)."""
    a = Episode(
        "a",
        success=False,
        turns=[
            Turn("assistant", entropy=[1.0, 3.0], phase=["plan", "act"]),
            Turn("tool", call=ToolCall("lookup", {"k": 1}), status="error"),
            Turn("assistant", entropy=[2.0, 2.0, 5.0], phase=["recover", "recover", "act"]),
            Turn("tool", call=ToolCall("backup_lookup", {"k": 1}), status="ok"),
        ],
    )
    b = Episode(
        "b",
        success=True,
        turns=[
            Turn("assistant", entropy=[0.5, 0.5], phase=["act", "act"]),
            Turn("tool", call=ToolCall("calc", {}), status="unexpected"),
            Turn("assistant", entropy=[0.25, 0.75], phase=["answer", "answer"]),
        ],
    )
    return [a, b]


def row(output: str, label: str) -> list[str]:
    """Cells of the table row starting with ``label`` (rich box drawing stripped)."""
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line) if c.strip()]
        if cells and cells[0] == label:
            return cells[1:]
    raise AssertionError(f"no row {label!r} in:\n{output}")


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"agentropy {__version__}"


def test_help_lists_entropy_check():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "entropy-check" in result.stdout
    sub = runner.invoke(app, ["entropy-check", "--help"])
    assert sub.exit_code == 0 and "--nan-policy" in sub.stdout


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_good_trace_prints_the_summary(tmp_path, fmt):
    path = tmp_path / f"t.{fmt}"
    (write_jsonl if fmt == "jsonl" else write_parquet)(episodes(), path)
    result = runner.invoke(app, ["entropy-check", str(path)], terminal_width=120)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert row(out, "episodes") == ["2"]
    assert row(out, "successful") == ["1 / 2"]
    assert row(out, "turns (assistant / tool)") == ["4 / 3"]
    assert row(out, "assistant tokens") == ["9"]
    assert row(out, "tool calls") == ["3"]
    for status in ("ok", "error", "unexpected"):
        assert row(out, f"tool results: {status}") == ["1"]
    assert row(out, "non-finite tokens dropped (raise)") == ["0"]
    # Means are per token (sum / count), not means of per-turn means.
    assert row(out, "assistant (all)") == ["9", f"{15.0 / 9:.3f}"]
    assert row(out, "plan") == ["1", "1.000"]
    assert row(out, "act") == ["4", f"{9.0 / 4:.3f}"]
    assert row(out, "recover") == ["2", "2.000"]
    assert row(out, "answer") == ["2", "0.500"]


def test_minimal_design_example_checks(tmp_path):
    path = tmp_path / "min.jsonl"
    path.write_text(json.dumps(MINIMAL) + "\n")
    result = runner.invoke(app, ["entropy-check", str(path)], terminal_width=120)
    assert result.exit_code == 0, result.stderr
    assert row(result.stdout, "assistant tokens") == ["7"]
    assert row(result.stdout, "(no phase)") == ["7", f"{3.9 / 7:.3f}"]


def test_bad_file_exits_2_with_one_line_naming_line_and_field(tmp_path):
    bad = dict(MINIMAL, episode_id="e2")
    bad["turns"] = [{"role": "assistant", "entropy": [0.1, 0.2], "logprob": [0.1]}]
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(MINIMAL) + "\n" + json.dumps(bad) + "\n")
    result = runner.invoke(app, ["entropy-check", str(path)])
    assert result.exit_code == 2
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: ") and "line 2" in err and "turns[0].logprob" in err
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_nan_policy_option(tmp_path):
    bad = dict(MINIMAL, episode_id="e2")
    bad["turns"] = [{"role": "assistant", "entropy": [0.1, float("nan"), 0.3]}]
    path = tmp_path / "nan.jsonl"
    path.write_text(json.dumps(MINIMAL) + "\n" + json.dumps(bad) + "\n")
    result = runner.invoke(app, ["entropy-check", str(path)])
    assert result.exit_code == 2 and "non-finite" in result.stderr and "line 2" in result.stderr
    result = runner.invoke(
        app, ["entropy-check", str(path), "--nan-policy", "drop"], terminal_width=120
    )
    assert result.exit_code == 0, result.stderr
    assert row(result.stdout, "non-finite tokens dropped (drop)") == ["1"]
    assert row(result.stdout, "assistant tokens") == ["9"]
    store = tmp_path / "nan.parquet"
    ep = episodes()[0]
    ep.turns[0].entropy[1] = np.inf
    write_parquet([ep], store)
    result = runner.invoke(app, ["entropy-check", str(store)])
    assert result.exit_code == 2 and "row 1" in result.stderr
    result = runner.invoke(
        app, ["entropy-check", str(store), "--nan-policy", "drop"], terminal_width=120
    )
    assert result.exit_code == 0, result.stderr
    assert row(result.stdout, "non-finite tokens dropped (drop)") == ["1"]


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("missing.jsonl", None, "no such file"),
        ("empty.jsonl", "", "empty file"),
        ("trunc.jsonl", json.dumps(MINIMAL)[:50], "invalid JSON"),
        ("t.csv", "a,b\n", "unknown trace format"),
    ],
)
def test_other_bad_inputs_exit_2(tmp_path, name, content, words):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    result = runner.invoke(app, ["entropy-check", str(path)])
    assert result.exit_code == 2
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_multiple_files_get_one_table_each(tmp_path):
    write_jsonl(episodes(), tmp_path / "a.jsonl")
    write_parquet(episodes()[:1], tmp_path / "b.parquet")
    result = runner.invoke(
        app,
        ["entropy-check", str(tmp_path / "a.jsonl"), str(tmp_path / "b.parquet")],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.stderr
    counts = [line for line in result.stdout.splitlines() if "assistant tokens" in line]
    assert [c.split("│")[2].strip() for c in counts] == ["9", "5"]


def test_summarize_counts_without_phase_and_empty_turns():
    ep = Episode(
        "x", turns=[Turn("assistant", entropy=[]), Turn("tool"), Turn("assistant", entropy=[2.0])]
    )
    s = summarize([ep], dropped=4)
    assert (s.tokens, s.assistant_turns, s.tool_turns, s.dropped) == (1, 2, 1, 4)
    assert s.tool_status == {"none": 1} and s.mean_entropy() == 2.0
    assert s.mean_entropy("plan") is None


def test_rendering_uses_a_path_title(tmp_path):
    path = Path(tmp_path / "a.jsonl")
    write_jsonl(episodes(), path)
    result = runner.invoke(app, ["entropy-check", str(path)], terminal_width=200)
    assert str(path) in result.stdout
