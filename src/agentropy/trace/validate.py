"""Every field rule of the trace data model, in one place, used by every constructor and reader.

The rules of DESIGN.md ("Data model"): roles, tool statuses, phase names and codes, token ids,
per-token arrays of equal length, non-negative seconds, known keys only (extras go under
``meta``), and the non-finite policy (``nan_policy``: reject, or drop and count). They are applied
to in-memory objects (:func:`validate_episode`, :class:`~agentropy.trace.Turn` construction) and to
the dicts that the JSONL and Parquet readers decode, so that a rule and its error message exist
once. Errors are :class:`~agentropy.errors.InputError` naming where the value came from
(:class:`_Where`: file, line or row) and the field (e.g. ``turns[2].entropy[5]``).

The underscored helpers are private to the :mod:`agentropy.trace` package (the JSONL and Parquet
modules use them); :func:`validate_episode` is the public entry point.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np

from agentropy.errors import InputError
from agentropy.trace.model import (
    _ARRAY_DTYPE,
    DROPPED_META_KEY,
    NAN_POLICIES,
    PHASE_CODE,
    PHASES,
    ROLES,
    TOKEN_ARRAY_FIELDS,
    TOKEN_FLOAT_FIELDS,
    TOOL_STATUSES,
    Episode,
    ToolCall,
    Turn,
    _episode_header,
    _tname,
)

__all__ = [
    "validate_episode",
]


# =====================================================================================
# The rules: each returns None for a good value, else the message (callers say where)
# =====================================================================================

#: How to get past a non-finite value, appended to every such error.
_NAN_HINT = "use nan_policy='drop' (CLI: --nan-policy drop) to drop such tokens"
_NEED_ENTROPY = "assistant turns need per-token 'entropy'"
_TOKEN_ID_RANGE = "token id out of range (expected 0 <= id < 2**63)"


#: Slack of the sign rules on entropies and log-probabilities (nats): fp32 rounding of an exact
#: 0 (a one-hot distribution) can land a few ulps on the wrong side; a real violation is larger.
SIGN_TOL = 1e-4
#: Deepest nesting of JSON objects/lists accepted in ``meta`` and tool ``arguments``: deeper
#: values are refused with a clear message (Python's JSON tools recurse and would crash).
MAX_NESTING = 64
#: Largest integer accepted for ``level`` and ``step`` (they are stored as int64).
MAX_INT = 2**63 - 1

#: Value rules of the per-token float arrays (DESIGN.md data model), as (violation test, rule).
#: They apply to finite values; NaN and infinities fall under ``nan_policy`` instead.
TOKEN_VALUE_RULES: dict[str, tuple[Any, str]] = {
    "entropy": (lambda a: a < -SIGN_TOL, "entropy must be >= 0 nats"),
    "sampling_entropy": (lambda a: a < -SIGN_TOL, "sampling entropy must be >= 0 nats"),
    "logprob": (lambda a: a > SIGN_TOL, "a log-probability must be <= 0"),
    "temperature": (lambda a: a < 0, "temperature must be >= 0 (0 = greedy)"),
}
_NO_TOKENS = "an assistant turn needs at least one token"
_NO_TURNS = "an episode needs at least one turn"


def _token_value_error(name: str, values: np.ndarray) -> tuple[int, str] | None:
    """The first finite value of per-token array ``name`` breaking its rule: (index, message)."""
    rule = TOKEN_VALUE_RULES.get(name)
    if rule is None or values.size == 0:
        return None
    with np.errstate(invalid="ignore"):
        bad = rule[0](values) & np.isfinite(values)
    if not bad.any():
        return None
    i = int(np.flatnonzero(bad)[0])
    return i, f"{rule[1]}, got {float(values[i]):g}"


def _nesting_error(value: Any, limit: int = MAX_NESTING) -> str | None:
    """A JSON value nested deeper than ``limit`` levels (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        obj, depth = stack.pop()
        if isinstance(obj, Mapping | list):
            if depth > limit:
                return f"nested deeper than {limit} levels"
            children = obj.values() if isinstance(obj, Mapping) else obj
            stack.extend((v, depth + 1) for v in children)
    return None


def _turns_error(turns: Any) -> str | None:
    """An episode's ``turns`` is a non-empty list."""
    if not isinstance(turns, list):
        return f"expected a list of turns, got {_tname(turns)}"
    return None if turns else _NO_TURNS


def _role_error(role: Any) -> str | None:
    """A role is one of :data:`~agentropy.trace.ROLES`."""
    if not isinstance(role, str):
        return f"role must be a string, got {_tname(role)}"
    if role not in ROLES:
        return f"unknown role {role!r} (expected one of: {', '.join(ROLES)})"
    return None


def _status_error(status: Any) -> str | None:
    """A tool status is absent or one of :data:`~agentropy.trace.TOOL_STATUSES`."""
    if status is None or status in TOOL_STATUSES:
        return None
    return f"bad status {status!r} (expected one of: {', '.join(TOOL_STATUSES)})"


def _seconds_error(value: Any) -> str | None:
    """A duration is absent or a finite non-negative number of seconds (not a boolean)."""
    if value is None or (
        not isinstance(value, bool)
        and isinstance(value, int | float | np.integer | np.floating)
        and 0 <= value < float("inf")
    ):
        return None
    return f"expected a finite non-negative number of seconds, got {value!r}"


def _phase_code_error(code: Any) -> str:
    """Message for a phase code outside ``0..len(PHASES) - 1``."""
    return f"unknown phase code {code} (expected 0..{len(PHASES) - 1}: {', '.join(PHASES)})"


def _lengths_error(lengths: Mapping[str, int]) -> tuple[str, str] | None:
    """Per-token arrays of a turn have equal lengths: ``(message, odd array)`` if not."""
    if not lengths:
        return None
    ref = "entropy" if "entropy" in lengths else next(iter(lengths))
    odd = next((n for n, k in lengths.items() if k != lengths[ref]), None)
    if odd is None:
        return None
    msg = (
        f"per-token arrays have unequal lengths: {ref} has {lengths[ref]}, {odd} has {lengths[odd]}"
    )
    return msg, odd


# =====================================================================================
# In-memory objects
# =====================================================================================


def _coerce_array(value: Any, name: str, where: str) -> np.ndarray:
    """A per-token array (list, tuple or ndarray) as a 1-D array of its documented dtype."""
    dtype = _ARRAY_DTYPE[name]
    if name == "phase" and not isinstance(value, np.ndarray):
        value = list(value) if isinstance(value, tuple) else value
        if isinstance(value, list) and any(isinstance(v, str) for v in value):
            value = [PHASE_CODE.get(v, -1) if isinstance(v, str) else v for v in value]
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as err:
        raise InputError(f"not a 1-D array ({err})", field=where) from None
    if arr.ndim != 1:
        raise InputError(f"expected a 1-D array, got shape {arr.shape}", field=where)
    if arr.size == 0:
        return np.empty(0, dtype=dtype)
    kind = np.dtype(dtype).kind
    if kind == "f":
        if arr.dtype.kind not in "fiu":
            raise InputError(f"expected numbers, got dtype {arr.dtype}", field=where)
        with np.errstate(over="ignore"):
            return arr.astype(dtype, copy=False)
    if arr.dtype.kind not in "iu":
        raise InputError(f"expected integers, got dtype {arr.dtype}", field=where)
    if name == "phase":
        if arr.min() < 0 or arr.max() >= len(PHASES):
            bad = int(np.flatnonzero((arr < 0) | (arr >= len(PHASES)))[0])
            raise InputError(_phase_code_error(arr[bad]), field=f"{where}[{bad}]")
    elif arr.min() < 0 or (arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max):
        bad = int(np.flatnonzero(arr < 0)[0]) if arr.min() < 0 else int(np.argmax(arr))
        raise InputError(_TOKEN_ID_RANGE, field=f"{where}[{bad}]")
    return arr.astype(dtype, copy=False)


def _turn_arrays(turn: Turn, where: str, *, require_entropy: bool) -> dict[str, np.ndarray]:
    """Check a turn and return its per-token arrays coerced to their dtypes (role, lengths...)."""
    if msg := _role_error(turn.role):
        raise InputError(msg, field=f"{where}.role")
    arrays = {
        name: _coerce_array(getattr(turn, name), name, f"{where}.{name}")
        for name in TOKEN_ARRAY_FIELDS
        if getattr(turn, name) is not None
    }
    if turn.role == "tool":
        if arrays:
            raise InputError(
                "tool turns carry no per-token arrays (tool tokens are never policy tokens)",
                field=f"{where}.{next(iter(arrays))}",
            )
        if msg := _status_error(turn.status):
            raise InputError(msg, field=f"{where}.status")
        if turn.call is not None and not isinstance(turn.call, ToolCall):
            raise InputError(
                f"expected a ToolCall or None, got {_tname(turn.call)}", field=f"{where}.call"
            )
    else:
        for name in ("call", "status", "content", "latency_s"):
            if getattr(turn, name) is not None:
                raise InputError(
                    f"'{name}' belongs to tool turns, not assistant turns", field=f"{where}.{name}"
                )
        if require_entropy and "entropy" not in arrays:
            raise InputError(_NEED_ENTROPY, field=f"{where}.entropy")
        if unequal := _lengths_error({n: int(a.shape[0]) for n, a in arrays.items()}):
            raise InputError(unequal[0], field=f"{where}.{unequal[1]}")
        if require_entropy and arrays["entropy"].size == 0:
            raise InputError(_NO_TOKENS, field=f"{where}.entropy")
        for name, arr in arrays.items():
            if bad := _token_value_error(name, arr):
                raise InputError(bad[1], field=f"{where}.{name}[{bad[0]}]")
    if not isinstance(turn.meta, Mapping):
        raise InputError(f"expected an object, got {_tname(turn.meta)}", field=f"{where}.meta")
    for name in ("text", "content"):
        value = getattr(turn, name)
        if value is not None and not isinstance(value, str):
            raise InputError(f"expected a string, got {_tname(value)}", field=f"{where}.{name}")
    for name in ("latency_s", "wall_s"):
        if msg := _seconds_error(getattr(turn, name)):
            raise InputError(msg, field=f"{where}.{name}")
    return arrays


def validate_episode(episode: Episode) -> None:
    """Check an in-memory episode's structure; raise :class:`InputError` naming the field.

    Checks ids, roles, statuses, phase codes, that the episode has turns, that assistant turns
    have ``entropy`` with at least one token and per-token arrays of equal lengths, and the value
    rules of :data:`TOKEN_VALUE_RULES` on finite values (NaN entropies are left to the readers'
    ``nan_policy``).
    """
    _episode_arrays(episode)


def _episode_arrays(episode: Episode) -> list[dict[str, np.ndarray] | None]:
    """Validate an episode; per turn, its coerced arrays (None for tool turns)."""
    if not isinstance(episode, Episode):
        raise InputError(f"expected an Episode, got {_tname(episode)}")
    eid = episode.episode_id
    if not isinstance(eid, str) or not eid:
        raise InputError(f"episode_id must be a non-empty string, got {eid!r}", field="episode_id")
    if not isinstance(episode.turns, list):
        raise InputError(f"episode {eid!r}: turns must be a list", field="turns")
    if not episode.turns:
        raise InputError(f"episode {eid!r}: {_NO_TURNS}", field="turns")
    try:
        _parse_header(_episode_header(episode), _NOWHERE)
    except InputError as err:
        raise InputError(f"episode {eid!r}: {err.message}", field=err.field) from None
    out: list[dict[str, np.ndarray] | None] = []
    for i, turn in enumerate(episode.turns):
        if not isinstance(turn, Turn):
            raise InputError(
                f"episode {eid!r}: expected a Turn, got {_tname(turn)}", field=f"turns[{i}]"
            )
        try:
            arrays = _turn_arrays(turn, f"turns[{i}]", require_entropy=True)
        except InputError as err:
            raise InputError(f"episode {eid!r}: {err.message}", field=err.field) from None
        out.append(arrays if turn.role == "assistant" else None)
    return out


# =====================================================================================
# Dicts decoded by the readers (JSONL lines, Parquet ``turns`` JSON)
# =====================================================================================


class _Where:
    """Where a dict came from (file, line or row), to build InputErrors."""

    __slots__ = ("line", "path", "row")

    def __init__(self, path: str | Path | None, line: int | None = None, row: int | None = None):
        self.path, self.line, self.row = path, line, row

    def err(self, message: str, field: str | None = None) -> InputError:
        return InputError(message, path=self.path, line=self.line, row=self.row, field=field)


_NOWHERE = _Where(None)

_EPISODE_KEYS = frozenset(
    {
        "episode_id",
        "turns",
        "task_id",
        "level",
        "step",
        "policy",
        "success",
        "reward",
        "fault_kinds",
        "latency_s",
        "meta",
    }
)
_ASSISTANT_KEYS = frozenset({"role", *TOKEN_ARRAY_FIELDS, "text", "wall_s", "meta"})
_ASSISTANT_STORE_KEYS = frozenset({"role", "n_tokens", "arrays", "text", "wall_s", "meta"})
_TOOL_KEYS = frozenset(
    {"role", "name", "arguments", "status", "content", "latency_s", "wall_s", "meta"}
)


def _check_keys(d: Mapping[str, Any], allowed: frozenset[str], w: _Where, prefix: str) -> None:
    for key in d:
        if key not in allowed:
            raise w.err(
                f"unknown field {key!r} (allowed: {', '.join(sorted(allowed))}; "
                "put extras under 'meta')",
                f"{prefix}{key}",
            )


_KIND_NAME = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "nonneg": "a number",
    "bool": "a boolean (true/false)",
    "dict": "an object",
}


def _opt(d: Mapping[str, Any], key: str, kind: str, w: _Where, f: str) -> Any:
    """``d[key]`` checked against ``kind`` (None if absent or null)."""
    value = d.get(key)
    if value is None:
        return None
    ok = {
        "str": lambda v: isinstance(v, str),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "nonneg": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "dict": lambda v: isinstance(v, Mapping),
    }[kind](value)
    if not ok:
        raise w.err(f"expected {_KIND_NAME[kind]}, got {_tname(value)}", f)
    if kind in ("float", "nonneg"):
        try:
            value = float(value)
        except OverflowError:
            raise w.err("number too large for a float", f) from None
        if kind == "nonneg" and (msg := _seconds_error(value)):
            raise w.err(msg, f)
        if kind == "float" and not np.isfinite(value):
            raise w.err(f"expected a finite number, got {value}", f)
    elif kind == "int" and not 0 <= value <= MAX_INT:
        raise w.err(f"expected an integer in 0..2**63-1, got {_short(value)}", f)
    elif kind == "dict" and (msg := _nesting_error(value)):
        raise w.err(msg, f)
    return value


def _short(value: Any, limit: int = 40) -> str:
    """``repr`` of a value, cut to ``limit`` characters (a 401-digit number stays one line)."""
    try:
        text = repr(value)
    except ValueError:  # int too large to convert to str
        return "a huge number"
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _list_array(value: Any, w: _Where, f: str, what: str, dtype: Any) -> np.ndarray | None:
    """A JSON list (else an error naming its items, ``what``) as numpy: an empty ``dtype`` array
    for ``[]``, ``np.asarray(value)`` otherwise, None if numpy cannot make one array of it."""
    if not isinstance(value, list):
        raise w.err(f"expected a list of {what}, got {_tname(value)}", f)
    if not value:
        return np.empty(0, dtype=dtype)
    try:
        return np.asarray(value)
    except ValueError:
        return None


def _has_bool(values: list[Any]) -> bool:
    return any(type(x) is bool for x in values)


def _float_list(value: Any, w: _Where, f: str) -> np.ndarray:
    """A JSON list of numbers (null = missing = NaN) as float32."""
    arr = _list_array(value, w, f, "numbers", np.float32)
    # numpy reads true/false as 1/0: JSON booleans are not numbers, so they take the slow path.
    if arr is not None and arr.ndim == 1 and arr.dtype.kind in "fiu" and not _has_bool(value):
        with np.errstate(over="ignore"):
            return arr.astype(np.float32)
    out = np.empty(len(value), dtype=np.float32)
    with np.errstate(over="ignore"):
        for i, x in enumerate(value):
            if x is None:
                out[i] = np.nan
            elif isinstance(x, bool) or not isinstance(x, int | float):
                raise w.err(f"expected a number, got {_tname(x)}", f"{f}[{i}]")
            else:
                try:
                    out[i] = x
                except OverflowError:
                    raise w.err("number too large for a float", f"{f}[{i}]") from None
    return out


def _int_list(value: Any, w: _Where, f: str) -> np.ndarray:
    arr = _list_array(value, w, f, "integers", np.int64)
    if arr is None or arr.ndim != 1 or arr.dtype.kind not in "iu" or _has_bool(value):
        for i, x in enumerate(value):
            if isinstance(x, bool) or not isinstance(x, int):
                raise w.err(f"expected an integer token id, got {_tname(x)}", f"{f}[{i}]")
        raise w.err(_TOKEN_ID_RANGE, f)
    try:
        return _coerce_array(arr, "token_ids", f)
    except InputError as err:
        raise w.err(err.message, err.field) from None


def _phase_list(value: Any, w: _Where, f: str) -> np.ndarray:
    if not isinstance(value, list):
        raise w.err(f"expected a list of phase names, got {_tname(value)}", f)
    codes = np.empty(len(value), dtype=np.int8)
    for i, x in enumerate(value):
        code = PHASE_CODE.get(x) if isinstance(x, str) else None
        if code is None:
            what = repr(x) if isinstance(x, str) else f"a {_tname(x)}"
            raise w.err(f"unknown phase {what} (expected one of: {', '.join(PHASES)})", f"{f}[{i}]")
        codes[i] = code
    return codes


def _apply_nan_policy(
    arrays: dict[str, np.ndarray], nan_policy: str, w: _Where, f: str, row0: int | None = None
) -> tuple[dict[str, np.ndarray], int]:
    """Reject or drop tokens with a non-finite float; returns (arrays, n_dropped).

    ``row0``: when given (Parquet), errors name ``row0 + index`` as the row.
    """
    checked = [arrays[n] for n in TOKEN_FLOAT_FIELDS if n in arrays]
    if not checked:
        return arrays, 0
    finite = np.isfinite(checked[0])
    for arr in checked[1:]:
        finite &= np.isfinite(arr)
    if finite.all():
        return arrays, 0
    if nan_policy == "raise":
        i = int(np.flatnonzero(~finite)[0])
        name = next(n for n in TOKEN_FLOAT_FIELDS if n in arrays and not np.isfinite(arrays[n][i]))
        value = arrays[name][i]
        if row0 is None:
            raise w.err(f"non-finite value {value} ({_NAN_HINT})", f"{f}.{name}[{i}]")
        raise InputError(
            f"non-finite value {value} in token {i} of {f} ({_NAN_HINT})",
            path=w.path,
            row=row0 + i,
            field=name,
        )
    return {n: a[finite] for n, a in arrays.items()}, int((~finite).sum())


def _parse_turn(
    d: Any, w: _Where, f: str, nan_policy: str, *, store: bool
) -> tuple[Turn, int, dict[str, Any] | None]:
    """One turn dict -> (Turn, n_dropped, store_info). ``store``: the Parquet ``turns`` JSON form.

    In store form assistant turns have no arrays; ``store_info`` is ``{"n_tokens", "arrays"}``.
    """
    if not isinstance(d, Mapping):
        raise w.err(f"expected a turn object, got {_tname(d)}", f)
    if "role" not in d:
        raise w.err(f"missing 'role' (expected one of: {', '.join(ROLES)})", f"{f}.role")
    role = d["role"]
    if msg := _role_error(role):
        raise w.err(msg, f"{f}.role")
    meta = _opt(d, "meta", "dict", w, f"{f}.meta")
    meta = {} if meta is None else dict(meta)
    wall_s = _opt(d, "wall_s", "nonneg", w, f"{f}.wall_s")
    if role == "tool":
        _check_keys(d, _TOOL_KEYS, w, f"{f}.")
        name = _opt(d, "name", "str", w, f"{f}.name")
        arguments = _opt(d, "arguments", "dict", w, f"{f}.arguments")
        if name is None and arguments is not None:
            raise w.err("'arguments' given without a tool 'name'", f"{f}.name")
        status = d.get("status")
        if msg := _status_error(status):
            raise w.err(msg, f"{f}.status")
        call = None if name is None else ToolCall(name, dict(arguments or {}))
        turn = Turn(
            role="tool",
            call=call,
            status=status,
            content=_opt(d, "content", "str", w, f"{f}.content"),
            latency_s=_opt(d, "latency_s", "nonneg", w, f"{f}.latency_s"),
            wall_s=wall_s,
            meta=meta,
        )
        return turn, 0, None
    text = _opt(d, "text", "str", w, f"{f}.text")
    if store:
        _check_keys(d, _ASSISTANT_STORE_KEYS, w, f"{f}.")
        n = d.get("n_tokens")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise w.err(f"expected a token count >= 1, got {_short(n)}", f"{f}.n_tokens")
        if n == 0:
            raise w.err(_NO_TOKENS, f"{f}.n_tokens")
        names = d.get("arrays")
        if not isinstance(names, list) or any(x not in TOKEN_ARRAY_FIELDS for x in names):
            raise w.err(f"expected a list of per-token array names, got {names!r}", f"{f}.arrays")
        if "entropy" not in names:
            raise w.err(_NEED_ENTROPY, f"{f}.arrays")
        turn = Turn(role="assistant", text=text, wall_s=wall_s, meta=meta)
        return turn, 0, {"n_tokens": n, "arrays": names}
    _check_keys(d, _ASSISTANT_KEYS, w, f"{f}.")
    if d.get("entropy") is None:
        raise w.err(f"{_NEED_ENTROPY} (a list of numbers)", f"{f}.entropy")
    arrays: dict[str, np.ndarray] = {}
    for name in TOKEN_ARRAY_FIELDS:
        value = d.get(name)
        if value is None:
            continue
        if name == "token_ids":
            arrays[name] = _int_list(value, w, f"{f}.{name}")
        elif name == "phase":
            arrays[name] = _phase_list(value, w, f"{f}.{name}")
        else:
            arrays[name] = _float_list(value, w, f"{f}.{name}")
    if unequal := _lengths_error({n: len(a) for n, a in arrays.items()}):
        raise w.err(unequal[0], f"{f}.{unequal[1]}")
    if len(arrays["entropy"]) == 0:
        raise w.err(_NO_TOKENS, f"{f}.entropy")
    for name, arr in arrays.items():
        if bad := _token_value_error(name, arr):
            raise w.err(bad[1], f"{f}.{name}[{bad[0]}]")
    arrays, dropped = _apply_nan_policy(arrays, nan_policy, w, f)
    # The keys are TOKEN_ARRAY_FIELDS, each an array field of Turn: mypy cannot match a dict's
    # keys to parameters, so it would check every array against every parameter.
    fields = cast("dict[str, Any]", arrays)
    return Turn(role="assistant", text=text, wall_s=wall_s, meta=meta, **fields), dropped, None


def _parse_header(d: Mapping[str, Any], w: _Where) -> dict[str, Any]:
    """Episode-level fields of an episode dict (everything but ``turns``), type-checked."""
    _check_keys(d, _EPISODE_KEYS, w, "")
    if "episode_id" not in d:
        raise w.err("missing 'episode_id'", "episode_id")
    eid = d["episode_id"]
    if not isinstance(eid, str) or not eid:
        raise w.err(f"episode_id must be a non-empty string, got {eid!r}", "episode_id")
    fault_kinds = d.get("fault_kinds")
    if fault_kinds is None:
        fault_kinds = []
    elif not isinstance(fault_kinds, list):
        raise w.err(f"expected a list of strings, got {_tname(fault_kinds)}", "fault_kinds")
    else:
        for i, k in enumerate(fault_kinds):
            if not isinstance(k, str):
                raise w.err(f"expected a string, got {_tname(k)}", f"fault_kinds[{i}]")
    meta = _opt(d, "meta", "dict", w, "meta")
    return {
        "episode_id": eid,
        "task_id": _opt(d, "task_id", "str", w, "task_id"),
        "level": _opt(d, "level", "int", w, "level"),
        "step": _opt(d, "step", "int", w, "step"),
        "policy": _opt(d, "policy", "str", w, "policy"),
        "success": _opt(d, "success", "bool", w, "success"),
        "reward": _opt(d, "reward", "float", w, "reward"),
        "fault_kinds": list(fault_kinds),
        "latency_s": _opt(d, "latency_s", "nonneg", w, "latency_s"),
        "meta": {} if meta is None else dict(meta),
    }


def _record_dropped(episode: Episode, n: int) -> None:
    episode.meta[DROPPED_META_KEY] = int(episode.meta.get(DROPPED_META_KEY, 0)) + n


def _check_nan_policy(nan_policy: str) -> None:
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
