"""Reading traces: the Parquet store (validated part by part) and any mix of stores and JSONL.

Layout of a store: :mod:`agentropy.trace.parquet`. Every part is cross-checked as it is read
(token rows must follow the episodes table and the declared turns, arrays a turn declares must be
there and no others, phase codes and token ids in range), and every reader raises
:class:`~agentropy.errors.InputError` naming the file, the row (0-based, within the part) and the
field (the turn-level rules are :mod:`agentropy.trace.validate`'s).

Entry points: :func:`read_parquet` / :func:`read_traces` load everything; :func:`iter_episodes`
(and :func:`iter_episodes_counted`) stream episodes one part at a time (a JSONL file streams line
by line); :func:`iter_parts` streams the raw ``(episodes_table, tokens_table)`` pairs;
:func:`iter_part_tables` streams :class:`~agentropy.trace.TraceTable` parts for the analyzer,
skipping re-validation of parts whose seal (:mod:`agentropy.trace.seal`) shows them untouched
since the writer validated them, and reading the next part in a background thread;
:func:`map_part_tables` applies a function (the analysis of a part) to each part's table in a
pool of threads, parts in parallel, results in part order.

Non-finite values: a token whose entropy, logprob, sampling entropy or temperature is NaN or
infinite is rejected by default (``nan_policy="raise"``); ``nan_policy="drop"`` removes such tokens
from every per-token array of their turn and counts them, in the returned
:class:`~agentropy.trace.Episodes` (``n_dropped``) and in the episode's
``meta["dropped_nonfinite"]``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from agentropy.errors import InputError
from agentropy.trace.jsonl import _check_trace_file, _iter_jsonl, read_jsonl
from agentropy.trace.model import (
    _ARRAY_DTYPE,
    PHASES,
    TOKEN_ARRAY_FIELDS,
    TOKEN_FLOAT_FIELDS,
    Episode,
    Episodes,
    NanPolicy,
    Turn,
    _tname,
)
from agentropy.trace.parquet import _TOKEN_COLUMN, _list_parts, _schemas, _turn_fields
from agentropy.trace.table import TraceTable
from agentropy.trace.validate import (
    _NAN_HINT,
    _TOKEN_ID_RANGE,
    MAX_NESTING,
    _apply_nan_policy,
    _check_nan_policy,
    _nesting_error,
    _parse_header,
    _parse_turn,
    _phase_code_error,
    _record_dropped,
    _token_value_error,
    _turns_error,
    _Where,
)

if TYPE_CHECKING:
    import pyarrow as pa

#: How a reader treats a store's parts: ``seal`` trusts parts whose seal matches their files,
#: ``full`` re-validates every part (:func:`iter_part_tables`).
Validation = Literal["seal", "full"]
VALIDATIONS: tuple[str, ...] = ("seal", "full")
_T = TypeVar("_T")
#: Token columns :meth:`TraceTable.from_arrow` reads from a part none of whose rows was dropped.
ANALYSIS_COLUMNS = ("entropy", "token_id", "phase")

__all__ = [
    "iter_episodes",
    "iter_episodes_counted",
    "iter_part_tables",
    "iter_parts",
    "iter_token_batches",
    "map_part_tables",
    "read_parquet",
    "read_traces",
]


#: Parts already reported as skipped (store, number), so a second pass over a store is quiet.
_ANNOUNCED: set[tuple[str, int]] = set()


def _store_parts(path: str | Path) -> list[tuple[int, Path, Path]]:
    """Complete parts of a store: (number, episodes file, tokens file), in order.

    Parts are numbered 0, 1, 2, ... with no gap (the writer numbers them so). The one thing a
    reader may skip is the trailing part in flight of a killed writer (its tokens file written,
    its episodes file not yet): it is skipped with a note on stderr. Any other missing or stray
    file means lost data and is an error, and so is a store with no complete part.
    """
    store = Path(path)
    if not store.exists():
        raise InputError("no such file or directory", path=store)
    if not store.is_dir():
        raise InputError(
            "expected a trace store directory (holding episodes/ and tokens/ parts)", path=store
        )
    if not (store / "episodes").is_dir():
        raise InputError("not a trace store: missing the 'episodes' folder", path=store)
    eps = _list_parts(store, "episodes")
    toks = _list_parts(store, "tokens")
    last = max(eps, default=-1)
    for n in range(last + 1):
        if n not in eps:
            raise InputError(
                f"episodes part {n} is missing (parts 0..{last} expected: store damaged)",
                path=store / "episodes",
            )
        if n not in toks:
            raise InputError("episodes part without its tokens part (store damaged)", path=eps[n])
    for n in sorted(toks):
        if n <= last:
            continue
        if n == last + 1:  # the part a killed writer was writing: tokens first, episodes last
            if (str(store), n) not in _ANNOUNCED:
                _ANNOUNCED.add((str(store), n))
                print(
                    f"note: {store}: skipping part {n}, left incomplete by an interrupted writer",
                    file=sys.stderr,
                )
            continue
        raise InputError(
            f"tokens part {n} has no episodes part (nor has part {last + 1}: store damaged)",
            path=toks[n],
        )
    if last < 0:
        raise InputError("empty trace store: no complete parts", path=store)
    return [(n, eps[n], toks[n]) for n in range(last + 1)]


def _check_unique(ids: Sequence[str], seen: dict[str, Path], ep_file: Path) -> None:
    """Episode ids are unique across the parts of a store (within a part: checked on decode)."""
    for row, eid in enumerate(ids):
        first = seen.setdefault(eid, ep_file)
        if first is not ep_file:
            raise InputError(
                f"duplicate episode_id {eid!r} (also in {first.name})",
                path=ep_file,
                row=row,
                field="episode_id",
            )


def _read_table(path: Path, schema: pa.Schema | None) -> pa.Table:
    """The whole table of ``path``, checked against ``schema`` (columns, types) and put in its
    column order. ``schema=None``: an episodes file of format 1 or 2 (format 2 when it has any
    of the format-2 columns), returned with all its columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        # ParquetFile.read, not pq.read_table: the same table without the datasets layer,
        # which costs more than decoding a small episodes file.
        with pq.ParquetFile(path) as fh:
            table = fh.read()
    except (OSError, pa.ArrowException) as err:
        reason = " ".join(str(err).split())  # pyarrow's messages span lines
        raise InputError(f"unreadable Parquet file ({reason})", path=path) from None
    if schema is None:
        v2 = any(f.name in table.column_names for f in _turn_fields())
        schema = _schemas(2 if v2 else 1)[1]
    for f in schema:
        if f.name not in table.column_names:
            raise InputError("missing column", path=path, field=f.name)
        got = table.schema.field(f.name).type
        if got != f.type:
            raise InputError(f"column has type {got}, expected {f.type}", path=path, field=f.name)
    extra = [c for c in table.column_names if c not in schema.names]
    if extra:
        raise InputError("unknown column", path=path, field=extra[0])
    return table.select(schema.names)


def _to_numpy(column: pa.ChunkedArray, dtype: Any, fill: Any) -> tuple[np.ndarray, np.ndarray]:
    """(writable values with nulls filled, null mask)."""
    import pyarrow.compute as pc

    nulls = np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    values = pc.fill_null(column, fill) if column.null_count else column
    return np.array(values.to_numpy(), dtype=dtype), nulls


def _decode_part(
    ep_file: Path, tok_file: Path, nan_policy: str, *, build: bool
) -> tuple[pa.Table, pa.Table, list[tuple[Episode, int]], np.ndarray]:
    """Read and cross-check one part.

    Returns the two tables, the part's episodes with their dropped-token counts (only when
    ``build``), and the mask of token rows holding a non-finite value.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    tokens_schema, episodes_schema = _schemas()
    # The format-2 turn columns are a cache of the turns JSON that only a holding seal vouches
    # for: validation reads the JSON, and the tables it yields have the format-1 columns.
    ep_table = _read_table(ep_file, None).select(episodes_schema.names)
    tok_table = _read_table(tok_file, tokens_schema)
    for col in ("episode_id", "turns"):
        if ep_table.column(col).null_count:
            row = int(np.flatnonzero(ep_table.column(col).is_null().to_numpy())[0])
            raise InputError("null value", path=ep_file, row=row, field=col)
    for col in ("episode_id", "turn_index", "token_index", "entropy"):
        if tok_table.column(col).null_count:
            row = int(np.flatnonzero(tok_table.column(col).is_null().to_numpy())[0])
            raise InputError("null value", path=tok_file, row=row, field=col)

    headers = ep_table.drop_columns(["turns", "meta"]).to_pylist()
    metas = ep_table.column("meta").to_pylist()
    turns_json = ep_table.column("turns").to_pylist()
    parsed: list[tuple[dict[str, Any], list[tuple[Turn, dict[str, Any] | None]]]] = []
    seen: dict[str, int] = {}
    # Expected (turn_index, n_tokens, arrays) runs, in row order.
    run_turn, run_len, run_ep, run_arrays = [], [], [], []
    for row, (h, meta_s, turns_s) in enumerate(zip(headers, metas, turns_json, strict=True)):
        w = _Where(ep_file, row=row)
        eid = h["episode_id"]
        if eid in seen:
            raise w.err(f"duplicate episode_id {eid!r} (first at row {seen[eid]})", "episode_id")
        seen[eid] = row
        h["fault_kinds"] = h["fault_kinds"] or []
        if any(k is None for k in h["fault_kinds"]):
            raise w.err("null fault kind", "fault_kinds")
        if meta_s is None:
            h["meta"] = {}
        else:
            h["meta"] = _loads(meta_s, w, "meta")
            if not isinstance(h["meta"], dict):
                raise w.err(f"expected a JSON object, got {_tname(h['meta'])}", "meta")
        # The header rules (finite reward, level and step >= 0, ...) are the JSONL reader's.
        h = {**_parse_header({k: v for k, v in h.items() if k != "meta"}, w), "meta": h["meta"]}
        if msg := _nesting_error(h["meta"]):
            raise w.err(msg, "meta")
        turns_list = _loads(turns_s, w, "turns")
        if msg := _turns_error(turns_list):
            raise w.err(msg, "turns")
        turns = []
        for i, td in enumerate(turns_list):
            turn, _, info = _parse_turn(td, w, f"turns[{i}]", nan_policy, store=True)
            turns.append((turn, info))
            if info is not None:
                run_turn.append(i)
                run_len.append(info["n_tokens"])
                run_ep.append(row)
                run_arrays.append(info["arrays"])
        parsed.append((h, turns))

    lens = np.asarray(run_len, dtype=np.int64)
    total = int(lens.sum())
    if tok_table.num_rows != total:
        raise InputError(
            f"tokens part has {tok_table.num_rows} rows but the episodes' turns declare "
            f"{total} tokens (store corrupted)",
            path=tok_file,
        )
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]) if len(lens) else lens
    ids = [h["episode_id"] for h, _ in parsed]
    expect_ep = np.repeat(np.asarray(run_ep, dtype=np.int64), lens)
    expect_turn = np.repeat(np.asarray(run_turn, dtype=np.int32), lens)
    expect_tok = np.arange(total, dtype=np.int64) - np.repeat(starts, lens)
    got_ids = pa.DictionaryArray.from_arrays(pa.array(expect_ep), pa.array(ids, pa.string()))
    same_id = pc.equal(tok_table.column("episode_id"), got_ids.cast(pa.string()))
    turn_col = tok_table.column("turn_index").to_numpy()
    tok_col = tok_table.column("token_index").to_numpy()
    ok = np.asarray(same_id.to_numpy(zero_copy_only=False), dtype=bool)
    ok &= turn_col == expect_turn
    ok &= tok_col == expect_tok
    if not ok.all():
        r = int(np.flatnonzero(~ok)[0])
        raise InputError(
            f"token row out of place: expected episode {ids[expect_ep[r]]!r}, turn "
            f"{expect_turn[r]}, token {expect_tok[r]} (rows must follow the episodes table and "
            "turn order)",
            path=tok_file,
            row=r,
            field="episode_id" if not same_id[r].as_py() else "turn_index",
        )
    # Per-row "this turn has that array" flags, to tell absent arrays from null values.
    present = {
        name: np.repeat(np.asarray([name in a for a in run_arrays], dtype=bool), lens)
        for name in TOKEN_ARRAY_FIELDS
    }
    values: dict[str, np.ndarray] = {}
    for name in TOKEN_ARRAY_FIELDS:
        column = _TOKEN_COLUMN[name]
        is_float = name in TOKEN_FLOAT_FIELDS
        vals, nulls = _to_numpy(
            tok_table.column(column), _ARRAY_DTYPE[name], np.nan if is_float else 0
        )
        bad = (~present[name] & ~nulls) | (present[name] & nulls & (not is_float))
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            msg = (
                "value for an array its turn does not declare"
                if not present[name][r]
                else "null in an array its turn declares"
            )
            raise InputError(msg, path=tok_file, row=r, field=column)
        if name == "phase" and len(vals) and (vals.min() < 0 or vals.max() >= len(PHASES)):
            r = int(np.flatnonzero((vals < 0) | (vals >= len(PHASES)))[0])
            raise InputError(_phase_code_error(vals[r]), path=tok_file, row=r, field=column)
        if name == "token_ids" and len(vals) and (vals[present[name]] < 0).any():
            r = int(np.flatnonzero(present[name] & (vals < 0))[0])
            raise InputError(_TOKEN_ID_RANGE, path=tok_file, row=r, field=column)
        if bad_value := _token_value_error(name, np.where(present[name], vals, 0)):
            r = bad_value[0]
            raise InputError(bad_value[1], path=tok_file, row=r, field=column)
        values[name] = vals
    nonfinite = np.zeros(total, dtype=bool)
    for name in TOKEN_FLOAT_FIELDS:
        nonfinite |= present[name] & ~np.isfinite(values[name])

    episodes: list[tuple[Episode, int]] = []
    if nonfinite.any() and nan_policy == "raise" and not build:
        r = int(np.flatnonzero(nonfinite)[0])
        name = next(
            n for n in TOKEN_FLOAT_FIELDS if present[n][r] and not np.isfinite(values[n][r])
        )
        raise InputError(
            f"non-finite value {values[name][r]} in episode {ids[expect_ep[r]]!r} turns["
            f"{expect_turn[r]}] token {expect_tok[r]} ({_NAN_HINT})",
            path=tok_file,
            row=r,
            field=_TOKEN_COLUMN[name],
        )
    if build:
        k = 0
        tw = _Where(tok_file)
        for h, turns in parsed:
            out_turns, dropped = [], 0
            for i, (turn, info) in enumerate(turns):
                if info is not None:
                    s, n = int(starts[k]), int(lens[k])
                    arrays = {a: values[a][s : s + n] for a in info["arrays"]}
                    f = f"episode {h['episode_id']!r} turns[{i}]"
                    arrays, d = _apply_nan_policy(arrays, nan_policy, tw, f, row0=s)
                    for a, arr in arrays.items():
                        setattr(turn, a, arr)
                    dropped += d
                    k += 1
                out_turns.append(turn)
            episode = Episode(turns=out_turns, **h)
            if dropped:
                _record_dropped(episode, dropped)
            episodes.append((episode, dropped))
    return ep_table, tok_table, episodes, nonfinite


def _loads(s: str, w: _Where, f: str) -> Any:
    try:
        return json.loads(s)
    except json.JSONDecodeError as err:
        raise w.err(f"invalid JSON ({err.msg} at column {err.colno})", f) from None
    except RecursionError:
        raise w.err(f"nested deeper than {MAX_NESTING} levels", f) from None


def iter_parts(
    path: str | Path, *, nan_policy: NanPolicy = "raise"
) -> Iterator[tuple[pa.Table, pa.Table]]:
    """Stream a trace store part by part: ``(episodes_table, tokens_table)`` per complete part.

    Tables follow the layout in :mod:`agentropy.trace.parquet` (raw columns; phases are int8
    codes; the ``turns`` and ``meta`` columns are JSON strings; the format-2 turn columns, which
    repeat the ``turns`` JSON, are left out). Each part is validated as it is read.
    ``nan_policy="drop"`` removes token rows with a non-finite float; their ``token_index``
    values are left as stored, so a turn's dropped count is its ``n_tokens`` minus its rows.
    Memory is bounded by the largest part.
    """
    _check_nan_policy(nan_policy)
    seen: dict[str, Path] = {}
    for _, ep_file, tok_file in _store_parts(path):
        ep_table, tok_table, _, bad = _decode_part(ep_file, tok_file, nan_policy, build=False)
        _check_unique(ep_table.column("episode_id").to_pylist(), seen, ep_file)
        if bad.any():  # only reached under nan_policy="drop"
            import pyarrow as pa

            tok_table = tok_table.filter(pa.array(~bad))
        yield ep_table, tok_table


def _sealed_part(ep_file: Path, tok_file: Path) -> tuple[pa.Table, pa.Table] | None:
    """One part read without re-validation, when its seal holds (:mod:`agentropy.trace.seal`).

    Returns the episodes table (all its columns: in a format-2 store, the turn columns that
    spare :meth:`TraceTable.from_arrow` the ``turns`` JSON) and the tokens table projected to
    :data:`ANALYSIS_COLUMNS`, or None when the part must be validated instead: no seal, a seal
    that does not match the files (an edit), or non-finite values (``nan_policy`` applies). The
    episodes file's columns are still type-checked (:func:`_read_table`), since the digest is over
    decoded values.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from agentropy.trace.seal import read_seal, seal_holds

    ep_table = _read_table(ep_file, None)
    seal = read_seal(ep_table)
    if seal is None:
        return None
    try:
        data = tok_file.read_bytes()
    except OSError:
        return None  # the validating path reports it
    if not seal_holds(seal, data, ep_table):
        return None
    try:
        tokens = pq.ParquetFile(pa.BufferReader(data)).read(columns=list(ANALYSIS_COLUMNS))
    except (OSError, pa.ArrowException):  # pragma: no cover (the bytes are the writer's)
        return None
    return ep_table, tokens


def iter_part_tables(
    path: str | Path,
    *,
    nan_policy: NanPolicy = "raise",
    validation: Validation = "seal",
) -> Iterator[TraceTable]:
    """Stream a trace store as one :class:`~agentropy.trace.TraceTable` per complete part.

    ``validation="seal"`` (the default): a part whose seal (:mod:`agentropy.trace.seal`) matches
    its files is not re-validated and only the token columns the table needs are decoded; every
    other part (no seal, edited, non-finite values) is validated as by :func:`iter_parts`, so bad
    input raises the same :class:`~agentropy.errors.InputError`. The next part is read in a
    background thread while the caller works on the current one (pyarrow and the checksum
    release the GIL), so memory is bounded by two parts. ``validation="full"`` validates every
    part and reads one part at a time: the reference path, for comparisons and for stores whose
    files you do not trust to be what the writer wrote.
    """
    yield from map_part_tables(path, _same, nan_policy=nan_policy, validation=validation)


def _same(table: TraceTable) -> TraceTable:
    return table


def map_part_tables(
    path: str | Path,
    fn: Callable[[TraceTable], _T],
    *,
    nan_policy: NanPolicy = "raise",
    validation: Validation = "seal",
    workers: int = 1,
) -> Iterator[_T]:
    """``fn(table)`` for each part's table of :func:`iter_part_tables`, in part order.

    With ``validation="seal"``, each part is read and ``fn`` applied in one of ``workers``
    background threads, ``workers`` parts ahead of the caller: parts are decoded (and, say,
    analysed) in parallel as far as pyarrow and numpy release the GIL, and memory is bounded by
    ``workers + 1`` parts and results. ``fn`` must be safe to call from several threads at once.
    Errors surface in part order, as with :func:`iter_part_tables`. ``validation="full"``
    reads and applies ``fn`` one part at a time in the calling thread.
    """
    from concurrent.futures import ThreadPoolExecutor

    _check_nan_policy(nan_policy)
    if validation not in VALIDATIONS:
        raise ValueError(f"validation must be one of {VALIDATIONS}, got {validation!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    source = str(path)
    if validation == "full":
        for ep_table, tok_table in iter_parts(path, nan_policy=nan_policy):
            yield fn(TraceTable.from_arrow(ep_table, tok_table, source=source))
        return

    def load(ep_file: Path, tok_file: Path) -> tuple[list[str], _T]:
        sealed = _sealed_part(ep_file, tok_file)
        if sealed is None:
            ep_table, tok_table, _, bad = _decode_part(ep_file, tok_file, nan_policy, build=False)
            if bad.any():  # only reached under nan_policy="drop"
                import pyarrow as pa

                tok_table = tok_table.filter(pa.array(~bad))
        else:
            ep_table, tok_table = sealed
        table = TraceTable.from_arrow(ep_table, tok_table, source=source)
        return table.episode_id, fn(table)

    parts = _store_parts(path)
    seen: dict[str, Path] = {}
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="agentropy-read")
    try:
        ahead = [pool.submit(load, *parts[k][1:]) for k in range(min(workers, len(parts)))]
        for k, (_, ep_file, _) in enumerate(parts):
            current = ahead.pop(0)
            if k + workers < len(parts):
                ahead.append(pool.submit(load, *parts[k + workers][1:]))
            ids, result = current.result()
            _check_unique(ids, seen, ep_file)
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def iter_token_batches(path: str | Path, *, nan_policy: NanPolicy = "raise") -> Iterator[pa.Table]:
    """The ``tokens`` table of each complete part of a store, in order (see :func:`iter_parts`)."""
    for _, tokens in iter_parts(path, nan_policy=nan_policy):
        yield tokens


def iter_episodes(path: str | Path, *, nan_policy: NanPolicy = "raise") -> Iterator[Episode]:
    """Stream the episodes of a trace store (or a JSONL file), one part in memory at a time."""
    for episode, _ in iter_episodes_counted(path, nan_policy=nan_policy):
        yield episode


def iter_episodes_counted(
    path: str | Path, *, nan_policy: NanPolicy = "raise"
) -> Iterator[tuple[Episode, int]]:
    """Like :func:`iter_episodes`, yielding ``(episode, tokens dropped from it while reading)``."""
    _check_nan_policy(nan_policy)
    p = Path(path)
    if not p.is_dir():
        _check_trace_file(p)
        yield from _iter_jsonl(p, nan_policy)
        return
    seen: dict[str, Path] = {}
    for _, ep_file, tok_file in _store_parts(p):
        _, _, episodes, _ = _decode_part(ep_file, tok_file, nan_policy, build=True)
        _check_unique([e.episode_id for e, _ in episodes], seen, ep_file)
        yield from episodes


def read_parquet(path: str | Path, *, nan_policy: NanPolicy = "raise") -> Episodes:
    """Read every complete part of a trace store into memory (see :func:`iter_episodes`)."""
    _check_nan_policy(nan_policy)
    out = Episodes()
    seen: dict[str, Path] = {}
    for _, ep_file, tok_file in _store_parts(path):
        _, _, episodes, _ = _decode_part(ep_file, tok_file, nan_policy, build=True)
        _check_unique([e.episode_id for e, _ in episodes], seen, ep_file)
        for episode, dropped in episodes:
            out.append(episode)
            out.n_dropped += dropped
    return out


def read_traces(
    paths: str | Path | Sequence[str | Path], *, nan_policy: NanPolicy = "raise"
) -> Episodes:
    """Read traces from one or more paths, detecting the format of each.

    A directory is a Parquet trace store; ``.jsonl``, ``.json`` (also ``.gz``) files are JSONL.
    Episode ids must be unique within each source (not across sources). ``n_dropped`` of the
    result sums the sources'.
    """
    _check_nan_policy(nan_policy)
    if isinstance(paths, str | Path):
        paths = [paths]
    if not paths:
        raise InputError("no trace files given")
    out = Episodes()
    for path in paths:
        p = Path(path)
        if p.is_dir():
            part = read_parquet(p, nan_policy=nan_policy)
        else:
            _check_trace_file(p)
            part = read_jsonl(p, nan_policy=nan_policy)
        out.extend(part)
        out.n_dropped += part.n_dropped
    return out
