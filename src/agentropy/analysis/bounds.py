"""How much top-k entropy estimates could change the analysis: bound widths and verdict flips.

Traces imported from logs with top-k logprobs (:mod:`agentropy.trace.importers.logprobs`, the
OpenAI-compatible agent loop) carry an entropy *estimate* per token, the midpoint of an interval
``[lower, upper]`` that holds the true entropy (DESIGN.md, "Top-k estimate"; the interval is in
``Turn.meta[BOUNDS_META_KEY]``). The analyzer runs on the estimates, like on exact entropies;
:class:`BoundsAccumulator` adds what a reader needs to trust (or not) its verdicts:

- the **width** ``upper - lower`` per bounded token, nats: ``mean`` and ``max`` exactly,
  ``median`` and ``p90`` from a histogram of :data:`WIDTH_BIN` nats (memory stays constant in the
  number of tokens, as for the rest of the analyzer);
- the **verdict ranges** of every trigger (:func:`agentropy.analysis.breath.bound_verdicts`): how
  many eruptions hold at every entropy within the bounds (``certain``) and at some
  (``possible``), and how many triggers' eruption, eruption-kind (which depends on contraction)
  or frozen verdicts flip between the extremes, with the list of those triggers and their
  spike-ratio ranges.

Why not simply rerun the analysis at the lower and at the upper bounds: a spike ratio divides a
post-trigger mean by a baseline, so "everything at its lower bound" is not an extreme of it; the
extremes put one side at the lower bounds and the other at the upper bounds, and that is still
one vectorised pass per side. Training-cycle verdicts (per-step means) are not bounded here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from agentropy.analysis.breath import BreathConfig, TriggerTable, bound_verdicts
from agentropy.trace import TraceTable

__all__ = [
    "WIDTH_BIN",
    "BoundsAccumulator",
    "bounds_note",
]

#: Resolution of the width histogram behind ``median`` and ``p90``, nats.
WIDTH_BIN = 1e-3
#: Histogram bins; wider bounds land in the last bin (``max`` stays exact). 2**15 bins cover
#: 32.8 nats, above ``log V`` of any real vocabulary (the largest possible width).
_WIDTH_BINS = 2**15


def _num(x: Any) -> float | None:
    v = float(x)
    return v if np.isfinite(v) else None


class BoundsAccumulator:
    """Accumulates bound widths and verdict ranges part by part; :meth:`summary` assembles them."""

    def __init__(self, config: BreathConfig = BreathConfig()) -> None:
        self.config = config
        self._tokens = 0
        self._sum = 0.0
        self._max = 0.0
        self._hist = np.zeros(_WIDTH_BINS, np.int64)
        self._counts = {"certain": 0, "possible": 0, "eruption": 0, "kind": 0, "frozen": 0}
        self._records: list[dict[str, Any]] = []

    def add(self, table: TraceTable, trig: TriggerTable) -> None:
        """Add one part (``trig``: :func:`~agentropy.analysis.breath.analyze_triggers` of it)."""
        bv = bound_verdicts(table, trig, self.config)
        c = self._counts
        if bv is None or table.entropy_lower is None or table.entropy_upper is None:
            # Exact entropies: every verdict of the part is certain.
            c["certain"] += int(trig.eruption.sum())
            c["possible"] += int(trig.eruption.sum())
            return
        width = table.entropy_upper - table.entropy_lower
        width = width[~np.isnan(width)]
        if width.size:
            self._tokens += int(width.size)
            self._sum += float(width.sum())
            self._max = max(self._max, float(width.max()))
            idx = np.minimum((width / WIDTH_BIN).astype(np.int64), _WIDTH_BINS - 1)
            self._hist += np.bincount(idx, minlength=_WIDTH_BINS)
        c["certain"] += int(bv.eruption_certain.sum())
        c["possible"] += int(bv.eruption_possible.sum())
        flips = {
            "eruption": bv.eruption_uncertain,
            "kind": bv.kind_uncertain,
            "frozen": bv.frozen_uncertain,
        }
        for name, mask in flips.items():
            c[name] += int(mask.sum())
        for i in np.flatnonzero(bv.kind_uncertain | bv.frozen_uncertain):
            self._records.append(
                {
                    "episode_id": table.episode_id[trig.ep[i]],
                    "turn_index": int(trig.turn_index[i]),
                    "spike_ratio": [_num(bv.spike_min[i]), _num(bv.spike_max[i])],
                    "flips": [name for name, mask in flips.items() if mask[i]],
                }
            )

    def _quantile(self, q: float) -> float:
        cum = np.cumsum(self._hist)
        b = int(np.searchsorted(cum, q * self._tokens))
        # Bin centre, never past the exact maximum.
        return min((b + 0.5) * WIDTH_BIN, self._max)

    def summary(self) -> dict[str, Any] | None:
        """The ``entropy_bounds`` part of the analyzer's summary; None when no token had bounds.

        Keys: ``tokens`` (bounded assistant tokens), ``width`` ``{mean, median, p90, max}``
        (``upper - lower``, nats; median and p90 to :data:`WIDTH_BIN`), ``eruptions``
        ``{certain, possible}``, ``uncertain`` ``{eruption, kind, frozen}`` (triggers whose verdict
        flips within the bounds) and ``uncertain_triggers`` (``{episode_id, turn_index,
        spike_ratio: [min, max], flips}``, sorted).
        """
        if self._tokens == 0:
            return None
        c = self._counts
        return {
            "tokens": self._tokens,
            "width": {
                "mean": self._sum / self._tokens,
                "median": self._quantile(0.5),
                "p90": self._quantile(0.9),
                "max": self._max,
            },
            "eruptions": {"certain": c["certain"], "possible": c["possible"]},
            "uncertain": {k: c[k] for k in ("eruption", "kind", "frozen")},
            "uncertain_triggers": sorted(
                self._records, key=lambda r: (r["episode_id"], r["turn_index"])
            ),
        }


def _fmt(x: Any) -> str:
    return "-" if x is None else format(x, ".3g")


def bounds_note(summary: Mapping[str, Any]) -> str | None:
    """One paragraph for readers of an analysis (``agentropy analyze``, the report): that the
    entropies are top-k estimates, how wide their bounds are, and which verdicts the bounds could
    flip. None when the summary has no ``entropy_bounds`` (exact entropies: nothing to say)."""
    b = summary.get("entropy_bounds")
    if not b:
        return None
    w, u, e = b["width"], b["uncertain"], b["eruptions"]
    tokens = summary.get("tokens")
    share = "all" if b["tokens"] == tokens else f"{b['tokens']} of {tokens}"
    if any(u.values()):
        flips = (
            f"within the bounds {u['eruption']} eruption, {u['kind']} eruption-kind and "
            f"{u['frozen']} frozen-response verdicts could flip (listed in the JSON summary under "
            "entropy_bounds.uncertain_triggers)"
        )
    else:
        flips = "no eruption, eruption-kind or frozen-response verdict flips within the bounds"
    cycles = (summary.get("training") or {}).get("steps")
    tail = " Training cycles are computed on the estimates and not bounded." if cycles else ""
    return (
        f"Entropies of {share} assistant tokens are top-k estimates (the midpoint of bounds "
        f"that hold the true entropy): bound width (upper - lower) median {_fmt(w['median'])}, "
        f"p90 {_fmt(w['p90'])}, max {_fmt(w['max'])} nats. Eruptions: "
        f"{len(summary.get('eruptions') or [])} at the estimate, {e['certain']} certain, "
        f"{e['possible']} possible; {flips}.{tail}"
    )
