"""Loops (repeated identical calls, n-gram repetition) and hallucinated calls."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import agentropy.analysis.loops as loops_mod
from agentropy.analysis.loops import (
    LoopConfig,
    find_loops,
    hallucinated_calls,
    loop_records,
    ngram_repetition_rates,
)
from agentropy.trace import Episode, ToolCall, TraceTable, Turn


def A(n: int = 4, ids=None) -> Turn:
    ent = np.full(n if ids is None else len(ids), 0.5, np.float32)
    return Turn(
        role="assistant", entropy=ent, token_ids=None if ids is None else np.asarray(ids, np.int64)
    )


def T(name="lookup", status="error", content=None, **args) -> Turn:
    return Turn(role="tool", call=ToolCall(name, args), status=status, content=content)


def loops_of(*episodes, config=LoopConfig()):
    table = TraceTable.from_episodes(list(episodes))
    return loop_records(table, find_loops(table, config))


def test_three_identical_calls_make_one_loop_at_third_call():
    ep = Episode(
        "e",
        turns=[A(), T(q=1, r=2), A(), T(r=2, q=1), A(), T(q=1, r=2), A(), T(q=1, r=2), A()],
    )
    assert loops_of(ep) == [
        {"episode_id": "e", "turn_index": 5, "type": "repeated_call", "length": 4}
    ]


def test_two_identical_calls_or_broken_runs_are_not_loops():
    ep = Episode("e", turns=[T(q=1), A(), T(q=1), A(), T(q=2), A(), T(q=1), A(), T(q=1)])
    assert loops_of(ep) == []
    # Unparsed calls (call None) break runs rather than matching each other.
    none = Turn(role="tool", call=None, status="error")
    assert loops_of(Episode("e", turns=[none, A(), none, A(), none])) == []
    # Runs never continue across episodes.
    a = Episode("a", turns=[T(q=1), A(), T(q=1)])
    b = Episode("b", turns=[T(q=1), A(), T(q=1)])
    assert loops_of(a, b) == []
    # ...and `repeats` is a parameter.
    assert [r["turn_index"] for r in loops_of(a, b, config=LoopConfig(repeats=2))] == [2, 2]


def test_ngram_rate_exact():
    # 12 tokens, 10 trigrams: (1,2,3) x4 positions 0,3,6,9 -> 3 repeats; (2,3,1) at 1,4,7 -> 2;
    # (3,1,2) at 2,5,8 -> 2; rate = 7 / 10.
    ids = [1, 2, 3] * 4
    rates = ngram_repetition_rates(np.asarray(ids), np.array([0]), np.array([12]), 3)
    assert rates[0] == pytest.approx(0.7)
    ep = Episode("e", turns=[A(ids=ids), T(), A(ids=list(range(20)))])
    assert loops_of(ep) == [{"episode_id": "e", "turn_index": 0, "type": "ngram", "rate": 0.7}]
    # Threshold is inclusive: exactly 0.5 counts.
    ids = [7, 8, 9, 7, 8, 9, 1, 2, 3, 4]  # 8 trigrams, one repeat: (7, 8, 9) at position 3
    r = ngram_repetition_rates(np.asarray(ids), np.array([0]), np.array([10]), 3)[0]
    assert r == pytest.approx(1 / 8)
    assert loops_of(Episode("e", turns=[A(ids=ids)]), config=LoopConfig(ngram_rate=0.125))
    assert not loops_of(Episode("e", turns=[A(ids=ids)]), config=LoopConfig(ngram_rate=0.13))


def test_ngrams_do_not_cross_turns_and_need_ids():
    # Each turn alone repeats nothing; concatenated they would.
    ep = Episode("e", turns=[A(ids=[1, 2, 3, 4]), A(ids=[1, 2, 3, 4])])
    assert loops_of(ep) == []
    # No token ids: never an n-gram loop; fewer than n tokens: rate undefined.
    assert loops_of(Episode("e", turns=[A(n=50)])) == []
    rates = ngram_repetition_rates(np.array([1, 1]), np.array([0]), np.array([2]), 3)
    assert np.isnan(rates[0])


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 4), max_size=30), min_size=1, max_size=5),
    st.sampled_from([62, 0]),
)
def test_ngram_vectorised_matches_naive(turns, packed_bits):
    # packed_bits = 0 forces the lexicographic-sort fallback used for huge vocabularies.
    loops_mod._MAX_PACKED_BITS = packed_bits
    try:
        _check_ngrams(turns)
    finally:
        loops_mod._MAX_PACKED_BITS = 62


def _check_ngrams(turns):
    ids = np.asarray([x for t in turns for x in t], np.int64)
    lens = np.asarray([len(t) for t in turns])
    ends = np.cumsum(lens)
    starts = ends - lens
    got = ngram_repetition_rates(ids, starts, ends, 3)
    for j, t in enumerate(turns):
        grams = [tuple(t[i : i + 3]) for i in range(len(t) - 2)]
        if not grams:
            assert np.isnan(got[j])
            continue
        seen: set = set()
        dup = 0
        for g in grams:
            dup += g in seen
            seen.add(g)
        assert got[j] == pytest.approx(dup / len(grams))


def test_hallucinated_calls():
    ep = Episode(
        "e",
        turns=[
            A(),
            T("lookup", status="ok", content="capital of Freedonia is Sylvania", city="Freedonia"),
            A(),
            T("lookup", status="ok", city="Sylvania"),  # value from the tool output: fine
            A(),
            T("lookup", status="ok", city="Atlantis"),  # appears nowhere: hallucinated
            A(),
            T("teleport", status="error", x="Sylvania"),  # unknown tool
        ],
        meta={"question": "What is the capital of Freedonia?"},
    )
    table = TraceTable.from_episodes([ep])
    checked, halluc = hallucinated_calls(table, known_tools=frozenset({"lookup", "calc"}))
    tool_rows = np.flatnonzero(table.turn_is_tool)
    assert checked[tool_rows].all()
    assert halluc[tool_rows].tolist() == [False, False, True, True]
    # Without a question only the tool-name check is possible.
    ep.meta = {}
    table = TraceTable.from_episodes([ep])
    checked, halluc = hallucinated_calls(table, known_tools=frozenset({"lookup"}))
    assert halluc[tool_rows].tolist() == [False, False, False, True]
    # Without both nothing is checked.
    checked, halluc = hallucinated_calls(table)
    assert not checked.any() and not halluc.any()


def test_loop_config_validation():
    with pytest.raises(ValueError, match="repeats"):
        LoopConfig(repeats=1)
    with pytest.raises(ValueError, match="ngram_rate"):
        LoopConfig(ngram_rate=0.0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 5), min_size=1, max_size=300),
    st.lists(st.integers(1, 40), min_size=1, max_size=20),
    st.integers(1, 4),
)
def test_hashed_ngram_bound_never_undercuts_the_exact_rate(ids, lengths, n):
    """The 32-bit hashed bound that spares find_loops most exact sorts is an upper bound with the
    same undefined (NaN) segments."""
    from agentropy.analysis.loops import _ngram_rate_bounds

    ids_a = np.asarray(ids, np.int64)
    ends = np.minimum(np.cumsum(lengths), len(ids))
    starts = np.concatenate([[0], ends[:-1]])
    exact = ngram_repetition_rates(ids_a, starts, ends, n)
    bound = _ngram_rate_bounds(ids_a, starts, ends, n)
    assert bound is not None
    assert np.array_equal(np.isnan(exact), np.isnan(bound))
    defined = ~np.isnan(exact)
    assert (bound[defined] >= exact[defined]).all()


def test_find_loops_reports_the_same_loops_with_and_without_the_hashed_bound(monkeypatch):
    rng = np.random.default_rng(0)
    turns = []
    for k in range(60):
        n = int(rng.integers(3, 80))
        ids = rng.integers(0, 50_000, n)
        if k % 4 == 0:  # repeating turns, some above and some below the rate threshold
            ids = np.tile(ids[: int(rng.integers(2, 12))], n)[:n]
        turns.append(Turn(role="assistant", entropy=np.ones(n), token_ids=ids))
        turns.append(Turn(role="tool", call=ToolCall("t", {"k": k % 3}), status="ok"))
    table = TraceTable.from_episodes([Episode(episode_id="e", turns=turns)])
    fast = loops_mod.find_loops(table)
    monkeypatch.setattr(loops_mod, "_ngram_rate_bounds", lambda *a, **k: None)
    exact = loops_mod.find_loops(table)
    assert (fast.type == 1).sum() > 3
    for name in ("ep", "turn_index", "type", "value"):
        assert np.array_equal(getattr(fast, name), getattr(exact, name)), name
