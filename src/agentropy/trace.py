"""Episode / Turn / ToolCall: the one data model every part of agentropy reads and writes.

Definitions follow DESIGN.md ("Data model"). An :class:`Episode` is one agent run on one task and
holds an ordered list of :class:`Turn` objects. Assistant turns carry per-token arrays of equal
length (the sampled tokens only: no prompt, padding, tool or runner-injected tokens); tool turns
carry the call, its status and the tool's answer. Tool turns are never trained on and never count
in policy entropy.

Per-token arrays are numpy arrays (float32 for real values, int64 for token ids, int8 codes into
:data:`PHASES` for phases) so that analysis stays vectorised. Phase and status names live here and
only here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

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


def canonical_arguments(arguments: Any) -> str:
    """Canonical JSON of tool-call arguments (sorted keys, no spaces): the identity of a call."""
    return json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool invocation: tool ``name`` and its JSON ``arguments``."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)

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

    @property
    def n_tokens(self) -> int:
        """Number of assistant tokens (0 for tool turns)."""
        return 0 if self.entropy is None else int(self.entropy.shape[0])

    @property
    def failed(self) -> bool:
        """A tool turn whose status is ``error`` or ``unexpected``."""
        return self.role == "tool" and self.status in FAILED_STATUSES


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
