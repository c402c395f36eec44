"""Choose the collapse rule's ``collapse_window`` and ``collapse_z`` (MonitorConfig) from data.

For each (window, z) of a grid, with every other threshold at its default:

- **real runs** (``--runs``: run directories of ``agentropy train``, e.g. the healthy and unstable
  runs of ``experiments/monitor_validation.py``): collapse alerts replayed over the logged
  metrics, and, over the act and answer phases of the healthy runs, the smallest ratio of the
  collapse level's upper bound to the floor (> 1: no false collapse, and by what margin);
- **planted collapse** (:mod:`agentropy.monitor.synthetic`, Gaussian and Student-t noise of
  2/5/10%, ``--seeds`` each): recall and the delay from the planted onset (the noiseless curve
  crosses the floor ~9 steps after it);
- **noisy low channel** (level 0.12 nats, gamma noise of relative sd 25/50/75%, ``--noisy-seeds``
  each; the shipped agent's answer phase has 56-73%): false collapses on quiet series, collapse
  recall and delay (the noiseless curve crosses the 0.05-nat floor ~5 steps after the onset).

Run::

    PYTHONPATH=src python experiments/collapse_calibration.py --runs runs/mon/* \\
        --windows 1,3,5,7,8 --z 0,1,2,2.5,3

``--windows 1 --z 0`` approximates the first rule: the latest value alone against the floor (its
'still falling' was a negative 5-value slope; here, below the value 5 updates earlier).
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

from agentropy.monitor import Monitor, MonitorConfig, TagMap, Tracker
from agentropy.monitor.detector import relative_noise
from agentropy.monitor.synthetic import planted_series

NOISY_BASE = 0.12
NOISY_CVS = (0.25, 0.5, 0.75)
NOISES = (0.02, 0.05, 0.1)


def _feed(mon: Monitor, rows: list[dict]) -> list:
    state, out = mon.init(), []
    for i, row in enumerate(rows):
        alerts, state = mon.update(state, row, step=i + 1)
        out += alerts
    return out


def _delay(alerts: list, onset: int) -> int | None:
    return next((a.step - onset for a in alerts if a.name == "collapse" and a.step >= onset), None)


def _delays(ds: list[int | None]) -> str:
    hit = [d for d in ds if d is not None]
    if not hit:
        return f"0/{len(ds)}"
    return f"{len(hit)}/{len(ds)}, delay {statistics.median(hit):g} (max {max(hit)})"


def _margin(cfg: MonitorConfig, rows: list[dict]) -> float:
    """Smallest (level bound / floor) over the act and answer phases of one run's rows."""
    tags, worst = TagMap.default(), math.inf
    resolved = [tags.resolve({k: v for k, v in r.items() if isinstance(v, float)}) for r in rows]
    for ch in ("entropy_act", "entropy_answer"):
        v = [x[ch] for x in resolved if x.get(ch) is not None]
        floor = max(
            cfg.collapse_floor, cfg.collapse_fraction * statistics.median(v[: cfg.min_history])
        )
        for i in range(max(cfg.min_history, cfg.collapse_window + cfg.trend_window), len(v) + 1):
            hist = v[max(0, i - cfg.window) : i]
            level = sum(hist[-cfg.collapse_window :]) / cfg.collapse_window
            rel = relative_noise(hist)
            bound = level * (1 + cfg.collapse_z * rel / math.sqrt(cfg.collapse_window))
            worst = min(worst, bound / floor)
    return worst


def main() -> None:
    from agentropy.rl.run import read_metrics

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="*", default=[], help="agentropy train run directories")
    ap.add_argument("--windows", default="1,3,5,7,8", help="collapse_window values")
    ap.add_argument("--z", default="0,1,2,2.5,3", help="collapse_z values")
    ap.add_argument("--seeds", type=int, default=20, help="planted collapses per noise level")
    ap.add_argument("--noisy-seeds", type=int, default=50, help="series per noisy-channel cell")
    ap.add_argument("--first-seed", type=int, default=0, help="first seed of every cell")
    args = ap.parse_args()
    runs = {d: read_metrics(d) for d in args.runs}
    healthy = [d for d in runs if "lr = 0.0003" not in (Path(d) / "config.toml").read_text()]
    for m in (int(x) for x in args.windows.split(",")):
        for z in (float(x) for x in args.z.split(",")):
            cfg = MonitorConfig(collapse_window=m, collapse_z=z)
            mon = Monitor(cfg)
            print(f"\n## collapse_window={m} collapse_z={z:g}")
            for d, rows in runs.items():
                tracker = Tracker(cfg)
                for r in rows:
                    tracker.step(int(r["step"]), r)
                got = [(a.step, a.metric) for a in tracker.alerts if a.name == "collapse"]
                margin = f", margin {_margin(cfg, rows):.2f}" if d in healthy else ""
                print(f"- {d}: {len(got)} collapses {got}{margin}")
            for heavy in (False, True):
                ds = []
                for noise in NOISES:
                    for seed in range(args.first_seed, args.first_seed + args.seeds):
                        rows, onset = planted_series(
                            "collapse", noise=noise, seed=seed, heavy_tails=heavy
                        )
                        ds.append(_delay(_feed(mon, rows), onset))
                print(f"- planted collapse, {'Student-t' if heavy else 'Gaussian'}: {_delays(ds)}")
            for cv in NOISY_CVS:
                false, ds = 0, []
                for seed in range(args.first_seed, args.first_seed + args.noisy_seeds):
                    kw = {"noise": cv, "base": NOISY_BASE, "skewed": True, "seed": seed}
                    rows, _ = planted_series("quiet", **kw)
                    false += sum(a.name == "collapse" for a in _feed(mon, rows))
                    rows, onset = planted_series("collapse", **kw)
                    ds.append(_delay(_feed(mon, rows), onset))
                print(f"- noisy low channel, sd {cv:.0%}: {false} false; collapse {_delays(ds)}")


if __name__ == "__main__":
    main()
