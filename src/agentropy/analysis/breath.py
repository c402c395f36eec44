"""Within-episode breath analysis: baselines, triggers, spike ratios, eruptions and contractions.

Every definition is DESIGN.md ("Definitions"), implemented exactly, with each threshold a field
of :class:`BreathConfig`:

- **Trigger**: a tool turn. Its post-trigger stream ``P`` is the episode's assistant tokens after
  it, in order, across later assistant turns (tool turns hold no assistant tokens). An empty ``P``
  means no spike ratio and a ``no_response`` trigger.
- **Baseline** ``B``: median model entropy of the last ``window`` (W = 64) assistant tokens before
  the trigger anywhere in the episode (all of them if fewer), floored at ``eps``; ``eps`` if none.
  Two options change it (the defaults are DESIGN.md's): ``baseline_stat = "mean"`` averages the
  same tokens instead, and ``baseline_tokens = "text"`` draws the W tokens from free text only
  (see :data:`BaselineTokens` for why).
- **Spike ratio** ``S = mean(P[0:k]) / B`` (fewer than ``k`` tokens if ``P`` is shorter).
- **Eruption**: ``S >= eruption``.
- **Contraction**: the smallest ``n`` with ``cw <= n <= min(horizon, len(P))`` such that
  ``mean(P[n-cw:n]) <= band * B`` (``cw`` = ``contraction_window``); ``tokens_to_contraction = n``.
- **Kind** of an eruption: ``divergent`` if it does not contract; ``productive`` if it contracts
  and the next tool turn after the trigger has status ``ok`` (or there is no later tool turn and the
  episode succeeded); ``neutral`` otherwise (including an unknown ``success``).
- **Frozen response**: a failed tool turn (``error`` / ``unexpected``) with ``S < frozen`` whose
  next tool turn repeats the same call (name + canonical arguments).

The work is vectorised over a :class:`~agentropy.trace.TraceTable`, a columnar view of many
episodes (one flat float64 entropy array with per-episode and per-turn offsets), so that a Parquet
part of millions of tokens is analysed with a handful of numpy operations and no Python loop over
tokens. Per-trigger work is a fixed-width gather: ``(n_triggers, W)`` for baselines and
``(n_triggers, max(k, h))`` for the post-trigger stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from agentropy.trace import PHASE_CODE, STATUS_CODES, Episode, TraceTable

__all__ = [
    "BASELINE_STATS",
    "BASELINE_TOKENS",
    "KINDS",
    "BaselineStat",
    "BaselineTokens",
    "BoundVerdicts",
    "BreathConfig",
    "Kind",
    "TriggerStats",
    "TriggerTable",
    "analyze_episode",
    "analyze_triggers",
    "baseline_mask",
    "bound_verdicts",
    "eruption_records",
    "frozen_records",
    "trigger_stats",
]


Kind = Literal["productive", "neutral", "divergent"]
#: Eruption kind codes in :class:`TriggerTable` (``-1``: not an eruption).
KINDS: tuple[str, ...] = ("productive", "neutral", "divergent")

BaselineStat = Literal["median", "mean"]
"""Statistic of the baseline window: ``median`` (DESIGN.md; robust to a few high-entropy tokens,
but it sits at the floor as soon as more than half the window is near-deterministic) or
``mean`` (every token counts, so a short uncertain stretch lifts it off the floor)."""
BASELINE_STATS: tuple[str, ...] = get_args(BaselineStat)

BaselineTokens = Literal["all", "text"]
"""Which assistant tokens the baseline window draws from. ``all`` (DESIGN.md): the last W
assistant tokens. ``text``: the last W *free-text* tokens (phase ``plan`` or ``recover``, or an
unknown phase), looking back past tool-call and answer spans. Why: a tool call is a span of
near-deterministic tokens (the call syntax and arguments copied from the prompt) emitted right
before its result, so with ``all`` the window before a failure is dominated by the call itself
and the baseline sits at the ``eps`` floor; the spike ratio then compares the response with the
floor, not with how uncertain the agent's own prose was before the failure. Tokens of unknown
phase count as text, so traces without phases (imported logs) get the ``all`` baseline."""
BASELINE_TOKENS: tuple[str, ...] = get_args(BaselineTokens)
#: Phase codes excluded from a ``text`` baseline: the tool-call and final-answer spans.
_SPAN_PHASES = (PHASE_CODE["act"], PHASE_CODE["answer"])


@dataclass(frozen=True, slots=True)
class BreathConfig:
    """Thresholds of the within-episode definitions (DESIGN.md "Definitions")."""

    window: int = 64
    """W: number of assistant tokens before a trigger whose median entropy is the baseline."""
    baseline_stat: BaselineStat = "median"
    """Statistic of the baseline window: median (DESIGN.md) or mean."""
    baseline_tokens: BaselineTokens = "all"
    """Tokens of the baseline window: all assistant tokens (DESIGN.md) or free text only (plan,
    recover, unknown phase), which skips the near-deterministic tool-call span before a failure."""
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
        for name, allowed in (
            ("baseline_stat", BASELINE_STATS),
            ("baseline_tokens", BASELINE_TOKENS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"BreathConfig.{name} must be one of {', '.join(allowed)}, "
                    f"got {getattr(self, name)!r}"
                )
        if self.horizon < self.contraction_window:
            raise ValueError(
                f"BreathConfig.horizon ({self.horizon}) must be >= contraction_window "
                f"({self.contraction_window}); otherwise no eruption can ever contract"
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
    *,
    post_entropy: np.ndarray | None = None,
    baseline_from: np.ndarray | None = None,
) -> TriggerStats:
    """Baseline, spike ratio and contraction of ``M`` triggers, vectorised.

    ``entropy`` (N,) is the flat model-entropy stream of assistant tokens, nats. Trigger ``m``
    sits at global position ``trigger_pos[m]`` (the number of stream tokens before it) inside an
    episode owning tokens ``[ep_start[m], ep_end[m])`` (per-trigger arrays, shape (M,)).
    Contraction is computed for every trigger with a response; callers use it for eruptions.
    ``post_entropy`` (N,), when given, is read for the post-trigger stream instead of
    ``entropy`` (the baseline still reads ``entropy``): a trigger's baseline and stream are
    disjoint tokens, so :func:`bound_verdicts` combines the lower bound on one side with the
    upper bound on the other to get the extremes of the spike ratio.
    ``baseline_from`` (N,) bool, when given, restricts the baseline window to the tokens it marks
    (the last ``window`` marked tokens of the episode before the trigger; :func:`baseline_mask`);
    ``config.baseline_stat`` picks median or mean.
    """
    ent = np.asarray(entropy, np.float64)
    post_src = ent if post_entropy is None else np.asarray(post_entropy, np.float64)
    pos = np.asarray(trigger_pos, np.int64)
    lo = np.asarray(ep_start, np.int64)
    hi = np.asarray(ep_end, np.int64)
    m = pos.shape[0]
    n_tok = ent.shape[0]

    # Baseline: the last W eligible tokens before the trigger within the episode. With a mask the
    # eligible tokens are compacted into their own stream, where a trigger sits at the number of
    # eligible tokens before it, so one gather serves both cases.
    base_src, b_pos, b_lo = ent, pos, lo
    if baseline_from is not None:
        keep = np.flatnonzero(np.asarray(baseline_from, bool))  # (N',) sorted token positions
        base_src = ent[keep]
        b_pos = np.searchsorted(keep, pos)
        b_lo = np.searchsorted(keep, lo)
    w = config.window
    n_base = base_src.shape[0]
    idx = b_pos[:, None] - w + np.arange(w)[None, :]  # (M, W)
    valid = idx >= np.maximum(b_lo, b_pos - w)[:, None]
    gathered = base_src[np.clip(idx, 0, max(n_base - 1, 0))] if n_base else np.zeros(idx.shape)
    count = valid.sum(axis=1)
    has = count > 0
    c = np.maximum(count, 1)
    if config.baseline_stat == "mean":
        stat = np.where(valid, gathered, 0.0).sum(axis=1) / c
    else:
        # Out-of-window slots are +inf so that a row sort puts the c valid values first; the
        # median is read at the middle index(es) of those c values (mean of the two middles for
        # even c, like np.median).
        vals = np.where(valid, gathered, np.inf)
        vals.sort(axis=1)
        rows = np.arange(m)
        stat = 0.5 * (vals[rows, (c - 1) // 2] + vals[rows, c // 2])
    baseline = np.where(has, np.maximum(np.where(has, stat, 0.0), config.eps), config.eps)

    # Post-trigger stream, gathered to a fixed width L and zero-filled past the episode's end.
    n_post = hi - pos
    span = max(config.k, config.horizon)
    pidx = pos[:, None] + np.arange(span)[None, :]  # (M, L)
    pvalid = pidx < hi[:, None]
    post = np.where(pvalid, post_src[np.clip(pidx, 0, max(n_tok - 1, 0))] if n_tok else 0.0, 0.0)
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
    repeats: np.ndarray
    """bool: the episode's next tool turn makes the same call (name + canonical arguments)."""

    @property
    def failed(self) -> np.ndarray:
        return self.status >= 1

    @property
    def no_response(self) -> np.ndarray:
        return self.stats.n_post == 0


def baseline_mask(table: TraceTable, config: BreathConfig = BreathConfig()) -> np.ndarray | None:
    """(N,) bool: the tokens of ``table`` a baseline may draw from under ``config`` (None: all).

    ``baseline_tokens = "text"`` keeps every token whose phase is not ``act`` or ``answer``
    (:data:`BaselineTokens`)."""
    if config.baseline_tokens == "all":
        return None
    return ~np.isin(table.phase, _SPAN_PHASES)


def analyze_triggers(table: TraceTable, config: BreathConfig = BreathConfig()) -> TriggerTable:
    """Spike ratios, eruptions, contractions, kinds and frozen responses of every tool turn."""
    rows = np.flatnonzero(table.turn_is_tool)
    ep = table.turn_ep[rows]
    stats = trigger_stats(
        table.entropy,
        table.ep_start[ep],
        table.ep_end[ep],
        table.turn_start[rows],
        config,
        baseline_from=baseline_mask(table, config),
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
        repeats=next_same,
    )


@dataclass(frozen=True, slots=True)
class BoundVerdicts:
    """The range of each trigger's verdicts when entropies are top-k estimates; shapes (M,).

    Each token's true entropy is only known to lie in ``[lower, upper]`` (DESIGN.md, "Top-k
    estimate"). A trigger's baseline (tokens before it) and post-trigger stream (tokens after it)
    are disjoint, and the baseline (a floored median or mean) and every stream mean grow with each
    token's entropy, so the extremes are exact: the spike ratio is smallest with the stream at
    its lower bounds and the baseline at its upper bounds (contraction is then easiest), largest
    the other way round (contraction hardest). A verdict is *certain* when it holds at both
    extremes and *uncertain* when the extremes disagree; the point estimate's verdict lies
    between. Bounds are per trigger: two triggers' worst cases may need different values of a
    shared token, so the counts are an upper bound on how many verdicts could change at once.
    """

    spike_min: np.ndarray
    """float64 smallest spike ratio within the bounds (NaN for ``no_response``)."""
    spike_max: np.ndarray
    """float64 largest spike ratio within the bounds (NaN for ``no_response``)."""
    eruption_certain: np.ndarray
    """bool: an eruption at every entropy within the bounds (``spike_min >= eruption``)."""
    eruption_possible: np.ndarray
    """bool: an eruption at some entropy within the bounds (``spike_max >= eruption``)."""
    contraction_certain: np.ndarray
    """bool: contracts even with the stream at its upper and the baseline at its lower bounds."""
    contraction_possible: np.ndarray
    """bool: contracts with the stream at its lower and the baseline at its upper bounds."""
    frozen_certain: np.ndarray
    """bool: a frozen response at every entropy within the bounds."""
    frozen_possible: np.ndarray
    """bool: a frozen response at some entropy within the bounds."""

    @property
    def eruption_uncertain(self) -> np.ndarray:
        """bool: the eruption verdict flips within the bounds."""
        return self.eruption_possible & ~self.eruption_certain

    @property
    def kind_uncertain(self) -> np.ndarray:
        """bool: the eruption-or-kind verdict (none / productive-or-neutral / divergent) flips:
        the eruption itself is uncertain, or it may erupt and its contraction is uncertain."""
        contraction = self.contraction_possible & ~self.contraction_certain
        return self.eruption_possible & (~self.eruption_certain | contraction)

    @property
    def frozen_uncertain(self) -> np.ndarray:
        """bool: the frozen-response verdict flips within the bounds."""
        return self.frozen_possible & ~self.frozen_certain


def bound_verdicts(
    table: TraceTable, trig: TriggerTable, config: BreathConfig = BreathConfig()
) -> BoundVerdicts | None:
    """Verdict ranges of ``trig`` (from :func:`analyze_triggers` on ``table``) over the entropy
    bounds of ``table`` (:class:`BoundVerdicts`); None when the table has no bounds. Tokens
    without bounds (exact entropy) count at their value."""
    if table.entropy_lower is None or table.entropy_upper is None:
        return None
    ent = table.entropy
    lower = np.where(np.isnan(table.entropy_lower), ent, table.entropy_lower)
    upper = np.where(np.isnan(table.entropy_upper), ent, table.entropy_upper)
    rows = np.flatnonzero(table.turn_is_tool)
    args = (table.ep_start[trig.ep], table.ep_end[trig.ep], table.turn_start[rows], config)
    mask = baseline_mask(table, config)
    least = trigger_stats(upper, *args, post_entropy=lower, baseline_from=mask)
    most = trigger_stats(lower, *args, post_entropy=upper, baseline_from=mask)
    defined = trig.stats.n_post > 0
    s_min = np.where(defined, least.spike_ratio, 0.0)
    s_max = np.where(defined, most.spike_ratio, 0.0)
    # Frozen needs a failed trigger whose next call repeats it; only the spike ratio can move.
    base = trig.failed & defined & trig.repeats
    return BoundVerdicts(
        spike_min=least.spike_ratio,
        spike_max=most.spike_ratio,
        eruption_certain=defined & (s_min >= config.eruption),
        eruption_possible=defined & (s_max >= config.eruption),
        contraction_certain=defined & most.contracted,
        contraction_possible=defined & least.contracted,
        frozen_certain=base & (s_max < config.frozen),
        frozen_possible=base & (s_min < config.frozen),
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
