"""DataFrame export for notebooks: traces and analysis results as Arrow, pandas and polars."""

from __future__ import annotations

import doctest
import subprocess
import sys

import pytest

import agentropy.frames
from agentropy.analysis.summary import analyze_episodes
from agentropy.frames import SUMMARY_PARTS, summary_arrow, trace_arrow
from agentropy.trace import TraceTable, episode_from_dict

EPISODES = [
    {
        "episode_id": "e1", "success": True, "policy": "phase", "latency_s": 1.5,
        "turns": [
            {"role": "assistant", "entropy": [0.2, 0.1, 0.3], "phase": ["plan"] * 3,
             "token_ids": [5, 6, 7]},
            {"role": "tool", "name": "lookup", "status": "error", "content": "upstream failure"},
            {"role": "assistant", "entropy": [1.4, 1.1, 0.6, 0.2], "phase": ["recover"] * 4},
        ],
    },
    {
        "episode_id": "e2", "success": False, "step": 3, "reward": 0.25,
        "turns": [{"role": "assistant", "entropy": [0.4, 0.5]}],
    },
]  # fmt: skip


def _table() -> TraceTable:
    return TraceTable.from_episodes([episode_from_dict(d) for d in EPISODES])


def test_module_examples_run() -> None:
    result = doctest.testmod(agentropy.frames)
    assert result.attempted > 0 and result.failed == 0


def test_token_table_is_one_row_per_assistant_token_with_decoded_codes() -> None:
    tokens = trace_arrow(_table(), "tokens").to_pylist()
    assert len(tokens) == 9
    assert [t["episode_id"] for t in tokens] == ["e1"] * 7 + ["e2"] * 2
    assert [t["turn_index"] for t in tokens] == [0, 0, 0, 2, 2, 2, 2, 0, 0]
    assert [t["position"] for t in tokens] == [0, 1, 2, 3, 4, 5, 6, 0, 1]
    assert tokens[3]["entropy"] == pytest.approx(1.4) and tokens[3]["phase"] == "recover"
    assert tokens[0]["token_id"] == 5 and tokens[3]["token_id"] is None
    assert tokens[7]["phase"] is None  # no phase recorded: null, not a code


def test_episode_and_turn_tables_keep_missing_values_null() -> None:
    eps = _table().to_arrow("episodes").to_pylist()
    assert [e["success"] for e in eps] == [True, False]
    assert eps[0]["step"] is None and eps[1]["step"] == 3.0
    assert eps[0]["latency_s"] == 1.5 and eps[1]["reward"] == 0.25
    assert [e["tokens"] for e in eps] == [7, 2]
    turns = _table().to_arrow("turns").to_pylist()
    assert [t["role"] for t in turns] == ["assistant", "tool", "assistant", "assistant"]
    assert turns[1]["status"] == "error" and turns[1]["name"] == "lookup"
    assert turns[0]["status"] is None
    with pytest.raises(ValueError, match="part must be"):
        trace_arrow(_table(), "nope")  # type: ignore[arg-type]


def test_every_summary_part_becomes_a_table() -> None:
    summary = analyze_episodes([episode_from_dict(d) for d in EPISODES])
    eruptions = summary_arrow(summary, "eruptions").to_pylist()
    assert eruptions == summary["eruptions"] and len(eruptions) == 1
    recovery = summary_arrow(summary, "recovery")
    assert recovery.column("bin").to_pylist() == list(summary["recovery"]["by_spike_bin"])
    for part in SUMMARY_PARTS:
        summary_arrow(summary, part)  # every documented part converts
    with pytest.raises(ValueError, match="part must be one of"):
        summary_arrow(summary, "nope")


def test_pandas_and_polars_frames_match_arrow() -> None:
    pd = pytest.importorskip("pandas")
    pl = pytest.importorskip("polars")
    table = _table()
    df = table.to_pandas("tokens")
    assert isinstance(df, pd.DataFrame) and len(df) == 9
    assert df["entropy"].tolist() == table.entropy.tolist()
    pf = table.to_polars("episodes")
    assert isinstance(pf, pl.DataFrame) and pf["episode_id"].to_list() == ["e1", "e2"]


@pytest.mark.slow
def test_missing_dataframe_library_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['polars'] = None\n"
        "from agentropy.trace import TraceTable, episode_from_dict\n"
        "t = TraceTable.from_episodes([episode_from_dict("
        "{'episode_id': 'e', 'turns': [{'role': 'assistant', 'entropy': [0.1]}]})])\n"
        "try:\n    t.to_polars()\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "pip install 'agentropy[dataframes]'" in out.stdout, out.stderr
