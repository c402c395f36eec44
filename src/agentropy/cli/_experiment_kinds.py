"""``agentropy experiment --config FILE`` for experiments other than the training arms.

A config file with a top-level ``kind`` key names the experiment it runs (:data:`KINDS`), and is
then the whole specification: the command's other options are not read, except ``--force`` and
``--progress``. Without ``kind`` the file is the training arms' shared ``TrainConfig`` as before.
Every row of the pre-registered claims table names the config file that reproduces it
(``experiments/*.toml``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from agentropy.errors import InputError, read_toml
from agentropy.pipelines import intervention

__all__ = ["KINDS", "config_kind", "run_kind_config"]

#: Name of the key that selects the experiment.
KIND_KEY = "kind"
#: File the recovery intervention writes its claims to, next to ``summary.json``.
CLAIMS_JSON = "claims.json"


def config_kind(path: Path) -> str | None:
    """The ``kind`` of a config file (None: a plain TrainConfig file)."""
    data = read_toml(path)
    kind = data.get(KIND_KEY)
    if kind is not None and kind not in KINDS:
        raise InputError(f"unknown kind {kind!r}; choose from {sorted(KINDS)}", path=path)
    return kind


def _recovery_intervention(path: Path, *, force: bool, progress: bool) -> None:
    import json

    from rich.console import Console

    from agentropy.outputs import atomic_write_text
    from agentropy.report.intervention_claims import claims_console_table, intervention_claims

    config = intervention.InterventionConfig.from_toml(path)
    if force:
        config = dataclasses.replace(config, force=True)
    console = Console(width=150)
    result = intervention.run_intervention(
        config, console=console if progress else None, config_file=str(path)
    )
    if not progress:  # with progress, run_intervention printed the tables already
        for table in intervention.render_tables(result):
            console.print(table)
    claims = intervention_claims(result)
    console.print(claims_console_table(claims))
    out = Path(config.out) / CLAIMS_JSON
    atomic_write_text(out, json.dumps([c.to_dict() for c in claims], indent=2) + "\n", force=True)
    console.print(f"wrote {Path(config.out) / intervention.SUMMARY_JSON} and {out}")


#: ``kind`` -> runner ``(config path, force=, progress=)``.
KINDS: dict[str, Callable[..., None]] = {intervention.KIND: _recovery_intervention}


def run_kind_config(path: Path, *, force: bool, progress: bool) -> bool:
    """Run the experiment ``path`` names by its ``kind``; False (nothing run) when it has none."""
    kind = config_kind(path)
    if kind is None:
        return False
    KINDS[kind](path, force=force, progress=progress)
    return True
