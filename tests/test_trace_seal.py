"""Sealed store parts: the analyzer's fast path skips re-validation only for untouched parts.

The writer seals each part (CRC of the tokens file, digest of the episodes table); a reader that
finds the seal intact reads three token columns and no per-turn checks, and must build exactly
the table the validating path builds. Any edit, corruption, non-finite value or missing seal
sends the part through full validation, so bad input still gets the one-line error.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from agentropy.analysis.summary import analyze_paths
from agentropy.cli import app
from agentropy.errors import InputError
from agentropy.trace import (
    BOUNDS_META_KEY,
    Episode,
    ToolCall,
    TraceTable,
    TraceWriter,
    Turn,
    iter_part_tables,
    parquet_read,
    write_parquet,
)
from agentropy.trace.seal import SEAL_KEY, read_seal
from agentropy.trace.validate import MAX_NESTING
from trace_cases import ROUND_TRIP, episode_lists, make_episode

runner = CliRunner()


def _varied_episodes(n: int = 7) -> list[Episode]:
    """make_episode's episodes plus what a part can hold: a turn without token ids or phases,
    entropy bounds in a turn's meta, a tool turn without a parsed call, float and nested
    arguments, a question in the episode meta, a step."""
    eps = [make_episode(i) for i in range(n)]
    e0 = eps[0]
    e0.turns.append(Turn(role="assistant", entropy=np.array([0.5, 0.25], np.float32)))
    e0.turns.append(Turn(role="tool", status="error", content="no call parsed"))
    e0.turns.append(Turn(role="tool", call=ToolCall("calc", {"x": -0.0, "y": [1, {"z": 2}]})))
    e0.turns.append(Turn(role="tool", call=ToolCall("calc", {"x": 0.0, "y": [1, {"z": 2}]})))
    n_b = 3
    e0.turns.append(
        Turn(
            role="assistant",
            entropy=np.array([0.2, 0.3, 0.4], np.float32),
            meta={BOUNDS_META_KEY: {"lower": [0.1] * n_b, "upper": [0.9] * n_b}},
        )
    )
    eps[1].meta = {"question": "age of Pata?"}
    eps[2].step = 3
    eps[3].turns[1] = Turn(role="tool", call=ToolCall("lookup", {"q": True}), status="ok")
    eps[4].turns[3] = Turn(role="tool", call=ToolCall("lookup", {"q": 1}), status="ok")
    return eps


def _tables(store: Path, validation: str) -> list[TraceTable]:
    return list(iter_part_tables(store, validation=validation))  # type: ignore[arg-type]


def assert_tables_equal(a: TraceTable, b: TraceTable) -> None:
    for f in dataclasses.fields(TraceTable):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            assert x is not None and y is not None, f.name
            assert x.dtype == y.dtype, f"{f.name}: {x.dtype} vs {y.dtype}"
            assert np.array_equal(x, y, equal_nan=True), f.name
        else:
            assert x == y, f.name


@pytest.fixture
def count_validations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the tokens files that went through full validation."""
    seen: list[str] = []
    real = parquet_read._decode_part

    def spy(ep_file: Path, tok_file: Path, *args: Any, **kw: Any) -> Any:
        seen.append(tok_file.name)
        return real(ep_file, tok_file, *args, **kw)

    monkeypatch.setattr(parquet_read, "_decode_part", spy)
    return seen


def _rewrite(path: Path, edit: Any) -> None:
    """Rewrite a Parquet file by hand, as a user would: read, change a column, write back
    (pyarrow keeps the schema metadata, seal included)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    pq.write_table(edit(table), path)


def _set(table: Any, column: str, row: int, value: Any) -> Any:
    import pyarrow as pa

    values = table.column(column).to_pylist()
    values[row] = value
    i = table.schema.get_field_index(column)
    return table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type))


# ------------------------------------------------------------------------------ the fast path


def test_writer_seals_every_part_and_the_fast_path_skips_validation(tmp_path, count_validations):
    store = tmp_path / "run.parquet"
    write_parquet(_varied_episodes(), store, episodes_per_part=3)
    import pyarrow.parquet as pq

    for part in sorted((store / "episodes").iterdir()):
        seal = read_seal(pq.read_table(part))
        assert seal is not None and seal["nonfinite_rows"] == 0
    fast = _tables(store, "seal")
    assert count_validations == []
    full = _tables(store, "full")
    assert len(count_validations) == len(fast) == 3
    for a, b in zip(fast, full, strict=True):
        assert_tables_equal(a, b)
    assert fast[0].entropy_lower is not None  # the bounded turn made it through
    # The call-identity cache tells 1 / True / 1.0 and 0.0 / -0.0 apart, as ToolCall.key does.
    eps = _varied_episodes()
    for k, table in enumerate(fast):
        assert_tables_equal(table, TraceTable.from_episodes(eps[3 * k : 3 * k + 3]))
    assert analyze_paths(store) == analyze_paths(store, validation="full")


@ROUND_TRIP
@given(episode_lists(), st.integers(1, 3))
def test_fast_path_builds_the_same_tables_as_validation(episodes, per_part):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        store = Path(d) / "t.parquet"
        write_parquet(episodes, store, episodes_per_part=per_part)
        fast, full = _tables(store, "seal"), _tables(store, "full")
    assert len(fast) == len(full)
    for a, b in zip(fast, full, strict=True):
        assert_tables_equal(a, b)


class _FormatOneWriter(TraceWriter):
    """Writes stores as writers before format 2 did: no turn columns, seal version 1."""

    _format_version = 1


def test_format_1_store_reads_to_the_same_tables_and_summary(tmp_path, count_validations):
    import pyarrow.parquet as pq

    eps = _varied_episodes()
    old, new = tmp_path / "old.parquet", tmp_path / "new.parquet"
    with _FormatOneWriter(old, episodes_per_part=3) as w:
        w.write_many(eps)
    write_parquet(eps, new, episodes_per_part=3)
    old_part = pq.read_table(old / "episodes" / "part-00001.parquet")
    new_part = pq.read_table(new / "episodes" / "part-00001.parquet")
    assert "turn_is_tool" not in old_part.column_names and "turn_is_tool" in new_part.column_names
    assert old_part.schema.metadata[b"agentropy.trace_format"] == b"1"
    assert new_part.schema.metadata[b"agentropy.trace_format"] == b"2"
    assert read_seal(old_part)["version"] == 1 and read_seal(new_part)["version"] == 2
    # The old seals still hold: the old store takes the fast path (reading the turns JSON).
    old_fast, new_fast = _tables(old, "seal"), _tables(new, "seal")
    assert count_validations == []
    for a, b in zip(old_fast, new_fast, strict=True):
        assert_tables_equal(a, b)
    summary = analyze_paths(new)
    assert analyze_paths(old) == summary
    assert analyze_paths(old, validation="full") == summary
    # A format-2 writer appends to a format-1 store; each part reads in its own format.
    with TraceWriter(old, episodes_per_part=3) as w:
        w.write(make_episode(100))
    assert analyze_paths(old) == analyze_paths(old, validation="full")
    assert analyze_paths(old)["episodes"] == len(eps) + 1


def test_fast_path_reads_turn_columns_not_the_turns_json(tmp_path, monkeypatch):
    from agentropy.trace import table as table_module

    store = tmp_path / "run.parquet"
    eps = _varied_episodes()
    eps[0].turns.pop(-1)  # the turn with entropy bounds: its part would need the JSON
    write_parquet(eps, store, episodes_per_part=3)
    full = _tables(store, "full")

    def no_json(*args: Any, **kw: Any) -> Any:
        raise AssertionError("the turns JSON was decoded")

    monkeypatch.setattr(table_module, "_turns_from_json", no_json)
    fast = _tables(store, "seal")
    for a, b in zip(fast, full, strict=True):
        assert_tables_equal(a, b)
    assert fast[0].question == [None, "age of Pata?", None]
    last = int(np.flatnonzero(fast[0].turn_ep == 0)[-1])  # episode 0's last turn
    assert fast[0].tool_arguments[last] == {"x": 0.0, "y": [1, {"z": 2}]}


def test_edited_turn_columns_break_the_seal_and_the_json_wins(tmp_path, count_validations):
    store = tmp_path / "run.parquet"
    write_parquet([make_episode(i) for i in range(3)], store)
    before = analyze_paths(store)
    part = store / "episodes" / "part-00000.parquet"
    # Claim that every tool call of episode 1 succeeded: the columns disagree with the JSON.
    _rewrite(part, lambda t: _set(t, "turn_status", 1, [-1, 0, -1, 0, -1, 0]))
    assert analyze_paths(store) == before
    assert count_validations == ["part-00000.parquet"]


def test_store_without_seals_is_validated_and_gives_the_same_summary(tmp_path, count_validations):
    store = tmp_path / "old.parquet"
    write_parquet(_varied_episodes(), store, episodes_per_part=4)
    sealed = analyze_paths(store)
    assert count_validations == []
    for part in (store / "episodes").iterdir():  # as written before seals existed
        _rewrite(part, lambda t: t.replace_schema_metadata(
            {k: v for k, v in t.schema.metadata.items() if k != SEAL_KEY}))  # fmt: skip
    assert analyze_paths(store) == sealed
    assert len(count_validations) == 2


# ------------------------------------------------------------------------------ edits and damage


def test_hand_edited_tokens_file_is_validated_and_reported(tmp_path, count_validations):
    store = tmp_path / "run.parquet"
    write_parquet([make_episode(i) for i in range(4)], store, episodes_per_part=2)
    part = store / "tokens" / "part-00001.parquet"
    # A column the analysis never reads: the checksum covers the whole file.
    _rewrite(part, lambda t: _set(t, "logprob", 5, 0.5))
    with pytest.raises(InputError) as err:
        analyze_paths(store)
    assert err.value.path == str(part) and err.value.row == 5 and err.value.field == "logprob"
    assert "log-probability" in str(err.value)
    assert count_validations == ["part-00001.parquet"]  # part 0 still took the fast path

    res = runner.invoke(app, ["analyze", str(store)])
    assert res.exit_code == 2
    assert res.output.count("\n") == 1 and "part-00001.parquet" in res.output
    assert "row 5" in res.output and "logprob" in res.output


def test_valid_hand_edit_is_read_as_edited(tmp_path, count_validations):
    store = tmp_path / "run.parquet"
    write_parquet([make_episode(i) for i in range(2)], store)
    part = store / "tokens" / "part-00000.parquet"
    _rewrite(part, lambda t: _set(t, "entropy", 0, 7.0))
    (table,) = _tables(store, "seal")
    assert table.entropy[0] == 7.0
    assert count_validations == ["part-00000.parquet"]


def test_hand_edited_episodes_file_keeps_its_seal_but_fails_it(tmp_path, count_validations):
    store = tmp_path / "run.parquet"
    write_parquet([make_episode(i) for i in range(3)], store)
    part = store / "episodes" / "part-00000.parquet"

    def more_tokens(t: Any) -> Any:
        turns = json.loads(t.column("turns")[1].as_py())
        turns[0]["n_tokens"] += 1
        return _set(t, "turns", 1, json.dumps(turns))

    _rewrite(part, more_tokens)
    import pyarrow.parquet as pq

    assert read_seal(pq.read_table(part)) is not None  # the rewrite carried the seal over
    with pytest.raises(InputError, match="declare") as err:
        analyze_paths(store)
    assert err.value.path == str(store / "tokens" / "part-00000.parquet")
    # A harmless edit (the reward) is read as edited, through validation.
    write_parquet([make_episode(i) for i in range(3)], store, overwrite=True)
    _rewrite(part, lambda t: _set(t, "reward", 2, 0.25))
    count_validations.clear()
    (table,) = _tables(store, "seal")
    assert table.reward[2] == 0.25 and count_validations == ["part-00000.parquet"]


def test_corrupt_tokens_bytes_give_the_validating_paths_error(tmp_path):
    store = tmp_path / "run.parquet"
    write_parquet([make_episode(i) for i in range(2)], store)
    part = store / "tokens" / "part-00000.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    errors = []
    for validation in ("seal", "full"):
        try:
            analyze_paths(store, validation=validation)  # type: ignore[arg-type]
            errors.append(None)
        except InputError as err:
            errors.append(str(err))
    assert errors[0] == errors[1]  # whatever the flipped byte does, both paths agree


@pytest.mark.parametrize("nan_policy", ["raise", "drop"])
def test_non_finite_values_leave_the_part_to_nan_policy(tmp_path, count_validations, nan_policy):
    eps = [make_episode(i) for i in range(3)]
    eps[1].turns[0].sampling_entropy[2] = np.nan
    store = tmp_path / "run.parquet"
    write_parquet(eps, store)
    import pyarrow.parquet as pq

    seal = read_seal(pq.read_table(store / "episodes" / "part-00000.parquet"))
    assert seal is not None and seal["nonfinite_rows"] == 1
    if nan_policy == "raise":
        with pytest.raises(InputError, match="non-finite") as err:
            analyze_paths(store)
        assert err.value.field == "sampling_entropy"
        return
    fast = analyze_paths(store, nan_policy="drop")
    assert fast == analyze_paths(store, nan_policy="drop", validation="full")
    assert fast["dropped_nonfinite"] == 1 and fast["tokens"] == sum(e.n_tokens for e in eps) - 1
    assert count_validations == ["part-00000.parquet"] * 2


def test_too_deep_turn_meta_is_stored_unsealed_and_reported(tmp_path):
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(MAX_NESTING + 1):
        node["a"] = {}
        node = node["a"]
    ep = make_episode(0)
    ep.turns[0].meta = deep
    store = tmp_path / "run.parquet"
    write_parquet([ep], store)
    import pyarrow.parquet as pq

    assert read_seal(pq.read_table(store / "episodes" / "part-00000.parquet")) is None
    with pytest.raises(InputError, match="nested deeper"):
        analyze_paths(store)


def test_read_ahead_keeps_part_order_errors_and_early_exit(tmp_path):
    store = tmp_path / "run.parquet"
    write_parquet([make_episode(i) for i in range(6)], store, episodes_per_part=2)
    part = store / "tokens" / "part-00002.parquet"
    _rewrite(part, lambda t: _set(t, "entropy", 0, -1.0))
    it = iter_part_tables(store)
    first = next(it)
    assert first.episode_id == ["ep0", "ep1"]
    assert next(it).episode_id == ["ep2", "ep3"]
    with pytest.raises(InputError, match="entropy must be >= 0"):
        next(it)
    # Stopping early shuts the reader thread down.
    it = iter_part_tables(store)
    next(it)
    it.close()
    # Duplicate ids across parts are still refused.
    other = tmp_path / "dup.parquet"
    write_parquet([make_episode(0)], other)
    for sub in ("tokens", "episodes"):
        src = other / sub / "part-00000.parquet"
        (other / sub / "part-00001.parquet").write_bytes(src.read_bytes())
    with pytest.raises(InputError, match="duplicate episode_id"):
        list(iter_part_tables(other))


def test_parts_analysed_in_parallel_give_the_same_summary_and_errors_in_order(tmp_path):
    store = tmp_path / "run.parquet"
    write_parquet(_varied_episodes(9), store, episodes_per_part=2)
    serial = analyze_paths(store, workers=1)
    assert serial["episodes"] == 9
    for workers in (2, 3):
        assert analyze_paths(store, workers=workers) == serial
    # Parts 1 and 3 are bad: the first in part order is reported, however many threads read.
    for k in (1, 3):
        _rewrite(store / "tokens" / f"part-{k:05d}.parquet", lambda t: _set(t, "entropy", 0, -1.0))
    for workers in (1, 3):
        with pytest.raises(InputError) as err:
            analyze_paths(store, workers=workers)
        assert err.value.path == str(store / "tokens" / "part-00001.parquet")
    with pytest.raises(ValueError, match="workers must be"):
        analyze_paths(store, workers=0)


def test_validation_name_is_checked(tmp_path):
    store = tmp_path / "run.parquet"
    write_parquet([make_episode(0)], store)
    with pytest.raises(ValueError, match="validation must be one of"):
        next(iter_part_tables(store, validation="none"))  # type: ignore[arg-type]
