"""Supervised data for the tiny agent: ToolWorld expert transcripts, entity renaming and copy
drills.

The expert chooses among several recovery strategies at random where recovery is ambiguous
(:mod:`agentropy.env.expert`), so the warm-started policy is confident on tool-call syntax and
uncertain exactly at recovery choices: the starting point the RL pieces need. Renaming
(:func:`_rename_entities`) and copy drills (:func:`copy_drill`) make copying from the context the
only way to predict names and values (see :mod:`agentropy.agent.tiny.sft` for why).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from typing import Any

from agentropy.env.format import ANSWER_CLOSE, ANSWER_OPEN, TOOL_CALL_CLOSE, TOOL_CALL_OPEN

__all__ = ["arith_drill", "copy_drill", "decision_drills"]


def _world(world_seed: int) -> Any:
    from agentropy.env.toolworld import ToolWorld, ToolWorldConfig

    return ToolWorld(ToolWorldConfig(seed=world_seed))


def _expert_conversations(
    world: Any, *, split: str, levels: Sequence[int], n: int, seed: int
) -> list[tuple[int, list[dict[str, Any]]]]:
    """``(level, messages)``: one expert transcript per task, deterministic in the arguments."""
    from agentropy.env.expert import expert_messages

    conversations: list[tuple[int, list[dict[str, Any]]]] = []
    for level in levels:
        tasks = world.tasks(split=split, level=level, n=n, seed=seed)
        rng = random.Random(f"{seed}:{split}:{level}")
        conversations.extend((level, expert_messages(world, task, rng)) for task in tasks)
    return conversations


_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def _rename_entities(
    world: Any,
    conversations: Sequence[tuple[int, list[dict[str, Any]]]],
    *,
    prob: float,
    seed: int,
) -> list[tuple[int, list[dict[str, Any]]]]:
    """Replace, with probability ``prob`` per transcript, its train entity names by fresh ones.

    A name is replaced consistently in every message (question, plans, calls, tool results), so
    the transcript stays coherent: values come from tool results, never from the name. Fresh
    names are two consonant-vowel syllables (``Dupe``), never a name of the world.
    """
    rng = random.Random(f"rename:{seed}")
    taken = set(world.kb)
    name_re = re.compile(
        r"\b(?:" + "|".join(map(re.escape, sorted(world.entities["train"], key=len)[::-1])) + r")\b"
    )

    def fresh() -> str:
        while True:
            name = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(2))
            name = name.capitalize()
            if name not in taken:
                return name

    out = []
    for level, messages in conversations:
        if rng.random() >= prob:
            out.append((level, messages))
            continue
        mapping: dict[str, str] = {}

        def substitute(match: re.Match[str], mapping: dict[str, str] = mapping) -> str:
            return mapping.setdefault(match.group(0), fresh())

        renamed = [
            {**m, "content": name_re.sub(substitute, m["content"])}
            if isinstance(m.get("content"), str)
            else m
            for m in messages
        ]
        out.append((level, renamed))
    return out


_DRILL_WORDS = (
    "age", "weight", "height", "distance", "years", "months", "kg", "g", "km", "m", "cm",
    "value", "unit", "lookup", "backup_lookup", "calc", "convert", "plus", "minus", "times",
)  # fmt: skip


def _drill_name(rng: random.Random) -> str:
    """A random two- or three-syllable name (``Zupe``, ``Kalomi``), as in renamed transcripts."""
    n = 2 if rng.random() < 0.8 else 3
    return "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(n)).capitalize()


def _drill_number(rng: random.Random) -> str:
    return str(rng.randint(0, 10 ** rng.choice((1, 2, 2, 2, 3, 4, 5)) - 1))


def copy_drill(rng: random.Random) -> list[dict[str, Any]]:
    """One synthetic copy exercise as chat messages (a user turn, then the assistant's reply).

    The replies can only be predicted by copying from the user turn, so nearly every trained
    token is a copy token: induction heads, which the transcripts need for entity names and
    tool-result values but teach slowly (few of their tokens are copies), form far sooner.
    Three kinds, at random (half of them ``echo``):

    - ``echo``: a list of random names, numbers and ToolWorld words, repeated verbatim;
    - ``recall``: several ``the <attr> of <Name> is <n>`` facts, then a question about one; the
      reply is ``<answer>n</answer>`` (attend to the right key, copy the value after it);
    - ``call``: a ToolWorld question (``What is the <attr> of <Name>?``) answered with the
      expert's plan sentence and lookup call, or a tool result answered with its value.
    """
    kind = rng.choices(("echo", "recall", "call"), weights=(2, 1, 1))[0]
    if kind == "echo":
        items = []
        for _ in range(rng.randint(4, 12)):
            r = rng.random()
            if r < 0.4:
                items.append(_drill_name(rng))
            elif r < 0.75:
                items.append(_drill_number(rng))
            else:
                items.append(rng.choice(_DRILL_WORDS))
        text = " ".join(items)
        return [
            {"role": "user", "content": f"Repeat: {text}"},
            {"role": "assistant", "content": text},
        ]
    if kind == "recall":
        attrs = ("age", "weight", "height", "distance")
        facts = [
            (rng.choice(attrs), _drill_name(rng), _drill_number(rng))
            for _ in range(rng.randint(2, 6))
        ]
        attr, name, value = rng.choice(facts)
        lines = "\n".join(f"The {a} of {e} is {v}." for a, e, v in facts)
        return [
            {"role": "user", "content": f"{lines}\nWhat is the {attr} of {name}?"},
            {"role": "assistant", "content": f"{ANSWER_OPEN}{value}{ANSWER_CLOSE}"},
        ]
    attr = rng.choice(("age", "weight", "height", "distance"))
    name = _drill_name(rng)
    if rng.random() < 0.5:
        tool = "lookup" if rng.random() < 0.8 else "backup_lookup"
        call = json.dumps(
            {"name": tool, "arguments": {"entity": name, "attribute": attr}},
            separators=(",", ":"),
        )
        return [
            {"role": "user", "content": f"What is the {attr} of {name}?"},
            {
                "role": "assistant",
                "content": f"I will look up the {attr} of {name}.\n"
                f"{TOOL_CALL_OPEN}{call}{TOOL_CALL_CLOSE}",
            },
        ]
    value = _drill_number(rng)
    unit = rng.choice(("years", "kg", "m", "km", "months", "g", "cm"))
    return [
        {"role": "tool", "content": json.dumps({"value": int(value), "unit": unit})},
        {"role": "assistant", "content": f"I have the answer.\n{ANSWER_OPEN}{value}{ANSWER_CLOSE}"},
    ]


_OP_WORDS = {"plus": "+", "minus": "-", "times": "*"}


def arith_drill(rng: random.Random, *, max_operand: int = 9) -> list[dict[str, Any]]:
    """One synthetic arithmetic exercise as chat messages (a user turn, then the reply).

    Two skills the transcripts teach with too few tokens for a small model to learn them: in a
    transcript batch of ~5,000 assistant tokens an L0 sum is one token and a calc operator
    one more, so the greedy 3 x 128 agent answered most L0 questions with ``10`` and wrote
    ``+`` for ``times`` or ``minus``. Mixed into every transcript step with their own mean loss
    (see :attr:`~agentropy.agent.tiny.sft.TinyRecipe.arith_mix`), each of those tokens weighs
    about as much as a whole transcript. Two kinds, at random:

    - ``facts``: one to four L0 questions (``What is 7 + 9?``, operands ``0..max_operand``,
      differences never negative, as ToolWorld asks them), answered ``7 + 9 = 16.``: the
      operands are copies, the result is the memorised fact;
    - ``expression``: an L2- or L3-style question (``What is the age of Kalo times 4?``,
      ``... minus the age of Miru?``) with the looked-up values as ``The age of Kalo is 67.``
      lines (in random order, sometimes with a distractor), answered with the calc expression
      (``67 * 4``, ``67 - 21``): pick the operator named in the question, take the values in
      the question's order.
    """
    if rng.random() < 0.5:
        questions, answers = [], []
        for _ in range(rng.randint(1, 4)):
            a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
            if rng.random() < 0.5:
                a, b = max(a, b), min(a, b)
                op, value = "-", a - b
            else:
                op, value = "+", a + b
            questions.append(f"What is {a} {op} {b}?")
            answers.append(f"{a} {op} {b} = {value}.")
        return [
            {"role": "user", "content": " ".join(questions)},
            {"role": "assistant", "content": " ".join(answers)},
        ]
    attr = rng.choice(("age", "weight", "height", "distance"))
    name_a, name_b = _drill_name(rng), _drill_name(rng)
    while name_b == name_a:
        name_b = _drill_name(rng)
    va, vb = rng.randint(2, 99), rng.randint(2, 99)
    if rng.random() < 0.5:
        word = rng.choice(("plus", "times"))
        k = rng.randint(2, max_operand)
        question = f"What is the {attr} of {name_a} {word} {k}?"
        facts = [(name_a, va), (name_b, vb)] if rng.random() < 0.3 else [(name_a, va)]
        expression = f"{va} {_OP_WORDS[word]} {k}"
    else:
        word = rng.choice(("plus", "minus"))
        if word == "minus" and va < vb:
            va, vb = vb, va
        question = f"What is the {attr} of {name_a} {word} the {attr} of {name_b}?"
        facts = [(name_a, va), (name_b, vb)]
        expression = f"{va} {_OP_WORDS[word]} {vb}"
    rng.shuffle(facts)
    lines = "\n".join(f"The {attr} of {e} is {v}." for e, v in facts)
    return [
        {"role": "user", "content": f"{question}\n{lines}"},
        {"role": "assistant", "content": expression},
    ]


def decision_drills(
    world: Any, rng: random.Random, *, n_groups: int, rename_prob: float
) -> list[list[dict[str, Any]]]:
    """Minimal-pair decision exercises: ``4 * n_groups`` expert transcripts cut after the move
    that follows the first lookup (train-split entities, fault-free).

    Each group takes one entity and attribute and asks four questions that differ only in
    their tail, so the transcripts up to the decision have the same shape and only the tail
    tells the moves apart: ``What is the age of Kalo?`` (answer), ``... in months?``
    (``convert``), ``... plus 7?`` or ``times 7`` (``calc``) and ``... plus the age of Miru?``
    (a second ``lookup``). The expert writes each transcript with the same random state, so the
    opening plan is worded alike (renaming, per transcript, may give the four different names).
    Train only on the last assistant turn (the decision; see
    :func:`~agentropy.agent.tiny.sft.polish`).

    Why: the arithmetic-drill agent (recipe ``85652a1f710b``) could not tell ``What is the age
    of Lono?`` from ``... in months?`` at the decision point: sampling at T = 1 it converted on
    35-42 % of both kinds of question (30 train-split and test-split contexts x 16 samples
    each), and greedy decoding converted on 70 % of held-out L1 tasks, while it told ``plus``
    and ``times`` apart (the arithmetic drills name them). Entity names are renamed with
    probability ``rename_prob`` as in the transcripts.
    """
    from agentropy.env.expert import expert_messages
    from agentropy.env.toolworld import ATTRIBUTES, Task, calc_value, convert_value

    ops = {"plus": "+", "times": "*", "minus": "-"}
    conversations: list[tuple[int, list[dict[str, Any]]]] = []
    for _ in range(n_groups):
        a, b = rng.sample(world.entities["train"], 2)
        attr = rng.choice(tuple(ATTRIBUTES))
        va, vb = world.kb[a][attr], world.kb[b][attr]
        base, drift = ATTRIBUTES[attr]
        word, k = rng.choice(("plus", "times")), rng.randint(2, world.config.calc_operand_max)
        # L3 subtracts the smaller value, so "minus" needs the first value to be the larger.
        word3 = rng.choice(("plus", "minus")) if va >= vb else "plus"
        stem = f"What is the {attr} of {a}"
        tasks = [
            Task("decision-1", 1, "train", f"{stem}?", str(va), (),
                 {"kind": "lookup", "lookups": [[a, attr]]}),
            Task("decision-2", 2, "train", f"{stem} in {drift}?",
                 str(convert_value(va, base, drift)), (),
                 {"kind": "convert", "lookups": [[a, attr]], "unit": drift}),
            Task("decision-3", 2, "train", f"{stem} {word} {k}?",
                 str(calc_value(f"{va} {ops[word]} {k}")), (),
                 {"kind": "calc", "lookups": [[a, attr]], "op": ops[word], "operand": k}),
            Task("decision-4", 3, "train", f"{stem} {word3} the {attr} of {b}?",
                 str(calc_value(f"{va} {ops[word3]} {vb}")), (),
                 {"kind": "combine", "lookups": [[a, attr], [b, attr]], "op": ops[word3]}),
        ]  # fmt: skip
        state = rng.random()
        for task in tasks:
            messages = expert_messages(world, task, random.Random(state))
            first_tool = next(i for i, m in enumerate(messages) if m["role"] == "tool")
            conversations.append((task.level, messages[: first_tool + 2]))
    renamed = _rename_entities(world, conversations, prob=rename_prob, seed=rng.randrange(1 << 30))
    return [messages for _, messages in renamed]
