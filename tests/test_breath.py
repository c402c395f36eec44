"""Within-episode definitions (DESIGN.md "Definitions") on hand-built episodes, a naive
per-trigger reference implementation, and properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentropy.analysis.breath import (
    BreathConfig,
    analyze_episode,
    analyze_triggers,
    trigger_stats,
)
from agentropy.errors import InputError
from agentropy.trace import PHASE_CODE, Episode, ToolCall, TraceTable, Turn


def A(values, phase=None) -> Turn:
    ph = None if phase is None else np.asarray(phase, np.int8)
    return Turn(role="assistant", entropy=np.asarray(values, np.float32), phase=ph)


def T(status: str, name: str = "lookup", **args) -> Turn:
    return Turn(role="tool", call=ToolCall(name, args), status=status)


def by_turn(result: dict) -> dict[int, dict]:
    return {e["turn_index"]: e for e in result["eruptions"]}


# Dyadic entropies (multiples of 1/4) keep every mean and ratio exact in float arithmetic.


def test_post_trigger_stream_spans_later_turns_and_baseline_spans_episode():
    ep = Episode(
        "e1",
        turns=[
            A([0.25] * 10),
            T("error", q="x"),
            A([1.0] * 4),
            T("ok", name="backup_lookup"),
            A([1.0] * 12 + [0.25] * 20),
        ],
        success=True,
    )
    er = by_turn(analyze_episode(ep))
    # Trigger 1: B = 0.25; P[0:16] = 4 ones (turn 2) + 12 ones (turn 4) -> S = 4.
    assert er[1]["baseline"] == 0.25
    assert er[1]["spike_ratio"] == 4.0
    # 16 ones then 0.25s: the first all-0.25 window of 8 ends at n = 24; the window ending at 23
    # holds one 1.0 -> mean 0.34375 > 1.25 * 0.25.
    assert er[1]["contracted"] is True
    assert er[1]["tokens_to_contraction"] == 24
    assert er[1]["kind"] == "productive"  # next tool turn is ok
    # Trigger 3: baseline from the last 14 tokens before it across turns 0 and 2 (ten 0.25,
    # four 1.0 -> median 0.25); P = 12 ones + 20 quarters -> S = (12 + 4 * 0.25) / 16 / 0.25.
    assert er[3]["baseline"] == 0.25
    assert er[3]["spike_ratio"] == 3.25
    assert er[3]["tokens_to_contraction"] == 20
    assert er[3]["kind"] == "productive"  # no later tool turn, episode succeeded


def test_neutral_when_no_progress():
    ep = Episode(
        "e",
        turns=[A([0.25] * 8), T("error"), A([1.0] * 8 + [0.25] * 8)],
        success=False,
    )
    (e,) = analyze_episode(ep)["eruptions"]
    assert e["kind"] == "neutral"
    assert e["tokens_to_contraction"] == 16
    ep2 = Episode(
        "e2",
        turns=[A([0.25] * 8), T("error"), A([1.0] * 8 + [0.25] * 8), T("error", q="y"), A([0.25])],
        success=True,
    )
    first = by_turn(analyze_episode(ep2))[1]
    assert first["kind"] == "neutral"  # next tool turn failed, success does not matter
    ep3 = Episode("e3", turns=ep.turns, success=None)
    assert analyze_episode(ep3)["eruptions"][0]["kind"] == "neutral"


def test_divergent_when_never_contracts():
    ep = Episode("e", turns=[A([0.5] * 20), T("error"), A([2.0] * 200)], success=True)
    (e,) = analyze_episode(ep)["eruptions"]
    assert e["spike_ratio"] == 4.0
    assert e["contracted"] is False
    assert e["tokens_to_contraction"] is None
    assert e["kind"] == "divergent"


def test_contraction_horizon_and_short_stream():
    # Returns to the band only at n = 130 > h = 128: not contracted.
    post = [1.0] * 122 + [0.25] * 8
    ep = Episode("e", turns=[A([0.25] * 8), T("error"), A(post)], success=True)
    (e,) = analyze_episode(ep)["eruptions"]
    assert e["contracted"] is False
    assert e["kind"] == "divergent"
    # With a longer horizon the same stream contracts at exactly 130.
    (e,) = analyze_episode(ep, BreathConfig(horizon=200))["eruptions"]
    assert e["tokens_to_contraction"] == 130
    # n starts at 8: a post-trigger stream of 7 tokens can never contract.
    ep = Episode("e", turns=[A([0.25] * 8), T("error"), A([2.0, 2.0] + [0.25] * 5)])
    (e,) = analyze_episode(ep)["eruptions"]
    assert e["spike_ratio"] == (4.0 + 5 * 0.25) / 7 / 0.25
    assert e["contracted"] is False
    # n is capped by len(P): a 9-token stream whose window [1:9] is in band contracts at 9.
    ep = Episode("e", turns=[A([0.25] * 8), T("error"), A([4.0] + [0.25] * 8)])
    (e,) = analyze_episode(ep)["eruptions"]
    assert e["tokens_to_contraction"] == 9


def test_baseline_uses_last_w_tokens_and_eps_floor():
    # 60 tokens at 2.0 then 40 at 0.5: median of all 100 would be 2.0, of the last 64 is 0.5.
    ep = Episode("e", turns=[A([2.0] * 60 + [0.5] * 40), T("error"), A([1.5] * 16)])
    (e,) = analyze_episode(ep)["eruptions"]
    assert e["baseline"] == 0.5
    assert e["spike_ratio"] == 3.0
    wide = analyze_triggers(TraceTable.from_episodes([ep]), BreathConfig(window=100))
    assert wide.stats.baseline[0] == 2.0
    assert wide.stats.spike_ratio[0] == 0.75
    assert not wide.eruption[0]
    # Even count: median is the mean of the two middle values.
    table = TraceTable.from_episodes(
        [Episode("e", turns=[A([0.25, 0.75, 1.25, 5.0]), T("ok"), A([1.0])])]
    )
    st_ = analyze_triggers(table).stats
    assert st_.baseline[0] == 1.0
    # eps floor, and eps when nothing precedes the trigger.
    ep = Episode("e", turns=[A([0.01] * 5), T("error"), A([0.2] * 4)])
    (e,) = analyze_episode(ep)["eruptions"]
    assert e["baseline"] == pytest.approx(0.05)
    assert e["spike_ratio"] == pytest.approx(0.2 / 0.05, rel=1e-6)
    ep = Episode("e", turns=[T("error"), A([0.25] * 4)])
    (e,) = analyze_episode(ep)["eruptions"]
    assert e["baseline"] == pytest.approx(0.05)


def test_baseline_does_not_cross_episodes():
    eps = [
        Episode("a", turns=[A([4.0] * 64)]),
        Episode("b", turns=[A([0.25] * 2), T("error"), A([1.0] * 16)]),
    ]
    table = TraceTable.from_episodes(eps)
    trig = analyze_triggers(table)
    assert trig.stats.baseline[0] == 0.25
    assert trig.stats.spike_ratio[0] == 4.0


def test_no_response_and_spike_ratio_with_short_stream():
    ep = Episode("e", turns=[A([0.25] * 4), T("error"), A([0.75] * 3), T("ok"), T("error")])
    res = analyze_episode(ep)
    assert res["no_response"] == [3, 4]  # tool turns followed by no assistant token
    (e,) = res["eruptions"]
    assert e["spike_ratio"] == 3.0  # mean over the 3 available tokens
    table = TraceTable.from_episodes([ep])
    trig = analyze_triggers(table)
    assert np.isnan(trig.stats.spike_ratio[1:]).all()
    assert not trig.eruption[1:].any()


def test_frozen_response():
    ep = Episode(
        "e",
        turns=[
            A([0.5] * 16),
            Turn(role="tool", call=ToolCall("lookup", {"a": 1, "b": 2}), status="error"),
            A([0.5] * 16),  # S = 1.0 < 1.2
            Turn(role="tool", call=ToolCall("lookup", {"b": 2, "a": 1}), status="error"),
            A([0.5] * 4 + [0.75] * 12),  # S = (2 + 9) / 16 / 0.5 = 1.375 >= 1.2
            Turn(role="tool", call=ToolCall("lookup", {"a": 1, "b": 2}), status="ok"),
            A([0.5] * 4),
        ],
    )
    res = analyze_episode(ep)
    assert [f["turn_index"] for f in res["frozen"]] == [1]
    assert res["frozen"][0]["spike_ratio"] == 1.0
    # Same spike but a different next call: not frozen.
    ep.turns[3] = Turn(role="tool", call=ToolCall("backup_lookup", {"a": 1}), status="ok")
    assert analyze_episode(ep)["frozen"] == []
    # An ok tool turn followed by the same call is not a frozen response either.
    ep2 = Episode("e", turns=[A([0.5] * 16), T("ok"), A([0.5] * 16), T("ok"), A([0.5])])
    assert analyze_episode(ep2)["frozen"] == []


def test_nan_policy():
    ep = Episode("e", turns=[A([0.25, float("nan"), 0.25]), T("error"), A([1.0] * 4)])
    with pytest.raises(InputError, match=r"turns\[0\]\.entropy"):
        TraceTable.from_episodes([ep], source="x.jsonl")
    table = TraceTable.from_episodes([ep], nan_policy="drop")
    assert table.n_dropped == 1
    assert table.n_tokens == 6


def test_config_validation():
    with pytest.raises(ValueError, match="horizon"):
        BreathConfig(horizon=4)
    with pytest.raises(ValueError, match="eps"):
        BreathConfig(eps=0.0)
    with pytest.raises(ValueError, match="window"):
        BreathConfig(window=0)
    with pytest.raises(ValueError, match="baseline_stat must be one of median, mean"):
        BreathConfig(baseline_stat="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="baseline_tokens must be one of all, text"):
        BreathConfig(baseline_tokens="plan")  # type: ignore[arg-type]


def test_mean_baseline_and_text_baseline_skip_the_call_span():
    # 40 plan tokens at 1.0, then a 24-token tool call at 0.0 right before the failure.
    plan, act = PHASE_CODE["plan"], PHASE_CODE["act"]
    before = A([1.0] * 40 + [0.0] * 24, [plan] * 40 + [act] * 24)
    ep = Episode("e", turns=[before, T("error"), A([2.0] * 16)], success=True)
    table = TraceTable.from_episodes([ep])

    def baseline(**kw):
        return float(analyze_triggers(table, BreathConfig(**kw)).stats.baseline[0])

    # Median of the last 64 (40 ones, 24 zeros) is 1.0; with W = 32 (8 ones, 24 zeros) it is
    # the floor, while the mean is 8 / 32 = 0.25 and the text baseline skips the call: 1.0.
    assert baseline() == 1.0
    assert baseline(window=32) == BreathConfig().eps
    assert baseline(window=32, baseline_stat="mean") == 0.25
    assert baseline(window=32, baseline_tokens="text") == 1.0
    assert baseline(window=32, baseline_tokens="text", baseline_stat="mean") == 1.0
    # Without phases every token counts as text: the text baseline is the all-token one.
    bare = TraceTable.from_episodes([Episode("e", turns=[A([1.0] * 8 + [0.0] * 24), T("error")])])
    for stat in ("median", "mean"):
        a = analyze_triggers(bare, BreathConfig(baseline_stat=stat)).stats.baseline
        t = analyze_triggers(bare, BreathConfig(baseline_stat=stat, baseline_tokens="text"))
        np.testing.assert_array_equal(a, t.stats.baseline)
    # Only span tokens before the trigger: no text -> eps, like an empty window.
    only_act = Episode("e", turns=[A([1.0] * 8, [act] * 8), T("error"), A([1.0])])
    stats = analyze_triggers(
        TraceTable.from_episodes([only_act]), BreathConfig(baseline_tokens="text")
    ).stats
    assert stats.baseline[0] == BreathConfig().eps


# --- naive reference: one trigger at a time, straight from the definitions ---------------------


def phases(turn: Turn) -> list[str | None]:
    names = turn.phase_names
    return [None] * len(turn.entropy) if names is None else names


def naive(episode: Episode, cfg: BreathConfig) -> list[tuple]:
    out = []
    for i, turn in enumerate(episode.turns):
        if turn.role != "tool":
            continue
        before = [
            x
            for t in episode.turns[:i]
            if t.role == "assistant"
            for x, ph in zip(t.entropy.tolist(), phases(t), strict=True)
            if cfg.baseline_tokens == "all" or ph not in ("act", "answer")
        ]
        post = [
            x for t in episode.turns[i + 1 :] if t.role == "assistant" for x in t.entropy.tolist()
        ]
        stat = np.median if cfg.baseline_stat == "median" else np.mean
        b = max(float(stat(before[-cfg.window :])), cfg.eps) if before else cfg.eps
        if not post:
            out.append((b, None, None))
            continue
        s = float(np.mean(post[: cfg.k])) / b
        ttc = None
        cw = cfg.contraction_window
        for n in range(cw, min(cfg.horizon, len(post)) + 1):
            if float(np.mean(post[n - cw : n])) <= cfg.band * b:
                ttc = n
                break
        out.append((b, s, ttc))
    return out


episode_strategy = st.lists(
    st.one_of(
        st.lists(
            st.floats(0.0, 4.0, allow_nan=False, width=32).map(lambda v: round(v * 4) / 4),
            min_size=0,
            max_size=40,
        ),
        st.sampled_from(["ok", "error", "unexpected"]),
    ),
    min_size=1,
    max_size=10,
)


def build(spec) -> Episode:
    # Phases cycle through every code (a deterministic function of the values), so the text
    # baseline has spans to skip; the all-token definitions ignore them.
    turns = [
        T(x)
        if isinstance(x, str)
        else A(x, [int(4 * v + j) % len(PHASE_CODE) for j, v in enumerate(x)])
        for x in spec
    ]
    return Episode("e", turns=turns, success=True)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(episode_strategy, min_size=1, max_size=4),
    st.sampled_from(
        [
            BreathConfig(),
            BreathConfig(window=5, k=3, contraction_window=2, horizon=9),
            BreathConfig(window=5, k=3, contraction_window=2, horizon=9, baseline_stat="mean"),
            BreathConfig(window=5, baseline_tokens="text"),
            BreathConfig(window=3, baseline_tokens="text", baseline_stat="mean"),
        ]
    ),
)
def test_vectorised_matches_naive(specs, cfg):
    episodes = [build(s) for s in specs]
    table = TraceTable.from_episodes(episodes)
    stats = analyze_triggers(table, cfg).stats
    expected = [row for ep in episodes for row in naive(ep, cfg)]
    assert len(expected) == stats.baseline.shape[0]
    for m, (b, s, ttc) in enumerate(expected):
        assert stats.baseline[m] == pytest.approx(b, rel=1e-12)
        if s is None:
            assert stats.n_post[m] == 0 and np.isnan(stats.spike_ratio[m])
        else:
            assert stats.spike_ratio[m] == pytest.approx(s, rel=1e-12)
            # Dyadic inputs make the window means exact, so the first n agrees exactly.
            assert stats.tokens_to_contraction[m] == (-1 if ttc is None else ttc)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.2, 3.0), min_size=1, max_size=80),
    # Values under 1e-30 become 0: a float32 subnormal (1.4e-45) halves to 0, which is not exact.
    st.lists(st.floats(0.0, 6.0).map(lambda x: x if x >= 1e-30 else 0.0), min_size=1, max_size=150),
    st.sampled_from([0.5, 2.0, 4.0, 8.0]),
)
def test_scaling_entropy_leaves_ratios_and_kinds_unchanged(before, after, c):
    # Inputs keep the median of `before` >= 0.2 > eps / 0.5, so the eps floor is inactive at every
    # scale tried (c >= 0.5); with a floored baseline scaling would change S, by design. Powers of
    # two keep float arithmetic exact (entropy is stored as float32, so only away from its
    # subnormals), so comparisons at thresholds cannot flip.
    def ep(scale):
        return Episode(
            "e",
            turns=[A(np.asarray(before) * scale), T("error"), A(np.asarray(after) * scale)],
            success=True,
        )

    t1 = TraceTable.from_episodes([ep(1.0)])
    t2 = TraceTable.from_episodes([ep(c)])
    a1, a2 = analyze_triggers(t1), analyze_triggers(t2)
    np.testing.assert_allclose(a1.stats.spike_ratio, a2.stats.spike_ratio, rtol=1e-6)
    np.testing.assert_array_equal(a1.eruption, a2.eruption)
    np.testing.assert_array_equal(a1.kind, a2.kind)
    np.testing.assert_array_equal(a1.stats.tokens_to_contraction, a2.stats.tokens_to_contraction)


def test_trigger_stats_empty():
    s = trigger_stats(np.zeros(0), np.zeros(0, int), np.zeros(0, int), np.zeros(0, int))
    assert s.baseline.shape == (0,)
    assert s.tokens_to_contraction.shape == (0,)


def test_summary_counts_failed_triggers_whose_baseline_is_the_eps_floor():
    from agentropy.analysis.summary import analyze_episodes

    episodes = [
        # Failed trigger after near-deterministic text: baseline floored.
        Episode("a", turns=[A([0.01] * 5), T("error"), A([0.5] * 4)]),
        # Failed trigger after varied text: baseline above the floor.
        Episode("b", turns=[A([0.5] * 5), T("error"), A([1.0] * 4)]),
        # Successful trigger at the floor: not a failure, not counted.
        Episode("c", turns=[A([0.0] * 5), T("ok"), A([0.5] * 4)]),
    ]
    floor = analyze_episodes(episodes)["baseline_floor"]
    assert floor == {"eps": 0.05, "failed_triggers": 2, "at_floor": 1, "share": 0.5}
    none = analyze_episodes([episodes[2]])["baseline_floor"]
    assert none["failed_triggers"] == 0 and none["share"] is None


def test_floor_note_warns_above_the_share_and_shows_in_analyze_and_report(tmp_path) -> None:
    from agentropy.analysis.summary import FLOOR_WARN_SHARE, analyze_episodes, floor_note
    from agentropy.report.html import build_report

    flat = Episode("a", turns=[A([0.0] * 5), T("error"), A([1.0] * 4)])
    varied = Episode("b", turns=[A([0.5] * 5), T("error"), A([1.0] * 4)])
    # 1 of 5 failed triggers at the floor (20 %): not above the share, no note.
    quiet = analyze_episodes([flat] + [varied] * 4)
    assert quiet["baseline_floor"]["share"] == pytest.approx(FLOOR_WARN_SHARE)
    assert floor_note(quiet) is None
    assert 'id="floor-note"' not in build_report(summary=quiet, episodes=[flat, varied])
    # 2 of 5: warned, with the counts, in the terminal summary and the report.
    loud = analyze_episodes([flat] * 2 + [varied] * 3)
    note = floor_note(loud)
    assert note is not None and "2 of 5 failed triggers (40%)" in note
    assert 'id="floor-note"' in build_report(summary=loud, episodes=[flat, varied])
    assert floor_note(analyze_episodes([Episode("c", turns=[A([0.0] * 5), T("ok")])])) is None


@settings(max_examples=60, deadline=None)
@given(
    st.floats(0.0, 4.0),
    st.integers(1, 100),
    st.integers(1, 80),
    st.sampled_from(["all", "text"]),
    st.sampled_from([0.01, 0.05, 0.5]),
)
def test_mean_and_median_agree_on_constant_input_and_respect_the_floor(
    value, n_before, window, tokens, eps
):
    ep = Episode(
        "e",
        turns=[A([value] * n_before, [PHASE_CODE["plan"]] * n_before), T("error"), A([1.0] * 4)],
    )
    table = TraceTable.from_episodes([ep])
    got = {
        stat: float(
            analyze_triggers(
                table,
                BreathConfig(window=window, eps=eps, baseline_stat=stat, baseline_tokens=tokens),
            ).stats.baseline[0]
        )
        for stat in ("median", "mean")
    }
    value32 = float(np.float32(value))  # entropy is stored as float32
    assert got["median"] == got["mean"] == max(value32, eps)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.0, 4.0), min_size=0, max_size=80),
    st.sampled_from(["median", "mean"]),
    st.sampled_from(["all", "text"]),
    st.sampled_from([0.01, 0.05, 0.5]),
)
def test_baseline_never_below_floor(before, stat, tokens, eps):
    n = len(before)
    ep = Episode(
        "e",
        turns=[A(before, [j % len(PHASE_CODE) for j in range(n)]), T("error"), A([1.0])],
    )
    cfg = BreathConfig(eps=eps, baseline_stat=stat, baseline_tokens=tokens)
    b = analyze_triggers(TraceTable.from_episodes([ep]), cfg).stats.baseline[0]
    assert b >= eps
    # The mean lies between the smallest and largest token of the window.
    if stat == "mean" and tokens == "all" and before:
        window = np.asarray(before[-cfg.window :], np.float32)
        assert b <= max(float(window.max()), eps) + 1e-12


def test_baseline_options_travel_with_the_summary_config():
    from agentropy.analysis.summary import AnalyzeConfig, Analyzer
    from agentropy.report.html import _breath_config

    cfg = BreathConfig(baseline_stat="mean", baseline_tokens="text")
    plan = PHASE_CODE["plan"]
    ep = Episode("e", turns=[A([0.5] * 8, [plan] * 8), T("error"), A([2.0] * 8)], success=True)
    analyzer = Analyzer(AnalyzeConfig(breath=cfg))
    analyzer.add_episodes([ep])
    summary = analyzer.summary()
    assert summary["config"]["breath"]["baseline_stat"] == "mean"
    assert summary["config"]["breath"]["baseline_tokens"] == "text"
    # The report rebuilds the analyzer's thresholds from the summary.
    assert _breath_config(summary["config"]["breath"]) == cfg
