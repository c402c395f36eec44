"""agentropy.trace: data model validation, JSONL interchange and the Parquet trace store."""

from __future__ import annotations

import gzip
import json
import math
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentropy.errors import InputError
from agentropy.trace import (
    DROPPED_META_KEY,
    PHASES,
    TOOL_STATUSES,
    Episode,
    Episodes,
    ToolCall,
    TraceTable,
    TraceWriter,
    Turn,
    episode_from_dict,
    episode_to_dict,
    iter_episodes,
    iter_parts,
    iter_token_batches,
    read_jsonl,
    read_parquet,
    read_traces,
    validate_episode,
    write_jsonl,
    write_parquet,
)

MINIMAL = {
    "episode_id": "e1",
    "success": True,
    "turns": [
        {"role": "assistant", "entropy": [0.2, 0.1, 0.3]},
        {"role": "tool", "name": "lookup", "status": "error", "content": "upstream failure"},
        {"role": "assistant", "entropy": [1.4, 1.1, 0.6, 0.2]},
    ],
}

# Deterministic episode factory, shared with the killed-writer subprocess (exec'd there).
MAKE_EPISODE_SRC = """
import numpy as np
from agentropy.trace import Episode, ToolCall, Turn

def make_episode(i, n_tokens=64):
    rng = np.random.default_rng(i)
    turns = []
    for k in range(3):
        n = int(rng.integers(1, n_tokens))
        turns.append(Turn(
            role="assistant",
            entropy=rng.random(n, dtype=np.float32) * 3,
            token_ids=rng.integers(0, 50_000, n),
            logprob=-rng.random(n, dtype=np.float32),
            sampling_entropy=rng.random(n, dtype=np.float32),
            temperature=np.full(n, 0.7, dtype=np.float32),
            phase=rng.integers(0, 4, n).astype(np.int8),
            text=f"turn {k} of episode {i}",
        ))
        turns.append(Turn(role="tool", call=ToolCall("lookup", {"q": i, "k": k}),
                          status=("ok", "error", "unexpected")[(i + k) % 3],
                          content="x" * k, latency_s=0.01 * k))
    return Episode(episode_id=f"ep{i}", turns=turns, task_id=f"t{i % 7}", level=i % 4,
                   policy="phase", success=bool(i % 2), reward=float(i % 2),
                   fault_kinds=["transient"] * (i % 2), latency_s=1.5, meta={"i": i})
"""
_ns: dict = {}
exec(MAKE_EPISODE_SRC, _ns)
make_episode = _ns["make_episode"]


# ------------------------------------------------------------------------------------------
# helpers


def assert_turns_equal(a: Turn, b: Turn, where: str = "") -> None:
    for name in ("entropy", "token_ids", "logprob", "sampling_entropy", "temperature", "phase"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), f"{where}.{name}: {x!r} vs {y!r}"
        if x is not None:
            assert x.dtype == y.dtype, f"{where}.{name} dtype {x.dtype} vs {y.dtype}"
            assert np.array_equal(x, y, equal_nan=True), f"{where}.{name}: {x} vs {y}"
    for name in ("role", "text", "call", "status", "content", "latency_s", "wall_s", "meta"):
        assert getattr(a, name) == getattr(b, name), f"{where}.{name}"


def assert_episodes_equal(a: list[Episode], b: list[Episode]) -> None:
    assert [e.episode_id for e in a] == [e.episode_id for e in b]
    for x, y in zip(a, b, strict=True):
        for name in (
            "task_id",
            "level",
            "step",
            "policy",
            "success",
            "reward",
            "fault_kinds",
            "latency_s",
            "meta",
        ):
            assert getattr(x, name) == getattr(y, name), f"{x.episode_id}.{name}"
        assert len(x.turns) == len(y.turns)
        for i, (s, t) in enumerate(zip(x.turns, y.turns, strict=True)):
            assert_turns_equal(s, t, f"{x.episode_id}.turns[{i}]")


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------
# hypothesis strategies

f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
seconds = st.none() | st.floats(min_value=0, max_value=1e6, allow_nan=False)
json_scalar = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=5)
meta = st.dictionaries(st.text(max_size=5), json_scalar, max_size=3)


@st.composite
def assistant_turns(draw):
    n = draw(st.integers(0, 6))
    arrays = {"entropy": np.array(draw(st.lists(f32, min_size=n, max_size=n)), np.float32)}
    for name in ("logprob", "sampling_entropy", "temperature"):
        if draw(st.booleans()):
            arrays[name] = np.array(draw(st.lists(f32, min_size=n, max_size=n)), np.float32)
    if draw(st.booleans()):
        ids = draw(st.lists(st.integers(0, 2**63 - 1), min_size=n, max_size=n))
        arrays["token_ids"] = np.array(ids, dtype=np.int64)
    if draw(st.booleans()):
        codes = draw(st.lists(st.integers(0, len(PHASES) - 1), min_size=n, max_size=n))
        arrays["phase"] = np.array(codes, dtype=np.int8)
    return Turn(
        role="assistant",
        text=draw(st.none() | st.text(max_size=10)),
        wall_s=draw(seconds),
        meta=draw(meta),
        **arrays,
    )


@st.composite
def tool_turns(draw):
    call = draw(
        st.none()
        | st.builds(
            ToolCall,
            st.text(min_size=1, max_size=8),
            st.dictionaries(st.text(max_size=4), json_scalar, max_size=3),
        )
    )
    return Turn(
        role="tool",
        call=call,
        status=draw(st.none() | st.sampled_from(TOOL_STATUSES)),
        content=draw(st.none() | st.text(max_size=10)),
        latency_s=draw(seconds),
        wall_s=draw(seconds),
        meta=draw(meta),
    )


@st.composite
def episode_lists(draw):
    n = draw(st.integers(1, 4))
    out = []
    for i in range(n):
        out.append(
            Episode(
                episode_id=f"e{i}-" + draw(st.text(max_size=4)),
                turns=draw(st.lists(assistant_turns() | tool_turns(), max_size=5)),
                task_id=draw(st.none() | st.text(max_size=5)),
                level=draw(st.none() | st.integers(0, 3)),
                step=draw(st.none() | st.integers(-(2**62), 2**62)),
                policy=draw(st.none() | st.text(max_size=5)),
                success=draw(st.none() | st.booleans()),
                reward=draw(st.none() | st.floats(allow_nan=False)),
                fault_kinds=draw(st.lists(st.text(max_size=5), max_size=3)),
                latency_s=draw(seconds),
                meta=draw(meta),
            )
        )
    return out


ROUND_TRIP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


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
@given(episode_lists(), st.integers(1, 3))
def test_parquet_round_trip_is_exact(episodes, per_part):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.parquet"
        assert write_parquet(episodes, path, episodes_per_part=per_part) == len(episodes)
        back = read_parquet(path)
        n_parts = len(list((path / "episodes").glob("part-*.parquet")))
    assert n_parts == math.ceil(len(episodes) / per_part)
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
    ep = Episode("np", turns=[], level=np.int64(2), reward=np.float32(0.5), meta={"k": np.int8(3)})
    write_jsonl([ep], tmp_path / "np.jsonl")
    (back,) = read_jsonl(tmp_path / "np.jsonl")
    assert back.level == 2 and back.reward == 0.5 and back.meta == {"k": 3}
    ep.meta["bad"] = object()
    with pytest.raises(InputError, match="JSON"):
        write_jsonl([ep], tmp_path / "np2.jsonl")
    assert not (tmp_path / "np2.jsonl").exists()


# ------------------------------------------------------------------------------------------
# Parquet store


def test_store_layout_matches_the_documented_contract(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    eps = [make_episode(i) for i in range(5)]
    store = tmp_path / "run.parquet"
    write_parquet(eps, store, episodes_per_part=2)
    names = sorted(p.name for p in (store / "episodes").iterdir())
    assert names == [f"part-{i:05d}.parquet" for i in range(3)]
    assert sorted(p.name for p in (store / "tokens").iterdir()) == names
    tok = pq.read_table(store / "tokens" / names[0])
    assert tok.schema.names == [
        "episode_id",
        "turn_index",
        "token_index",
        "token_id",
        "logprob",
        "entropy",
        "sampling_entropy",
        "temperature",
        "phase",
    ]
    types = {f.name: f.type for f in tok.schema}
    assert types["turn_index"] == pa.int32() and types["token_index"] == pa.int32()
    assert types["token_id"] == pa.int64() and types["phase"] == pa.int8()
    assert all(types[c] == pa.float32() for c in ("logprob", "entropy", "sampling_entropy"))
    assert tok.num_rows == eps[0].n_tokens + eps[1].n_tokens
    # Row 0 is the first token of episode 0's first turn.
    row = tok.slice(0, 1).to_pylist()[0]
    assert row["episode_id"] == "ep0" and row["turn_index"] == 0 and row["token_index"] == 0
    assert row["token_id"] == int(eps[0].turns[0].token_ids[0])
    assert row["entropy"] == float(eps[0].turns[0].entropy[0])
    epi = pq.read_table(store / "episodes" / names[0])
    assert epi.column("episode_id").to_pylist() == ["ep0", "ep1"]
    assert epi.schema.field("fault_kinds").type == pa.list_(pa.string())
    turns = json.loads(epi.column("turns")[0].as_py())
    assert turns[0]["n_tokens"] == eps[0].turns[0].n_tokens and "entropy" not in turns[0]
    assert turns[1]["role"] == "tool" and turns[1]["arguments"] == {"q": 0, "k": 0}
    # An episode's tokens never straddle parts.
    for (e, t), want in zip(iter_parts(store), [eps[0:2], eps[2:4], eps[4:5]], strict=True):
        assert e.column("episode_id").to_pylist() == [x.episode_id for x in want]
        assert set(t.column("episode_id").to_pylist()) == {x.episode_id for x in want}
        assert t.num_rows == sum(x.n_tokens for x in want)


def test_appending_continues_numbering_and_refuses_duplicate_ids(tmp_path):
    store = tmp_path / "run.parquet"
    write_parquet([make_episode(i) for i in range(3)], store, episodes_per_part=2)
    with TraceWriter(store, episodes_per_part=2) as w:
        with pytest.raises(InputError, match="duplicate episode_id 'ep1'"):
            w.write(make_episode(1))
        w.write(make_episode(3))
    assert w.n_written == 1 and w.n_parts_written == 1
    assert (store / "episodes" / "part-00002.parquet").exists()
    assert_episodes_equal([make_episode(i) for i in range(4)], read_parquet(store))
    assert [e.episode_id for e in iter_episodes(store)] == [f"ep{i}" for i in range(4)]


def test_overwrite_replaces_the_store(tmp_path):
    store = tmp_path / "run.parquet"
    write_parquet([make_episode(i) for i in range(4)], store, episodes_per_part=1)
    write_parquet([make_episode(9)], store, overwrite=True)
    assert [e.episode_id for e in read_parquet(store)] == ["ep9"]
    assert len(list((store / "tokens").iterdir())) == 1
    (tmp_path / "notastore").mkdir()
    (tmp_path / "notastore" / "precious.txt").write_text("keep me")
    for overwrite in (True, False):
        with pytest.raises(InputError, match="not a trace store"):
            write_parquet([make_episode(0)], tmp_path / "notastore", overwrite=overwrite)
    assert sorted(p.name for p in (tmp_path / "notastore").iterdir()) == ["precious.txt"]


def test_one_writer_per_store(tmp_path):
    store = tmp_path / "run.parquet"
    with TraceWriter(store) as w:
        with pytest.raises(InputError, match="another TraceWriter"):
            TraceWriter(store)
        w.write(make_episode(0))
    with TraceWriter(store) as w2:  # the lock is released on close
        w2.write(make_episode(1))
    assert len(read_parquet(store)) == 2


def test_exception_inside_writer_context_keeps_written_episodes(tmp_path):
    store = tmp_path / "run.parquet"
    with pytest.raises(RuntimeError), TraceWriter(store, episodes_per_part=10) as w:
        w.write(make_episode(0))
        raise RuntimeError("boom")
    assert [e.episode_id for e in read_parquet(store)] == ["ep0"]
    with pytest.raises(ValueError, match="closed"):
        w.write(make_episode(1))


def test_parquet_nan_policy(tmp_path):
    ep = make_episode(0)
    ep.turns[2].entropy[3] = np.nan
    ep.turns[4].sampling_entropy[0] = np.inf
    store = tmp_path / "nan.parquet"
    write_parquet([ep, make_episode(1)], store)  # writers store what they are given
    with pytest.raises(InputError) as info:
        read_parquet(store)
    err = info.value
    assert err.row == ep.turns[0].n_tokens + 3 and err.field == "entropy"
    assert "tokens" in err.path and "non-finite" in str(err)
    with pytest.raises(InputError, match="non-finite"):
        next(iter_parts(store))
    eps = read_parquet(store, nan_policy="drop")
    assert eps.n_dropped == 2 and eps[0].meta[DROPPED_META_KEY] == 2
    assert eps[0].turns[2].n_tokens == ep.turns[2].n_tokens - 1
    keep = np.arange(ep.turns[2].n_tokens) != 3
    np.testing.assert_array_equal(eps[0].turns[2].token_ids, ep.turns[2].token_ids[keep])
    np.testing.assert_array_equal(eps[0].turns[2].phase, ep.turns[2].phase[keep])
    ((_, tok),) = list(iter_parts(store, nan_policy="drop"))
    assert tok.num_rows == ep.n_tokens + make_episode(1).n_tokens - 2
    (batch,) = list(iter_token_batches(store, nan_policy="drop"))
    assert batch.equals(tok)


def test_corrupt_stores_are_input_errors(tmp_path):
    import pyarrow.parquet as pq

    store = tmp_path / "run.parquet"
    write_parquet([make_episode(0), make_episode(1)], store)
    tok_file = store / "tokens" / "part-00000.parquet"
    table = pq.read_table(tok_file)
    # Missing rows.
    pq.write_table(table.slice(0, table.num_rows - 1), tok_file)
    with pytest.raises(InputError, match="declare"):
        read_parquet(store)
    # Rows out of order: swap two rows.
    idx = list(range(table.num_rows))
    idx[5], idx[6] = idx[6], idx[5]
    pq.write_table(table.take(idx), tok_file)
    with pytest.raises(InputError) as info:
        read_parquet(store)
    assert info.value.row == 5 and "out of place" in str(info.value)
    # Wrong column type.
    pq.write_table(
        table.set_column(5, "entropy", table.column("entropy").cast("float64")), tok_file
    )
    with pytest.raises(InputError, match="float") as info:
        read_parquet(store)
    assert info.value.field == "entropy"
    # Episodes part without its tokens part.
    tok_file.unlink()
    with pytest.raises(InputError, match="without its tokens part"):
        read_parquet(store)
    with pytest.raises(InputError, match="not a trace store"):
        read_parquet(tmp_path)
    (tmp_path / "empty.parquet" / "episodes").mkdir(parents=True)
    with pytest.raises(InputError, match="empty trace store"):
        read_parquet(tmp_path / "empty.parquet")


def test_a_field_rule_says_the_same_thing_in_memory_and_in_a_store(tmp_path):
    """validate.py holds each rule once: a bad phase code or token id reads alike everywhere."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = tmp_path / "run.parquet"
    write_parquet([make_episode(0)], store)
    tok_file = store / "tokens" / "part-00000.parquet"
    table = pq.read_table(tok_file)
    for column, bad, kwargs in [
        ("phase", 7, dict(entropy=[0.1], phase=[7])),
        ("token_id", -3, dict(entropy=[0.1], token_ids=[-3])),
    ]:
        with pytest.raises(InputError) as mem:
            Turn("assistant", **kwargs)
        values = table.column(column).to_pylist()
        values[4] = bad
        i = table.schema.get_field_index(column)
        typ = table.schema.field(column).type
        pq.write_table(table.set_column(i, column, pa.array(values, typ)), tok_file)
        with pytest.raises(InputError) as disk:
            read_parquet(store)
        assert (disk.value.row, disk.value.field) == (4, column)
        assert disk.value.message == mem.value.message
    # The columnar view checks the NaN policy with the same words as the readers.
    with pytest.raises(ValueError, match="nan_policy must be one of"):
        TraceTable.from_episodes([make_episode(0)], nan_policy="skip")


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


def test_orphan_tokens_part_and_stale_temp_files_are_ignored(tmp_path):
    store = tmp_path / "run.parquet"
    write_parquet([make_episode(0)], store)
    # What a writer killed between the two renames, or mid-write, leaves behind.
    (store / "tokens" / "part-00000.parquet").replace(store / "tokens" / "part-00001.parquet")
    write_parquet([make_episode(0)], tmp_path / "other.parquet")
    (tmp_path / "other.parquet" / "tokens" / "part-00000.parquet").replace(
        store / "tokens" / "part-00000.parquet"
    )
    (store / "episodes" / ".part-00001.parquet.123.tmp").write_bytes(b"garbage")
    assert [e.episode_id for e in read_parquet(store)] == ["ep0"]
    with TraceWriter(store) as w:  # resumes at part 1, overwriting the orphan
        w.write(make_episode(1))
    assert not (store / "episodes" / ".part-00001.parquet.123.tmp").exists()
    assert_episodes_equal([make_episode(0), make_episode(1)], read_parquet(store))


KILL_SCRIPT = """
import sys
{make}
from agentropy.trace import TraceWriter
w = TraceWriter(sys.argv[1], episodes_per_part=3)
for i in range(100_000):
    w.write(make_episode(i, n_tokens=400))
"""


def test_killed_writer_leaves_complete_parts_readable(tmp_path):
    store = tmp_path / "killed.parquet"
    code = KILL_SCRIPT.format(make=MAKE_EPISODE_SRC)
    proc = subprocess.Popen([sys.executable, "-c", code, str(store)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(list((store / "episodes").glob("part-*.parquet"))) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "writer made no progress"
            time.sleep(0.02)
        time.sleep(0.05)  # land somewhere in the middle of a later part
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    eps = read_parquet(store)
    n = len(eps)
    assert n >= 6 and n % 3 == 0  # whole parts only
    assert_episodes_equal([make_episode(i, n_tokens=400) for i in range(n)], eps)
    # The killed store can be resumed: numbering continues after the last complete part.
    with TraceWriter(store, episodes_per_part=3) as w:
        w.write(make_episode(n, n_tokens=400))
    assert len(read_parquet(store)) == n + 1


def test_importing_trace_does_not_import_pyarrow():
    code = "import sys, agentropy.trace; print('pyarrow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_absent_arrays_are_nulls_and_bad_turns_json_names_the_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = tmp_path / "min.parquet"
    write_parquet([episode_from_dict(MINIMAL), make_episode(0)], store)
    ((epi, tok),) = list(iter_parts(store))
    assert tok.slice(0, 7).column("token_id").null_count == 7  # MINIMAL has no token ids
    assert tok.slice(7).column("token_id").null_count == 0
    (back, _) = read_parquet(store)
    assert back.turns[0].token_ids is None and back.turns[0].phase is None
    turns = epi.column("turns").to_pylist()
    turns[1] = turns[1][:-5]  # truncated JSON in row 1
    bad = epi.set_column(epi.schema.get_field_index("turns"), "turns", pa.array(turns))
    pq.write_table(bad, store / "episodes" / "part-00000.parquet")
    with pytest.raises(InputError, match="invalid JSON") as info:
        read_parquet(store)
    assert (info.value.row, info.value.field) == (1, "turns")
    assert info.value.path.endswith("part-00000.parquet")
