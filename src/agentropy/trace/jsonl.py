"""JSONL interchange: the public import/export format, one episode per line (DESIGN.md).

Minimal valid episode::

    {"episode_id": "e1", "success": true,
     "turns": [{"role": "assistant", "entropy": [0.2, 0.1, 0.3]},
               {"role": "tool", "name": "lookup", "status": "error", "content": "upstream failure"},
               {"role": "assistant", "entropy": [1.4, 1.1, 0.6, 0.2]}]}

Episode keys: ``episode_id`` (string, required), ``turns`` (list, required), ``task_id``,
``level``, ``step``, ``policy``, ``success``, ``reward``, ``fault_kinds``, ``latency_s``, ``meta``.
Assistant turns: ``role``, ``entropy`` (required list of numbers), ``token_ids``, ``logprob``,
``sampling_entropy``, ``temperature`` (lists of the same length), ``phase`` (list of phase
*names*), ``text``, ``wall_s``, ``meta``. Tool turns are flat: ``role``, ``name``, ``arguments``
(object), ``status`` (``ok`` | ``error`` | ``unexpected``), ``content``, ``latency_s``, ``wall_s``,
``meta``. A JSON ``null`` inside a float list means "missing" and is treated as NaN. Unknown keys
are an error (nothing is silently dropped; put extras under ``meta``). Blank lines are skipped.
``.json`` files holding one JSON array of episodes and ``.gz``-compressed files also load.
Writers emit ``NaN``/``Infinity`` literals for non-finite floats (Python's JSON dialect).

Readers raise :class:`~agentropy.errors.InputError` naming the file, the line (1-based; items of
a ``.json`` array are rows, 0-based) and the field; the field rules are
:mod:`agentropy.trace.validate`'s.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import stat
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np

from agentropy.errors import InputError, os_reason
from agentropy.trace.model import (
    PHASES,
    TOKEN_ARRAY_FIELDS,
    Episode,
    Episodes,
    NanPolicy,
    _assistant_extras,
    _episode_header,
    _tname,
    _tool_turn_dict,
)
from agentropy.trace.validate import (
    MAX_NESTING,
    _check_nan_policy,
    _episode_arrays,
    _parse_header,
    _parse_turn,
    _record_dropped,
    _turns_error,
    _Where,
)

__all__ = [
    "episode_from_dict",
    "episode_to_dict",
    "read_jsonl",
    "write_jsonl",
]

#: Longest JSONL line (one episode), and largest ``.json`` file, read: a bound on memory that a
#: runaway input (a link to a device, a file without newlines) hits with a clear message.
MAX_LINE_BYTES = 256 * 2**20


def _json_default(value: Any) -> Any:
    """Let numpy scalars and arrays inside ``meta`` serialise as plain JSON."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _dumps(obj: Any, episode_id: str, field: str) -> str:
    """JSON text of ``obj``; an InputError naming the field if it is not serialisable."""
    try:
        return json.dumps(obj, ensure_ascii=False, default=_json_default)
    except (TypeError, ValueError) as err:
        raise InputError(
            f"episode {episode_id!r}: not JSON-serialisable ({err})", field=field
        ) from None


def episode_to_dict(episode: Episode) -> dict[str, Any]:
    """The JSONL form of an episode (a JSON-ready dict); validates structure first.

    ``None`` fields and empty ``fault_kinds`` / ``meta`` are omitted; phases become names.
    """
    all_arrays = _episode_arrays(episode)
    d = _episode_header(episode)
    turns = []
    for turn, arrays in zip(episode.turns, all_arrays, strict=True):
        if arrays is None:
            turns.append(_tool_turn_dict(turn))
            continue
        td: dict[str, Any] = {"role": "assistant"}
        for name in TOKEN_ARRAY_FIELDS:
            if name in arrays:
                arr = arrays[name]
                td[name] = np.asarray(PHASES)[arr].tolist() if name == "phase" else arr.tolist()
        turns.append(_assistant_extras(turn, td))
    d["turns"] = turns
    return d


def _episode_from_obj(d: Any, w: _Where, nan_policy: str) -> tuple[Episode, int]:
    if not isinstance(d, Mapping):
        raise w.err(f"expected an episode object, got {_tname(d)}")
    header = _parse_header(d, w)
    if "turns" not in d:
        raise w.err("missing 'turns' (a list of turn objects)", "turns")
    turns_in = d["turns"]
    if msg := _turns_error(turns_in):
        raise w.err(msg, "turns")
    turns, dropped = [], 0
    for i, td in enumerate(turns_in):
        turn, n, _ = _parse_turn(td, w, f"turns[{i}]", nan_policy, store=False)
        turns.append(turn)
        dropped += n
    episode = Episode(turns=turns, **header)
    if dropped:
        _record_dropped(episode, dropped)
    return episode, dropped


def episode_from_dict(
    d: Mapping[str, Any],
    *,
    nan_policy: NanPolicy = "raise",
    path: str | Path | None = None,
    line: int | None = None,
) -> Episode:
    """Build an :class:`Episode` from its JSONL dict form, validating every field.

    Raises :class:`InputError` naming ``path``/``line`` (when given) and the field. Under
    ``nan_policy="drop"`` the number of dropped tokens is in ``meta["dropped_nonfinite"]``.
    """
    _check_nan_policy(nan_policy)
    return _episode_from_obj(d, _Where(path, line), nan_policy)[0]


def _open_text(path: Path, mode: Literal["r", "w"] = "r", *, gz: bool | None = None) -> TextIO:
    if path.suffix == ".gz" if gz is None else gz:
        return gzip.open(path, "wt" if mode == "w" else "rt", encoding="utf-8")
    return open(path, mode, encoding="utf-8", newline="\n" if "w" in mode else None)


def _last_key(text: str) -> str | None:
    """The last JSON object key in ``text`` (names the field near a truncation)."""
    keys = re.findall(r'"((?:[^"\\]|\\.)*)"\s*:', text)
    return keys[-1] if keys else None


def _check_file(path: Path) -> None:
    """An existing regular file (a FIFO or a device would block or never end: refused up front)."""
    try:
        mode = path.stat().st_mode  # follows symlinks: a link to /dev/zero is a device
    except FileNotFoundError:
        raise InputError("no such file or directory", path=path) from None
    except OSError as err:
        raise InputError(f"cannot read file ({os_reason(err)})", path=path) from None
    if stat.S_ISDIR(mode):
        raise InputError("is a directory, expected a .jsonl file", path=path)
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device or special file"
        raise InputError(f"not a regular file ({kind})", path=path)


def read_jsonl(path: str | Path, *, nan_policy: NanPolicy = "raise") -> Episodes:
    """Read a JSONL trace (one episode per line; ``.gz`` ok; a ``.json`` array also loads).

    Raises :class:`InputError` naming the file, line and field for any bad input, including an
    empty file. Episode ids must be unique within the file.
    """
    out = Episodes()
    for episode, dropped in _iter_jsonl(path, nan_policy):
        out.append(episode)
        out.n_dropped += dropped
    return out


def _iter_jsonl(path: str | Path, nan_policy: str) -> Iterator[tuple[Episode, int]]:
    _check_nan_policy(nan_policy)
    p = Path(path)
    _check_file(p)
    seen: dict[str, str] = {}
    for where, obj in _json_objects(p):
        episode, dropped = _episode_from_obj(obj, where, nan_policy)
        label = f"line {where.line}" if where.line is not None else f"row {where.row}"
        first = seen.setdefault(episode.episode_id, label)
        if first != label:
            raise where.err(
                f"duplicate episode_id {episode.episode_id!r} (first seen on {first})",
                "episode_id",
            )
        yield episode, dropped
    if not seen:
        raise InputError(
            "empty file: no episodes (expected one JSON episode object per line)", path=p
        )


def _read_line(fh: Any, p: Path, lineno: int) -> bytes:
    """One line (bytes, newline kept), at most :data:`MAX_LINE_BYTES` long."""
    raw = fh.readline(MAX_LINE_BYTES + 1)
    if len(raw) > MAX_LINE_BYTES:
        raise InputError(
            f"line longer than {MAX_LINE_BYTES // 2**20} MiB (one episode per line expected)",
            path=p,
            line=lineno,
        )
    return raw  # type: ignore[no-any-return]


def _decode(raw: bytes, p: Path, lineno: int | None) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(
            f"not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1})",
            path=p,
            line=lineno,
        ) from None


def _parse_line(text: str, p: Path, lineno: int) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        key = _last_key(text[: err.pos])
        raise InputError(
            f"invalid JSON: {err.msg} at column {err.colno} (truncated line?)",
            path=p,
            line=lineno,
            field=key,
        ) from None
    except RecursionError:
        raise InputError(
            f"JSON nested too deeply (at most {MAX_NESTING} levels)", path=p, line=lineno
        ) from None


def _json_objects(p: Path) -> Iterator[tuple[_Where, Any]]:
    """(where, parsed object) per non-blank line; a ``.json`` file may hold one JSON array.

    Lines are split on ``\n`` only (bytes), so U+2028 or U+0085 inside a JSON string is not a
    line break, and a bad UTF-8 byte is reported with its line. Each line is bounded by
    :data:`MAX_LINE_BYTES`, so a runaway input fails with a message rather than memory.
    """
    gz = p.suffix == ".gz"
    is_json = p.suffix == ".json" or p.suffixes[-2:] == [".json", ".gz"]
    try:
        with gzip.open(p, "rb") if gz else open(p, "rb") as fh:
            if is_json:
                head = fh.read(MAX_LINE_BYTES + 1)
                if len(head) > MAX_LINE_BYTES:
                    raise InputError(
                        f"larger than {MAX_LINE_BYTES // 2**20} MiB: write one episode per line "
                        "(.jsonl) instead",
                        path=p,
                    )
                if head.lstrip().startswith(b"["):
                    yield from _json_array(p, _decode(head, p, None))
                    return
                fh = io.BytesIO(head)  # type: ignore[assignment]  # any binary stream
            lineno = 0
            while raw := _read_line(fh, p, lineno + 1):
                lineno += 1
                if not raw.strip():
                    continue
                text = _decode(raw, p, lineno).rstrip("\r\n")
                yield _Where(p, lineno), _parse_line(text, p, lineno)
    except (OSError, EOFError, zlib.error) as err:
        what = os_reason(err) if isinstance(err, OSError) and err.errno else str(err)
        raise InputError(f"cannot read file ({what})", path=p) from None


def _json_array(p: Path, text: str) -> Iterator[tuple[_Where, Any]]:
    try:
        items = json.loads(text)
    except RecursionError:
        raise InputError(f"JSON nested too deeply (at most {MAX_NESTING} levels)", path=p) from None
    except json.JSONDecodeError as err:
        raise InputError(
            f"invalid JSON ({err.msg} at column {err.colno})",
            path=p,
            line=err.lineno,
            field=_last_key(text[: err.pos]),
        ) from None
    for i, obj in enumerate(items):
        # Items of a JSON array are reported as rows (0-based), as they have no line of their own.
        yield _Where(p, row=i), obj


def write_jsonl(episodes: Iterable[Episode], path: str | Path, *, force: bool = True) -> int:
    """Write episodes as JSONL (one per line; ``.gz`` compresses); returns how many were written.

    Written under a temporary name in the same folder, fsynced and renamed into place
    (:func:`agentropy.outputs.atomic_path`), so a crash or a full disk never leaves a half-written
    file behind nor damages an earlier one. ``force=False`` refuses to replace an existing file.
    Raises :class:`InputError` for a structurally invalid episode and
    :class:`~agentropy.errors.OutputError` when the file cannot be written.
    """
    from agentropy.outputs import atomic_path

    p = Path(path)
    n = 0
    seen: set[str] = set()
    with atomic_path(p, force=force) as tmp, _open_text(tmp, "w", gz=p.suffix == ".gz") as fh:
        for episode in episodes:
            d = episode_to_dict(episode)
            if d["episode_id"] in seen:
                raise InputError(f"duplicate episode_id {d['episode_id']!r}", field="episode_id")
            seen.add(d["episode_id"])
            fh.write(_dumps(d, episode.episode_id, "meta"))
            fh.write("\n")
            n += 1
    return n


def _check_trace_file(p: Path) -> None:
    """A path that is not a directory must be an existing JSONL/JSON file."""
    if not p.exists():
        raise InputError("no such file or directory", path=p)
    if p.suffix == ".parquet":
        raise InputError(
            "a single .parquet file is not a trace store; pass the store directory "
            "(the folder holding episodes/ and tokens/)",
            path=p,
        )
    suffixes = [x for x in p.suffixes if x != ".gz"]
    if not suffixes or suffixes[-1] not in (".jsonl", ".json"):
        raise InputError(
            "unknown trace format (expected a .jsonl/.json file or a trace store directory)",
            path=p,
        )
