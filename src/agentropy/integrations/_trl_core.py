"""The framework-free half of the TRL adapter: rollout rows as episodes, phases, breath metrics.

:mod:`agentropy.integrations.trl` (which imports TRL) uses these; they import without TRL so that
they can be tested and reused on TRL dumps without installing it. Definitions: phases follow
:func:`agentropy.control.phases.episode_phases`, trigger offsets follow
:func:`agentropy.rl.trainer.build_batch`, breath metrics are the analyzer's
(:mod:`agentropy.analysis.breath`, ``loops``) over a logging window, plus the live monitor's
degeneracy rates (:mod:`agentropy.monitor.rates`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from agentropy.control.phases import DEFAULT_MARKERS, PhaseMarkers, decode_token_texts
from agentropy.trace import PHASE_CODE, Episode, ToolCall, Turn

if TYPE_CHECKING:
    from agentropy.analysis.breath import BreathConfig
    from agentropy.analysis.loops import LoopConfig

__all__ = [
    "BREATH_KEYS",
    "Rollout",
    "breath_metrics",
    "build_rollout",
    "is_trl_error",
    "prepare_tokenizer",
]

#: Keys of :func:`breath_metrics` (``{p}`` runs over the phases; per-phase entropy keys appear
#: only when the window has tokens of that phase, spike ratios only when defined).
BREATH_KEYS: tuple[str, ...] = (
    "breath/episodes",
    "breath/tokens",
    "breath/entropy",
    "breath/entropy_{p}",
    "breath/tokens_{p}",
    "breath/tool_calls",
    "breath/tool_failures",
    "breath/no_response",
    "breath/spike_ratio_failed",
    "breath/spike_ratio_ok",
    "breath/eruptions",
    "breath/eruptions_productive",
    "breath/eruptions_neutral",
    "breath/eruptions_divergent",
    "breath/frozen",
    "breath/loops",
    "breath/loops_repeated_call",
    "breath/loops_ngram",
    "breath/loop_rate",
    "breath/hallucination_rate",
    "breath/valid_action_rate",
    "breath/failure_rate",
)


def is_trl_error(message: Mapping[str, Any]) -> bool:
    """Whether a TRL tool message reports a failure.

    TRL 1.16 turns a tool that raised (or an unknown tool) into ``str({"error": str(exc)})``;
    a tool that itself returns a dict with an ``error`` key renders the same way and counts too.
    """
    content = message.get("content")
    return isinstance(content, str) and content.startswith("{'error':")


def prepare_tokenizer(
    tokenizer: Any,
    *,
    markers: PhaseMarkers = DEFAULT_MARKERS,
    turn_start: str = "<|im_start|>assistant\n",
    turn_end: str | None = None,
) -> Any:
    """Give ``tokenizer`` a ``response_template`` for ``<tool_call>{json}</tool_call>`` turns.

    TRL parses tool calls with ``tokenizer.parse_response`` and only knows the templates of a few
    model families; for any other (Hermes/Qwen-style) template, call this before building the
    trainer. A tokenizer that already has a ``response_template`` is returned unchanged.

    Args:
        tokenizer: a Hugging Face tokenizer (modified in place and returned).
        markers: the tool-call span markers (the JSON between them is ``{"name", "arguments"}``).
        turn_start: text that opens an assistant turn in the rendered chat.
        turn_end: text that ends an assistant turn (default: ``tokenizer.eos_token``).
    """
    if getattr(tokenizer, "response_template", None) is not None:
        return tokenizer
    end = turn_end if turn_end is not None else tokenizer.eos_token
    if not end:
        raise ValueError("turn_end is needed: the tokenizer has no eos_token")
    tokenizer.response_template = {
        "defaults": {"role": "assistant"},
        "start_anchor": turn_start,
        "fields": {
            "tool_calls": {
                "open": markers.tool_open,
                "close_pattern": re.escape(markers.tool_close) + r"\s*",
                "repeats": True,
                "content": "json",
                "transform": {"type": "function", "function": "{content}"},
            },
            "content": {"close_pattern": re.escape(end) + r"\s*", "content": "text"},
        },
    }
    return tokenizer


@dataclass(slots=True)
class Rollout:
    """One TRL completion row as an episode skeleton, plus where its turns sit in the row."""

    episode: Episode
    """Assistant turns carry ``token_ids`` and ``phase`` (entropy is filled at loss time); tool
    turns carry the call, status and content when TRL's tool loop produced them."""
    spans: list[tuple[int, int]]
    """``[start, end)`` completion positions of each assistant turn, in order."""
    phase: np.ndarray
    """(C,) int64 phase code per completion position (0 off assistant tokens)."""
    trigger_offset: np.ndarray
    """(C,) int64 assistant tokens since the last failed tool result, -1 where none."""
    row_id: int = -1
    """Unique id of the row within the run (a row is analysed once even if trained on twice)."""


def _runs(mask: np.ndarray) -> list[tuple[int, int, bool]]:
    """Maximal runs ``(start, end, value)`` of a 0/1 vector."""
    if mask.size == 0:
        return []
    change = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [mask.size]])
    return [(int(s), int(e), bool(mask[s])) for s, e in zip(starts, ends, strict=True)]


def _tool_groups(messages: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """Consecutive tool messages of a TRL conversation, grouped, each paired with its call."""
    groups: list[list[Mapping[str, Any]]] = []
    calls: list[Mapping[str, Any]] = []
    prev_tool = False
    for msg in messages:
        if msg.get("role") == "tool":
            if not prev_tool:
                groups.append([])
            call = calls.pop(0) if calls else {}
            groups[-1].append({"message": msg, "call": call})
            prev_tool = True
            continue
        prev_tool = False
        calls = [c.get("function", c) for c in (msg.get("tool_calls") or [])]
    return groups


def _tool_turn(entry: Mapping[str, Any], is_failure: Callable[[Mapping[str, Any]], bool]) -> Turn:
    msg, call = entry["message"], entry["call"]
    name = call.get("name") or msg.get("name")
    args = call.get("arguments", {})
    if isinstance(args, str):  # some templates keep arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            args = {"_raw": args}
    content = msg.get("content")
    return Turn(
        role="tool",
        call=ToolCall(str(name), dict(args)) if name and isinstance(args, Mapping) else None,
        status="error" if is_failure(msg) else "ok",
        content=content if isinstance(content, str) else json.dumps(content, default=str),
    )


def build_rollout(
    completion_ids: Sequence[int] | np.ndarray,
    tool_mask: Sequence[int] | np.ndarray | None,
    messages: Sequence[Mapping[str, Any]] | None,
    tokenizer: Any,
    *,
    episode_id: str,
    step: int | None = None,
    markers: PhaseMarkers = DEFAULT_MARKERS,
    is_tool_failure: Callable[[Mapping[str, Any]], bool] = is_trl_error,
) -> Rollout:
    """Episode skeleton, phases and trigger offsets of one TRL completion row.

    Args:
        completion_ids: (n,) the row's completion tokens without right padding.
        tool_mask: (n,) TRL's ``tool_mask`` (1 model token, 0 tool-result token); None when the
            rollout has no tool turns.
        messages: the row's completion messages from TRL's tool loop (assistant and tool
            messages in order), or None when unknown.
        tokenizer: decodes tokens for the phase rule.
        episode_id: id of the episode.
        step: training step stored in the episode.
        markers: span markers of the chat format.
        is_tool_failure: decides whether a tool message is a failed result.

    Returns:
        A :class:`Rollout`. Phases follow :func:`agentropy.control.phases.episode_phases`;
        trigger offsets follow :func:`agentropy.rl.trainer.build_batch` (counting restarts at
        each failed tool result and stops at an ``ok`` one).
    """
    from agentropy.control.phases import episode_phases

    ids = np.asarray(completion_ids, dtype=np.int64).reshape(-1)
    n = ids.shape[0]
    tm = np.ones(n, np.int8) if tool_mask is None else np.asarray(tool_mask, np.int8).reshape(-1)
    if tm.shape[0] != n:
        raise ValueError(f"tool_mask has {tm.shape[0]} entries for {n} completion tokens")
    groups = _tool_groups(messages) if messages is not None else []
    turns: list[Turn] = []
    spans: list[tuple[int, int]] = []
    k = 0
    for start, end, model_tokens in _runs(tm):
        if model_tokens:
            turns.append(Turn(role="assistant", token_ids=ids[start:end]))
            spans.append((start, end))
            continue
        group = groups[k] if k < len(groups) else []
        k += 1
        if not group:  # tool tokens without known messages (env_mask rollouts): status unknown
            turns.append(Turn(role="tool"))
        turns.extend(_tool_turn(entry, is_tool_failure) for entry in group)

    def texts(turn: Turn) -> list[str]:
        return decode_token_texts(tokenizer, turn.token_ids)

    phases = episode_phases(turns, texts, markers=markers)
    phase = np.zeros(n, np.int64)
    offset = np.full(n, -1, np.int64)
    since = -1
    a = 0
    for turn, ph in zip(turns, phases, strict=True):
        if ph is None:  # a tool turn (episode_phases labels assistant turns only)
            # A group of tool turns ends in the state of its last member, as in the trainer.
            since = 0 if turn.failed else -1
            continue
        turn.phase = ph
        s, e = spans[a]
        a += 1
        phase[s:e] = ph
        if since >= 0:
            offset[s:e] = np.arange(since, since + (e - s))
            since += e - s
    episode = Episode(episode_id=episode_id, turns=turns, step=step, policy="trl")
    return Rollout(episode=episode, spans=spans, phase=phase, trigger_offset=offset)


def breath_metrics(
    episodes: list[Episode],
    *,
    breath: BreathConfig | None = None,
    loops: LoopConfig | None = None,
    prefix: str = "breath/",
) -> dict[str, float]:
    """Breath metrics of a window of episodes (keys: :data:`BREATH_KEYS`); {} for no episodes.

    Per-phase entropies are token-means over the window (sums and counts, never a mean of
    means). Spike ratios are means over tool turns with a post-trigger stream, split by whether
    the tool failed. Eruptions, kinds, frozen responses and loops are counts, as defined in
    DESIGN.md and implemented by :mod:`agentropy.analysis.breath` and ``loops``.
    """
    from agentropy.analysis.breath import KINDS, BreathConfig, analyze_triggers
    from agentropy.analysis.loops import LOOP_TYPES, LoopConfig, find_loops
    from agentropy.monitor.rates import episode_rates
    from agentropy.trace import TraceTable

    episodes = [ep for ep in episodes if ep.n_tokens > 0]
    if not episodes:
        return {}
    table = TraceTable.from_episodes(episodes)
    trig = analyze_triggers(table, breath or BreathConfig())
    found = find_loops(table, loops or LoopConfig())
    ent = table.entropy.astype(np.float64)
    out = {
        "episodes": float(table.n_episodes),
        "tokens": float(table.n_tokens),
        "entropy": float(ent.mean()),
    }
    for name, code in PHASE_CODE.items():
        sel = table.phase == code
        count = int(sel.sum())
        out[f"tokens_{name}"] = float(count)
        if count:
            out[f"entropy_{name}"] = float(ent[sel].mean())
    failed = trig.failed
    defined = trig.stats.n_post > 0
    out["tool_calls"] = float(trig.ep.shape[0])
    out["tool_failures"] = float(failed.sum())
    out["no_response"] = float((~defined).sum())
    for label, sel in (("failed", failed & defined), ("ok", ~failed & defined)):
        if sel.any():
            out[f"spike_ratio_{label}"] = float(trig.stats.spike_ratio[sel].mean())
    out["eruptions"] = float(trig.eruption.sum())
    for i, kind in enumerate(KINDS):
        out[f"eruptions_{kind}"] = float((trig.kind == i).sum())
    out["frozen"] = float(trig.frozen.sum())
    out["loops"] = float(found.ep.shape[0])
    for i, kind in enumerate(LOOP_TYPES):
        out[f"loops_{kind}"] = float((found.type == i).sum())
    out = {prefix + k: v for k, v in out.items()}
    # The live monitor's evidence (agentropy.monitor.rates); undefined rates are left out.
    rates = episode_rates(episodes, prefix=prefix)
    out.update({k: v for k, v in rates.items() if v is not None})
    return out
