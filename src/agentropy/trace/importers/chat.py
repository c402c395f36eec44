"""Tool-use transcripts in the formats people already have, as validated :class:`Conversation` s.

Formats read (``read_conversations`` picks one per file, see ``fmt``):

- ``chat``: OpenAI chat-completions messages, one conversation per JSONL line
  ``{"messages": [...], "tools": [...]?, "reward"|"success"?, "id"?, ...}`` or a JSON array of
  such objects. Roles ``system``, ``user``, ``assistant`` (``content`` and/or ``tool_calls``,
  each ``{"id", "type": "function", "function": {"name", "arguments": <JSON string>}}``) and
  ``tool`` (``tool_call_id``, ``name``, ``content``). Hermes/Qwen-style logs that keep the call
  inline in the assistant content (``<tool_call>{...}</tool_call>``, as our runner does) may omit
  ``tool_call_id``: the tool message then answers that inline call. Outcome fields map to ``success`` /
  ``reward`` (:data:`SUCCESS_KEYS`, :data:`REWARD_KEYS`); ``step`` is kept; anything else goes
  under ``meta``. ``messages_key`` names the list when a file calls it something else.
- ``verl``: the JSONL that verl's ``RayPPOTrainer._dump_generations`` writes to
  ``trainer.rollout_data_dir/<step>.jsonl`` (read in verl's ``verl/trainer/ppo/ray_trainer.py``,
  main branch of late 2025 / v0.5-0.6): ``{"input": str, "output": str, "gts"?: ..., "score":
  float, "step": int, <reward extras>...}``. ``input`` and ``output`` are *decoded text*
  (``batch_decode(..., skip_special_tokens=True)``) of the prompt and the response, the chat
  template already applied and its special tokens gone, so they cannot be split back into
  messages: they become a raw-text conversation (:attr:`Conversation.raw`) scored as one
  assistant turn whose tokens are a re-tokenisation of ``output``.
- ``trl``: the completions TRL's ``GRPOTrainer`` logs when ``log_completions=True`` (read in TRL
  1.16, ``trl/trainer/grpo_trainer.py``, ``log``): ``<output_dir>/completions/
  completions_<step>.parquet`` with columns ``step``, ``prompt``, ``completion`` (a list of
  messages for conversational datasets, else a string), one column per reward function,
  extra logged columns and ``advantage``. ``reward`` is the sum of the reward-function columns
  (every numeric column but ``step`` and ``advantage``), as GRPO sums them with unit weights.

Tool status: ``error`` when the content matches the failure detector (default
:data:`DEFAULT_ERROR_PATTERN`: a JSON object with an ``error`` key, or text starting with
``Error`` / ``error:``), else ``ok``; ``unexpected`` cannot be told from text alone.

Every malformed conversation raises :class:`InputError` naming the file, the line (or row) and
the field, e.g. ``messages[3].tool_calls[0].function.arguments``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agentropy.env.format import TOOL_CALL_OPEN, parse_assistant
from agentropy.errors import InputError
from agentropy.trace.model import ToolCall

__all__ = [
    "CHAT_ROLES",
    "DEFAULT_ERROR_PATTERN",
    "FORMATS",
    "REWARD_KEYS",
    "SUCCESS_KEYS",
    "Conversation",
    "FailureDetector",
    "has_logprobs",
    "read_conversations",
    "sniff_format",
    "validate_messages",
]

#: Roles of OpenAI chat-completions messages that a conversation may hold.
CHAT_ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
#: Keys read as the episode's success (first present wins); a boolean.
SUCCESS_KEYS: tuple[str, ...] = ("success", "correct", "solved")
#: Keys read as the episode's reward (first present wins); a number.
REWARD_KEYS: tuple[str, ...] = ("reward", "score")
#: Default failure detector: a JSON object with an ``error`` key, or ``Error...`` / ``error:...``.
DEFAULT_ERROR_PATTERN = r"\A\s*(?:Error|error:|\{\s*\"error\"\s*:)"

Format = Literal["auto", "chat", "verl", "trl", "logprobs"]
FORMATS: tuple[str, ...] = ("auto", "chat", "verl", "trl", "logprobs")


class FailureDetector:
    """Says whether a tool result failed: ``regex.search(content)``, with a JSON check.

    The default also accepts any JSON object with an ``error`` key wherever it sits (the regex
    only sees objects that start with it).
    """

    def __init__(self, pattern: str | None = None) -> None:
        try:
            self.regex = re.compile(pattern if pattern is not None else DEFAULT_ERROR_PATTERN)
        except re.error as err:
            raise ValueError(f"--error-pattern is not a valid regular expression: {err}") from None
        self.default = pattern is None

    def __call__(self, content: str) -> bool:
        if self.regex.search(content):
            return True
        if self.default and content.lstrip().startswith("{"):
            try:
                obj = json.loads(content)
            except ValueError:
                return False
            return isinstance(obj, dict) and "error" in obj
        return False


@dataclass
class Conversation:
    """One transcript to score: validated messages plus episode-level fields."""

    id: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    """OpenAI chat messages (validated; ``content`` normalised to a string or None)."""
    tools: list[dict[str, Any]] | None = None
    """Tool schemas passed to the chat template."""
    success: bool | None = None
    reward: float | None = None
    step: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    raw: tuple[str, str] | None = None
    """``(prompt_text, completion_text)`` for pre-rendered dumps (verl): no messages then."""

    def tool_turns(self) -> list[tuple[int, ToolCall | None]]:
        """``(message index, call answered)`` of each tool message, in order."""
        calls: dict[str, ToolCall] = {}
        inline: ToolCall | None = None
        out: list[tuple[int, ToolCall | None]] = []
        for i, m in enumerate(self.messages):
            if m["role"] == "assistant":
                for tc in m.get("tool_calls") or []:
                    f = tc["function"]
                    calls[tc["id"]] = ToolCall(f["name"], json.loads(f["arguments"]))
                inline = parse_assistant(m.get("content") or "").call
            elif m["role"] == "tool":
                call_id = m.get("tool_call_id")
                out.append((i, calls.get(call_id) if call_id is not None else inline))
        return out


def _text(content: Any, where: str, w: dict[str, Any]) -> str | None:
    """Message content as text: a string, None, or a list of ``{"type": "text", "text"}`` parts."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, Mapping) or not isinstance(part.get("text"), str):
                raise InputError(
                    "content parts must be {'type': 'text', 'text': str}",
                    field=f"{where}.content[{j}]",
                    **w,
                )
            parts.append(part["text"])
        return "".join(parts)
    raise InputError(
        f"content must be a string, a list of text parts or null, got {type(content).__name__}",
        field=f"{where}.content",
        **w,
    )


def validate_messages(
    messages: Any, *, path: str | Path | None = None, line: int | None = None, key: str = "messages"
) -> list[dict[str, Any]]:
    """Check OpenAI chat messages and return them normalised (content as text).

    Raises :class:`InputError` naming ``path``, ``line`` and the field (``messages[i].role``...)
    for: a non-list, a non-object message, an unknown role, user/system messages without text,
    an assistant message with neither content nor tool calls, a tool call without a function
    name or whose ``arguments`` is not a JSON object string, a tool message whose
    ``tool_call_id`` answers no earlier call, and a conversation without an assistant message.
    """
    w: dict[str, Any] = {"path": path, "line": line}
    if not isinstance(messages, list) or not messages:
        raise InputError("must be a non-empty list of chat messages", field=key, **w)
    out: list[dict[str, Any]] = []
    open_calls: set[str] = set()
    inline_pending = False
    n_assistant = 0
    for i, m in enumerate(messages):
        where = f"{key}[{i}]"
        if not isinstance(m, Mapping):
            raise InputError(f"must be an object, got {type(m).__name__}", field=where, **w)
        role = m.get("role")
        if role not in CHAT_ROLES:
            raise InputError(
                f"unknown role {role!r}; expected one of {list(CHAT_ROLES)}",
                field=f"{where}.role",
                **w,
            )
        msg = dict(m)
        msg["content"] = _text(m.get("content"), where, w)
        if role != "tool":
            inline_pending = role == "assistant" and TOOL_CALL_OPEN in (msg["content"] or "")
        if role in ("system", "user"):
            if not msg["content"]:
                raise InputError(f"{role} message has no text", field=f"{where}.content", **w)
        elif role == "assistant":
            n_assistant += 1
            calls = m.get("tool_calls") or []
            if not isinstance(calls, list):
                raise InputError("must be a list", field=f"{where}.tool_calls", **w)
            if not msg["content"] and not calls:
                raise InputError(
                    "assistant message has neither content nor tool_calls",
                    field=f"{where}.content",
                    **w,
                )
            norm_calls = []
            for j, tc in enumerate(calls):
                cw = f"{where}.tool_calls[{j}]"
                f = tc.get("function") if isinstance(tc, Mapping) else None
                if (
                    not isinstance(f, Mapping)
                    or not isinstance(f.get("name"), str)
                    or not f["name"]
                ):
                    raise InputError("needs function.name, a string", field=f"{cw}.function", **w)
                args = f.get("arguments", "{}")
                if isinstance(args, Mapping):  # some logs store the object itself
                    args = json.dumps(args, ensure_ascii=False)
                try:
                    parsed = json.loads(args) if isinstance(args, str) else None
                except ValueError:
                    parsed = None
                if not isinstance(parsed, dict):
                    raise InputError(
                        f"must be a JSON object string, got {str(args)[:40]!r}",
                        field=f"{cw}.function.arguments",
                        **w,
                    )
                call_id = tc.get("id") or f"call_{i}_{j}"
                if not isinstance(call_id, str):
                    raise InputError("must be a string", field=f"{cw}.id", **w)
                open_calls.add(call_id)
                norm_calls.append(
                    {"id": call_id, "type": "function",
                     "function": {"name": f["name"], "arguments": args}}
                )  # fmt: skip
            if norm_calls:
                msg["tool_calls"] = norm_calls
            else:
                msg.pop("tool_calls", None)
        else:  # tool
            call_id = m.get("tool_call_id")
            # Hermes-style logs keep the call inline in the content and give no id: the message
            # then answers the inline call of the assistant message it follows.
            inline_ok = call_id is None and inline_pending
            if not inline_ok and (not isinstance(call_id, str) or call_id not in open_calls):
                raise InputError(
                    f"tool message answers no earlier tool call (tool_call_id {call_id!r})",
                    field=f"{where}.tool_call_id",
                    **w,
                )
            if msg["content"] is None:
                raise InputError("tool message has no content", field=f"{where}.content", **w)
        out.append(msg)
    if n_assistant == 0:
        raise InputError("no assistant message to score", field=key, **w)
    return out


def _outcome(obj: Mapping[str, Any], w: dict[str, Any]) -> tuple[bool | None, float | None]:
    success = reward = None
    for k in SUCCESS_KEYS:
        if k in obj and obj[k] is not None:
            if not isinstance(obj[k], bool):
                raise InputError(f"must be a boolean, got {obj[k]!r}", field=k, **w)
            success = obj[k]
            break
    for k in REWARD_KEYS:
        if k in obj and obj[k] is not None:
            v = obj[k]
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise InputError(f"must be a number, got {v!r}", field=k, **w)
            reward = float(v)
            break
    return success, reward


def _step(obj: Mapping[str, Any], w: dict[str, Any]) -> int | None:
    v = obj.get("step")
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise InputError(f"must be an integer, got {v!r}", field="step", **w)
    return v


def _chat(obj: Any, w: dict[str, Any], default_id: str, key: str) -> Conversation:
    if not isinstance(obj, Mapping):
        raise InputError(f"must be a JSON object, got {type(obj).__name__}", **w)
    if key not in obj:
        raise InputError("missing the messages list (use --messages-key for another name)",
                         field=key, **w)  # fmt: skip
    messages = validate_messages(obj[key], key=key, **w)
    tools = obj.get("tools")
    if tools is not None and (
        not isinstance(tools, list) or not all(isinstance(t, Mapping) for t in tools)
    ):
        raise InputError("must be a list of tool schemas (objects)", field="tools", **w)
    cid = obj.get("id", default_id)
    if not isinstance(cid, str | int) or isinstance(cid, bool):
        raise InputError(f"must be a string, got {cid!r}", field="id", **w)
    success, reward = _outcome(obj, w)
    used = {key, "tools", "id", "step", *SUCCESS_KEYS, *REWARD_KEYS}
    meta = {k: v for k, v in obj.items() if k not in used}
    return Conversation(
        id=str(cid), messages=messages, tools=tools or None, success=success, reward=reward,
        step=_step(obj, w), meta=meta,
    )  # fmt: skip


def _verl(obj: Any, w: dict[str, Any], default_id: str) -> Conversation:
    if not isinstance(obj, Mapping):
        raise InputError(f"must be a JSON object, got {type(obj).__name__}", **w)
    for k in ("input", "output"):
        if not isinstance(obj.get(k), str):
            raise InputError("verl dump lines need 'input' and 'output' strings", field=k, **w)
    _, reward = _outcome(obj, w)
    meta = {k: v for k, v in obj.items() if k not in ("input", "output", "score", "step")}
    meta["source"] = "verl"
    return Conversation(
        id=default_id, reward=reward, step=_step(obj, w), meta=meta,
        raw=(obj["input"], obj["output"]),
    )  # fmt: skip


def _json_items(p: Path) -> Iterator[tuple[int, Any]]:
    """(line, object) of a JSONL file or of a JSON array file (line = 1-based array index)."""
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror}", path=p) from None
    except UnicodeDecodeError:
        raise InputError("not UTF-8 text", path=p) from None
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except ValueError as err:
            raise InputError(f"invalid JSON: {err}", path=p) from None
        yield from enumerate(items, start=1)
        return
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except ValueError as err:
            raise InputError(f"invalid JSON: {err}", path=p, line=n) from None


def _trl(p: Path, messages_key: str) -> Iterator[Conversation]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(p).to_pylist()
    except Exception as err:  # pyarrow raises several types for a bad file
        raise InputError(f"cannot read Parquet: {err}", path=p) from None
    for r, row in enumerate(rows):
        w: dict[str, Any] = {"path": p, "row": r}
        for k in ("prompt", "completion"):
            if k not in row:
                raise InputError("TRL completions need 'prompt' and 'completion'", field=k, **w)
        prompt, completion = row["prompt"], row["completion"]
        rewards = [
            float(v) for k, v in row.items()
            if k not in ("step", "advantage", "prompt", "completion")
            and isinstance(v, int | float) and not isinstance(v, bool)
        ]  # fmt: skip
        step = row.get("step")
        meta = {"source": "trl", "advantage": row.get("advantage")}
        cid = f"{p.stem}-{r}"
        reward = sum(rewards) if rewards else None
        if isinstance(prompt, str) and isinstance(completion, str):
            yield Conversation(
                id=cid, reward=reward, step=step, meta=meta, raw=(prompt, completion)
            )
            continue
        if not isinstance(prompt, list) or not isinstance(completion, list):
            raise InputError("prompt and completion must both be text or both be messages",
                             field="completion", **w)  # fmt: skip
        # pyarrow fills absent struct fields with None; drop them so templates see plain dicts.
        msgs = [{k: v for k, v in m.items() if v is not None} for m in (*prompt, *completion)]
        for m in msgs:
            for tc in m.get("tool_calls") or []:
                fn = tc.get("function") or {}
                if isinstance(fn.get("arguments"), Mapping):
                    fn["arguments"] = json.dumps(fn["arguments"], ensure_ascii=False)
        messages = validate_messages(msgs, path=p, key="prompt+completion")
        yield Conversation(id=cid, messages=messages, reward=reward, step=step, meta=meta)


def has_logprobs(obj: Any) -> bool:
    """Whether a parsed line is a chat-completion response (``choices``) or a conversation whose
    assistant messages carry ``logprobs`` (:mod:`~agentropy.trace.importers.logprobs`)."""
    if not isinstance(obj, Mapping):
        return False
    if isinstance(obj.get("choices"), list):
        return True
    msgs = obj.get("messages")
    return isinstance(msgs, list) and any(
        isinstance(m, Mapping) and m.get("role") == "assistant" and m.get("logprobs") for m in msgs
    )


def sniff_format(path: Path) -> str:
    """``trl`` for a Parquet file; from the first object: ``logprobs`` if it carries top-k
    logprobs, ``verl`` if it has ``input``/``output`` strings; else ``chat``."""
    if path.suffix == ".parquet":
        return "trl"
    for _, obj in _json_items(path):
        if has_logprobs(obj):
            return "logprobs"
        if isinstance(obj, Mapping) and isinstance(obj.get("input"), str) and "output" in obj:
            return "verl"
        break
    return "chat"


def read_conversations(
    path: str | Path, *, fmt: Format = "auto", messages_key: str = "messages"
) -> Iterator[Conversation]:
    """Stream the conversations of one file (validated; see the module docstring for formats).

    Conversations without an ``id`` get ``<file stem>-<line>``; ids are what resuming a scoring
    run matches on, so keep them stable.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError("no such file", path=p)
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    kind = sniff_format(p) if fmt == "auto" else fmt
    if kind == "logprobs":
        raise InputError(
            "holds top-k logprobs: read it with agentropy.trace.importers.logprobs (no model "
            "needed)",
            path=p,
        )
    if kind == "trl":
        yield from _trl(p, messages_key)
        return
    for line, obj in _json_items(p):
        w: dict[str, Any] = {"path": p, "line": line}
        default_id = f"{p.stem}-{line}"
        if kind == "verl":
            yield _verl(obj, w, default_id)
        else:
            yield _chat(obj, w, default_id, messages_key)
