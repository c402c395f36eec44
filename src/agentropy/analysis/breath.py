"""Within-episode breath analysis: baselines, triggers, spike ratios, eruptions and contractions.

Every definition is DESIGN.md ("Definitions"), implemented exactly, with each threshold a field
of :class:`BreathConfig`:

- **Trigger**: a tool turn. Its post-trigger stream ``P`` is the episode's assistant tokens after
  it, in order, across later assistant turns (tool turns hold no assistant tokens). An empty ``P``
  means no spike ratio and a ``no_response`` trigger.
- **Baseline** ``B``: median model entropy of the last ``window`` (W = 64) assistant tokens before
  the trigger anywhere in the episode (all of them if fewer), floored at ``eps``; ``eps`` if none.
- **Spike ratio** ``S = mean(P[0:k]) / B`` (fewer than ``k`` tokens if ``P`` is shorter).
- **Eruption**: ``S >= eruption``.
- **Contraction**: the smallest ``n`` with ``cw <= n <= min(horizon, len(P))`` such that
  ``mean(P[n-cw:n]) <= band * B`` (``cw`` = ``contraction_window``); ``tokens_to_contraction = n``.
- **Kind** of an eruption: ``divergent`` if it does not contract; ``productive`` if it contracts
  and the next tool turn after the trigger has status ``ok`` (or there is no later tool turn and the
  episode succeeded); ``neutral`` otherwise (including an unknown ``success``).
- **Frozen response**: a failed tool turn (``error`` / ``unexpected``) with ``S < frozen`` whose
  next tool turn repeats the same call (name + canonical arguments).

The work is vectorised over a :class:`TraceTable`, a columnar view of many episodes (one flat
float64 entropy array with per-episode and per-turn offsets), so that a Parquet part of millions of
tokens is analysed with a handful of numpy operations and no Python loop over tokens. Per-trigger
work is a fixed-width gather: ``(n_triggers, W)`` for baselines and ``(n_triggers, max(k, h))``
for the post-trigger stream.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from agentropy.errors import InputError
from agentropy.trace import Episode, canonical_arguments

NanPolicy = Literal["raise", "drop"]
NAN_POLICIES: tuple[str, ...] = ("raise", "drop")

#: Tool-status codes used in :class:`TraceTable` (``-1``: assistant turn or status missing).
STATUS_CODES: dict[str, int] = {"ok": 0, "error": 1, "unexpected": 2}
STATUS_NAMES: tuple[str, ...] = ("ok", "error", "unexpected")

Kind = Literal["productive", "neutral", "divergent"]
#: Eruption kind codes in :class:`TriggerTable` (``-1``: not an eruption).
KINDS: tuple[str, ...] = ("productive", "neutral", "divergent")


@dataclass(frozen=True, slots=True)
class BreathConfig:
    """Thresholds of the within-episode definitions (DESIGN.md "Definitions")."""

    window: int = 64
    """W: number of assistant tokens before a trigger whose median entropy is the baseline."""
    eps: float = 0.05
    """Floor of the baseline, nats (keeps spike ratios finite after near-deterministic text)."""
    k: int = 16
    """Number of post-trigger tokens averaged in the spike ratio."""
    eruption: float = 2.0
    """Spike ratio at or above which a trigger is an eruption."""
    contraction_window: int = 8
    """Width of the rolling window whose mean must return into the band for a contraction."""
    band: float = 1.25
    """Contraction band, as a multiple of the baseline."""
    horizon: int = 128
    """h: largest ``tokens_to_contraction`` considered; later returns count as not contracted."""
    frozen: float = 1.2
    """Spike ratio below which a failed call followed by the same call is a frozen response."""

    def __post_init__(self) -> None:
        for name in ("window", "k", "contraction_window", "horizon"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"BreathConfig.{name} must be an integer >= 1, got {value!r}")
        for name in ("eps", "eruption", "band", "frozen"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"BreathConfig.{name} must be a finite number > 0, got {value!r}")
        if self.horizon < self.contraction_window:
            raise ValueError(
                f"BreathConfig.horizon ({self.horizon}) must be >= contraction_window "
                f"({self.contraction_window}); otherwise no eruption can ever contract"
            )


class _TurnColumns:
    """The per-turn columns of a :class:`TraceTable`, appended turn by turn by its builders."""

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
        self.key_codes: dict[str, int] = {}

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
        key = -1 if call_key is None else self.key_codes.setdefault(call_key, len(self.key_codes))
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
            "key_names": list(self.key_codes),
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
    """(N,) int8 phase codes (index into ``trace.PHASES``), -1 where unknown."""
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

    @property
    def n_episodes(self) -> int:
        return len(self.episode_id)

    @property
    def n_tokens(self) -> int:
        return int(self.entropy.shape[0])

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
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
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
                finite = np.isfinite(ent)
                if not finite.all():
                    if nan_policy == "raise":
                        bad = int(np.flatnonzero(~finite)[0])
                        raise InputError(
                            f"non-finite entropy {ent[bad]} at token {bad} of episode "
                            f"{ep.episode_id!r} (use --nan-policy drop to drop such tokens)",
                            path=source,
                            field=f"turns[{i}].entropy",
                        )
                    dropped += int((~finite).sum())
                    ent = ent[finite]
                    tid = None if tid is None else np.asarray(tid)[finite]
                    ph = None if ph is None else np.asarray(ph)[finite]
                n = ent.shape[0]
                ent_parts.append(ent)
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

        def cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
            return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)

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
            entropy=cat(ent_parts, np.float64),
            token_ids=cat(tid_parts, np.int64),
            phase=cat(ph_parts, np.int8),
            n_dropped=dropped,
            **turn_cols.fields(),
        )

    @classmethod
    def from_arrow(cls, episodes: Any, tokens: Any, *, source: str | None = None) -> TraceTable:
        """Build the columnar view straight from one Parquet part of a trace store.

        ``episodes`` and ``tokens`` are the pyarrow tables yielded by
        :func:`agentropy.trace.iter_parts` (already validated; rows dropped under
        ``nan_policy="drop"`` are missing from ``tokens`` and counted in ``n_dropped``). Token
        columns are converted to numpy without building per-token Python objects.
        """
        import pyarrow.compute as pc

        cols = episodes.select(
            ["episode_id", "task_id", "step", "policy", "success", "reward", "latency_s", "meta"]
        ).to_pydict()
        ids: list[str] = cols["episode_id"]
        n_ep = len(ids)

        def floats(values: list[Any]) -> np.ndarray:
            return np.array([np.nan if v is None else v for v in values], np.float64)

        success = np.array([-1 if v is None else int(v) for v in cols["success"]], np.int8)
        questions: list[str | None] = []
        for m in cols["meta"]:
            meta = json.loads(m) if m else {}
            q = meta.get("question") if isinstance(meta, dict) else None
            questions.append(q if isinstance(q, str) else None)
        turns = [json.loads(t) for t in episodes.column("turns").to_pylist()]

        # Declared assistant-turn runs, in token-row order.
        run_ep, run_turn, run_len = [], [], []
        for e, tl in enumerate(turns):
            for i, td in enumerate(tl):
                if td.get("role") == "assistant":
                    run_ep.append(e)
                    run_turn.append(i)
                    run_len.append(int(td.get("n_tokens", 0)))
        declared = np.asarray(run_len, np.int64)
        actual = declared
        n_rows = tokens.num_rows
        if n_rows != int(declared.sum()):
            # Rows were dropped: count the rows each (episode, turn) run really has.
            enc = pc.dictionary_encode(tokens.column("episode_id")).combine_chunks()
            row_of = {eid: r for r, eid in enumerate(ids)}
            lut = np.array([row_of[v] for v in enc.dictionary.to_pylist()], np.int64)
            tok_ep = lut[enc.indices.to_numpy(zero_copy_only=False)]
            tok_turn = tokens.column("turn_index").to_numpy().astype(np.int64)
            width = int(max(len(tl) for tl in turns)) + 1 if turns else 1
            keys = tok_ep * width + tok_turn
            uniq, counts = np.unique(keys, return_counts=True)
            want = np.asarray(run_ep, np.int64) * width + np.asarray(run_turn, np.int64)
            at = np.clip(np.searchsorted(uniq, want), 0, max(len(uniq) - 1, 0))
            found = (uniq[at] == want) if len(uniq) else np.zeros(len(want), bool)
            actual = np.where(found, counts[at] if len(uniq) else 0, 0).astype(np.int64)

        ep_start = np.zeros(n_ep, np.int64)
        ep_end = np.zeros(n_ep, np.int64)
        turn_cols = _TurnColumns()
        pos = 0
        k = 0
        for e, tl in enumerate(turns):
            ep_start[e] = pos
            for i, td in enumerate(tl):
                if td.get("role") == "assistant":
                    n = int(actual[k])
                    k += 1
                    turn_cols.add_assistant(e, i, pos, n, "token_ids" in td.get("arrays", ()))
                    pos += n
                    continue
                name = td.get("name")
                args = None if name is None else td.get("arguments", {})
                key = None if name is None else f"{name}:{canonical_arguments(args)}"
                turn_cols.add_tool(e, i, pos, td.get("status"), key, name, args, td.get("content"))
            ep_end[e] = pos

        def column(name: str, fill: Any, dtype: Any) -> np.ndarray:
            col = tokens.column(name)
            if col.null_count:
                col = pc.fill_null(col, fill)
            return np.asarray(col.to_numpy(), dtype=dtype)

        return cls(
            episode_id=ids,
            task_id=cols["task_id"],
            policy=cols["policy"],
            question=questions,
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
            **turn_cols.fields(),
        )


@dataclass(frozen=True, slots=True)
class TriggerStats:
    """Per-trigger numbers from :func:`trigger_stats`; every array has shape ``(M,)``."""

    baseline: np.ndarray
    """float64 baseline B, nats (>= eps)."""
    n_post: np.ndarray
    """int64 length of the post-trigger stream P."""
    spike_ratio: np.ndarray
    """float64 S, NaN where P is empty (``no_response``)."""
    contracted: np.ndarray
    """bool: some n in [cw, min(h, len(P))] has mean(P[n-cw:n]) <= band * B."""
    tokens_to_contraction: np.ndarray
    """int64 smallest such n, -1 if not contracted."""


def trigger_stats(
    entropy: np.ndarray,
    ep_start: np.ndarray,
    ep_end: np.ndarray,
    trigger_pos: np.ndarray,
    config: BreathConfig = BreathConfig(),
) -> TriggerStats:
    """Baseline, spike ratio and contraction of ``M`` triggers, vectorised.

    ``entropy`` (N,) is the flat model-entropy stream of assistant tokens, nats. Trigger ``m``
    sits at global position ``trigger_pos[m]`` (the number of stream tokens before it) inside an
    episode owning tokens ``[ep_start[m], ep_end[m])`` (per-trigger arrays, shape (M,)).
    Contraction is computed for every trigger with a response; callers use it for eruptions.
    """
    ent = np.asarray(entropy, np.float64)
    pos = np.asarray(trigger_pos, np.int64)
    lo = np.asarray(ep_start, np.int64)
    hi = np.asarray(ep_end, np.int64)
    m = pos.shape[0]
    n_tok = ent.shape[0]

    # Baseline: median of the last W tokens before the trigger within the episode. Out-of-window
    # slots are +inf so that a row sort puts the c valid values first; the median is then read at
    # the middle index(es) of those c values (mean of the two middles for even c, like np.median).
    w = config.window
    idx = pos[:, None] - w + np.arange(w)[None, :]  # (M, W)
    valid = idx >= np.maximum(lo, pos - w)[:, None]
    vals = np.where(valid, ent[np.clip(idx, 0, max(n_tok - 1, 0))] if n_tok else 0.0, np.inf)
    vals.sort(axis=1)
    count = valid.sum(axis=1)
    rows = np.arange(m)
    has = count > 0
    c = np.maximum(count, 1)
    median = 0.5 * (vals[rows, (c - 1) // 2] + vals[rows, c // 2])
    baseline = np.where(has, np.maximum(np.where(has, median, 0.0), config.eps), config.eps)

    # Post-trigger stream, gathered to a fixed width L and zero-filled past the episode's end.
    n_post = hi - pos
    span = max(config.k, config.horizon)
    pidx = pos[:, None] + np.arange(span)[None, :]  # (M, L)
    pvalid = pidx < hi[:, None]
    post = np.where(pvalid, ent[np.clip(pidx, 0, max(n_tok - 1, 0))] if n_tok else 0.0, 0.0)
    n_head = np.minimum(n_post, config.k)
    head_sum = post[:, : config.k].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        spike = np.where(n_post > 0, head_sum / np.maximum(n_head, 1) / baseline, np.nan)

    # Contraction: window sums for n = cw..h (column j <-> n = j + cw), valid for n <= len(P).
    cw = config.contraction_window
    sums = sliding_window_view(post[:, : config.horizon], cw, axis=1).sum(axis=2)  # (M, h-cw+1)
    n_of_col = np.arange(sums.shape[1]) + cw
    ok = (n_of_col[None, :] <= n_post[:, None]) & (sums / cw <= (config.band * baseline)[:, None])
    contracted = ok.any(axis=1)
    ttc = np.where(contracted, ok.argmax(axis=1) + cw, -1).astype(np.int64)
    return TriggerStats(
        baseline=baseline,
        n_post=n_post,
        spike_ratio=spike,
        contracted=contracted,
        tokens_to_contraction=ttc,
    )


@dataclass(frozen=True, slots=True)
class TriggerTable:
    """Every trigger (tool turn) of a :class:`TraceTable` with its breath analysis; shapes (M,)."""

    ep: np.ndarray
    """int64 episode row in the table."""
    turn_index: np.ndarray
    """int64 index of the trigger in its episode's ``turns``."""
    status: np.ndarray
    """int8 status code of the trigger (:data:`STATUS_CODES`, -1 missing)."""
    key: np.ndarray
    """int64 call identity code (-1: no parsed call)."""
    stats: TriggerStats
    next_tool: np.ndarray
    """int64 row (in this table) of the episode's next tool turn, -1 if none."""
    eruption: np.ndarray
    """bool ``S >= eruption`` (False for no_response)."""
    kind: np.ndarray
    """int8 index into :data:`KINDS` for eruptions, -1 otherwise."""
    frozen: np.ndarray
    """bool frozen response."""

    @property
    def failed(self) -> np.ndarray:
        return self.status >= 1

    @property
    def no_response(self) -> np.ndarray:
        return self.stats.n_post == 0


def analyze_triggers(table: TraceTable, config: BreathConfig = BreathConfig()) -> TriggerTable:
    """Spike ratios, eruptions, contractions, kinds and frozen responses of every tool turn."""
    rows = np.flatnonzero(table.turn_is_tool)
    ep = table.turn_ep[rows]
    stats = trigger_stats(
        table.entropy, table.ep_start[ep], table.ep_end[ep], table.turn_start[rows], config
    )
    status = table.tool_status[rows]
    key = table.tool_key[rows]
    m = rows.shape[0]
    # Turns are stored in episode order, so the next tool turn of trigger i is row i + 1 when it
    # belongs to the same episode.
    nxt = np.full(m, -1, np.int64)
    if m > 1:
        same = ep[1:] == ep[:-1]
        nxt[:-1] = np.where(same, np.arange(1, m), -1)
    has_next = nxt >= 0
    nxt_c = np.maximum(nxt, 0)
    next_status = np.where(has_next, status[nxt_c] if m else -1, -1)
    next_same = has_next & (key >= 0) & (key[nxt_c] == key if m else False)

    spike = stats.spike_ratio
    defined = stats.n_post > 0
    s0 = np.where(defined, spike, 0.0)
    eruption = defined & (s0 >= config.eruption)
    success = table.success[ep] if m else np.zeros(0, np.int8)
    progress = np.where(has_next, next_status == STATUS_CODES["ok"], success == 1)
    kind = np.full(m, -1, np.int8)
    kind[eruption & progress] = KINDS.index("productive")
    kind[eruption & ~progress] = KINDS.index("neutral")
    kind[eruption & ~stats.contracted] = KINDS.index("divergent")
    frozen = (status >= 1) & defined & (s0 < config.frozen) & next_same
    return TriggerTable(
        ep=ep,
        turn_index=table.turn_index[rows],
        status=status,
        key=key,
        stats=stats,
        next_tool=nxt,
        eruption=eruption,
        kind=kind,
        frozen=frozen,
    )


def _num(x: float) -> float | None:
    """A JSON-safe float: None for NaN/inf."""
    x = float(x)
    return x if np.isfinite(x) else None


def eruption_records(table: TraceTable, trig: TriggerTable) -> list[dict[str, Any]]:
    """One dict per eruption: episode_id, turn_index, spike_ratio, baseline, contracted,
    tokens_to_contraction (None if not contracted), kind."""
    out = []
    for i in np.flatnonzero(trig.eruption):
        contracted = bool(trig.stats.contracted[i])
        out.append(
            {
                "episode_id": table.episode_id[trig.ep[i]],
                "turn_index": int(trig.turn_index[i]),
                "spike_ratio": _num(trig.stats.spike_ratio[i]),
                "baseline": _num(trig.stats.baseline[i]),
                "contracted": contracted,
                "tokens_to_contraction": int(trig.stats.tokens_to_contraction[i])
                if contracted
                else None,
                "kind": KINDS[trig.kind[i]],
            }
        )
    return out


def frozen_records(table: TraceTable, trig: TriggerTable) -> list[dict[str, Any]]:
    """One dict per frozen response: episode_id, turn_index, spike_ratio."""
    return [
        {
            "episode_id": table.episode_id[trig.ep[i]],
            "turn_index": int(trig.turn_index[i]),
            "spike_ratio": _num(trig.stats.spike_ratio[i]),
        }
        for i in np.flatnonzero(trig.frozen)
    ]


def analyze_episode(episode: Episode, config: BreathConfig = BreathConfig()) -> dict[str, Any]:
    """Convenience for one in-memory episode: its eruptions, frozen responses and no_response
    trigger indices, as plain dicts (see :func:`eruption_records`)."""
    table = TraceTable.from_episodes([episode])
    trig = analyze_triggers(table, config)
    return {
        "eruptions": eruption_records(table, trig),
        "frozen": frozen_records(table, trig),
        "no_response": [int(i) for i in trig.turn_index[trig.no_response]],
    }
