"""The temperature controller's share of generation time inside our own rollout runner (issue 18,
target 1), on real ToolWorld episodes of the embedded agent.

``bench_controller.py`` measures the controller as a transformers ``LogitsProcessor`` inside
``generate``, with synthetic phase spans. This script measures it where agents are rolled out:
:func:`agentropy.agent.runner.rollout`, batch 32 by default, the embedded agent on held-out
ToolWorld tasks (levels 1-3, seen faults), so phases, failures and recoveries are the agent's
own. The controller's part of each decoding step is the runner's ``_schedule_step`` (the
per-row observation, the schedule's update, the temperatures' checks); its CPU time (this
thread) is accumulated and reported as a share of the rollout's CPU time, per schedule, over
interleaved rounds. The model entropy of every token is part of the runner's record (DESIGN.md's
data model) whatever the schedule, so it is not counted as the controller's; the sampling
entropy likewise.

    AGENTROPY_HOME=... OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_controller_runner.py \
        [--batch 32 --rounds 3 --schedules constant:1.0,phase,edt]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_multiturn_vs_trl import _agent


def main() -> None:
    import numpy as np

    from agentropy.agent import runner
    from agentropy.control.temperature import schedule_from_name
    from agentropy.env.toolworld import ToolWorld, ToolWorldConfig
    from agentropy.trace import PHASE_CODE

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--schedules", default="constant:1.0,phase,edt")
    args = ap.parse_args()

    model, tok = _agent()
    world = ToolWorld(ToolWorldConfig(seed=0))
    per = -(-args.batch // 3)
    tasks = [t for lv in (1, 2, 3) for t in world.tasks(split="test", level=lv, n=per, seed=0)]
    tasks = tasks[: args.batch]
    cfg = runner.RunnerConfig(batch_size=args.batch)
    inner = runner._schedule_step
    spent = [0.0]

    def timed_step(*a: Any, **kw: Any) -> Any:
        c0 = time.thread_time()
        out = inner(*a, **kw)
        spent[0] += time.thread_time() - c0
        return out

    runner._schedule_step = timed_step  # type: ignore[assignment]
    names = args.schedules.split(",")
    res: dict[str, list[dict]] = {k: [] for k in names}
    load0 = os.getloadavg()
    for r in range(args.rounds + 1):  # round 0 warms up
        for name in names if r % 2 else names[::-1]:
            spent[0] = 0.0
            c0 = time.thread_time()
            eps = runner.rollout(
                model, tok, world, tasks, schedule=schedule_from_name(name), config=cfg, seed=r
            )
            cpu = time.thread_time() - c0
            turns = [t for e in eps for t in e.assistant_turns]
            phase = np.concatenate([t.phase for t in turns])
            if r:
                res[name].append(
                    {
                        "cpu": cpu,
                        "share": spent[0] / cpu,
                        "tokens": int(phase.size),
                        "recover": float((phase == PHASE_CODE["recover"]).mean()),
                        "success": float(np.mean([e.success for e in eps])),
                    }
                )
    load1 = os.getloadavg()
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"Controller inside the rollout runner — {now}")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); load average "
        f"{load0[0]:.1f} before, {load1[0]:.1f} after"
    )
    print(
        f"embedded agent, batch {args.batch} (held-out ToolWorld tasks, levels 1-3), "
        f"{args.rounds} interleaved rounds; medians\n"
    )
    print(
        "| schedule | rollout CPU s | assistant tokens | recover tokens | success | "
        "ms CPU / 1k tokens in the controller | controller share of rollout CPU |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in names:
        rows = res[name]

        def med(f: str, rows: list[dict] = rows) -> float:
            return statistics.median(x[f] for x in rows)

        per_k = statistics.median(x["share"] * x["cpu"] / x["tokens"] * 1e6 for x in rows)
        shares = [x["share"] for x in rows]
        print(
            f"| {name} | {med('cpu'):.2f} | {med('tokens'):,.0f} | {med('recover'):.1%} | "
            f"{med('success'):.0%} | {per_k:.1f} | **{med('share'):.1%}** "
            f"[{min(shares):.1%}-{max(shares):.1%}] |"
        )


if __name__ == "__main__":
    main()
