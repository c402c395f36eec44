"""Teacher-forced scoring: per-token model entropy, log-prob and token ids for existing
conversations under any Hugging Face causal LM.

:func:`score_conversations` turns :class:`~agentropy.trace.importers.chat.Conversation` s (OpenAI
chat messages, or pre-rendered text) into :class:`~agentropy.trace.Episode` s whose assistant
turns carry ``token_ids``, ``logprob`` and ``entropy`` (model distribution, T = 1, nats) and
``phase``; :func:`rescore_episodes` does the same for traces our runner recorded with
``record_inputs`` (the exact token sequence, token-in/token-out, so nothing is re-tokenised).

Rendering and assistant spans:

- The conversation is rendered with the model's own chat template (``tools`` passed when given).
- Assistant tokens come from the template's generation mask (``{% generation %}``) when it has
  one; otherwise from rendering prefixes: message ``i``'s tokens are those whose characters lie
  between the rendering of ``messages[:i]`` with the generation prompt and that of
  ``messages[:i+1]``, cut after the turn's end-of-turn token (the newline a template adds after
  it is not the assistant's). A template whose prefix renderings are not prefixes of the full
  rendering (e.g. one that drops earlier reasoning) is an error, not a guess.
- Phases: :func:`agentropy.control.phases.episode_phases` on the per-token texts, exactly as the
  runner labels them (tool calls ``act``, free text after a failed tool result ``recover``).
- Tool status: the failure detector (:class:`~agentropy.trace.importers.chat.FailureDetector`).

Windowing (conversations longer than the model's context ``C``): the *head* (the tokens of the
leading system messages and tools, ``H`` tokens) is kept and the rest slides. Tokens at
positions ``< C`` are scored in one pass with full context. Later assistant tokens are scored in
windows ``head + seq[hi - (C - H) : hi]``, advancing ``hi`` by ``(C - H) // 2`` assistant-bearing
positions at a time, so every token sees the head plus at least ``(C - H) // 2`` preceding tokens.
When ``H > C // 2`` the head is not kept (pure sliding window). Nothing is dropped: the episode's
``meta["windowing"]`` records the policy, ``C``, ``H``, whether the head was kept and how many
tokens were scored with truncated context, and each such turn has ``meta["windowed_tokens"]``.

Batching: forward passes are grouped by length under a token budget (``max_batch_tokens``),
right-padded; logits are computed only at the positions that predict assistant tokens, in chunks
of ``logits_chunk`` rows, from the final hidden states (``lm_head`` applied to the gathered rows),
so memory is ``O(batch tokens x hidden + chunk x vocab)``, never ``O(tokens x vocab)``. Models
that transform logits after ``lm_head`` (soft-capping, logit scaling) or carry forward hooks get a
full forward instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from agentropy.control.phases import PhaseMarkers, decode_token_texts, episode_phases
from agentropy.errors import InputError
from agentropy.trace import Episode, ToolCall, Turn
from agentropy.trace.importers.chat import Conversation, FailureDetector

if TYPE_CHECKING:
    import torch

__all__ = [
    "ACCELERATOR_BATCH_TOKENS",
    "WINDOW_POLICY",
    "ScoreConfig",
    "rescore_episodes",
    "score_conversations",
]

#: Default padded tokens per forward pass on an accelerator (see ``ScoreConfig.max_batch_tokens``).
ACCELERATOR_BATCH_TOKENS = 8192
#: Name of the windowing policy recorded in ``Episode.meta["windowing"]``.
WINDOW_POLICY = "keep-head-slide"
_GENERATION_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")
# Config fields of models whose logits are not plain lm_head(hidden).
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


@dataclass(frozen=True)
class ScoreConfig:
    """How :func:`score_conversations` batches and windows."""

    max_context: int | None = None
    """Context length ``C`` in tokens (default: the model's ``max_position_embeddings``)."""
    max_batch_tokens: int | None = None
    """Padded tokens per forward pass (batch rows x longest row); bounds activation memory.
    None: :data:`ACCELERATOR_BATCH_TOKENS` on an accelerator, one sequence per pass on CPU (where
    batching gains nothing and padding forces attention off its causal fast path: measured
    15-25% slower with batches on the benchmark)."""
    logits_chunk: int = 1024
    """Assistant positions whose logits are materialised at once (x vocab x 4 bytes)."""
    error_pattern: str | None = None
    """Regex marking a tool result as failed (default: the importer's detector)."""
    markers: PhaseMarkers | None = None
    """Span markers for phases (default: the ToolWorld / Hermes markers)."""

    def __post_init__(self) -> None:
        if self.max_context is not None and self.max_context < 8:
            raise ValueError(f"max_context must be >= 8 tokens, got {self.max_context}")
        if (
            self.max_batch_tokens is not None and self.max_batch_tokens < 1
        ) or self.logits_chunk < 1:
            raise ValueError("max_batch_tokens and logits_chunk must be >= 1")


@dataclass
class _Item:
    """One sequence to score: ids, assistant spans, and the episode skeleton to fill in."""

    ids: list[int]
    spans: list[tuple[int, int]]
    head: int
    episode: Episode
    assistant_turns: list[Turn] = field(default_factory=list)


@dataclass
class _Job:
    """One forward pass: ``ids`` and, for each target, (item, global position, window column)."""

    ids: list[int]
    item: int
    targets: list[int]  # global positions of predicted tokens
    cols: list[int]  # columns in ``ids`` whose logits predict them
    windowed: bool


# ----------------------------------------------------------------------------- rendering


def _render(tokenizer: Any, messages: list[dict], tools: Any, *, gen: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=gen
    )


def _eos_ids(tokenizer: Any, model: Any) -> set[int]:
    from agentropy.agent.runner import stop_token_ids

    return stop_token_ids(model, tokenizer)


def _spans_by_mask(tokenizer: Any, conv: Conversation) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer.apply_chat_template(
        conv.messages, tools=conv.tools, tokenize=True, return_dict=True,
        return_assistant_tokens_mask=True,
    )  # fmt: skip
    ids = list(enc["input_ids"])
    mask = list(enc["assistant_masks"])
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(mask):
        if mask[i]:
            j = i
            while j < len(mask) and mask[j]:
                j += 1
            spans.append((i, j))
            i = j
        else:
            i += 1
    return ids, spans


def _spans_by_prefix(
    tokenizer: Any, conv: Conversation, eos: set[int]
) -> tuple[list[int], list[tuple[int, int]]]:
    full = _render(tokenizer, conv.messages, conv.tools)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    starts = np.asarray([o[0] for o in offsets])
    spans = []
    for i, m in enumerate(conv.messages):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, conv.messages[:i], conv.tools, gen=True) if i else ""
        upto = _render(tokenizer, conv.messages[: i + 1], conv.tools)
        if not full.startswith(before) or not full.startswith(upto):
            raise InputError(
                "the chat template renders earlier turns differently in longer conversations "
                "(and has no {% generation %} mask), so assistant tokens cannot be located",
                field=f"messages[{i}]",
            )
        sel = np.flatnonzero((starts >= len(before)) & (starts < len(upto)))
        if sel.shape[0] == 0:
            spans.append((0, 0))
            continue
        a, b = int(sel[0]), int(sel[-1]) + 1
        for k in range(a, b):  # cut after the end-of-turn token
            if ids[k] in eos:
                b = k + 1
                break
        spans.append((a, b))
    return ids, spans


def _head_tokens(tokenizer: Any, conv: Conversation) -> int:
    n_sys = 0
    while n_sys < len(conv.messages) and conv.messages[n_sys]["role"] == "system":
        n_sys += 1
    if n_sys == 0:
        return 0
    text = _render(tokenizer, conv.messages[:n_sys], conv.tools)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _prepare(tokenizer: Any, conv: Conversation, eos: set[int], detect: FailureDetector) -> _Item:
    """Render and locate the assistant tokens of one conversation; build its episode."""
    meta = dict(conv.meta)
    if conv.raw is not None:
        prompt, completion = conv.raw
        p = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        c = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
        turn = Turn(role="assistant", text=completion)
        ep = Episode(episode_id=conv.id, turns=[turn], step=conv.step, success=conv.success,
                     reward=conv.reward, meta=meta)  # fmt: skip
        return _Item(ids=p + c, spans=[(len(p), len(p) + len(c))], head=0, episode=ep,
                     assistant_turns=[turn])  # fmt: skip
    template = getattr(tokenizer, "chat_template", None) or ""
    if _GENERATION_RE.search(template if isinstance(template, str) else str(template)):
        ids, spans = _spans_by_mask(tokenizer, conv)
    else:
        ids, spans = _spans_by_prefix(tokenizer, conv, eos)
    n_asst = sum(m["role"] == "assistant" for m in conv.messages)
    if len(spans) != n_asst:
        raise InputError(
            f"the chat template marks {len(spans)} assistant spans for {n_asst} assistant "
            "messages (an empty assistant message renders no tokens?)",
            field="messages",
        )
    calls = dict(conv.tool_turns())
    turns: list[Turn] = []
    asst: list[Turn] = []
    k = 0
    for i, m in enumerate(conv.messages):
        if m["role"] == "assistant":
            t = Turn(role="assistant", text=m.get("content") or "")
            turns.append(t)
            asst.append(t)
            k += 1
        elif m["role"] == "tool":
            content = m["content"]
            call = calls.get(i)
            if call is None and isinstance(m.get("name"), str):
                call = ToolCall(m["name"], {})
            turns.append(
                Turn(role="tool", call=call, content=content,
                     status="error" if detect(content) else "ok")
            )  # fmt: skip
    if conv.tools is not None:
        meta.setdefault("tools", [t.get("function", t).get("name") for t in conv.tools])
    ep = Episode(episode_id=conv.id, turns=turns, step=conv.step, success=conv.success,
                 reward=conv.reward, meta=meta)  # fmt: skip
    return _Item(ids=ids, spans=spans, head=_head_tokens(tokenizer, conv), episode=ep,
                 assistant_turns=asst)  # fmt: skip


# ----------------------------------------------------------------------------- windowing


def _jobs(index: int, item: _Item, ctx: int) -> Iterator[_Job]:
    """Forward passes for one item: one full pass if it fits, else head + sliding windows."""
    targets = [p for a, b in item.spans for p in range(max(a, 1), b)]
    if len(item.ids) <= ctx:
        yield _Job(item.ids, index, targets, [p - 1 for p in targets], False)
        return
    first = [p for p in targets if p < ctx]
    if first:
        yield _Job(item.ids[:ctx], index, first, [p - 1 for p in first], False)
    rest = [p for p in targets if p >= ctx]
    head = item.head if item.head <= ctx // 2 else 0
    budget = ctx - head
    stride = max(1, budget // 2)
    j = 0
    while j < len(rest):
        hi = rest[j] + stride  # positions [.., hi) are scored in this window
        chunk = [p for p in rest[j:] if p < hi]
        j += len(chunk)
        end = chunk[-1]  # the window ends at (and includes) the last target
        lo = max(head, end + 1 - budget)
        ids = item.ids[:head] + item.ids[lo : end + 1]
        yield _Job(ids, index, chunk, [head + (p - 1 - lo) for p in chunk], True)


# ----------------------------------------------------------------------------- forward


def _logits_fn(model: Any) -> Callable[..., torch.Tensor] | None:
    """``rows(hidden) -> logits`` when the model's logits are ``lm_head(hidden)``, else None."""
    cfg = getattr(model, "config", None)
    if getattr(model, "_forward_hooks", None) or getattr(model, "_forward_pre_hooks", None):
        return None  # hooks on the full model may change its logits: run it whole
    if any(getattr(cfg, k, None) not in (None, 1, 1.0) for k in _LOGIT_TRANSFORMS):
        return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    base = getattr(model, "base_model", None)
    if head is None or base is None or base is model:
        return None
    return head


def _run_batch(
    model: Any, jobs: Sequence[_Job], pad_id: int, config: ScoreConfig
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(logprob, entropy) of each job's targets, from one padded forward pass."""
    import torch

    with torch.inference_mode():
        return _forward_batch(model, jobs, pad_id, config)


def _forward_batch(
    model: Any, jobs: Sequence[_Job], pad_id: int, config: ScoreConfig
) -> list[tuple[np.ndarray, np.ndarray]]:
    import torch

    from agentropy.entropy import logprobs_and_entropy

    device = next(model.parameters()).device
    width = max(len(j.ids) for j in jobs)
    ids = torch.full((len(jobs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(jobs), width), dtype=torch.long)
    for r, j in enumerate(jobs):
        ids[r, : len(j.ids)] = torch.tensor(j.ids, dtype=torch.long)
        mask[r, : len(j.ids)] = 1
    pos = torch.arange(width).expand(len(jobs), width)
    kwargs = {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "position_ids": pos.to(device),
        "use_cache": False,
    }
    rows = torch.tensor([r for r, j in enumerate(jobs) for _ in j.cols], dtype=torch.long)
    cols = torch.tensor([c for j in jobs for c in j.cols], dtype=torch.long)
    tgt = torch.tensor([j.ids[c + 1] if c + 1 < len(j.ids) else -1 for j in jobs for c in j.cols])
    # Logits of scored positions s:e, (e - s, V), a chunk at a time: from the head on the hidden
    # states when the model allows it (no (B, T, V) tensor at all), else from the full logits.
    head = _logits_fn(model)
    if head is not None:
        hidden = model.base_model(**kwargs).last_hidden_state  # (B, T, d)
        states = hidden[rows.to(device), cols.to(device)]  # (N, d)

        def chunk_logits(s: int, e: int) -> torch.Tensor:
            return head(states[s:e])

    else:
        full = model(**kwargs).logits  # (B, T, V)

        def chunk_logits(s: int, e: int) -> torch.Tensor:
            return full[rows[s:e].to(device), cols[s:e].to(device)]

    lp_out = torch.empty(len(cols), dtype=torch.float32)
    h_out = torch.empty(len(cols), dtype=torch.float32)
    for s in range(0, len(cols), config.logits_chunk):
        e = min(s + config.logits_chunk, len(cols))
        logits = chunk_logits(s, e).float()  # (n, V) fp32
        lp, h = logprobs_and_entropy(logits, tgt[s:e].to(logits.device))
        lp_out[s:e], h_out[s:e] = lp.cpu(), h.cpu()
    out, k = [], 0
    for j in jobs:
        n = len(j.cols)
        out.append((lp_out[k : k + n].numpy(), h_out[k : k + n].numpy()))
        k += n
    return out


def _check_targets(jobs: Sequence[_Job], items: Sequence[_Item]) -> None:
    for j in jobs:
        item = items[j.item]
        for p, c in zip(j.targets, j.cols, strict=True):
            assert j.ids[c + 1] == item.ids[p], "window column does not predict its target"


def _batches(jobs: list[_Job], budget: int) -> Iterator[list[_Job]]:
    """Jobs sorted by length, grouped so that rows x longest row <= budget (one job at least)."""
    order = sorted(jobs, key=lambda j: len(j.ids))
    batch: list[_Job] = []
    for j in order:
        if batch and (len(batch) + 1) * len(j.ids) > budget:
            yield batch
            batch = []
        batch.append(j)
    if batch:
        yield batch


# ----------------------------------------------------------------------------- assembly


def _finish(item: _Item, tokenizer: Any, results: dict[int, tuple[float, float, bool]],
            ctx: int, markers: PhaseMarkers | None) -> Episode:  # fmt: skip
    n_windowed = 0
    for turn, (a, b) in zip(item.assistant_turns, item.spans, strict=True):
        pos = [p for p in range(a, b) if p in results]
        turn.token_ids = np.asarray([item.ids[p] for p in pos], dtype=np.int64)
        turn.logprob = np.asarray([results[p][0] for p in pos], dtype=np.float32)
        turn.entropy = np.asarray([results[p][1] for p in pos], dtype=np.float32)
        w = sum(results[p][2] for p in pos)
        if w:
            turn.meta["windowed_tokens"] = int(w)
            n_windowed += w
    kw = {} if markers is None else {"markers": markers}
    phases = episode_phases(
        item.episode.turns, lambda t: decode_token_texts(tokenizer, t.token_ids), **kw
    )
    for turn, ph in zip(item.episode.turns, phases, strict=True):
        if ph is not None:
            turn.phase = ph
    # Re-run the constructor checks now that the arrays are filled in.
    item.episode.turns = [Turn(**{s: getattr(t, s) for s in Turn.__slots__})
                          for t in item.episode.turns]  # fmt: skip
    if len(item.ids) > ctx:
        item.episode.meta["windowing"] = {
            "policy": WINDOW_POLICY, "max_context": ctx, "head_tokens": item.head,
            "head_kept": item.head <= ctx // 2, "windowed_tokens": int(n_windowed),
            "sequence_tokens": len(item.ids),
        }  # fmt: skip
    return item.episode


def _score_items(
    model: Any,
    tokenizer: Any,
    items: Iterable[_Item],
    config: ScoreConfig,
    progress: Callable[[int], None] | None,
    group: int,
) -> Iterator[Episode]:
    ctx = config.max_context or getattr(model.config, "max_position_embeddings", None) or 4096
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    markers = config.markers
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        pending: list[_Item] = []
        for item in items:
            pending.append(item)
            if len(pending) >= group:
                yield from _score_group(model, tokenizer, pending, config, ctx, pad_id, markers)
                if progress is not None:
                    progress(len(pending))
                pending = []
        if pending:
            yield from _score_group(model, tokenizer, pending, config, ctx, pad_id, markers)
            if progress is not None:
                progress(len(pending))
    finally:
        if was_training:
            model.train()


def _score_group(model: Any, tokenizer: Any, items: list[_Item], config: ScoreConfig, ctx: int,
                 pad_id: int, markers: PhaseMarkers | None) -> list[Episode]:  # fmt: skip
    jobs = [j for i, it in enumerate(items) for j in _jobs(i, it, ctx)]
    _check_targets(jobs, items)
    results: list[dict[int, tuple[float, float, bool]]] = [{} for _ in items]
    budget = config.max_batch_tokens
    if budget is None:
        on_cpu = next(model.parameters()).device.type == "cpu"
        budget = 1 if on_cpu else ACCELERATOR_BATCH_TOKENS
    for batch in _batches(jobs, budget):
        for j, (lp, h) in zip(batch, _run_batch(model, batch, pad_id, config), strict=True):
            for p, a, b in zip(j.targets, lp.tolist(), h.tolist(), strict=True):
                results[j.item][p] = (a, b, j.windowed)
    return [_finish(it, tokenizer, results[i], ctx, markers) for i, it in enumerate(items)]


def score_conversations(
    model: Any,
    tokenizer: Any,
    conversations: Iterable[Conversation],
    *,
    config: ScoreConfig | None = None,
    group: int = 64,
    progress: Callable[[int], None] | None = None,
) -> Iterator[Episode]:
    """Score conversations under ``model``; yield one episode per conversation, in order.

    Args:
        model: any Hugging Face causal LM.
        tokenizer: its tokenizer, with a chat template (unless every conversation is raw text).
        conversations: validated conversations (:func:`~agentropy.trace.importers.chat.
            read_conversations`), streamed; ``group`` of them are batched together.
        config: batching, windowing, failure detector and phase markers.
        group: conversations per scheduling group (bounds host memory; batches form inside it).
        progress: called with the number of conversations finished after each group.

    Returns:
        Episodes whose assistant turns have ``token_ids``, ``logprob`` (T = 1) and ``entropy``
        (T = 1, nats) of every assistant token, and ``phase``; tool turns have ``call``,
        ``status`` and ``content``. ``meta`` keeps the conversation's extra fields, and
        ``windowing`` when the context was too short (module docstring).
    """
    config = config if config is not None else ScoreConfig()
    detect = FailureDetector(config.error_pattern)
    eos = _eos_ids(tokenizer, model)

    def prepared() -> Iterator[_Item]:
        for conv in conversations:
            try:
                yield _prepare(tokenizer, conv, eos, detect)
            except InputError as err:
                raise InputError(f"conversation {conv.id!r}: {err.message}", path=err.path,
                                 line=err.line, field=err.field) from None  # fmt: skip

    return _score_items(model, tokenizer, prepared(), config, progress, group)


def rescore_episodes(
    model: Any,
    tokenizer: Any,
    episodes: Iterable[Episode],
    *,
    config: ScoreConfig | None = None,
    group: int = 64,
    progress: Callable[[int], None] | None = None,
) -> Iterator[Episode]:
    """Score traces our runner recorded with ``RunnerConfig(record_inputs=True)``.

    The exact token sequence (``meta["input_ids"]``) and assistant spans
    (``meta["assistant_spans"]``) are scored as recorded, so token ids, phases and tool
    statuses are the runner's and entropy/log-prob are the model's at T = 1. Per-token
    ``sampling_entropy`` and ``temperature`` are dropped (they described the sampling run).
    """
    config = config if config is not None else ScoreConfig()

    def prepared() -> Iterator[_Item]:
        for ep in episodes:
            ids, spans = ep.meta.get("input_ids"), ep.meta.get("assistant_spans")
            if not isinstance(ids, list) or not isinstance(spans, list):
                raise InputError(
                    f"episode {ep.episode_id!r} has no recorded input_ids/assistant_spans "
                    "(run with record_inputs, or export it as chat messages)",
                    field="meta.input_ids",
                )
            turns = [Turn(role=t.role, text=t.text, call=t.call, status=t.status,
                          content=t.content, latency_s=t.latency_s, wall_s=t.wall_s,
                          meta=dict(t.meta)) for t in ep.turns]  # fmt: skip
            asst = [t for t in turns if t.role == "assistant"]
            if len(asst) != len(spans):
                raise InputError(f"episode {ep.episode_id!r}: {len(spans)} spans for "
                                 f"{len(asst)} assistant turns", field="meta.assistant_spans")  # fmt: skip
            meta = {k: v for k, v in ep.meta.items() if k not in ("input_ids", "assistant_spans")}
            new = Episode(episode_id=ep.episode_id, turns=turns, task_id=ep.task_id,
                          level=ep.level, step=ep.step, policy=ep.policy, success=ep.success,
                          reward=ep.reward, fault_kinds=list(ep.fault_kinds),
                          latency_s=ep.latency_s, meta=meta)  # fmt: skip
            yield _Item(ids=list(ids), spans=[(int(a), int(b)) for a, b in spans], head=0,
                        episode=new, assistant_turns=asst)  # fmt: skip

    return _score_items(model, tokenizer, prepared(), config, progress, group)
