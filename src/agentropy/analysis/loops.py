"""Loops and hallucinated tool calls within episodes.

Definitions (DESIGN.md "Definitions", thresholds in :class:`LoopConfig`):

- **Repeated-call loop**: ``repeats`` (3) consecutive tool turns of an episode with the same call
  (name + canonical arguments, i.e. JSON with sorted keys). One loop is reported per maximal run,
  at the ``turn_index`` of the run's ``repeats``-th call (the first point at which an online
  detector could flag it), with the run ``length``. A tool turn without a parsed call breaks runs.
- **n-gram loop**: an assistant turn whose ``ngram``-gram repetition rate -- the share of its
  token n-grams already seen earlier in the same turn -- is ``>= ngram_rate`` (0.5). Needs
  ``token_ids``; turns without them, or with fewer than ``ngram`` tokens, are never loops.
- **Hallucinated call** (used per training step and per cycle): what is detectable from a trace:
  (a) a call to a tool not in ``known_tools`` (only when the caller gives that set), and
  (b) a string or number argument value (searched recursively in the arguments) that appears
  neither in the episode's question (``meta["question"]``) nor in any earlier tool output in the
  episode. (b) needs the question, so it is only checked in episodes that carry one; values
  shorter than ``min_value_chars`` characters (e.g. ``"1"``) are skipped because they appear
  everywhere by chance. A call is hallucinated if (a) or (b) holds.

n-gram repetition is vectorised over all turns of a table: each n-gram becomes a key
``(turn, id_0, .., id_{n-1})`` (packed into one int64 when it fits, else sorted
lexicographically); after sorting, a group of ``k`` equal keys holds ``k - 1`` n-grams "already
seen earlier in the same turn", whatever the order inside the group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from agentropy.trace import TraceTable

__all__ = [
    "LOOP_TYPES",
    "LoopConfig",
    "LoopTable",
    "LoopType",
    "find_loops",
    "hallucinated_calls",
    "loop_records",
    "ngram_repetition_rates",
]


LoopType = Literal["repeated_call", "ngram"]
LOOP_TYPES: tuple[str, ...] = ("repeated_call", "ngram")

# Widest packed n-gram key (bits) before falling back to a lexicographic sort; int64 is signed.
_MAX_PACKED_BITS = 62


@dataclass(frozen=True, slots=True)
class LoopConfig:
    """Thresholds of loop and hallucinated-call detection."""

    repeats: int = 3
    """Consecutive identical tool calls that make a repeated-call loop."""
    ngram: int = 3
    """n of the token n-grams whose repetition rate is measured."""
    ngram_rate: float = 0.5
    """Repetition rate at or above which an assistant turn is an n-gram loop."""
    min_value_chars: int = 3
    """Argument values shorter than this are not checked for hallucination."""

    def __post_init__(self) -> None:
        if not isinstance(self.repeats, int) or self.repeats < 2:
            raise ValueError(f"LoopConfig.repeats must be an integer >= 2, got {self.repeats!r}")
        if not isinstance(self.ngram, int) or self.ngram < 1:
            raise ValueError(f"LoopConfig.ngram must be an integer >= 1, got {self.ngram!r}")
        if not 0.0 < self.ngram_rate <= 1.0:
            raise ValueError(f"LoopConfig.ngram_rate must be in (0, 1], got {self.ngram_rate!r}")
        if not isinstance(self.min_value_chars, int) or self.min_value_chars < 1:
            raise ValueError(
                f"LoopConfig.min_value_chars must be an integer >= 1, got {self.min_value_chars!r}"
            )


def ngram_repetition_rates(
    token_ids: np.ndarray, starts: np.ndarray, ends: np.ndarray, n: int = 3
) -> np.ndarray:
    """Share of each segment's n-grams already seen earlier in the same segment.

    ``token_ids`` (N,) int; segments ``[starts[j], ends[j])`` (J,) must not overlap. Returns (J,)
    float64, NaN for segments with fewer than ``n`` tokens (no n-grams).
    """
    ids = np.asarray(token_ids, np.int64)
    starts = np.asarray(starts, np.int64)
    ends = np.asarray(ends, np.int64)
    n_seg = starts.shape[0]
    n_grams = np.maximum(ends - starts - n + 1, 0)
    rates = np.full(n_seg, np.nan)
    total = int(n_grams.sum())
    if total == 0:
        return rates
    # Start position of every n-gram, and its segment, without a Python loop over segments.
    seg = np.repeat(np.arange(n_seg), n_grams)
    first = np.cumsum(n_grams) - n_grams
    gpos = starts[seg] + (np.arange(total) - first[seg])
    # Within a segment, a group of k identical n-grams holds k - 1 repetitions whatever their
    # order, so duplicates can be counted from any sort that groups (segment, n-gram) together.
    # Fast path: pack the segment and the (offset, or if needed dense-ranked) ids into one int64
    # and np.sort it; fallback: a lexicographic sort of the columns.
    seg_bits = max(int(n_seg - 1).bit_length(), 1)
    vals = ids - ids.min()
    id_bits = max(int(vals.max()).bit_length(), 1)
    if seg_bits + n * id_bits > _MAX_PACKED_BITS:
        vocab, vals = np.unique(ids, return_inverse=True)
        id_bits = max(int(vocab.shape[0] - 1).bit_length(), 1)
    # (J,) float64 repeated n-grams per segment; numpy's stubs type a weighted bincount as int.
    dup_per_seg: np.ndarray
    if seg_bits + n * id_bits <= _MAX_PACKED_BITS:
        key = seg.astype(np.int64)
        for j in range(n):
            key = (key << id_bits) | vals[gpos + j].astype(np.int64)
        key.sort()
        dup = key[1:] == key[:-1]
        dup_seg = key[1:][dup] >> (n * id_bits)
        dup_per_seg = np.bincount(dup_seg, minlength=n_seg).astype(np.float64)
    else:
        cols = [ids[gpos + j] for j in range(n)]
        order = np.lexsort((*reversed(cols), seg))
        keys = np.stack([seg, *cols], axis=1)[order]
        dup_sorted = (keys[1:] == keys[:-1]).all(axis=1)
        dup_per_seg = np.bincount(seg[order][1:], weights=dup_sorted, minlength=n_seg)
    has = n_grams > 0
    rates[has] = dup_per_seg[has] / n_grams[has]
    return rates


#: Multipliers of the n-gram hash in :func:`_ngram_rate_bounds` (odd 64-bit constants, so that
#: multiplication wraps around as a bijection and mixes every input bit into the high bits).
_HASH_MULT = np.uint64(0x9E3779B97F4A7C15)
_HASH_STEP = np.uint64(0xBF58476D1CE4E5B9)
#: Fewest hash bits left beside the segment number in a 32-bit key; fewer means an exact pass.
_MIN_HASH_BITS = 12


def _ngram_rate_bounds(
    token_ids: np.ndarray, starts: np.ndarray, ends: np.ndarray, n: int
) -> np.ndarray | None:
    """Upper bounds (J,) of :func:`ngram_repetition_rates` (NaN where a segment has no n-gram),
    or None when there are too many segments to bound this way.

    Why: the exact rates sort one 64-bit key per n-gram, and numpy sorts 32-bit keys several
    times faster (SIMD); loops are rare, so a cheap bound that clears almost every turn leaves the
    exact sort to a handful. Each n-gram becomes ``segment << b | hash(n-gram) >> (64 - b)`` in
    32 bits. Equal n-grams of a segment get equal keys, so a group of ``k`` equal keys holds at
    least the true repetitions among its n-grams and at most ``k - 1``: hash collisions can only
    raise the count, so the result is never below the exact rate.
    """
    ids = np.asarray(token_ids, np.int64).view(np.uint64)
    starts = np.asarray(starts, np.int64)
    ends = np.asarray(ends, np.int64)
    n_seg = starts.shape[0]
    seg_bits = max(int(n_seg - 1).bit_length(), 1)
    hash_bits = 32 - seg_bits
    if hash_bits < _MIN_HASH_BITS:
        return None
    n_grams = np.maximum(ends - starts - n + 1, 0)
    bounds = np.full(n_seg, np.nan)
    total = int(n_grams.sum())
    if total == 0:
        return bounds
    seg = np.repeat(np.arange(n_seg, dtype=np.uint32), n_grams)
    first = np.cumsum(n_grams) - n_grams
    gpos = np.arange(total) + np.repeat(starts - first, n_grams)  # start of every n-gram
    # Hash the n-gram starting at every token position with contiguous slices (no gathers),
    # then keep the positions where a segment's n-gram starts.
    m = ids.shape[0] - n + 1
    h = ids[:m] * _HASH_MULT
    for j in range(1, n):
        h = (h ^ ids[j : j + m]) * _HASH_STEP
    top = (h >> np.uint64(64 - hash_bits)).astype(np.uint32)[gpos]
    key = (seg << np.uint32(hash_bits)) | top
    key.sort()
    dup = key[1:] == key[:-1]
    dup_per_seg = np.bincount(key[1:][dup] >> np.uint32(hash_bits), minlength=n_seg)
    has = n_grams > 0
    bounds[has] = dup_per_seg[has] / n_grams[has]
    return bounds


@dataclass(frozen=True, slots=True)
class LoopTable:
    """Loops of a :class:`TraceTable`; shapes (L,)."""

    ep: np.ndarray
    """int64 episode row."""
    turn_index: np.ndarray
    """int64 turn index (see module docstring for which turn)."""
    type: np.ndarray
    """int8 index into :data:`LOOP_TYPES`."""
    value: np.ndarray
    """float64: run length (repeated_call) or repetition rate (ngram)."""


def find_loops(table: TraceTable, config: LoopConfig = LoopConfig()) -> LoopTable:
    """Repeated-call and n-gram loops of every episode in ``table``."""
    # Repeated calls: runs of equal keys among consecutive tool turns of the same episode.
    rows = np.flatnonzero(table.turn_is_tool)
    key = table.tool_key[rows]
    ep = table.turn_ep[rows]
    m = rows.shape[0]
    same = np.zeros(m, bool)
    if m > 1:
        same[1:] = (key[1:] == key[:-1]) & (ep[1:] == ep[:-1]) & (key[1:] >= 0)
    run_id = np.cumsum(~same) - 1  # (M,)
    run_len = np.bincount(run_id, minlength=int(run_id[-1]) + 1 if m else 0)
    run_start = np.flatnonzero(~same)
    long_runs = np.flatnonzero(run_len >= config.repeats)
    at = rows[run_start[long_runs] + config.repeats - 1]
    rc_ep = table.turn_ep[at]
    rc_turn = table.turn_index[at]
    rc_val = run_len[long_runs].astype(np.float64)

    # n-gram repetition on assistant turns that carry token ids.
    arows = np.flatnonzero(~table.turn_is_tool & table.turn_has_ids)
    starts, ends = table.turn_start[arows], table.turn_end[arows]
    bound = _ngram_rate_bounds(table.token_ids, starts, ends, config.ngram)
    if bound is not None:  # exact rates only where the bound says a loop is possible
        arows = arows[np.where(np.isnan(bound), False, bound >= config.ngram_rate)]
        starts, ends = table.turn_start[arows], table.turn_end[arows]
    rates = ngram_repetition_rates(table.token_ids, starts, ends, config.ngram)
    hit = np.where(np.isnan(rates), False, rates >= config.ngram_rate)
    ng = arows[hit]
    ep_all = np.concatenate([rc_ep, table.turn_ep[ng]])
    turn_all = np.concatenate([rc_turn, table.turn_index[ng]])
    type_all = np.concatenate(
        [np.zeros(rc_ep.shape[0], np.int8), np.ones(ng.shape[0], np.int8)]
    ).astype(np.int8)
    val_all = np.concatenate([rc_val, rates[hit]])
    # Report in episode, turn order.
    order = np.lexsort((turn_all, ep_all))
    return LoopTable(
        ep=ep_all[order], turn_index=turn_all[order], type=type_all[order], value=val_all[order]
    )


def loop_records(table: TraceTable, loops: LoopTable) -> list[dict[str, Any]]:
    """One dict per loop: episode_id, turn_index, type, and ``length`` or ``rate``."""
    out = []
    for e, t, ty, v in zip(loops.ep, loops.turn_index, loops.type, loops.value, strict=True):
        rec: dict[str, Any] = {
            "episode_id": table.episode_id[e],
            "turn_index": int(t),
            "type": LOOP_TYPES[ty],
        }
        if ty == 0:
            rec["length"] = int(v)
        else:
            rec["rate"] = float(v)
        out.append(rec)
    return out


def _values(obj: Any) -> list[tuple[str, ...]]:
    """Accepted string forms of every string / number leaf of a JSON value (booleans and None
    skipped); a leaf is found in a text if any of its forms is."""
    if isinstance(obj, dict):
        return [v for x in obj.values() for v in _values(x)]
    if isinstance(obj, list | tuple):
        return [v for x in obj for v in _values(x)]
    if isinstance(obj, bool) or obj is None:
        return []
    if isinstance(obj, float) and obj.is_integer():
        # 3.0 is usually written "3" in tool outputs and questions.
        return [(str(int(obj)), str(obj))]
    if isinstance(obj, int | float | str):
        return [(str(obj),)]
    return []


def hallucinated_calls(
    table: TraceTable,
    *,
    known_tools: frozenset[str] | None = None,
    config: LoopConfig = LoopConfig(),
) -> tuple[np.ndarray, np.ndarray]:
    """Per tool turn of ``table``: (checked, hallucinated), both (U,) bool over all turns.

    ``checked`` marks tool turns where at least one of the two checks (module docstring) could be
    made; ``hallucinated`` marks those found hallucinated. Python-level, but per tool call, not
    per token.
    """
    u = table.turn_ep.shape[0]
    checked = np.zeros(u, bool)
    halluc = np.zeros(u, bool)
    seen_ep = -1
    context: list[str] = []
    for r in np.flatnonzero(table.turn_is_tool):
        e = int(table.turn_ep[r])
        if e != seen_ep:
            seen_ep = e
            q = table.question[e]
            context = [] if q is None else [q]
        name = table.tool_name[r]
        if name is not None:
            bad = False
            did = False
            if known_tools is not None:
                did = True
                bad = name not in known_tools
            if table.question[e] is not None:
                did = True
                text = "\n".join(context)
                for forms in _values(table.tool_arguments[r]):
                    if len(forms[0]) >= config.min_value_chars and not any(
                        f in text for f in forms
                    ):
                        bad = True
                        break
            checked[r] = did
            halluc[r] = bad
        content = table.tool_content[r]
        if content:
            context.append(content)
    return checked, halluc
