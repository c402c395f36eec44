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

import contextlib
import gzip
import io
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from agentropy.errors import InputError
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
    _check_nan_policy,
    _episode_arrays,
    _parse_header,
    _parse_turn,
    _record_dropped,
    _Where,
)

__all__ = [
    "episode_from_dict",
    "episode_to_dict",
    "read_jsonl",
    "write_jsonl",
]


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
    if not isinstance(turns_in, list):
        raise w.err(f"expected a list of turns, got {_tname(turns_in)}", "turns")
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


def _open_text(path: Path, mode: str = "r", *, gz: bool | None = None) -> io.TextIOBase:
    if path.suffix == ".gz" if gz is None else gz:
        return gzip.open(path, mode + "t", encoding="utf-8")  # type: ignore[return-value]
    return open(path, mode, encoding="utf-8", newline="\n" if "w" in mode else None)


def _last_key(text: str) -> str | None:
    """The last JSON object key in ``text`` (names the field near a truncation)."""
    keys = re.findall(r'"((?:[^"\\]|\\.)*)"\s*:', text)
    return keys[-1] if keys else None


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError("no such file or directory", path=path)
    if path.is_dir():
        raise InputError("is a directory, expected a .jsonl file", path=path)


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


def _json_objects(p: Path) -> Iterator[tuple[_Where, Any]]:
    """(where, parsed object) per non-blank line; a ``.json`` file may hold one JSON array."""
    try:
        with _open_text(p) as fh:
            if p.suffix == ".json" or p.suffixes[-2:] == [".json", ".gz"]:
                text = fh.read()
                if text.lstrip().startswith("["):
                    yield from _json_array(p, text)
                    return
                lines: Iterable[str] = text.splitlines()
            else:
                lines = fh
            for lineno, raw in enumerate(lines, 1):
                if not raw.strip():
                    continue
                raw = raw.rstrip("\r\n")
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError as err:
                    key = _last_key(raw[: err.pos])
                    raise InputError(
                        f"invalid JSON: {err.msg} at column {err.colno} (truncated line?)",
                        path=p,
                        line=lineno,
                        field=key,
                    ) from None
                yield _Where(p, lineno), obj
    except UnicodeDecodeError as err:
        raise InputError(f"not UTF-8 text ({err.reason})", path=p) from None
    except (OSError, EOFError) as err:
        raise InputError(f"cannot read file ({err})", path=p) from None


def _json_array(p: Path, text: str) -> Iterator[tuple[_Where, Any]]:
    try:
        items = json.loads(text)
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


def write_jsonl(episodes: Iterable[Episode], path: str | Path) -> int:
    """Write episodes as JSONL (one per line; ``.gz`` compresses); returns how many were written.

    The file is written under a temporary name and renamed into place, so a crash never leaves
    a half-written file behind. Raises :class:`InputError` for a structurally invalid episode.
    """
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    n = 0
    seen: set[str] = set()
    try:
        with _open_text(tmp, "w", gz=p.suffix == ".gz") as fh:
            for episode in episodes:
                d = episode_to_dict(episode)
                if d["episode_id"] in seen:
                    raise InputError(
                        f"duplicate episode_id {d['episode_id']!r}", field="episode_id"
                    )
                seen.add(d["episode_id"])
                fh.write(_dumps(d, episode.episode_id, "meta"))
                fh.write("\n")
                n += 1
        os.replace(tmp, p)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
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
