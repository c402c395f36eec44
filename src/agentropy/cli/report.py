"""``agentropy report PATH... --out report.html``: analyse traces and write the HTML report.

Takes any traces the analyzer reads (JSONL files, including imported logs, and Parquet trace
stores), streamed part by part: one pass feeds the analyzer and the claims' per-episode evidence,
a second pass fetches only the few episodes shown as timeline examples. ``--eval eval.json``
(written by ``agentropy eval --out``) adds the sampling-policy table and the claims that need it;
``--intervention DIR`` (a recovery-intervention run, ``agentropy experiment --config
experiments/recovery_intervention.toml``) adds the pre-registered claims table.
Bad input exits with status 2 and a one-line message naming file, line/row and field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from agentropy.cli._common import guarded
from agentropy.cli._options import FORCE_OPTION, NAN_POLICY_OPTION, NanPolicyChoice
from agentropy.cli.analyze import REFERENCE_OPTION, SEED_OPTION
from agentropy.errors import InputError

#: Keys an eval row must have for the report and the claims.
REQUIRED_EVAL_KEYS: tuple[str, ...] = ("level", "policy", "episodes", "success")


def read_eval_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of an ``eval.json`` (``{"rows": [...]}``, or a bare list of rows), validated."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise InputError("no such file", path=p) from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read: {err}", path=p) from None
    except json.JSONDecodeError as err:
        raise InputError(f"not valid JSON: {err.msg}", path=p, line=err.lineno) from None
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise InputError("expected an object with a 'rows' list, or a list of rows", path=p)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InputError("an eval row must be an object", path=p, row=i)
        for key in REQUIRED_EVAL_KEYS:
            if key not in row:
                raise InputError("missing", path=p, row=i, field=key)
        if not isinstance(row["level"], int) or isinstance(row["level"], bool):
            raise InputError("must be an integer", path=p, row=i, field="level")
        if not isinstance(row["episodes"], int) or row["episodes"] < 0:
            raise InputError("must be a non-negative integer", path=p, row=i, field="episodes")
        s = row["success"]
        if s is not None and (not isinstance(s, int | float) or not 0 <= s <= 1):
            raise InputError("must be a rate in [0, 1] or null", path=p, row=i, field="success")
    return rows


def parse_promotions(text: str | None) -> list[int]:
    """``"10,25"`` -> ``[10, 25]``."""
    if not text:
        return []
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--promotions must be comma-separated steps, got {text!r}") from None


def report(
    paths: list[Path] = typer.Argument(..., help="JSONL trace files and/or Parquet trace stores."),
    out: Path = typer.Option(Path("report.html"), "--out", help="HTML file to write."),
    eval_json: Path | None = typer.Option(
        None, "--eval", help="eval.json from `agentropy eval --out` (policy table and claims)."
    ),
    promotions: str | None = typer.Option(
        None, "--promotions", help="Curriculum promotion steps to mark, comma-separated."
    ),
    intervention: Path | None = typer.Option(
        None,
        "--intervention",
        help="Recovery-intervention run folder (or its summary.json): the pre-registered claims.",
    ),
    nan_policy: NanPolicyChoice = NAN_POLICY_OPTION,
    reference: str | None = REFERENCE_OPTION,
    seed: int = SEED_OPTION,
    title: str = typer.Option("agentropy report", "--title", help="Report title."),
    force: bool = FORCE_OPTION,
) -> None:
    """Analyse traces and write one self-contained HTML report (charts, claims table)."""
    _run(
        paths, out, eval_json, promotions, nan_policy.value, reference, seed, title, force,
        intervention,
    )  # fmt: skip


@guarded
def _run(
    paths: list[Path],
    out: Path,
    eval_json: Path | None,
    promotions: str | None,
    nan_policy: str,
    reference: str | None,
    seed: int,
    title: str,
    force: bool,
    intervention: Path | None = None,
) -> None:
    from agentropy.outputs import check_output
    from agentropy.report.html import report_from_paths

    check_output(out, force=force)  # before the analysis, not after it
    rows = read_eval_rows(eval_json) if eval_json is not None else None
    preregistered = None
    if intervention is not None:
        from agentropy.pipelines.intervention import load_summary
        from agentropy.report.intervention_claims import intervention_claims

        preregistered = intervention_claims(load_summary(intervention), seed=seed)
    metadata = {
        "command": "agentropy report",
        "inputs": [str(p) for p in paths],
        "eval": None if eval_json is None else str(eval_json),
        "intervention": None if intervention is None else str(intervention),
        "bootstrap seed": seed,
        "nan policy": nan_policy,
    }
    try:
        summary = report_from_paths(
            paths,
            out,
            eval_rows=rows,
            promotions=parse_promotions(promotions),
            metadata=metadata,
            preregistered=preregistered,
            nan_policy=nan_policy,
            reference=reference,
            seed=seed,
            title=title,
            force=force,
        ).summary
    except ImportError as err:  # plotly is an optional extra: say how to install it
        raise ValueError(str(err)) from None
    typer.echo(
        f"wrote {out}: {summary['episodes']} episodes, {len(summary['eruptions'])} eruptions, "
        f"{summary['tool_failures']} tool failures"
    )


def register(app: typer.Typer) -> None:
    """Add ``report`` to the CLI."""
    app.command("report")(report)
