"""The runner's KV cache and shared prompt prefill vs the runner without them (issue 18, target 2).

Same model (the embedded agent, or ``--inflate`` it as in ``bench_multiturn_vs_trl.py``), same
ToolWorld tasks, same batch of GRPO groups (``--tasks`` x ``--group``), same seeds: multi-turn
rollouts through :func:`agentropy.agent.runner.rollout` three ways, interleaved in one process
(order rotating per round):

- ``dynamic``: ``RunnerConfig(kv_cache="dynamic")``: transformers' ``DynamicCache``
  (``torch.cat`` re-copies the whole cache at every step), every row's prompt fed: the runner
  before issue 18's last pass;
- ``growing``: ``kv_cache="growing", share_prompts=False``: each layer's keys/values in a
  buffer with spare columns, a step's block written in place;
- ``growing + shared prompts``: the default: each distinct prompt prefilled once.

Reports CPU seconds (this thread) and wall seconds per batch, assistant tokens per CPU second,
and checks that ``growing`` gives the same episodes and log-probs as ``dynamic`` bit for bit, and
``shared prompts`` the same token ids (log-probs differ only by the prefill's batch shape).

    AGENTROPY_HOME=... OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_kvcache.py \
        [--tasks 4 --group 4 --level 2 --turns 4 --length 160 --rounds 5 --inflate 512,8,64]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import platform
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_multiturn_vs_trl import _agent, _world_and_tasks


def _run(model: Any, tok: Any, world: Any, batch: list[Any], cfg: Any, seed: int) -> dict:
    from agentropy.agent.runner import rollout
    from agentropy.control.base import ConstantTemperature

    t0, c0 = time.perf_counter(), time.thread_time()
    eps = rollout(
        model, tok, world, batch, schedule=ConstantTemperature(1.0), config=cfg, seed=seed
    )
    cpu, wall = time.thread_time() - c0, time.perf_counter() - t0
    return {
        "cpu": cpu,
        "wall": wall,
        "tokens": sum(t.n_tokens for e in eps for t in e.assistant_turns),
        "ids": [e.meta["input_ids"] for e in eps],
        "n": len(eps),
        "logprob": [t.logprob for e in eps for t in e.assistant_turns],
    }


def main() -> None:
    import numpy as np
    import torch

    from agentropy.agent.runner import RunnerConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--level", type=int, default=2)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--length", type=int, default=160)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--inflate", help="HIDDEN,LAYERS[,HEAD_DIM]: the enlarged agent")
    args = ap.parse_args()

    model, tok = _agent(args.inflate)
    world, tasks = _world_and_tasks(args.level, args.tasks)
    batch = [t for t in tasks for _ in range(args.group)]
    base = RunnerConfig(
        max_turns=args.turns,
        max_new_tokens=args.length,
        max_tokens=args.length,
        batch_size=len(batch),
        record_inputs=True,
    )
    cfgs = {
        "dynamic": dataclasses.replace(base, kv_cache="dynamic", share_prompts=False),
        "growing": dataclasses.replace(base, kv_cache="growing", share_prompts=False),
        "shared": base,
    }
    labels = {
        "dynamic": "`DynamicCache` (torch.cat), every prompt fed",
        "growing": "in-place cache, every prompt fed",
        "shared": "in-place cache + shared prompts (default)",
    }
    load0 = os.getloadavg()
    for k in cfgs:  # warm-up
        _run(model, tok, world, batch, cfgs[k], 0)
    res: dict[str, list[dict]] = {k: [] for k in cfgs}
    exact, same_ids, lp_diff = True, True, 0.0
    names = list(cfgs)
    for r in range(args.rounds):
        order = names[r % 3 :] + names[: r % 3]
        got = {k: _run(model, tok, world, batch, cfgs[k], r + 1) for k in order}
        exact &= got["growing"]["ids"] == got["dynamic"]["ids"] and all(
            np.array_equal(a, b)
            for a, b in zip(got["growing"]["logprob"], got["dynamic"]["logprob"], strict=True)
        )
        same_ids &= got["shared"]["ids"] == got["dynamic"]["ids"]
        if got["shared"]["ids"] == got["dynamic"]["ids"]:
            lp_diff = max(
                lp_diff,
                *(
                    float(np.abs(a - b).max(initial=0.0))
                    for a, b in zip(
                        got["shared"]["logprob"], got["dynamic"]["logprob"], strict=True
                    )
                ),
            )
        for k in cfgs:
            res[k].append(got[k])
    load1 = os.getloadavg()

    def med(k: str, f: str) -> float:
        return statistics.median(x[f] for x in res[k])

    def ratio(k: str) -> list[float]:
        return [
            (g["tokens"] / g["cpu"]) / (d["tokens"] / d["cpu"])
            for g, d in zip(res[k], res["dynamic"], strict=True)
        ]

    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"KV cache benchmark — {now}")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); load average "
        f"{load0[0]:.1f} before, {load1[0]:.1f} after; {args.rounds} interleaved rounds"
    )
    model_desc = f"embedded agent inflated to {args.inflate}" if args.inflate else "embedded agent"
    print(
        f"{model_desc}; batch {len(batch)} ({args.tasks} level-{args.level} train tasks x "
        f"{args.group}), <= {args.turns} turns, {args.length}-token budget, T = 1\n"
    )
    print("| runner | CPU s / batch | wall s / batch | assistant tokens / CPU s | x dynamic |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for k in cfgs:
        tps = statistics.median(x["tokens"] / x["cpu"] for x in res[k])
        rs = ratio(k)
        print(
            f"| {labels[k]} | {med(k, 'cpu'):.3f} | {med(k, 'wall'):.3f} | {tps:,.0f} | "
            f"{statistics.median(rs):.2f} [{min(rs):.2f}-{max(rs):.2f}]x |"
        )
    print(
        f"\nx dynamic: tokens per CPU second over the dynamic runner's, median [min-max] of "
        f"{args.rounds} paired rounds. In-place cache vs DynamicCache, same episodes and "
        f"log-probs bit for bit: {exact}; shared prompts, same token ids: {same_ids} "
        f"(max |log-prob difference| {lp_diff:.1e})"
    )
    if not exact:
        raise SystemExit("the in-place cache changed the episodes")


if __name__ == "__main__":
    main()
