"""agentropy.trace: the data model, its validation and JSONL interchange (the store: test_trace_parquet)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given

from agentropy.errors import InputError
from agentropy.trace import (
    DROPPED_META_KEY,
    Episode,
    Episodes,
    ToolCall,
    Turn,
    episode_from_dict,
    episode_to_dict,
    read_jsonl,
    read_traces,
    validate_episode,
    write_jsonl,
    write_parquet,
)
from trace_cases import (
    MINIMAL,
    ROUND_TRIP,
    assert_episodes_equal,
    episode_lists,
    make_episode,
    write_lines,
)


@ROUND_TRIP
@given(episode_lists())
def test_jsonl_round_trip_is_exact(episodes):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.jsonl"
        assert write_jsonl(episodes, path) == len(episodes)
        back = read_jsonl(path)
    assert back.n_dropped == 0
    assert_episodes_equal(episodes, back)


@ROUND_TRIP
@given(episode_lists())
def test_dict_round_trip_is_exact(episodes):
    for ep in episodes:
        d = json.loads(json.dumps(episode_to_dict(ep)))
        assert_episodes_equal([ep], [episode_from_dict(d)])


# ------------------------------------------------------------------------------------------
# JSONL


def test_minimal_design_example_loads(tmp_path):
    path = write_lines(tmp_path / "min.jsonl", [json.dumps(MINIMAL)])
    (ep,) = read_jsonl(path)
    assert ep.episode_id == "e1" and ep.success is True
    assert [t.role for t in ep.turns] == ["assistant", "tool", "assistant"]
    assert ep.turns[0].entropy.dtype == np.float32
    np.testing.assert_array_equal(ep.turns[2].entropy, np.float32([1.4, 1.1, 0.6, 0.2]))
    tool = ep.turns[1]
    assert tool.call == ToolCall("lookup", {}) and tool.status == "error" and tool.failed
    assert tool.content == "upstream failure"
    assert ep.n_tokens == 7
    assert ep.fault_kinds == [] and ep.meta == {} and ep.level is None
    assert ep.turns[0].token_ids is None and ep.turns[0].phase is None


def test_phases_are_names_in_jsonl_and_codes_in_memory(tmp_path):
    ep = Episode("p", turns=[Turn("assistant", entropy=[0.1, 0.2], phase=["recover", "act"])])
    np.testing.assert_array_equal(ep.turns[0].phase, np.int8([2, 1]))
    assert ep.turns[0].phase.dtype == np.int8
    d = episode_to_dict(ep)
    assert d["turns"][0]["phase"] == ["recover", "act"]
    tool = episode_to_dict(
        Episode(
            "t",
            turns=[Turn("tool", call=ToolCall("calc", {"x": 1}), status="ok", latency_s=0.5)],
        )
    )["turns"][0]
    assert tool == {
        "role": "tool",
        "name": "calc",
        "arguments": {"x": 1},
        "status": "ok",
        "latency_s": 0.5,
    }


def _bad(turns=None, **kw):
    d = {"episode_id": "bad", "turns": turns if turns is not None else MINIMAL["turns"]}
    d.update(kw)
    return json.dumps(d)


MALFORMED = [
    # (second line of the file, field the error must name, words the message must contain)
    (json.dumps(MINIMAL)[:40], None, "invalid JSON"),
    (_bad(turns=[{"role": "assistant", "entropy": "0.1 0.2"}]), "turns[0].entropy", "list"),
    (_bad(turns=[{"role": "assistant", "entropy": [0.1, "x"]}]), "turns[0].entropy[1]", "number"),
    (_bad(success="yes"), "success", "boolean"),
    (_bad(level=1.5), "level", "integer"),
    (_bad(turns={"role": "tool"}), "turns", "list"),
    (json.dumps({"episode_id": "x"}), "turns", "missing"),
    (json.dumps({"turns": []}), "episode_id", "missing"),
    (
        _bad(turns=[{"role": "assistant", "entropy": [0.1, float("nan")]}]),
        "turns[0].entropy[1]",
        "non-finite",
    ),
    (
        _bad(turns=[{"role": "assistant", "entropy": [0.1, float("inf")]}]),
        "turns[0].entropy[1]",
        "non-finite",
    ),
    (
        _bad(turns=[{"role": "tool"}, {"role": "user", "content": "hi"}]),
        "turns[1].role",
        "unknown role",
    ),
    (
        _bad(turns=[{"role": "assistant", "entropy": [0.1], "logprob": [0.1, 0.2]}]),
        "turns[0].logprob",
        "unequal",
    ),
    (_bad(turns=[{"role": "tool", "status": "failed"}]), "turns[0].status", "bad status"),
    (
        _bad(turns=[{"role": "assistant", "entropy": [0.1], "phase": ["think"]}]),
        "turns[0].phase[0]",
        "unknown phase",
    ),
    (_bad(turns=[{"role": "assistant"}]), "turns[0].entropy", "entropy"),
    (
        _bad(turns=[{"role": "assistant", "entropy": [0.1], "token_ids": [1.5]}]),
        "turns[0].token_ids[0]",
        "integer",
    ),
    (_bad(turns=[{"role": "tool", "arguments": {"a": 1}}]), "turns[0].name", "without"),
    (_bad(prompt="hello"), "prompt", "unknown field"),
    (json.dumps([MINIMAL]), None, "episode object"),
    (json.dumps(MINIMAL), "episode_id", "duplicate"),
]


@pytest.mark.parametrize(("line", "field", "words"), MALFORMED)
def test_malformed_jsonl_names_line_and_field(tmp_path, line, field, words):
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps(MINIMAL), line])
    with pytest.raises(InputError) as info:
        read_jsonl(path)
    err = info.value
    msg = str(err)
    assert err.line == 2 and "line 2" in msg and str(path) in msg
    assert words in msg
    if field is not None:
        assert err.field == field and f"field '{field}'" in msg


def test_truncated_line_names_the_nearest_field(tmp_path):
    full = json.dumps(MINIMAL)
    cut = full[: full.index("1.1") + 2]  # inside the last entropy list
    path = write_lines(tmp_path / "cut.jsonl", [cut])
    with pytest.raises(InputError, match=r"line 1, field 'entropy'.*invalid JSON"):
        read_jsonl(path)


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_file_is_a_clear_error(tmp_path, text):
    path = tmp_path / "empty.jsonl"
    path.write_text(text)
    with pytest.raises(InputError, match="empty file"):
        read_jsonl(path)


def test_blank_lines_are_skipped_and_line_numbers_stay_true(tmp_path):
    bad = _bad(turns=[{"role": "tool", "status": "nope"}])
    path = write_lines(tmp_path / "b.jsonl", [json.dumps(MINIMAL), "", bad])
    with pytest.raises(InputError) as info:
        read_jsonl(path)
    assert info.value.line == 3


def test_nan_policy_drop_drops_and_counts(tmp_path):
    turns = [
        {
            "role": "assistant",
            "entropy": [0.1, float("nan"), 0.3, None],
            "token_ids": [1, 2, 3, 4],
            "phase": ["plan", "plan", "act", "act"],
        },
        {"role": "tool", "name": "calc", "status": "ok"},
        {"role": "assistant", "entropy": [0.5], "temperature": [float("inf")]},
    ]
    path = write_lines(tmp_path / "n.jsonl", [_bad(turns=turns), json.dumps(MINIMAL)])
    with pytest.raises(InputError, match="non-finite"):
        read_jsonl(path)
    eps = read_jsonl(path, nan_policy="drop")
    assert eps.n_dropped == 3
    bad, good = eps
    np.testing.assert_array_equal(bad.turns[0].entropy, np.float32([0.1, 0.3]))
    np.testing.assert_array_equal(bad.turns[0].token_ids, [1, 3])
    np.testing.assert_array_equal(bad.turns[0].phase, [0, 1])
    assert bad.turns[2].n_tokens == 0 and bad.turns[2].temperature.shape == (0,)
    assert bad.meta[DROPPED_META_KEY] == 3 and DROPPED_META_KEY not in good.meta
    assert read_traces([path], nan_policy="drop").n_dropped == 3
    with pytest.raises(ValueError, match="nan_policy"):
        read_jsonl(path, nan_policy="ignore")


def test_json_array_and_gzip_files_load(tmp_path):
    arr = tmp_path / "t.json"
    arr.write_text(json.dumps([MINIMAL, {**MINIMAL, "episode_id": "e2"}]))
    assert [e.episode_id for e in read_traces(arr)] == ["e1", "e2"]
    arr.write_text(json.dumps([MINIMAL, {**MINIMAL, "episode_id": 2}]))
    with pytest.raises(InputError, match="row 1, field 'episode_id'"):
        read_traces(arr)
    gz = tmp_path / "t.jsonl.gz"
    write_jsonl([make_episode(1)], gz)
    with gzip.open(gz, "rt") as fh:
        assert json.loads(fh.readline())["episode_id"] == "ep1"
    assert_episodes_equal([make_episode(1)], read_traces(gz))


def test_read_traces_detects_formats_and_concatenates(tmp_path):
    write_jsonl([make_episode(0)], tmp_path / "a.jsonl")
    write_parquet([make_episode(1), make_episode(2)], tmp_path / "b.parquet")
    eps = read_traces([tmp_path / "a.jsonl", tmp_path / "b.parquet"])
    assert isinstance(eps, Episodes)
    assert_episodes_equal([make_episode(i) for i in range(3)], eps)
    for name, words in [
        ("missing.jsonl", "no such file"),
        ("b.parquet/episodes/part-00000.parquet", "not a trace store"),
    ]:
        with pytest.raises(InputError, match=words):
            read_traces(tmp_path / name)
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="unknown trace format"):
        read_traces(tmp_path / "x.csv")
    with pytest.raises(InputError, match="no trace files"):
        read_traces([])


def test_writers_validate_structure():
    ep = make_episode(0)
    ep.turns[0].logprob = ep.turns[0].logprob[:-1]  # mutated after construction
    for write in (write_jsonl, write_parquet):
        with tempfile.TemporaryDirectory() as d, pytest.raises(InputError) as info:
            write([ep], Path(d) / "out")
        assert info.value.field == "turns[0].logprob" and "'ep0'" in str(info.value)
    ep = make_episode(0)
    ep.turns[1].status = "broken"
    with pytest.raises(InputError, match="bad status"):
        validate_episode(ep)
    ep = make_episode(0)
    ep.level = "hard"
    with pytest.raises(InputError, match="integer") as info:
        validate_episode(ep)
    assert info.value.field == "level"


def test_writers_reject_duplicates_and_bad_scalars(tmp_path):
    with pytest.raises(InputError, match="duplicate episode_id 'ep0'"):
        write_jsonl([make_episode(0), make_episode(0)], tmp_path / "d.jsonl")
    assert not (tmp_path / "d.jsonl").exists()  # nothing half-written
    for attr, value, field in [
        ("content", {"rows": 1}, "turns[1].content"),
        ("latency_s", -1.0, "turns[1].latency_s"),
        ("wall_s", "fast", "turns[1].wall_s"),
    ]:
        ep = make_episode(0)
        setattr(ep.turns[1], attr, value)
        with pytest.raises(InputError) as info:
            validate_episode(ep)
        assert info.value.field == field


def test_turn_construction_coerces_and_validates():
    t = Turn("assistant", entropy=[1, 2], token_ids=np.int32([5, 6]), phase=[0, 3])
    assert t.entropy.dtype == np.float32 and t.token_ids.dtype == np.int64
    assert t.phase.dtype == np.int8 and t.phase_names == ["plan", "answer"]
    cases = [
        (dict(role="system"), "unknown role"),
        (dict(role="assistant", entropy=[0.1], logprob=[0.1, 0.2]), "unequal"),
        (dict(role="assistant", entropy=[0.1], phase=[7]), "phase"),
        (dict(role="assistant", entropy=[0.1], phase=["think"]), "phase"),
        (dict(role="assistant", token_ids=[0.5]), "integers"),
        (dict(role="assistant", entropy=[[0.1]]), "1-D"),
        (dict(role="assistant", entropy=[0.1], status="ok"), "tool turns"),
        (dict(role="tool", entropy=[0.1]), "no per-token"),
        (dict(role="tool", status="fine"), "bad status"),
    ]
    for kwargs, words in cases:
        with pytest.raises(InputError, match=words):
            Turn(**kwargs)
    with pytest.raises(InputError, match="dict"):
        ToolCall("calc", ["x"])


def test_numpy_scalars_in_meta_serialise(tmp_path):
    ep = Episode(
        "np",
        turns=[Turn("tool")],
        level=np.int64(2),
        reward=np.float32(0.5),
        meta={"k": np.int8(3)},
    )
    write_jsonl([ep], tmp_path / "np.jsonl")
    (back,) = read_jsonl(tmp_path / "np.jsonl")
    assert back.level == 2 and back.reward == 0.5 and back.meta == {"k": 3}
    ep.meta["bad"] = object()
    with pytest.raises(InputError, match="JSON"):
        write_jsonl([ep], tmp_path / "np2.jsonl")
    assert not (tmp_path / "np2.jsonl").exists()


def test_shared_names_have_one_definition():
    import agentropy.trace as trace
    from agentropy.analysis import breath

    assert all(getattr(trace, name, None) is not None for name in trace.__all__)
    # analysis re-uses the trace names instead of keeping copies.
    assert breath.TraceTable is trace.TraceTable
    assert breath.STATUS_CODES is trace.STATUS_CODES
    assert getattr(breath, "NAN_POLICIES", trace.NAN_POLICIES) is trace.NAN_POLICIES
    assert not hasattr(breath, "STATUS_NAMES")
    assert tuple(trace.STATUS_CODES) == trace.TOOL_STATUSES == ("ok", "error", "unexpected")
    assert trace.NAN_POLICIES == ("raise", "drop")
    assert trace.PHASES == ("plan", "act", "recover", "answer")
    assert set(trace.TOOL_STATUSES) > trace.FAILED_STATUSES


def test_importing_trace_does_not_import_pyarrow():
    code = "import sys, agentropy.trace; print('pyarrow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
