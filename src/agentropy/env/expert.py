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
  paraphrases of the action, with word-level alternatives), so plan tokens have genuine entropy
  too; L0 sums are written out (``7 + 9 = 16``) before the answer;
- after an ambiguous failure (``error: lookup: service unavailable``, the same text for a
  transient fault and an outage) it picks ``retry`` or ``backup_lookup`` at random (``p_retry``),
  and switches to the other if the first choice fails (a second ``unavailable`` reveals an
  outage; ``backup_lookup`` on standby reveals that ``lookup`` is up). So a warm-started model
  is genuinely uncertain exactly where recovery is;
- after informative failures it does the one right thing: fix the arguments from the listed valid
  names (``bad_args``), or ``convert`` a drifted unit (``unexpected``);
- recovery sentences come from the same kind of grammar, so recover-phase text has entropy too;
- it plays only worlds whose faults are ``seen`` (:data:`~agentropy.env.faults.SEEN_FAULTS`):
  novel faults never occur in its transcripts.
"""

from __future__ import annotations

import json
import random
import re
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
# several paraphrases of the action, each with word-level alternatives (``[a|b|c]`` picks one
# uniformly), so most plan and recover tokens are genuine choices (the warm-started model's
# entropy is not pinned at zero outside the recovery choice), while the tool call itself is one
# canonical string (act tokens stay confident). The words that carry the decision (retry or
# backup_lookup, the new attribute name, the units) stay in every paraphrase.
_LOOK = (
    "[I will|I'll|Let me|Now I will|So I will] [look up|check|fetch|get|find] the {attr} of {e}.",
    "[I will|I'll|Let me|So I will] [look up|check|fetch|get] {e}'s {attr} [now|first|here].",
    "[Looking up|Checking|Fetching|Getting] the {attr} of {e} [now|first|with lookup].",
    "[I will|I'll|Let me] [call|use|ask] lookup [for|about] the {attr} of {e}.",
)
_LOOK_WHY = (
    "The [question|task] [asks for|wants|needs] the {attr} of {e}.",
    "I [need|want|must find] the {attr} of {e}.",
    "[First|To start|Step one:] I [need|want] the {attr} of {e}.",
)
_LOOK_NEXT = (
    "[Now|Next] [the|I need the|I want the] {attr} of {e}.",
    "[Next|Then|After that] I [need|want] the {attr} of {e}.",
    "[One more|Another|A second] value: the {attr} of {e}.",
)
_LOOK_BACKUP = (
    "[I will|I'll|Let me] [look up|check|fetch|get] the {attr} of {e} [with|via|using] backup_lookup.",
    "lookup is [down|out], so [I will|I'll] [ask|use|call] backup_lookup [for|about] the {attr} of {e}.",
    "[I'll|I will|Let me] [use|call|ask] backup_lookup [for|about] {e}'s {attr}.",
)
_GOT = (
    "The {attr} of {e} is {v}.",
    "{e}'s {attr} [is|comes back as|was] {v}.",
    "[Got|I have|That gives] {v} for {e}.",
)
_COMPUTE = (
    "[I will|I'll|Let me|Now I will|Now I] [compute|calculate|work out|evaluate] {expr}.",
    "[Next|Then|Now], [calc|compute|calculate] {expr}.",
    "[I will|I'll|Let me] [use|call] calc [for|on] {expr}.",
)
_CONVERT_TASK = (
    "[I will|I'll|Let me|Now I] convert {v} {base} [to|into] {unit}.",
    "The [question|task] [wants|asks for|needs] {unit}, so I [convert|change] {v} {base}.",
    "[Converting|Changing] {v} {base} [to|into] {unit} [now|next].",
)
_ANSWER = (
    "[I have|I've got|That is|Here is] the [answer|result].",
    "[The answer|The result|So the answer|So the result] is {v}.",
    "[Done|Finished|All set]. [It is|The answer is|That makes] {v}.",
    "[That gives|This gives|It comes to] {v}.",
)
_DIRECT = (
    "[I can|Let me] answer [directly|right away|without tools]: {expr} = {v}.",
    "No tool is [needed|required|necessary]: {expr} = {v}.",
    "[This is|That is|It is] [simple|easy|plain] arithmetic: {expr} = {v}.",
    "[I can|I will|Let me] [do|work out|solve] this [without tools|in my head]: {expr} = {v}.",
)
_RETRY = (
    "The lookup [failed|errored|did not work]. [I will|I'll|Let me] [retry|try again].",
    "The service [may|might|could] be [busy|overloaded]. [I will|I'll|Let me] [try again|retry].",
    "That call [failed|errored]. [I will|I'll|Let me] [retry it|try it again|repeat it].",
    "[Maybe|Probably|Perhaps] [a blip|a glitch|just a hiccup]. [Let me|I will|I'll] retry lookup.",
)
_SWITCH = (
    "The service [may|might|could] be down. [I will|I'll|Let me] [use|try|switch to] backup_lookup.",
    "lookup [may|might|could] be [out|down]. [I will|I'll|Let me] [switch to|use|try] backup_lookup.",
    "That call [failed|errored]. [I will|I'll|Let me] [try|use] backup_lookup [instead|now].",
    "lookup is [unavailable|not answering], so [I'll|I will|let me] [try|use] the backup.",
)
_STILL_DOWN = (
    "lookup is [still|again] down. [I will|I'll|Let me] [use|switch to] backup_lookup.",
    "It failed [again|twice], so lookup is [down|out]. [I will|I'll|Let me] use backup_lookup.",
    "[Two|Repeated] failures: lookup is [out|down]. [Switching|Moving] to backup_lookup.",
)
_STANDBY = (
    "The backup is on standby, so lookup is [up|serving|fine]. [I will|I'll|Let me] retry lookup.",
    "backup_lookup is not [needed|in use]. [I will|I'll|Let me] [retry|try] lookup [again|once more].",
    "lookup is [serving|working|up] again. [Let me|I will|I'll] [retry it|try it again].",
)
_FIX_ARGS = (
    "The attribute name is not valid. [I will|I'll|Let me] use {new} [instead|now].",
    "The names [changed|were renamed]. [I will|I'll|Let me] [use|try] {new}.",
    "The attribute is now called {new}. [I will|I'll|Let me] [retry|try again] with it.",
)
_CONVERT = (
    "The value is in {unit}, not {base}. [I will|I'll|Let me] convert it.",
    "The unit [changed|switched] to {unit}. [I will|I'll|Let me] convert it to {base}.",
    "That is {unit}; I [need|want] {base}. [Converting|Converting it|I will convert].",
)
_SLOT = re.compile(r"\[([^\[\]]*)\]")
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
        """One paraphrase, each ``[a|b|c]`` slot filled uniformly at random, then formatted."""
        template = self.rng.choice(options)
        template = _SLOT.sub(lambda m: self.rng.choice(m.group(1).split("|")), template)
        return template.format(**fmt)

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
            total = str(calc_value(meta["expression"]))
            # The sum written out before the answer tag: short reasoning, and the two operands
            # sit right before the result instead of back in the question.
            return self.answer(self.pick(_DIRECT, expr=meta["expression"], v=total), total)
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
