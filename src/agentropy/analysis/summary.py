"""Streaming analyzer: accumulate parts of a trace store, then assemble the JSON summary.

:class:`Analyzer` takes episodes one part at a time (an in-memory list, a JSONL file, a Parquet
part), analyses each part vectorised (:mod:`breath`, :mod:`loops`), keeps only small
per-episode and per-failure records, and builds the summary at the end (a part's analysis,
:meth:`Analyzer.analyze_part`, is apart from adding it, :meth:`Analyzer.add_part`, so that
:func:`analyze_paths` analyses a store's parts in two threads and adds them in order); memory grows with the
number of episodes and events, never with tokens. Results do not depend on how the episodes are
split into parts or ordered (lists are sorted by ``episode_id``, ``turn_index``).

The records are kept once and read by everything downstream, so one pass over the traces serves
the summary, the claims (:meth:`Analyzer.evidence`, an :class:`Evidence`), the policy-comparison
table (:mod:`agentropy.pipelines.compare`) and the report: :meth:`Analyzer.add_table` returns the
part's event records, so the report can keep its example episodes from the same part while it is
in memory instead of reading the files again.

JSON summary keys (stable; ``null`` wherever a value is undefined, never NaN):

- ``episodes``, ``tokens`` (assistant tokens), ``dropped_nonfinite`` (tokens dropped by
  ``--nan-policy drop``), ``triggers`` (tool turns), ``no_response`` (triggers with an empty
  post-trigger stream), ``tool_failures`` (tool turns with status ``error`` / ``unexpected``).
- ``eruptions``: list of ``{episode_id, turn_index, spike_ratio, baseline, contracted,
  tokens_to_contraction (null if not contracted), kind}``; ``eruption_kinds``: counts per kind.
- ``frozen``: list of ``{episode_id, turn_index, spike_ratio}``.
- ``loops``: list of ``{episode_id, turn_index, type ("repeated_call" | "ngram"), length | rate}``.
- ``recovery``: episode-level (unit = episode with a failure, binned by its first failed
  trigger's spike ratio): ``overall`` and ``by_spike_bin`` (keys ``<1.5``, ``1.5-2``, ``2-3``,
  ``3-4``, ``>=4``), each ``{rate, n, successes, ci: [lo, hi] | null}``;
  ``relative_3_4_vs_lt_1_5`` ``{value, ci, n_a, n_b}``; ``logistic`` ``{intercept, slope, se,
  ci, n, converged}``; ``unknown_success``; and ``turn_level`` with the same keys (unit = failed
  trigger with a next tool call) plus ``no_next_call``.
- ``costs``: ``{reference, policies: {name: {episodes, tokens, tokens_per_episode,
  recover_share, overhead, shared_tasks}}}``.
- ``latency``: ``{name: {n, p50, p95, cv}}`` per policy.
- ``training``: ``{steps, series: {step, episodes, entropy, entropy_<phase>, reward, length,
  tool_calls, failure_rate, loop_rate, hallucination_rate: lists}, regimes: list, cycles: list
  of {start_step, peak_step, end_step, amplitude, subsided, reward_before, reward_after, kind,
  loop_rate, hallucination_rate, fit}, fit: {a, b, r2, n}}``; ``steps`` is 0 and the rest empty
  when no episode carries a ``step``.
- ``baseline_floor``: ``{eps, failed_triggers, at_floor, share}``: failed triggers whose
  baseline sits at the ``eps`` floor (near-deterministic text before the failure). Their spike
  ratios are inflated, so any response counts as an eruption; a high ``share`` (``null``
  without failures) says the eruption and contraction counts mean little for this agent.
- ``entropy_bounds``: ``null`` unless some token's entropy is a top-k estimate with bounds
  (imported logprobs); then how wide the bounds are and which verdicts they could flip
  (:meth:`agentropy.analysis.bounds.BoundsAccumulator.summary` lists its keys).
- ``config``: the thresholds used.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agentropy.analysis.bounds import BoundsAccumulator
from agentropy.analysis.breath import (
    KINDS,
    BreathConfig,
    TriggerTable,
    analyze_triggers,
    eruption_records,
    frozen_records,
)
from agentropy.analysis.loops import LoopConfig, find_loops, hallucinated_calls, loop_records
from agentropy.analysis.recovery import (
    CONFIDENCE,
    N_BOOT,
    UNKNOWN_POLICY,
    check_bootstrap,
    cost_stats,
    latency_stats,
    recovery_stats,
)
from agentropy.analysis.training import (
    ENTROPY_COLUMNS,
    CycleConfig,
    detect_cycles,
    fit_exp_reward,
    step_series,
)
from agentropy.trace import PHASE_CODE, Episode, NanPolicy, TraceTable, Validation

__all__ = [
    "FLOOR_WARN_SHARE",
    "AnalyzeConfig",
    "Analyzer",
    "Evidence",
    "analyze_episodes",
    "analyze_paths",
    "floor_note",
    "iter_tables",
]

FLOOR_WARN_SHARE = 0.2
"""Above this share of failed triggers with a baseline at the ``eps`` floor, readers of an
analysis are warned (:func:`floor_note`): such baselines come from near-deterministic text, their
spike ratios are inflated, and almost any response to the failure counts as an eruption."""


def floor_note(summary: Mapping[str, Any]) -> str | None:
    """One warning line when more than :data:`FLOOR_WARN_SHARE` of the failed triggers have a
    baseline at the floor (``summary["baseline_floor"]``); None otherwise or without failures."""
    b = summary.get("baseline_floor") or {}
    share = b.get("share")
    if share is None or share <= FLOOR_WARN_SHARE:
        return None
    return (
        f"Warning: {b['at_floor']} of {b['failed_triggers']} failed triggers ({share:.0%}) have a "
        f"baseline at the eps floor ({b['eps']:g} nats): the text before those failures is "
        "near-deterministic, so their spike ratios are inflated and eruption counts, kinds and "
        f"the recovery-by-spike comparison mean little (more than {FLOOR_WARN_SHARE:.0%} at the "
        "floor)."
    )


@dataclass(frozen=True, slots=True)
class AnalyzeConfig:
    """Everything :class:`Analyzer` needs besides the traces."""

    breath: BreathConfig = field(default_factory=BreathConfig)
    """Within-episode thresholds."""
    loops: LoopConfig = field(default_factory=LoopConfig)
    """Loop and hallucination thresholds."""
    cycles: CycleConfig = field(default_factory=CycleConfig)
    """Training-cycle detector thresholds."""
    known_tools: frozenset[str] | None = None
    """Tool names that exist; calls to others count as hallucinated (None: not checked)."""
    reference_policy: str | None = None
    """Policy that token overhead is measured against (None: ``greedy`` if present, else first in
    sorted order; :func:`~agentropy.analysis.recovery.default_reference`)."""
    confidence: float = CONFIDENCE
    """Confidence level of bootstrap intervals."""
    n_boot: int = N_BOOT
    """Bootstrap resamples."""
    seed: int = 0
    """Seed of the bootstrap."""

    def __post_init__(self) -> None:
        check_bootstrap(self.confidence, self.n_boot)


#: Summary keys holding event records, already JSON-ready when built.
_RECORD_KEYS = frozenset({"eruptions", "frozen", "loops"})


def _json_safe(obj: Any) -> Any:
    """Recursively turn numpy scalars/arrays into Python values and non-finite floats into None."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_json_safe(v) for v in obj.tolist()]
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating | float):
        v = float(obj)
        return v if np.isfinite(v) else None
    return obj


@dataclass
class Evidence:
    """Per-episode facts and failed-trigger spike ratios: the claims' inputs.

    Built by :meth:`Analyzer.evidence` from the analyzer's own records (no second analysis);
    the fields are plain lists so tests and callers can also fill them by hand. Memory grows
    with episodes and failed triggers, never with tokens.
    """

    failed_spikes: list[float] = field(default_factory=list)
    """Spike ratio of every failed trigger that has one, in trace order."""
    episode_id: list[str] = field(default_factory=list)
    policy: list[str] = field(default_factory=list)
    """Policy name per episode (:data:`~agentropy.analysis.recovery.UNKNOWN_POLICY` when absent)."""
    task_id: list[str | None] = field(default_factory=list)
    success: list[int] = field(default_factory=list)
    """1 success, 0 failure, -1 unknown."""
    tokens: list[int] = field(default_factory=list)
    """Assistant tokens per episode."""
    recover_tokens: list[int] = field(default_factory=list)
    """Assistant tokens in the ``recover`` phase per episode."""
    phased_tokens: list[int] = field(default_factory=list)
    """Assistant tokens with a known phase per episode."""
    latency_s: list[float] = field(default_factory=list)
    """Episode wall time (NaN when absent)."""
    failed_calls: list[int] = field(default_factory=list)
    """Tool turns with status ``error`` / ``unexpected`` per episode."""
    failed_trigger_episode: list[int] = field(default_factory=list)
    """Every failed trigger (with or without a spike ratio), in trace order: the index of its
    episode in the per-episode lists above."""
    failed_trigger_turn: list[int] = field(default_factory=list)
    """... its index in its episode's ``turns`` (aligned with ``failed_trigger_episode``)."""
    failed_trigger_spike: list[float | None] = field(default_factory=list)
    """... its spike ratio, None when it has none (``no_response``). Lets a caller pick the
    triggers it cares about (e.g. the first failure of a fault class) without a second pass."""

    @classmethod
    def from_episodes(
        cls, episodes: Iterable[Episode], breath_config: BreathConfig | None = None
    ) -> Evidence:
        """Evidence of in-memory episodes (one analyzer pass)."""
        analyzer = Analyzer(AnalyzeConfig(breath=breath_config or BreathConfig()))
        eps = list(episodes)
        if eps:
            analyzer.add_episodes(eps)
        return analyzer.evidence()


@dataclass(frozen=True, slots=True)
class PartAnalysis:
    """One part analysed by :meth:`Analyzer.analyze_part`, ready for :meth:`Analyzer.add_part`."""

    table: TraceTable
    trig: TriggerTable
    counts: dict[str, int]
    at_floor: int
    records: dict[str, list[dict[str, Any]]]
    per_ep: dict[str, Any]
    fail: dict[str, np.ndarray]


class Analyzer:
    """Accumulates parts; :meth:`summary` assembles the result (see module docstring).

    :meth:`evidence` gives the same per-episode records to the claims and the eval table.
    """

    def __init__(self, config: AnalyzeConfig = AnalyzeConfig()) -> None:
        self.config = config
        self._counts = {
            "episodes": 0,
            "tokens": 0,
            "dropped_nonfinite": 0,
            "triggers": 0,
            "no_response": 0,
            "tool_failures": 0,
        }
        self._eruptions: list[dict[str, Any]] = []
        self._frozen: list[dict[str, Any]] = []
        self._loops: list[dict[str, Any]] = []
        self._ep: dict[str, list[Any]] = {}
        self._fail: dict[str, list[np.ndarray]] = {
            "spike": [],
            "has_next": [],
            "next_ok": [],
            "ep": [],
            "turn": [],
        }
        self._bounds = BoundsAccumulator(config.breath)
        self._floor = 0

    # ---------------------------------------------------------------------------------------
    def add_episodes(
        self,
        episodes: list[Episode],
        *,
        nan_policy: NanPolicy = "raise",
        source: str | None = None,
    ) -> dict[str, list[dict[str, Any]]]:
        """Analyse one part given as episodes (see :meth:`TraceTable.from_episodes`)."""
        return self.add_table(
            TraceTable.from_episodes(episodes, nan_policy=nan_policy, source=source)
        )

    def add_table(self, table: TraceTable) -> dict[str, list[dict[str, Any]]]:
        """Analyse one part given as a :class:`TraceTable`.

        Returns the part's own ``eruptions``, ``frozen`` and ``loops`` records (also kept for the
        summary), so a caller can act on the part while it is in memory (e.g. keep an example).
        """
        return self.add_part(self.analyze_part(table))

    def analyze_part(self, table: TraceTable) -> PartAnalysis:
        """The analysis of one part, not yet added: reads only ``self.config``, so parts can be
        analysed in several threads at once and added (:meth:`add_part`) in order."""
        cfg = self.config
        trig = analyze_triggers(table, cfg.breath)
        loops = find_loops(table, cfg.loops)
        checked, halluc = hallucinated_calls(table, known_tools=cfg.known_tools, config=cfg.loops)
        n_ep = table.n_episodes
        counts = {
            "episodes": n_ep,
            "tokens": table.n_tokens,
            "dropped_nonfinite": table.n_dropped,
            "triggers": int(trig.ep.shape[0]),
            "no_response": int(trig.no_response.sum()),
            "tool_failures": int(trig.failed.sum()),
        }
        # Failed triggers whose baseline is the eps floor: their spike ratios are inflated
        # (any response reads as an eruption), so a high share makes eruption counts unreliable.
        at_floor = int((trig.stats.baseline[trig.failed] <= cfg.breath.eps).sum())
        records = {
            "eruptions": eruption_records(table, trig),
            "frozen": frozen_records(table, trig),
            "loops": loop_records(table, loops),
        }

        # Per-episode token aggregates, vectorised over the part's token table.
        lengths = table.ep_end - table.ep_start
        tok_ep = np.repeat(np.arange(n_ep), lengths)
        ncol = len(ENTROPY_COLUMNS)
        ent_sum = np.zeros((n_ep, ncol))
        ent_cnt = np.zeros((n_ep, ncol))
        ent_sum[:, 0] = np.bincount(tok_ep, weights=table.entropy, minlength=n_ep)
        ent_cnt[:, 0] = lengths
        # (episode, phase) bins of the tokens with a known phase (usually all: no masking).
        flat = tok_ep * (ncol - 1) + table.phase
        weights = table.entropy
        if table.n_tokens and table.phase.min() < 0:
            known = table.phase >= 0
            flat, weights = flat[known], weights[known]
        size = n_ep * (ncol - 1)
        ent_sum[:, 1:] = np.bincount(flat, weights=weights, minlength=size).reshape(n_ep, ncol - 1)
        ent_cnt[:, 1:] = np.bincount(flat, minlength=size).reshape(n_ep, ncol - 1)

        failed = trig.failed
        tool_calls = np.bincount(trig.ep, minlength=n_ep)
        failed_calls = np.bincount(trig.ep[failed], minlength=n_ep)
        has_loop = np.bincount(loops.ep, minlength=n_ep) > 0
        h_checked = np.bincount(table.turn_ep[checked], minlength=n_ep)
        h_count = np.bincount(table.turn_ep[halluc], minlength=n_ep)
        # Episode-level recovery unit: the first failed trigger with a spike ratio.
        spike = trig.stats.spike_ratio
        first_spike = np.full(n_ep, np.nan)
        cand = np.flatnonzero(failed & ~np.isnan(spike))
        uniq_ep, first = np.unique(trig.ep[cand], return_index=True)
        first_spike[uniq_ep] = spike[cand[first]]

        per_ep = {
            "episode_id": table.episode_id,
            "policy": table.policy,
            "task_id": table.task_id,
            "tokens": lengths,
            "recover_tokens": ent_cnt[:, 1 + PHASE_CODE["recover"]],
            "phased_tokens": ent_cnt[:, 1:].sum(axis=1),
            "latency_s": table.latency_s,
            "step": table.step,
            "reward": table.reward,
            "success": table.success,
            "ent_sum": ent_sum,
            "ent_cnt": ent_cnt,
            "tool_calls": tool_calls,
            "failed_calls": failed_calls,
            "has_loop": has_loop,
            "halluc_checked": h_checked,
            "halluc": h_count,
            "first_fail_spike": first_spike,
        }
        nxt = trig.next_tool[failed]
        has_next = nxt >= 0
        fail = {
            "spike": spike[failed],
            "has_next": has_next,
            "next_ok": has_next & (trig.status[np.maximum(nxt, 0)] == 0),
            "ep": trig.ep[failed],  # row within the part; add_part offsets it
            "turn": trig.turn_index[failed],
        }
        return PartAnalysis(table, trig, counts, at_floor, records, per_ep, fail)

    def add_part(self, part: PartAnalysis) -> dict[str, list[dict[str, Any]]]:
        """Add a part analysed by :meth:`analyze_part` (parts in trace order); returns its
        event records, as :meth:`add_table`."""
        ep_offset = self._counts["episodes"]  # row of the part's first episode in the lists
        for k, v in part.counts.items():
            self._counts[k] += v
        self._bounds.add(part.table, part.trig)
        self._floor += part.at_floor
        self._eruptions += part.records["eruptions"]
        self._frozen += part.records["frozen"]
        self._loops += part.records["loops"]
        for k, v in part.per_ep.items():
            self._ep.setdefault(k, []).append(v)
        for k, arr in part.fail.items():
            self._fail[k].append(arr + ep_offset if k == "ep" else arr)
        return part.records

    # ---------------------------------------------------------------------------------------
    def _cat(self, key: str) -> Any:
        parts = self._ep.get(key, [])
        if key in ("episode_id", "policy", "task_id"):
            return [x for p in parts for x in p]
        if not parts:
            shape = (0, len(ENTROPY_COLUMNS)) if key in ("ent_sum", "ent_cnt") else (0,)
            return np.zeros(shape)
        return np.concatenate(parts)

    def _cat_failed(self, key: str) -> np.ndarray:
        parts = self._fail[key]
        return np.concatenate(parts) if parts else np.zeros(0)

    def evidence(self) -> Evidence:
        """The per-episode records and failed-trigger spike ratios as an :class:`Evidence`."""
        fail = self._cat_failed
        failed = fail("spike")

        def ints(key: str) -> list[int]:
            return [int(x) for x in self._cat(key)]

        return Evidence(
            failed_spikes=[float(x) for x in failed[np.isfinite(failed)]],
            episode_id=list(self._cat("episode_id")),
            policy=[UNKNOWN_POLICY if p is None else p for p in self._cat("policy")],
            task_id=list(self._cat("task_id")),
            success=ints("success"),
            tokens=ints("tokens"),
            recover_tokens=ints("recover_tokens"),
            phased_tokens=ints("phased_tokens"),
            latency_s=[float(x) for x in self._cat("latency_s")],
            failed_calls=ints("failed_calls"),
            failed_trigger_episode=[int(x) for x in fail("ep")],
            failed_trigger_turn=[int(x) for x in fail("turn")],
            failed_trigger_spike=[float(x) if np.isfinite(x) else None for x in failed],
        )

    def summary(self) -> dict[str, Any]:
        """The JSON-ready summary (module docstring lists the keys)."""
        cfg = self.config
        stats = functools.partial(
            recovery_stats, confidence=cfg.confidence, n_boot=cfg.n_boot, seed=cfg.seed
        )
        out: dict[str, Any] = dict(self._counts)

        def order(rec: dict[str, Any]) -> tuple[str, int, str]:
            return (rec["episode_id"], rec["turn_index"], rec.get("type", ""))

        out["eruptions"] = sorted(self._eruptions, key=order)
        out["eruption_kinds"] = {
            k: sum(1 for e in self._eruptions if e["kind"] == k) for k in KINDS
        }
        out["frozen"] = sorted(self._frozen, key=order)
        out["loops"] = sorted(self._loops, key=order)

        # Recovery, episode level.
        success = self._cat("success").astype(np.int64)
        has_failure = self._cat("failed_calls") > 0
        known = success >= 0
        unit = has_failure & known
        rec = stats(self._cat("first_fail_spike")[unit], success[unit] == 1)
        rec["unknown_success"] = int((has_failure & ~known).sum())
        f_spike = self._cat_failed("spike")
        f_next = self._cat_failed("has_next").astype(bool)
        f_ok = self._cat_failed("next_ok").astype(bool)
        turn = stats(f_spike[f_next], f_ok[f_next])
        turn["no_next_call"] = int((~f_next).sum())
        rec["turn_level"] = turn
        out["recovery"] = rec

        policy = self._cat("policy")
        out["costs"] = cost_stats(
            policy,
            self._cat("task_id"),
            self._cat("tokens"),
            self._cat("recover_tokens"),
            self._cat("phased_tokens"),
            reference=cfg.reference_policy,
        )
        out["latency"] = latency_stats(policy, self._cat("latency_s"))
        out["training"] = self._training()
        out["entropy_bounds"] = self._bounds.summary()
        failures = out["tool_failures"]
        out["baseline_floor"] = {
            "eps": cfg.breath.eps,
            "failed_triggers": failures,
            "at_floor": self._floor,
            "share": self._floor / failures if failures else None,
        }
        out["config"] = {
            "breath": dataclasses.asdict(cfg.breath),
            "loops": dataclasses.asdict(cfg.loops),
            "cycles": dataclasses.asdict(cfg.cycles),
            "known_tools": None if cfg.known_tools is None else sorted(cfg.known_tools),
            "confidence": cfg.confidence,
            "n_boot": cfg.n_boot,
            "seed": cfg.seed,
        }
        # The event records are built from plain Python values, finite or None
        # (eruption_records, frozen_records, loop_records): walking thousands of them again
        # would cost more than the rest of the summary.
        return {k: v if k in _RECORD_KEYS else _json_safe(v) for k, v in out.items()}

    def _training(self) -> dict[str, Any]:
        step = self._cat("step").astype(np.float64)
        series = step_series(
            step,
            self._cat("ent_sum"),
            self._cat("ent_cnt"),
            self._cat("reward"),
            self._cat("tokens"),
            self._cat("tool_calls"),
            self._cat("failed_calls"),
            self._cat("has_loop"),
            self._cat("halluc_checked"),
            self._cat("halluc"),
        )
        n_steps = int(series["step"].shape[0])
        out: dict[str, Any] = {
            "steps": n_steps,
            "series": series,
            "regimes": [],
            "cycles": [],
            "fit": fit_exp_reward(series["entropy"], series["reward"]),
        }
        if n_steps == 0:
            return out
        cycles, regimes = detect_cycles(
            series["step"], series["entropy"], series["reward"], self.config.cycles
        )
        out["regimes"] = regimes
        has_loop = self._cat("has_loop").astype(np.float64)
        h_checked = self._cat("halluc_checked").astype(np.float64)
        h_count = self._cat("halluc").astype(np.float64)
        for cyc in cycles:
            sel = (step >= cyc.start_step) & (step <= cyc.end_step)
            n_sel = int(sel.sum())
            hc = float(h_checked[sel].sum())
            span = slice(cyc.start, cyc.end + 1)
            out["cycles"].append(
                {
                    "start_step": cyc.start_step,
                    "peak_step": cyc.peak_step,
                    "end_step": cyc.end_step,
                    "amplitude": cyc.amplitude,
                    "subsided": cyc.subsided,
                    "reward_before": cyc.reward_before,
                    "reward_after": cyc.reward_after,
                    "kind": cyc.kind,
                    "loop_rate": float(has_loop[sel].sum()) / n_sel if n_sel else None,
                    "hallucination_rate": float(h_count[sel].sum()) / hc if hc else None,
                    "fit": fit_exp_reward(series["entropy"][span], series["reward"][span]),
                }
            )
        return out


def iter_tables(
    paths: str | Path | Sequence[str | Path],
    *,
    nan_policy: NanPolicy = "raise",
    episodes_per_part: int = 256,
    validation: Validation = "seal",
) -> Iterator[TraceTable]:
    """Stream :class:`TraceTable` parts from trace stores (directories) and JSONL files.

    A store is read part by part through :func:`agentropy.trace.iter_part_tables` (no per-token
    Python objects; ``validation`` says whether parts sealed by the writer skip re-validation);
    a JSONL file is read episode by episode and grouped into parts of ``episodes_per_part``.
    Memory stays bounded by two parts (one read ahead).
    """
    from agentropy.trace import iter_episodes_counted, iter_part_tables

    if isinstance(paths, str | Path):
        paths = [paths]
    for path in paths:
        p = Path(path)
        if p.is_dir():
            yield from iter_part_tables(p, nan_policy=nan_policy, validation=validation)
            continue
        chunk: list[Episode] = []
        dropped = 0
        for episode, d in iter_episodes_counted(p, nan_policy=nan_policy):
            chunk.append(episode)
            dropped += d
            if len(chunk) >= episodes_per_part:
                table = TraceTable.from_episodes(chunk, nan_policy=nan_policy, source=str(p))
                table.n_dropped += dropped
                yield table
                chunk, dropped = [], 0
        if chunk:
            table = TraceTable.from_episodes(chunk, nan_policy=nan_policy, source=str(p))
            table.n_dropped += dropped
            yield table


def analyze_paths(
    paths: str | Path | Sequence[str | Path],
    config: AnalyzeConfig = AnalyzeConfig(),
    *,
    nan_policy: NanPolicy = "raise",
    validation: Validation = "seal",
    workers: int = 2,
) -> dict[str, Any]:
    """Summary of trace files and stores, streamed part by part (module docstring: keys).

    ``validation``: see :func:`agentropy.trace.iter_part_tables` (``"full"`` re-validates
    every part of a store; the result is the same either way for a store the writer sealed).
    ``workers``: threads that read and analyse a store's parts in parallel under
    ``validation="seal"`` (:func:`agentropy.trace.parquet_read.map_part_tables`; memory bounded
    by ``workers + 1`` parts); parts are added in order, so the summary does not depend on it.
    """
    from agentropy.trace.parquet_read import map_part_tables

    if isinstance(paths, str | Path):
        paths = [paths]
    analyzer = Analyzer(config)
    for path in paths:
        if not Path(path).is_dir():
            for table in iter_tables([path], nan_policy=nan_policy, validation=validation):
                analyzer.add_table(table)
            continue
        for part in map_part_tables(
            path,
            analyzer.analyze_part,
            nan_policy=nan_policy,
            validation=validation,
            workers=workers,
        ):
            analyzer.add_part(part)
    return analyzer.summary()


def analyze_episodes(
    parts: Iterable[list[Episode]] | list[Episode],
    config: AnalyzeConfig = AnalyzeConfig(),
    *,
    nan_policy: NanPolicy = "raise",
) -> dict[str, Any]:
    """Summary of in-memory episodes: one list, or an iterable of lists (parts)."""
    analyzer = Analyzer(config)
    if isinstance(parts, list) and (not parts or isinstance(parts[0], Episode)):
        parts = [parts]  # type: ignore[list-item]
    for part in parts:
        analyzer.add_episodes(part, nan_policy=nan_policy)  # type: ignore[arg-type]
    return analyzer.summary()
