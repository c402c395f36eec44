"""Throughput of ``agentropy analyze`` over a Parquet trace store: fast path vs reference path.

Generates a store of synthetic episodes (default 10M assistant tokens, written with
:class:`agentropy.trace.TraceWriter`: ~1,000 tokens per episode over 5 assistant turns separated
by 4 tool calls, with token ids, phases, failures, eruptions and the odd loop), then times
:func:`agentropy.analysis.summary.analyze_paths` on it two ways, interleaved in one process
(reference, fast, reference, fast, ...), so that both see the same machine load:

- **reference**: ``validation="full"``: every part re-validated (every turn and token row
  cross-checked), all token columns decoded, one part at a time;
- **fast** (the default of ``agentropy analyze``): ``validation="seal"``: parts whose writer's
  seal matches their files skip re-validation, only the three token columns the analysis reads
  are decoded, and the next part is read in a background thread.

Both summaries must be identical (the whole JSON summary, not just counts): the script exits
with status 1 otherwise. It prints the best time of each path, the median of the per-round
ratios, the CPU time of each path (all threads; less sensitive to other jobs than wall time on
a shared machine), the load average before and after, and each path's peak RSS, measured in a
fresh process per path (so neither the generated store nor the other path inflates it).

    .venv/bin/python benchmarks/bench_analyze.py            # 10M tokens
    .venv/bin/python benchmarks/bench_analyze.py --tokens 1000000 --repeats 5
    .venv/bin/python benchmarks/bench_analyze.py --tokens 2000000 --report   # + the HTML report

``--report`` also times :func:`agentropy.report.html.report_from_paths` on the same store (one
streamed pass: summary, claims and timeline examples; needs plotly) next to the fast analyze.

The first analyze run includes one-time imports (ruptures pulls in scipy.stats, ~1-3 s) and is
not counted. Timings are wall-clock on whatever else the machine is doing: quote the ratios and
the load average with them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import sys
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


def _rss_child(store: Path, validation: str) -> None:
    """Child mode: analyze ``store`` once and print the tokens (peak RSS is read by the parent)."""
    summary = analyze_paths(store, validation=validation)  # type: ignore[arg-type]
    print(summary["tokens"])


def _peak_rss_mb(store: Path, validation: str) -> float:
    """Peak RSS (MB) of a fresh process that imports agentropy and analyzes ``store`` once."""
    here = Path(__file__).resolve()
    sys.path.insert(0, str(here.parent))
    from _measure import run_isolated

    m = run_isolated([sys.executable, str(here), "--rss-child", str(store), validation])
    m.check()
    return m.peak_rss_bytes / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=10_000_000, help="assistant tokens to generate")
    ap.add_argument("--tokens-per-episode", type=int, default=1000)
    ap.add_argument("--episodes-per-part", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (best is kept)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated store")
    ap.add_argument("--report", action="store_true", help="also time the HTML report (plotly)")
    ap.add_argument("--rss-child", nargs=2, metavar=("STORE", "VALIDATION"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        _rss_child(Path(args.rss_child[0]), args.rss_child[1])
        return

    root = Path(tempfile.mkdtemp(prefix="bench_analyze_", dir=args.dir))
    store = root / "run.parquet"
    n_ep = max(1, args.tokens // args.tokens_per_episode)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    with TraceWriter(store, episodes_per_part=args.episodes_per_part) as w:
        for i in range(n_ep):
            w.write(synthetic_episode(i, rng, args.tokens_per_episode))
    t_write = time.perf_counter() - t0
    size_mb = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 2**20

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    analyze_paths(store)  # imports (scipy via ruptures), page cache
    t_first = time.perf_counter() - t0
    times: dict[str, list[float]] = {"full": [], "seal": []}
    cpu: dict[str, list[float]] = {"full": [], "seal": []}
    summaries: dict[str, dict] = {}
    for _ in range(args.repeats):
        for validation in ("full", "seal"):
            t0, c0 = time.perf_counter(), time.process_time()
            summary = analyze_paths(store, validation=validation)  # type: ignore[arg-type]
            times[validation].append(time.perf_counter() - t0)
            cpu[validation].append(time.process_time() - c0)
            if summaries.setdefault(validation, summary) != summary:
                raise SystemExit(f"error: two {validation} runs gave different summaries")
    load_after = os.getloadavg()
    identical = summaries["full"] == summaries["seal"]
    report_times = []
    if args.report:
        from agentropy.report.html import report_from_paths

        for _ in range(args.repeats):
            t0 = time.perf_counter()
            report_from_paths([store], root / "report.html")
            report_times.append(time.perf_counter() - t0)
    rss = {v: _peak_rss_mb(store, v) for v in ("full", "seal")}
    if not args.keep:
        shutil.rmtree(root)

    summary = summaries["seal"]
    n_tok = summary["tokens"]
    best = {v: min(t) for v, t in times.items()}
    ratios = sorted(f / s for f, s in zip(times["full"], times["seal"], strict=True))
    print(f"agentropy analyze benchmark — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {platform.platform()}")
    print(
        f"load average (1/5/15 min) before {'/'.join(f'{x:.1f}' for x in load_before)}, "
        f"after {'/'.join(f'{x:.1f}' for x in load_after)}; {args.repeats} interleaved rounds"
    )
    print()
    n_parts = -(-n_ep // args.episodes_per_part)
    print(
        f"store: {n_tok:,} tokens, {summary['episodes']:,} episodes, {n_parts} parts, "
        f"{size_mb:.0f} MB, written in {t_write:.1f} s; first (cold) analyze {t_first:.2f} s"
    )
    print()
    print(
        "| path | analyze s (best) | tokens/s (best) | CPU s (best, all threads) "
        "| tokens per CPU-second | peak RSS MB |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for v, name in (("full", "reference (validate every part)"), ("seal", "fast (sealed parts)")):
        c = min(cpu[v])
        print(
            f"| {name} | {best[v]:.2f} | {n_tok / best[v]:,.0f} | {c:.2f} | {n_tok / c:,.0f} "
            f"| {rss[v]:.0f} |"
        )
    print()
    print(
        f"fast / reference speed: {ratios[len(ratios) // 2]:.2f}x (median of {len(ratios)} "
        f"rounds; range {ratios[0]:.2f}-{ratios[-1]:.2f}x); summaries identical: {identical}"
    )
    if report_times:
        print()
        print("| report s (first) | report s (best) | report / fast analyze (best) |")
        print("| ---: | ---: | ---: |")
        rb = min(report_times)
        print(f"| {report_times[0]:.2f} | {rb:.2f} | {rb / best['seal']:.2f} |")
    print()
    print(
        f"eruptions {len(summary['eruptions']):,}, loops {len(summary['loops']):,}, "
        f"training steps {summary['training']['steps']}, cycles "
        f"{len(summary['training']['cycles'])}"
    )
    if not identical:
        raise SystemExit("error: the fast path's summary differs from the reference path's")


if __name__ == "__main__":
    main()
