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
pooled over runs. It also rebuilds each step's prediction from the run's token traces
(``traces/``: sampled log-probs, exact entropies, phases; advantages from the episodes'
rewards), checks it against the logged ``cov/<group>_pred_dH``, and adds the entropy bonus's own
first-order change (:func:`agentropy.monitor.attribution.bonus_stats`; ``loss=flat`` and
``rhythm`` train with a bonus, the logged covariance leaves it out). Agreement is reported for
three predictions: ``pg_logged`` (the trainer's ``cov/<g>_pred_dH``: minibatches after the
first of a step read log-probs of the partly updated policy), ``pg`` (rebuilt, every token under
the policy that sampled the step) and ``pg+bonus`` (``pg`` plus the bonus's change). ``lag1_realised`` is the lag-1 autocorrelation of the
realised changes: about -0.5 when they are differences of independent per-step noise (each
step's rollouts are new tasks), about 0 when the entropy really moves step to step.

Run::

    AGENTROPY_HOME=/tmp/home PYTHONPATH=src python experiments/monitor_validation.py run \\
        --kind unstable --seed 0 --steps 8 --out runs/mon/unstable
    ... run --kind healthy --seed 0 --steps 20 --out runs/mon/healthy-0   (seeds 0, 1, 2)
    ... summarize runs/mon/*     (--replay: the current detector over the logged metrics)
    ... run --kind unstable --lr 1e-3 ...   (another learning rate; kind = unstable when lr >= 3e-4)
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
UNSTABLE_LR = 3e-4
"""The unstable runs' learning rate (and any larger one: ``run --lr``); the default is 2e-5."""


def run(
    kind: str,
    seed: int,
    steps: int,
    out: str,
    model: str | None = None,
    loss: str | None = None,
    resume: bool = False,
    lr: float | None = None,
) -> None:
    from agentropy.rl.config import TrainConfig
    from agentropy.rl.trainer import train

    extra: dict = {"lr": UNSTABLE_LR, "loss": "vanilla"} if kind == "unstable" else {}
    if loss is not None:
        extra["loss"] = loss
    if lr is not None:
        extra["lr"] = lr
    cfg = TrainConfig(
        out=out, model=model, seed=seed, steps=steps, eval_episodes=8, eval_every=10_000,
        checkpoint_every=0, threads=1, progress=False, **extra,
    )  # fmt: skip
    train(cfg, resume=resume)


def trace_predictions(run_dir: str, rows: list[dict]) -> dict[int, dict[str, float]]:
    """Per step: the policy-gradient prediction rebuilt from ``run_dir/traces``
    (``cov/<g>_pred_dH``, to check against the logged one) and the entropy bonus's
    (``cov/<g>_bonus_pred_dH``), with the coefficients the step logged (``coef/entropy``,
    ``coef/entropy_effective`` or ``coef/lambda_<phase>``; none: no bonus). Empty without traces.
    """
    import torch

    from agentropy.monitor.attribution import (
        attribution_metrics,
        bonus_metrics,
        bonus_stats,
        covariance_stats,
    )
    from agentropy.rl.advantages import group_advantages
    from agentropy.trace import PHASES, read_parquet

    store = Path(run_dir) / "traces"
    if not (store / "episodes").is_dir():
        return {}
    cfg = read_toml_text((Path(run_dir) / "config.toml").read_text())
    by_step: dict[int, list] = {}
    for ep in read_parquet(store):
        if ep.step is not None:
            by_step.setdefault(int(ep.step), []).append(ep)
    row_of = {int(r["step"]): r for r in rows}
    out: dict[int, dict[str, float]] = {}
    for step, eps in sorted(by_step.items()):
        row = row_of.get(step)
        if row is None:
            continue
        task_ids = {t: i for i, t in enumerate(dict.fromkeys(e.task_id for e in eps))}
        groups = torch.tensor([task_ids[e.task_id] for e in eps])
        rewards = torch.tensor([1.0 if e.success else 0.0 for e in eps])
        adv = group_advantages(
            rewards, groups, float(cfg.get("adv_eps", 1e-6)), std=cfg.get("adv_std", "population")
        )
        lp, h, ph, a, t = [], [], [], [], []
        for e, ai in zip(eps, adv.tolist(), strict=True):
            for turn in e.assistant_turns:
                if turn.n_tokens == 0 or turn.logprob is None:
                    continue
                lp.append(torch.as_tensor(turn.logprob, dtype=torch.float64))
                h.append(torch.as_tensor(turn.entropy, dtype=torch.float64))
                ph.append(torch.as_tensor(turn.phase, dtype=torch.int64))
                t.append(torch.as_tensor(turn.temperature, dtype=torch.float64))
                a.append(torch.full((turn.n_tokens,), ai, dtype=torch.float64))
        if not lp:
            continue
        x, ent, phase = torch.cat(lp)[None], torch.cat(h)[None], torch.cat(ph)[None]
        temp = torch.cat(t)[None]
        mask = temp > 0
        metrics = attribution_metrics(covariance_stats(x, torch.cat(a)[None], mask, phase))
        lam = [row.get(f"coef/lambda_{p}") for p in PHASES]
        if all(v is not None for v in lam):
            coef: float | torch.Tensor = torch.tensor(lam, dtype=torch.float64)
        else:
            coef = row.get("coef/entropy_effective", row.get("coef/entropy")) or 0.0
        metrics.update(bonus_metrics(bonus_stats(x, ent, mask, coef, phase)))
        metrics["t1_share"] = float((temp[mask] == 1.0).double().mean())
        out[step] = metrics
    return out


def read_toml_text(text: str) -> dict:
    import tomllib

    return tomllib.loads(text)


def lag1(x: list[float]) -> float | None:
    """Lag-1 autocorrelation (None for fewer than 4 values or a constant series)."""
    import numpy as np

    v = np.asarray(x, np.float64)
    if v.shape[0] < 4 or v.std() == 0:
        return None
    v = v - v.mean()
    return float((v[1:] * v[:-1]).sum() / (v * v).sum())


def summarize(dirs: list[str], replay: bool = False) -> dict:
    from agentropy.monitor import Tracker
    from agentropy.monitor.attribution import GROUPS, agreement
    from agentropy.rl.run import read_metrics

    kinds = ("pg_logged", "pg", "pg+bonus")
    runs: list[dict] = []
    pooled: dict[str, dict[str, tuple[list[float], list[float]]]] = {
        k: {g: ([], []) for g in GROUPS} for k in kinds
    }
    for d in dirs:
        rows = read_metrics(d)
        lr = float(read_toml_text((Path(d) / "config.toml").read_text())["lr"])
        kind = "unstable" if lr >= UNSTABLE_LR else "healthy"
        if (Path(d) / "summary.json").exists() and not replay:
            alerts = json.loads((Path(d) / "summary.json").read_text())["alerts"]
        else:  # a run still going (or cut short): the detector is pure, replay its rows
            tracker = Tracker()
            for r in rows:
                tracker.step(int(r["step"]), r)
            alerts = [a.to_dict() for a in tracker.alerts]
        h = [float(r["rollout/entropy"]) for r in rows]
        onset = next((r["step"] for r in rows if r["rollout/entropy"] > ONSET_FACTOR * h[0]), None)
        bad = [a for a in alerts if a["name"] in BAD_ALERTS]
        first_bad = bad[0]["step"] if bad else None
        rebuilt = trace_predictions(d, rows)
        check = [abs(rebuilt[int(r["step"])][f"cov/{g}_pred_dH"] - r[f"cov/{g}_pred_dH"])
                 for r in rows for g in GROUPS
                 if int(r["step"]) in rebuilt and r.get(f"cov/{g}_pred_dH") is not None
                 and f"cov/{g}_pred_dH" in rebuilt[int(r["step"])]]  # fmt: skip
        agree: dict[str, dict] = {k: {} for k in kinds}
        lag: dict[str, float | None] = {}
        bonus_share: dict[str, float | None] = {}
        for g in GROUPS:
            trip = []
            for r in rows:
                p, q = r.get(f"cov/{g}_pred_dH"), r.get(f"cov/{g}_realised_dH")
                if p is None or q is None:
                    continue
                re = rebuilt.get(int(r["step"]), {})
                trip.append((p, q, re.get(f"cov/{g}_pred_dH"), re.get(f"cov/{g}_bonus_pred_dH")))
            lag[g] = lag1([q for _, q, _, _ in trip])
            both = [(q, p, b) for _, q, p, b in trip if p is not None and b is not None]
            shares = [abs(b) / (abs(p) + abs(b)) for _, p, b in both if abs(p) + abs(b) > 0]
            bonus_share[g] = statistics.median(shares) if shares else None
            series = {"pg_logged": [(p, q) for p, q, _, _ in trip],
                      "pg": [(p, q) for q, p, _ in both],
                      "pg+bonus": [(p + b, q) for q, p, b in both]}  # fmt: skip
            for k, pairs in series.items():
                pooled[k][g][0].extend(a for a, _ in pairs)
                pooled[k][g][1].extend(b for _, b in pairs)
                if pairs:
                    agree[k][g] = agreement([a for a, _ in pairs], [b for _, b in pairs])
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
            "monitor_share_max": max(share),
            "monitor_s_median": statistics.median(r["time/monitor_s"] for r in rows),
            "step_s_median": statistics.median(r["time/step_s"] for r in rows),
            "wall_s": rows[-1].get("time/elapsed_s"),
            "rebuilt_pred_max_abs_diff": max(check) if check else None,
            "bonus_share_median": bonus_share,
            "lag1_realised": lag,
            "agreement": agree,
        })  # fmt: skip
    return {
        "runs": runs,
        "pooled_agreement": {
            k: {g: agreement(p, q) for g, (p, q) in per.items() if p} for k, per in pooled.items()
        },
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
    r.add_argument("--lr", type=float, default=None, help="override the lr (unstable: 3e-4)")
    r.add_argument(
        "--resume", action="store_true",
        help="continue the run in --out from its newest checkpoint up to --steps",
    )  # fmt: skip
    s = sub.add_parser("summarize")
    s.add_argument("dirs", nargs="+")
    s.add_argument(
        "--replay", action="store_true",
        help="re-run the current detector over metrics.parquet instead of the run's own alerts",
    )  # fmt: skip
    args = ap.parse_args()
    if args.cmd == "run":
        run(args.kind, args.seed, args.steps, args.out, args.model, args.loss, args.resume, args.lr)
    else:
        print(json.dumps(summarize(args.dirs, replay=args.replay), indent=1))


if __name__ == "__main__":
    main()
