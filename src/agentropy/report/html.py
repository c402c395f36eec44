"""One self-contained, deterministic HTML report of an analysis (``agentropy report``).

:func:`build_report` turns the analyzer's JSON summary (:mod:`agentropy.analysis.summary`), the
episodes the examples are drawn from, optional eval rows (:data:`agentropy.pipelines.compare.COLUMNS`) and
optional run metadata into one HTML page:

- ``overview``: counts (episodes, tokens, triggers, failures, eruptions by kind, frozen, loops)
  and, when entropies are top-k estimates, how wide their bounds are and which verdicts they
  could flip (:func:`agentropy.analysis.bounds.bounds_note`);
- ``training`` (a): entropy over training steps per phase, cycles shaded, promotions marked,
  and the live monitor's alerts (:mod:`agentropy.monitor`) on a track above, listed below;
- ``timelines`` (b): per-token entropy of a productive, a divergent and a frozen example (with
  a band between the entropy bounds when they are top-k estimates);
- ``recovery`` (c): recovery rate by spike-ratio bin with bootstrap confidence intervals;
- ``policies`` (d): the sampling-policy comparison (eval rows) and the analyzer's per-policy
  token overhead, recover-phase share and latency spread;
- ``claims`` (e): the pre-registered claims of the recovery intervention, each with its null,
  direction, minimum effect, measurement, CI, verdict, reason and the config file that
  reproduces it (:mod:`agentropy.report.intervention_claims`, when given), then the essay's
  claims tested on the traces at hand, with a rule-based verdict
  (:mod:`agentropy.report.claims`);
- ``metadata`` (f): versions (agentropy, torch, transformers, python, plotly), seeds and the
  configuration passed in.

Self-contained and offline: plotly's JavaScript is inlined exactly once and figures are JSON
passed to ``Plotly.newPlot`` on fixed div ids; the page references no external resource and the
text ``://`` never appears literally (inside the inlined JavaScript and the figure JSON it is
written ``:\\/\\/``, the same string to a JavaScript or JSON parser; in HTML text ``:&#47;&#47;``),
so no URL can be fetched or followed. Deterministic: no timestamp unless one is passed in
``metadata``, fixed ids, sorted keys, rounded floats and seeded bootstrap intervals, so the same
inputs give a byte-identical file. A section without data says so in one line.
"""

from __future__ import annotations

import html
import json
import platform
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from agentropy.analysis.bounds import bounds_note
from agentropy.analysis.recovery import REFERENCE_POLICY
from agentropy.analysis.summary import AnalyzeConfig, Analyzer, Evidence, floor_note, iter_tables
from agentropy.report import figures as F
from agentropy.report.claim_rule import Judgement
from agentropy.report.claims import (
    ClaimRow,
    ClaimsConfig,
    claims_table,
    format_ci,
    format_value,
)
from agentropy.report.examples import EXAMPLE_KINDS, ExamplePicker, Timeline, choose_examples
from agentropy.trace import Episode

__all__ = [
    "FIGURE_IDS",
    "SECTION_IDS",
    "StreamedReport",
    "build_report",
    "environment_versions",
    "report_from_paths",
    "write_report",
]


#: Section ids, in page order.
SECTION_IDS: tuple[str, ...] = (
    "overview",
    "training",
    "timelines",
    "recovery",
    "policies",
    "claims",
    "metadata",
)
#: Div id of each chart that can appear (a chart without data is replaced by one line of text).
FIGURE_IDS: tuple[str, ...] = (
    "fig-training",
    "fig-timeline-productive",
    "fig-timeline-divergent",
    "fig-timeline-frozen",
    "fig-recovery",
)
_EXAMPLE_TITLES = {
    "productive": "Productive eruption (contracts, then the next call succeeds)",
    "divergent": "Divergent eruption (never contracts)",
    "frozen": "Frozen response (no spike after a failure; the same call is repeated)",
}

_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0; color: #222;
       background: #fafafa; }
main { max-width: 1100px; margin: 0 auto; padding: 1.5rem 2rem 4rem; background: #fff; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.25rem; border-bottom: 1px solid #ddd; padding-bottom: 0.3rem; margin-top: 2.2rem; }
h3 { font-size: 1.0rem; margin: 1.2rem 0 0.3rem; }
p.sub { color: #666; margin-top: 0; }
p.nodata { color: #888; font-style: italic; }
p.note { color: #555; font-size: 0.9rem; }
nav a { margin-right: 0.9rem; color: #0072B2; text-decoration: none; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.88rem; }
th, td { border: 1px solid #ddd; padding: 0.3rem 0.55rem; text-align: right; vertical-align: top; }
td { white-space: nowrap; }
td.l { white-space: normal; }
th { background: #f2f2f2; }
td.l, th.l { text-align: left; }
td.supported { background: #e3f4ea; color: #11622f; font-weight: 600; }
td.inconclusive { background: #f3f3f3; color: #555; font-weight: 600; }
td.refuted { background: #fbe6e1; color: #8a2b12; font-weight: 600; }
td.not-measured { background: #fff; color: #888; font-style: italic; }
div.wide { overflow-x: auto; }
#claims-v2-table { font-size: 0.8rem; }
#claims-v2-table td.claim { min-width: 15rem; }
#claims-v2-table td.why, #claims-v2-table td.detail { min-width: 8rem; }
td.reason { white-space: normal; min-width: 15rem; }
span.scope { font-weight: 600; }
code { font-size: 0.8rem; }
div.chart { width: 100%; min-height: 340px; }
pre { background: #f6f6f6; padding: 0.6rem; overflow-x: auto; font-size: 0.8rem; }
"""

_BOOT_JS = """
(function () {
  var figs = JSON.parse(document.getElementById('agentropy-figures').textContent);
  Object.keys(figs).sort().forEach(function (id) {
    var f = figs[id];
    Plotly.newPlot(id, f.data, f.layout, {displaylogo: false, responsive: true,
      modeBarButtonsToRemove: ['sendDataToCloud']});
  });
})();
"""


# --------------------------------------------------------------------------------------------
# Escaping
# --------------------------------------------------------------------------------------------


def _esc(text: Any) -> str:
    """HTML-escaped text in which no ``://`` survives literally (so it cannot be a URL)."""
    return html.escape(str(text)).replace("://", ":&#47;&#47;")


def _script_json(obj: Any) -> str:
    """Deterministic JSON safe inside a ``<script>`` element and free of literal ``://``."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return text.replace("</", "<\\/").replace("://", ":\\/\\/")


@lru_cache(maxsize=1)
def _plotly_js() -> str:
    """plotly.js, made safe to inline: no ``</script``, no literal ``://``.

    Replacing ``://`` by ``:\\/\\/`` keeps the code's meaning: an unescaped ``//`` after a colon
    can only occur inside a string, template literal or comment (in a regular-expression literal
    the first ``/`` would end it), and in strings and templates ``\\/`` is ``/``.
    """
    from plotly.offline import get_plotlyjs  # a core dependency, imported late: it is large

    js = get_plotlyjs()
    return js.replace("</script", "<\\/script").replace("://", ":\\/\\/")


# --------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------


def _fmt(x: Any, spec: str = ".3g") -> str:
    if x is None:
        return "-"
    return format(x, spec)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    """A table whose first ``left`` columns are left-aligned; cells are escaped."""
    head = "".join(
        f'<th class="l">{_esc(h)}</th>' if i < left else f"<th>{_esc(h)}</th>"
        for i, h in enumerate(header)
    )
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="l">{_esc(c)}</td>' if i < left else f"<td>{_esc(c)}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _nodata(text: str) -> str:
    return f'<p class="nodata">{_esc(text)}</p>'


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{_esc(title)}</h2>{body}</section>'


def _overview(summary: Mapping[str, Any]) -> str:
    if not summary.get("episodes"):
        return _nodata("No episodes in the input.")
    kinds = summary.get("eruption_kinds") or {}
    rows = [
        ("episodes", summary.get("episodes")),
        ("assistant tokens", summary.get("tokens")),
        ("non-finite tokens dropped", summary.get("dropped_nonfinite")),
        ("triggers (tool turns)", summary.get("triggers")),
        ("tool failures (error / unexpected)", summary.get("tool_failures")),
        ("triggers without a response", summary.get("no_response")),
        ("eruptions (spike ratio >= threshold)", len(summary.get("eruptions") or [])),
        (
            "  productive / neutral / divergent",
            f"{kinds.get('productive', 0)} / {kinds.get('neutral', 0)} / "
            f"{kinds.get('divergent', 0)}",
        ),
        ("frozen responses", len(summary.get("frozen") or [])),
        ("loops", len(summary.get("loops") or [])),
    ]
    extra = ""
    for note, html_id in (
        (bounds_note(summary), "entropy-bounds-note"),
        (floor_note(summary), "floor-note"),
    ):
        if note is not None:
            extra += f'<p class="note" id="{html_id}">{_esc(note)}</p>'
    return _table(("metric", "value"), rows) + extra


def _training_text(training: Mapping[str, Any]) -> str:
    cycles = training.get("cycles") or []
    if not cycles:
        return '<p class="note">No entropy cycle detected.</p>'
    rows = [
        (
            i + 1,
            c["start_step"],
            c["peak_step"],
            c["end_step"],
            _fmt(c.get("amplitude")),
            "yes" if c.get("subsided") else "no",
            _fmt(c.get("reward_before")),
            _fmt(c.get("reward_after")),
            c.get("kind"),
            _fmt(c.get("loop_rate")),
            _fmt(c.get("hallucination_rate")),
        )
        for i, c in enumerate(cycles)
    ]
    return _table(
        (
            "cycle",
            "start",
            "peak",
            "end",
            "amplitude (nats)",
            "subsided",
            "reward before",
            "reward after",
            "kind",
            "loop rate",
            "halluc. rate",
        ),
        rows,
    )


def _alerts_text(alerts: Sequence[Mapping[str, Any]], most: int = 20) -> str:
    """The monitor's alerts under the training chart (the first ``most``)."""
    if not alerts:
        return "<p>Monitor: no alert over these steps.</p>"
    rows = [
        [a["step"], a["name"] + (f" ({a['kind']})" if a.get("kind") else ""), a["metric"],
         a.get("suggestion", "")]
        for a in alerts[:most]
    ]  # fmt: skip
    more = f" (first {most} of {len(alerts)})" if len(alerts) > most else ""
    return f"<p>Monitor alerts{more}:</p>" + _table(
        ["step", "alert", "metric", "suggestion"], rows, left=4
    )


def _recovery_text(recovery: Mapping[str, Any]) -> str:
    rel = recovery.get("relative_3_4_vs_lt_1_5") or {}
    lg = recovery.get("logistic") or {}
    overall = recovery.get("overall") or {}
    oci = overall.get("ci")
    oci_text = "-" if not oci else f"[{_fmt(oci[0], '.1%')}, {_fmt(oci[1], '.1%')}]"
    parts = [
        f"Overall episode-level recovery: {_fmt(overall.get('rate'), '.1%')} "
        f"(n={overall.get('n', 0)}, CI {oci_text}).",
        f"Relative recovery, 3-4x vs &lt;1.5x spikes: {format_value(rel.get('value'), '%')} "
        f"(CI {format_ci(rel.get('ci'), '%')}; n={rel.get('n_a', 0)} vs {rel.get('n_b', 0)}).",
    ]
    if lg.get("slope") is not None:
        parts.append(
            f"Logistic fit P(recover) = sigmoid(a + b S): b = {lg['slope']:.3g} "
            f"(SE {lg['se'][1]:.3g}, n={lg['n']})."
        )
    # The parts are built from numbers and fixed text only (already escaped where needed).
    return f'<p class="note">{" ".join(p.replace("://", ":&#47;&#47;") for p in parts)}</p>'


def _eval_table(rows: Sequence[Mapping[str, Any]]) -> str:
    def pct(x: Any) -> str:
        return "-" if x is None else f"{100 * x:.0f}%"

    def ci(c: Any) -> str:
        if not c or c[0] is None or c[1] is None:
            return ""
        return f" [{100 * c[0]:.0f}, {100 * c[1]:.0f}]"

    out = []
    # By level; policies keep the order they were evaluated in (the reference first).
    ordered = sorted(rows, key=lambda r: r.get("level", 0))
    for r in ordered:
        out.append(
            (
                f"L{r.get('level')}",
                r.get("policy"),
                r.get("episodes"),
                pct(r.get("success")) + ci(r.get("success_ci")),
                f"{pct(r.get('recovery'))} ({r.get('failure_episodes', 0)})",
                _fmt(r.get("spike_mean"), ".2f"),
                f"{r.get('eruptions_productive', 0)}/{r.get('eruptions_neutral', 0)}/"
                f"{r.get('eruptions_divergent', 0)}",
                r.get("frozen", 0),
                r.get("loops", 0),
                _fmt(r.get("tokens_per_episode"), ".1f"),
                "-" if r.get("overhead") is None else f"{r['overhead']:.2f}x",
                f"{_fmt(r.get('latency_p50'), '.2f')} / {_fmt(r.get('latency_p95'), '.2f')}",
                _fmt(r.get("latency_cv"), ".2f"),
            )
        )
    return _table(
        (
            "level",
            "policy",
            "n",
            "success [95% CI]",
            "recovery (failure eps)",
            "spike",
            "erupt p/n/d",
            "frozen",
            "loops",
            "tok/ep",
            "overhead",
            "latency p50 / p95 s",
            "latency CV",
        ),
        out,
        left=2,
    )


def _cost_table(summary: Mapping[str, Any]) -> str:
    costs = summary.get("costs") or {}
    policies = costs.get("policies") or {}
    latency = summary.get("latency") or {}
    rows = []
    for name in sorted(policies):
        c = policies[name]
        lat = latency.get(name) or {}
        rows.append(
            (
                name,
                c.get("episodes"),
                _fmt(c.get("tokens_per_episode"), ".1f"),
                "-" if c.get("overhead") is None else f"{100 * c['overhead']:+.1f}%",
                _fmt(c.get("recover_share"), ".1%"),
                _fmt(lat.get("p50"), ".3g"),
                _fmt(lat.get("p95"), ".3g"),
                _fmt(lat.get("cv"), ".3g"),
            )
        )
    return (
        f"<h3>Token cost and latency spread per policy (analyzer; reference: "
        f"{_esc(costs.get('reference'))})</h3>"
        + _table(
            (
                "policy",
                "episodes",
                "tokens/ep",
                "overhead",
                "recover share",
                "latency p50 s",
                "p95 s",
                "CV",
            ),
            rows,
        )
    )


def _claims_html(claims: Sequence[ClaimRow]) -> str:
    head = ("#", "claim (hypothesis)", "essay", "our measurement", "95% CI", "n", "verdict")
    th = "".join(f'<th class="l">{_esc(h)}</th>' for h in head)
    body = []
    for i, c in enumerate(claims, start=1):
        css = c.verdict.replace(" ", "-")
        note = f'<br><span class="note">{_esc(c.note)}</span>' if c.note else ""
        body.append(
            "<tr>"
            f'<td class="l">{i}</td>'
            f'<td class="l">{_esc(c.claim)}{note}<br><span class="note">rule: {_esc(c.rule)}'
            "</span></td>"
            f'<td class="l">{_esc(c.essay)}</td>'
            f"<td>{_esc(format_value(c.measurement, c.unit))}</td>"
            f"<td>{_esc(format_ci(c.ci, c.unit))}</td>"
            f'<td class="l">{_esc(c.n_detail)}</td>'
            f'<td class="{css}" title="{_esc(c.reason)}">{_esc(c.verdict)}</td>'
            "</tr>"
        )
    intro = (
        '<p class="note">The same rule as above, on the traces at hand: <b>supported</b> if the '
        "95% bootstrap CI lies beyond the claim's minimum effect, <b>refuted</b> if it falls short "
        "of it, <b>inconclusive</b> if it contains it, has no CI or n is below the claim's "
        "minimum; <b>not measured</b> without a value. Observational: these rows compare "
        "episodes, not arms set on the same tasks.</p>"
    )
    return f'{intro}<table id="claims-table"><thead><tr>{th}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _preregistered_html(rows: Sequence[Judgement] | None) -> str:
    """The pre-registered claims: one row per judgement, with everything the rule used."""
    if not rows:
        return _nodata(
            "No pre-registered claims given (run agentropy experiment --config "
            "experiments/recovery_intervention.toml and pass --intervention to the report)."
        )
    head = ("#", "claim (essay) and metric", "null", "direction", "minimum effect", "measured",
            "95% CI", "n", "verdict", "reason", "reproduce")  # fmt: skip
    th = "".join(f'<th class="l">{_esc(h)}</th>' for h in head)
    body = []
    previous = None
    for i, j in enumerate(rows, start=1):
        s, m = j.spec, j.measurement
        scope = f' <span class="scope">[{_esc(j.scope)}]</span>' if j.scope else ""
        detail = f'<br><span class="note">{_esc(m.detail)}</span>' if m.detail else ""
        if s.id == previous:  # another scope of the claim above: say it once
            claim, why = f"as above{scope}", ""
        else:
            claim = f'{_esc(s.statement)}{scope}<br><span class="note">{_esc(s.metric)}</span>'
            why = f'<br><span class="note">{_esc(s.rationale)}</span>'
        previous = s.id
        body.append(
            f'<tr data-claim="{_esc(s.id)}" data-scope="{_esc(j.scope)}">'
            f'<td class="l">{i}</td>'
            f'<td class="l claim">{claim}</td>'
            f'<td title="{_esc(s.null_hypothesis)}">{_esc(format_value(s.null, s.unit))}</td>'
            f'<td class="l">{_esc(s.direction)}</td>'
            f'<td class="l why">{_esc(s.threshold)}{why}</td>'
            f"<td>{_esc(format_value(m.value, s.unit))}</td>"
            f"<td>{_esc(format_ci(m.ci, s.unit))}</td>"
            f'<td class="l detail">{m.n}{detail}</td>'
            f'<td class="{j.verdict.replace(" ", "-")}">{_esc(j.verdict)}</td>'
            f'<td class="l reason">{_esc(j.reason)}</td>'
            f'<td class="l"><code>{_esc(s.experiment)}</code></td>'
            "</tr>"
        )
    intro = (
        '<p class="note">Stated before the data: each claim\'s null, direction and the minimum '
        "effect that counts. <b>supported</b>: the whole 95% CI lies beyond the minimum effect; "
        "<b>refuted</b>: the whole CI falls short of it (a smaller or opposite effect); "
        "<b>inconclusive</b>: the CI contains it, or too few units; <b>not measured</b>: the "
        "experiment has no data for it. The null is the metric's value without an effect (hover "
        "for the hypothesis in words). Reproduce a row with <code>agentropy experiment "
        "--config FILE</code>.</p>"
    )
    table = (
        f'<table id="claims-v2-table"><thead><tr>{th}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )
    return f'{intro}<div class="wide">{table}</div>'  # scrolls sideways on a narrow page


def environment_versions() -> dict[str, str]:
    """Versions of agentropy, torch, transformers, python and plotly (without importing torch)."""
    from importlib.metadata import PackageNotFoundError, version

    from agentropy import __version__

    out = {"agentropy": __version__, "python": platform.python_version()}
    for pkg in ("torch", "transformers", "plotly"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _metadata_html(metadata: Mapping[str, Any], analysis_config: Any) -> str:
    meta = dict(metadata)
    versions = {**environment_versions(), **(meta.pop("versions", None) or {})}
    rows = [(k, versions[k]) for k in sorted(versions)]
    out = "<h3>Versions</h3>" + _table(("package", "version"), rows)
    simple = [(k, v) for k, v in sorted(meta.items()) if not isinstance(v, Mapping | list | tuple)]
    nested = [(k, v) for k, v in sorted(meta.items()) if isinstance(v, Mapping | list | tuple)]
    if simple:
        out += "<h3>Run</h3>" + _table(("key", "value"), [(k, _fmt_meta(v)) for k, v in simple])
    for k, v in nested:
        text = json.dumps(v, sort_keys=True, indent=2, default=str)
        out += f"<h3>{_esc(k)}</h3><pre>{_esc(text)}</pre>"
    if analysis_config is not None:
        text = json.dumps(analysis_config, sort_keys=True, indent=2, default=str)
        out += f"<h3>analysis thresholds</h3><pre>{_esc(text)}</pre>"
    return out


def _fmt_meta(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    return str(v)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def build_report(
    *,
    summary: Mapping[str, Any],
    episodes: Iterable[Episode] = (),
    eval_rows: Sequence[Mapping[str, Any]] | None = None,
    training: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    promotions: Sequence[Any] | None = None,
    evidence: Evidence | None = None,
    examples: Mapping[str, tuple[Mapping[str, Any], Timeline]] | None = None,
    claims: Sequence[ClaimRow] | None = None,
    claims_config: ClaimsConfig = ClaimsConfig(),
    preregistered: Sequence[Judgement] | None = None,
    alerts: Sequence[Mapping[str, Any]] | None = None,
    title: str = "agentropy report",
) -> str:
    """The report as one HTML string (module docstring lists the sections).

    - ``summary``: the analyzer's JSON summary of the traces.
    - ``episodes``: episodes the timeline examples are drawn from (the analyzer's records point
      into them; examples whose episode is missing are skipped) and, unless ``evidence`` is given,
      the per-episode evidence of the claims table.
    - ``eval_rows``: rows of ``agentropy eval`` (:data:`agentropy.pipelines.compare.COLUMNS`), optional.
    - ``training``: a training section in the analyzer's format, replacing ``summary["training"]``
      (e.g. the analysis of a trainer's traces while ``summary`` covers evaluation traces).
    - ``metadata``: run metadata (seeds, configuration, ...); a ``versions`` mapping overrides
      the detected versions.
    - ``promotions``: curriculum promotion steps (ints, or mappings with ``step`` and ``level``).
    - ``evidence``: precomputed :class:`~agentropy.analysis.summary.Evidence` (the analyzer's
      records, e.g. from the same streamed pass over files too large to hold as episodes).
    - ``examples``: precomputed timeline examples ``{kind: (record, timeline)}``
      (:class:`~agentropy.report.examples.ExamplePicker`); replaces the choice among ``episodes``.
    - ``claims``: the precomputed claims table (replaces computing it from ``evidence`` with
      ``claims_config``).
    - ``preregistered``: judgements of the pre-registered claims
      (:func:`agentropy.report.intervention_claims.intervention_claims`), shown first in the
      claims section.
    - ``alerts``: the live monitor's alerts (:meth:`agentropy.monitor.Alert.to_dict`, e.g. a
      trainer's ``summary.json["alerts"]``), drawn on a track above the training chart; None =
      replay the monitor (:func:`agentropy.monitor.replay`, default thresholds) over the
      training series.
    """
    eps = list(episodes)
    if claims is None:
        if evidence is None:
            breath = (summary.get("config") or {}).get("breath")
            evidence = Evidence.from_episodes(eps, _breath_config(breath))
        claims = claims_table(summary, evidence, eval_rows, claims_config)
    if examples is None:
        by_id = {e.episode_id: e for e in eps}
        chosen = choose_examples(summary, set(by_id), {e.episode_id: e.success for e in eps})
        examples = {
            kind: (rec, Timeline.from_episode(by_id[rec["episode_id"]]))
            for kind, rec in chosen.items()
        }
    train = training if training is not None else (summary.get("training") or {})
    band = float(((summary.get("config") or {}).get("breath") or {}).get("band", 1.25))

    figs: dict[str, dict[str, Any]] = {}
    sections: list[str] = []
    sections.append(_section("overview", "Overview", _overview(summary)))

    if alerts is None:
        from agentropy.monitor import replay

        series = train.get("series") or {}
        alerts = [a.to_dict() for a in replay(series)] if series.get("step") else []
    fig = F.training_figure(train, promotions, alerts)
    if fig is None:
        body = _nodata("No training data: no episode carries a training step.")
    else:
        figs["fig-training"] = fig
        body = (
            '<div class="chart" id="fig-training"></div>'
            + _training_text(train)
            + _alerts_text(alerts)
        )
    sections.append(_section("training", "(a) Entropy over training", body))

    parts = []
    uncertain = (summary.get("entropy_bounds") or {}).get("uncertain_triggers") or []
    if summary.get("entropy_bounds"):
        parts.append(
            '<p class="note">Entropies are top-k estimates: the grey band on a chart spans each '
            "token's lower to upper bound (overview: how wide, and which verdicts could flip).</p>"
        )
    for kind in EXAMPLE_KINDS:
        parts.append(f"<h3>{_esc(_EXAMPLE_TITLES[kind])}</h3>")
        if kind not in examples:
            parts.append(_nodata(f"No {kind} example in these traces."))
            continue
        rec, timeline = examples[kind]
        eid = rec["episode_id"]
        fid = f"fig-timeline-{kind}"
        figs[fid] = F.timeline_figure(
            timeline,
            eruptions=[e for e in summary.get("eruptions") or [] if e["episode_id"] == eid],
            frozen=[f for f in summary.get("frozen") or [] if f["episode_id"] == eid],
            loops=[lp for lp in summary.get("loops") or [] if lp["episode_id"] == eid],
            band=band,
            title=kind,
            highlight=int(rec["turn_index"]),
            uncertain=[u for u in uncertain if u["episode_id"] == eid],
        )
        parts.append(f'<div class="chart" id="{fid}"></div>')
    sections.append(_section("timelines", "(b) Episode timelines", "".join(parts)))

    recovery = summary.get("recovery") or {}
    fig = F.recovery_figure(recovery)
    if fig is None:
        body = _nodata("No failed tool call with a known outcome: no recovery data.")
    else:
        figs["fig-recovery"] = fig
        body = '<div class="chart" id="fig-recovery"></div>' + _recovery_text(recovery)
    sections.append(_section("recovery", "(c) Recovery by spike ratio", body))

    parts = []
    if eval_rows:
        parts.append("<h3>Sampling policies on the same held-out tasks (agentropy eval)</h3>")
        parts.append(_eval_table(eval_rows))
        parts.append(
            '<p class="note">overhead = tokens per episode / the reference policy\'s on the same '
            "tasks; erupt p/n/d = productive / neutral / divergent eruptions; latency CV = std / "
            "mean of episode wall time.</p>"
        )
    else:
        parts.append(_nodata("No evaluation rows given (run agentropy eval and pass --eval)."))
    if (summary.get("costs") or {}).get("policies"):
        parts.append(_cost_table(summary))
    sections.append(_section("policies", "(d) Sampling policies: cost and latency", "".join(parts)))

    claims_body = (
        "<h3>Pre-registered claims (recovery intervention)</h3>"
        + _preregistered_html(preregistered)
        + "<h3>Claims on these traces (observational)</h3>"
        + _claims_html(claims)
    )
    sections.append(_section("claims", "(e) Claims of the essay, tested", claims_body))
    sections.append(
        _section(
            "metadata",
            "(f) Run metadata",
            _metadata_html(metadata or {}, (summary.get("config") or None)),
        )
    )

    nav = "".join(f'<a href="#{sid}">{sid}</a>' for sid in SECTION_IDS)
    sub = (
        f"{summary.get('episodes', 0)} episodes, {summary.get('tokens', 0)} assistant tokens, "
        f"{len(figs)} charts"
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n"
        f"<script>{_plotly_js()}</script>\n"
        "</head>\n<body>\n<main>\n"
        f'<h1>{_esc(title)}</h1>\n<p class="sub">{_esc(sub)}</p>\n<nav>{nav}</nav>\n'
        + "\n".join(sections)
        + "\n</main>\n"
        f'<script type="application/json" id="agentropy-figures">{_script_json(figs)}</script>\n'
        f"<script>{_BOOT_JS}</script>\n"
        "</body>\n</html>\n"
    )


def _breath_config(cfg: Mapping[str, Any] | None) -> Any:
    """The analyzer's breath thresholds from a summary's ``config`` (None: defaults)."""
    from agentropy.analysis.breath import BreathConfig

    return BreathConfig(**cfg) if cfg else BreathConfig()


def write_report(path: str | Path, *, force: bool = True, **kwargs: Any) -> Path:
    """Build the report (:func:`build_report` keyword arguments) and write it to ``path``.

    Written atomically (temporary name, fsync, rename: a failed write leaves any earlier report
    intact); ``force=False`` refuses to replace an existing file
    (:class:`~agentropy.errors.OutputError`).
    """
    from agentropy.outputs import atomic_write_text

    return atomic_write_text(path, build_report(**kwargs), force=force)


@dataclass(frozen=True)
class StreamedReport:
    """What :func:`report_from_paths` computed in its one pass, besides the page it wrote."""

    summary: dict[str, Any]
    """The analyzer's JSON summary."""
    evidence: Evidence
    """The analyzer's per-episode records, as the claims read them."""
    claims: list[ClaimRow]
    """The claims table shown on the page."""


def report_from_paths(
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    eval_rows: Sequence[Mapping[str, Any]] | None = None,
    training: Mapping[str, Any] | None = None,
    promotions: Sequence[Any] | None = None,
    alerts: Sequence[Mapping[str, Any]] | None = None,
    metadata: dict[str, Any] | None = None,
    preregistered: Sequence[Judgement] | None = None,
    nan_policy: str = "raise",
    reference: str | None = None,
    seed: int = 0,
    title: str = "agentropy report",
    force: bool = True,
) -> StreamedReport:
    """Analyse trace files/stores in one streamed pass and write the report.

    Each part is read once: the analyzer records it, and :class:`ExamplePicker` keeps the timeline
    examples from it while it is in memory, so memory stays bounded by one part plus small
    per-episode records and no file is read twice. Other arguments as in :func:`build_report`.
    """
    analyzer = Analyzer(AnalyzeConfig(reference_policy=reference, seed=seed))
    picker = ExamplePicker()
    for table in iter_tables(paths, nan_policy=nan_policy):  # type: ignore[arg-type]
        picker.add(table, analyzer.add_table(table))
    summary = analyzer.summary()
    evidence = analyzer.evidence()
    ref = reference or (summary.get("costs") or {}).get("reference") or REFERENCE_POLICY
    claims = claims_table(
        summary, evidence, eval_rows, ClaimsConfig(reference_policy=ref, seed=seed)
    )
    write_report(
        out,
        summary=summary,
        claims=claims,
        examples=picker.examples,
        eval_rows=eval_rows,
        training=training,
        promotions=promotions,
        alerts=alerts,
        metadata=metadata,
        preregistered=preregistered,
        title=title,
        force=force,
    )
    return StreamedReport(summary=summary, evidence=evidence, claims=claims)
