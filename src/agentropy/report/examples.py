"""The report's example episodes: which to show, and the small per-episode track each one needs.

The timelines section shows one ``productive`` eruption, one ``divergent`` eruption and one
``frozen`` response. :func:`example_key` orders the candidates of one kind (clear examples first);
the example is the candidate with the smallest key. The key depends only on the record and on its
own episode (its success and its number of eruptions and frozen responses), so the minimum can be
kept part by part while the traces stream through the analyzer: :class:`ExamplePicker` keeps, per
kind, the best record so far and the :class:`Timeline` of its episode, cut from the part's
:class:`~agentropy.trace.TraceTable` while that part is in memory. The report then never
reads a trace file a second time. :func:`choose_examples` is the same choice over a whole summary.

A :class:`Timeline` holds what :func:`agentropy.report.figures.timeline_figure` draws: the
episode's assistant-token entropy and phases in order, where each turn starts in that stream,
each tool turn's name and status, and the entropy bounds when the entropies are top-k estimates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from agentropy.trace import TOOL_STATUSES, Episode, TraceTable

__all__ = [
    "EXAMPLE_KINDS",
    "ExamplePicker",
    "Timeline",
    "choose_examples",
    "example_key",
]


#: Example kinds, in page order.
EXAMPLE_KINDS: tuple[str, ...] = ("productive", "divergent", "frozen")


@dataclass(frozen=True, slots=True)
class Timeline:
    """One episode as the timeline figure draws it; ``n`` assistant tokens, ``U`` turns."""

    episode_id: str
    success: bool | None
    entropy: np.ndarray
    """(n,) float64 model entropy of the assistant tokens, in order across turns, nats."""
    phase: np.ndarray
    """(n,) int64 phase codes (index into ``trace.PHASES``), -1 where unknown."""
    turn_start: list[int]
    """(U,) offset in ``entropy`` where each turn starts (a tool turn: where the post-trigger
    stream begins)."""
    tools: list[tuple[int, str | None, str | None]]
    """``(turn_index, name, status)`` of each tool turn, in order (None: unparsed / missing)."""
    entropy_lower: np.ndarray | None = None
    """(n,) float64 lower bound of each token's entropy when the episode's entropies are top-k
    estimates (exact tokens: their entropy), nats; None when none is bounded."""
    entropy_upper: np.ndarray | None = None
    """(n,) float64 upper bound, as ``entropy_lower``."""

    @classmethod
    def from_table(cls, table: TraceTable, e: int) -> Timeline:
        """Episode ``e`` of a part (its token and turn rows, positions made episode-relative)."""
        lo, hi = int(table.ep_start[e]), int(table.ep_end[e])
        rows = np.flatnonzero(table.turn_ep == e)
        rows = rows[np.argsort(table.turn_index[rows], kind="stable")]
        tools = []
        for r in rows[table.turn_is_tool[rows]]:
            code = int(table.tool_status[r])
            status = TOOL_STATUSES[code] if code >= 0 else None
            tools.append((int(table.turn_index[r]), table.tool_name[r], status))
        s = int(table.success[e])
        ent = np.asarray(table.entropy[lo:hi], np.float64)
        bounds: list[np.ndarray | None] = [None, None]
        for j, arr in enumerate((table.entropy_lower, table.entropy_upper)):
            part = None if arr is None else arr[lo:hi]
            if part is not None and not np.isnan(part).all():
                bounds[j] = np.where(np.isnan(part), ent, part)
        return cls(
            episode_id=table.episode_id[e],
            success=None if s < 0 else bool(s),
            entropy=ent,
            phase=np.asarray(table.phase[lo:hi], np.int64),
            turn_start=[int(x) - lo for x in table.turn_start[rows]],
            tools=tools,
            entropy_lower=bounds[0],
            entropy_upper=bounds[1],
        )

    @classmethod
    def from_episode(cls, episode: Episode) -> Timeline:
        """The same view of an in-memory episode (through the same columnar table)."""
        return cls.from_table(TraceTable.from_episodes([episode]), 0)


def _spike(rec: Mapping[str, Any]) -> float:
    s = rec.get("spike_ratio")
    return float("nan") if s is None else float(s)


def example_key(
    kind: str, rec: Mapping[str, Any], events: int, success: bool | None
) -> tuple[Any, ...] | None:
    """Sort key of a candidate record of ``kind`` (smaller is a clearer example; None: not one).

    ``productive`` prefers an episode that succeeded; every kind then prefers the episode with the
    fewest eruptions and frozen responses (``events``: one clear event rather than many), then the
    largest spike ratio for ``productive`` / ``divergent`` and the smallest for ``frozen``; ties by
    ``(episode_id, turn_index)``. Records without a finite spike ratio are never examples.
    """
    s = _spike(rec)
    if not np.isfinite(s):
        return None
    if kind == "frozen":
        return (events, s, rec["episode_id"], rec["turn_index"])
    if rec.get("kind") != kind:
        return None
    first = kind == "productive" and success is not True
    return (first, events, -s, rec["episode_id"], rec["turn_index"])


def _events(records: Mapping[str, Any]) -> dict[str, int]:
    events: dict[str, int] = {}
    for rec in [*(records.get("eruptions") or []), *(records.get("frozen") or [])]:
        events[rec["episode_id"]] = events.get(rec["episode_id"], 0) + 1
    return events


def _candidates(records: Mapping[str, Any], kind: str) -> list[dict[str, Any]]:
    return list(records.get("frozen" if kind == "frozen" else "eruptions") or [])


def choose_examples(
    summary: Mapping[str, Any],
    available: set[str] | None = None,
    success: Mapping[str, bool | None] | None = None,
) -> dict[str, dict[str, Any]]:
    """One example record per kind from the analyzer's records (order: :func:`example_key`).

    Only episodes in ``available`` are considered (None: all); ``success`` maps episode ids to
    outcomes (missing: unknown). Returns ``{kind: record}`` for the kinds that have one.
    """
    success = success or {}
    events = _events(summary)
    out: dict[str, dict[str, Any]] = {}
    for kind in EXAMPLE_KINDS:
        best: tuple[Any, ...] | None = None
        for rec in _candidates(summary, kind):
            eid = rec["episode_id"]
            if available is not None and eid not in available:
                continue
            key = example_key(kind, rec, events[eid], success.get(eid))
            if key is not None and (best is None or key < best):
                best, out[kind] = key, rec
    return out


class ExamplePicker:
    """Keeps the example of each kind while parts stream by (module docstring).

    Call :meth:`add` with each part and the records :meth:`Analyzer.add_table` returned for it.
    Episode ids are assumed unique across parts (an episode's events are counted within its part).
    """

    def __init__(self) -> None:
        self._best: dict[str, tuple[tuple[Any, ...], dict[str, Any], Timeline]] = {}

    def add(self, table: TraceTable, records: Mapping[str, Any]) -> None:
        """Consider the part's records; cut a :class:`Timeline` only for a new best."""
        row = {eid: e for e, eid in enumerate(table.episode_id)}
        events = _events(records)
        for kind in EXAMPLE_KINDS:
            for rec in _candidates(records, kind):
                e = row[rec["episode_id"]]
                s = int(table.success[e])
                key = example_key(kind, rec, events[rec["episode_id"]], None if s < 0 else bool(s))
                if key is None:
                    continue
                held = self._best.get(kind)
                if held is None or key < held[0]:
                    self._best[kind] = (key, rec, Timeline.from_table(table, e))

    @property
    def examples(self) -> dict[str, tuple[dict[str, Any], Timeline]]:
        """``{kind: (record, timeline)}`` for the kinds that have an example."""
        return {kind: (rec, tl) for kind, (_, rec, tl) in self._best.items()}
