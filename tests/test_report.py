"""HTML report: golden structure on small hand-built traces, determinism, no URLs, empty sections,
and the ``agentropy report`` CLI (good JSONL -> exit 0, bad input -> exit 2 one line)."""

from __future__ import annotations

import json
import re
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from agentropy.analysis.summary import analyze_episodes
from agentropy.cli import app
from agentropy.report.html import FIGURE_IDS, SECTION_IDS, build_report, write_report
from agentropy.trace import PHASE_CODE, Episode, ToolCall, Turn, write_jsonl

runner = CliRunner()


def _asst(values: list[float], phase: str = "plan") -> Turn:
    ent = np.asarray(values, np.float32)
    return Turn(
        role="assistant",
        entropy=ent,
        token_ids=np.arange(ent.shape[0], dtype=np.int64) % 97,
        phase=np.full(ent.shape[0], PHASE_CODE[phase], np.int8),
    )


def _tool(name: str, status: str, arg: int = 0) -> Turn:
    return Turn(role="tool", call=ToolCall(name, {"q": arg}), status=status, content="x")


def productive(eid: str, level: float = 0.2, **kw: object) -> Episode:
    """Error, a 5x spike that contracts within 16 tokens, then an ok call and a correct answer."""
    turns = [
        _asst([level] * 20),
        _tool("lookup", "error", 1),
        _asst([5 * level] * 16 + [level] * 16, "recover"),
        _tool("backup_lookup", "ok", 1),
        _asst([level] * 6, "answer"),
    ]
    return Episode(eid, turns=turns, success=True, **kw)  # type: ignore[arg-type]


def divergent(eid: str, level: float = 0.2, **kw: object) -> Episode:
    """Error, then entropy stays 5x above baseline: never contracts; the episode fails."""
    turns = [
        _asst([level] * 20),
        _tool("lookup", "error", 2),
        _asst([5 * level] * 40, "recover"),
        _tool("lookup", "error", 3),
        _asst([5 * level] * 10, "answer"),
    ]
    return Episode(eid, turns=turns, success=False, **kw)  # type: ignore[arg-type]


def frozen(eid: str, level: float = 0.3, **kw: object) -> Episode:
    """Error, no spike, the same call again: a frozen response; the episode fails."""
    turns = [
        _asst([level] * 20),
        _tool("lookup", "error", 4),
        _asst([level] * 12, "recover"),
        _tool("lookup", "error", 4),
        _asst([level] * 6, "answer"),
    ]
    return Episode(eid, turns=turns, success=False, **kw)  # type: ignore[arg-type]


def small_traces(n_steps: int = 24) -> list[Episode]:
    """Three episodes per training step (one of each kind), two policies on shared tasks, and an
    entropy level that descends, erupts at step 10 and subsides."""
    out = []
    for s in range(n_steps):
        if s < 10:
            lvl = 0.3 - 0.01 * s
        elif s < 13:
            lvl = 0.9
        else:
            lvl = max(0.22, 0.9 - 0.15 * (s - 12))
        for k, make in enumerate((productive, divergent, frozen)):
            policy = "phase" if s % 2 else "greedy"
            out.append(
                make(
                    f"s{s:02d}-{make.__name__}",
                    lvl,
                    step=s,
                    policy=policy,
                    task_id=f"t{(s // 2) * 3 + k}",
                    latency_s=1.0 + 0.1 * ((s * 7 + k * 3) % 5) * (2 if policy == "phase" else 1),
                    reward=1.0 if make is productive else 0.0,
                )
            )
    return out


EVAL_ROWS = [
    {
        "level": lv,
        "policy": p,
        "episodes": 40,
        "success": succ,
        "success_ci": [max(succ - 0.1, 0), min(succ + 0.1, 1)],
        "failure_episodes": 10,
        "recovery": 0.5,
        "recovery_ci": [0.2, 0.8],
        "spike_mean": 2.0,
        "eruptions_productive": 3,
        "eruptions_neutral": 1,
        "eruptions_divergent": 2,
        "frozen": 1,
        "loops": 0,
        "tokens_per_episode": 50.0 + 10 * lv,
        "overhead": 1.0 if p == "greedy" else 1.3,
        "latency_p50": 1.0,
        "latency_p95": 2.0,
        "latency_cv": 0.3,
    }
    for lv, base in ((0, 0.9), (1, 0.8), (2, 0.6), (3, 0.3))
    for p, succ in (("greedy", base), ("constant:1.0", base - 0.05), ("phase", base + 0.05))
]


@pytest.fixture(scope="module")
def traces() -> list[Episode]:
    return small_traces()


@pytest.fixture(scope="module")
def summary(traces: list[Episode]) -> dict:
    return analyze_episodes(traces)


@pytest.fixture(scope="module")
def page(summary: dict, traces: list[Episode]) -> str:
    return build_report(
        summary=summary,
        episodes=traces,
        eval_rows=EVAL_ROWS,
        metadata={"seed": 7, "config": {"steps": 24, "policy": "phase"}},
        promotions=[{"step": 6, "level": 1}, 18],
    )


def _chart_divs(text: str) -> list[str]:
    return re.findall(r'<div class="chart" id="([^"]+)"></div>', text)


def test_sections_and_charts(page: str, summary: dict) -> None:
    for sid in SECTION_IDS:
        assert f'<section id="{sid}">' in page
    # The traces have a training series, all three example kinds and recovery data: every chart.
    assert summary["training"]["steps"] == 24
    assert _chart_divs(page) == list(FIGURE_IDS)
    figs = json.loads(
        re.search(r'id="agentropy-figures">(.*?)</script>', page, re.S).group(1)  # type: ignore[union-attr]
    )
    assert sorted(figs) == sorted(FIGURE_IDS)
    # plotly.js inlined exactly once, one newPlot loop.
    assert page.count("<script>") == 2
    assert page.count('<script type="application/json"') == 1


def test_training_figure_marks_cycles_and_promotions(page: str, summary: dict) -> None:
    figs = json.loads(re.search(r'id="agentropy-figures">(.*?)</script>', page, re.S).group(1))  # type: ignore[union-attr]
    layout = figs["fig-training"]["layout"]
    n_cycles = len(summary["training"]["cycles"])
    assert n_cycles >= 1
    rects = [s for s in layout["shapes"] if s["type"] == "rect"]
    lines = [s for s in layout["shapes"] if s["type"] == "line"]
    assert len(rects) >= n_cycles
    assert sorted(s["x0"] for s in lines) == [6.0, 18.0]
    texts = [a["text"] for a in layout["annotations"]]
    assert "-> L1" in texts and "promoted" in texts
    names = [t["name"] for t in figs["fig-training"]["data"]]
    assert "entropy (recover)" in names and "entropy (all)" in names


def test_timelines_annotate_events(page: str) -> None:
    figs = json.loads(re.search(r'id="agentropy-figures">(.*?)</script>', page, re.S).group(1))  # type: ignore[union-attr]
    prod = " ".join(a["text"] for a in figs["fig-timeline-productive"]["layout"]["annotations"])
    assert "eruption S=5.0x (productive)" in prod and "contracted after" in prod
    div = " ".join(a["text"] for a in figs["fig-timeline-divergent"]["layout"]["annotations"])
    assert "(divergent)" in div and "contracted" not in div
    fro = " ".join(a["text"] for a in figs["fig-timeline-frozen"]["layout"]["annotations"])
    assert "frozen S=1.00x" in fro and "lookup: error" in fro


def test_no_urls_and_claims_present(page: str) -> None:
    assert "http://" not in page and "https://" not in page and "://" not in page
    assert 'id="claims-table"' in page
    body = page[page.index('<section id="claims">') : page.index('<section id="metadata">')]
    assert body.count("<tr>") == 1 + 7  # header + seven claims
    for word in ("supported", "inconclusive"):
        assert word in body
    meta = page[page.index('<section id="metadata">') :]
    for pkg in ("agentropy", "torch", "transformers", "python"):
        assert f'<td class="l">{pkg}</td>' in meta
    assert "&quot;policy&quot;: &quot;phase&quot;" in meta


def test_deterministic(summary: dict, traces: list[Episode], page: str, tmp_path: Path) -> None:
    again = build_report(
        summary=json.loads(json.dumps(summary)),
        episodes=list(reversed(traces)),
        eval_rows=EVAL_ROWS,
        metadata={"config": {"policy": "phase", "steps": 24}, "seed": 7},
        promotions=[{"step": 6, "level": 1}, 18],
    )
    assert again == page
    out = write_report(tmp_path / "sub" / "r.html", summary=summary, episodes=traces)
    assert (
        out.read_bytes()
        == write_report(tmp_path / "r2.html", summary=summary, episodes=traces).read_bytes()
    )


def test_empty_sections_say_so() -> None:
    eps = [productive("a"), productive("b")]  # no step, no divergent/frozen, no eval rows
    page = build_report(summary=analyze_episodes(eps), episodes=eps)
    assert _chart_divs(page) == ["fig-timeline-productive", "fig-recovery"]
    assert "No training data" in page
    assert "No divergent example" in page and "No frozen example" in page
    assert "No evaluation rows given" in page
    empty = build_report(summary=analyze_episodes([]), episodes=[])
    assert _chart_divs(empty) == []
    assert "No episodes in the input." in empty and "no recovery data" in empty


def test_user_text_is_escaped() -> None:
    ep = productive("<b>x</b>://evil")
    page = build_report(summary=analyze_episodes([ep]), episodes=[ep], metadata={"note": "<i>"})
    assert "<b>x</b>" not in page and "<i>" not in page and "://" not in page


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def test_cli_report_jsonl(tmp_path: Path) -> None:
    src = tmp_path / "t.jsonl"
    write_jsonl(small_traces(8), src)
    ev = tmp_path / "eval.json"
    ev.write_text(json.dumps({"config": {}, "rows": EVAL_ROWS}))
    out = tmp_path / "report.html"
    res = runner.invoke(app, ["report", str(src), "--out", str(out), "--eval", str(ev)])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert "<h1>agentropy report</h1>" in text and "fig-timeline-productive" in text
    assert "Sampling policies on the same held-out tasks" in text
    assert str(out) in res.output


def test_cli_report_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"episode_id": "e1", "turns": [{"role": "assistant", "entropy": "x"}]}\n')
    res = runner.invoke(app, ["report", str(bad), "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "bad.jsonl" in lines[0]
    assert not (tmp_path / "r.html").exists()

    good = tmp_path / "good.jsonl"
    write_jsonl([productive("a")], good)
    badeval = tmp_path / "eval.json"
    badeval.write_text('{"rows": [{"level": 0}]}')
    res = runner.invoke(
        app, ["report", str(good), "--out", str(tmp_path / "r.html"), "--eval", str(badeval)]
    )
    assert res.exit_code == 2
    assert res.output.count("\n") == 1 and "eval.json" in res.output and "policy" in res.output


def test_streamed_report_equals_in_memory(tmp_path: Path) -> None:
    """report_from_paths over a Parquet store + JSONL gives the same page as build_report on the
    episodes in memory (same summary, same evidence, same examples)."""
    from agentropy.report.html import report_from_paths
    from agentropy.trace import write_parquet

    eps = small_traces(10)
    write_parquet(eps[:12], tmp_path / "a.parquet")
    write_jsonl(eps[12:], tmp_path / "b.jsonl")
    meta = {"seed": 0}
    report_from_paths(
        [tmp_path / "a.parquet", tmp_path / "b.jsonl"],
        tmp_path / "streamed.html",
        eval_rows=EVAL_ROWS,
        metadata=meta,
    )
    direct = build_report(
        summary=analyze_episodes(eps), episodes=eps, eval_rows=EVAL_ROWS, metadata=meta
    )
    assert (tmp_path / "streamed.html").read_text() == direct


def test_report_reads_each_trace_file_once(tmp_path: Path, monkeypatch) -> None:
    """One analysis pass: report_from_paths opens every store and JSONL file exactly once (the
    summary, the claims and the timeline examples all come from that read)."""
    import agentropy.trace as trace_mod
    from agentropy.report.html import report_from_paths
    from agentropy.trace import write_parquet

    eps = small_traces(10)
    write_parquet(eps[:12], tmp_path / "a.parquet")
    write_jsonl(eps[12:], tmp_path / "b.jsonl")
    opened: list[str] = []
    for name in (
        "iter_parts",
        "iter_part_tables",
        "iter_episodes_counted",
        "iter_episodes",
        "read_traces",
    ):
        real = getattr(trace_mod, name)

        def counting(path, *args, _real=real, **kw):  # type: ignore[no-untyped-def]
            opened.append(Path(path).name)
            return _real(path, *args, **kw)

        monkeypatch.setattr(trace_mod, name, counting)
    result = report_from_paths(
        [tmp_path / "a.parquet", tmp_path / "b.jsonl"], tmp_path / "r.html", eval_rows=EVAL_ROWS
    )
    assert sorted(opened) == ["a.parquet", "b.jsonl"]
    # Every kind of example was found in the stream, and the result carries the page's claims.
    page = (tmp_path / "r.html").read_text()
    assert all(f'id="fig-timeline-{k}"' in page for k in ("productive", "divergent", "frozen"))
    assert len(result.claims) == 7 and result.claims[0].key == "spike_after_failure"
    assert result.summary["episodes"] == len(eps) == len(result.evidence.episode_id)


@pytest.mark.parametrize("cuts", [(), (1,), (5, 11, 12), tuple(range(1, 30))])
def test_streamed_examples_equal_whole_choice(traces: list[Episode], cuts: tuple) -> None:
    """ExamplePicker over any split into parts picks what choose_examples picks over the whole
    summary, and its timelines equal the ones built from the episodes themselves."""
    from agentropy.analysis.summary import Analyzer
    from agentropy.report.examples import ExamplePicker, Timeline, choose_examples
    from agentropy.trace import TraceTable

    analyzer = Analyzer()
    picker = ExamplePicker()
    bounds = [0, *cuts, len(traces)]
    for lo, hi in pairwise(bounds):
        table = TraceTable.from_episodes(traces[lo:hi])
        picker.add(table, analyzer.add_table(table))
    whole = choose_examples(analyzer.summary(), None, {e.episode_id: e.success for e in traces})
    streamed = picker.examples
    assert set(streamed) == set(whole) == {"productive", "divergent", "frozen"}
    by_id = {e.episode_id: e for e in traces}
    for kind, rec in whole.items():
        got, timeline = streamed[kind]
        assert got == rec
        ref = Timeline.from_episode(by_id[rec["episode_id"]])
        np.testing.assert_array_equal(timeline.entropy, ref.entropy)
        np.testing.assert_array_equal(timeline.phase, ref.phase)
        assert (timeline.turn_start, timeline.tools) == (ref.turn_start, ref.tools)
        assert timeline.success == by_id[rec["episode_id"]].success
        assert len(timeline.turn_start) == len(by_id[rec["episode_id"]].turns)
