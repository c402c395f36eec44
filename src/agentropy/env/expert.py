"""A scripted expert for ToolWorld: chat transcripts for supervised warm-up.

:func:`expert_messages` solves a task by calling a real
:class:`~agentropy.env.toolworld.ToolSession` and writes what it did as chat messages: the world's
system prompt, the question, then assistant turns (one short sentence, then a tool call or the
answer) interleaved with ``tool`` results.

The expert sees what an agent sees (tool results) plus the task's structure (``task.meta``: which
lookups, which operation); it never peeks at the planned faults. Its behaviour is designed for the
entropy rhythm DESIGN.md describes:

- plan and act text is fixed templates, so a warm-started model is confident there;
- after an ambiguous failure (``error: lookup: service unavailable``, the same text for a
  transient fault and an outage) it picks ``retry`` or ``backup_lookup`` at random (``p_retry``),
  and switches to the other if the first choice fails (a second ``unavailable`` reveals an
  outage; ``backup_lookup`` on standby reveals that ``lookup`` is up). So a warm-started model
  is genuinely uncertain exactly where recovery is;
- after informative failures it does the one right thing: fix the arguments from the listed valid
  names (``bad_args``), or ``convert`` a drifted unit (``unexpected``);
- recovery sentences come from a few paraphrases, so recover-phase text has some entropy too.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

from agentropy.env.format import render_answer, render_tool_call, tool_message
from agentropy.env.toolworld import (
    ATTRIBUTES,
    STANDBY,
    UNAVAILABLE,
    Task,
    ToolResult,
    ToolSession,
    ToolWorld,
    calc_value,
)
from agentropy.trace import ToolCall

__all__ = ["ExpertRun", "expert_messages", "run_expert"]

_RETRY = (
    "The lookup failed. I will retry.",
    "The service may be busy. I will try again.",
    "That call failed. I will retry it.",
)
_SWITCH = (
    "The service may be down. I will use backup_lookup.",
    "lookup may be out. I will switch to backup_lookup.",
    "That call failed. I will try backup_lookup.",
)
_STILL_DOWN = (
    "lookup is still down. I will use backup_lookup.",
    "It failed again, so lookup is down. I will use backup_lookup.",
)
_STANDBY = (
    "The backup is on standby, so lookup is up. I will retry lookup.",
    "backup_lookup is not needed. I will retry lookup.",
)
_FIX_ARGS = (
    "The attribute name is not valid. I will use {new}.",
    "The names changed. I will use {new}.",
)
_CONVERT = (
    "The value is in {unit}, not {base}. I will convert it.",
    "The unit changed to {unit}. I will convert it to {base}.",
)


@dataclass
class ExpertRun:
    """One expert episode: the transcript plus what happened."""

    messages: list[dict[str, Any]]
    """Chat messages: system, user, then assistant / tool turns."""
    session: ToolSession
    """The session the expert played against (faults fired, call log)."""
    answer: str | None = None
    """The final answer the expert gave."""
    strategies: list[str] = field(default_factory=list)
    """Recovery strategies used, in order (``retry``, ``backup_lookup``, ``fix_args``, ...)."""

    @property
    def success(self) -> bool:
        return self.session.check_answer(self.answer)


class _Expert:
    def __init__(self, world: ToolWorld, task: Task, rng: random.Random, p_retry: float) -> None:
        self.world, self.task, self.rng, self.p_retry = world, task, rng, p_retry
        self.session = world.start(task)
        self.messages: list[dict[str, Any]] = [
            {"role": "system", "content": world.system_prompt()},
            {"role": "user", "content": task.question},
        ]
        self.strategies: list[str] = []
        self.lookup_down = False  # learned from a repeated "unavailable"
        self.renamed: dict[str, str] = {}  # attribute -> new name, learned from a bad_args error

    def say(self, sentence: str, call: ToolCall) -> ToolResult:
        self.messages.append(
            {"role": "assistant", "content": f"{sentence}\n{render_tool_call(call)}"}
        )
        result = self.session.call(call)
        self.messages.append(tool_message(call.name, result.content))
        return result

    def pick(self, options: tuple[str, ...], **fmt: Any) -> str:
        return self.rng.choice(options).format(**fmt)

    def lookup(self, entity: str, attr: str, max_calls: int = 8) -> int:
        """Fetch ``attr`` of ``entity`` in its base unit, recovering from whatever happens."""
        base = ATTRIBUTES[attr][0]
        tool = "backup_lookup" if self.lookup_down else "lookup"
        sentence = f"I will look up the {attr} of {entity}."
        if tool == "backup_lookup":
            sentence = f"I will look up the {attr} of {entity} with backup_lookup."
        last = None  # last recovery action after an "unavailable"
        for _ in range(max_calls):
            args = {"entity": entity, "attribute": self.renamed.get(attr, attr)}
            result = self.say(sentence, ToolCall(tool, args))
            if result.status in ("ok", "unexpected"):
                data = json.loads(result.content)
                value, unit = int(data["value"]), str(data["unit"])
                if unit == base:
                    return value
                self.strategies.append("convert")
                sentence = self.pick(_CONVERT, unit=unit, base=base)
                conv = ToolCall("convert", {"value": value, "from_unit": unit, "to_unit": base})
                result = self.say(sentence, conv)
                if result.ok:
                    return int(json.loads(result.content)["value"])
                raise RuntimeError(f"expert: convert failed: {result.content}")
            text = result.content
            if text == UNAVAILABLE:
                if last == "retry":
                    # A second failure right after a retry: an outage, not a blip.
                    self.lookup_down = True
                    tool, last, sentence = "backup_lookup", "backup_lookup", self.pick(_STILL_DOWN)
                elif self.rng.random() < self.p_retry:
                    tool, last, sentence = "lookup", "retry", self.pick(_RETRY)
                else:
                    tool, last, sentence = "backup_lookup", "backup_lookup", self.pick(_SWITCH)
                self.strategies.append(last)
            elif text == STANDBY:
                tool, last, sentence = "lookup", "retry", self.pick(_STANDBY)
                self.strategies.append("retry")
            elif "invalid attribute" in text and "valid:" in text:
                valid = [v.strip() for v in text.split("valid:", 1)[1].split(",")]
                new = next((v for v in valid if v == attr or v.startswith(attr + "_")), None)
                if new is None:
                    raise RuntimeError(f"expert: no valid name for {attr} in {text!r}")
                self.renamed[attr] = new
                self.strategies.append("fix_args")
                sentence = self.pick(_FIX_ARGS, new=new)
            else:
                raise RuntimeError(f"expert: unexpected tool error {text!r}")
        raise RuntimeError(f"expert: lookup of {attr} of {entity} did not succeed")

    def compute(self, expression: str) -> int:
        result = self.say(
            f"I will compute {expression}.", ToolCall("calc", {"expression": expression})
        )
        if not result.ok:
            raise RuntimeError(f"expert: calc failed: {result.content}")
        return int(json.loads(result.content)["value"])

    def answer(self, sentence: str, answer: str) -> str:
        self.messages.append(
            {"role": "assistant", "content": f"{sentence}\n{render_answer(answer)}"}
        )
        return answer

    def solve(self) -> str:
        meta = self.task.meta
        kind = meta["kind"]
        if kind == "arith":
            return self.answer("I can answer directly.", str(calc_value(meta["expression"])))
        values = [self.lookup(e, a) for e, a in meta["lookups"]]
        if kind == "lookup":
            out = values[0]
        elif kind == "convert":
            attr = meta["lookups"][0][1]
            base, unit = ATTRIBUTES[attr][0], meta["unit"]
            call = ToolCall("convert", {"value": values[0], "from_unit": base, "to_unit": unit})
            result = self.say(f"I will convert {values[0]} {base} to {unit}.", call)
            if not result.ok:
                raise RuntimeError(f"expert: convert failed: {result.content}")
            out = int(json.loads(result.content)["value"])
        elif kind == "calc":
            out = self.compute(f"{values[0]} {meta['op']} {meta['operand']}")
        elif kind == "combine":
            out = self.compute(f"{values[0]} {meta['op']} {values[1]}")
        else:
            raise ValueError(f"unknown task kind {kind!r}")
        return self.answer("I have the answer.", str(out))


def run_expert(
    world: ToolWorld, task: Task, rng: random.Random | int | None = None, *, p_retry: float = 0.5
) -> ExpertRun:
    """Solve ``task`` against a fresh session; return the transcript and the session.

    ``p_retry`` is the probability of retrying (rather than switching to ``backup_lookup``) after
    an ambiguous ``unavailable`` error.
    """
    if not 0.0 <= p_retry <= 1.0:
        raise ValueError(f"p_retry must be in [0, 1], got {p_retry}")
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)
    expert = _Expert(world, task, rng, p_retry)
    answer = expert.solve()
    return ExpertRun(expert.messages, expert.session, answer, expert.strategies)


def expert_messages(
    world: ToolWorld, task: Task, rng: random.Random | int | None = None
) -> list[dict[str, Any]]:
    """Chat messages of the scripted expert solving ``task`` (see the module docstring)."""
    return run_expert(world, task, rng).messages
