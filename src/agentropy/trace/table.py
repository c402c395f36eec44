"""The columnar :class:`TraceTable`: many episodes as flat numpy arrays, for vectorised analysis.

One flat float64 entropy array of every assistant token with per-episode and per-turn offsets, so
that a Parquet part of millions of tokens is analysed (:mod:`agentropy.analysis`) with a handful of
numpy operations and no Python loop over tokens. Two builders: :meth:`TraceTable.from_episodes`
(in-memory :class:`~agentropy.trace.Episode` lists, e.g. a JSONL file) and
:meth:`TraceTable.from_arrow` (one validated part of a Parquet store, straight from its pyarrow
tables, with no per-token Python objects). Tool statuses are coded by
:data:`~agentropy.trace.STATUS_CODES`, phases by :data:`~agentropy.trace.PHASE_CODE`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from agentropy.errors import InputError
from agentropy.trace.model import (
    BOUNDS_META_KEY,
    STATUS_CODES,
    Episode,
    NanPolicy,
    ToolCall,
    _cat,
    entropy_bounds_of,
)
from agentropy.trace.validate import _NAN_HINT, _check_nan_policy

__all__ = [
    "TraceTable",
]


#: Argument value types whose Python equality matches their canonical JSON (floats are not:
#: ``-0.0 == 0.0``; ``1 == 1.0 == True`` is told apart by keeping the type in the cache key).
_CACHEABLE_ARG = frozenset({str, int, bool, type(None)})


class _CallCodes:
    """Integer identity codes of tool calls: equal codes = same name and canonical arguments
    (:attr:`ToolCall.key`); ``names`` lists the keys in code order."""

    def __init__(self) -> None:
        self.names: dict[str, int] = {}
        # (name, (argument name, type, value), ...) -> code, for calls whose arguments are flat
        # scalars: spares a canonical JSON dump per call (most calls of a part repeat).
        self._by_sig: dict[tuple[Any, ...], int] = {}

    def of_key(self, key: str) -> int:
        """Code of a call identity string."""
        return self.names.setdefault(key, len(self.names))

    def of_call(self, name: str, arguments: Mapping[str, Any]) -> int:
        """Code of a call given as ``name`` and validated ``arguments``."""
        sig: tuple[Any, ...] | None = (name,)
        for k, v in arguments.items():
            if v.__class__ not in _CACHEABLE_ARG:
                sig = None
                break
            sig += ((k, v.__class__, v),)  # type: ignore[operator]
        code = None if sig is None else self._by_sig.get(sig)
        if code is None:
            code = self.of_key(ToolCall(name, dict(arguments)).key)
            if sig is not None:
                self._by_sig[sig] = code
        return code


class _TurnColumns:
    """The per-turn columns of a :class:`TraceTable`, appended turn by turn by
    :meth:`TraceTable.from_episodes` (:meth:`TraceTable.from_arrow` builds them column-wise)."""

    def __init__(self) -> None:
        self.ep: list[int] = []
        self.index: list[int] = []
        self.is_tool: list[bool] = []
        self.start: list[int] = []
        self.end: list[int] = []
        self.has_ids: list[bool] = []
        self.status: list[int] = []
        self.key: list[int] = []
        self.name: list[str | None] = []
        self.arguments: list[Any] = []
        self.content: list[str | None] = []
        self.calls = _CallCodes()

    def add_assistant(self, e: int, i: int, start: int, n: int, has_ids: bool) -> None:
        """Turn ``i`` of episode ``e``: an assistant turn owning tokens ``[start, start + n)``."""
        self._add(e, i, False, start, start + n, has_ids, -1, -1, None, None, None)

    def add_tool(
        self,
        e: int,
        i: int,
        pos: int,
        status: str | None,
        call_key: str | None,
        name: str | None,
        arguments: Any,
        content: str | None,
    ) -> None:
        """Turn ``i`` of episode ``e``: a tool turn at token position ``pos`` (``call_key``:
        name + canonical arguments, None for an unparseable call)."""
        key = -1 if call_key is None else self.calls.of_key(call_key)
        code = STATUS_CODES.get(status or "", -1)
        self._add(e, i, True, pos, pos, False, code, key, name, arguments, content)

    def _add(
        self,
        e: int,
        i: int,
        is_tool: bool,
        start: int,
        end: int,
        has_ids: bool,
        status: int,
        key: int,
        name: str | None,
        arguments: Any,
        content: str | None,
    ) -> None:
        self.ep.append(e)
        self.index.append(i)
        self.is_tool.append(is_tool)
        self.start.append(start)
        self.end.append(end)
        self.has_ids.append(has_ids)
        self.status.append(status)
        self.key.append(key)
        self.name.append(name)
        self.arguments.append(arguments)
        self.content.append(content)

    def fields(self) -> dict[str, Any]:
        """The :class:`TraceTable` fields ``turn_*``, ``tool_*`` and ``key_names``."""
        return {
            "turn_ep": np.asarray(self.ep, np.int64),
            "turn_index": np.asarray(self.index, np.int64),
            "turn_is_tool": np.asarray(self.is_tool, bool),
            "turn_start": np.asarray(self.start, np.int64),
            "turn_end": np.asarray(self.end, np.int64),
            "turn_has_ids": np.asarray(self.has_ids, bool),
            "tool_status": np.asarray(self.status, np.int8),
            "tool_key": np.asarray(self.key, np.int64),
            "tool_name": self.name,
            "tool_arguments": self.arguments,
            "tool_content": self.content,
            "key_names": list(self.calls.names),
        }


@dataclass(slots=True)
class TraceTable:
    """Columnar view of a list of episodes (one Parquet part, or an in-memory list).

    Shapes: ``E`` episodes, ``N`` assistant tokens, ``U`` turns (assistant and tool). Token
    positions are global offsets into the flat token arrays; episode ``e`` owns tokens
    ``[ep_start[e], ep_end[e])``. A tool turn's ``turn_start == turn_end`` is the position where its
    post-trigger stream begins.
    """

    # --- episodes (E,) ---------------------------------------------------------------------
    episode_id: list[str]
    task_id: list[str | None]
    policy: list[str | None]
    question: list[str | None]
    """``meta["question"]`` when present (used to tell hallucinated argument values)."""
    step: np.ndarray
    """(E,) float64 training step, NaN when absent."""
    success: np.ndarray
    """(E,) int8: 1 success, 0 failure, -1 unknown."""
    reward: np.ndarray
    """(E,) float64, NaN when absent."""
    latency_s: np.ndarray
    """(E,) float64 episode wall time, NaN when absent."""
    ep_start: np.ndarray
    ep_end: np.ndarray
    # --- tokens (N,) -----------------------------------------------------------------------
    entropy: np.ndarray
    """(N,) float64 model entropy, nats."""
    token_ids: np.ndarray
    """(N,) int64 token ids, -1 where the turn has none."""
    phase: np.ndarray
    """(N,) int8 phase codes (index into :data:`~agentropy.trace.PHASES`), -1 where unknown."""
    # --- turns (U,) ------------------------------------------------------------------------
    turn_ep: np.ndarray
    turn_index: np.ndarray
    turn_is_tool: np.ndarray
    turn_start: np.ndarray
    turn_end: np.ndarray
    turn_has_ids: np.ndarray
    tool_status: np.ndarray
    """(U,) int8 status code (:data:`STATUS_CODES`), -1 for assistant turns / missing status."""
    tool_key: np.ndarray
    """(U,) int64 call identity code (equal codes = same name and canonical arguments), -1 none."""
    tool_name: list[str | None]
    tool_arguments: list[Any]
    tool_content: list[str | None]
    n_dropped: int = 0
    """Non-finite entropies dropped under ``nan_policy="drop"``."""
    key_names: list[str] = field(default_factory=list)
    """Call identity strings, indexed by ``tool_key`` codes."""
    entropy_lower: np.ndarray | None = None
    """(N,) float64 lower bound of ``entropy`` where it is an estimate (turns with
    ``meta[BOUNDS_META_KEY]``, e.g. imported top-k logprobs), NaN where it is exact; None when
    no token of the part has bounds."""
    entropy_upper: np.ndarray | None = None
    """(N,) float64 upper bound, as ``entropy_lower``."""

    @property
    def n_episodes(self) -> int:
        return len(self.episode_id)

    @property
    def n_tokens(self) -> int:
        return int(self.entropy.shape[0])

    def to_arrow(self, part: Literal["tokens", "turns", "episodes"] = "tokens") -> Any:
        """One part as a pyarrow Table: ``tokens`` (N rows), ``turns`` (U) or ``episodes`` (E);
        see :func:`agentropy.frames.trace_arrow`."""
        from agentropy.frames import trace_arrow

        return trace_arrow(self, part)

    def to_pandas(self, part: Literal["tokens", "turns", "episodes"] = "tokens") -> Any:
        """One part as a pandas DataFrame (``pip install 'agentropy[dataframes]'``)."""
        from agentropy.frames import to_pandas

        return to_pandas(self.to_arrow(part))

    def to_polars(self, part: Literal["tokens", "turns", "episodes"] = "tokens") -> Any:
        """One part as a polars DataFrame (``pip install 'agentropy[dataframes]'``)."""
        from agentropy.frames import to_polars

        return to_polars(self.to_arrow(part))

    @classmethod
    def from_episodes(
        cls,
        episodes: list[Episode],
        *,
        nan_policy: NanPolicy = "raise",
        source: str | None = None,
    ) -> TraceTable:
        """Build the columnar view; non-finite entropies raise :class:`InputError` or are dropped.

        ``source`` names the file in error messages. Dropping removes the token from every
        per-token array of its turn, so later positions shift; the count is ``n_dropped``.
        """
        _check_nan_policy(nan_policy)
        n_ep = len(episodes)
        step = np.full(n_ep, np.nan)
        success = np.full(n_ep, -1, dtype=np.int8)
        reward = np.full(n_ep, np.nan)
        latency = np.full(n_ep, np.nan)
        ep_start = np.zeros(n_ep, dtype=np.int64)
        ep_end = np.zeros(n_ep, dtype=np.int64)
        ids, tasks, policies, questions = [], [], [], []
        ent_parts: list[np.ndarray] = []
        tid_parts: list[np.ndarray] = []
        ph_parts: list[np.ndarray] = []
        lo_parts: list[np.ndarray] = []
        hi_parts: list[np.ndarray] = []
        bounded = False
        turn_cols = _TurnColumns()
        pos = 0
        dropped = 0
        for e, ep in enumerate(episodes):
            ids.append(ep.episode_id)
            tasks.append(ep.task_id)
            policies.append(ep.policy)
            q = ep.meta.get("question") if isinstance(ep.meta, dict) else None
            questions.append(q if isinstance(q, str) else None)
            if ep.step is not None:
                step[e] = ep.step
            if ep.success is not None:
                success[e] = int(bool(ep.success))
            if ep.reward is not None:
                reward[e] = ep.reward
            if ep.latency_s is not None:
                latency[e] = ep.latency_s
            ep_start[e] = pos
            for i, turn in enumerate(ep.turns):
                if turn.role == "tool":
                    call = turn.call
                    if call is None:
                        turn_cols.add_tool(e, i, pos, turn.status, None, None, None, turn.content)
                    else:
                        key, name, args = call.key, call.name, call.arguments
                        turn_cols.add_tool(e, i, pos, turn.status, key, name, args, turn.content)
                    continue
                ent = np.asarray(turn.entropy if turn.entropy is not None else [], np.float64)
                tid = turn.token_ids
                ph = turn.phase
                try:
                    bounds = entropy_bounds_of(turn.meta, ent.shape[0], field=f"turns[{i}].meta")
                except InputError as err:
                    raise InputError(
                        f"{err.message} (episode {ep.episode_id!r})", path=source, field=err.field
                    ) from None
                finite = np.isfinite(ent)
                if not finite.all():
                    if nan_policy == "raise":
                        bad = int(np.flatnonzero(~finite)[0])
                        raise InputError(
                            f"non-finite entropy {ent[bad]} at token {bad} of episode "
                            f"{ep.episode_id!r} ({_NAN_HINT})",
                            path=source,
                            field=f"turns[{i}].entropy",
                        )
                    dropped += int((~finite).sum())
                    ent = ent[finite]
                    tid = None if tid is None else np.asarray(tid)[finite]
                    ph = None if ph is None else np.asarray(ph)[finite]
                    bounds = None if bounds is None else (bounds[0][finite], bounds[1][finite])
                n = ent.shape[0]
                ent_parts.append(ent)
                bounded |= bounds is not None
                lo_parts.append(np.full(n, np.nan) if bounds is None else bounds[0])
                hi_parts.append(np.full(n, np.nan) if bounds is None else bounds[1])
                has_ids = tid is not None and len(tid) == n
                tid_parts.append(np.asarray(tid, np.int64) if has_ids else np.full(n, -1, np.int64))
                ph_parts.append(
                    np.asarray(ph, np.int8)
                    if ph is not None and len(ph) == n
                    else np.full(n, -1, np.int8)
                )
                turn_cols.add_assistant(e, i, pos, n, has_ids)
                pos += n
            ep_end[e] = pos

        return cls(
            episode_id=ids,
            task_id=tasks,
            policy=policies,
            question=questions,
            step=step,
            success=success,
            reward=reward,
            latency_s=latency,
            ep_start=ep_start,
            ep_end=ep_end,
            entropy=_cat(ent_parts, np.float64),
            token_ids=_cat(tid_parts, np.int64),
            phase=_cat(ph_parts, np.int8),
            n_dropped=dropped,
            entropy_lower=_cat(lo_parts, np.float64) if bounded else None,
            entropy_upper=_cat(hi_parts, np.float64) if bounded else None,
            **turn_cols.fields(),
        )

    @classmethod
    def from_arrow(cls, episodes: Any, tokens: Any, *, source: str | None = None) -> TraceTable:
        """Build the columnar view straight from one Parquet part of a trace store.

        ``episodes`` and ``tokens`` are the pyarrow tables yielded by
        :func:`agentropy.trace.iter_parts` (already validated; rows dropped under
        ``nan_policy="drop"`` are missing from ``tokens`` and counted in ``n_dropped``). Token
        columns are converted to numpy without building per-token Python objects. When
        ``episodes`` has the turn columns of store format 2 (:mod:`agentropy.trace.parquet`; a
        sealed part read by :func:`agentropy.trace.iter_part_tables`), the turns are read from
        them and the ``turns`` JSON is not decoded; the caller vouches that they agree with it.
        """
        import pyarrow.compute as pc

        cols = episodes.select(
            ["episode_id", "task_id", "step", "policy", "success", "reward", "latency_s"]
        ).to_pydict()
        ids: list[str] = cols["episode_id"]
        n_ep = len(ids)

        def floats(values: list[Any]) -> np.ndarray:
            return np.array([np.nan if v is None else v for v in values], np.float64)

        success = np.array([-1 if v is None else int(v) for v in cols["success"]], np.int8)
        turns = _turns_from_columns(episodes)
        if turns is None:
            turns = _turns_from_json(episodes, source)
        n_turns, is_tool, n_tok = turns.n_turns, turns.is_tool, turns.n_tokens
        u = is_tool.shape[0]
        turn_ep = np.repeat(np.arange(n_ep, dtype=np.int64), n_turns)
        first_turn = np.cumsum(n_turns) - n_turns
        turn_index = np.arange(u, dtype=np.int64) - np.repeat(first_turn, n_turns)
        asst = np.flatnonzero(~is_tool)
        declared = n_tok[asst]
        actual = declared
        n_rows = tokens.num_rows
        total = int(declared.sum())
        if n_rows != total:
            if "episode_id" not in tokens.column_names:
                raise InputError(
                    f"tokens part has {n_rows} rows but the episodes' turns declare {total} "
                    "tokens (store corrupted)",
                    path=source,
                )
            # Rows were dropped: count the rows each (episode, turn) run really has.
            enc = pc.dictionary_encode(tokens.column("episode_id")).combine_chunks()
            row_of = {eid: r for r, eid in enumerate(ids)}
            lut = np.array([row_of[v] for v in enc.dictionary.to_pylist()], np.int64)
            tok_ep = lut[enc.indices.to_numpy(zero_copy_only=False)]
            tok_turn = tokens.column("turn_index").to_numpy().astype(np.int64)
            width = int(n_turns.max()) + 1 if n_ep else 1
            keys = tok_ep * width + tok_turn
            uniq, counts = np.unique(keys, return_counts=True)
            want = turn_ep[asst] * width + turn_index[asst]
            at = np.clip(np.searchsorted(uniq, want), 0, max(len(uniq) - 1, 0))
            found = (uniq[at] == want) if len(uniq) else np.zeros(len(want), bool)
            actual = np.where(found, counts[at] if len(uniq) else 0, 0).astype(np.int64)
            n_tok[asst] = actual
        turn_end = np.cumsum(n_tok)
        turn_start = turn_end - n_tok
        ep_start = turn_start[first_turn] if n_ep else np.zeros(0, np.int64)
        ep_end = turn_end[first_turn + n_turns - 1] if n_ep else np.zeros(0, np.int64)
        # Assistant turns whose entropy is an estimate with bounds: (run, episode, turn, meta).
        run_of = np.cumsum(~is_tool) - 1
        bounded_turns = [
            (int(run_of[j]), int(turn_ep[j]), int(turn_index[j]), meta)
            for j, meta in turns.bounds_meta
        ]

        ent_lo: np.ndarray | None = None
        ent_hi: np.ndarray | None = None
        if bounded_turns:
            # Turns whose entropy is an estimate with bounds: NaN (exact) everywhere else.
            total = int(actual.sum())
            lo, hi = np.full(total, np.nan), np.full(total, np.nan)
            run_start = np.cumsum(actual) - actual
            token_index: np.ndarray | None = None
            for k, e, i, meta in bounded_turns:
                try:
                    bounds = entropy_bounds_of(meta, int(declared[k]), field=f"turns[{i}].meta")
                except InputError as err:
                    raise InputError(err.message, path=source, row=e, field=err.field) from None
                if bounds is None:  # pragma: no cover (only turns with bounds are listed)
                    continue
                s0, n = int(run_start[k]), int(actual[k])
                if n != int(declared[k]):
                    # Rows were dropped: keep the bounds of the tokens that remain.
                    if token_index is None:
                        token_index = np.asarray(tokens.column("token_index").to_numpy())
                    keep = token_index[s0 : s0 + n]
                    bounds = (bounds[0][keep], bounds[1][keep])
                lo[s0 : s0 + n], hi[s0 : s0 + n] = bounds
            ent_lo, ent_hi = lo, hi

        def column(name: str, fill: Any, dtype: Any) -> np.ndarray:
            col = tokens.column(name)
            if col.null_count:
                col = pc.fill_null(col, fill)
            return np.asarray(col.to_numpy(), dtype=dtype)

        return cls(
            episode_id=ids,
            task_id=cols["task_id"],
            policy=cols["policy"],
            question=turns.question,
            step=floats(cols["step"]),
            success=success,
            reward=floats(cols["reward"]),
            latency_s=floats(cols["latency_s"]),
            ep_start=ep_start,
            ep_end=ep_end,
            entropy=column("entropy", 0.0, np.float64),
            token_ids=column("token_id", -1, np.int64),
            phase=column("phase", -1, np.int8),
            n_dropped=int(declared.sum()) - n_rows,
            entropy_lower=ent_lo,
            entropy_upper=ent_hi,
            turn_ep=turn_ep,
            turn_index=turn_index,
            turn_is_tool=is_tool,
            turn_start=turn_start,
            turn_end=turn_end,
            turn_has_ids=turns.has_ids,
            tool_status=turns.status,
            tool_key=turns.tool_key,
            tool_name=turns.names,
            tool_arguments=turns.arguments,
            tool_content=turns.contents,
            key_names=turns.key_names,
        )


@dataclass(slots=True)
class _PartTurns:
    """The per-turn columns of one Parquet part, as :meth:`TraceTable.from_arrow` needs them
    (``U`` turns of the part, in episode order), and each episode's question."""

    n_turns: np.ndarray
    """(E,) int64 turns per episode."""
    is_tool: np.ndarray
    """(U,) bool."""
    n_tokens: np.ndarray
    """(U,) int64 declared tokens (0 for tool turns); writable."""
    has_ids: np.ndarray
    """(U,) bool."""
    status: np.ndarray
    """(U,) int8 status codes."""
    tool_key: np.ndarray
    """(U,) int64 call identity codes, -1 without a parsed call."""
    key_names: list[str]
    names: list[str | None]
    arguments: list[Any]
    contents: list[str | None]
    question: list[str | None]
    bounds_meta: list[tuple[int, dict[str, Any]]]
    """(turn row, meta) of the assistant turns whose meta holds entropy bounds."""


def _turns_from_json(episodes: Any, source: str | None) -> _PartTurns:
    """The part's turns decoded from its ``turns`` JSON column (any store format)."""
    questions: list[str | None] = []
    for m in episodes.column("meta").to_pylist():
        meta = json.loads(m) if m and m != "{}" else {}
        q = meta.get("question") if isinstance(meta, dict) else None
        questions.append(q if isinstance(q, str) else None)
    n_ep = episodes.num_rows
    # One JSON document for the whole part: one decoder call instead of one per episode
    # (each string is one validated JSON list, so the joined text holds exactly n_ep).
    turns = json.loads("[" + ",".join(episodes.column("turns").to_pylist()) + "]")
    if len(turns) != n_ep:  # pragma: no cover (only if an unvalidated table is passed)
        raise InputError("the 'turns' column does not hold one JSON list per episode", path=source)
    # Built column-wise over the part's turns (thousands) with comprehensions.
    flat = [td for tl in turns for td in tl]
    u = len(flat)
    is_tool = np.fromiter((td["role"] != "assistant" for td in flat), bool, u)
    names = [td.get("name") for td in flat]
    arguments: list[Any] = [
        None if nm is None else (td.get("arguments") or {})
        for nm, td in zip(names, flat, strict=True)
    ]
    calls = _CallCodes()
    tool_key = np.fromiter(
        (
            -1 if nm is None else calls.of_call(nm, a)
            for nm, a in zip(names, arguments, strict=True)
        ),
        np.int64,
        u,
    )
    return _PartTurns(
        n_turns=np.fromiter(map(len, turns), np.int64, n_ep),
        is_tool=is_tool,
        n_tokens=np.fromiter((td.get("n_tokens", 0) for td in flat), np.int64, u),
        has_ids=np.fromiter(("token_ids" in td.get("arrays", ()) for td in flat), bool, u),
        status=np.fromiter(
            (STATUS_CODES.get(td.get("status") or "", -1) for td in flat), np.int8, u
        ),
        tool_key=tool_key,
        key_names=list(calls.names),
        names=names,
        arguments=arguments,
        contents=[td.get("content") for td in flat],
        question=questions,
        bounds_meta=[
            (j, flat[j]["meta"])
            for j in np.flatnonzero(~is_tool).tolist()
            if flat[j].get("meta") and flat[j]["meta"].get(BOUNDS_META_KEY) is not None
        ],
    )


def _turns_from_columns(episodes: Any) -> _PartTurns | None:
    """The part's turns from the format-2 turn columns (:mod:`agentropy.trace.parquet`), with
    no JSON decoding but the calls' arguments; None when the table has no such columns or a
    turn carries entropy bounds (their arrays live in the turn's meta, in the JSON)."""
    import pyarrow.compute as pc

    if "turn_is_tool" not in episodes.column_names:
        return None

    def flat(name: str) -> Any:
        col = episodes.column(name)
        return pc.list_flatten(col.combine_chunks() if col.num_chunks != 1 else col.chunk(0))

    if pc.any(flat("turn_bounded")).as_py():
        return None
    lengths = pc.list_value_length(episodes.column("turn_is_tool"))
    n_turns = np.asarray(pc.fill_null(lengths, 0).to_numpy(), np.int64)
    names_arr = flat("turn_name")
    args_arr = flat("turn_arguments")
    # Call identity "name:canonical arguments" (ToolCall.key), coded in order of first
    # appearance as _CallCodes does; null (no parsed call) -> -1.
    enc = pc.dictionary_encode(pc.binary_join_element_wise(names_arr, args_arr, ":"))
    tool_key = np.asarray(pc.fill_null(enc.indices, -1).to_numpy(), np.int64)
    names: list[str | None] = names_arr.to_pylist()
    args_json: list[str | None] = args_arr.to_pylist()
    present = [a for a in args_json if a is not None]
    decoded = iter(json.loads("[" + ",".join(present) + "]") if present else [])
    arguments = [None if a is None else next(decoded) for a in args_json]
    return _PartTurns(
        n_turns=n_turns,
        is_tool=np.asarray(flat("turn_is_tool").to_numpy(zero_copy_only=False), bool),
        n_tokens=np.array(flat("turn_n_tokens").to_numpy(), np.int64),
        has_ids=np.asarray(flat("turn_has_ids").to_numpy(zero_copy_only=False), bool),
        status=np.asarray(flat("turn_status").to_numpy(), np.int8),
        tool_key=tool_key,
        key_names=enc.dictionary.to_pylist(),
        names=names,
        arguments=arguments,
        contents=flat("turn_content").to_pylist(),
        question=episodes.column("question").to_pylist(),
        bounds_meta=[],
    )
