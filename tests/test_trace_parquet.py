"""agentropy.trace Parquet store: layout, appending, locking, crash safety, corrupt stores."""

from __future__ import annotations

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
from hypothesis import given
from hypothesis import strategies as st

from agentropy.errors import InputError
from agentropy.trace import (
    DROPPED_META_KEY,
    TraceTable,
    TraceWriter,
    Turn,
    episode_from_dict,
    iter_episodes,
    iter_parts,
    iter_token_batches,
    read_parquet,
    write_parquet,
)
from trace_cases import (
    MAKE_EPISODE_SRC,
    MINIMAL,
    ROUND_TRIP,
    assert_episodes_equal,
    episode_lists,
    make_episode,
)


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
