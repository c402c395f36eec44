"""Scratch measurement (notes only): eval table per level and fault family, breath metrics.

Usage: python notes/measure.py AGENT_DIR EPISODES POLICIES FAMILIES [LEVELS]
Prints, per (family, level, policy): success, recovery (episodes with a failure that still end
correct); per (family, policy): the share of failure triggers whose baseline sits at the eps
floor and the median plan-phase / act-phase token entropy (model entropy, T = 1, nats).
"""

import sys
import time

import numpy as np
import torch

from agentropy.agent import tiny
from agentropy.agent.runner import RunnerConfig, rollout
from agentropy.analysis.breath import BreathConfig, TraceTable, analyze_triggers
from agentropy.control.temperature import schedule_from_name
from agentropy.env.toolworld import ToolWorld, ToolWorldConfig
from agentropy.pipelines.compare import policy_row

path, episodes, policies, families = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
levels = tuple(int(x) for x in (sys.argv[5] if len(sys.argv) > 5 else "0,1,2,3").split(","))
torch.set_num_threads(1)
model, tok = tiny.load_agent(path)
eps = BreathConfig().eps
for family in families.split(","):
    world = ToolWorld(ToolWorldConfig(faults=family))
    for policy in policies.split(","):
        t0 = time.time()
        eps_all = []
        for level in levels:
            tasks = world.tasks(split="test", level=level, n=episodes, seed=0)
            eps_l = rollout(model, tok, world, tasks, schedule=schedule_from_name(policy),
                            config=RunnerConfig(batch_size=32), seed=0, policy_name=policy)
            r = policy_row(eps_l, level=level, policy=policy)
            rec = "-" if r["recovery"] is None else f"{r['recovery']:.2f} {r['recovery_ci']}"
            print(f"{family} L{level} {policy:<13} success {r['success']:.3f} {r['success_ci']} "
                  f"recovery {rec} (n={r['failure_episodes']}) tokens {r['tokens_per_episode']:.0f}",
                  flush=True)
            eps_all += eps_l
        table = TraceTable.from_episodes(eps_all)
        trig = analyze_triggers(table)
        failed = trig.failed
        base = trig.stats.baseline[failed]
        floor = float(np.mean(base <= eps + 1e-12)) if base.size else float("nan")
        ent = {"plan": [], "act": [], "recover": [], "answer": []}
        for e in eps_all:
            for t in e.turns:
                if t.role == "assistant" and t.phase is not None:
                    for h, ph in zip(t.entropy, t.phase_names):
                        ent.setdefault(ph, []).append(h)
        med = {k: (round(float(np.median(v)), 3) if v else None) for k, v in ent.items()}
        print(f"{family} {policy} failure_triggers {int(failed.sum())} floor_share {floor:.3f} "
              f"median_entropy {med} wall_s {time.time() - t0:.0f}", flush=True)
