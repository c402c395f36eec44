"""Batched multi-turn rollouts of any Hugging Face causal LM against a tool world.

:func:`rollout` runs one episode per task with a manual KV-cached decode loop (model forward with
``past_key_values`` / ``cache``, ``attention_mask`` and ``position_ids``; not ``generate``), so
that it can, per token and per row: ask a :class:`~agentropy.control.base.TemperatureSchedule`
for the temperature, sample, and record exactly what DESIGN.md's data model asks for (token id,
log-prob under the sampling distribution, model entropy at T = 1, sampling entropy, the
temperature applied, phase), and between turns execute tool calls and append the tool message.

Design of the loop (one "wave" of up to ``batch_size`` episodes at a time):

- Every live row holds a list of *pending* tokens to feed: the prompt at the start, the one token
  it just sampled while generating, or the runner-injected end-of-turn plus the rendered tool
  message and generation prompt after a tool call. Each step feeds one block of width
  ``W = max(len(pending))``; shorter rows are **right-padded** inside the block (padding never
  precedes a row's first real token, so no query ever has nothing to attend to, which would give
  NaN in SDPA). Padding slots get attention-mask 0 and stay in the shared cache, masked, forever;
  ``position_ids`` count each row's real tokens only, so a row's positions are the same as if it
  ran alone. Logits are read at each row's last real token of the block (``logits_to_keep``
  restricted to those columns when the model supports it).
- Token-in/token-out: tokens are only ever appended. A tool result is rendered as the template's
  suffix after an assistant message (render ``[system, user, assistant(sentinel), tool]`` with the
  generation prompt and keep what follows the sentinel): that is the end-of-turn the model did not
  emit (injected), the tool message, and the next assistant header. The sampled tokens are never
  re-tokenised. Injected and tool tokens are in ``meta["input_ids"]`` (when recorded) but never in
  the per-token arrays.
- A row whose next block is a tool message may wait up to ``RunnerConfig.hold_steps`` steps
  (feeding only padding) while other rows decode, so that several rows' tool messages share one
  wide block instead of each padding every row's cache by its length (see :func:`_hold`).
- Rows whose episode ended are dropped from the batch (``cache.batch_select_indices``), so a
  wave's stragglers do not pay for finished rows.
- Temperature is applied once to fp32 logits. Sampling uses one ``torch.Generator`` per episode,
  seeded from ``(seed, episode index)``: results do not depend on ``batch_size`` or on the other
  rows (up to floating-point differences from the batch shape).

Per-token ``phase`` is the tracker's after-the-fact label (:mod:`agentropy.control.phases`);
the schedule sees the online phase before sampling (they differ only on the tokens that start a
marker).
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from agentropy.agent.config import RunnerConfig
from agentropy.control.base import (
    StepObservation,
    TemperatureSchedule,
    _extremes,
    as_array,
    state_arrays,
)
from agentropy.control.phases import IncrementalDecoder, PhaseMarkers, PhaseTracker
from agentropy.trace import FAILED_STATUSES, Episode, Turn

__all__ = ["RunnerConfig", "ToolSuffix", "rollout"]

# Stands in for an assistant message's content when rendering the template's tool-message suffix;
# chosen so that no template trims it and no tool output contains it.
_SENTINEL = "\u2063agentropy-sentinel\u2063"


class ToolSuffix:
    """Token ids appended after an assistant turn that called a tool (token-in/token-out).

    For a conversation prefix ``messages`` (system + user), the text appended after the assistant
    content is whatever the chat template renders after that content when the assistant message
    is followed by a ``tool`` message and the generation prompt. It starts with the end-of-turn
    (e.g. ``<|im_end|>\\n``); if the model already emitted its end-of-turn token, that token's
    text is dropped from the front.
    """

    def __init__(
        self, tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict] | None
    ) -> None:
        self.tokenizer = tokenizer
        self.messages = messages
        self.tools = tools

    def render(self, tool_message: dict[str, Any]) -> str:
        """Text after the assistant content: end-of-turn, tool message, generation prompt."""
        conv = [*self.messages, {"role": "assistant", "content": _SENTINEL}, tool_message]
        text = self.tokenizer.apply_chat_template(
            conv, tools=self.tools, tokenize=False, add_generation_prompt=True
        )
        i = text.rfind(_SENTINEL)
        if i < 0:
            raise ValueError(
                "the chat template does not render assistant message content verbatim; "
                "agentropy's runner needs it to append tool messages token-in/token-out"
            )
        return text[i + len(_SENTINEL) :]

    def ids(self, tool_message: dict[str, Any], *, emitted_eot: str | None) -> list[int]:
        """Token ids to append; ``emitted_eot`` is the text of the model's own end token, if any."""
        text = self.render(tool_message)
        if emitted_eot and text.startswith(emitted_eot):
            text = text[len(emitted_eot) :]
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass
class _Row:
    """One episode in flight."""

    index: int
    task: Any
    session: Any
    tracker: PhaseTracker
    suffix: ToolSuffix
    generator: torch.Generator
    seq: list[int]
    pending: list[int]
    t_start: float
    fed: int = 0
    held: int = 0
    turns: list[Turn] = field(default_factory=list)
    spans: list[list[int]] = field(default_factory=list)
    n_tokens: int = 0
    n_turns: int = 0
    prev_sampling_entropy: float = math.nan
    fresh: bool = True
    done: bool = False
    success: bool = False
    end_reason: str = ""
    tool_latency: float = 0.0
    t_done: float = 0.0
    # current assistant turn
    decoder: IncrementalDecoder | None = None
    turn_ids: list[int] = field(default_factory=list)
    turn_logprob: list[float] = field(default_factory=list)
    turn_entropy: list[float] = field(default_factory=list)
    turn_sampling_entropy: list[float] = field(default_factory=list)
    turn_temperature: list[float] = field(default_factory=list)
    turn_start: float = 0.0


def _seed_for(seed: int, index: int) -> int:
    """Independent per-episode seed (SeedSequence mixing, not ``seed + index`` overlap)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, index]).generate_state(1)[0])


def stop_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """Token ids that end an assistant turn: the tokenizer's and the generation config's eos."""
    ids: set[int] = set()
    for src in (
        getattr(tokenizer, "eos_token_id", None),
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
    ):
        if src is None:
            continue
        ids.update([src] if isinstance(src, int) else list(src))
    return ids


def forward_kwargs(model: Any) -> tuple[str, bool]:
    """Name of the cache argument of ``model.forward`` and whether it takes ``logits_to_keep``."""
    params = inspect.signature(model.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"
    return cache_kw, "logits_to_keep" in params


def _sample(
    logits: torch.Tensor, temps: torch.Tensor, generators: Sequence[torch.Generator]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample one token per row of fp32 ``logits`` (b, V) at ``temps`` (b,) fp32.

    Returns ``(tokens (b,) int64, logprob (b,), sampling_entropy (b,))``: log-prob and entropy
    under ``softmax(logits / T)``, from the same scaled logits the token was drawn from; both 0
    for greedy rows (T = 0), which take the argmax (lowest id on ties).

    This runs once per decoding step, so it skips what cannot change the result: the argument
    checks of :func:`~agentropy.entropy.apply_temperature` and
    :func:`~agentropy.entropy.logprobs_and_entropy` (whose arithmetic it repeats, for the same
    bits), and the greedy-row work when no row is greedy. A row whose result is not finite (a
    ``-inf`` logit) goes through ``logprobs_and_entropy`` itself.
    """
    from agentropy.entropy import _divide, logprobs_and_entropy

    b = logits.shape[0]
    greedy = temps == 0
    draw = (~greedy).nonzero().squeeze(1).tolist()
    all_draw = len(draw) == b
    # Temperature applied once, to fp32 logits, before softmax (DESIGN.md); greedy rows are
    # scaled by 1 and never drawn from.
    t = temps if all_draw else torch.where(greedy, torch.ones_like(temps), temps)
    scaled = _divide(logits, t.to(device=logits.device, dtype=torch.float32).contiguous())
    tokens = torch.empty(b, dtype=torch.int64, device=logits.device)
    if not all_draw:
        tokens = logits.argmax(dim=-1)
    if draw:
        # Inverse-CDF draw, one uniform per token from the row's own generator, so the draw does
        # not depend on which other rows share the batch; the CDFs of all drawing rows in one
        # batched cumsum/searchsorted (row by row, the same bits, at a fraction of the cost).
        probs = torch.softmax(scaled, dim=-1)  # (b, V)
        u = torch.stack(
            [torch.rand((), generator=generators[j], dtype=torch.float64) for j in draw]
        ).to(logits.device)
        if all_draw:
            cdf = probs.double().cumsum(1)  # (b, V)
        else:
            rows = torch.tensor(draw, device=logits.device)
            cdf = probs[rows].double().cumsum(1)  # (d, V)
        k = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(1)
        k = k.clamp_max(logits.shape[-1] - 1)
        if all_draw:
            tokens = k
        else:
            tokens[rows] = k
    # logprobs_and_entropy(scaled, tokens) at T = 1 (T already applied), its operations in order.
    ls = torch.log_softmax(scaled, -1)
    p = torch.exp(ls)
    h = torch.linalg.vecdot(p, ls).neg_()
    sum_p = p.sum(-1)
    log_z = sum_p.log()
    h = h.div_(sum_p).add_(log_z)
    logprob = ls.gather(1, tokens.unsqueeze(1)).squeeze(1).sub_(log_z)
    # One reduction and one sync: finite iff every row is (see entropy.step_entropy).
    if not math.isfinite((h.sum() + logprob.sum()).item()):
        logprob, h = logprobs_and_entropy(scaled, tokens)
    else:
        h = h.clamp_min_(0.0)
    if all_draw:
        return tokens, logprob, h
    zero = torch.zeros_like(logprob)
    return tokens, torch.where(greedy, zero, logprob), torch.where(greedy, zero, h)


def rollout(
    model: Any,
    tokenizer: Any,
    world: Any,
    tasks: Sequence[Any],
    *,
    schedule: TemperatureSchedule,
    config: RunnerConfig | None = None,
    seed: int = 0,
    policy_name: str | None = None,
    step: int | None = None,
    progress: bool = False,
) -> list[Episode]:
    """Run one episode per task; return the episodes in task order.

    Args:
        model: a Hugging Face causal LM (``model(input_ids, attention_mask, position_ids,
            cache/past_key_values, use_cache=True).logits``), any architecture.
        tokenizer: its tokenizer, with a chat template that accepts ``tool`` messages.
        world: a tool world (:class:`agentropy.env.toolworld.ToolWorld` or the same interface):
            ``system_prompt()``, ``tool_schemas()``, ``start(task) -> session``; sessions have
            ``call``, ``call_error``, ``check_answer``, ``fault_kinds``, ``record()``.
        tasks: tasks with ``task_id``, ``level`` and ``question``.
        schedule: per-row, per-token temperature (``ConstantTemperature(0.0)`` is greedy).
        config: budgets and batch size.
        seed: sampling seed; the same seed gives the same episodes.
        policy_name: ``Episode.policy`` (default ``schedule.name``).
        step: ``Episode.step`` (training step), if any.
        progress: show a progress bar (rich) over episodes.

    Returns:
        Episodes with assistant turns (per-token ``token_ids``, ``logprob``, ``entropy``,
        ``sampling_entropy``, ``temperature``, ``phase``, ``text``, ``wall_s``) and tool turns
        (``call``, ``status``, ``content``, ``latency_s``, ``wall_s``); ``success``, ``reward``
        (1.0 if the answer is correct else 0.0), ``fault_kinds``, ``latency_s`` (generation wall
        time plus simulated tool latency) and ``meta`` (``session.record()`` plus ``end_reason``).
    """
    config = config if config is not None else RunnerConfig()
    policy = policy_name if policy_name is not None else getattr(schedule, "name", None)
    episodes: list[Episode | None] = [None] * len(tasks)
    was_training = bool(getattr(model, "training", False))
    if hasattr(model, "eval"):
        model.eval()
    bar = _Progress(len(tasks)) if progress else None
    try:
        for start in range(0, len(tasks), config.batch_size):
            wave = list(range(start, min(start + config.batch_size, len(tasks))))
            for row in _run_wave(model, tokenizer, world, tasks, wave, schedule, config, seed, bar):
                episodes[row.index] = _episode(row, policy, step, seed, config)
    finally:
        if bar is not None:
            bar.close()
        if was_training:
            model.train()
    return [e for e in episodes if e is not None]


class _Progress:
    def __init__(self, total: int) -> None:
        from rich.progress import Progress

        self._p = Progress(transient=False)
        self._p.start()
        self._task = self._p.add_task("rollout", total=total)

    def advance(self) -> None:
        self._p.advance(self._task)

    def close(self) -> None:
        self._p.stop()


def _new_row(
    index: int,
    task: Any,
    tokenizer: Any,
    world: Any,
    tools: list[dict] | None,
    markers: PhaseMarkers | None,
    seed: int,
) -> _Row:
    messages = [
        {"role": "system", "content": world.system_prompt()},
        {"role": "user", "content": task.question},
    ]
    text = tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=True
    )
    prompt = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not prompt:
        raise ValueError(f"task {task.task_id}: the rendered prompt has no tokens")
    gen = torch.Generator().manual_seed(_seed_for(seed, index))
    now = time.perf_counter()
    row = _Row(
        index=index,
        task=task,
        session=world.start(task),
        tracker=PhaseTracker(markers),
        suffix=ToolSuffix(tokenizer, messages, tools),
        generator=gen,
        seq=list(prompt),
        pending=list(prompt),
        t_start=now,
    )
    _start_turn(row, tokenizer, now)
    return row


def _start_turn(row: _Row, tokenizer: Any, now: float) -> None:
    row.tracker.start_turn()
    row.decoder = IncrementalDecoder(tokenizer)
    row.turn_ids, row.turn_logprob, row.turn_entropy = [], [], []
    row.turn_sampling_entropy, row.turn_temperature = [], []
    row.turn_start = now


@torch.inference_mode()
def _run_wave(
    model: Any,
    tokenizer: Any,
    world: Any,
    tasks: Sequence[Any],
    wave: list[int],
    schedule: TemperatureSchedule,
    config: RunnerConfig,
    seed: int,
    bar: _Progress | None,
) -> list[_Row]:
    from transformers import DynamicCache

    from agentropy.agent.kvcache import GrowingLayer, growing_cache
    from agentropy.entropy import step_entropy
    from agentropy.env.format import parse_assistant

    device = next(model.parameters()).device
    tools = world.tool_schemas()
    stop_ids = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    cache_kw, has_keep = forward_kwargs(model)
    max_context = config.max_context or getattr(model.config, "max_position_embeddings", None)

    rows = [_new_row(i, tasks[i], tokenizer, world, tools, config.markers, seed) for i in wave]
    n = len(rows)
    state = _schedule_state(schedule, n)
    if config.kv_cache == "growing":
        cache = growing_cache(model.config)
    else:
        cache = DynamicCache(config=model.config)
    live = list(range(n))  # wave positions of the rows in the batch, in batch order
    attn = torch.zeros((n, 0), dtype=torch.long, device=device)
    if config.share_prompts and all(type(x) is GrowingLayer for x in cache.layers):
        attn = _prefill_shared_prompts(model, rows, cache, cache_kw, has_keep, pad_id, attn)

    while live:
        # ---- one block: each live row feeds its pending tokens, right-padded to width w
        lens = [len(rows[i].pending) for i in live]
        b = len(live)
        held = _hold(rows, live, lens, config.hold_steps)
        for j in held:
            lens[j] = 0
        w = max(lens)
        # A held row feeds nothing this step (padding only, at its last position).
        ids, mask, pos = _block(
            [(rows[i].pending if lens[j] else [], rows[i].fed) for j, i in enumerate(live)],
            pad_id,
        )
        for j, i in enumerate(live):
            row, k = rows[i], lens[j]
            if k == 0:
                row.held += 1
            else:
                row.fed += k
                row.pending = []
                row.held = 0
        attn = torch.cat([attn, mask.to(device)], dim=1)
        fed = [j for j in range(b) if lens[j]]  # rows that sample this step
        fed_t = torch.tensor(fed, dtype=torch.long)
        last = torch.tensor([lens[j] for j in fed]) - 1  # column of each row's last real token
        keep_cols = torch.unique(last)  # sorted
        keep = (keep_cols.to(device) if len(keep_cols) < w else 0) if has_keep else None
        out = _forward(model, cache_kw, cache, ids.to(device), attn, pos.to(device), keep)
        logits = out.logits
        col = torch.searchsorted(keep_cols, last) if has_keep and len(keep_cols) < w else last
        logits = logits[fed_t.to(logits.device), col.to(logits.device)].float()  # (f, V) fp32
        sampling = [live[j] for j in fed]  # wave positions of the rows that sample

        # ---- schedule: per-row temperatures from what we know before sampling
        h = step_entropy(logits)  # (b,) model entropy, T = 1 (recorded for every token)
        temps, state = _schedule_step(schedule, state, rows, sampling, h)
        tokens, logprob, samp_ent = _sample(
            logits, temps.to(logits.device), [rows[i].generator for i in sampling]
        )

        # ---- bookkeeping per row
        now = time.perf_counter()
        tok_l, lp_l, h_l = tokens.tolist(), logprob.tolist(), h.tolist()
        se_l, t_l = samp_ent.tolist(), temps.tolist()
        for j, i in enumerate(sampling):
            row = rows[i]
            t = tok_l[j]
            row.fresh = False
            row.turn_ids.append(t)
            row.turn_logprob.append(lp_l[j])
            row.turn_entropy.append(h_l[j])
            row.turn_sampling_entropy.append(se_l[j])
            row.turn_temperature.append(t_l[j])
            row.prev_sampling_entropy = se_l[j]
            row.seq.append(t)
            row.n_tokens += 1
            assert row.decoder is not None
            row.tracker.push(row.decoder.push(t))
            if t in stop_ids:
                ended = "eos"
            elif row.tracker.closed:
                ended = "span"
            elif len(row.turn_ids) >= config.max_new_tokens:
                ended = "turn_budget"
            elif row.n_tokens >= config.max_tokens:
                ended = "token_budget"
            elif max_context is not None and len(row.seq) >= max_context:
                ended = "context"
            else:
                row.pending = [t]
                continue
            _finish_turn(
                row, ended, t in stop_ids, tokenizer, parse_assistant, config, now, max_context
            )
            if row.done:
                row.t_done = time.perf_counter()
                if bar is not None:
                    bar.advance()

        # ---- drop finished rows from the batch and the cache
        keep = [j for j, i in enumerate(live) if not rows[i].done]
        if len(keep) < len(live):
            idx = torch.tensor(keep, dtype=torch.long, device=device)
            if keep:
                cache.batch_select_indices(idx)
                attn = attn[idx]
            live = [live[j] for j in keep]
    return rows


def _prefill_shared_prompts(
    model: Any,
    rows: list[_Row],
    cache: Any,
    cache_kw: str,
    has_keep: bool,
    pad_id: int,
    attn: torch.Tensor,
) -> torch.Tensor:
    """Prefill each distinct prompt of a fresh wave once and copy its keys/values to every row
    that has it; return the wave's attention mask so far (B, columns).

    Each distinct prompt but its last token is fed in one right-padded block (one row per
    prompt, positions counted as in the main loop); the cache rows are then selected with
    repeats (``batch_select_indices``), and each row keeps its prompt's last token pending, so
    the main loop's first step feeds it and samples as before. A wave whose prompts are all
    distinct is left alone (``attn`` returned as it came, nothing fed).
    """
    distinct: dict[tuple[int, ...], int] = {}
    which = [distinct.setdefault(tuple(r.pending), len(distinct)) for r in rows]
    prompts = list(distinct)
    if len(prompts) == len(rows) or min(len(p) for p in prompts) < 2:
        return attn
    device = attn.device
    ids, mask, pos = _block([(list(p[:-1]), 0) for p in prompts], pad_id)
    mask = mask.to(device)
    keep = 1 if has_keep else None  # no logits are read
    _forward(model, cache_kw, cache, ids.to(device), mask, pos.to(device), keep)
    idx = torch.tensor(which, dtype=torch.long, device=device)
    cache.batch_select_indices(idx)
    for r in rows:
        r.fed, r.pending = len(r.pending) - 1, r.pending[-1:]
    return mask[idx]


def _block(
    feeds: list[tuple[list[int], int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One right-padded block ``(ids, attention mask, position ids)``, each (B, W) int64, W the
    longest feed: row j feeds the tokens ``feeds[j][0]`` at positions from ``feeds[j][1]``.
    Positions count real tokens only; padding (mask 0) repeats the row's last position (the one
    before ``feeds[j][1]`` for a row that feeds nothing)."""
    b, w = len(feeds), max(len(t) for t, _ in feeds)
    ids = torch.full((b, w), pad_id, dtype=torch.long)
    mask = torch.zeros((b, w), dtype=torch.long)
    pos = torch.zeros((b, w), dtype=torch.long)
    for j, (tokens, start) in enumerate(feeds):
        k = len(tokens)
        if k:
            ids[j, :k] = torch.tensor(tokens, dtype=torch.long)
            mask[j, :k] = 1
            pos[j, :k] = torch.arange(start, start + k)
        pos[j, k:] = start + k - 1
    return ids, mask, pos


def _forward(
    model: Any,
    cache_kw: str,
    cache: Any,
    ids: torch.Tensor,
    attn: torch.Tensor,
    pos: torch.Tensor,
    keep: torch.Tensor | int | None,
) -> Any:
    """The model's output for one block fed into ``cache`` (``attn``: the mask of every column
    so far); ``keep`` is ``logits_to_keep`` (None: a model without it)."""
    kwargs: dict[str, Any] = {
        "input_ids": ids,
        "attention_mask": attn,
        "position_ids": pos,
        cache_kw: cache,
        "use_cache": True,
    }
    if keep is not None:
        kwargs["logits_to_keep"] = keep
    return model(**kwargs)


def _schedule_step(
    schedule: TemperatureSchedule,
    state: Any,
    rows: list[_Row],
    sampling: list[int],
    h: torch.Tensor,
) -> tuple[torch.Tensor, Any]:
    """The controller's part of one decoding step: the observation of every row of the wave,
    the schedule's update, and the temperatures (f,) of the rows ``sampling`` (wave positions),
    whose model entropies are ``h`` (f,); returns them with the schedule's new state.

    The observation is built as NumPy arrays and a schedule with ``update_arrays`` (every
    built-in one) steps on them, its state kept as arrays between steps (see
    :func:`_schedule_state`): a (B,)-sized torch call costs several times a NumPy one, and this
    runs once per generated token. Other schedules get tensors through ``update``.
    """
    n = len(rows)
    idx = np.array(sampling, dtype=np.intp)
    entropy = np.zeros(n, dtype=np.float32)
    entropy[idx] = as_array(h.cpu())
    active = np.zeros(n, dtype=bool)
    active[idx] = True
    phase: np.ndarray = np.array([r.tracker.phase for r in rows], dtype=np.int64)
    prev: np.ndarray = np.array([r.prev_sampling_entropy for r in rows], dtype=np.float32)
    reset: np.ndarray = np.array([r.fresh and not r.done for r in rows], dtype=bool)
    obs = StepObservation(phase, entropy, prev, active, reset)
    update_arrays = getattr(schedule, "update_arrays", None)
    if update_arrays is not None:
        temps_full, state = update_arrays(state, obs)
    else:
        t, state = schedule.update(state, StepObservation(*map(torch.from_numpy, obs)))
        temps_full = as_array(torch.as_tensor(t, dtype=torch.float32).reshape(-1))
    temps_full = np.asarray(temps_full, dtype=np.float32).reshape(-1)
    if temps_full.shape[0] != n:
        raise ValueError(f"schedule returned {temps_full.shape[0]} temperatures for {n} rows")
    temps = temps_full[idx]
    lo, hi = _extremes(temps, 0.0, 0.0)
    if not (lo >= 0 and hi < math.inf):  # NaN fails both
        raise ValueError(f"schedule returned invalid temperatures {temps.tolist()}")
    return torch.from_numpy(temps), state


def _schedule_state(schedule: TemperatureSchedule, n: int) -> Any:
    """A new state for ``n`` rows, as :func:`_schedule_step` keeps it (NumPy arrays for a
    schedule with ``update_arrays``, else the schedule's own tensors)."""
    state = schedule.init(n)
    return state_arrays(state) if hasattr(schedule, "update_arrays") else state


def _hold(rows: list[_Row], live: list[int], lens: list[int], hold_steps: int) -> set[int]:
    """Positions in ``live`` of the rows whose multi-token block (a tool message) waits a step.

    The cache is one rectangle: a block of width ``w`` adds ``w`` columns to every row, so a tool
    message fed while the other rows decode one token each pads all of them by ``w - 1`` masked
    columns that every later step attends over. Holding such rows (for at most ``hold_steps``
    steps, and while fewer than half the live rows wait) lets several tool messages share one
    block. A held row samples nothing that step; its own tokens do not change (its generator
    is its own), only the batch shape its logits are computed in.
    """
    wide = [j for j, k in enumerate(lens) if k > 1]
    if not wide or hold_steps == 0 or 2 * len(wide) >= len(live):
        return set()
    if max(rows[live[j]].held for j in wide) >= hold_steps:
        return set()
    return set(wide)


def _finish_turn(
    row: _Row,
    ended: str,
    emitted_stop: bool,
    tokenizer: Any,
    parse_assistant: Any,
    config: RunnerConfig,
    now: float,
    max_context: int | None,
) -> None:
    """Close the row's assistant turn; run the tool or end the episode; queue appended tokens."""
    ids = np.asarray(row.turn_ids, dtype=np.int64)
    text = tokenizer.decode(row.turn_ids, skip_special_tokens=True)
    turn = Turn(
        role="assistant",
        token_ids=ids,
        logprob=np.asarray(row.turn_logprob, dtype=np.float32),
        entropy=np.asarray(row.turn_entropy, dtype=np.float32),
        sampling_entropy=np.asarray(row.turn_sampling_entropy, dtype=np.float32),
        temperature=np.asarray(row.turn_temperature, dtype=np.float32),
        phase=row.tracker.labels(),
        text=text,
        wall_s=now - row.turn_start,
        meta={"end": ended},
    )
    row.turns.append(turn)
    end = len(row.seq)
    row.spans.append([end - len(row.turn_ids), end])
    row.n_turns += 1

    parsed = parse_assistant(text)
    if parsed.kind == "answer":
        row.success = bool(row.session.check_answer(parsed.answer))
        row.done, row.end_reason = True, "answer"
        return
    if parsed.kind != "tool_call":
        row.done, row.end_reason = True, "no_action" if ended in ("eos", "span") else ended
        return

    t0 = time.perf_counter()
    if parsed.call is not None and parsed.error is None:
        result = row.session.call(parsed.call)
    else:
        result = row.session.call_error(parsed.error or "unreadable tool call")
    tool_turn = Turn(
        role="tool",
        call=parsed.call,
        status=result.status,
        content=result.content,
        latency_s=float(result.latency_s),
        wall_s=time.perf_counter() - t0,
        meta={"fault": result.fault} if getattr(result, "fault", None) else {},
    )
    row.turns.append(tool_turn)
    row.tool_latency += float(result.latency_s)
    row.tracker.on_tool_result(failed=result.status in FAILED_STATUSES)

    if row.n_turns >= config.max_turns:
        row.done, row.end_reason = True, "max_turns"
        return
    if row.n_tokens >= config.max_tokens:
        row.done, row.end_reason = True, "token_budget"
        return
    name = parsed.call.name if parsed.call is not None else None
    message: dict[str, Any] = {"role": "tool", "content": result.content}
    if name is not None:
        message["name"] = name
    eot = tokenizer.decode([row.turn_ids[-1]], skip_special_tokens=False) if emitted_stop else None
    suffix = row.suffix.ids(message, emitted_eot=eot)
    if max_context is not None and len(row.seq) + len(suffix) >= max_context:
        row.done, row.end_reason = True, "context"
        return
    # The turn's last sampled token has not been fed yet: it goes first, then the suffix.
    row.pending = [row.turn_ids[-1], *suffix]
    row.seq.extend(suffix)
    _start_turn(row, tokenizer, time.perf_counter())


def _episode(
    row: _Row, policy: str | None, step: int | None, seed: int, config: RunnerConfig
) -> Episode:
    meta: dict[str, Any] = dict(row.session.record())
    meta["end_reason"] = row.end_reason
    meta["seed"] = seed
    # The analyzer's hallucinated-argument check needs the question the agent was asked.
    meta["question"] = getattr(row.task, "question", None)
    if config.record_inputs:
        meta["input_ids"] = list(row.seq)
        meta["assistant_spans"] = [list(s) for s in row.spans]
    task = row.task
    step_tag = "" if step is None else f"t{step}-"
    return Episode(
        episode_id=f"{step_tag}s{seed}-{row.index:05d}-{task.task_id}",
        turns=row.turns,
        task_id=task.task_id,
        level=getattr(task, "level", None),
        step=step,
        policy=policy,
        success=row.success,
        reward=1.0 if row.success else 0.0,
        fault_kinds=list(row.session.fault_kinds),
        latency_s=(row.t_done - row.t_start) + row.tool_latency,
        meta=meta,
    )
