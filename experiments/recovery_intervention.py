"""Recovery as an intervention, not a correlation (issue 17, item 1): the same agent, tasks and
faults, arms that differ only in how the agent samples after a failure.

The experiment lives in :mod:`agentropy.pipelines.intervention` (its docstring says what each arm
does and how the intervals are computed); this script is its command line. The same run from a
config file, which also prints the pre-registered claims it measures::

    AGENTROPY_HOME=/tmp/home agentropy experiment --config experiments/recovery_intervention.toml

Run (the shipped agent; ``--model DIR`` for another)::

    AGENTROPY_HOME=/tmp/home PYTHONPATH=src python experiments/recovery_intervention.py run \\
        --out runs/ri --episodes 40 --levels 2,3 --faults all --seed 0 --jobs 2
    PYTHONPATH=src python experiments/recovery_intervention.py summarize runs/ri

``run`` summarizes at the end; ``summarize`` re-reads ``<out>/<arm>/eval.json`` and the traces
and writes ``<out>/summary.json``; both print the tables and the claims.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from agentropy.pipelines.intervention import (
    ARMS,
    FAULT_SETS,
    InterventionConfig,
    render_tables,
    run_intervention,
    summarize,
)
from agentropy.report.intervention_claims import claims_console_table, intervention_claims


def main() -> None:
    defaults = InterventionConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run every arm with agentropy eval, then summarize")
    r.add_argument("--out", default=defaults.out)
    r.add_argument("--model", default=None, help="model directory (default: the shipped agent)")
    r.add_argument("--episodes", type=int, default=defaults.episodes, help="tasks per level")
    r.add_argument("--levels", default=",".join(map(str, defaults.levels)))
    r.add_argument("--faults", default=defaults.faults, choices=FAULT_SETS)
    r.add_argument("--seed", type=int, default=defaults.seed)
    r.add_argument("--jobs", type=int, default=defaults.jobs, help="arms run at once")
    r.add_argument("--batch-size", type=int, default=defaults.batch_size)
    r.add_argument("--arms", default=",".join(defaults.arms), help=f"subset of {', '.join(ARMS)}")
    r.add_argument("--force", action="store_true", help="replace an earlier run's outputs")
    s = sub.add_parser("summarize", help="print and write the summary of a finished run")
    s.add_argument("out")
    args = p.parse_args()
    console = Console(width=150)
    if args.cmd == "run":
        try:
            config = InterventionConfig(
                out=args.out, model=args.model, episodes=args.episodes,
                levels=tuple(int(x) for x in args.levels.split(",") if x.strip()),
                faults=args.faults, seed=args.seed, jobs=args.jobs, batch_size=args.batch_size,
                arms=tuple(a.strip() for a in args.arms.split(",") if a.strip()), force=args.force,
            )  # fmt: skip
        except ValueError as err:
            p.error(str(err))
        result = run_intervention(config, console=console)
    else:
        result = summarize(Path(args.out))
        for table in render_tables(result):
            console.print(table)
    console.print(claims_console_table(intervention_claims(result)))


if __name__ == "__main__":
    main()
