"""DataFrames for notebooks: traces and analysis results as Arrow tables, pandas or polars.

Arrow (pyarrow, a core dependency) is the exchange layer; :func:`to_pandas` and
:func:`to_polars` convert an Arrow table and import their library only when called, so neither
is a dependency of agentropy (``pip install 'agentropy[dataframes]'`` installs both).

- :func:`trace_arrow` flattens a :class:`~agentropy.trace.TraceTable` into one of three tables:
  ``tokens`` (one row per assistant token, N rows), ``turns`` (U rows) or ``episodes`` (E rows).
  Codes are decoded (phase and status names, null where unknown), so the columns read as the
  JSONL fields do. When some entropies are top-k estimates, ``tokens`` also has
  ``entropy_lower`` and ``entropy_upper`` (null where the entropy is exact).
- :func:`summary_arrow` turns one list-valued part of an analysis summary
  (:func:`agentropy.analysis.summary.analyze_paths`) into a table: ``eruptions``, ``frozen``,
  ``loops``, ``recovery`` (one row per spike-ratio bin), ``costs`` and ``latency`` (one row per
  policy), ``cycles`` and ``series`` (training).

>>> from agentropy.trace import episode_from_dict, TraceTable
>>> ep = episode_from_dict({"episode_id": "e1", "success": True, "turns": [
...     {"role": "assistant", "entropy": [0.2, 0.1]},
...     {"role": "tool", "name": "lookup", "status": "error", "content": "down"},
...     {"role": "assistant", "entropy": [1.4, 0.3]}]})
>>> tokens = trace_arrow(TraceTable.from_episodes([ep]), "tokens")
>>> tokens.num_rows, tokens.column("turn_index").to_pylist()
(4, [0, 0, 2, 2])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from agentropy.integrations._extras import require
from agentropy.trace.model import PHASES, STATUS_CODES

if TYPE_CHECKING:
    import pyarrow as pa

    from agentropy.trace.table import TraceTable

__all__ = ["SUMMARY_PARTS", "TracePart", "summary_arrow", "to_pandas", "to_polars", "trace_arrow"]

TracePart = Literal["tokens", "turns", "episodes"]

#: Parts of an analysis summary that :func:`summary_arrow` turns into tables.
SUMMARY_PARTS: tuple[str, ...] = (
    "eruptions", "frozen", "loops", "recovery", "costs", "latency", "cycles", "series",
)  # fmt: skip


def _decode(codes: np.ndarray, names: list[str]) -> list[str | None]:
    return [names[c] if 0 <= c < len(names) else None for c in codes.tolist()]


def trace_arrow(table: TraceTable, part: TracePart = "tokens") -> pa.Table:
    """One part of ``table`` as a pyarrow Table (module docstring: rows and columns)."""
    import pyarrow as pa

    n_ep = table.n_episodes
    ep_of_token = np.repeat(np.arange(n_ep), table.ep_end - table.ep_start)
    if part == "episodes":
        success = table.success.astype(np.int64)
        return pa.table({
            "episode_id": table.episode_id,
            "task_id": table.task_id,
            "policy": table.policy,
            "step": pa.array(table.step, mask=np.isnan(table.step)),
            "success": pa.array(success == 1, mask=success < 0),
            "reward": pa.array(table.reward, mask=np.isnan(table.reward)),
            "latency_s": pa.array(table.latency_s, mask=np.isnan(table.latency_s)),
            "tokens": table.ep_end - table.ep_start,
        })  # fmt: skip
    statuses = sorted(STATUS_CODES, key=STATUS_CODES.__getitem__)
    if part == "turns":
        return pa.table({
            "episode_id": [table.episode_id[e] for e in table.turn_ep.tolist()],
            "turn_index": table.turn_index,
            "role": ["tool" if t else "assistant" for t in table.turn_is_tool.tolist()],
            "tokens": table.turn_end - table.turn_start,
            "status": _decode(table.tool_status, statuses),
            "name": table.tool_name,
            "content": table.tool_content,
        })  # fmt: skip
    if part != "tokens":
        raise ValueError(f"part must be 'tokens', 'turns' or 'episodes', got {part!r}")
    # Each token's turn: assistant turns own [turn_start, turn_end); tool turns own none.
    asst = ~table.turn_is_tool.astype(bool)
    turn_of_token = np.repeat(table.turn_index[asst], (table.turn_end - table.turn_start)[asst])
    position = np.arange(table.n_tokens) - np.repeat(table.ep_start, table.ep_end - table.ep_start)
    cols = {
        "episode_id": [table.episode_id[e] for e in ep_of_token.tolist()],
        "turn_index": turn_of_token.astype(np.int64),
        "position": position.astype(np.int64),
        "entropy": table.entropy,
        "token_id": pa.array(table.token_ids, mask=table.token_ids < 0),
        "phase": _decode(table.phase, list(PHASES)),
    }
    # Top-k estimates: their bounds, null where the entropy is exact (columns absent otherwise).
    for name in ("entropy_lower", "entropy_upper"):
        arr = getattr(table, name)
        if arr is not None:
            cols[name] = pa.array(arr, mask=np.isnan(arr))
    return pa.table(cols)


def summary_arrow(summary: Mapping[str, Any], part: str) -> pa.Table:
    """One part of an analysis summary (:data:`SUMMARY_PARTS`) as a pyarrow Table."""
    import pyarrow as pa

    rows: list[dict[str, Any]]
    if part in ("eruptions", "frozen", "loops"):
        rows = list(summary.get(part) or [])
    elif part == "recovery":
        bins = (summary.get("recovery") or {}).get("by_spike_bin") or {}
        rows = [
            {"bin": k, **{f: v.get(f) for f in ("rate", "n", "successes")}} for k, v in bins.items()
        ]
    elif part == "costs":
        policies = (summary.get("costs") or {}).get("policies") or {}
        rows = [{"policy": k, **v} for k, v in policies.items()]
    elif part == "latency":
        rows = [{"policy": k, **v} for k, v in (summary.get("latency") or {}).items()]
    elif part == "cycles":
        rows = list((summary.get("training") or {}).get("cycles") or [])
    elif part == "series":
        series = (summary.get("training") or {}).get("series") or {}
        return pa.table({k: v for k, v in series.items() if isinstance(v, list)})
    else:
        raise ValueError(f"part must be one of {', '.join(SUMMARY_PARTS)}, got {part!r}")
    return pa.Table.from_pylist(rows)


def to_pandas(table: pa.Table) -> Any:
    """``table`` as a pandas DataFrame (needs pandas: ``pip install 'agentropy[dataframes]'``)."""
    require("pandas", extra="dataframes")
    return table.to_pandas()


def to_polars(table: pa.Table) -> Any:
    """``table`` as a polars DataFrame (needs polars: ``pip install 'agentropy[dataframes]'``)."""
    pl = require("polars", extra="dataframes")
    return pl.from_arrow(table)
