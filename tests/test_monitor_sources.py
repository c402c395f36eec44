"""Scalar readers: TensorBoard event files (no TensorBoard needed), CSV exports, metrics.parquet."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from agentropy.errors import InputError
from agentropy.trace.importers._tfevents import EventFileReader, crc32c, masked_crc32c
from agentropy.trace.importers.scalars import CsvSource, TagMap, discover, norm_tag

# ---- a minimal event-file writer, written from the TFRecord and event.proto specifications


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, wt: int, payload: bytes) -> bytes:
    key = _varint(num << 3 | wt)
    if wt == 2:
        return key + _varint(len(payload)) + payload
    return key + payload


def scalar_event(step: int, tag: str, value: float, *, tensor: bool = False) -> bytes:
    if tensor:  # TF2 style: TensorProto{dtype=DT_FLOAT, tensor_shape={}, float_val=[value]}
        tp = _field(1, 0, _varint(1)) + _field(2, 2, b"") + _field(5, 5, struct.pack("<f", value))
        val = _field(1, 2, tag.encode()) + _field(8, 2, tp)
    else:
        val = _field(1, 2, tag.encode()) + _field(2, 5, struct.pack("<f", value))
    summary = _field(1, 2, val)
    return (
        _field(1, 1, struct.pack("<d", 1.7e9)) + _field(2, 0, _varint(step)) + _field(5, 2, summary)
    )


def record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return (
        header
        + struct.pack("<I", masked_crc32c(header))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


def write_events(path: Path, events: list[bytes]) -> None:
    version = _field(1, 1, struct.pack("<d", 1.7e9)) + _field(3, 2, b"brain.Event:2")
    path.write_bytes(record(version) + b"".join(record(e) for e in events))


# ---- tests


def test_crc32c_known_vector():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0


def test_event_reader_reads_simple_and_tensor_scalars(tmp_path):
    f = tmp_path / "events.out.tfevents.1.host"
    write_events(
        f,
        [scalar_event(1, "actor/entropy", 0.5), scalar_event(1, "critic/score/mean", 0.25),
         scalar_event(2, "actor/entropy", 0.75, tensor=True), scalar_event(-1, "x", 1.0)],
    )  # fmt: skip
    got = EventFileReader(f).read_new()
    assert got == [
        (1, "actor/entropy", 0.5),
        (1, "critic/score/mean", 0.25),
        (2, "actor/entropy", 0.75),
        (-1, "x", 1.0),
    ]


def test_event_reader_is_incremental_and_waits_for_partial_records(tmp_path):
    f = tmp_path / "events.out.tfevents.1.host"
    write_events(f, [scalar_event(1, "a", 1.0)])
    reader = EventFileReader(f)
    assert reader.read_new() == [(1, "a", 1.0)]
    rec = record(scalar_event(2, "a", 2.0))
    with f.open("ab") as fh:
        fh.write(rec[:10])
    assert reader.read_new() == []  # half a record: not yet
    with f.open("ab") as fh:
        fh.write(rec[10:])
    assert reader.read_new() == [(2, "a", 2.0)]
    assert reader.read_new() == []


def test_event_reader_rejects_corruption(tmp_path):
    f = tmp_path / "events.out.tfevents.1.host"
    write_events(f, [scalar_event(1, "a", 1.0)])
    data = bytearray(f.read_bytes())
    data[-6] ^= 0xFF  # flip a byte inside the last record's data
    f.write_bytes(bytes(data))
    with pytest.raises(InputError, match="data checksum") as err:
        EventFileReader(f).read_new()
    assert str(f) in str(err.value)


def test_discover_tensorboard_runs_in_subdirectories(tmp_path):
    for run in ("a", "b"):
        (tmp_path / "runs" / run).mkdir(parents=True)
        write_events(tmp_path / "runs" / run / "events.out.tfevents.1.h",
                     [scalar_event(1, "train/entropy", 0.4)])  # fmt: skip
    sources = discover(tmp_path / "runs")
    assert [s.name for s in sources] == ["a", "b"]
    assert sources[0].poll() == {1: {"train/entropy": pytest.approx(0.4)}}


def test_tag_map_defaults_cover_trl_verl_and_ours():
    tm = TagMap.default()
    verl = tm.resolve({"actor/entropy": 0.7, "critic/score/mean": 0.3, "critic/rewards/mean": 0.2,
                       "response_length/mean": 300.0})  # fmt: skip
    assert verl["entropy"] == 0.7 and verl["reward"] == 0.3 and verl["length"] == 300.0
    trl = tm.resolve({"train/entropy": 0.5, "train/reward": 0.1,
                      "train/tools/failure_frequency": 0.2})  # fmt: skip
    assert trl["entropy"] == 0.5 and trl["reward"] == 0.1 and trl["failure_rate"] == 0.2
    ours = tm.resolve({"entropy/mean": 0.6, "entropy/recover_mean": 0.0, "tokens/recover": 0.0,
                       "entropy/plan_mean": 0.3, "tokens/plan": 12.0,
                       "rollout/reward_mean": 0.4})  # fmt: skip
    assert ours["entropy"] == 0.6 and ours["entropy_plan"] == 0.3
    assert ours["entropy_recover"] is None  # empty phase: missing, not 0 nats
    # CSV-export spelling of tags matches
    assert tm.resolve({"actor_entropy": 0.9})["entropy"] == 0.9
    custom = TagMap.default(entropy_tag="my/ent", extra={"loop_rate": "dup"})
    assert custom.resolve({"my/ent": 1.0, "actor/entropy": 2.0, "dup": 0.3})["entropy"] == 1.0
    assert custom.resolve({"dup": 0.3})["loop_rate"] == 0.3
    with pytest.raises(ValueError, match="unknown monitor metric"):
        TagMap.default(extra={"loops": "x"})
    assert norm_tag("Train/Completions/Mean-Length") == "train_completions_mean_length"


def test_csv_wide_and_tensorboard_export(tmp_path):
    wide = tmp_path / "run.csv"
    wide.write_text("Step,entropy,reward\n1,0.5,0.1\n2,0.6,\n3,0.7,0.2")  # last row unterminated
    src = CsvSource(wide, "run")
    assert src.poll() == {1: {"entropy": 0.5, "reward": 0.1}, 2: {"entropy": 0.6}}
    with wide.open("a") as f:
        f.write("\n4,0.8,0.3\n")
    assert src.poll() == {3: {"entropy": 0.7, "reward": 0.2}, 4: {"entropy": 0.8, "reward": 0.3}}
    d = tmp_path / "export"
    d.mkdir()
    (d / "run-x-tag-actor_entropy.csv").write_text("Wall time,Step,Value\n1.0,1,0.5\n2.0,2,0.6\n")
    (d / "run-x-tag-critic_score_mean.csv").write_text("Wall time,Step,Value\n1.0,1,0.1\n")
    (src2,) = discover(d)
    raw = src2.poll()
    assert raw[1] == {"actor_entropy": 0.5, "critic_score_mean": 0.1}
    assert TagMap.default().resolve(raw[1])["reward"] == 0.1


def test_csv_errors_name_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("step,entropy\n1,0.5\n2,high\n")
    with pytest.raises(InputError) as err:
        CsvSource(bad, "bad").poll()
    assert "line 3" in str(err.value) and "field 'entropy'" in str(err.value)
    nostep = tmp_path / "nostep.csv"
    nostep.write_text("epoch,entropy\n1,0.5\n")
    with pytest.raises(InputError, match="no step column"):
        CsvSource(nostep, "n").poll()


def test_parquet_source_reads_new_rows_only(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    run = tmp_path / "run"
    run.mkdir()
    pq.write_table(pa.table({"step": [1, 2], "entropy/mean": [0.5, 0.6]}), run / "metrics.parquet")
    (src,) = discover(run)
    assert src.kind == "parquet" and src.poll() == {
        1: {"entropy/mean": 0.5},
        2: {"entropy/mean": 0.6},
    }
    assert src.poll() == {}
    pq.write_table(
        pa.table({"step": [1, 2, 3], "entropy/mean": [0.5, 0.6, 0.7]}), run / "metrics.parquet"
    )
    assert src.poll() == {3: {"entropy/mean": 0.7}}


def test_discover_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        discover(tmp_path / "missing")
    with pytest.raises(InputError, match="no TensorBoard event files"):
        discover(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="not a metrics file"):
        discover(tmp_path / "notes.txt")


@pytest.mark.slow
def test_real_torch_summary_writer_directory(tmp_path):
    """Event files written by torch.utils.tensorboard (needs the tensorboard package)."""
    pytest.importorskip("tensorboard", reason="torch.utils.tensorboard needs `tensorboard`")
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(tmp_path / "tb")
    for step in range(1, 6):
        w.add_scalar("actor/entropy", 0.5 + 0.01 * step, step)
        w.add_scalar("critic/score/mean", 0.2, step)
    w.add_histogram("weights", np.array([0.1, 0.2, 0.3]), 1)  # skipped, not an error
    w.close()
    (src,) = discover(tmp_path / "tb")
    raw = src.poll()
    assert sorted(raw) == [1, 2, 3, 4, 5]
    assert raw[3]["actor/entropy"] == pytest.approx(0.53)


def test_default_tags_cover_exactly_the_monitor_metrics():
    from agentropy.monitor import METRICS
    from agentropy.trace.importers.scalars import DEFAULT_TAGS

    assert tuple(DEFAULT_TAGS) == METRICS
