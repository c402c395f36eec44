"""The text protocol between an agent and ToolWorld: Hermes/Qwen-style tool calls and answers.

An assistant turn is free text that ends in at most one of

- a tool call, ``<tool_call>{"name": "lookup", "arguments": {"entity": "Kalo"}}</tool_call>``
  (the Hermes / Qwen2.5 convention: a JSON object with ``name`` and ``arguments``), or
- a final answer, ``<answer>42</answer>``.

Tool results go back to the agent as ``tool`` chat messages (:func:`tool_message`).

:func:`parse_assistant` never raises: any text, however broken, becomes a :class:`ParsedTurn`.
A call it cannot read (unclosed tag, bad JSON, missing ``name`` / ``arguments``) gives
``kind == "tool_call"`` with an informative ``error``; the runner sends that error back to the
agent as a tool turn with status ``error`` (via :meth:`ToolSession.call_error`), so a malformed
call costs a turn instead of crashing the rollout. Whether the named tool exists and whether its
arguments are valid is checked by the session against the world's tools, not here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from agentropy.trace import ToolCall

__all__ = [
    "ANSWER_CLOSE",
    "ANSWER_OPEN",
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "ParsedTurn",
    "parse_assistant",
    "render_answer",
    "render_tool_call",
    "tool_message",
]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"

TurnKind = Literal["tool_call", "answer", "none"]

# Cap on how much of a broken payload is echoed back in an error message: the agent sees the
# message, and echoing a runaway generation back would only lengthen the context.
_ECHO_CHARS = 60


@dataclass(frozen=True, slots=True)
class ParsedTurn:
    """What an assistant turn asks for."""

    kind: TurnKind
    """``tool_call`` (a call tag was opened), ``answer`` (an answer tag), or ``none``."""
    call: ToolCall | None = None
    """The parsed call; None if unreadable. May be partial (name only) when ``error`` is set."""
    answer: str | None = None
    """Answer text with surrounding whitespace stripped (``kind == "answer"`` only)."""
    error: str | None = None
    """Why the call could not be read; shown to the agent as an ``error`` tool result."""
    text: str = ""
    """The free text before the tag (the plan / recovery sentence), stripped."""


def render_tool_call(call: ToolCall) -> str:
    """The canonical text of a tool call (compact JSON, so a tiny model has few tokens to emit)."""
    payload = {"name": call.name, "arguments": call.arguments}
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    # A string holding the closing tag would end the call early: JSON's "\/" escape keeps it
    # one string (no ToolWorld name or argument contains "</", so their text is unchanged).
    body = body.replace("</", "<\\/")
    return f"{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}"


def render_answer(answer: str) -> str:
    """The canonical text of a final answer."""
    return f"{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"


def tool_message(name: str | None, content: str) -> dict[str, Any]:
    """A ``tool`` chat message carrying a tool's result (``name`` is None for unparseable calls)."""
    msg: dict[str, Any] = {"role": "tool", "content": content}
    if name is not None:
        msg["name"] = name
    return msg


def _echo(s: str) -> str:
    s = " ".join(s.split())
    return s if len(s) <= _ECHO_CHARS else s[:_ECHO_CHARS] + "..."


def _parse_call(body: str) -> tuple[ToolCall | None, str | None]:
    """Parse the JSON between the call tags; return ``(call, error)``."""
    body = body.strip()
    if not body:
        return None, 'empty tool call; expected {"name": ..., "arguments": {...}}'
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as exc:
        # json.JSONDecodeError is a ValueError; deeply nested garbage raises RecursionError.
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        return None, f"invalid JSON in tool call ({msg}): {_echo(body)}"
    if not isinstance(obj, dict):
        return None, 'tool call must be a JSON object {"name": ..., "arguments": {...}}'
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return None, 'tool call needs "name", a non-empty string'
    name = name.strip()
    if "arguments" not in obj:
        return ToolCall(name, {}), f'tool call to {name} needs "arguments", a JSON object'
    args = obj["arguments"]
    if isinstance(args, str):
        # Some models emit the arguments as a JSON-encoded string (OpenAI wire format); accept it.
        try:
            args = json.loads(args)
        except (ValueError, RecursionError):
            return ToolCall(name, {}), f'"arguments" of {name} must be a JSON object'
    if not isinstance(args, dict):
        return ToolCall(name, {}), f'"arguments" of {name} must be a JSON object'
    return ToolCall(name, args), None


def parse_assistant(text: Any) -> ParsedTurn:
    """Parse one assistant turn. Never raises.

    The first of ``<tool_call>`` / ``<answer>`` in the text decides the kind; text after the
    first complete tag is ignored (one action per turn). A missing closing tag is tolerated
    (generation may stop on it): an ``<answer>`` then takes the rest of the text, and a
    ``<tool_call>`` is accepted if the rest of the text is one valid call object.
    """
    try:
        if not isinstance(text, str):
            return ParsedTurn("none", error="assistant turn is not text")
        i_call = text.find(TOOL_CALL_OPEN)
        i_ans = text.find(ANSWER_OPEN)
        if i_call < 0 and i_ans < 0:
            return ParsedTurn("none", text=text.strip())
        if i_call >= 0 and (i_ans < 0 or i_call < i_ans):
            prefix = text[:i_call].strip()
            start = i_call + len(TOOL_CALL_OPEN)
            end = text.find(TOOL_CALL_CLOSE, start)
            if end < 0:
                # Generation may stop on the closing tag; a complete JSON object is accepted.
                call, err = _parse_call(text[start:])
                if err is not None:
                    err = f"{err} (and the call is not closed with {TOOL_CALL_CLOSE})"
                return ParsedTurn("tool_call", call=call, error=err, text=prefix)
            call, err = _parse_call(text[start:end])
            return ParsedTurn("tool_call", call=call, error=err, text=prefix)
        prefix = text[:i_ans].strip()
        start = i_ans + len(ANSWER_OPEN)
        end = text.find(ANSWER_CLOSE, start)
        answer = text[start:] if end < 0 else text[start:end]
        return ParsedTurn("answer", answer=answer.strip(), text=prefix)
    except Exception as exc:  # never crash a rollout on model output
        return ParsedTurn("none", error=f"could not parse assistant turn: {type(exc).__name__}")
