"""The HTML report in a real browser: headless Chromium opens it from a file:// URL, every chart
renders, nothing is logged as an error and nothing is fetched from anywhere but the file itself.

Uses Debian's ``/usr/bin/chromium`` driven by the ``playwright`` pip package (never
``playwright install``). When Chromium is missing the test installs it with apt-get and skips,
with the reason, only if that fails. Saves ``runs/screenshots/report.png`` (git-ignored).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from agentropy.analysis.summary import analyze_episodes
from agentropy.report.html import FIGURE_IDS, write_report

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path(__file__).resolve().parents[1] / "runs" / "screenshots" / "report.png"


def _chromium() -> str:
    """Path of Chromium, installing Debian's package if needed (skip if that fails)."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if shutil.which("apt-get") is None:
        pytest.skip("chromium is missing and apt-get is not available to install it")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            pytest.skip(f"could not install chromium ({' '.join(cmd)}): {err}")
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
            pytest.skip(f"could not install chromium ({' '.join(cmd)}): {tail[0]}")
    if not Path(CHROMIUM).exists():
        pytest.skip("apt-get install chromium did not provide /usr/bin/chromium")
    return CHROMIUM


def test_report_renders_in_chromium(tmp_path: Path) -> None:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the browser test needs the playwright pip package"
    )
    from test_report import EVAL_ROWS, small_traces

    executable = _chromium()
    traces = small_traces()
    report = write_report(
        tmp_path / "report.html",
        summary=analyze_episodes(traces),
        episodes=traces,
        eval_rows=EVAL_ROWS,
        metadata={"seed": 0, "config": {"note": "browser test"}},
        promotions=[{"step": 6, "level": 1}],
    )
    url = report.resolve().as_uri()
    errors: list[str] = []
    foreign: list[str] = []
    with sync_api.sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        # A fresh profile directory per run (playwright passes it as --user-data-dir).
        browser = pw.chromium.launch_persistent_context(
            profile,
            executable_path=executable,
            headless=True,
            args=LAUNCH_ARGS,
            viewport={"width": 1200, "height": 900},
        )
        try:
            page = browser.new_page()
            page.on(
                "console",
                lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None,
            )
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            page.on(
                "request",
                lambda req: foreign.append(req.url) if not req.url.startswith("file:") else None,
            )
            page.goto(url, wait_until="load")
            ids = list(FIGURE_IDS)
            page.wait_for_function(
                "ids => ids.every(id => document.querySelector('#' + id + ' svg.main-svg'))",
                arg=ids,
                timeout=60_000,
            )
            rendered = page.evaluate(
                "ids => ids.map(id => document.querySelectorAll('#' + id + ' svg.main-svg').length)",
                ids,
            )
            traces_drawn = page.evaluate(
                "ids => ids.map(id => document.getElementById(id).data.length)", ids
            )
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert foreign == []
    assert all(n >= 1 for n in rendered), dict(zip(ids, rendered, strict=True))
    assert all(n >= 1 for n in traces_drawn)
    assert SCREENSHOT.stat().st_size > 10_000


def test_topk_report_draws_the_bounds_band_in_chromium(tmp_path: Path) -> None:
    """An imported OpenAI top_logprobs trace: the note is shown and each example timeline draws
    the band between the entropy bounds (a filled path under the entropy line)."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the browser test needs the playwright pip package"
    )
    from agentropy.report.figures import BOUNDS_NAME
    from agentropy.report.html import report_from_paths
    from test_topk_bounds import write_topk_store

    executable = _chromium()
    out = tmp_path / "topk.html"
    report_from_paths([write_topk_store(tmp_path)], out)
    ids = ["fig-timeline-productive", "fig-timeline-divergent"]
    errors: list[str] = []
    with sync_api.sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        browser = pw.chromium.launch_persistent_context(
            profile, executable_path=executable, headless=True, args=LAUNCH_ARGS,
            viewport={"width": 1200, "height": 900},
        )  # fmt: skip
        try:
            page = browser.new_page()
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            page.goto(out.resolve().as_uri(), wait_until="load")
            page.wait_for_function(
                "ids => ids.every(id => document.querySelector('#' + id + ' svg.main-svg'))",
                arg=ids,
                timeout=60_000,
            )
            note = page.inner_text("#entropy-bounds-note")
            bands = page.evaluate(
                """([ids, name]) => ids.map(id => {
                    const el = document.getElementById(id);
                    const drawn = el.data.filter(t => t.name === name && t.fill === 'tonexty');
                    const fills = [...el.querySelectorAll('path.js-fill')]
                        .filter(p => (p.getAttribute('d') || '').length > 10);
                    return [drawn.length, fills.length,
                            [...el.querySelectorAll('.legendtext')].map(t => t.textContent)];
                })""",
                [ids, BOUNDS_NAME],
            )
        finally:
            browser.close()
    assert errors == []
    assert "top-k estimates" in note and "could flip" in note
    for n_traces, n_fills, legend in bands:
        assert n_traces == 1 and n_fills >= 1
        assert BOUNDS_NAME in legend


def test_preregistered_claims_render_in_chromium(tmp_path: Path) -> None:
    """The pre-registered claims table in a real browser: one row per judgement, each with its
    null, direction, minimum effect, measurement, verdict (coloured by kind), reason and the
    config file that reproduces it."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the browser test needs the playwright pip package"
    )
    from agentropy.report.claim_rule import format_value
    from agentropy.report.intervention_claims import intervention_claims
    from test_intervention import _summary
    from test_report import small_traces

    executable = _chromium()
    traces = small_traces()
    judgements = intervention_claims(_summary(loops=((0, 0), (0, 0))), n_boot=400)
    out = write_report(
        tmp_path / "claims.html",
        summary=analyze_episodes(traces),
        episodes=traces,
        preregistered=judgements,
    )
    errors: list[str] = []
    with sync_api.sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        browser = pw.chromium.launch_persistent_context(
            profile, executable_path=executable, headless=True, args=LAUNCH_ARGS,
            viewport={"width": 1400, "height": 900},
        )  # fmt: skip
        try:
            page = browser.new_page()
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            page.goto(out.resolve().as_uri(), wait_until="load")
            head = page.eval_on_selector_all(
                "#claims-v2-table thead th", "ths => ths.map(t => t.textContent)"
            )
            rows = page.eval_on_selector_all(
                "#claims-v2-table tbody tr",
                """trs => trs.map(tr => [...tr.cells].map(td => [td.innerText.trim(),
                    getComputedStyle(td).backgroundColor]))""",
            )
            visible = page.is_visible("#claims-v2-table")
        finally:
            browser.close()
    assert errors == [] and visible
    assert head == ["#", "claim (essay) and metric", "null", "direction", "minimum effect",
                    "measured", "95% CI", "n", "verdict", "reason", "reproduce"]  # fmt: skip
    assert len(rows) == len(judgements)
    colours: dict[str, str] = {}
    previous = None
    for cells, j in zip(rows, judgements, strict=True):
        text = [c[0] for c in cells]
        # A claim's statement is shown once; its other scopes say "as above [scope]".
        first = j.spec.id != previous
        previous = j.spec.id
        assert (j.spec.statement in text[1]) if first else text[1].startswith("as above")
        assert j.scope in text[1]
        assert text[2] == format_value(j.spec.null, j.spec.unit) and text[3] == j.spec.direction
        assert text[4].startswith(j.spec.threshold)
        assert text[8] == j.verdict and text[9] == j.reason
        assert text[10] == "experiments/recovery_intervention.toml"
        colours[j.verdict] = cells[8][1]
    assert {"supported", "not measured"} <= set(colours)
    assert colours["supported"] != colours["not measured"]
