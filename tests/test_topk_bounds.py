"""Top-k entropy bounds through the analysis and the report.

The verdict ranges are the true extremes (every entropy inside the bounds gives verdicts inside
them, and the extremes are reached); an imported OpenAI ``top_logprobs`` trace shows its bounds in
``agentropy analyze`` (terminal and ``--json``) and in the report (note and band); a trace without
bounds renders as before; malformed bounds are one-line input errors.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from agentropy.analysis.bounds import WIDTH_BIN
from agentropy.analysis.breath import BreathConfig, analyze_triggers, bound_verdicts
from agentropy.analysis.summary import analyze_episodes, iter_tables
from agentropy.cli import app
from agentropy.entropy import topk_entropy_bounds
from agentropy.report.figures import BOUNDS_NAME
from agentropy.report.html import build_report, report_from_paths
from agentropy.trace import (
    BOUNDS_META_KEY,
    Episode,
    ToolCall,
    TraceTable,
    TraceWriter,
    Turn,
    iter_episodes,
    write_jsonl,
)

runner = CliRunner()

#: Vocabulary size given to the importer (the upper bound's ``log(V - k)``).
V = 1000
#: Top-k probabilities of the three kinds of token in :func:`conversation`.
CALM = [0.97, 0.02]
ERUPT = [0.7, 0.2]
EDGE = [0.9, 0.05]


def topk(probs: list[float]) -> tuple[float, float, float]:
    """(estimate, lower, upper) of one position with these top-k probabilities, nats."""
    lp = torch.tensor([[math.log(p) for p in probs]], dtype=torch.float64)
    est, lo, hi = topk_entropy_bounds(lp, V)
    return float(est), float(lo), float(hi)


def _lp(*runs: tuple[list[float], int]) -> dict[str, Any]:
    content = []
    for probs, n in runs:
        top = [{"token": f"t{i}", "logprob": math.log(p)} for i, p in enumerate(probs)]
        content += [{"token": "x", "logprob": top[0]["logprob"], "top_logprobs": top}] * n
    return {"content": content}


def _call(cid: str, name: str) -> dict[str, Any]:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": "{}"}}


def conversation(eid: str = "api-1") -> dict[str, Any]:
    """An OpenAI chat log with ``logprobs.content[].top_logprobs`` on each assistant message.

    Trigger 1 (turn 1, an error): 16 ``ERUPT`` tokens after 20 ``CALM`` ones, an eruption at
    every entropy within the bounds, then 16 ``CALM`` tokens that are inside the contraction band
    at the estimate but not when the stream is at its upper and the baseline at its lower bounds:
    the contraction (and so the kind) is uncertain. Trigger 2 (turn 3, ok): 16 ``EDGE`` tokens,
    an eruption at the estimate (S = 3.0) but not at the lower extreme (S = 1.8).
    """
    messages = [
        {"role": "user", "content": "age of Pata?"},
        {"role": "assistant", "content": None, "tool_calls": [_call("a", "lookup")],
         "logprobs": _lp((CALM, 20))},
        {"role": "tool", "tool_call_id": "a", "content": '{"error": "timeout"}'},
        {"role": "assistant", "content": None, "tool_calls": [_call("b", "backup_lookup")],
         "logprobs": _lp((ERUPT, 16), (CALM, 16))},
        {"role": "tool", "tool_call_id": "b", "content": "41"},
        {"role": "assistant", "content": "41", "logprobs": _lp((EDGE, 16))},
    ]  # fmt: skip
    return {"id": eid, "success": True, "messages": messages}


def write_topk_store(tmp_path: Path) -> Path:
    """``agentropy score`` of :func:`conversation` (no model: top-k inputs need none) into a
    Parquet store; returns the store."""
    src = tmp_path / "api.jsonl"
    src.write_text(json.dumps(conversation()) + "\n")
    store = tmp_path / "scored.parquet"
    res = runner.invoke(app, ["score", str(src), "--out", str(store), "--vocab-size", str(V),
                              "--no-progress"])  # fmt: skip
    assert res.exit_code == 0, res.output
    return store


def _analyze_json(*paths: Path) -> dict[str, Any]:
    res = runner.invoke(app, ["analyze", *map(str, paths), "--json", "-"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


# ------------------------------------------------------------------------------ the analyzer


def test_imported_topk_trace_shows_its_bounds_in_analyze(tmp_path: Path) -> None:
    store = write_topk_store(tmp_path)
    s = _analyze_json(store)
    b = s["entropy_bounds"]
    assert b["tokens"] == s["tokens"] == 20 + 32 + 16

    widths = np.array(
        [topk(p)[2] - topk(p)[1] for p, n in ((CALM, 20), (ERUPT, 16), (CALM, 16), (EDGE, 16))
         for _ in range(n)]
    )  # fmt: skip
    assert b["width"]["mean"] == pytest.approx(widths.mean(), rel=1e-5)
    assert b["width"]["max"] == pytest.approx(widths.max(), rel=1e-5)
    assert abs(b["width"]["median"] - np.median(widths)) <= WIDTH_BIN
    assert abs(b["width"]["p90"] - np.quantile(widths, 0.9, method="inverted_cdf")) <= WIDTH_BIN

    # Both eruptions at the estimate; one holds at every entropy inside the bounds.
    assert [e["turn_index"] for e in s["eruptions"]] == [1, 3]
    assert b["eruptions"] == {"certain": 1, "possible": 2}
    assert b["uncertain"] == {"eruption": 1, "kind": 2, "frozen": 0}
    first, second = b["uncertain_triggers"]
    assert (first["turn_index"], first["flips"]) == (1, ["kind"])
    assert (second["turn_index"], second["flips"]) == (3, ["eruption", "kind"])
    # Trigger 2's baseline is the median of 36 CALM and 16 ERUPT tokens: a CALM value.
    _, calm_lo, calm_hi = topk(CALM)
    _, edge_lo, edge_hi = topk(EDGE)
    assert second["spike_ratio"] == pytest.approx([edge_lo / calm_hi, edge_hi / calm_lo], rel=1e-5)
    assert second["spike_ratio"][0] < BreathConfig().eruption <= second["spike_ratio"][1]
    for rec, er in zip(b["uncertain_triggers"], s["eruptions"], strict=True):
        assert rec["spike_ratio"][0] <= er["spike_ratio"] <= rec["spike_ratio"][1]

    # The same trace as JSONL gives the same summary.
    as_jsonl = tmp_path / "scored.jsonl"
    write_jsonl(list(iter_episodes(store)), as_jsonl)
    assert _analyze_json(as_jsonl) == s

    # The terminal says the entropies are estimates, how wide, and what could flip.
    res = runner.invoke(app, ["analyze", str(store)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())
    assert "all assistant tokens are top-k estimates" in text
    assert re.search(r"median 0\.\d+, p90 \d\.\d+, max \d\.\d+ nats", text)
    assert "2 at the estimate, 1 certain, 2 possible" in text
    assert "1 eruption, 2 eruption-kind and 0 frozen-response verdicts could flip" in text


def _random_episode(rng: random.Random, i: int) -> Episode:
    """Assistant turns of random length and entropy with random bounds around them, separated by
    tool turns that fail or succeed and sometimes repeat the same call (frozen candidates)."""
    turns: list[Turn] = []
    for t in range(rng.randint(2, 4)):
        n = rng.randint(1, 40)
        ent = np.array([rng.uniform(0.05, 2.0) for _ in range(n)])
        lo = ent * np.array([rng.uniform(0.3, 1.0) for _ in range(n)])
        hi = ent + np.array([rng.uniform(0.0, 1.0) for _ in range(n)])
        meta = {BOUNDS_META_KEY: {"lower": lo.tolist(), "upper": hi.tolist()}}
        turns.append(Turn(role="assistant", entropy=ent, meta=meta))
        call = ToolCall("lookup", {"q": rng.choice([0, t])})
        turns.append(Turn(role="tool", call=call, status=rng.choice(["ok", "error"])))
    turns.append(Turn(role="assistant", entropy=np.full(rng.randint(0, 20), 0.3)))
    return Episode(f"r{i}", turns=turns, success=rng.random() < 0.5)


def test_verdict_ranges_hold_every_entropy_inside_the_bounds() -> None:
    rng = random.Random(0)
    table = TraceTable.from_episodes([_random_episode(rng, i) for i in range(30)])
    assert table.entropy_lower is not None and table.entropy_upper is not None
    lo = np.where(np.isnan(table.entropy_lower), table.entropy, table.entropy_lower)
    hi = np.where(np.isnan(table.entropy_upper), table.entropy, table.entropy_upper)
    cfg = BreathConfig(k=8, contraction_window=4, horizon=16, eruption=1.5, frozen=1.0)
    trig = analyze_triggers(table, cfg)
    bv = bound_verdicts(table, trig, cfg)
    assert bv is not None
    resp = trig.stats.n_post > 0
    seen = {"eruption": set(), "contracted": set(), "frozen": set()}
    np_rng = np.random.default_rng(0)
    for _ in range(200):
        # Mostly uniform inside the bounds, sometimes at a corner (where extremes live).
        u = np_rng.uniform(size=lo.shape)
        if np_rng.uniform() < 0.5:
            u = np.round(u)
        sample = analyze_triggers(dataclasses.replace(table, entropy=lo + u * (hi - lo)), cfg)
        s = sample.stats.spike_ratio[resp]
        assert np.all(bv.spike_min[resp] <= s * (1 + 1e-9))
        assert np.all(s <= bv.spike_max[resp] * (1 + 1e-9))
        assert np.all(sample.eruption[bv.eruption_certain])
        assert not np.any(sample.eruption[~bv.eruption_possible])
        c = sample.stats.contracted & resp
        assert np.all(c[bv.contraction_certain]) and not np.any(c[~bv.contraction_possible])
        assert np.all(sample.frozen[bv.frozen_certain])
        assert not np.any(sample.frozen[~bv.frozen_possible])
        at_estimate = {"eruption": trig.eruption, "contracted": trig.stats.contracted & resp,
                       "frozen": trig.frozen}  # fmt: skip
        for name, arr in (("eruption", sample.eruption), ("contracted", c),
                          ("frozen", sample.frozen)):  # fmt: skip
            seen[name].update(np.flatnonzero(arr != at_estimate[name]).tolist())
    # The ranges are not vacuous: verdicts really flipped, and only where they were uncertain.
    assert seen["eruption"] and seen["eruption"] <= set(np.flatnonzero(bv.eruption_uncertain))
    assert seen["frozen"] <= set(np.flatnonzero(bv.frozen_uncertain))

    # The extremes are reached: the stream at one bound and the baseline at the other.
    first = np.unique(trig.ep, return_index=True)[1]  # each episode's first trigger
    for m in first[resp[first]]:
        e, pos = int(trig.ep[m]), int(table.turn_start[np.flatnonzero(table.turn_is_tool)[m]])
        a, z = int(table.ep_start[e]), int(table.ep_end[e])
        for before, after, want in ((hi, lo, bv.spike_min[m]), (lo, hi, bv.spike_max[m])):
            ent = table.entropy.copy()
            ent[a:pos], ent[pos:z] = before[a:pos], after[pos:z]
            got = analyze_triggers(dataclasses.replace(table, entropy=ent), cfg)
            assert got.stats.spike_ratio[m] == pytest.approx(want, rel=1e-12)


def test_bounds_survive_parquet_and_dropped_tokens(tmp_path: Path) -> None:
    rng = random.Random(1)
    eps = [_random_episode(rng, i) for i in range(6)]
    eps[2].turns[0].entropy[1] = np.nan  # dropped under nan_policy="drop", bounds with it
    eps[4].turns[2].meta = {}  # an exact turn between bounded ones: NaN bounds
    with TraceWriter(tmp_path / "s.parquet", episodes_per_part=4) as w:
        for ep in eps:
            w.write(ep)
    mem = TraceTable.from_episodes(eps, nan_policy="drop")
    parts = list(iter_tables(tmp_path / "s.parquet", nan_policy="drop"))
    for name in ("entropy", "entropy_lower", "entropy_upper"):
        got = np.concatenate([getattr(t, name) for t in parts])
        np.testing.assert_allclose(got, getattr(mem, name), rtol=1e-6, equal_nan=True)
    exact = sum(
        t.n_tokens for ep in eps for t in ep.assistant_turns if BOUNDS_META_KEY not in t.meta
    )
    assert mem.n_dropped == 1 and np.isnan(mem.entropy_lower).sum() == exact
    assert mem.to_arrow("tokens").column("entropy_lower").null_count == exact


def test_malformed_bounds_are_one_line_input_errors(tmp_path: Path) -> None:
    ep = Episode("bad", turns=[
        Turn(role="assistant", entropy=np.array([0.1, 0.2]),
             meta={BOUNDS_META_KEY: {"lower": [0.0], "upper": [0.3, 0.4]}}),
    ])  # fmt: skip
    write_jsonl([ep], tmp_path / "bad.jsonl")
    res = runner.invoke(app, ["analyze", str(tmp_path / "bad.jsonl")])
    assert res.exit_code == 2
    assert res.stderr.count("\n") == 1
    assert "field 'turns[0].meta.entropy_bounds.lower'" in res.stderr
    assert "has 1 values, the turn has 2 tokens" in res.stderr
    ep.turns[0].meta[BOUNDS_META_KEY] = {"lower": [0.2, 0.1], "upper": [0.1, 0.4]}
    write_jsonl([ep], tmp_path / "bad.jsonl")
    res = runner.invoke(app, ["analyze", str(tmp_path / "bad.jsonl")])
    assert res.exit_code == 2 and "lower 0.2 > upper 0.1 at token 0" in res.stderr


# -------------------------------------------------------------------------------- the report


def _figures(page: str) -> dict[str, Any]:
    m = re.search(r'<script type="application/json" id="agentropy-figures">(.*?)</script>', page,
                  re.S)  # fmt: skip
    assert m is not None
    return json.loads(m.group(1))


def test_report_of_a_topk_trace_has_the_note_and_the_band(tmp_path: Path) -> None:
    store = write_topk_store(tmp_path)
    out = tmp_path / "report.html"
    report_from_paths([store], out)
    page = out.read_text()
    assert 'id="entropy-bounds-note"' in page and "top-k estimates" in page
    figs = _figures(page)
    _, calm_lo, calm_hi = topk(CALM)
    _, edge_lo, edge_hi = topk(EDGE)
    labels = [a.get("text", "") for a in figs["fig-timeline-divergent"]["layout"]["annotations"]]
    want = f"may flip: S {edge_lo / calm_hi:.1f}-{edge_hi / calm_lo:.1f}x within the bounds"
    assert any(want in t for t in labels), labels
    for kind in ("productive", "divergent"):  # both examples come from the one episode
        data = figs[f"fig-timeline-{kind}"]["data"]
        upper, lower = data[0], data[1]
        assert lower["name"] == BOUNDS_NAME and lower["fill"] == "tonexty"
        assert len(lower["y"]) == len(upper["y"]) == 68
        assert lower["y"][0] == pytest.approx(calm_lo, abs=1e-4)
        assert upper["y"][0] == pytest.approx(calm_hi, abs=1e-4)
        assert all(a <= b for a, b in zip(lower["y"], upper["y"], strict=True))
        assert (
            "grey: top-k entropy bounds" in figs[f"fig-timeline-{kind}"]["layout"]["title"]["text"]
        )


def test_traces_without_bounds_render_as_before() -> None:
    from test_report import small_traces

    traces = small_traces()
    summary = analyze_episodes(traces)
    assert summary["entropy_bounds"] is None
    page = build_report(summary=summary, episodes=traces)
    assert "entropy-bounds-note" not in page and "top-k" not in page
    for fig in _figures(page).values():
        assert all(t.get("name") != BOUNDS_NAME and "fill" not in t for t in fig["data"])
