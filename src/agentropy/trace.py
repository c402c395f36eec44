"""Episode / Turn / ToolCall: the one data model every part of agentropy reads and writes.

Definitions follow DESIGN.md ("Data model"). An :class:`Episode` is one agent run on one task and
holds an ordered list of :class:`Turn` objects. Assistant turns carry per-token arrays of equal
length (the sampled tokens only: no prompt, padding, tool or runner-injected tokens); tool turns
carry the call, its status and the tool's answer. Tool turns are never trained on and never count
in policy entropy.

Per-token arrays are numpy arrays (float32 for real values, int64 for token ids, int8 codes into
:data:`PHASES` for phases) so that analysis stays vectorised. Phase and status names live here and
only here.

Two on-disk formats
-------------------

**JSONL interchange** (:func:`read_jsonl`, :func:`write_jsonl`): one episode per line, the public
import/export format. Minimal valid episode (DESIGN.md)::

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

**Parquet trace store** (:class:`TraceWriter`, :func:`read_parquet`, :func:`iter_parts`): a
directory, conventionally named ``something.parquet``, holding numbered parts::

    run.parquet/
      tokens/part-00000.parquet     one row per assistant token
      episodes/part-00000.parquet   one row per episode
      tokens/part-00001.parquet ...

``tokens`` columns: ``episode_id`` (string), ``turn_index`` (int32, index into the episode's
``turns``), ``token_index`` (int32, within the turn), ``token_id`` (int64, nullable), ``logprob``,
``entropy``, ``sampling_entropy``, ``temperature`` (float32; all but ``entropy`` nullable),
``phase`` (int8 code into :data:`PHASES`, nullable). Rows are ordered by episode (in the order of
the episodes table), then ``turn_index``, then ``token_index``.

``episodes`` columns: ``episode_id`` (string), ``task_id`` (string), ``level`` (int64), ``step``
(int64), ``policy`` (string), ``success`` (bool), ``reward`` (float64), ``fault_kinds``
(list<string>), ``latency_s`` (float64), ``meta`` (JSON string), ``turns`` (JSON string: the list
of turn dicts as in JSONL, except that assistant turns carry ``n_tokens`` and ``arrays`` — the
names of the per-token arrays the turn has — instead of the arrays themselves).

An episode's tokens are never split across parts. The writer writes each part under a temporary
name and renames it into place, tokens first and episodes last; a part exists only once its
episodes file exists, so a writer killed at any moment loses at most the part in flight. Opening
a :class:`TraceWriter` on an existing store appends: numbering continues after the last complete
part (this is how long runs resume) and episode ids already in the store are refused
(``overwrite=True`` starts afresh). One writer per store: a ``.writer.lock`` file is ``flock``-ed
while a writer is open (the lock dies with its process, so a killed run can always resume).
Readers see only complete parts and ignore leftovers of a killed writer.

Reading: :func:`read_parquet` / :func:`read_traces` load everything; :func:`iter_episodes` (and
:func:`iter_episodes_counted`) stream episodes one part at a time; :func:`iter_parts` streams the
raw ``(episodes_table, tokens_table)`` pairs for columnar analysis.

Validation and non-finite values
--------------------------------
Every reader raises :class:`agentropy.errors.InputError` naming the file, the line (JSONL, 1-based)
or row (Parquet part, 0-based) and the field (e.g. ``turns[2].entropy[5]``). A token whose
entropy, logprob, sampling entropy or temperature is NaN or infinite is rejected by default
(``nan_policy="raise"``); ``nan_policy="drop"`` removes such tokens from every per-token array of
their turn and counts them, in the returned :class:`Episodes` (``n_dropped``) and in the
episode's ``meta["dropped_nonfinite"]``. Writers store what they are given (non-finite values
included) and validate structure only.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from agentropy.errors import InputError

if TYPE_CHECKING:
    import pyarrow as pa

Role = Literal["assistant", "tool"]
ROLES: tuple[str, ...] = ("assistant", "tool")

Phase = Literal["plan", "act", "recover", "answer"]
#: Phase names in code order: ``phase_codes[i] == PHASES.index(name)``.
PHASES: tuple[str, ...] = ("plan", "act", "recover", "answer")
PHASE_CODE: dict[str, int] = {p: i for i, p in enumerate(PHASES)}

ToolStatus = Literal["ok", "error", "unexpected"]
TOOL_STATUSES: tuple[str, ...] = ("ok", "error", "unexpected")
#: Statuses that count as a failed tool result (a trigger for recovery statistics).
FAILED_STATUSES: frozenset[str] = frozenset({"error", "unexpected"})

#: Per-token float arrays of an assistant turn, besides ``entropy`` (required) and ``token_ids``.
TOKEN_FLOAT_FIELDS: tuple[str, ...] = ("logprob", "entropy", "sampling_entropy", "temperature")

#: Every per-token array of an assistant turn, in the order used by the formats.
TOKEN_ARRAY_FIELDS: tuple[str, ...] = (
    "entropy",
    "token_ids",
    "logprob",
    "sampling_entropy",
    "temperature",
    "phase",
)
_ARRAY_DTYPE: dict[str, type[np.generic]] = {
    "entropy": np.float32,
    "token_ids": np.int64,
    "logprob": np.float32,
    "sampling_entropy": np.float32,
    "temperature": np.float32,
    "phase": np.int8,
}
#: Float arrays checked for non-finite values (``nan_policy``), in the order errors report them.
_FINITE_CHECKED: tuple[str, ...] = ("entropy", "logprob", "sampling_entropy", "temperature")

NanPolicy = Literal["raise", "drop"]
NAN_POLICIES: tuple[str, ...] = ("raise", "drop")
#: ``Episode.meta`` key counting tokens dropped by ``nan_policy="drop"``.
DROPPED_META_KEY = "dropped_nonfinite"

#: Default number of episodes per Parquet part (a part is the unit lost if a writer is killed).
DEFAULT_EPISODES_PER_PART = 256
_LOCK_NAME = ".writer.lock"
_PART_RE = re.compile(r"^part-(\d+)\.parquet$")
_FORMAT_VERSION = "1"


def canonical_arguments(arguments: Any) -> str:
    """Canonical JSON of tool-call arguments (sorted keys, no spaces): the identity of a call."""
    return json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool invocation: tool ``name`` and its JSON ``arguments``."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise InputError(f"tool name must be a string, got {_tname(self.name)}", field="name")
        if not isinstance(self.arguments, Mapping):
            raise InputError(
                f"tool arguments must be a dict (JSON object), got {_tname(self.arguments)}",
                field="arguments",
            )

    @property
    def key(self) -> str:
        """Identity used by loop and frozen-response detection: name + canonical arguments."""
        return f"{self.name}:{canonical_arguments(self.arguments)}"


@dataclass(slots=True)
class Turn:
    """One turn of an episode.

    Assistant turns (``role == "assistant"``): ``entropy`` is required; every other per-token
    array is optional but, when present, has the same length as ``entropy``.
    Tool turns (``role == "tool"``): ``call`` and ``status`` describe the tool result.

    Construction coerces per-token arrays (lists or arrays) to their documented dtypes and checks
    role, status, phase codes and lengths; it raises :class:`InputError` (a ``ValueError``).
    ``entropy`` may be filled in after construction; writers check it is there.
    """

    role: Role
    # --- assistant turns: per-token arrays, all of length n_tokens -------------------------
    entropy: np.ndarray | None = None
    """(n,) float32: model entropy at T = 1, nats."""
    token_ids: np.ndarray | None = None
    """(n,) int64: sampled token ids."""
    logprob: np.ndarray | None = None
    """(n,) float32: log-prob of each sampled token under the sampling distribution (z / T)."""
    sampling_entropy: np.ndarray | None = None
    """(n,) float32: entropy of the sampling distribution (at the temperature used), nats."""
    temperature: np.ndarray | None = None
    """(n,) float32: temperature used for each token (0 marks greedy decoding)."""
    phase: np.ndarray | None = None
    """(n,) int8: phase code per token, an index into :data:`PHASES`."""
    text: str | None = None
    """Decoded text of the turn (optional; for display and for parsing tool calls)."""
    # --- tool turns ----------------------------------------------------------------------
    call: ToolCall | None = None
    """The call this tool turn answers (None for an unparseable call)."""
    status: ToolStatus | None = None
    """``ok`` | ``error`` | ``unexpected``."""
    content: str | None = None
    """What the tool returned (the text the agent sees)."""
    latency_s: float | None = None
    """Simulated or real tool latency, seconds."""
    # --- both ----------------------------------------------------------------------------
    wall_s: float | None = None
    """Wall time spent producing this turn, seconds."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Free-form extras (e.g. the fault that fired); round-trips through JSONL."""

    def __post_init__(self) -> None:
        arrays = _turn_arrays(self, "turn", require_entropy=False)
        for name, arr in arrays.items():
            object.__setattr__(self, name, arr)

    @property
    def n_tokens(self) -> int:
        """Number of assistant tokens (0 for tool turns)."""
        return 0 if self.entropy is None else int(self.entropy.shape[0])

    @property
    def failed(self) -> bool:
        """A tool turn whose status is ``error`` or ``unexpected``."""
        return self.role == "tool" and self.status in FAILED_STATUSES

    @property
    def phase_names(self) -> list[str] | None:
        """Phase names per token (None when the turn has no phases)."""
        return None if self.phase is None else [PHASES[int(c)] for c in self.phase]


@dataclass(slots=True)
class Episode:
    """One agent run on one task: an ordered list of turns plus episode-level outcome fields."""

    episode_id: str
    turns: list[Turn] = field(default_factory=list)
    task_id: str | None = None
    level: int | None = None
    step: int | None = None
    """Training step that produced the episode (None outside training)."""
    policy: str | None = None
    """Sampling policy name, e.g. ``greedy``, ``constant:1.0``, ``phase``."""
    success: bool | None = None
    reward: float | None = None
    fault_kinds: list[str] = field(default_factory=list)
    """Kinds of the faults that fired during the episode."""
    latency_s: float | None = None
    """Episode wall time (generation plus tool latency), seconds."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Free-form extras (e.g. which recovery would have worked); round-trips through JSONL."""

    @property
    def assistant_turns(self) -> list[Turn]:
        return [t for t in self.turns if t.role == "assistant"]

    @property
    def tool_turns(self) -> list[Turn]:
        return [t for t in self.turns if t.role == "tool"]

    @property
    def n_tokens(self) -> int:
        """Total assistant tokens in the episode."""
        return sum(t.n_tokens for t in self.turns)


class Episodes(list[Episode]):
    """A list of episodes as read from files, plus ``n_dropped``: non-finite tokens dropped.

    ``n_dropped`` is always 0 under ``nan_policy="raise"``.
    """

    def __init__(self, episodes: Iterable[Episode] = (), *, n_dropped: int = 0) -> None:
        super().__init__(episodes)
        self.n_dropped = n_dropped


# =====================================================================================
# Validation helpers (shared by the constructors, the writers and the readers)
# =====================================================================================


def _tname(value: Any) -> str:
    """JSON-ish type name of a value, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | np.integer):
        return "integer"
    if isinstance(value, float | np.floating):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


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
            raise InputError(
                f"phase code out of range (expected 0..{len(PHASES) - 1}: {', '.join(PHASES)})",
                field=f"{where}[{bad}]",
            )
    elif arr.min() < 0 or (arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max):
        bad = int(np.flatnonzero(arr < 0)[0]) if arr.min() < 0 else int(np.argmax(arr))
        raise InputError(
            "token id out of range (expected 0 <= id < 2**63)", field=f"{where}[{bad}]"
        )
    return arr.astype(dtype, copy=False)


def _turn_arrays(turn: Turn, where: str, *, require_entropy: bool) -> dict[str, np.ndarray]:
    """Check a turn and return its per-token arrays coerced to their dtypes (role, lengths...)."""
    if turn.role not in ROLES:
        raise InputError(
            f"unknown role {turn.role!r} (expected one of: {', '.join(ROLES)})",
            field=f"{where}.role",
        )
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
        if turn.status is not None and turn.status not in TOOL_STATUSES:
            raise InputError(
                f"bad status {turn.status!r} (expected one of: {', '.join(TOOL_STATUSES)})",
                field=f"{where}.status",
            )
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
            raise InputError("assistant turns need per-token 'entropy'", field=f"{where}.entropy")
        lengths = {name: int(a.shape[0]) for name, a in arrays.items()}
        if len(set(lengths.values())) > 1:
            ref = "entropy" if "entropy" in lengths else next(iter(lengths))
            odd = next(n for n, k in lengths.items() if k != lengths[ref])
            raise InputError(
                f"per-token arrays have unequal lengths: {ref} has {lengths[ref]}, "
                f"{odd} has {lengths[odd]}",
                field=f"{where}.{odd}",
            )
    if not isinstance(turn.meta, Mapping):
        raise InputError(f"expected an object, got {_tname(turn.meta)}", field=f"{where}.meta")
    for name in ("text", "content"):
        value = getattr(turn, name)
        if value is not None and not isinstance(value, str):
            raise InputError(f"expected a string, got {_tname(value)}", field=f"{where}.{name}")
    for name in ("latency_s", "wall_s"):
        value = getattr(turn, name)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float | np.integer | np.floating)
            or not value >= 0
        ):
            raise InputError(
                f"expected a non-negative number of seconds, got {value!r}",
                field=f"{where}.{name}",
            )
    return arrays


def validate_episode(episode: Episode) -> None:
    """Check an in-memory episode's structure; raise :class:`InputError` naming the field.

    Checks ids, roles, statuses, phase codes, that assistant turns have ``entropy`` and that
    their per-token arrays have equal lengths. Values (e.g. NaN entropies) are not checked.
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
# Dict (JSON) conversion
# =====================================================================================


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


def _num(value: Any) -> Any:
    """numpy scalars -> Python scalars (json cannot encode numpy types)."""
    return value.item() if isinstance(value, np.generic) else value


def _tool_turn_dict(turn: Turn) -> dict[str, Any]:
    d: dict[str, Any] = {"role": "tool"}
    if turn.call is not None:
        d["name"] = turn.call.name
        d["arguments"] = dict(turn.call.arguments)
    for key in ("status", "content", "latency_s", "wall_s"):
        value = getattr(turn, key)
        if value is not None:
            d[key] = _num(value)
    if turn.meta:
        d["meta"] = turn.meta
    return d


def _assistant_extras(turn: Turn, d: dict[str, Any]) -> dict[str, Any]:
    for key in ("text", "wall_s"):
        value = getattr(turn, key)
        if value is not None:
            d[key] = _num(value)
    if turn.meta:
        d["meta"] = turn.meta
    return d


def _episode_header(episode: Episode) -> dict[str, Any]:
    d: dict[str, Any] = {"episode_id": episode.episode_id}
    for key in ("task_id", "level", "step", "policy", "success", "reward"):
        value = getattr(episode, key)
        if value is not None:
            d[key] = _num(value)
    if episode.fault_kinds:
        fk = episode.fault_kinds
        d["fault_kinds"] = list(fk) if isinstance(fk, list | tuple) else fk
    if episode.latency_s is not None:
        d["latency_s"] = _num(episode.latency_s)
    if episode.meta:
        d["meta"] = episode.meta
    return d


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
        value = float(value)
        if kind == "nonneg" and not value >= 0:
            raise w.err(f"expected a non-negative number of seconds, got {value!r}", f)
    return value


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


def _float_list(value: Any, w: _Where, f: str) -> np.ndarray:
    """A JSON list of numbers (null = missing = NaN) as float32."""
    arr = _list_array(value, w, f, "numbers", np.float32)
    if arr is not None and arr.ndim == 1 and arr.dtype.kind in "fiu":
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
                out[i] = x
    return out


def _int_list(value: Any, w: _Where, f: str) -> np.ndarray:
    arr = _list_array(value, w, f, "integers", np.int64)
    if arr is None or arr.ndim != 1 or arr.dtype.kind not in "iu":
        for i, x in enumerate(value):
            if isinstance(x, bool) or not isinstance(x, int):
                raise w.err(f"expected an integer token id, got {_tname(x)}", f"{f}[{i}]")
        raise w.err("token ids out of range (expected 0 <= id < 2**63)", f)
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
    checked = [arrays[n] for n in _FINITE_CHECKED if n in arrays]
    if not checked:
        return arrays, 0
    finite = np.isfinite(checked[0])
    for arr in checked[1:]:
        finite &= np.isfinite(arr)
    if finite.all():
        return arrays, 0
    if nan_policy == "raise":
        i = int(np.flatnonzero(~finite)[0])
        name = next(n for n in _FINITE_CHECKED if n in arrays and not np.isfinite(arrays[n][i]))
        value = arrays[name][i]
        hint = "use nan_policy='drop' (CLI: --nan-policy drop) to drop such tokens"
        if row0 is None:
            raise w.err(f"non-finite value {value} ({hint})", f"{f}.{name}[{i}]")
        raise InputError(
            f"non-finite value {value} in token {i} of {f} ({hint})",
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
        raise w.err("missing 'role' (expected one of: assistant, tool)", f"{f}.role")
    role = d["role"]
    if role not in ROLES:
        raise w.err(
            f"unknown role {role!r} (expected one of: {', '.join(ROLES)})"
            if isinstance(role, str)
            else f"role must be a string, got {_tname(role)}",
            f"{f}.role",
        )
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
        if status is not None and status not in TOOL_STATUSES:
            raise w.err(
                f"bad status {status!r} (expected one of: {', '.join(TOOL_STATUSES)})",
                f"{f}.status",
            )
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
            raise w.err(f"expected a token count >= 0, got {n!r}", f"{f}.n_tokens")
        names = d.get("arrays")
        if not isinstance(names, list) or any(x not in TOKEN_ARRAY_FIELDS for x in names):
            raise w.err(f"expected a list of per-token array names, got {names!r}", f"{f}.arrays")
        if "entropy" not in names:
            raise w.err("assistant turns need per-token 'entropy'", f"{f}.arrays")
        turn = Turn(role="assistant", text=text, wall_s=wall_s, meta=meta)
        return turn, 0, {"n_tokens": n, "arrays": names}
    _check_keys(d, _ASSISTANT_KEYS, w, f"{f}.")
    if d.get("entropy") is None:
        raise w.err("assistant turns need per-token 'entropy' (a list of numbers)", f"{f}.entropy")
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
    n = len(arrays["entropy"])
    for name, arr in arrays.items():
        if len(arr) != n:
            raise w.err(
                f"per-token arrays have unequal lengths: entropy has {n}, {name} has {len(arr)}",
                f"{f}.{name}",
            )
    arrays, dropped = _apply_nan_policy(arrays, nan_policy, w, f)
    return Turn(role="assistant", text=text, wall_s=wall_s, meta=meta, **arrays), dropped, None


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


def _record_dropped(episode: Episode, n: int) -> None:
    episode.meta[DROPPED_META_KEY] = int(episode.meta.get(DROPPED_META_KEY, 0)) + n


def _check_nan_policy(nan_policy: str) -> None:
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")


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


# =====================================================================================
# JSONL
# =====================================================================================


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


# =====================================================================================
# Parquet store
# =====================================================================================


def _schemas() -> tuple[pa.Schema, pa.Schema]:
    """(tokens schema, episodes schema) — the layout documented in the module docstring."""
    import pyarrow as pa

    meta = {b"agentropy.trace_format": _FORMAT_VERSION.encode()}
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

    __slots__ = ("n_tokens", "row", "token_cols")

    def __init__(self, episode: Episode) -> None:
        all_arrays = _episode_arrays(episode)
        row = _episode_header(episode)
        turns_json = []
        turn_idx, cols = [], {name: [] for name in TOKEN_ARRAY_FIELDS}
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
                present = arr is not None
                cols[name].append(arr if present else np.zeros(n, dtype=_ARRAY_DTYPE[name]))
                masks[name].append(np.full(n, not present))
            n_total += n
        row["turns"] = _dumps(turns_json, episode.episode_id, "turns[].meta")
        row["meta"] = _dumps(row.get("meta", {}), episode.episode_id, "meta")
        self.row = row
        self.n_tokens = n_total
        token_cols: dict[str, Any] = {
            "turn_index": _cat(turn_idx, np.int32),
            "token_index": _cat([np.arange(len(t), dtype=np.int32) for t in turn_idx], np.int32),
        }
        for name in TOKEN_ARRAY_FIELDS:
            token_cols[name] = (_cat(cols[name], _ARRAY_DTYPE[name]), _cat(masks[name], np.bool_))
        self.token_cols = token_cols


def _cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(0, dtype=dtype)


def _fsync_write_table(table: pa.Table, final: Path) -> None:
    """Write ``table`` to a temporary name in the same directory, fsync, then rename atomically."""
    import pyarrow.parquet as pq

    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
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

        tokens_schema, episodes_schema = _schemas()
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
        for name in TOKEN_ARRAY_FIELDS:
            values = _cat([p.token_cols[name][0] for p in buf], _ARRAY_DTYPE[name])
            mask = _cat([p.token_cols[name][1] for p in buf], np.bool_)
            column = _TOKEN_COLUMN[name]
            typ = tokens_schema.field(column).type
            cols[column] = pa.array(values, type=typ, mask=mask if mask.any() else None)
        tokens = pa.table([cols[f.name] for f in tokens_schema], schema=tokens_schema)
        rows = {f.name: [p.row.get(f.name) for p in buf] for f in episodes_schema}
        rows["fault_kinds"] = [p.row.get("fault_kinds", []) for p in buf]
        episodes = pa.table(rows, schema=episodes_schema)
        name = f"part-{self._next_part:05d}.parquet"
        # Tokens first, episodes last: a part only counts once its episodes file exists.
        _fsync_write_table(tokens, self.path / "tokens" / name)
        _fsync_write_table(episodes, self.path / "episodes" / name)
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


def _store_parts(path: str | Path) -> list[tuple[int, Path, Path]]:
    """Complete parts of a store: (number, episodes file, tokens file), in order."""
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
    out = []
    for n in sorted(eps):
        if n not in toks:
            raise InputError("episodes part without its tokens part (store corrupted)", path=eps[n])
        out.append((n, eps[n], toks[n]))
    return out


def _read_table(path: Path, schema: pa.Schema) -> pa.Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        raise InputError(f"unreadable Parquet file ({err})", path=path) from None
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
    ep_table = _read_table(ep_file, episodes_schema)
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
        for key in ("latency_s",):
            if h[key] is not None and not h[key] >= 0:
                raise w.err(f"expected a non-negative number of seconds, got {h[key]!r}", key)
        turns_list = _loads(turns_s, w, "turns")
        if not isinstance(turns_list, list):
            raise w.err(f"expected a JSON list of turns, got {_tname(turns_list)}", "turns")
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
        is_float = name in _FINITE_CHECKED
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
            raise InputError(
                f"unknown phase code {vals[r]} (expected 0..{len(PHASES) - 1})",
                path=tok_file,
                row=r,
                field=column,
            )
        if name == "token_ids" and len(vals) and (vals[present[name]] < 0).any():
            r = int(np.flatnonzero(present[name] & (vals < 0))[0])
            raise InputError("negative token id", path=tok_file, row=r, field=column)
        values[name] = vals
    nonfinite = np.zeros(total, dtype=bool)
    for name in _FINITE_CHECKED:
        nonfinite |= present[name] & ~np.isfinite(values[name])

    episodes: list[tuple[Episode, int]] = []
    if nonfinite.any() and nan_policy == "raise" and not build:
        r = int(np.flatnonzero(nonfinite)[0])
        name = next(n for n in _FINITE_CHECKED if present[n][r] and not np.isfinite(values[n][r]))
        raise InputError(
            f"non-finite value {values[name][r]} in episode {ids[expect_ep[r]]!r} turns["
            f"{expect_turn[r]}] token {expect_tok[r]} (use nan_policy='drop' (CLI: "
            "--nan-policy drop) to drop such tokens)",
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


def iter_parts(
    path: str | Path, *, nan_policy: NanPolicy = "raise"
) -> Iterator[tuple[pa.Table, pa.Table]]:
    """Stream a trace store part by part: ``(episodes_table, tokens_table)`` per complete part.

    Tables follow the layout in the module docstring (raw columns; phases are int8 codes; the
    ``turns`` and ``meta`` columns are JSON strings). Each part is validated as it is read.
    ``nan_policy="drop"`` removes token rows with a non-finite float; their ``token_index``
    values are left as stored, so a turn's dropped count is its ``n_tokens`` minus its rows.
    Memory is bounded by the largest part.
    """
    _check_nan_policy(nan_policy)
    for _, ep_file, tok_file in _store_parts(path):
        ep_table, tok_table, _, bad = _decode_part(ep_file, tok_file, nan_policy, build=False)
        if bad.any():  # only reached under nan_policy="drop"
            import pyarrow as pa

            tok_table = tok_table.filter(pa.array(~bad))
        yield ep_table, tok_table


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
    parts = _store_parts(p)
    if not parts:
        raise InputError("empty trace store: no complete parts", path=p)
    for _, ep_file, tok_file in parts:
        _, _, episodes, _ = _decode_part(ep_file, tok_file, nan_policy, build=True)
        yield from episodes


def read_parquet(path: str | Path, *, nan_policy: NanPolicy = "raise") -> Episodes:
    """Read every complete part of a trace store into memory (see :func:`iter_episodes`)."""
    _check_nan_policy(nan_policy)
    out = Episodes()
    seen: dict[str, Path] = {}
    parts = _store_parts(path)
    if not parts:
        raise InputError("empty trace store: no complete parts", path=path)
    for _, ep_file, tok_file in parts:
        _, _, episodes, _ = _decode_part(ep_file, tok_file, nan_policy, build=True)
        for episode, dropped in episodes:
            eid = episode.episode_id
            if eid in seen:
                raise InputError(
                    f"duplicate episode_id {eid!r} (also in {seen[eid].name})",
                    path=ep_file,
                    field="episode_id",
                )
            seen[eid] = ep_file
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


__all__ = [
    "DEFAULT_EPISODES_PER_PART",
    "DROPPED_META_KEY",
    "FAILED_STATUSES",
    "NAN_POLICIES",
    "PHASES",
    "PHASE_CODE",
    "ROLES",
    "TOKEN_ARRAY_FIELDS",
    "TOKEN_FLOAT_FIELDS",
    "TOOL_STATUSES",
    "Episode",
    "Episodes",
    "NanPolicy",
    "Phase",
    "Role",
    "ToolCall",
    "ToolStatus",
    "TraceWriter",
    "Turn",
    "canonical_arguments",
    "episode_from_dict",
    "episode_to_dict",
    "iter_episodes",
    "iter_episodes_counted",
    "iter_parts",
    "iter_token_batches",
    "read_jsonl",
    "read_parquet",
    "read_traces",
    "validate_episode",
    "write_jsonl",
    "write_parquet",
]
