"""Throughput of ``agentropy analyze`` over a Parquet trace store.

Generates a store of synthetic episodes (default 10M assistant tokens, written with
:class:`agentropy.trace.TraceWriter`: ~1,000 tokens per episode over 5 assistant turns separated
by 4 tool calls, with token ids, phases, failures, eruptions and the odd loop), then times
:func:`agentropy.analysis.summary.analyze_paths` on it (streaming part by part) and prints a
markdown table with the machine and the date.

    .venv/bin/python benchmarks/bench_analyze.py            # 10M tokens
    .venv/bin/python benchmarks/bench_analyze.py --tokens 1000000
    .venv/bin/python benchmarks/bench_analyze.py --tokens 2000000 --report   # + the HTML report

``--report`` also times :func:`agentropy.report.html.report_from_paths` on the same store (one
streamed pass: summary, claims and timeline examples; needs plotly) and prints its time next to
the analyze time, so the report's overhead over the bare analysis is visible.

The first analyze run includes one-time imports (ruptures pulls in scipy.stats, ~1-3 s);
``--repeats`` > 1 also reports the best run. Timings are wall-clock on whatever else the machine is doing; repeat on a quiet machine before
quoting them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from agentropy.analysis.summary import analyze_paths
from agentropy.trace import PHASE_CODE, Episode, ToolCall, TraceWriter, Turn


def synthetic_episode(i: int, rng: np.random.Generator, tokens_per_episode: int) -> Episode:
    """~tokens_per_episode assistant tokens in 5 turns, 4 tool calls (some failing)."""
    n_turns = 5
    lens = rng.multinomial(tokens_per_episode - 5 * n_turns, np.ones(n_turns) / n_turns) + 5
    turns: list[Turn] = []
    failed = False
    for j, n in enumerate(lens):
        base = rng.gamma(2.0, 0.15, n).astype(np.float32)
        if failed and rng.random() < 0.7:  # an eruption that usually contracts
            k = int(rng.integers(8, 64))
            base[:k] *= rng.uniform(1.5, 5.0)
        phase = np.full(n, PHASE_CODE["recover" if failed else "plan"], np.int8)
        phase[-min(8, n) :] = PHASE_CODE["act" if j < n_turns - 1 else "answer"]
        ids = rng.integers(0, 32000, n)
        if rng.random() < 0.02:  # a degenerate repeating turn
            ids = np.tile(ids[:5], n // 5 + 1)[:n]
        turns.append(
            Turn(
                role="assistant",
                entropy=base,
                token_ids=ids,
                phase=phase,
                logprob=-base,
                temperature=np.ones(n, np.float32),
            )
        )
        if j < n_turns - 1:
            failed = rng.random() < 0.3
            status = ("error" if rng.random() < 0.8 else "unexpected") if failed else "ok"
            turns.append(
                Turn(
                    role="tool",
                    call=ToolCall("lookup", {"entity": f"x{int(rng.integers(0, 3))}"}),
                    status=status,
                    content="upstream failure" if failed else "value 42",
                    latency_s=float(rng.exponential(0.2)),
                )
            )
    return Episode(
        episode_id=f"ep{i:08d}",
        turns=turns,
        task_id=f"task{i % 500}",
        step=i // 64,
        policy="greedy" if i % 2 else "phase",
        success=bool(rng.random() < 0.6),
        reward=float(rng.random()),
        latency_s=float(rng.exponential(5.0)),
    )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=10_000_000, help="assistant tokens to generate")
    ap.add_argument("--tokens-per-episode", type=int, default=1000)
    ap.add_argument("--episodes-per-part", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=1, help="timed analyze runs (best is kept)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated store")
    ap.add_argument("--report", action="store_true", help="also time the HTML report (plotly)")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench_analyze_", dir=args.dir))
    store = root / "run.parquet"
    n_ep = max(1, args.tokens // args.tokens_per_episode)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    with TraceWriter(store, episodes_per_part=args.episodes_per_part) as w:
        for i in range(n_ep):
            w.write(synthetic_episode(i, rng, args.tokens_per_episode))
    t_write = time.perf_counter() - t0

    times = []
    summary = {}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        summary = analyze_paths(store)
        times.append(time.perf_counter() - t0)
    t_an = min(times)
    report_times = []
    if args.report:
        from agentropy.report.html import report_from_paths

        for _ in range(args.repeats):
            t0 = time.perf_counter()
            report_from_paths([store], root / "report.html")
            report_times.append(time.perf_counter() - t0)
    n_tok = summary["tokens"]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size_mb = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 2**20
    if not args.keep:
        shutil.rmtree(root)

    print(f"agentropy analyze benchmark — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {platform.platform()}")
    print()
    print(
        "| tokens | episodes | parts | store MB | write s | analyze s (first) | analyze s (best) "
        "| tokens/s (best) | peak RSS MB |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    n_parts = -(-n_ep // args.episodes_per_part)
    print(
        f"| {n_tok:,} | {summary['episodes']:,} | {n_parts} | {size_mb:.0f} | {t_write:.1f} "
        f"| {times[0]:.2f} | {t_an:.2f} | {n_tok / t_an:,.0f} | {rss_mb:.0f} |"
    )
    if report_times:
        print()
        print("| report s (first) | report s (best) | report / analyze (best) |")
        print("| ---: | ---: | ---: |")
        best = min(report_times)
        print(f"| {report_times[0]:.2f} | {best:.2f} | {best / t_an:.2f} |")
    print()
    print(
        f"eruptions {len(summary['eruptions']):,}, loops {len(summary['loops']):,}, "
        f"training steps {summary['training']['steps']}, cycles "
        f"{len(summary['training']['cycles'])}"
    )


if __name__ == "__main__":
    main()
