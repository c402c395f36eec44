"""A scripted expert for ToolWorld: chat transcripts for supervised warm-up.

:func:`expert_messages` solves a task by calling a real
:class:`~agentropy.env.toolworld.ToolSession` and writes what it did as chat messages: the world's
system prompt, the question, then assistant turns (one short sentence, then a tool call or the
answer) interleaved with ``tool`` results.

The expert sees what an agent sees (tool results) plus the task's structure (``task.meta``: which
lookups, which operation); it never peeks at the planned faults. Its behaviour is designed for the
entropy rhythm DESIGN.md describes:

- act text (the tool call) is one canonical string, so a warm-started model is confident there;
  plan text is a small grammar (an optional short reasoning sentence, then one of several
  paraphrases of the action), so plan tokens have genuine entropy too;
- after an ambiguous failure (``error: lookup: service unavailable``, the same text for a
  transient fault and an outage) it picks ``retry`` or ``backup_lookup`` at random (``p_retry``),
  and switches to the other if the first choice fails (a second ``unavailable`` reveals an
  outage; ``backup_lookup`` on standby reveals that ``lookup`` is up). So a warm-started model
  is genuinely uncertain exactly where recovery is;
- after informative failures it does the one right thing: fix the arguments from the listed valid
  names (``bad_args``), or ``convert`` a drifted unit (``unexpected``);
- recovery sentences come from a few paraphrases, so recover-phase text has some entropy too;
- it plays only worlds whose faults are ``seen`` (:data:`~agentropy.env.faults.SEEN_FAULTS`):
  novel faults never occur in its transcripts.
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

# Every sentence comes from a small grammar: an optional short reasoning sentence, then one of
# several paraphrases of the action. Plan and recover text thus has genuine variety (the
# warm-started model's entropy is not pinned at zero outside the recovery choice), while the
# tool call itself is one canonical string (act tokens stay confident).
_LOOK = (
    "I will look up the {attr} of {e}.",
    "Let me look up the {attr} of {e}.",
    "I'll look up {e}'s {attr}.",
    "Looking up the {attr} of {e}.",
    "I will call lookup for the {attr} of {e}.",
)
_LOOK_WHY = (
    "The question asks for the {attr} of {e}.",
    "I need the {attr} of {e}.",
    "First I need the {attr} of {e}.",
)
_LOOK_NEXT = (
    "Now the {attr} of {e}.",
    "Next I need the {attr} of {e}.",
    "One more value: the {attr} of {e}.",
)
_LOOK_BACKUP = (
    "I will look up the {attr} of {e} with backup_lookup.",
    "lookup is down, so I will ask backup_lookup for the {attr} of {e}.",
    "I'll use backup_lookup for {e}'s {attr}.",
)
_GOT = (
    "The {attr} of {e} is {v}.",
    "{e}'s {attr} is {v}.",
    "Got {v} for {e}.",
)
_COMPUTE = (
    "I will compute {expr}.",
    "Now I compute {expr}.",
    "Let me calculate {expr}.",
    "Next, calc {expr}.",
)
_CONVERT_TASK = (
    "I will convert {v} {base} to {unit}.",
    "Now I convert {v} {base} into {unit}.",
    "The question wants {unit}, so I convert {v} {base}.",
)
_ANSWER = (
    "I have the answer.",
    "The answer is {v}.",
    "So the answer is {v}.",
    "Done.",
    "That gives {v}.",
)
_DIRECT = (
    "I can answer directly.",
    "No tool is needed.",
    "This is simple arithmetic.",
    "I can do this without tools.",
)
_RETRY = (
    "The lookup failed. I will retry.",
    "The service may be busy. I will try again.",
    "That call failed. I will retry it.",
    "Maybe a blip. Let me retry lookup.",
)
_SWITCH = (
    "The service may be down. I will use backup_lookup.",
    "lookup may be out. I will switch to backup_lookup.",
    "That call failed. I will try backup_lookup.",
    "lookup is unavailable, so I'll try the backup.",
)
_STILL_DOWN = (
    "lookup is still down. I will use backup_lookup.",
    "It failed again, so lookup is down. I will use backup_lookup.",
    "Two failures: lookup is out. Switching to backup_lookup.",
)
_STANDBY = (
    "The backup is on standby, so lookup is up. I will retry lookup.",
    "backup_lookup is not needed. I will retry lookup.",
    "lookup is serving again. Let me retry it.",
)
_FIX_ARGS = (
    "The attribute name is not valid. I will use {new}.",
    "The names changed. I will use {new}.",
    "The attribute is now called {new}. I will retry with it.",
)
_CONVERT = (
    "The value is in {unit}, not {base}. I will convert it.",
    "The unit changed to {unit}. I will convert it to {base}.",
    "That is {unit}; I need {base}. Converting.",
)
_WHY_PROB = 0.5
"""Probability that an action sentence is preceded by a short reasoning sentence."""


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

    def lookup(self, entity: str, attr: str, why: str, max_calls: int = 8) -> int:
        """Fetch ``attr`` of ``entity`` in its base unit, recovering from whatever happens.

        ``why`` is the reasoning sentence that may open the plan (already formatted, or "").
        """
        base = ATTRIBUTES[attr][0]
        tool = "backup_lookup" if self.lookup_down else "lookup"
        options = _LOOK_BACKUP if self.lookup_down else _LOOK
        sentence = self.pick(options, attr=attr, e=entity)
        if why and self.rng.random() < _WHY_PROB:
            sentence = f"{why} {sentence}"
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

    def compute(self, expression: str, got: str) -> int:
        sentence = self.pick(_COMPUTE, expr=expression)
        if self.rng.random() < _WHY_PROB:
            sentence = f"{got} {sentence}"
        result = self.say(sentence, ToolCall("calc", {"expression": expression}))
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
            out = str(calc_value(meta["expression"]))
            return self.answer(self.pick(_DIRECT), out)
        values: list[int] = []
        for i, (e, a) in enumerate(meta["lookups"]):
            if i == 0:
                why = self.pick(_LOOK_WHY, attr=a, e=e)
            else:
                prev_e, prev_a = meta["lookups"][i - 1]
                why = self.pick(_GOT, attr=prev_a, e=prev_e, v=values[-1])
                why = f"{why} {self.pick(_LOOK_NEXT, attr=a, e=e)}"
            values.append(self.lookup(e, a, why))
        last_e, last_a = meta["lookups"][-1]
        got = self.pick(_GOT, attr=last_a, e=last_e, v=values[-1])
        if kind == "lookup":
            out = values[0]
        elif kind == "convert":
            base, unit = ATTRIBUTES[last_a][0], meta["unit"]
            call = ToolCall("convert", {"value": values[0], "from_unit": base, "to_unit": unit})
            sentence = self.pick(_CONVERT_TASK, v=values[0], base=base, unit=unit)
            result = self.say(sentence, call)
            if not result.ok:
                raise RuntimeError(f"expert: convert failed: {result.content}")
            out = int(json.loads(result.content)["value"])
        elif kind == "calc":
            out = self.compute(f"{values[0]} {meta['op']} {meta['operand']}", got)
        elif kind == "combine":
            out = self.compute(f"{values[0]} {meta['op']} {values[1]}", got)
        else:
            raise ValueError(f"unknown task kind {kind!r}")
        return self.answer(self.pick(_ANSWER, v=out), str(out))


def run_expert(
    world: ToolWorld, task: Task, rng: random.Random | int | None = None, *, p_retry: float = 0.5
) -> ExpertRun:
    """Solve ``task`` against a fresh session; return the transcript and the session.

    ``p_retry`` is the probability of retrying (rather than switching to ``backup_lookup``) after
    an ambiguous ``unavailable`` error.
    """
    if not 0.0 <= p_retry <= 1.0:
        raise ValueError(f"p_retry must be in [0, 1], got {p_retry}")
    if world.config.faults != "seen":
        # Novel faults must never reach a transcript: recovering from them is what exploration
        # (sampling, RL) has to find, not something the warm start copies.
        raise ValueError(
            f"the expert plays only worlds with seen faults, got faults={world.config.faults!r}"
        )
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
