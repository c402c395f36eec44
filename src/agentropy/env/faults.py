"""The fault taxonomy of ToolWorld: kinds, families, the recovery that works, the messages.

Two families (DESIGN.md, "ToolWorld"): *seen* faults are the ones the scripted expert meets in its
transcripts (transient, outage, bad_args, unexpected, slow); *novel* faults never occur there.
A novel fault shows an unfamiliar message, but a move the agent already knows recovers from it
(switch to ``backup_lookup``, fix the arguments, ``convert``): so recovering from it takes
exploration, not a new skill. The session logic lives in :mod:`agentropy.env.toolworld`.

Three **fault classes** group the failing kinds by what recovering from them asks of the agent
(:data:`FAULT_CLASS`): ``seen-ambiguous`` (transient, outage: one message, two possible
recoveries, so only trying tells), ``seen-informative`` (bad_args, unexpected: the message says
what to fix) and ``novel`` (quota, schema_v2, legacy_units). ``slow`` is in no class: the call
succeeds, late, so there is nothing to recover from.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "AMBIGUOUS_FAULTS",
    "AVAILABILITY_FAULTS",
    "FAULT_CLASS",
    "FAULT_CLASSES",
    "FAULT_FAMILIES",
    "FAULT_KINDS",
    "NOVEL_FAULTS",
    "QUOTA",
    "RECOVERY",
    "SEEN_FAULTS",
    "SILENT_FAULTS",
    "STANDBY",
    "UNAVAILABLE",
    "FaultClass",
    "FaultFamily",
    "FaultKind",
]

FaultKind = Literal[
    "transient", "outage", "bad_args", "unexpected", "slow", "quota", "schema_v2", "legacy_units"
]
#: Fault kinds the expert transcripts show (the default family).
SEEN_FAULTS: tuple[str, ...] = ("transient", "outage", "bad_args", "unexpected", "slow")
#: Fault kinds no expert transcript ever shows: unfamiliar messages, familiar recoveries.
NOVEL_FAULTS: tuple[str, ...] = ("quota", "schema_v2", "legacy_units")
FAULT_KINDS: tuple[str, ...] = SEEN_FAULTS + NOVEL_FAULTS
FaultFamily = Literal["seen", "novel", "all"]
#: ``ToolWorldConfig.faults`` value -> the fault kinds it draws from.
FAULT_FAMILIES: dict[str, tuple[str, ...]] = {
    "seen": SEEN_FAULTS,
    "novel": NOVEL_FAULTS,
    "all": FAULT_KINDS,
}
#: Faults whose error message alone does not reveal the working recovery.
AMBIGUOUS_FAULTS: frozenset[str] = frozenset({"transient", "outage"})
#: Faults whose call still succeeds (only late): no failure, so no recovery and no fault class.
SILENT_FAULTS: frozenset[str] = frozenset({"slow"})
FaultClass = Literal["seen-ambiguous", "seen-informative", "novel"]
#: Fault classes in display order (see the module docstring).
FAULT_CLASSES: tuple[str, ...] = ("seen-ambiguous", "seen-informative", "novel")
#: Failing fault kind -> its class (``slow`` has none: it does not fail).
FAULT_CLASS: dict[str, str] = {
    **{k: "seen-ambiguous" for k in SEEN_FAULTS if k in AMBIGUOUS_FAULTS},
    **{k: "seen-informative" for k in SEEN_FAULTS if k not in AMBIGUOUS_FAULTS | SILENT_FAULTS},
    **{k: "novel" for k in NOVEL_FAULTS},
}
#: Faults that concern the lookup service's availability (at most one per task).
AVAILABILITY_FAULTS: frozenset[str] = frozenset({"transient", "outage", "quota"})
#: Faults that make ``lookup`` fail for the rest of the episode (``backup_lookup`` takes over).
DOWN_FAULTS: frozenset[str] = frozenset({"outage", "quota"})
#: Faults that rename the attributes to ``<attr>_<unit>`` for the rest of the episode.
SCHEMA_FAULTS: frozenset[str] = frozenset({"bad_args", "schema_v2"})
#: Faults that return a lookup's value in the drift unit (``convert`` recovers).
UNIT_FAULTS: frozenset[str] = frozenset({"unexpected", "legacy_units"})
#: The recovery that works for each fault kind (recorded by :meth:`ToolSession.record`).
RECOVERY: dict[str, str] = {
    "transient": "retry",
    "outage": "backup_lookup",
    "bad_args": "fix_args",
    "unexpected": "convert",
    "slow": "none",
    "quota": "backup_lookup",
    "schema_v2": "fix_args",
    "legacy_units": "convert",
}
#: The one message of both ambiguous faults (transient and outage).
UNAVAILABLE = "error: lookup: service unavailable"
STANDBY = "error: backup_lookup: on standby, lookup is serving"
#: The message of a ``quota`` fault (novel), repeated by every later ``lookup`` call.
QUOTA = "error: lookup: quota exceeded for this key (HTTP 429)"
#: lookup-down fault -> the message every later ``lookup`` call gets.
DOWN_MESSAGE: dict[str, str] = {"outage": UNAVAILABLE, "quota": QUOTA}
