"""The training-run monitor: planted-pattern precision/recall, per-step cost, covariance agreement.

1. **Planted patterns** (:mod:`agentropy.monitor.synthetic`): every pattern at amplitudes
   +50% / +100% / +200% of the entropy level and relative noise 2% / 5% / 10% (Gaussian, and
   Student-t with 3 degrees of freedom for heavy tails), ``--seeds`` series each. An alert is a
   true positive when it matches a planted expectation (label and step window); precision per
   alert type = true / all alerts of that type, recall = matched / planted. Collapse recall and
   detection delay (alert step - planted onset) per noise level.
   Divergence recall and delay per noise level too.
1b. **Noisy low channels** (``--noisy-seeds``): the planted ``quiet`` and ``collapse`` patterns
   on a channel like the shipped agent's answer and act phases (level 0.12 nats, right-skewed
   gamma noise of relative sd 25% / 50% / 75%; :func:`~agentropy.monitor.synthetic.planted_series`
   with ``skewed=True``): false collapses on the quiet series, collapse recall and delay.
1c. **Binomial rewards** (``--binomial-seeds``): the reward as a success rate over 32 rollouts
   around 0.17 (``rollouts=32, reward_scale=0.5``: the shipped agent's GRPO batches, binomial
   sd 0.07, where one batch with 1 success in 32 raised a false divergence), on the overall
   channel (5% Gaussian noise) and on noisy low channels that erupt by themselves (gamma noise
   50% / 75%, like the answer phase): false divergences on quiet series, and recall and delay
   of planted divergences (+200% entropy, reward down 57%), for ``severe_batches`` 1 (any
   single reward counts: the first rule) and the default.
2. **Cost** of one ``Monitor.update`` with all 11 metrics, microseconds (median of 5 runs of
   2000 steps), to set against a training step (seconds).
3. **Why entropy moved**, simulated: a softmax policy over ``V`` actions in ``S`` states trained
   by sampled policy gradient (tabular logits, and a small MLP, plain SGD). Per step, the batch
   covariance of sampled tokens' log-prob and advantage (arXiv 2505.22617, ``pg`` and ``npg``
   variants) predicts the entropy change; the realised change is the exact mean entropy over
   states after minus before the update. Reported: Pearson r with a 95% bootstrap interval,
   sign agreement and the fitted scale.

4. **Overhead in our trainer** (``--runs DIR...``, run directories of ``agentropy train``):
   the trainer logs ``time/monitor_s`` (degeneracy rates of the step's episodes, the
   covariance statistics of every minibatch, the detector update) beside ``time/step_s``;
   reported: the median share per step (target < 1%). Without ``--runs``, the same work is
   timed on a synthetic step of 32 episodes (rates, attribution over a (32, 512) batch,
   detector) to set against the trainer's ~1 s step on a quiet 2-core VM.

Run: ``PYTHONPATH=src python benchmarks/bench_monitor.py [--seeds 20] [--noisy-seeds 50]
[--binomial-seeds 100] [--runs DIR ...]``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import statistics
import time

import numpy as np
import torch

from agentropy.monitor import Monitor, MonitorConfig
from agentropy.monitor.attribution import agreement, covariance_stats, finalize
from agentropy.monitor.synthetic import PATTERNS, expected, planted_series, score

AMPLITUDES = (0.5, 1.0, 2.0)
NOISES = (0.02, 0.05, 0.1)
NOISY_BASE = 0.12
"""Level of the noisy low channel, nats (the shipped agent's answer phase: 0.11-0.13 mean)."""
NOISY_CVS = (0.25, 0.5, 0.75)
"""Relative sd of the noisy low channel (measured: act phase 0.2, answer phase 0.56-0.73)."""
ROLLOUTS = 32
"""Rollouts per step of the binomial-reward series (the trainer's default batch)."""
BINOMIAL_CHANNELS: tuple[tuple[str, dict], ...] = (
    ("overall, 5% Gaussian", {"noise": 0.05}),
    ("low, gamma 50%", {"noise": 0.5, "base": NOISY_BASE, "skewed": True}),
    ("low, gamma 75%", {"noise": 0.75, "base": NOISY_BASE, "skewed": True}),
)
"""Entropy channels of the binomial-reward section: name, :func:`planted_series` options."""


def run_series(mon: Monitor, rows: list[dict]) -> list:
    state = mon.init()
    out = []
    for i, row in enumerate(rows):
        alerts, state = mon.update(state, row, step=i + 1)
        out += alerts
    return out


def planted(seeds: int, config: MonitorConfig) -> None:
    mon = Monitor(config)
    for heavy in (False, True):
        tp: collections.Counter[str] = collections.Counter()
        fp: collections.Counter[str] = collections.Counter()
        n: collections.Counter[str] = collections.Counter()
        cells: dict[tuple[float, float], list[int]] = {}
        collapse_cells: dict[float, list[int]] = {x: [] for x in NOISES}  # delays; -1: missed
        div_cells: dict[float, list[int]] = {x: [] for x in NOISES}
        quiet_alarms = 0
        for pattern in PATTERNS:
            for amp in AMPLITUDES:
                for noise in NOISES:
                    for seed in range(seeds):
                        rows, onset = planted_series(
                            pattern, amplitude=amp, noise=noise, seed=seed, heavy_tails=heavy
                        )
                        alerts = run_series(mon, rows)
                        want = expected(pattern, onset, len(rows), horizon=config.horizon)
                        t, f = score(alerts, want)
                        tp.update(t)
                        fp.update(f)
                        n.update(w.label for w in want)
                        if pattern == "quiet":
                            quiet_alarms += len(alerts)
                        if pattern in ("productive", "degenerate", "divergence"):
                            c = cells.setdefault((amp, noise), [0, 0])
                            c[0] += t.get("eruption", 0)
                            c[1] += 1
                        if pattern == "collapse" and amp == AMPLITUDES[0]:
                            collapse_cells[noise].append(_delay(alerts, want, "collapse"))
                        if pattern == "divergence":
                            div_cells[noise].append(_delay(alerts, want, "divergence"))
        noise_name = "Student-t (3 dof)" if heavy else "Gaussian"
        total = len(PATTERNS) * len(AMPLITUDES) * len(NOISES) * seeds
        print(
            f"\n### Planted patterns, {noise_name} noise: {total} series, {seeds} seeds per cell\n"
        )
        print("| alert | planted | detected | recall | alerts | precision |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for lab in sorted(set(n) | set(fp)):
            alerts_n = tp[lab] + fp[lab]
            rec = f"{tp[lab] / n[lab]:.3f}" if n[lab] else "-"
            prec = f"{tp[lab] / alerts_n:.3f}" if alerts_n else "-"
            print(f"| {lab} | {n[lab]} | {tp[lab]} | {rec} | {alerts_n} | {prec} |")
        print(f"\nAlerts on quiet series (false alarms): {quiet_alarms} in "
              f"{len(AMPLITUDES) * len(NOISES) * seeds} series.\n")  # fmt: skip
        print("Eruption recall by amplitude (rows) and relative noise (columns):\n")
        print("| amplitude | " + " | ".join(f"noise {x:.0%}" for x in NOISES) + " |")
        print("| --- |" + " ---: |" * len(NOISES))
        for amp in AMPLITUDES:
            vals = [cells[(amp, x)][0] / cells[(amp, x)][1] for x in NOISES]
            print(f"| +{amp:.0%} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
        print("\nCollapse by relative noise (the amplitude does not enter the collapse pattern: "
              "its three amplitude cells are the same series, counted once here):\n")  # fmt: skip
        _delay_table("noise", collapse_cells)
        print("\nDivergence by relative noise (all amplitudes):\n")
        _delay_table("noise", div_cells)


def _delay(alerts: list, want: list, label: str) -> int:
    """Steps from the planted onset to the matching ``label`` alert; -1 if none matched."""
    w = next(w for w in want if w.label == label)
    hit = next((a for a in alerts if a.name == label and w.lo <= a.step <= w.hi), None)
    return -1 if hit is None else hit.step - w.lo


def _delay_row(x: str, ds: list[int]) -> str:
    hit = [d for d in ds if d >= 0]
    med = f"{statistics.median(hit):.0f}" if hit else "-"
    top = f"{max(hit)}" if hit else "-"
    return f"| {x} | {len(ds)} | {len(hit)} | {len(hit) / len(ds):.3f} | {med} | {top} |"


def _delay_table(column: str, delays: dict[float, list[int]]) -> None:
    print(f"| {column} | planted | detected | recall | median delay | max delay |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for x, ds in delays.items():
        print(_delay_row(f"{x:.0%}", ds))


def noisy_low(seeds: int, config: MonitorConfig) -> None:
    """Planted quiet and collapse patterns on a noisy low channel (module docstring, 1b)."""
    mon = Monitor(config)
    print(f"\n### Noisy low channels: level {NOISY_BASE} nats, gamma noise, {seeds} seeds per "
          "cell\n")  # fmt: skip
    print("| relative sd | quiet series | with a false collapse | false collapses | other alerts |")
    print("| --- | ---: | ---: | ---: | ---: |")
    delays: dict[float, list[int]] = {x: [] for x in NOISY_CVS}
    for cv in NOISY_CVS:
        series_hit = n_false = other = 0
        for seed in range(seeds):
            rows, _ = planted_series("quiet", noise=cv, base=NOISY_BASE, skewed=True, seed=seed)
            alerts = run_series(mon, rows)
            k = sum(a.name == "collapse" for a in alerts)
            series_hit += k > 0
            n_false += k
            other += len(alerts) - k
            rows, onset = planted_series(
                "collapse", noise=cv, base=NOISY_BASE, skewed=True, seed=seed
            )
            want = expected("collapse", onset, len(rows), horizon=config.horizon)
            delays[cv].append(_delay(run_series(mon, rows), want, "collapse"))
        print(f"| {cv:.0%} | {seeds} | {series_hit} | {n_false} | {other} |")
    print("\nCollapse on the noisy low channel (planted decay toward 0.01 nats, time constant 6 "
          "steps; the noiseless curve crosses the 0.05-nat floor ~5 steps after the onset):\n")  # fmt: skip
    _delay_table("relative sd", delays)


def binomial(seeds: int, config: MonitorConfig) -> None:
    """Divergence with success-rate rewards, severe_batches 1 vs the default (docstring, 1c)."""
    print(f"\n### Binomial rewards: success rate of {ROLLOUTS} rollouts around 0.17, {seeds} "
          "seeds per cell\n")  # fmt: skip
    print(
        "| channel | severe_batches | quiet series with a false divergence | false "
        "divergences | planted divergences | detected | recall | median delay | max delay |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, opts in BINOMIAL_CHANNELS:
        for k in sorted({1, config.severe_batches}):
            mon = Monitor(dataclasses.replace(config, severe_batches=k))
            series_hit = n_false = 0
            delays = []
            for seed in range(seeds):
                common = {"rollouts": ROLLOUTS, "reward_scale": 0.5, "seed": seed, **opts}
                rows, _ = planted_series("quiet", **common)
                n = sum(a.name == "divergence" for a in run_series(mon, rows))
                series_hit += n > 0
                n_false += n
                rows, onset = planted_series("divergence", amplitude=2.0, **common)
                want = expected("divergence", onset, len(rows), horizon=config.horizon)
                delays.append(_delay(run_series(mon, rows), want, "divergence"))
            print(f"| {name} | {k} | {series_hit} | {n_false} |"
                  + _delay_row("", delays).removeprefix("|  |"))  # fmt: skip


def cost() -> None:
    mon = Monitor()
    rows, _ = planted_series("productive", steps=2000, seed=0)
    for r in rows:
        r.update({f"entropy_{p}": r["entropy"] for p in ("plan", "act", "recover", "answer")})
        r["failure_rate"] = 0.1
    times = []
    for _ in range(5):
        state = mon.init()
        t0 = time.perf_counter()
        for i, r in enumerate(rows):
            _, state = mon.update(state, r, step=i + 1)
        times.append((time.perf_counter() - t0) / len(rows))
    us = statistics.median(times) * 1e6
    print("\n### Cost of one update (all 11 metrics, 5 entropy channels)\n")
    print(f"median {us:.0f} us per step over 5 x 2000 steps; 1% of a training step is reached "
          f"only by steps shorter than {us * 100 / 1e6:.3f} s.")  # fmt: skip


def trainer_overhead(runs: list[str]) -> None:
    """Share of each real training step spent in the monitor (module docstring, 4)."""
    from agentropy.rl.run import read_metrics

    print("\n### Overhead in our trainer (time/monitor_s / time/step_s)\n")
    print("| run | steps | median step s | median monitor ms | median share | max share |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for d in runs:
        rows = [r for r in read_metrics(d) if r.get("time/monitor_s") is not None]
        share = [r["time/monitor_s"] / r["time/step_s"] for r in rows]
        print(f"| {d} | {len(rows)} | {statistics.median(r['time/step_s'] for r in rows):.2f} | "
              f"{1e3 * statistics.median(r['time/monitor_s'] for r in rows):.1f} | "
              f"{100 * statistics.median(share):.3f}% | {100 * max(share):.3f}% |")  # fmt: skip


def synthetic_step_cost() -> None:
    """The monitor's per-step work on a synthetic step: 32 episodes, a (32, 512) batch."""
    import numpy as np

    from agentropy.monitor import Tracker
    from agentropy.monitor.rates import episode_rates
    from agentropy.trace import Episode, ToolCall, Turn

    rng = np.random.default_rng(0)
    eps = []
    for i in range(32):
        turns = []
        for k in range(3):
            n = 40
            turns.append(Turn(role="assistant", entropy=rng.random(n), token_ids=rng.integers(0, 500, n),
                              phase=rng.integers(0, 4, n)))  # fmt: skip
            turns.append(Turn(role="tool", call=ToolCall("lookup", {"entity": f"E{k}"}),
                              status="error" if k == 0 else "ok", content=f"E{k}: 3"))  # fmt: skip
        eps.append(Episode(episode_id=f"e{i}", turns=turns, meta={"end_reason": "answer"}))
    lp = -torch.rand(32, 512) * 3
    adv = torch.randn(32)
    mask = torch.rand(32, 512) > 0.5
    phase = torch.randint(0, 4, (32, 512))
    tracker = Tracker()
    times = []
    for step in range(1, 51):
        t0 = time.perf_counter()
        m = episode_rates(eps, known_tools=("lookup", "backup_lookup", "calc", "convert"))
        finalize(covariance_stats(lp, adv, mask, phase))
        m.update({"entropy/mean": 0.5 + 0.01 * (step % 3), "rollout/reward_mean": 0.3})
        tracker.step(step, m)
        times.append(time.perf_counter() - t0)
    ms = 1e3 * statistics.median(times)
    print("\n### Monitor work per synthetic step (32 episodes x 3 turns, (32, 512) batch)\n")
    print(f"median {ms:.1f} ms per step over 50 steps: {ms / 10:.2f}% of a 1 s training step.")


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    return -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)


def simulate(kind: str, seed: int, steps: int = 150, s: int = 64, v: int = 16, lr: float = 0.5):
    """Sampled policy gradient on a bandit; returns predicted (pg, npg) and realised dH per step."""
    g = torch.Generator().manual_seed(seed)
    reward_table = torch.randn(s, v, generator=g)
    if kind == "tabular":
        params = [(torch.randn(s, v, generator=g) * 1.5).requires_grad_()]

        def logits_fn() -> torch.Tensor:
            return params[0]
    else:
        emb = torch.eye(s)
        w1 = (torch.randn(s, 32, generator=g) / s**0.5).requires_grad_()
        w2 = (torch.randn(32, v, generator=g) * 0.8).requires_grad_()
        params = [w1, w2]

        def logits_fn() -> torch.Tensor:
            return torch.tanh(emb @ w1) @ w2 * 3

    opt = torch.optim.SGD(params, lr=lr)
    pred_pg, pred_npg, real = [], [], []
    for _ in range(steps):
        logits = logits_fn()
        states = torch.randint(0, s, (256,), generator=g)
        probs = torch.softmax(logits.detach()[states], -1)
        actions = torch.multinomial(probs, 1, generator=g).squeeze(1)
        r = reward_table[states, actions] + 0.3 * torch.randn(256, generator=g)
        adv = (r - r.mean()) / (r.std() + 1e-6)
        logp = torch.log_softmax(logits[states], -1).gather(1, actions[:, None]).squeeze(1)
        mask = torch.ones(1, 256, dtype=torch.bool)
        for variant, out in (("pg", pred_pg), ("npg", pred_npg)):
            st = covariance_stats(logp.detach()[None], adv[None], mask, variant=variant)
            out.append(-finalize(st)["all"]["cov"])
        h0 = _entropy(logits.detach()).mean()
        loss = -(logp * adv).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        real.append(float(_entropy(logits_fn().detach()).mean() - h0))
    return pred_pg, pred_npg, real


def attribution(seeds: int) -> None:
    print("\n### Predicted vs realised entropy change (simulated sampled policy gradient)\n")
    print("| policy | variant | steps | Pearson r | 95% CI | sign agreement | fitted scale |")
    print("| --- | --- | ---: | ---: | --- | ---: | ---: |")
    for kind in ("tabular", "mlp"):
        pg, npg, real = [], [], []
        for seed in range(max(1, seeds // 5)):
            a, b, c = simulate(kind, seed)
            pg += a
            npg += b
            real += c
        for variant, pred in (("pg", pg), ("npg", npg)):
            out = agreement(np.asarray(pred), np.asarray(real), seed=0)
            ci = f"[{out['ci'][0]:.3f}, {out['ci'][1]:.3f}]" if out["ci"] else "-"
            print(f"| {kind} | {variant} | {out['n']} | {out['r']:.3f} | {ci} | "
                  f"{out['sign_agreement']:.2f} | {out['eta']:.3g} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=20, help="series per (pattern, amplitude, noise)")
    ap.add_argument("--noisy-seeds", type=int, default=50, help="series per noisy-channel cell")
    ap.add_argument("--binomial-seeds", type=int, default=100, help="series per binomial cell")
    ap.add_argument("--runs", nargs="*", default=[], help="agentropy train run directories")
    ap.add_argument("--overhead-only", action="store_true", help="only the overhead sections")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if not args.overhead_only:
        planted(args.seeds, MonitorConfig())
        noisy_low(args.noisy_seeds, MonitorConfig())
        binomial(args.binomial_seeds, MonitorConfig())
        cost()
        attribution(args.seeds)
    synthetic_step_cost()
    if args.runs:
        trainer_overhead(args.runs)


if __name__ == "__main__":
    main()
