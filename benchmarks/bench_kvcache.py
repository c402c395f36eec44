"""The runner's in-place KV cache vs transformers' ``DynamicCache`` (issue 18, target 2).

Same model (the embedded agent), same ToolWorld tasks, same batch, same seeds: multi-turn
rollouts through :func:`agentropy.agent.runner.rollout` with ``RunnerConfig.kv_cache="growing"``
(ours: each layer's keys/values in a buffer with spare columns, a step's block written in place)
and ``"dynamic"`` (``DynamicCache``: ``torch.cat`` re-copies the whole cache at every step),
interleaved in one process, alternating which runs first. Reports CPU seconds (this thread) and
wall seconds per batch, assistant tokens per CPU second, and checks that both give the same
episodes (token ids) and the same log-probs.

    AGENTROPY_HOME=... OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_kvcache.py \
        [--tasks 4 --group 4 --level 2 --turns 4 --length 160 --rounds 5]
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
    args = ap.parse_args()

    model, tok = _agent()
    world, tasks = _world_and_tasks(args.level, args.tasks)
    batch = [t for t in tasks for _ in range(args.group)]
    base = RunnerConfig(
        max_turns=args.turns,
        max_new_tokens=args.length,
        max_tokens=args.length,
        batch_size=len(batch),
        record_inputs=True,
    )
    cfgs = {k: dataclasses.replace(base, kv_cache=k) for k in ("growing", "dynamic")}
    load0 = os.getloadavg()
    for k in cfgs:  # warm-up
        _run(model, tok, world, batch, cfgs[k], 0)
    res: dict[str, list[dict]] = {k: [] for k in cfgs}
    same = True
    for r in range(args.rounds):
        order = ("growing", "dynamic") if r % 2 == 0 else ("dynamic", "growing")
        got = {k: _run(model, tok, world, batch, cfgs[k], r + 1) for k in order}
        same &= got["growing"]["ids"] == got["dynamic"]["ids"]
        same &= all(
            np.array_equal(a, b)
            for a, b in zip(got["growing"]["logprob"], got["dynamic"]["logprob"], strict=True)
        )
        for k in cfgs:
            res[k].append(got[k])
    load1 = os.getloadavg()

    def med(k: str, f: str) -> float:
        return statistics.median(x[f] for x in res[k])

    ratios = [
        (g["tokens"] / g["cpu"]) / (d["tokens"] / d["cpu"])
        for g, d in zip(res["growing"], res["dynamic"], strict=True)
    ]
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"KV cache benchmark — {now}")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); load average "
        f"{load0[0]:.1f} before, {load1[0]:.1f} after; {args.rounds} interleaved rounds"
    )
    print(
        f"batch {len(batch)} ({args.tasks} level-{args.level} train tasks x {args.group}), "
        f"<= {args.turns} turns, {args.length}-token budget, T = 1\n"
    )
    print("| KV cache | CPU s / batch | wall s / batch | assistant tokens / CPU s |")
    print("| --- | ---: | ---: | ---: |")
    for k, label in (("dynamic", "`DynamicCache` (torch.cat)"), ("growing", "ours (in place)")):
        tps = statistics.median(x["tokens"] / x["cpu"] for x in res[k])
        print(f"| {label} | {med(k, 'cpu'):.3f} | {med(k, 'wall'):.3f} | {tps:,.0f} |")
    print(
        f"\nours / DynamicCache, tokens per CPU second: {statistics.median(ratios):.2f}x "
        f"(median of {len(ratios)} paired rounds; range {min(ratios):.2f}-{max(ratios):.2f}x); "
        f"same episodes and log-probs: {same}"
    )
    if not same:
        raise SystemExit("the two caches gave different episodes")


if __name__ == "__main__":
    main()
