"""Parquet trace store: the crash-safe storage format for large runs (layout and writer).

A store is a directory, conventionally named ``something.parquet``, holding numbered parts::

    run.parquet/
      tokens/part-00000.parquet     one row per assistant token
      episodes/part-00000.parquet   one row per episode
      tokens/part-00001.parquet ...

``tokens`` columns: ``episode_id`` (string), ``turn_index`` (int32, index into the episode's
``turns``), ``token_index`` (int32, within the turn), ``token_id`` (int64, nullable), ``logprob``,
``entropy``, ``sampling_entropy``, ``temperature`` (float32; all but ``entropy`` nullable),
``phase`` (int8 code into :data:`~agentropy.trace.PHASES`, nullable). Rows are ordered by episode
(in the order of the episodes table), then ``turn_index``, then ``token_index``.

``episodes`` columns: ``episode_id`` (string), ``task_id`` (string), ``level`` (int64), ``step``
(int64), ``policy`` (string), ``success`` (bool), ``reward`` (float64), ``fault_kinds``
(list<string>), ``latency_s`` (float64), ``meta`` (JSON string), ``turns`` (JSON string: the list
of turn dicts as in JSONL, except that assistant turns carry ``n_tokens`` and ``arrays`` — the
names of the per-token arrays the turn has — instead of the arrays themselves).

Format 2 (this writer; schema metadata ``agentropy.trace_format``) adds to the episodes file the
columns the analyzer needs from the ``turns`` JSON, as lists with one entry per turn, so that it
need not decode the JSON (the largest cost of reading a part): ``question`` (string:
``meta["question"]`` when a string), ``turn_is_tool`` (list<bool>), ``turn_n_tokens``
(list<int32>, 0 for tool turns), ``turn_has_ids`` (list<bool>: the turn has ``token_ids``),
``turn_status`` (list<int8>: :data:`~agentropy.trace.STATUS_CODES`, -1 none), ``turn_name``,
``turn_arguments`` (list<string>: the canonical JSON of the call's arguments, null without a
parsed call), ``turn_content`` (list<string>) and ``turn_bounded`` (list<bool>: an assistant turn whose
meta holds entropy bounds). They are derived from ``turns``, which stays the source of truth:
readers use them only in a part whose seal holds (the seal covers them), and validate and read
the JSON otherwise. Format 1 stores (no such columns) read as before.

An episode's tokens are never split across parts. The writer writes each part under a temporary
name and renames it into place, tokens first and episodes last; a part exists only once its
episodes file exists, so a writer killed at any moment loses at most the part in flight. Opening
a :class:`TraceWriter` on an existing store appends: numbering continues after the last complete
part (this is how long runs resume) and episode ids already in the store are refused
(``overwrite=True`` starts afresh). One writer per store: a ``.writer.lock`` file is ``flock``-ed
while a writer is open (the lock dies with its process, so a killed run can always resume).
Writers store what they are given (non-finite values included) and validate structure only.
Each episodes file carries the part's seal in its schema metadata (:mod:`agentropy.trace.seal`:
checksums of both files), which lets the analyzer skip re-validating parts nobody has touched
since; stores without seals (older writers) read exactly as before.
Readers (:mod:`agentropy.trace.parquet_read`) see only complete parts and ignore leftovers of a
killed writer. pyarrow is imported inside the functions, so ``import agentropy.trace`` stays light.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agentropy.errors import InputError
from agentropy.trace.jsonl import _dumps
from agentropy.trace.model import (
    _ARRAY_DTYPE,
    BOUNDS_META_KEY,
    STATUS_CODES,
    TOKEN_ARRAY_FIELDS,
    TOKEN_FLOAT_FIELDS,
    Episode,
    _assistant_extras,
    _cat,
    _episode_header,
    _tool_turn_dict,
    canonical_arguments,
)
from agentropy.trace.seal import SEAL_KEY, make_seal
from agentropy.trace.validate import _episode_arrays, _nesting_error

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "DEFAULT_EPISODES_PER_PART",
    "TraceWriter",
    "write_parquet",
]


#: Default number of episodes per Parquet part (a part is the unit lost if a writer is killed).
DEFAULT_EPISODES_PER_PART = 256
_LOCK_NAME = ".writer.lock"
_PART_RE = re.compile(r"^part-(\d+)\.parquet$")
#: Store format this writer writes (module docstring); readers read formats 1 and 2.
_FORMAT_VERSION = 2
_FORMAT_KEY = b"agentropy.trace_format"


def _turn_fields() -> list[pa.Field]:
    """The format-2 columns of the episodes file (module docstring), in order."""
    import pyarrow as pa

    return [
        pa.field("question", pa.string()),
        pa.field("turn_is_tool", pa.list_(pa.bool_())),
        pa.field("turn_n_tokens", pa.list_(pa.int32())),
        pa.field("turn_has_ids", pa.list_(pa.bool_())),
        pa.field("turn_status", pa.list_(pa.int8())),
        pa.field("turn_name", pa.list_(pa.string())),
        pa.field("turn_arguments", pa.list_(pa.string())),
        pa.field("turn_content", pa.list_(pa.string())),
        pa.field("turn_bounded", pa.list_(pa.bool_())),
    ]


def _schemas(version: int = 1) -> tuple[pa.Schema, pa.Schema]:
    """(tokens schema, episodes schema) of store format ``version`` (module docstring).

    Format 2 is format 1 plus the ``question`` and ``turn_*`` columns of the episodes file.
    """
    import pyarrow as pa

    meta = {_FORMAT_KEY: str(version).encode()}
    tokens = pa.schema(
        [
            pa.field("episode_id", pa.string(), nullable=False),
            pa.field("turn_index", pa.int32(), nullable=False),
            pa.field("token_index", pa.int32(), nullable=False),
            pa.field("token_id", pa.int64()),
            pa.field("logprob", pa.float32()),
            pa.field("entropy", pa.float32(), nullable=False),
            pa.field("sampling_entropy", pa.float32()),
            pa.field("temperature", pa.float32()),
            pa.field("phase", pa.int8()),
        ],
        metadata=meta,
    )
    episodes = pa.schema(
        [
            pa.field("episode_id", pa.string(), nullable=False),
            pa.field("task_id", pa.string()),
            pa.field("level", pa.int64()),
            pa.field("step", pa.int64()),
            pa.field("policy", pa.string()),
            pa.field("success", pa.bool_()),
            pa.field("reward", pa.float64()),
            pa.field("fault_kinds", pa.list_(pa.string())),
            pa.field("latency_s", pa.float64()),
            pa.field("meta", pa.string()),
            pa.field("turns", pa.string(), nullable=False),
            *(_turn_fields() if version >= 2 else []),
        ],
        metadata=meta,
    )
    return tokens, episodes


#: tokens column <-> Turn attribute.
_TOKEN_COLUMN = {
    "entropy": "entropy",
    "token_ids": "token_id",
    "logprob": "logprob",
    "sampling_entropy": "sampling_entropy",
    "temperature": "temperature",
    "phase": "phase",
}


class _PendingEpisode:
    """An episode converted for Parquet at ``write`` time (later caller mutations do not leak)."""

    __slots__ = ("n_tokens", "row", "sealable", "token_cols")

    def __init__(self, episode: Episode) -> None:
        all_arrays = _episode_arrays(episode)
        # The one rule the readers apply that ``_episode_arrays`` does not: nesting depth of turn
        # meta and tool arguments. An episode breaking it is stored as given but left unsealed,
        # so that readers validate its part and report it.
        self.sealable = not any(
            _nesting_error(t.meta) or (t.call is not None and _nesting_error(t.call.arguments))
            for t in episode.turns
        )
        row = _episode_header(episode)
        turns_json = []
        turn_idx: list[np.ndarray] = []
        cols: dict[str, list[np.ndarray]] = {name: [] for name in TOKEN_ARRAY_FIELDS}
        masks: dict[str, list[np.ndarray]] = {name: [] for name in TOKEN_ARRAY_FIELDS}
        n_total = 0
        for i, (turn, arrays) in enumerate(zip(episode.turns, all_arrays, strict=True)):
            if arrays is None:
                turns_json.append(_tool_turn_dict(turn))
                continue
            n = int(arrays["entropy"].shape[0])
            td = {"role": "assistant", "n_tokens": n, "arrays": list(arrays)}
            turns_json.append(_assistant_extras(turn, td))
            turn_idx.append(np.full(n, i, dtype=np.int32))
            for name in TOKEN_ARRAY_FIELDS:
                arr = arrays.get(name)
                cols[name].append(np.zeros(n, dtype=_ARRAY_DTYPE[name]) if arr is None else arr)
                masks[name].append(np.full(n, arr is None))
            n_total += n
        row["turns"] = _dumps(turns_json, episode.episode_id, "turns[].meta")
        row["meta"] = _dumps(row.get("meta", {}), episode.episode_id, "meta")
        row.update(_turn_columns(row["turns"], row["meta"]))
        self.row = row
        self.n_tokens = n_total
        token_cols: dict[str, Any] = {
            "turn_index": _cat(turn_idx, np.int32),
            "token_index": _cat([np.arange(len(t), dtype=np.int32) for t in turn_idx], np.int32),
        }
        for name in TOKEN_ARRAY_FIELDS:
            token_cols[name] = (_cat(cols[name], _ARRAY_DTYPE[name]), _cat(masks[name], np.bool_))
        self.token_cols = token_cols


def _turn_columns(turns_json: str, meta_json: str) -> dict[str, Any]:
    """The format-2 columns of one episode (module docstring), from its stored JSON.

    Derived from the JSON text as a reader decodes it, not from the in-memory turns, so that
    they hold exactly what a reader of the JSON would find (numpy scalars already converted,
    argument order canonical); :meth:`TraceTable.from_arrow` reads either and must agree.
    """
    turns = json.loads(turns_json)
    meta = json.loads(meta_json)
    question = meta.get("question") if isinstance(meta, dict) else None
    names = [td.get("name") for td in turns]
    return {
        "question": question if isinstance(question, str) else None,
        "turn_is_tool": [td["role"] != "assistant" for td in turns],
        "turn_n_tokens": [td.get("n_tokens", 0) for td in turns],
        "turn_has_ids": ["token_ids" in td.get("arrays", ()) for td in turns],
        "turn_status": [STATUS_CODES.get(td.get("status") or "", -1) for td in turns],
        "turn_name": names,
        "turn_arguments": [
            None if nm is None else canonical_arguments(td.get("arguments") or {})
            for nm, td in zip(names, turns, strict=True)
        ],
        "turn_content": [td.get("content") for td in turns],
        "turn_bounded": [
            td["role"] == "assistant"
            and bool(td.get("meta"))
            and td["meta"].get(BOUNDS_META_KEY) is not None
            for td in turns
        ],
    }


def _parquet_bytes(table: pa.Table) -> pa.Buffer:
    """``table`` as the bytes of a zstd-compressed Parquet file (kept in memory to be sealed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _fsync_write(data: pa.Buffer, final: Path) -> None:
    """Write ``data`` to a temporary name in the same directory, fsync, then rename atomically."""
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(memoryview(data))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX only)
        dfd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _list_parts(store: Path, sub: str) -> dict[int, Path]:
    folder = store / sub
    if not folder.is_dir():
        return {}
    out = {}
    for child in folder.iterdir():
        m = _PART_RE.match(child.name)
        if m:
            out[int(m.group(1))] = child
    return out


def _lock_store(path: Path) -> io.IOBase:
    """Hold an exclusive lock on the store so two writers never number parts alike.

    ``flock`` locks die with their process, so a killed writer never blocks a resume.
    """
    path.mkdir(parents=True, exist_ok=True)
    fh = open(path / _LOCK_NAME, "a+b")  # noqa: SIM115 (held until close)
    try:
        import fcntl
    except ImportError:  # pragma: no cover (Windows: no locking)
        return fh
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise InputError(
            "another TraceWriter is writing to this store (one writer per store)", path=path
        ) from None
    return fh


class TraceWriter:
    """Append episodes to a Parquet trace store, one part per ``episodes_per_part`` episodes.

    Use as a context manager (``close`` flushes the last, possibly smaller, part)::

        with TraceWriter("run.parquet") as w:
            for ep in episodes:
                w.write(ep)

    A writer killed at any moment loses at most the buffered episodes; every earlier part stays
    readable. Opening an existing store appends to it (resuming a run) unless ``overwrite``,
    which first deletes the store's parts.
    """

    #: Store format written (module docstring). Tests set 1 in a subclass to write stores as
    #: writers before format 2 did (no turn columns, seal version 1).
    _format_version: int = _FORMAT_VERSION

    def __init__(
        self,
        path: str | Path,
        *,
        episodes_per_part: int = DEFAULT_EPISODES_PER_PART,
        overwrite: bool = False,
    ) -> None:
        if isinstance(episodes_per_part, bool) or not isinstance(episodes_per_part, int):
            raise ValueError(f"episodes_per_part must be an int, got {episodes_per_part!r}")
        if episodes_per_part < 1:
            raise ValueError(f"episodes_per_part must be >= 1, got {episodes_per_part}")
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise InputError("exists and is not a trace store directory", path=self.path)
        self.episodes_per_part = episodes_per_part
        if (
            self.path.is_dir()
            and not (self.path / "episodes").is_dir()
            and any(c.name != _LOCK_NAME for c in self.path.iterdir())
        ):
            # Never scatter parts into (or, with overwrite, delete from) an unrelated folder.
            raise InputError(
                "not a trace store: a non-empty folder without an 'episodes' folder",
                path=self.path,
            )
        self._lock = _lock_store(self.path)
        try:
            self._open(overwrite)
        except BaseException:
            self._lock.close()
            raise
        self._buffer: list[_PendingEpisode] = []
        self._closed = False
        self.n_written = 0
        """Episodes written (flushed into complete parts) by this writer."""
        self.n_parts_written = 0
        """Parts written by this writer."""

    def _open(self, overwrite: bool) -> None:
        if overwrite:
            # Episodes first: from the first unlink on, the part no longer counts.
            for sub in ("episodes", "tokens"):
                for part in (self.path / sub).iterdir() if (self.path / sub).is_dir() else ():
                    if _PART_RE.match(part.name) or part.name.endswith(".tmp"):
                        part.unlink()
        for sub in ("tokens", "episodes"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
            for stale in (self.path / sub).glob(".part-*.tmp"):
                # Leftovers of a killed writer; never counted as parts.
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
        existing = _list_parts(self.path, "episodes")
        self._next_part = max(existing) + 1 if existing else 0
        self._ids: set[str] = set()
        if existing:
            import pyarrow.parquet as pq

            for part in existing.values():
                ids = pq.read_table(part, columns=["episode_id"]).column(0).to_pylist()
                self._ids.update(ids)

    def write(self, episode: Episode) -> None:
        """Buffer one episode (validated now); writes a part when the buffer is full."""
        if self._closed:
            raise ValueError("TraceWriter is closed")
        pending = _PendingEpisode(episode)
        eid = pending.row["episode_id"]
        if eid in self._ids:
            raise InputError(
                f"duplicate episode_id {eid!r}: already in the store or written before",
                path=self.path,
                field="episode_id",
            )
        self._ids.add(eid)
        self._buffer.append(pending)
        if len(self._buffer) >= self.episodes_per_part:
            self.flush()

    def write_many(self, episodes: Iterable[Episode]) -> None:
        """``write`` each episode."""
        for episode in episodes:
            self.write(episode)

    def flush(self) -> None:
        """Write the buffered episodes as one new part (no-op when the buffer is empty)."""
        if not self._buffer:
            return
        import pyarrow as pa

        version = self._format_version
        tokens_schema, episodes_schema = _schemas(version)
        buf = self._buffer
        counts = np.array([p.n_tokens for p in buf], dtype=np.int64)
        ids = [p.row["episode_id"] for p in buf]
        cols: dict[str, Any] = {
            "episode_id": pa.DictionaryArray.from_arrays(
                pa.array(np.repeat(np.arange(len(buf), dtype=np.int32), counts)),
                pa.array(ids, pa.string()),
            ).cast(pa.string()),
            "turn_index": pa.array(
                _cat([p.token_cols["turn_index"] for p in buf], np.int32), pa.int32()
            ),
            "token_index": pa.array(
                _cat([p.token_cols["token_index"] for p in buf], np.int32), pa.int32()
            ),
        }
        nonfinite = np.zeros(int(counts.sum()), dtype=bool)
        for name in TOKEN_ARRAY_FIELDS:
            values = _cat([p.token_cols[name][0] for p in buf], _ARRAY_DTYPE[name])
            mask = _cat([p.token_cols[name][1] for p in buf], np.bool_)
            if name in TOKEN_FLOAT_FIELDS:
                nonfinite |= ~mask & ~np.isfinite(values)
            column = _TOKEN_COLUMN[name]
            typ = tokens_schema.field(column).type
            cols[column] = pa.array(values, type=typ, mask=mask if mask.any() else None)
        tokens = pa.table([cols[f.name] for f in tokens_schema], schema=tokens_schema)
        rows = {f.name: [p.row.get(f.name) for p in buf] for f in episodes_schema}
        rows["fault_kinds"] = [p.row.get("fault_kinds", []) for p in buf]
        episodes = pa.table(rows, schema=episodes_schema)
        tokens_file = _parquet_bytes(tokens)
        if all(p.sealable for p in buf):
            seal = make_seal(tokens_file, episodes, int(nonfinite.sum()), version=version)
            episodes = episodes.replace_schema_metadata(
                {**(episodes.schema.metadata or {}), SEAL_KEY: seal}
            )
        name = f"part-{self._next_part:05d}.parquet"
        # Tokens first, episodes last: a part only counts once its episodes file exists.
        _fsync_write(tokens_file, self.path / "tokens" / name)
        _fsync_write(_parquet_bytes(episodes), self.path / "episodes" / name)
        self._next_part += 1
        self.n_written += len(buf)
        self.n_parts_written += 1
        self._buffer = []

    def close(self) -> None:
        """Flush the last part; further writes raise."""
        if not self._closed:
            try:
                self.flush()
            finally:
                self._closed = True
                self._lock.close()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        # Buffered episodes were complete when written, so they are kept even on an exception.
        self.close()


def write_parquet(
    episodes: Iterable[Episode],
    path: str | Path,
    *,
    episodes_per_part: int = DEFAULT_EPISODES_PER_PART,
    overwrite: bool = False,
) -> int:
    """Write episodes to the trace store at ``path``; returns how many were written.

    An existing store is appended to (episode ids must stay unique) unless ``overwrite``.
    """
    with TraceWriter(path, episodes_per_part=episodes_per_part, overwrite=overwrite) as writer:
        writer.write_many(episodes)
    return writer.n_written
