"""The monitor in the HTML report: replayed alerts on a track above the training chart."""

from __future__ import annotations

import json
import re

from agentropy.monitor import replay
from agentropy.monitor.synthetic import planted_series
from agentropy.report import figures as F
from agentropy.report.html import build_report


def _series(pattern: str, seed: int = 0) -> tuple[dict, int]:
    rows, onset = planted_series(pattern, seed=seed)
    keys = sorted({k for r in rows for k in r})
    series = {k: [r.get(k) for r in rows] for k in keys}
    series["step"] = list(range(1, len(rows) + 1))
    return series, onset


def test_replay_equals_the_streaming_tracker() -> None:
    from agentropy.monitor import Tracker

    series, onset = _series("divergence")
    alerts = replay(series)
    tracker = Tracker()
    for i, step in enumerate(series["step"]):
        tracker.step(step, {k: v[i] for k, v in series.items() if k != "step"})
    assert [a.to_dict() for a in alerts] == [a.to_dict() for a in tracker.alerts]
    assert [a.name for a in alerts][:2] == ["eruption", "divergence"]
    assert alerts[0].evidence["onset_step"] == onset


def test_training_figure_has_an_alert_track() -> None:
    series, _ = _series("divergence")
    alerts = [a.to_dict() for a in replay(series)]
    fig = F.training_figure({"series": series}, None, alerts)
    assert fig is not None
    track = [t for t in fig["data"] if t.get("yaxis") == "y3"]
    assert {t["name"] for t in track} == {"alert: eruption", "alert: divergence"}
    assert fig["layout"]["yaxis3"]["categoryarray"] == ["eruption", "divergence"]
    div_step = next(a["step"] for a in alerts if a["name"] == "divergence")
    dotted = [s for s in fig["layout"]["shapes"] if s["line"].get("dash") == "dot"]
    assert [s["x0"] for s in dotted] == [float(div_step)]
    # No alerts: no track, the chart keeps its full height.
    plain = F.training_figure({"series": series}, None, [])
    assert "yaxis3" not in plain["layout"] and not any(
        t.get("yaxis") == "y3" for t in plain["data"]
    )


def test_report_lists_replayed_or_given_alerts() -> None:
    series, _ = _series("collapse")
    summary = {"training": {"series": series, "steps": len(series["step"]), "cycles": []}}
    page = build_report(summary=summary)
    assert "Monitor alerts" in page and "collapse" in page
    figs = json.loads(re.search(r'id="agentropy-figures">(.*?)</script>', page, re.S).group(1))
    assert any(t.get("yaxis") == "y3" for t in figs["fig-training"]["data"])
    given = [{"name": "nonfinite", "step": 3, "metric": "reward", "kind": None,
              "evidence": {}, "suggestion": "check the reward function"}]  # fmt: skip
    page = build_report(summary=summary, alerts=given)
    assert "check the reward function" in page and "Monitor alerts" in page
    assert build_report(summary=summary, alerts=[]).count("Monitor: no alert") == 1
