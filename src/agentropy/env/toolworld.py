"""ToolWorld: a small, deterministic tool environment with injected faults (DESIGN.md, "ToolWorld").

The world is a generated knowledge base of entities (names built from a small syllable set, so a
tiny model's vocabulary stays small) with four integer attributes, each in a base unit:

==========  =========  ==========  ======
attribute   base unit  drift unit  factor
==========  =========  ==========  ======
age         years      months      12
weight      kg         g           1000
height      m          cm          100
distance    km         m           1000
==========  =========  ==========  ======

Tools (see :meth:`ToolWorld.tool_schemas`):

- ``lookup(entity, attribute)`` -> ``{"value": 42, "unit": "kg"}``;
- ``backup_lookup(entity, attribute)``: a fail-over replica. It answers only while ``lookup`` is
  in an outage; otherwise it replies ``error: backup_lookup: on standby, lookup is serving``;
- ``calc(expression)``: integer arithmetic with ``+ - *`` and parentheses -> ``{"value": n}``;
- ``convert(value, from_unit, to_unit)``: exact integer unit conversion within a family.

Levels (every answer is an integer, compared exactly as a string after whitespace
normalisation, so a tiny model can copy it from a tool result):

- **L0**: ``What is 3 + 4?`` answered without tools (operands ``0..l0_max_operand``);
- **L1**: one lookup, ``What is the age of Kalo?``; faults with probability ``l1_fault_prob``;
- **L2**: a lookup then ``convert`` (``What is the weight of Kalo in g?``) or ``calc``
  (``What is the age of Kalo plus 7?``); one fault with probability ``l2_fault_prob``;
- **L3**: two lookups then ``calc`` (``What is the age of Kalo plus the age of Miru?``); always at
  least one fault, and a second one (on the other lookup, of a data kind) with probability
  ``l3_extra_fault_prob``.

Fault kinds (relative weights ``w_<kind>`` in :class:`ToolWorldConfig`). Each fault targets one
of the task's lookups and fires on the first call that reaches it:

- ``transient``: ``lookup`` replies ``error: lookup: service unavailable`` once; a retry works
  (``backup_lookup`` is on standby, which tells the agent that ``lookup`` is up);
- ``outage``: ``lookup`` replies the *same* ``error: lookup: service unavailable`` from then on,
  for the rest of the episode; only ``backup_lookup`` works. Transient and outage are
  **ambiguous**: the message is identical, so only exploring (retry, or switch) reveals which
  recovery works, and the wrong guess costs exactly one extra call;
- ``bad_args``: the lookup schema drifts (attributes renamed ``<attr>_<unit>``, e.g.
  ``weight_kg``) for the rest of the episode; the error lists the valid names and a corrected
  call works;
- ``unexpected``: the value comes back in the drift unit (``{"value": 42000, "unit": "g"}``,
  status ``unexpected``) for that lookup; ``convert`` recovers. Never injected into L2 convert
  tasks, whose asked unit is the drift unit;
- ``slow``: the call succeeds but reports a simulated latency in ``[0.5, 1] * slow_latency_s``
  (normal calls: ``[0.25, 1] * latency_s``); nothing ever sleeps.

**Novel faults** (``ToolWorldConfig.faults``: ``seen`` (default), ``novel`` or ``all``) never occur
in expert transcripts (the expert refuses a world whose faults are not ``seen``). Each has an
unfamiliar message, and one of the moves the agent already knows recovers:

- ``quota``: ``lookup`` replies ``error: lookup: quota exceeded for this key (HTTP 429)`` from
  then on; only ``backup_lookup`` works (a retry repeats the same error);
- ``schema_v2``: ``error: lookup: 422 unprocessable entity, attribute must be one of
  age_years|weight_kg|...``; the schema drifts as for ``bad_args`` and a corrected call works;
- ``legacy_units``: the value comes back in the drift unit under other keys
  (``{"qty": 42000, "uom": "g"}``, status ``unexpected``); ``convert`` recovers. Never injected
  into L2 convert tasks.

With ``faults="novel"`` every fault is drawn from these (weights ``w_quota``, ``w_schema_v2``,
``w_legacy_units``); ``all`` draws from both families with their weights.

Default probabilities: L1 ``l1_fault_prob = 0``, L2 ``l2_fault_prob = 0.3``, L3 one fault always
plus ``l3_extra_fault_prob = 0.3``; kind weights transient 0.25, outage 0.25, bad_args 0.2,
unexpected 0.2, slow 0.1 (so about half of L3's first faults are ambiguous).

At most one availability fault (transient/outage) per task. Everything is a pure function of
``ToolWorldConfig.seed``, the ``tasks(...)`` arguments and the sequence of calls in a session.
Train and test splits use disjoint entities (L0 operand pairs only with ``l0_disjoint_pairs``).
"""

from __future__ import annotations

import ast
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from agentropy.env.faults import (
    AMBIGUOUS_FAULTS,
    AVAILABILITY_FAULTS,
    DOWN_MESSAGE,
    FAULT_FAMILIES,
    FAULT_KINDS,
    NOVEL_FAULTS,
    QUOTA,
    RECOVERY,
    SCHEMA_FAULTS,
    SEEN_FAULTS,
    STANDBY,
    UNAVAILABLE,
    UNIT_FAULTS,
)
from agentropy.trace import ToolCall

__all__ = [
    "AMBIGUOUS_FAULTS",
    "ATTRIBUTES",
    "FAULT_FAMILIES",
    "FAULT_KINDS",
    "LEVELS",
    "NOVEL_FAULTS",
    "QUOTA",
    "RECOVERY",
    "SEEN_FAULTS",
    "SPLITS",
    "STANDBY",
    "TOOLWORLD_VERSION",
    "TOOL_NAMES",
    "UNAVAILABLE",
    "UNITS",
    "Fault",
    "Task",
    "ToolResult",
    "ToolSession",
    "ToolWorld",
    "ToolWorldConfig",
    "calc_value",
    "convert_value",
    "normalize_answer",
]

#: Bumped whenever question text, tool outputs, the system prompt or expert transcripts change,
#: so anything cached from them (a tokenizer, a warm-started agent) can key on it.
TOOLWORLD_VERSION = "3"

Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = ("train", "test")
LEVELS: tuple[int, ...] = (0, 1, 2, 3)


#: attribute -> (base unit, drift unit). Drift values are base * factor.
ATTRIBUTES: dict[str, tuple[str, str]] = {
    "age": ("years", "months"),
    "weight": ("kg", "g"),
    "height": ("m", "cm"),
    "distance": ("km", "m"),
}
#: unit -> (family, size in the family's smallest unit). Conversions are exact integer ratios.
UNITS: dict[str, tuple[str, int]] = {
    "years": ("time", 12),
    "months": ("time", 1),
    "kg": ("mass", 1000),
    "g": ("mass", 1),
    "km": ("length", 100_000),
    "m": ("length", 100),
    "cm": ("length", 1),
}
TOOL_NAMES: tuple[str, ...] = ("lookup", "backup_lookup", "calc", "convert")

_SYLLABLES = (
    "ka", "ki", "ko", "lo", "lu", "ma", "mi", "no", "nu", "pa",
    "pe", "ri", "ro", "sa", "su", "ta", "te", "vo", "za", "zu",
)  # fmt: skip
_CALC_OPS = {"plus": "+", "minus": "-", "times": "*"}


@dataclass(frozen=True)
class ToolWorldConfig:
    """Everything that defines a ToolWorld. Same config -> same knowledge base and tasks."""

    seed: int = 0
    """Seed of the knowledge base and of the train/test entity split."""
    n_entities: int = 120
    """Number of entities (two-syllable names from a 20-syllable set; at most 400)."""
    test_fraction: float = 0.25
    """Share of entities (and of L0 operand pairs) reserved for the test split."""
    value_min: int = 2
    """Smallest attribute value (base unit)."""
    value_max: int = 99
    """Largest attribute value (base unit); two digits keep answers short."""
    l0_max_operand: int = 9
    """L0 operands are drawn from 0..l0_max_operand."""
    l0_disjoint_pairs: bool = False
    """Also split L0 operand pairs between train and test. Off by default: a tiny model can
    memorise a small addition table but not generalise it to unseen pairs."""
    calc_operand_max: int = 9
    """L2 calc tasks add or multiply by an operand in 2..calc_operand_max."""
    l1_fault_prob: float = 0.0
    """Probability that an L1 task carries one fault."""
    l2_fault_prob: float = 0.3
    """Probability that an L2 task carries one fault."""
    l3_extra_fault_prob: float = 0.3
    """Probability that an L3 task carries a second fault (L3 always has at least one)."""
    w_transient: float = 0.25
    """Relative weight of transient faults (retry works)."""
    w_outage: float = 0.25
    """Relative weight of outages (only backup_lookup works; same message as transient)."""
    w_bad_args: float = 0.2
    """Relative weight of schema drift with an informative bad-arguments error."""
    w_unexpected: float = 0.2
    """Relative weight of unit drift (status ``unexpected``; convert recovers)."""
    w_slow: float = 0.1
    """Relative weight of slow calls (success with a large simulated latency)."""
    faults: str = "seen"
    """Fault family tasks draw from: ``seen`` (the kinds expert transcripts show), ``novel``
    (kinds they never show) or ``all``."""
    w_quota: float = 0.4
    """Relative weight of quota faults (novel; only backup_lookup works)."""
    w_schema_v2: float = 0.3
    """Relative weight of schema drift with an unfamiliar 422 message (novel; fix the args)."""
    w_legacy_units: float = 0.3
    """Relative weight of unit drift under unfamiliar keys (novel; convert recovers)."""
    latency_s: float = 0.2
    """Upper bound of the simulated latency of a normal call, seconds (uniform on [0.25x, 1x])."""
    slow_latency_s: float = 6.0
    """Simulated latency of a slow call, seconds (uniform on [0.5x, 1x]); never slept."""

    def __post_init__(self) -> None:
        if not 4 <= self.n_entities <= len(_SYLLABLES) ** 2:
            raise ValueError(
                f"n_entities must be in 4..{len(_SYLLABLES) ** 2}, got {self.n_entities}"
            )
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if not 1 <= self.value_min <= self.value_max:
            raise ValueError("need 1 <= value_min <= value_max")
        if self.l0_max_operand < 2 or self.calc_operand_max < 2:
            raise ValueError("l0_max_operand and calc_operand_max must be >= 2")
        for name in ("l1_fault_prob", "l2_fault_prob", "l3_extra_fault_prob"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        if self.faults not in FAULT_FAMILIES:
            raise ValueError(
                f"faults must be one of {', '.join(FAULT_FAMILIES)}, got {self.faults!r}"
            )
        weights = self.fault_weights()
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(
                f"fault weights w_* of the {self.faults!r} family must be >= 0 with a positive sum"
            )
        if not 0.0 <= self.latency_s < self.slow_latency_s:
            raise ValueError("need 0 <= latency_s < slow_latency_s so slow calls stand out")

    def fault_weights(self) -> dict[str, float]:
        """Relative weight of each fault kind of the :attr:`faults` family, by kind name."""
        return {k: float(getattr(self, f"w_{k}")) for k in FAULT_FAMILIES[self.faults]}


@dataclass(frozen=True)
class Fault:
    """A fault planned for a task: its ``kind`` and the index of the lookup it targets."""

    kind: str
    """One of :data:`FAULT_KINDS`."""
    target: int
    """Index into ``task.meta["lookups"]`` of the lookup the fault hits."""

    @property
    def ambiguous(self) -> bool:
        return self.kind in AMBIGUOUS_FAULTS

    @property
    def recovery(self) -> str:
        """The recovery that works (``retry``, ``backup_lookup``, ``fix_args``, ...)."""
        return RECOVERY[self.kind]


@dataclass(frozen=True)
class Task:
    """One question with a verifiable integer answer and its planned faults."""

    task_id: str
    level: int
    split: str
    question: str
    answer: str
    faults: tuple[Fault, ...] = ()
    # Left out of the hash (a dict is unhashable) so tasks can be set members and dict keys.
    meta: dict[str, Any] = field(default_factory=dict, hash=False)
    """Structure for scripted solvers: ``kind`` (``arith``/``lookup``/``convert``/``calc``/
    ``combine``), ``lookups`` (list of ``[entity, attribute]``), and kind-specific fields."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for episode metadata)."""
        return {
            "task_id": self.task_id,
            "level": self.level,
            "split": self.split,
            "question": self.question,
            "answer": self.answer,
            "faults": [{"kind": f.kind, "target": f.target} for f in self.faults],
            "meta": self.meta,
        }


@dataclass(frozen=True)
class ToolResult:
    """What a tool call returned."""

    status: str
    """``ok`` | ``error`` | ``unexpected`` (see :data:`agentropy.trace.TOOL_STATUSES`)."""
    content: str
    """Text the agent sees."""
    latency_s: float = 0.0
    """Simulated latency, seconds (never slept)."""
    fault: str | None = None
    """Kind of the injected fault behind this result, if any."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def normalize_answer(text: str) -> str:
    """Collapse runs of whitespace and strip: the only normalisation answers get."""
    return " ".join(str(text).split())


def convert_value(value: int, from_unit: str, to_unit: str) -> int | None:
    """Exact integer conversion; None if the result is not a whole number (units must be known)."""
    fam_a, size_a = UNITS[from_unit]
    fam_b, size_b = UNITS[to_unit]
    if fam_a != fam_b:
        raise ValueError(f"cannot convert {from_unit} to {to_unit}")
    num = value * size_a
    return num // size_b if num % size_b == 0 else None


def _eval_int(node: ast.AST) -> int:
    """Evaluate a restricted integer expression tree (+, -, *, unary -, parentheses)."""
    if isinstance(node, ast.Expression):
        return _eval_int(node.body)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        v = _eval_int(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub | ast.Mult):
        a, b = _eval_int(node.left), _eval_int(node.right)
        if isinstance(node.op, ast.Add):
            return a + b
        return a - b if isinstance(node.op, ast.Sub) else a * b
    raise ValueError("unsupported expression")


def calc_value(expression: str) -> int:
    """Evaluate integer arithmetic with ``+ - *`` and parentheses; ValueError otherwise."""
    # Short expressions only: bounds the size of products and the parser's recursion depth.
    if len(expression) > 80 or not expression.strip():
        raise ValueError("expression empty or too long")
    return _eval_int(ast.parse(expression.strip(), mode="eval"))


def _entity_names(n: int, rng: random.Random) -> list[str]:
    names = [(a + b).capitalize() for a in _SYLLABLES for b in _SYLLABLES if a != b]
    rng.shuffle(names)
    return names[:n]


def _json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class ToolWorld:
    """The knowledge base, the task generator and the tool definitions."""

    def __init__(self, config: ToolWorldConfig | None = None) -> None:
        self.config = config or ToolWorldConfig()
        cfg = self.config
        rng = random.Random(f"toolworld-kb:{cfg.seed}")
        names = _entity_names(cfg.n_entities, rng)
        n_test = max(1, round(cfg.n_entities * cfg.test_fraction))
        self.entities: dict[str, tuple[str, ...]] = {
            "test": tuple(sorted(names[:n_test])),
            "train": tuple(sorted(names[n_test:])),
        }
        #: entity -> attribute -> value in the base unit.
        self.kb: dict[str, dict[str, int]] = {
            name: {a: rng.randint(cfg.value_min, cfg.value_max) for a in ATTRIBUTES}
            for name in sorted(names)
        }
        pairs = [(a, b) for a in range(cfg.l0_max_operand + 1) for b in range(a + 1)]
        rng.shuffle(pairs)
        n_test_pairs = max(1, round(len(pairs) * cfg.test_fraction))
        # L0 operand pairs are unordered (larger first), so "a + b" and "b + a" share a split.
        if cfg.l0_disjoint_pairs:
            self._l0_pairs = {
                "test": tuple(sorted(pairs[:n_test_pairs])),
                "train": tuple(sorted(pairs[n_test_pairs:])),
            }
        else:
            self._l0_pairs = {"test": tuple(sorted(pairs)), "train": tuple(sorted(pairs))}

    # ------------------------------------------------------------------ descriptions
    def tool_schemas(self) -> list[dict[str, Any]]:
        """OpenAI function-tool JSON schemas (for ``apply_chat_template(..., tools=...)``)."""
        attrs = ", ".join(ATTRIBUTES)
        units = ", ".join(UNITS)

        def fn(name: str, desc: str, props: dict[str, Any]) -> dict[str, Any]:
            return {
                "type": "function",
                "function": {
                    "name": name,
                    "description": desc,
                    "parameters": {"type": "object", "properties": props, "required": list(props)},
                },
            }

        lookup_props = {
            "entity": {"type": "string", "description": "entity name, e.g. Kalo"},
            "attribute": {"type": "string", "description": f"one of: {attrs}"},
        }
        return [
            fn("lookup", "Look up an attribute of an entity.", lookup_props),
            fn(
                "backup_lookup",
                "Fail-over copy of lookup; works only while lookup is down.",
                dict(lookup_props),
            ),
            fn(
                "calc",
                "Integer arithmetic with + - * and parentheses.",
                {"expression": {"type": "string", "description": "e.g. 42 + 17"}},
            ),
            fn(
                "convert",
                "Convert a whole number between units.",
                {
                    "value": {"type": "integer"},
                    "from_unit": {"type": "string", "description": f"one of: {units}"},
                    "to_unit": {"type": "string", "description": f"one of: {units}"},
                },
            ),
        ]

    def system_prompt(self) -> str:
        """A short system prompt: tool names, units and the call and answer formats.

        Short on purpose: it opens every transcript and every token the agent writes attends
        to it (the tiny agent trains on CPU). Chat templates list the tools' signatures.
        """
        return (
            "Tools: lookup, backup_lookup (only when lookup is down), calc, convert. Units: age "
            "years, weight kg, height m, distance km. Call a tool as "
            '<tool_call>{"name":...,"arguments":{...}}</tool_call>; answer as '
            "<answer>number</answer>."
        )

    # ------------------------------------------------------------------ tasks
    def tasks(self, *, split: str, level: int, n: int, seed: int = 0) -> list[Task]:
        """``n`` tasks of one level from one split; a pure function of the config and arguments."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        rng = random.Random(f"toolworld-tasks:{self.config.seed}:{split}:{level}:{seed}")
        prefix = f"w{self.config.seed}-{split}-L{level}-s{seed}"
        make = (self._task_l0, self._task_l1, self._task_l2, self._task_l3)[level]
        return [make(rng, split, f"{prefix}-{i:05d}") for i in range(n)]

    def _pick_kind(self, rng: random.Random, exclude: set[str]) -> str:
        weights = self.config.fault_weights()
        kinds = [k for k in weights if k not in exclude and weights[k] > 0]
        if not kinds:
            # Only excluded kinds have weight: fall back to the least disruptive fault.
            return "slow"
        return rng.choices(kinds, weights=[weights[k] for k in kinds])[0]

    def _task_l0(self, rng: random.Random, split: str, task_id: str) -> Task:
        a, b = rng.choice(self._l0_pairs[split])
        if rng.random() < 0.5:
            q, ans, op = f"What is {a} - {b}?", a - b, "-"
        else:
            if rng.random() < 0.5:
                a, b = b, a
            q, ans, op = f"What is {a} + {b}?", a + b, "+"
        return Task(
            task_id,
            0,
            split,
            q,
            str(ans),
            (),
            {"kind": "arith", "lookups": [], "expression": f"{a} {op} {b}"},
        )

    def _lookup(self, rng: random.Random, split: str) -> tuple[str, str]:
        return rng.choice(self.entities[split]), rng.choice(tuple(ATTRIBUTES))

    def _task_l1(self, rng: random.Random, split: str, task_id: str) -> Task:
        ent, attr = self._lookup(rng, split)
        faults: tuple[Fault, ...] = ()
        if rng.random() < self.config.l1_fault_prob:
            faults = (Fault(self._pick_kind(rng, set()), 0),)
        q = f"What is the {attr} of {ent}?"
        meta = {"kind": "lookup", "lookups": [[ent, attr]]}
        return Task(task_id, 1, split, q, str(self.kb[ent][attr]), faults, meta)

    def _task_l2(self, rng: random.Random, split: str, task_id: str) -> Task:
        ent, attr = self._lookup(rng, split)
        value = self.kb[ent][attr]
        base, drift = ATTRIBUTES[attr]
        if rng.random() < 0.5:
            q = f"What is the {attr} of {ent} in {drift}?"
            ans = convert_value(value, base, drift)
            meta: dict[str, Any] = {"kind": "convert", "lookups": [[ent, attr]], "unit": drift}
            exclude = set(UNIT_FAULTS)  # the drift unit is the asked unit: nothing to recover
        else:
            word = rng.choice(("plus", "times"))
            k = rng.randint(2, self.config.calc_operand_max)
            q = f"What is the {attr} of {ent} {word} {k}?"
            ans = calc_value(f"{value} {_CALC_OPS[word]} {k}")
            meta = {"kind": "calc", "lookups": [[ent, attr]], "op": _CALC_OPS[word], "operand": k}
            exclude = set()
        faults: tuple[Fault, ...] = ()
        if rng.random() < self.config.l2_fault_prob:
            faults = (Fault(self._pick_kind(rng, exclude), 0),)
        return Task(task_id, 2, split, q, str(ans), faults, meta)

    def _task_l3(self, rng: random.Random, split: str, task_id: str) -> Task:
        ent_a, ent_b = rng.sample(self.entities[split], 2)
        attr = rng.choice(tuple(ATTRIBUTES))
        word = rng.choice(("plus", "minus"))
        va, vb = self.kb[ent_a][attr], self.kb[ent_b][attr]
        if word == "minus" and va < vb:
            # Keep answers non-negative: the larger value comes first.
            ent_a, ent_b, va, vb = ent_b, ent_a, vb, va
        q = f"What is the {attr} of {ent_a} {word} the {attr} of {ent_b}?"
        ans = calc_value(f"{va} {_CALC_OPS[word]} {vb}")
        first = Fault(self._pick_kind(rng, set()), rng.randrange(2))
        faults: tuple[Fault, ...] = (first,)
        if rng.random() < self.config.l3_extra_fault_prob:
            # A second schema or unit fault of the other family would be the same drift again.
            same = next((g for g in (SCHEMA_FAULTS, UNIT_FAULTS) if first.kind in g), {first.kind})
            kind = self._pick_kind(rng, set(AVAILABILITY_FAULTS) | set(same))
            faults = tuple(sorted((first, Fault(kind, 1 - first.target)), key=lambda f: f.target))
        meta = {"kind": "combine", "lookups": [[ent_a, attr], [ent_b, attr]], "op": _CALC_OPS[word]}
        return Task(task_id, 3, split, q, str(ans), faults, meta)

    # ------------------------------------------------------------------ sessions
    def start(self, task: Task) -> ToolSession:
        """A fresh tool session (one episode) for ``task``."""
        return ToolSession(self, task)


_PARAMS: dict[str, dict[str, type]] = {
    "lookup": {"entity": str, "attribute": str},
    "backup_lookup": {"entity": str, "attribute": str},
    "calc": {"expression": str},
    "convert": {"value": int, "from_unit": str, "to_unit": str},
}


class ToolSession:
    """The tools as seen by one episode: fault state, call log and answer checking.

    Deterministic: the result of a call depends only on the world, the task and the calls made
    before it in this session. :meth:`call` never raises.
    """

    def __init__(self, world: ToolWorld, task: Task) -> None:
        self.world = world
        self.task = task
        self.log: list[tuple[ToolCall | None, ToolResult]] = []
        """Every call in order (None for an unparseable call) with its result."""
        self._fired: dict[int, int] = {}  # fault index -> call index where it first fired
        self._down: str | None = None  # outage/quota: lookup is down for the rest of the episode
        self._schema_v2 = False  # attributes renamed <attr>_<unit> after a bad_args fault
        # lookup target -> the unit fault that drifted it (its values now come in drift units)
        self._drifted: dict[int, str] = {}
        self._targets = [tuple(x) for x in task.meta.get("lookups", [])]
        self._looked_up: set[int] = set()  # lookup targets whose value (any unit) was returned
        self._computed = False  # a calc/convert call returned the task's answer

    # ------------------------------------------------------------------ public
    def call(self, call: ToolCall) -> ToolResult:
        """Run one tool call. Never raises: any failure is an ``error`` result."""
        try:
            result = self._dispatch(call)
        except Exception as exc:  # a tool bug must not crash a rollout
            result = ToolResult("error", f"error: internal tool error ({type(exc).__name__})")
        self.log.append((call, result))
        return result

    def call_error(self, message: str) -> ToolResult:
        """Record an unparseable call and return the ``error`` result the agent should see."""
        text = message if message.startswith("error:") else f"error: {message}"
        result = ToolResult("error", text, 0.0, None)
        self.log.append((None, result))
        return result

    def check_answer(self, text: str | None) -> bool:
        """Exact match after whitespace normalisation (answers are integers written as digits)."""
        if text is None:
            return False
        return normalize_answer(text) == normalize_answer(self.task.answer)

    @property
    def fault_kinds(self) -> list[str]:
        """Kinds of the planned faults that fired, in firing order."""
        order = sorted(self._fired, key=lambda i: self._fired[i])
        return [self.task.faults[i].kind for i in order]

    @property
    def progress(self) -> tuple[int, int]:
        """Sub-goals reached so far, ``(reached, total)``: a partial-credit signal for trainers.

        The sub-goals of a task are its lookups (each reached when ``lookup`` or
        ``backup_lookup`` returned that entity's attribute, in any unit) and, on L2 and L3, the
        computation (reached when a ``calc`` or ``convert`` call returned the task's answer).
        L0 has none (``total`` 0). The final answer is not a sub-goal: see :meth:`check_answer`.
        """
        total = len(self._targets) + (1 if self.task.level >= 2 else 0)
        reached = len(self._looked_up) + (1 if self._computed and self.task.level >= 2 else 0)
        return reached, total

    @property
    def latency_s(self) -> float:
        """Total simulated tool latency of the session, seconds."""
        return float(sum(r.latency_s for _, r in self.log))

    def record(self) -> dict[str, Any]:
        """Faults planned and fired, and which recovery would have worked for each."""
        return {
            "task_id": self.task.task_id,
            "level": self.task.level,
            "faults": [
                {
                    "kind": f.kind,
                    "target": f.target,
                    "fired": i in self._fired,
                    "call_index": self._fired.get(i),
                    "ambiguous": f.ambiguous,
                    "recovery": f.recovery,
                }
                for i, f in enumerate(self.task.faults)
            ],
            "fault_kinds": self.fault_kinds,
            "n_calls": len(self.log),
            "n_failed": sum(r.status != "ok" for _, r in self.log),
            "subgoals": self.progress[1],
            "subgoals_reached": self.progress[0],
            "latency_s": self.latency_s,
        }

    # ------------------------------------------------------------------ internals
    def _rng(self) -> random.Random:
        # One stream per call position keeps latencies reproducible call by call.
        return random.Random(f"{self.task.task_id}:{len(self.log)}")

    def _latency(self, scale: float = 1.0) -> float:
        hi = self.world.config.latency_s * scale
        return round(self._rng().uniform(0.25 * hi, hi), 4)

    def _fire(self, kind: str, target: int | None) -> bool:
        """Fire the planned fault of ``kind`` on ``target`` if it has not fired; report if so."""
        for i, f in enumerate(self.task.faults):
            if f.kind == kind and f.target == target and i not in self._fired:
                self._fired[i] = len(self.log)
                return True
        return False

    def _err(self, text: str, fault: str | None = None, scale: float = 1.0) -> ToolResult:
        return ToolResult("error", f"error: {text}", self._latency(scale), fault)

    def _dispatch(self, call: ToolCall) -> ToolResult:
        name = call.name
        if name not in _PARAMS:
            return self._err(f'unknown tool "{name}"; available: {", ".join(TOOL_NAMES)}', None)
        args = call.arguments
        if not isinstance(args, Mapping):
            return self._err(f"{name}: arguments must be a JSON object")
        params = _PARAMS[name]
        expected = ", ".join(params)
        for key in args:
            if key not in params:
                return self._err(f'{name}: unknown argument "{key}"; expected: {expected}')
        for key, typ in params.items():
            if key not in args:
                return self._err(f'{name}: missing argument "{key}"; expected: {expected}')
            val = args[key]
            if typ is int and isinstance(val, str) and val.strip().lstrip("-").isdigit():
                val = int(val.strip())  # tolerate "42" for 42: the value is unambiguous
            if type(val) is not typ:
                kind = "an integer" if typ is int else "a string"
                return self._err(f'{name}: "{key}" must be {kind}')
        if name == "calc":
            result = self._calc(args["expression"])
        elif name == "convert":
            result = self._convert(int(args["value"]), args["from_unit"], args["to_unit"])
        else:
            return self._lookup(name, args["entity"].strip(), args["attribute"].strip())
        if result.ok and json.loads(result.content)["value"] == int(self.task.answer):
            self._computed = True
        return result

    def _calc(self, expression: str) -> ToolResult:
        try:
            value = calc_value(expression)
        except (ValueError, SyntaxError, RecursionError, MemoryError):
            return self._err(
                f'calc: cannot evaluate "{expression[:40]}"; use integers with + - * and ( )',
                scale=0.1,
            )
        return ToolResult("ok", _json({"value": value}), self._latency(0.1))

    def _convert(self, value: int, from_unit: str, to_unit: str) -> ToolResult:
        for u in (from_unit, to_unit):
            if u not in UNITS:
                return self._err(f'convert: unknown unit "{u}"; valid: {", ".join(UNITS)}', None)
        if UNITS[from_unit][0] != UNITS[to_unit][0]:
            return self._err(f"convert: cannot convert {from_unit} to {to_unit}", scale=0.1)
        out = convert_value(value, from_unit, to_unit)
        if out is None:
            return self._err(f"convert: {value} {from_unit} is not a whole number of {to_unit}")
        return ToolResult("ok", _json({"value": out, "unit": to_unit}), self._latency(0.1))

    def _lookup(self, tool: str, entity: str, attribute: str) -> ToolResult:
        if tool == "lookup":
            if self._down is not None:
                return ToolResult("error", DOWN_MESSAGE[self._down], self._latency(), self._down)
        elif self._down is None:
            return ToolResult("error", STANDBY, self._latency(), None)
        names = {f"{a}_{ATTRIBUTES[a][0]}": a for a in ATTRIBUTES}
        base_attr = names.get(attribute) if self._schema_v2 else attribute
        target = self._target(entity, base_attr)
        if tool == "lookup" and target is not None:
            for kind in ("outage", "quota"):
                if self._fire(kind, target):
                    self._down = kind
                    return ToolResult("error", DOWN_MESSAGE[kind], self._latency(), kind)
            if self._fire("transient", target):
                return ToolResult("error", UNAVAILABLE, self._latency(), "transient")
        if target is not None and not self._schema_v2:
            if self._fire("bad_args", target):
                self._schema_v2 = True
                return self._err(
                    f'{tool}: invalid attribute "{attribute}"; valid: {", ".join(names)}',
                    "bad_args",
                )
            if self._fire("schema_v2", target):
                self._schema_v2 = True
                return self._err(
                    f"{tool}: 422 unprocessable entity, attribute must be one of {'|'.join(names)}",
                    "schema_v2",
                )
        valid = list(names) if self._schema_v2 else list(ATTRIBUTES)
        if base_attr not in ATTRIBUTES:
            fault = "bad_args" if self._schema_v2 and attribute in ATTRIBUTES else None
            return self._err(
                f'{tool}: invalid attribute "{attribute}"; valid: {", ".join(valid)}', fault
            )
        if entity not in self.world.kb:
            return self._err(f'{tool}: unknown entity "{entity}"')
        value = self.world.kb[entity][base_attr]
        base, drift = ATTRIBUTES[base_attr]
        if target is not None:
            self._looked_up.add(target)  # every branch below returns the value
        if target is not None and target not in self._drifted:
            for kind in ("unexpected", "legacy_units"):
                if self._fire(kind, target):
                    self._drifted[target] = kind
        if target is not None and target in self._drifted:
            kind = self._drifted[target]
            drifted = convert_value(value, base, drift)
            # legacy_units (novel) names the same fields differently than unexpected (seen).
            keys = ("qty", "uom") if kind == "legacy_units" else ("value", "unit")
            content = _json(dict(zip(keys, (drifted, drift), strict=True)))
            return ToolResult("unexpected", content, self._latency(), kind)
        if target is not None and self._fire("slow", target):
            lo = 0.5 * self.world.config.slow_latency_s
            lat = round(self._rng().uniform(lo, self.world.config.slow_latency_s), 4)
            return ToolResult("ok", _json({"value": value, "unit": base}), lat, "slow")
        return ToolResult("ok", _json({"value": value, "unit": base}), self._latency())

    def _target(self, entity: str, attribute: str | None) -> int | None:
        for i, (e, a) in enumerate(self._targets):
            if e == entity and a == attribute:
                return i
        return None
