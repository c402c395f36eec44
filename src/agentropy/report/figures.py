"""Plotly figures of the report, as plain JSON-ready dicts (``{"data": [...], "layout": {...}}``).

The figures are built as dicts rather than ``plotly.graph_objects`` so that they carry no
template blob, no random ids and no version-dependent defaults: the same inputs give the same
JSON, byte for byte (floats rounded to a fixed number of digits). :mod:`agentropy.report.html`
embeds them and calls ``Plotly.newPlot`` on fixed div ids.

What each figure shows (definitions: DESIGN.md, computed by :mod:`agentropy.analysis`):

- :func:`training_figure`: per-step mean model entropy over training, overall and per phase, with
  each cycle's eruption (start -> peak) and subsidence (peak -> end) shaded, curriculum promotions
  as dashed vertical lines, and mean reward on a second axis.
- :func:`timeline_figure`: one episode's per-token model entropy (assistant tokens in order,
  coloured by phase), tool calls as vertical lines (red when the call failed), each eruption's
  trigger annotated with its spike ratio and, when it contracted, the contraction point
  (``tokens_to_contraction`` tokens after the trigger) with the baseline band ``band * B``;
  when the entropies are top-k estimates, a grey band from each token's lower to upper bound.
- :func:`recovery_figure`: recovery rate by spike-ratio bin, episode level and turn level, with
  bootstrap 95 % intervals as error bars.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from agentropy.report.examples import Timeline
from agentropy.trace import FAILED_STATUSES, PHASES

__all__ = [
    "BOUNDS_NAME",
    "FAIL_COLOR",
    "OK_COLOR",
    "PHASE_COLORS",
    "recovery_figure",
    "timeline_figure",
    "training_figure",
]


#: One colour per phase (and ``all``), colour-blind-safe (Okabe-Ito).
PHASE_COLORS: dict[str, str] = {
    "all": "#000000",
    "plan": "#0072B2",
    "act": "#999999",
    "recover": "#E69F00",
    "answer": "#009E73",
    "unknown": "#CC79A7",
}
FAIL_COLOR = "#D55E00"
OK_COLOR = "#56B4E9"
_DIGITS = 4


def _r(x: Any) -> float | None:
    """A rounded JSON float; None for missing or non-finite values."""
    if x is None:
        return None
    v = float(x)
    return round(v, _DIGITS) if np.isfinite(v) else None


def _layout(title: str, **extra: Any) -> dict[str, Any]:
    layout: dict[str, Any] = {
        "title": {"text": title, "x": 0.01, "xanchor": "left"},
        "font": {"family": "system-ui, -apple-system, Segoe UI, sans-serif", "size": 12},
        "margin": {"l": 60, "r": 60, "t": 50, "b": 90},
        "height": 400,
        "paper_bgcolor": "#ffffff",
        "plot_bgcolor": "#ffffff",
        "legend": {"orientation": "h", "x": 0, "y": -0.3, "yanchor": "top"},
        "hovermode": "closest",
    }
    layout.update(extra)
    return layout


def _axis(title: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": {"text": title},
        "gridcolor": "#e5e5e5",
        "zerolinecolor": "#cccccc",
        **extra,
    }


# --------------------------------------------------------------------------------------------
# (a) training
# --------------------------------------------------------------------------------------------


def _promotion_list(promotions: Sequence[Any] | None) -> list[tuple[float, str]]:
    """Normalise promotions: ints (steps) or mappings with ``step`` and optional ``level``."""
    out = []
    for p in promotions or []:
        if isinstance(p, Mapping):
            step = float(p["step"])
            level = p.get("level")
            label = "promoted" if level is None else f"-> L{level}"
        else:
            step, label = float(p), "promoted"
        out.append((step, label))
    return sorted(out)


#: Marker of each monitor alert on the training chart's alert track: (color, symbol).
ALERT_STYLE: dict[str, tuple[str, str]] = {
    "eruption": ("#E69F00", "triangle-up"),
    "subsided:productive": ("#009E73", "triangle-down"),
    "subsided:neutral": ("#999999", "triangle-down"),
    "subsided:degenerate": (FAIL_COLOR, "triangle-down"),
    "divergence": (FAIL_COLOR, "x"),
    "collapse": ("#0072B2", "x"),
    "nonfinite": ("#000000", "diamond"),
}


def _alert_track(alerts: Sequence[Mapping[str, Any]]) -> tuple[list[dict], list[dict]]:
    """Scatter traces of the alert track (axis y3, one row per alert name) and the dotted
    vertical lines that carry divergence / collapse down through the entropy chart."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for a in alerts:
        key = f"subsided:{a.get('kind') or 'neutral'}" if a["name"] == "subsided" else a["name"]
        groups.setdefault(key, []).append(a)
    traces, shapes = [], []
    for key, (color, symbol) in ALERT_STYLE.items():
        rows = groups.get(key)
        if not rows:
            continue
        traces.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": f"alert: {key.replace(':', ' ')}",
                "x": [_r(a["step"]) for a in rows],
                "y": [a["name"] for a in rows],
                "yaxis": "y3",
                "marker": {"color": color, "symbol": symbol, "size": 11},
                "customdata": [[a["metric"], a.get("suggestion", "")] for a in rows],
                "hovertemplate": "step %{x}: " + key + " on %{customdata[0]}<br>"
                "%{customdata[1]}<extra></extra>",
            }
        )
        if key in ("divergence", "collapse"):
            shapes += [
                {
                    "type": "line", "xref": "x", "yref": "paper", "x0": _r(a["step"]),
                    "x1": _r(a["step"]), "y0": 0, "y1": 1,
                    "line": {"color": color, "dash": "dot", "width": 1.2},
                }
                for a in rows
            ]  # fmt: skip
    return traces, shapes


def training_figure(
    training: Mapping[str, Any],
    promotions: Sequence[Any] | None = None,
    alerts: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any] | None:
    """Entropy over training steps (None when no episode carried a step), with the live
    monitor's ``alerts`` (:meth:`agentropy.monitor.Alert.to_dict` dicts) on a track above it."""
    series = training.get("series") or {}
    steps = [_r(s) for s in series.get("step", [])]
    if not steps:
        return None
    data: list[dict[str, Any]] = []
    for col in ("all", *PHASES):
        key = "entropy" if col == "all" else f"entropy_{col}"
        ys = [_r(v) for v in series.get(key, [])]
        if not any(y is not None for y in ys):
            continue
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers" if len(steps) < 40 else "lines",
                "name": "entropy (all)" if col == "all" else f"entropy ({col})",
                "x": steps,
                "y": ys,
                "line": {"color": PHASE_COLORS[col], "width": 2.5 if col == "all" else 1.3},
                "marker": {"size": 4},
                "hovertemplate": "step %{x}<br>%{y:.3f} nats<extra>" + col + "</extra>",
            }
        )
    reward = [_r(v) for v in series.get("reward", [])]
    if any(v is not None for v in reward):
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": "reward (right axis)",
                "x": steps,
                "y": reward,
                "yaxis": "y2",
                "line": {"color": "#666666", "dash": "dot", "width": 1.3},
                "hovertemplate": "step %{x}<br>reward %{y:.3f}<extra></extra>",
            }
        )
    shapes: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i, cyc in enumerate(training.get("cycles") or []):
        start, peak, end = (_r(cyc[k]) for k in ("start_step", "peak_step", "end_step"))
        color = FAIL_COLOR if cyc.get("kind") == "divergent" else "#E69F00"
        for x0, x1, opacity in ((start, peak, 0.28), (peak, end, 0.12)):
            if x0 is None or x1 is None or x1 <= x0:
                continue
            shapes.append(
                {
                    "type": "rect",
                    "xref": "x",
                    "yref": "paper",
                    "x0": x0,
                    "x1": x1,
                    "y0": 0,
                    "y1": 1,
                    "fillcolor": color,
                    "opacity": opacity,
                    "line": {"width": 0},
                    "layer": "below",
                }
            )
        annotations.append(
            {
                "x": peak,
                "y": 1.0,
                "xref": "x",
                "yref": "paper",
                "yanchor": "bottom",
                "showarrow": False,
                "text": f"cycle {i + 1}: {cyc.get('kind', '?')}",
                "font": {"size": 10},
            }
        )
    for step, label in _promotion_list(promotions):
        shapes.append(
            {
                "type": "line",
                "xref": "x",
                "yref": "paper",
                "x0": _r(step),
                "x1": _r(step),
                "y0": 0,
                "y1": 1,
                "line": {"color": "#0072B2", "dash": "dash", "width": 1.5},
            }
        )
        annotations.append(
            {
                "x": _r(step),
                "y": 0.02,
                "xref": "x",
                "yref": "paper",
                "xanchor": "left",
                "showarrow": False,
                "text": label,
                "font": {"size": 10, "color": "#0072B2"},
            }
        )
    track, track_shapes = _alert_track(alerts)
    data += track
    shapes += track_shapes
    extra: dict[str, Any] = {}
    if track:
        names = [n for n in ("eruption", "subsided", "divergence", "collapse", "nonfinite")
                 if any(a["name"] == n for a in alerts)]  # fmt: skip
        extra["yaxis3"] = {
            "domain": [0.8, 1.0],
            "type": "category",
            "categoryorder": "array",
            "categoryarray": names,
            "showgrid": True,
            "title": {"text": "alerts"},
        }
    layout = _layout(
        "Model entropy over training (shaded: eruption, then subsidence; dashed: promotion; "
        "top: monitor alerts)",
        xaxis=_axis("training step"),
        yaxis=_axis(
            "mean model entropy (nats)", rangemode="tozero", domain=[0.0, 0.74] if track else [0, 1]
        ),
        yaxis2={
            "title": {"text": "reward"},
            "overlaying": "y",
            "side": "right",
            "showgrid": False,
            "rangemode": "tozero",
            "tickformat": ".2f",
        },
        shapes=shapes,
        annotations=annotations,
        **extra,
    )
    return {"data": data, "layout": layout}


# --------------------------------------------------------------------------------------------
# (b) episode timelines
# --------------------------------------------------------------------------------------------


#: Legend name of the band drawn between the lower and upper top-k entropy bounds.
BOUNDS_NAME = "top-k entropy bounds"


def _bounds_band(episode: Timeline, x: list[int]) -> list[dict[str, Any]]:
    """Two traces filling between the entropy bounds (upper, then lower filled to it); none when
    the episode's entropies are exact."""
    if episode.entropy_lower is None or episode.entropy_upper is None:
        return []
    edge = {"type": "scatter", "mode": "lines", "x": x, "line": {"width": 0, "color": "#999999"},
            "hoverinfo": "skip"}  # fmt: skip
    return [
        {**edge, "name": f"{BOUNDS_NAME} (upper)", "y": [_r(v) for v in episode.entropy_upper],
         "showlegend": False},
        {**edge, "name": BOUNDS_NAME, "y": [_r(v) for v in episode.entropy_lower],
         "fill": "tonexty", "fillcolor": "rgba(120,120,120,0.25)", "showlegend": True},
    ]  # fmt: skip


def _eruption_label(er: Mapping[str, Any], spike_range: Sequence[Any] | None) -> str:
    """``eruption S=3.0x (divergent)``, plus the range within the top-k bounds when the verdict
    may flip there."""
    text = f"eruption S={float(er['spike_ratio']):.1f}x ({er['kind']})"
    if spike_range is None or None in spike_range:
        return text
    lo, hi = spike_range
    return f"{text}, may flip: S {float(lo):.1f}-{float(hi):.1f}x within the bounds"


def timeline_figure(
    episode: Timeline,
    *,
    eruptions: Sequence[Mapping[str, Any]] = (),
    frozen: Sequence[Mapping[str, Any]] = (),
    loops: Sequence[Mapping[str, Any]] = (),
    band: float = 1.25,
    title: str = "",
    highlight: int | None = None,
    uncertain: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Per-token entropy of one episode with tool calls, failures, eruptions and contractions.

    ``eruptions`` / ``frozen`` / ``loops`` are the analyzer's records of this episode;
    ``highlight`` is the ``turn_index`` of the event the example is about (its contraction and
    band are drawn; other eruptions get a short label). None: every eruption in full.
    ``uncertain``: the summary's ``entropy_bounds.uncertain_triggers`` of this episode; a full
    eruption label then gives the spike-ratio range within the bounds and says it may flip.
    """
    ranges = {int(u["turn_index"]): u["spike_ratio"] for u in uncertain}
    flat, starts, phase = episode.entropy, episode.turn_start, episode.phase
    x = list(range(int(flat.shape[0])))
    data: list[dict[str, Any]] = _bounds_band(episode, x)
    data += [
        {
            "type": "scatter",
            "mode": "lines",
            "name": "model entropy",
            "x": x,
            "y": [_r(v) for v in flat],
            "line": {"color": "#444444", "width": 1},
            "hoverinfo": "skip",
            "showlegend": False,
        }
    ]
    names = ["unknown", *PHASES]
    for code, name in enumerate(names, start=-1):
        sel = np.flatnonzero(phase == code)
        if sel.size == 0:
            continue
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": name,
                "x": [int(i) for i in sel],
                "y": [_r(flat[i]) for i in sel],
                "marker": {"color": PHASE_COLORS[name], "size": 4},
                "hovertemplate": "token %{x}<br>%{y:.3f} nats<extra>" + name + "</extra>",
            }
        )
    shapes: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i, tool, status in episode.tools:
        failed = status in FAILED_STATUSES
        xpos = starts[i] - 0.5
        shapes.append(
            {
                "type": "line",
                "xref": "x",
                "yref": "paper",
                "x0": xpos,
                "x1": xpos,
                "y0": 0,
                "y1": 1,
                "line": {
                    "color": FAIL_COLOR if failed else OK_COLOR,
                    "width": 2 if failed else 1,
                    "dash": "solid" if failed else "dot",
                },
            }
        )
        annotations.append(
            {
                "x": xpos,
                "y": 1.0,
                "xref": "x",
                "yref": "paper",
                "yanchor": "bottom",
                "textangle": -30,
                "showarrow": False,
                "text": f"{'(unparsed call)' if tool is None else tool}: {status or '?'}",
                "font": {"size": 9, "color": FAIL_COLOR if failed else "#333333"},
            }
        )
    top = float(flat.max()) if flat.size else 1.0
    for er in eruptions:
        start = starts[int(er["turn_index"])]
        if start >= flat.shape[0]:
            continue
        main = highlight is None or int(er["turn_index"]) == highlight
        spike = float(er["spike_ratio"])
        # The example's own eruption gets the full story; others a short label, so that
        # episodes with many triggers stay readable.
        annotations.append(
            {
                "x": start,
                "y": _r(flat[start]),
                "ax": 30 if main else 0,
                "ay": -40 if main else -18,
                "text": _eruption_label(er, ranges.get(int(er["turn_index"])))
                if main
                else f"S={spike:.1f}x",
                "arrowcolor": FAIL_COLOR,
                "arrowwidth": 1.5 if main else 0.8,
                "font": {"size": 10 if main else 8, "color": FAIL_COLOR},
            }
        )
        baseline = er.get("baseline")
        end = start + 128
        n_c = er.get("tokens_to_contraction")
        if er.get("contracted") and n_c is not None:
            cpos = min(start + int(n_c) - 1, int(flat.shape[0]) - 1)
            end = cpos
            if main:
                annotations.append(
                    {
                        "x": cpos,
                        "y": _r(flat[cpos]),
                        "ax": 20,
                        "ay": 35,
                        "text": f"contracted after {int(n_c)} tokens",
                        "arrowcolor": "#009E73",
                        "font": {"size": 10, "color": "#009E73"},
                    }
                )
        if baseline is not None and main:
            shapes.append(
                {
                    "type": "line",
                    "xref": "x",
                    "yref": "y",
                    "x0": start - 0.5,
                    "x1": min(end, int(flat.shape[0]) - 1),
                    "y0": _r(band * float(baseline)),
                    "y1": _r(band * float(baseline)),
                    "line": {"color": "#009E73", "dash": "dash", "width": 1.5},
                }
            )
    for fr in frozen:
        start = starts[int(fr["turn_index"])]
        if start >= flat.shape[0]:
            continue
        annotations.append(
            {
                "x": start,
                "y": _r(flat[start]),
                "ax": 30,
                "ay": -40,
                "text": f"frozen S={float(fr['spike_ratio']):.2f}x, same call repeated",
                "arrowcolor": "#0072B2",
                "font": {"size": 10, "color": "#0072B2"},
            }
        )
    for lp in loops:
        start = starts[int(lp["turn_index"])]
        annotations.append(
            {
                "x": min(start, max(int(flat.shape[0]) - 1, 0)),
                "y": _r(top),
                "showarrow": False,
                "yanchor": "bottom",
                "text": f"loop ({lp['type']})",
                "font": {"size": 10, "color": "#CC79A7"},
            }
        )
    outcome = {True: "succeeded", False: "failed", None: "outcome unknown"}[episode.success]
    head = f"{title}: " if title else ""
    grey = "; grey: top-k entropy bounds" if episode.entropy_lower is not None else ""
    layout = _layout(
        f"{head}episode {episode.episode_id} ({outcome}; dashed green: contraction band{grey})",
        xaxis=_axis("assistant token (in order, across turns)"),
        yaxis=_axis("model entropy (nats)", rangemode="tozero"),
        shapes=shapes,
        annotations=annotations,
        height=360,
    )
    layout["margin"] = {"l": 60, "r": 30, "t": 80, "b": 90}
    return {"data": data, "layout": layout}


# --------------------------------------------------------------------------------------------
# (c) recovery by spike bin
# --------------------------------------------------------------------------------------------


def recovery_figure(recovery: Mapping[str, Any]) -> dict[str, Any] | None:
    """Recovery rate per spike bin with 95 % CI error bars (None when no bin has a unit)."""
    data = []
    for label, block, color in (
        ("episode level", recovery, "#0072B2"),
        ("turn level", recovery.get("turn_level") or {}, "#E69F00"),
    ):
        bins = block.get("by_spike_bin") or {}
        xs, ys, plus, minus, texts = [], [], [], [], []
        for name, entry in bins.items():
            if not entry.get("n"):
                continue
            rate = float(entry["rate"])
            ci = entry.get("ci") or [rate, rate]
            lo = rate if ci[0] is None else float(ci[0])
            hi = rate if ci[1] is None else float(ci[1])
            xs.append(name)
            ys.append(_r(rate))
            plus.append(_r(max(hi - rate, 0.0)))
            minus.append(_r(max(rate - lo, 0.0)))
            texts.append(f"n={entry['n']}")
        if not xs:
            continue
        data.append(
            {
                "type": "bar",
                "name": label,
                "x": xs,
                "y": ys,
                "text": texts,
                "textposition": "outside",
                "cliponaxis": False,
                "marker": {"color": color},
                "error_y": {
                    "type": "data",
                    "symmetric": False,
                    "array": plus,
                    "arrayminus": minus,
                    "color": "#333333",
                },
                "hovertemplate": "spike %{x}<br>recovery %{y:.1%}<br>%{text}<extra>"
                + label
                + "</extra>",
            }
        )
    if not data:
        return None
    order = ["<1.5", "1.5-2", "2-3", "3-4", ">=4"]
    layout = _layout(
        "Recovery after a failed tool call, by spike ratio of the failure (95% bootstrap CI)",
        xaxis=_axis(
            "spike ratio S of the (first) failed trigger",
            type="category",
            categoryorder="array",
            categoryarray=order,
        ),
        yaxis=_axis("recovery rate", range=[0, 1.05], tickformat=".0%"),
        barmode="group",
    )
    return {"data": data, "layout": layout}
