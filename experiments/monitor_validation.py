"""Validate the live monitor on real runs of our trainer (RESULTS.md, "Monitor").

Two kinds of run of the embedded agent, everything else at the trainer's defaults except a
cheaper held-out evaluation (``eval_episodes=8``, at step 0 and at the end only: the monitor
does not read it) and ``threads=1`` (the 2-core machine is shared):

- ``unstable``: ``lr=3e-4``, ``loss=vanilla`` (RESULTS.md, session 2, run b: collapses the agent
  within two steps). The monitor must raise ``divergence`` or ``collapse`` within 3 steps of
  the onset. Onset = the first step whose rollout entropy (``rollout/entropy``) exceeds
  ``ONSET_FACTOR`` x the step-1 value (an objective reading of "entropy 0.51 -> 1.0-1.6").
- ``healthy``: the defaults (``lr=2e-5``); neither ``divergence`` nor ``collapse`` may fire.

``summarize`` reads the run directories and prints a JSON document with, per run, the alerts,
the onset and detection delay, the false alarms, the monitor's share of the step time, and
the agreement (Pearson r with a 95% bootstrap interval) between the predicted entropy change
``cov/<group>_pred_dH`` (= -Cov(log pi, A), arXiv 2505.22617) and the realised change
``cov/<group>_realised_dH`` (rollout entropy of the next step minus this one), per run and
pooled over runs.

Run::

    AGENTROPY_HOME=/tmp/home PYTHONPATH=src python experiments/monitor_validation.py run \\
        --kind unstable --seed 0 --steps 8 --out runs/mon/unstable
    ... run --kind healthy --seed 0 --steps 20 --out runs/mon/healthy-0   (seeds 0, 1, 2)
    ... summarize runs/mon/*
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ONSET_FACTOR = 1.5
"""Onset of an instability: rollout entropy above this multiple of its step-1 value."""
DETECT_WITHIN = 3
"""Steps after the onset within which ``divergence`` or ``collapse`` must fire."""
BAD_ALERTS = ("divergence", "collapse")


def run(
    kind: str, seed: int, steps: int, out: str, model: str | None = None, loss: str | None = None
) -> None:
    from agentropy.rl.config import TrainConfig
    from agentropy.rl.trainer import train

    extra = {"lr": 3e-4, "loss": "vanilla"} if kind == "unstable" else {}
    if loss is not None:
        extra["loss"] = loss
    cfg = TrainConfig(
        out=out, model=model, seed=seed, steps=steps, eval_episodes=8, eval_every=10_000,
        checkpoint_every=0, threads=1, progress=False, **extra,
    )  # fmt: skip
    train(cfg)


def summarize(dirs: list[str], replay: bool = False) -> dict:
    from agentropy.monitor import Tracker
    from agentropy.monitor.attribution import GROUPS, agreement
    from agentropy.rl.run import read_metrics

    runs, pooled = [], {g: ([], []) for g in GROUPS}
    for d in dirs:
        rows = read_metrics(d)
        cfg = (Path(d) / "config.toml").read_text()
        kind = "unstable" if "lr = 0.0003" in cfg else "healthy"
        if (Path(d) / "summary.json").exists() and not replay:
            alerts = json.loads((Path(d) / "summary.json").read_text())["alerts"]
        else:  # a run still going (or cut short): the detector is pure, replay its rows
            tracker = Tracker()
            for r in rows:
                tracker.step(int(r["step"]), r)
            alerts = [a.to_dict() for a in tracker.alerts]
        h = [r.get("rollout/entropy") for r in rows]
        onset = next((r["step"] for r in rows if r["rollout/entropy"] > ONSET_FACTOR * h[0]), None)
        bad = [a for a in alerts if a["name"] in BAD_ALERTS]
        first_bad = bad[0]["step"] if bad else None
        agree = {}
        for g in GROUPS:
            p = [r.get(f"cov/{g}_pred_dH") for r in rows]
            q = [r.get(f"cov/{g}_realised_dH") for r in rows]
            pairs = [(a, b) for a, b in zip(p, q, strict=True) if a is not None and b is not None]
            pooled[g][0].extend(a for a, _ in pairs)
            pooled[g][1].extend(b for _, b in pairs)
            if pairs:
                agree[g] = agreement([a for a, _ in pairs], [b for _, b in pairs])
        share = [r["time/monitor_s"] / r["time/step_s"] for r in rows]
        runs.append({
            "run": d,
            "kind": kind,
            "steps": len(rows),
            "entropy": [round(x, 3) for x in h],
            "reward": [round(r["rollout/reward_mean"], 3) for r in rows],
            "alerts": [(a["step"], a["name"], a["metric"], a.get("kind")) for a in alerts],
            "onset": onset,
            "first_divergence_or_collapse": first_bad,
            "detected_within": (None if onset is None or first_bad is None
                                else first_bad - onset),
            "false_alarms": len(bad) if kind == "healthy" else None,
            "monitor_share_median": statistics.median(share),
            "monitor_s_median": statistics.median(r["time/monitor_s"] for r in rows),
            "step_s_median": statistics.median(r["time/step_s"] for r in rows),
            "agreement": agree,
        })  # fmt: skip
    return {
        "runs": runs,
        "pooled_agreement": {g: agreement(p, q) for g, (p, q) in pooled.items() if p},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--kind", choices=("unstable", "healthy"), required=True)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--steps", type=int, default=20)
    r.add_argument("--out", required=True)
    r.add_argument("--model", default=None, help="agent directory (default: the embedded agent)")
    r.add_argument("--loss", default=None, help="override the loss (unstable: vanilla)")
    s = sub.add_parser("summarize")
    s.add_argument("dirs", nargs="+")
    s.add_argument(
        "--replay", action="store_true",
        help="re-run the current detector over metrics.parquet instead of the run's own alerts",
    )  # fmt: skip
    args = ap.parse_args()
    if args.cmd == "run":
        run(args.kind, args.seed, args.steps, args.out, args.model, args.loss)
    else:
        print(json.dumps(summarize(args.dirs, replay=args.replay), indent=1))


if __name__ == "__main__":
    main()
