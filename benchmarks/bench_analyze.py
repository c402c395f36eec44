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
  are decoded, the per-turn columns of store format 2 replace the ``turns`` JSON, and two
  threads each read and analyse a part (``workers=2``), the main thread adding the results in
  order; timed also with one thread (``workers=1``: read and analyse one part after another).

With ``--format1`` the same episodes are also written as a store of format 1 (the layout before
the turn columns: the analyzer decodes each part's ``turns`` JSON) and the fast path is timed on
it too, in the same rounds.

All summaries must be identical (the whole JSON summary, not just counts): the script exits
with status 1 otherwise. It prints the best time of each path, the median of the per-round
ratios, the CPU time of each path (all threads; less sensitive to other jobs than wall time on
a shared machine), the load average before and after, and each path's peak RSS, measured in a
fresh process per path (so neither the generated store nor the other path inflates it).

    .venv/bin/python benchmarks/bench_analyze.py            # 10M tokens
    .venv/bin/python benchmarks/bench_analyze.py --tokens 1000000 --repeats 5
    .venv/bin/python benchmarks/bench_analyze.py --tokens 2000000 --report   # + the HTML report
    .venv/bin/python benchmarks/bench_analyze.py --format1   # + the fast path on a format-1 store

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


class _FormatOneWriter(TraceWriter):
    """Writes a store as writers before format 2 did (no turn columns, seal version 1)."""

    _format_version = 1


def _write_store(store: Path, n_ep: int, args: argparse.Namespace, *, format1: bool) -> float:
    """Write the synthetic store (the same episodes for the same seed); returns seconds."""
    rng = np.random.default_rng(0)
    writer = _FormatOneWriter if format1 else TraceWriter
    t0 = time.perf_counter()
    with writer(store, episodes_per_part=args.episodes_per_part) as w:
        for i in range(n_ep):
            w.write(synthetic_episode(i, rng, args.tokens_per_episode))
    return time.perf_counter() - t0


def _rss_child(store: Path, validation: str, workers: int) -> None:
    """Child mode: analyze ``store`` once and print the tokens (peak RSS is read by the parent)."""
    summary = analyze_paths(store, validation=validation, workers=workers)  # type: ignore[arg-type]
    print(summary["tokens"])


def _peak_rss_mb(store: Path, validation: str, workers: int) -> float:
    """Peak RSS (MB) of a fresh process that imports agentropy and analyzes ``store`` once."""
    here = Path(__file__).resolve()
    sys.path.insert(0, str(here.parent))
    from _measure import run_isolated

    m = run_isolated(
        [sys.executable, str(here), "--rss-child", str(store), validation, str(workers)]
    )
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
    ap.add_argument(
        "--format1", action="store_true", help="also time the fast path on a format-1 store"
    )
    ap.add_argument("--rss-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        _rss_child(Path(args.rss_child[0]), args.rss_child[1], int(args.rss_child[2]))
        return

    root = Path(tempfile.mkdtemp(prefix="bench_analyze_", dir=args.dir))
    store = root / "run.parquet"
    n_ep = max(1, args.tokens // args.tokens_per_episode)
    t_write = _write_store(store, n_ep, args, format1=False)
    size_mb = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 2**20
    # path name -> (store, validation, workers)
    paths = {"full": (store, "full", 1), "serial": (store, "seal", 1), "seal": (store, "seal", 2)}
    if args.format1:
        old_store = root / "format1.parquet"
        _write_store(old_store, n_ep, args, format1=True)
        paths["format1"] = (old_store, "seal", 2)

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    analyze_paths(store)  # imports (scipy via ruptures), page cache
    t_first = time.perf_counter() - t0
    times: dict[str, list[float]] = {v: [] for v in paths}
    cpu: dict[str, list[float]] = {v: [] for v in paths}
    summaries: dict[str, dict] = {}
    for _ in range(args.repeats):
        for name, (path, validation, workers) in paths.items():
            t0, c0 = time.perf_counter(), time.process_time()
            summary = analyze_paths(path, validation=validation, workers=workers)  # type: ignore[arg-type]
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            if summaries.setdefault(name, summary) != summary:
                raise SystemExit(f"error: two {name} runs gave different summaries")
    load_after = os.getloadavg()
    identical = all(summaries[v] == summaries["full"] for v in paths)
    report_times = []
    if args.report:
        from agentropy.report.html import report_from_paths

        for _ in range(args.repeats):
            t0 = time.perf_counter()
            report_from_paths([store], root / "report.html")
            report_times.append(time.perf_counter() - t0)
    rss = {name: _peak_rss_mb(path, v, w) for name, (path, v, w) in paths.items()}
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
    labels = {
        "full": "reference (validate every part)",
        "serial": "fast, 1 thread (read + analyse part by part)",
        "seal": "fast, 2 threads (parts in parallel; the default)",
        "format1": "fast, 2 threads, format-1 store (turns JSON)",
    }
    for v in paths:
        name = labels[v]
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
    rp = sorted(f / s for f, s in zip(times["serial"], times["seal"], strict=True))
    cp = sorted(s / f for f, s in zip(cpu["serial"], cpu["seal"], strict=True))
    print(
        f"fast, 2 threads / 1 thread: {rp[len(rp) // 2]:.2f}x wall (range {rp[0]:.2f}-"
        f"{rp[-1]:.2f}x), CPU 2 threads / 1 thread {cp[len(cp) // 2]:.2f}x (medians)"
    )
    if args.format1:
        r1 = sorted(f / s for f, s in zip(times["format1"], times["seal"], strict=True))
        c1 = sorted(f / s for f, s in zip(cpu["format1"], cpu["seal"], strict=True))
        print(
            f"fast, format 2 / format 1 store: {r1[len(r1) // 2]:.2f}x wall, "
            f"{c1[len(c1) // 2]:.2f}x CPU (medians of {len(r1)} rounds; wall range "
            f"{r1[0]:.2f}-{r1[-1]:.2f}x)"
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
        raise SystemExit("error: a fast path's summary differs from the reference path's")


if __name__ == "__main__":
    main()
