"""ToolWorld: determinism, split disjointness, fault semantics, never-raising tools."""

from __future__ import annotations

import dataclasses
import json
import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentropy.env.toolworld import (
    AMBIGUOUS_FAULTS,
    ATTRIBUTES,
    FAULT_FAMILIES,
    LEVELS,
    NOVEL_FAULTS,
    QUOTA,
    RECOVERY,
    SEEN_FAULTS,
    STANDBY,
    TOOL_NAMES,
    UNAVAILABLE,
    Fault,
    Task,
    ToolSession,
    ToolWorld,
    ToolWorldConfig,
    calc_value,
)
from agentropy.trace import TOOL_STATUSES, ToolCall

WORLD = ToolWorld()


def _entities(task: Task) -> set[str]:
    return {e for e, _ in task.meta["lookups"]}


def _with_fault(kind: str, *, level: int = 1, seed: int = 0) -> Task:
    """An L1 (or L3) task of the default world with exactly one planned fault of ``kind``."""
    task = WORLD.tasks(split="train", level=level, n=1, seed=seed)[0]
    return dataclasses.replace(task, faults=(Fault(kind, 0),))


def _lookup(session: ToolSession, tool: str = "lookup", *, attribute: str | None = None):
    entity, attr = session.task.meta["lookups"][0]
    return session.call(ToolCall(tool, {"entity": entity, "attribute": attribute or attr}))


def _truth(task: Task, i: int = 0) -> int:
    entity, attr = task.meta["lookups"][i]
    return WORLD.kb[entity][attr]


def _script(session: ToolSession) -> list[tuple]:
    """A fixed call sequence (correct, repeated and wrong calls) and what it returned."""
    out = []
    for entity, attr in session.task.meta["lookups"]:
        for tool in ("lookup", "lookup", "backup_lookup", "lookup"):
            r = session.call(ToolCall(tool, {"entity": entity, "attribute": attr}))
            out.append(dataclasses.astuple(r))
    out.append(dataclasses.astuple(session.call(ToolCall("calc", {"expression": "2 + 3"}))))
    return out


# ---------------------------------------------------------------- determinism and splits
def test_same_seed_same_tasks_and_fault_outcomes():
    a, b = ToolWorld(ToolWorldConfig(seed=7)), ToolWorld(ToolWorldConfig(seed=7))
    for level in range(4):
        ta = a.tasks(split="train", level=level, n=40, seed=3)
        tb = b.tasks(split="train", level=level, n=40, seed=3)
        assert [t.to_dict() for t in ta] == [t.to_dict() for t in tb]
        for x, y in zip(ta, tb, strict=True):
            sx, sy = a.start(x), b.start(y)
            assert _script(sx) == _script(sy)
            assert sx.record() == sy.record()


def test_tasks_are_hashable_and_ids_unique():
    tasks = [t for lv in range(4) for t in WORLD.tasks(split="train", level=lv, n=30, seed=0)]
    assert len({t.task_id for t in tasks}) == len(tasks)
    assert len(set(tasks)) == len(tasks)


def test_different_seeds_differ():
    a = ToolWorld(ToolWorldConfig(seed=1)).tasks(split="train", level=3, n=20, seed=0)
    b = ToolWorld(ToolWorldConfig(seed=2)).tasks(split="train", level=3, n=20, seed=0)
    c = ToolWorld(ToolWorldConfig(seed=1)).tasks(split="train", level=3, n=20, seed=1)
    assert [t.question for t in a] != [t.question for t in b]
    assert [t.question for t in a] != [t.question for t in c]


def test_splits_have_disjoint_entities():
    train, test = set(WORLD.entities["train"]), set(WORLD.entities["test"])
    assert train and test and not train & test
    assert len(train) + len(test) == WORLD.config.n_entities
    for level in (1, 2, 3):
        for split, pool in (("train", train), ("test", test)):
            for t in WORLD.tasks(split=split, level=level, n=100, seed=0):
                assert t.split == split
                assert _entities(t) <= pool
                for name in pool ^ (train | test):  # the other split's names
                    assert name not in t.question


def test_l0_operand_pairs_disjoint_between_splits_on_request():
    world = ToolWorld(ToolWorldConfig(l0_disjoint_pairs=True))

    def pairs(split, w=world):
        out = set()
        for t in w.tasks(split=split, level=0, n=300, seed=0):
            a, _, b = t.meta["expression"].split()
            out.add(tuple(sorted((int(a), int(b)))))
        return out

    assert pairs("train") and pairs("test") and not pairs("train") & pairs("test")
    assert pairs("train", WORLD) & pairs("test", WORLD)  # shared by default


def test_answers_are_integers_and_match_the_knowledge_base():
    for level in range(4):
        for t in WORLD.tasks(split="test", level=level, n=50, seed=5):
            assert re.fullmatch(r"-?\d+", t.answer)
            assert int(t.answer) >= 0
    for t in WORLD.tasks(split="train", level=1, n=30, seed=0):
        assert t.answer == str(_truth(t))


def test_level_fault_plans_follow_config():
    w = ToolWorld(ToolWorldConfig(l1_fault_prob=1.0, l2_fault_prob=0.0, l3_extra_fault_prob=1.0))
    assert all(len(t.faults) == 1 for t in w.tasks(split="train", level=1, n=50, seed=0))
    assert all(not t.faults for t in w.tasks(split="train", level=2, n=50, seed=0))
    l3 = w.tasks(split="train", level=3, n=100, seed=0)
    assert all(len(t.faults) == 2 for t in l3)
    for t in l3:
        assert {f.target for f in t.faults} == {0, 1}
        assert sum(f.kind in AMBIGUOUS_FAULTS for f in t.faults) <= 1
    default_l3 = WORLD.tasks(split="train", level=3, n=200, seed=0)
    assert all(t.faults for t in default_l3)
    assert {f.kind for t in default_l3 for f in t.faults} == set(SEEN_FAULTS)
    assert not WORLD.tasks(split="train", level=1, n=1, seed=0)[0].faults  # default L1: none


def test_convert_tasks_never_get_unit_drift():
    w = ToolWorld(ToolWorldConfig(l2_fault_prob=1.0, w_transient=0, w_outage=0, w_bad_args=0))
    tasks = [t for t in w.tasks(split="train", level=2, n=200, seed=0)]
    conv = [t for t in tasks if t.meta["kind"] == "convert"]
    assert conv and all(f.kind != "unexpected" for t in conv for f in t.faults)
    assert any(f.kind == "unexpected" for t in tasks for f in t.faults)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_entities": 1},
        {"test_fraction": 0.0},
        {"l2_fault_prob": 1.5},
        {"w_transient": 0, "w_outage": 0, "w_bad_args": 0, "w_unexpected": 0, "w_slow": 0},
        {"w_slow": -1.0},
        {"latency_s": 10.0},
    ],
)
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        ToolWorldConfig(**kwargs)


def test_tasks_argument_validation():
    with pytest.raises(ValueError, match="split"):
        WORLD.tasks(split="dev", level=1, n=1, seed=0)
    with pytest.raises(ValueError, match="level"):
        WORLD.tasks(split="train", level=4, n=1, seed=0)


# ---------------------------------------------------------------- answer checking
def test_check_answer_exact_after_whitespace_normalisation():
    t = WORLD.tasks(split="train", level=3, n=1, seed=0)[0]
    s = WORLD.start(t)
    assert s.check_answer(t.answer)
    assert s.check_answer(f"  {t.answer}\n")
    assert not s.check_answer(t.answer + "0")
    assert not s.check_answer(f"{t.answer}.0")
    assert not s.check_answer("")
    assert not s.check_answer(None)


# ---------------------------------------------------------------- fault semantics
def test_transient_retry_succeeds():
    task = _with_fault("transient")
    s = WORLD.start(task)
    first = _lookup(s)
    assert (first.status, first.content, first.fault) == ("error", UNAVAILABLE, "transient")
    again = _lookup(s)
    assert again.ok and json.loads(again.content)["value"] == _truth(task)
    rec = s.record()
    assert s.fault_kinds == ["transient"]
    assert rec["faults"][0] | {} == {
        "kind": "transient",
        "target": 0,
        "fired": True,
        "call_index": 0,
        "ambiguous": True,
        "recovery": "retry",
    }


def test_transient_backup_is_on_standby_then_retry_works():
    task = _with_fault("transient")
    s = WORLD.start(task)
    assert _lookup(s).content == UNAVAILABLE
    standby = _lookup(s, "backup_lookup")
    assert (standby.status, standby.content) == ("error", STANDBY)
    assert _lookup(s).ok


def test_outage_only_backup_works():
    task = _with_fault("outage", level=3)
    s = WORLD.start(task)
    for _ in range(3):  # retrying never helps
        r = _lookup(s)
        assert (r.status, r.content, r.fault) == ("error", UNAVAILABLE, "outage")
    b = _lookup(s, "backup_lookup")
    assert b.ok and json.loads(b.content)["value"] == _truth(task)
    # The outage lasts for the episode: the other lookup also needs the backup.
    entity, attr = task.meta["lookups"][1]
    assert s.call(ToolCall("lookup", {"entity": entity, "attribute": attr})).content == UNAVAILABLE
    other = s.call(ToolCall("backup_lookup", {"entity": entity, "attribute": attr}))
    assert other.ok and json.loads(other.content)["value"] == _truth(task, 1)
    assert s.fault_kinds == ["outage"]
    assert s.record()["faults"][0]["recovery"] == "backup_lookup"


def test_ambiguous_faults_have_identical_messages():
    contents = set()
    for kind in sorted(AMBIGUOUS_FAULTS):
        for seed in range(5):
            r = _lookup(WORLD.start(_with_fault(kind, seed=seed)))
            assert r.status == "error"
            contents.add(r.content)
    assert contents == {UNAVAILABLE}
    assert {RECOVERY[k] for k in AMBIGUOUS_FAULTS} == {"retry", "backup_lookup"}


def test_backup_is_on_standby_without_an_outage():
    s = WORLD.start(dataclasses.replace(_with_fault("slow"), faults=()))
    assert _lookup(s, "backup_lookup").content == STANDBY


def test_bad_args_lists_valid_names_and_corrected_call_works():
    task = _with_fault("bad_args")
    attr = task.meta["lookups"][0][1]
    s = WORLD.start(task)
    r = _lookup(s)
    assert r.status == "error" and r.fault == "bad_args"
    valid = [v.strip() for v in r.content.split("valid:", 1)[1].split(",")]
    new_names = {f"{a}_{u}" for a, (u, _) in ATTRIBUTES.items()}
    assert set(valid) == new_names
    assert _lookup(s).status == "error"  # the old name stays invalid
    new = next(v for v in valid if v.startswith(attr + "_"))
    fixed = _lookup(s, attribute=new)
    assert fixed.ok and json.loads(fixed.content)["value"] == _truth(task)
    assert s.fault_kinds == ["bad_args"]


def test_unknown_attribute_without_fault_lists_valid_names():
    s = WORLD.start(dataclasses.replace(_with_fault("slow"), faults=()))
    r = _lookup(s, attribute="colour")
    assert r.status == "error" and r.fault is None
    assert all(a in r.content for a in ATTRIBUTES)


def test_unexpected_unit_drift_then_convert_recovers():
    task = _with_fault("unexpected")
    attr = task.meta["lookups"][0][1]
    base, drift = ATTRIBUTES[attr]
    s = WORLD.start(task)
    r = _lookup(s)
    assert r.status == "unexpected" and r.fault == "unexpected"
    data = json.loads(r.content)
    assert data["unit"] == drift and data["value"] != _truth(task)
    conv = s.call(
        ToolCall("convert", {"value": data["value"], "from_unit": drift, "to_unit": base})
    )
    assert conv.ok and json.loads(conv.content) == {"value": _truth(task), "unit": base}
    assert s.record()["faults"][0]["recovery"] == "convert"


def test_progress_counts_lookups_and_the_computation():
    # L3: two lookups then a calc that returns the answer; a failed call reaches nothing.
    task = dataclasses.replace(WORLD.tasks(split="train", level=3, n=1, seed=0)[0], faults=())
    s = WORLD.start(task)
    assert s.progress == (0, 3)
    (ea, attr), (eb, _) = task.meta["lookups"]
    s.call(ToolCall("lookup", {"entity": ea, "attribute": "colour"}))  # invalid attribute
    s.call(ToolCall("calc", {"expression": "1 + 1"}))  # not the answer
    assert s.progress == (0, 3)
    s.call(ToolCall("lookup", {"entity": ea, "attribute": attr}))
    s.call(ToolCall("lookup", {"entity": ea, "attribute": attr}))  # the same sub-goal again
    assert s.progress == (1, 3)
    s.call(ToolCall("lookup", {"entity": eb, "attribute": attr}))
    va, vb = WORLD.kb[ea][attr], WORLD.kb[eb][attr]
    s.call(ToolCall("calc", {"expression": f"{va} {task.meta['op']} {vb}"}))
    assert s.progress == (3, 3)
    assert (s.record()["subgoals"], s.record()["subgoals_reached"]) == (3, 3)


def test_progress_of_faulted_lookups_and_levels_without_subgoals():
    # A transient failure reaches nothing; the drifted (unexpected) value does count.
    s = WORLD.start(_with_fault("transient"))
    _lookup(s)
    assert s.progress == (0, 1)
    _lookup(s)
    assert s.progress == (1, 1)
    s = WORLD.start(_with_fault("unexpected"))
    assert _lookup(s).status == "unexpected" and s.progress == (1, 1)
    l0 = WORLD.start(WORLD.tasks(split="train", level=0, n=1, seed=0)[0])
    l0.call(ToolCall("calc", {"expression": l0.task.meta["expression"]}))
    assert l0.progress == (0, 0)  # L0 has no tool sub-goals


def test_slow_reports_latency_without_sleeping(monkeypatch):
    def no_sleep(_s):
        raise AssertionError("ToolWorld must simulate latency, not sleep")

    monkeypatch.setattr(time, "sleep", no_sleep)
    task = _with_fault("slow")
    s = WORLD.start(task)
    r = _lookup(s)
    assert r.ok and r.fault == "slow"
    assert json.loads(r.content)["value"] == _truth(task)
    assert r.latency_s >= 0.5 * WORLD.config.slow_latency_s > WORLD.config.latency_s
    normal = _lookup(s)
    assert normal.fault is None and normal.latency_s <= WORLD.config.latency_s
    assert s.latency_s == pytest.approx(r.latency_s + normal.latency_s)


def test_unfired_faults_are_reported_as_not_fired():
    task = _with_fault("outage")
    s = WORLD.start(task)
    s.call(ToolCall("calc", {"expression": "1 + 1"}))
    rec = s.record()
    assert s.fault_kinds == [] and rec["faults"][0]["fired"] is False
    assert rec["n_calls"] == 1


# ---------------------------------------------------------------- tools
def test_calc_and_convert():
    assert calc_value("(2 + 3) * 4 - 1") == 19
    for bad in ("2 ** 10", "1 / 2", "__import__('os')", "x + 1", "", "1" * 100, "1.5 + 1"):
        with pytest.raises((ValueError, SyntaxError)):
            calc_value(bad)
    s = WORLD.start(WORLD.tasks(split="train", level=0, n=1, seed=0)[0])
    assert s.call(ToolCall("calc", {"expression": "6 * 7"})).content == '{"value":42}'
    assert s.call(ToolCall("calc", {"expression": "2 ** 99999"})).status == "error"
    ok = s.call(ToolCall("convert", {"value": 3, "from_unit": "km", "to_unit": "cm"}))
    assert json.loads(ok.content) == {"value": 300_000, "unit": "cm"}
    assert s.call(ToolCall("convert", {"value": "5", "from_unit": "kg", "to_unit": "g"})).ok
    frac = s.call(ToolCall("convert", {"value": 150, "from_unit": "cm", "to_unit": "m"}))
    assert frac.status == "error" and "whole" in frac.content
    cross = s.call(ToolCall("convert", {"value": 1, "from_unit": "kg", "to_unit": "m"}))
    assert cross.status == "error"
    unit = s.call(ToolCall("convert", {"value": 1, "from_unit": "lb", "to_unit": "kg"}))
    assert unit.status == "error" and "kg" in unit.content and "valid" in unit.content


def test_argument_errors_are_informative():
    s = WORLD.start(WORLD.tasks(split="train", level=1, n=1, seed=0)[0])
    r = s.call(ToolCall("lookup", {"entity": "Kalo"}))
    assert r.status == "error" and '"attribute"' in r.content and "missing" in r.content
    r = s.call(ToolCall("lookup", {"entity": "Kalo", "attribute": "age", "x": 1}))
    assert r.status == "error" and '"x"' in r.content
    r = s.call(ToolCall("search", {"q": "x"}))
    assert r.status == "error" and all(n in r.content for n in TOOL_NAMES)
    r = s.call(ToolCall("convert", {"value": "many", "from_unit": "kg", "to_unit": "g"}))
    assert r.status == "error" and "integer" in r.content
    r = s.call(ToolCall("lookup", {"entity": "Nobody", "attribute": "age"}))
    assert r.status == "error" and "Nobody" in r.content
    assert s.call_error("invalid JSON").content == "error: invalid JSON"
    assert s.log[-1][0] is None and len(s.log) == 6


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from([*TOOL_NAMES, "nope", ""]) | st.text(max_size=10),
    args=st.dictionaries(
        st.sampled_from(["entity", "attribute", "expression", "value", "from_unit", "to_unit"])
        | st.text(max_size=6),
        json_values,
        max_size=4,
    ),
)
def test_session_call_never_raises(name, args):
    task = WORLD.tasks(split="train", level=3, n=1, seed=0)[0]
    s = WORLD.start(task)
    for call in (ToolCall(name, args), None, "lookup"):  # also objects that are not calls
        r = s.call(call)  # type: ignore[arg-type]
        assert r.status in TOOL_STATUSES and isinstance(r.content, str) and r.latency_s >= 0


def test_tool_schemas_and_system_prompt():
    schemas = WORLD.tool_schemas()
    assert [s["function"]["name"] for s in schemas] == list(TOOL_NAMES)
    for s in schemas:
        assert s["type"] == "function"
        params = s["function"]["parameters"]
        assert params["type"] == "object"
        assert set(params["required"]) <= set(params["properties"])
        assert s["function"]["description"]
    json.dumps(schemas)  # JSON-serialisable
    prompt = WORLD.system_prompt()
    assert all(name in prompt for name in TOOL_NAMES)
    assert "<tool_call>" in prompt and "<answer>" in prompt


def test_public_api_is_exported():
    import agentropy.env.expert as expert
    import agentropy.env.format as fmt
    import agentropy.env.toolworld as tw

    for mod in (tw, fmt, expert):
        assert mod.__all__ and all(hasattr(mod, name) for name in mod.__all__)
    assert {"ToolWorld", "ToolWorldConfig", "Task", "ToolSession", "ToolResult"} <= set(tw.__all__)
    assert {"parse_assistant", "ParsedTurn", "TOOL_CALL_OPEN", "ANSWER_OPEN"} <= set(fmt.__all__)
    assert "expert_messages" in expert.__all__


# ----------------------------------------------------------------------------- novel faults


def test_fault_families_partition_kinds_and_select_tasks():
    assert set(SEEN_FAULTS).isdisjoint(NOVEL_FAULTS)
    assert set(FAULT_FAMILIES["all"]) == set(SEEN_FAULTS) | set(NOVEL_FAULTS)
    assert all(kind in RECOVERY for kind in FAULT_FAMILIES["all"])
    for family, allowed in FAULT_FAMILIES.items():
        world = ToolWorld(ToolWorldConfig(faults=family))
        kinds = {
            f.kind for t in world.tasks(split="test", level=3, n=200, seed=0) for f in t.faults
        }
        assert kinds <= set(allowed)
        assert kinds >= set(allowed) - {"slow"}, (family, kinds)
    with pytest.raises(ValueError, match="faults must be one of"):
        ToolWorldConfig(faults="unseen")


def test_seen_family_tasks_are_unchanged_by_novel_weights():
    # The novel weights must not perturb the default draw: same tasks, same faults.
    a = ToolWorld(ToolWorldConfig()).tasks(split="test", level=3, n=100, seed=1)
    b = ToolWorld(ToolWorldConfig(w_quota=5.0, w_legacy_units=0.0)).tasks(
        split="test", level=3, n=100, seed=1
    )
    assert [t.faults for t in a] == [t.faults for t in b]


def _novel_task(kind: str) -> Task:
    world = ToolWorld(ToolWorldConfig(faults="novel", l1_fault_prob=1.0))
    for seed in range(50):
        for task in world.tasks(split="train", level=1, n=20, seed=seed):
            if task.faults[0].kind == kind:
                return task
    raise AssertionError(f"no L1 task with a {kind} fault")


def test_quota_fault_needs_backup_lookup():
    task = _novel_task("quota")
    world = ToolWorld(ToolWorldConfig(faults="novel", l1_fault_prob=1.0))
    s = world.start(task)
    entity, attr = task.meta["lookups"][0]
    call = ToolCall("lookup", {"entity": entity, "attribute": attr})
    first = s.call(call)
    assert (first.status, first.content, first.fault) == ("error", QUOTA, "quota")
    assert QUOTA != UNAVAILABLE
    assert s.call(call).content == QUOTA  # retrying never helps
    backup = s.call(ToolCall("backup_lookup", {"entity": entity, "attribute": attr}))
    assert backup.ok and json.loads(backup.content)["value"] == int(task.answer)
    assert s.record()["faults"][0]["recovery"] == "backup_lookup"


def test_schema_v2_fault_is_fixed_by_renamed_attribute():
    task = _novel_task("schema_v2")
    world = ToolWorld(ToolWorldConfig(faults="novel", l1_fault_prob=1.0))
    s = world.start(task)
    entity, attr = task.meta["lookups"][0]
    first = s.call(ToolCall("lookup", {"entity": entity, "attribute": attr}))
    assert first.status == "error" and first.fault == "schema_v2"
    assert "422" in first.content and "valid:" not in first.content  # not the seen message
    new = f"{attr}_{ATTRIBUTES[attr][0]}"
    assert new in first.content
    fixed = s.call(ToolCall("lookup", {"entity": entity, "attribute": new}))
    assert fixed.ok and json.loads(fixed.content)["value"] == int(task.answer)


def test_legacy_units_fault_is_fixed_by_convert():
    task = _novel_task("legacy_units")
    world = ToolWorld(ToolWorldConfig(faults="novel", l1_fault_prob=1.0))
    s = world.start(task)
    entity, attr = task.meta["lookups"][0]
    base, drift = ATTRIBUTES[attr]
    first = s.call(ToolCall("lookup", {"entity": entity, "attribute": attr}))
    data = json.loads(first.content)
    assert first.status == "unexpected" and set(data) == {"qty", "uom"} and data["uom"] == drift
    back = s.call(ToolCall("convert", {"value": data["qty"], "from_unit": drift, "to_unit": base}))
    assert back.ok and json.loads(back.content)["value"] == int(task.answer)


def test_novel_convert_tasks_never_get_unit_drift():
    world = ToolWorld(ToolWorldConfig(faults="novel", l2_fault_prob=1.0))
    conv = [
        t for t in world.tasks(split="train", level=2, n=200, seed=0) if t.meta["kind"] == "convert"
    ]
    assert conv and all(f.kind != "legacy_units" for t in conv for f in t.faults)


def test_same_seed_same_tasks_and_faults_for_every_family_member():
    # Eval runs every policy on world.tasks(...) with one seed: equal calls, equal tasks.
    for family in FAULT_FAMILIES:
        w1, w2 = (
            ToolWorld(ToolWorldConfig(faults=family)),
            ToolWorld(ToolWorldConfig(faults=family)),
        )
        for level in LEVELS:
            assert w1.tasks(split="test", level=level, n=50, seed=3) == w2.tasks(
                split="test", level=level, n=50, seed=3
            )
