"""The trace data model: :class:`Episode`, :class:`Turn`, :class:`ToolCall`, and the shared names.

Definitions follow DESIGN.md ("Data model"). An :class:`Episode` is one agent run on one task and
holds an ordered list of :class:`Turn` objects. Assistant turns carry per-token arrays of equal
length (the sampled tokens only: no prompt, padding, tool or runner-injected tokens); tool turns
carry the call, its status and the tool's answer. Tool turns are never trained on and never count
in policy entropy.

Per-token arrays are numpy arrays (float32 for real values, int64 for token ids, int8 codes into
:data:`PHASES` for phases) so that analysis stays vectorised. Every name shared across agentropy
(roles, phases and their codes, tool statuses and their codes, per-token array fields, NaN
policies) is defined here and only here; each tuple of names is read off its ``Literal`` type, so
the type and the runtime tuple cannot drift apart.

This module also holds the *dict form* of the objects (the JSONL shape, see
:mod:`agentropy.trace.jsonl`), shared by the JSONL writer, the Parquet writer and validation.
Field rules live in :mod:`agentropy.trace.validate`; constructors call them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

from agentropy.errors import InputError

Role = Literal["assistant", "tool"]
ROLES: tuple[str, ...] = get_args(Role)

Phase = Literal["plan", "act", "recover", "answer"]
#: Phase names in code order: ``phase_codes[i] == PHASES.index(name)``.
PHASES: tuple[str, ...] = get_args(Phase)
PHASE_CODE: dict[str, int] = {p: i for i, p in enumerate(PHASES)}

ToolStatus = Literal["ok", "error", "unexpected"]
TOOL_STATUSES: tuple[str, ...] = get_args(ToolStatus)
#: Tool-status codes in code order (as ``PHASE_CODE``); columnar views use ``-1`` for "none".
STATUS_CODES: dict[str, int] = {s: i for i, s in enumerate(TOOL_STATUSES)}
#: Statuses that count as a failed tool result (a trigger for recovery statistics).
FAILED_STATUSES: frozenset[str] = frozenset({"error", "unexpected"})

#: Per-token float arrays of an assistant turn, in the order errors about non-finite values
#: report them (``entropy`` is required, the others optional).
TOKEN_FLOAT_FIELDS: tuple[str, ...] = ("entropy", "logprob", "sampling_entropy", "temperature")

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

#: What readers do with a token whose float values are not all finite: reject it or drop it.
NanPolicy = Literal["raise", "drop"]
NAN_POLICIES: tuple[str, ...] = get_args(NanPolicy)
#: ``Episode.meta`` key counting tokens dropped by ``nan_policy="drop"``.
DROPPED_META_KEY = "dropped_nonfinite"
#: ``Turn.meta`` key of an assistant turn whose ``entropy`` is an estimate, not exact (top-k
#: logprobs, DESIGN.md "Top-k estimate"): ``{"lower": [...], "upper": [...]}``, one value per
#: token, nats, with ``lower <= entropy <= upper``. Read with :func:`entropy_bounds_of`.
BOUNDS_META_KEY = "entropy_bounds"


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


def _cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    """Concatenate per-turn arrays as ``dtype`` (an empty array when there are none)."""
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(0, dtype=dtype)


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
        arrays = _validate._turn_arrays(self, "turn", require_entropy=False)
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
# Dict form (the JSONL shape of each object)
# =====================================================================================


def _num(value: Any) -> Any:
    """numpy scalars -> Python scalars (json cannot encode numpy types)."""
    return value.item() if isinstance(value, np.generic) else value


def entropy_bounds_of(
    meta: Mapping[str, Any] | None, n: int, *, field: str = "meta"
) -> tuple[np.ndarray, np.ndarray] | None:
    """The ``(lower, upper)`` entropy bounds of an assistant turn of ``n`` tokens, or None.

    Reads ``meta[BOUNDS_META_KEY]`` (:data:`BOUNDS_META_KEY`); returns two (n,) float64 arrays,
    nats. Malformed bounds (wrong length, non-numbers, non-finite, ``lower > upper``) raise
    :class:`InputError` naming ``field``: silently ignoring them would show an exact-looking
    entropy where the trace says it is uncertain.
    """
    raw = meta.get(BOUNDS_META_KEY) if isinstance(meta, Mapping) else None
    if raw is None:
        return None
    where = f"{field}.{BOUNDS_META_KEY}"
    if not isinstance(raw, Mapping) or not {"lower", "upper"} <= set(raw):
        raise InputError("must be {'lower': [...], 'upper': [...]}", field=where)
    out = []
    for side in ("lower", "upper"):
        try:
            arr = np.asarray(raw[side], dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError("must be a list of numbers", field=f"{where}.{side}") from None
        if arr.shape != (n,):
            raise InputError(
                f"has {arr.size} values, the turn has {n} tokens", field=f"{where}.{side}"
            )
        if not np.isfinite(arr).all():
            raise InputError("must be finite", field=f"{where}.{side}")
        out.append(arr)
    lo, hi = out
    if (lo > hi).any():
        bad = int(np.flatnonzero(lo > hi)[0])
        raise InputError(f"lower {lo[bad]} > upper {hi[bad]} at token {bad}", field=where)
    return lo, hi


def _tool_turn_dict(turn: Turn) -> dict[str, Any]:
    """A tool turn as its flat JSON dict (``None`` fields and empty ``meta`` omitted)."""
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
    """Add an assistant turn's scalar fields (text, wall_s, meta) to ``d``, returned.

    The per-token arrays are the caller's: lists in JSONL, ``n_tokens``/``arrays`` in a store.
    """
    for key in ("text", "wall_s"):
        value = getattr(turn, key)
        if value is not None:
            d[key] = _num(value)
    if turn.meta:
        d["meta"] = turn.meta
    return d


def _episode_header(episode: Episode) -> dict[str, Any]:
    """Episode-level fields as a JSON dict (all but ``turns``; ``None`` and empty ones omitted)."""
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


# The field rules need the classes above; importing them last keeps one direction of definition
# (model defines, validate checks) while the constructors still run every rule.
from agentropy.trace import validate as _validate  # noqa: E402

__all__ = [
    "BOUNDS_META_KEY",
    "DROPPED_META_KEY",
    "FAILED_STATUSES",
    "NAN_POLICIES",
    "PHASES",
    "PHASE_CODE",
    "ROLES",
    "STATUS_CODES",
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
    "Turn",
    "canonical_arguments",
    "entropy_bounds_of",
]
