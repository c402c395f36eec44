"""TRL adapter: breath metrics and the phase-aware ``rhythm`` loss inside TRL's ``GRPOTrainer``.

Install with ``pip install 'agentropy[trl]'`` (TRL 1.16). Importing this module never imports TRL;
the TRL-based classes are built on first access, and raise an ``ImportError`` naming the extra when
TRL is missing.

What it gives (all thin: the math is :mod:`agentropy.rl.losses`, the phase rule is
:mod:`agentropy.control.phases`, the analysis is :mod:`agentropy.analysis.breath` / ``loops``):

- :class:`BreathGRPOTrainer`: TRL's ``GRPOTrainer`` with TRL's own loss, plus per-step breath
  metrics in the logs (``breath/entropy_recover``, ``breath/spike_ratio_failed``,
  ``breath/eruptions_divergent``, ``breath/loops`` ...; :data:`BREATH_KEYS` lists them).
- :class:`RhythmGRPOTrainer`: the same, with the loss replaced by
  :func:`agentropy.rl.losses.rhythm_loss` (per-phase adaptive entropy coefficients plus the
  recover contraction term); the coefficients are updated once per optimizer step and saved in
  checkpoints (``agentropy_rhythm_state.json``).
- :class:`BreathCallback`: the ``TrainerCallback`` that accumulates the rollouts of a logging
  window and turns them into breath metrics. The two trainers attach one automatically; pass your
  own (``callbacks=[BreathCallback(breath=BreathConfig(...), loops=LoopConfig(...))]``) to
  change thresholds.
- :func:`prepare_tokenizer`: gives a tokenizer whose chat template TRL does not know (e.g. the
  tiny agent's, :func:`agentropy.agent.tiny.build_tokenizer`) the ``response_template`` TRL needs
  to parse ``<tool_call>{json}</tool_call>`` turns.

Usage (everything but ``rhythm=`` is plain TRL)::

    from trl import GRPOConfig
    from agentropy.integrations.trl import RhythmGRPOTrainer, prepare_tokenizer
    from agentropy.rl.losses import RhythmConfig

    trainer = RhythmGRPOTrainer(
        model=model, processing_class=prepare_tokenizer(tokenizer), reward_funcs=reward,
        args=GRPOConfig(...), train_dataset=dataset, tools=[lookup, backup_lookup],
        rhythm=RhythmConfig(),
    )
    trainer.train()  # logs breath/*, coef/lambda_*, loss/*, contraction/* every logging step

The data path, and why it goes through a subclass (TRL 1.16 gives callbacks no per-token data):

1. ``_tool_call_loop`` (TRL's ``tools=`` multi-turn loop) returns each rollout's chat messages;
   the subclass keeps them, so every tool result is known (name, arguments, content).
2. ``_generate_and_score_completions`` returns the padded batch; TRL's ``tool_mask`` is 1 on model
   tokens and 0 on the tool-result tokens it spliced into the completion (including the chat
   template's injected turn headers). Maximal runs of 1s are assistant turns, runs of 0s are tool
   turns, in order; the ``k``-th run of 0s holds the ``k``-th group of consecutive tool messages.
   The subclass decodes each assistant turn's tokens, labels phases with
   :func:`~agentropy.control.phases.episode_phases` (failure context from the tool results), and
   adds three entries to the batch dict: ``agentropy_phase`` and ``agentropy_trigger_offset``
   (B, C) tensors and ``agentropy_rollouts`` (a list, one skeleton :class:`~agentropy.trace.Episode`
   per row). TRL shuffles and splits every tensor and list of the dict in unison, so rows stay
   aligned.
3. ``_compute_loss`` gets TRL's per-token entropies from ``_get_per_token_logps_and_entropies``
   (the training forward pass), fills them into the row's episode and hands it to the
   :class:`BreathCallback` s (each row once, even with ``num_iterations > 1``).
4. ``log`` merges the callbacks' metrics into the log dict *before* ``Trainer.log``. A callback's
   ``on_log`` runs after ``log_history`` is written and after the reporting integrations
   (wandb, tensorboard) have been called, so metrics added there would reach neither.

A tool result counts as failed when ``is_tool_failure(message)`` says so; the default recognises
TRL's error envelope (a tool that raised is reported as ``str({"error": str(exc)})``). Tool turns
get status ``error`` or ``ok`` (TRL has no notion of ``unexpected``). Rollouts from a
``rollout_func`` with ``env_mask`` have no tool messages: their tool turns have unknown status and
never start ``recover``.

Entropy unit: TRL computes entropies from ``logits / args.temperature``; with the default
``temperature=1.0`` this is the model entropy of DESIGN.md. With another temperature the breath
metrics and rhythm targets are at that temperature (TRL trains with one global temperature).
Breath metrics are computed per process; with several processes the logs show the main
process's rollouts only.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from agentropy.control.phases import DEFAULT_MARKERS, PhaseMarkers, decode_token_texts
from agentropy.trace import PHASE_CODE, PHASES, Episode, ToolCall, Turn

if TYPE_CHECKING:
    import torch

    from agentropy.analysis.breath import BreathConfig
    from agentropy.analysis.loops import LoopConfig

__all__ = [
    "BREATH_KEYS",
    "BreathCallback",  # noqa: F822 (built lazily by __getattr__)
    "BreathGRPOTrainer",  # noqa: F822
    "RhythmGRPOTrainer",  # noqa: F822
    "Rollout",
    "breath_metrics",
    "build_rollout",
    "is_trl_error",
    "prepare_tokenizer",
]

_EXTRA = "trl"
#: Names built lazily because they subclass TRL / transformers classes.
_LAZY = ("BreathCallback", "BreathGRPOTrainer", "RhythmGRPOTrainer")

#: Keys of :func:`breath_metrics` (``{p}`` runs over the phases; per-phase entropy keys appear
#: only when the window has tokens of that phase, spike ratios only when defined).
BREATH_KEYS: tuple[str, ...] = (
    "breath/episodes",
    "breath/tokens",
    "breath/entropy",
    "breath/entropy_{p}",
    "breath/tokens_{p}",
    "breath/tool_calls",
    "breath/tool_failures",
    "breath/no_response",
    "breath/spike_ratio_failed",
    "breath/spike_ratio_ok",
    "breath/eruptions",
    "breath/eruptions_productive",
    "breath/eruptions_neutral",
    "breath/eruptions_divergent",
    "breath/frozen",
    "breath/loops",
    "breath/loops_repeated_call",
    "breath/loops_ngram",
)


# --------------------------------------------------------------------------------------------
# Pure pieces (no TRL needed)
# --------------------------------------------------------------------------------------------


def is_trl_error(message: Mapping[str, Any]) -> bool:
    """Whether a TRL tool message reports a failure.

    TRL 1.16 turns a tool that raised (or an unknown tool) into ``str({"error": str(exc)})``;
    a tool that itself returns a dict with an ``error`` key renders the same way and counts too.
    """
    content = message.get("content")
    return isinstance(content, str) and content.startswith("{'error':")


def prepare_tokenizer(
    tokenizer: Any,
    *,
    markers: PhaseMarkers = DEFAULT_MARKERS,
    turn_start: str = "<|im_start|>assistant\n",
    turn_end: str | None = None,
) -> Any:
    """Give ``tokenizer`` a ``response_template`` for ``<tool_call>{json}</tool_call>`` turns.

    TRL parses tool calls with ``tokenizer.parse_response`` and only knows the templates of a few
    model families; for any other (Hermes/Qwen-style) template, call this before building the
    trainer. A tokenizer that already has a ``response_template`` is returned unchanged.

    Args:
        tokenizer: a Hugging Face tokenizer (modified in place and returned).
        markers: the tool-call span markers (the JSON between them is ``{"name", "arguments"}``).
        turn_start: text that opens an assistant turn in the rendered chat.
        turn_end: text that ends an assistant turn (default: ``tokenizer.eos_token``).
    """
    if getattr(tokenizer, "response_template", None) is not None:
        return tokenizer
    end = turn_end if turn_end is not None else tokenizer.eos_token
    if not end:
        raise ValueError("turn_end is needed: the tokenizer has no eos_token")
    tokenizer.response_template = {
        "defaults": {"role": "assistant"},
        "start_anchor": turn_start,
        "fields": {
            "tool_calls": {
                "open": markers.tool_open,
                "close_pattern": re.escape(markers.tool_close) + r"\s*",
                "repeats": True,
                "content": "json",
                "transform": {"type": "function", "function": "{content}"},
            },
            "content": {"close_pattern": re.escape(end) + r"\s*", "content": "text"},
        },
    }
    return tokenizer


@dataclass(slots=True)
class Rollout:
    """One TRL completion row as an episode skeleton, plus where its turns sit in the row."""

    episode: Episode
    """Assistant turns carry ``token_ids`` and ``phase`` (entropy is filled at loss time); tool
    turns carry the call, status and content when TRL's tool loop produced them."""
    spans: list[tuple[int, int]]
    """``[start, end)`` completion positions of each assistant turn, in order."""
    phase: np.ndarray
    """(C,) int64 phase code per completion position (0 off assistant tokens)."""
    trigger_offset: np.ndarray
    """(C,) int64 assistant tokens since the last failed tool result, -1 where none."""
    row_id: int = -1
    """Unique id of the row within the run (a row is analysed once even if trained on twice)."""


def _runs(mask: np.ndarray) -> list[tuple[int, int, bool]]:
    """Maximal runs ``(start, end, value)`` of a 0/1 vector."""
    if mask.size == 0:
        return []
    change = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [mask.size]])
    return [(int(s), int(e), bool(mask[s])) for s, e in zip(starts, ends, strict=True)]


def _tool_groups(messages: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """Consecutive tool messages of a TRL conversation, grouped, each paired with its call."""
    groups: list[list[Mapping[str, Any]]] = []
    calls: list[Mapping[str, Any]] = []
    prev_tool = False
    for msg in messages:
        if msg.get("role") == "tool":
            if not prev_tool:
                groups.append([])
            call = calls.pop(0) if calls else {}
            groups[-1].append({"message": msg, "call": call})
            prev_tool = True
            continue
        prev_tool = False
        calls = [c.get("function", c) for c in (msg.get("tool_calls") or [])]
    return groups


def _tool_turn(entry: Mapping[str, Any], is_failure: Callable[[Mapping[str, Any]], bool]) -> Turn:
    msg, call = entry["message"], entry["call"]
    name = call.get("name") or msg.get("name")
    args = call.get("arguments", {})
    if isinstance(args, str):  # some templates keep arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            args = {"_raw": args}
    content = msg.get("content")
    return Turn(
        role="tool",
        call=ToolCall(str(name), dict(args)) if name and isinstance(args, Mapping) else None,
        status="error" if is_failure(msg) else "ok",
        content=content if isinstance(content, str) else json.dumps(content, default=str),
    )


def build_rollout(
    completion_ids: Sequence[int] | np.ndarray,
    tool_mask: Sequence[int] | np.ndarray | None,
    messages: Sequence[Mapping[str, Any]] | None,
    tokenizer: Any,
    *,
    episode_id: str,
    step: int | None = None,
    markers: PhaseMarkers = DEFAULT_MARKERS,
    is_tool_failure: Callable[[Mapping[str, Any]], bool] = is_trl_error,
) -> Rollout:
    """Episode skeleton, phases and trigger offsets of one TRL completion row.

    Args:
        completion_ids: (n,) the row's completion tokens without right padding.
        tool_mask: (n,) TRL's ``tool_mask`` (1 model token, 0 tool-result token); None when the
            rollout has no tool turns.
        messages: the row's completion messages from TRL's tool loop (assistant and tool
            messages in order), or None when unknown.
        tokenizer: decodes tokens for the phase rule.
        episode_id: id of the episode.
        step: training step stored in the episode.
        markers: span markers of the chat format.
        is_tool_failure: decides whether a tool message is a failed result.

    Returns:
        A :class:`Rollout`. Phases follow :func:`agentropy.control.phases.episode_phases`;
        trigger offsets follow :func:`agentropy.rl.trainer.build_batch` (counting restarts at
        each failed tool result and stops at an ``ok`` one).
    """
    from agentropy.control.phases import episode_phases

    ids = np.asarray(completion_ids, dtype=np.int64).reshape(-1)
    n = ids.shape[0]
    tm = np.ones(n, np.int8) if tool_mask is None else np.asarray(tool_mask, np.int8).reshape(-1)
    if tm.shape[0] != n:
        raise ValueError(f"tool_mask has {tm.shape[0]} entries for {n} completion tokens")
    groups = _tool_groups(messages) if messages is not None else []
    turns: list[Turn] = []
    spans: list[tuple[int, int]] = []
    k = 0
    for start, end, model_tokens in _runs(tm):
        if model_tokens:
            turns.append(Turn(role="assistant", token_ids=ids[start:end]))
            spans.append((start, end))
            continue
        group = groups[k] if k < len(groups) else []
        k += 1
        if not group:  # tool tokens without known messages (env_mask rollouts): status unknown
            turns.append(Turn(role="tool"))
        turns.extend(_tool_turn(entry, is_tool_failure) for entry in group)

    def texts(turn: Turn) -> list[str]:
        return decode_token_texts(tokenizer, turn.token_ids)

    phases = episode_phases(turns, texts, markers=markers)
    phase = np.zeros(n, np.int64)
    offset = np.full(n, -1, np.int64)
    since = -1
    a = 0
    for turn, ph in zip(turns, phases, strict=True):
        if turn.role == "tool":
            # A group of tool turns ends in the state of its last member, as in the trainer.
            since = 0 if turn.failed else -1
            continue
        turn.phase = ph
        s, e = spans[a]
        a += 1
        phase[s:e] = ph
        if since >= 0:
            offset[s:e] = np.arange(since, since + (e - s))
            since += e - s
    episode = Episode(episode_id=episode_id, turns=turns, step=step, policy="trl")
    return Rollout(episode=episode, spans=spans, phase=phase, trigger_offset=offset)


def breath_metrics(
    episodes: list[Episode],
    *,
    breath: BreathConfig | None = None,
    loops: LoopConfig | None = None,
    prefix: str = "breath/",
) -> dict[str, float]:
    """Breath metrics of a window of episodes (keys: :data:`BREATH_KEYS`); {} for no episodes.

    Per-phase entropies are token-means over the window (sums and counts, never a mean of
    means). Spike ratios are means over tool turns with a post-trigger stream, split by whether
    the tool failed. Eruptions, kinds, frozen responses and loops are counts, as defined in
    DESIGN.md and implemented by :mod:`agentropy.analysis.breath` and ``loops``.
    """
    from agentropy.analysis.breath import KINDS, BreathConfig, analyze_triggers
    from agentropy.analysis.loops import LOOP_TYPES, LoopConfig, find_loops
    from agentropy.trace import TraceTable

    episodes = [ep for ep in episodes if ep.n_tokens > 0]
    if not episodes:
        return {}
    table = TraceTable.from_episodes(episodes)
    trig = analyze_triggers(table, breath or BreathConfig())
    found = find_loops(table, loops or LoopConfig())
    ent = table.entropy.astype(np.float64)
    out = {
        "episodes": float(table.n_episodes),
        "tokens": float(table.n_tokens),
        "entropy": float(ent.mean()),
    }
    for name, code in PHASE_CODE.items():
        sel = table.phase == code
        count = int(sel.sum())
        out[f"tokens_{name}"] = float(count)
        if count:
            out[f"entropy_{name}"] = float(ent[sel].mean())
    failed = trig.failed
    defined = trig.stats.n_post > 0
    out["tool_calls"] = float(trig.ep.shape[0])
    out["tool_failures"] = float(failed.sum())
    out["no_response"] = float((~defined).sum())
    for label, sel in (("failed", failed & defined), ("ok", ~failed & defined)):
        if sel.any():
            out[f"spike_ratio_{label}"] = float(trig.stats.spike_ratio[sel].mean())
    out["eruptions"] = float(trig.eruption.sum())
    for i, kind in enumerate(KINDS):
        out[f"eruptions_{kind}"] = float((trig.kind == i).sum())
    out["frozen"] = float(trig.frozen.sum())
    out["loops"] = float(found.ep.shape[0])
    for i, kind in enumerate(LOOP_TYPES):
        out[f"loops_{kind}"] = float((found.type == i).sum())
    return {prefix + k: v for k, v in out.items()}


# --------------------------------------------------------------------------------------------
# TRL classes, built on first access
# --------------------------------------------------------------------------------------------

_BUILT: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        if not _BUILT:
            _BUILT.update(_build())
        return _BUILT[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def _build() -> dict[str, type]:
    """Define the TRL subclasses (imports TRL; raises the install hint when it is missing)."""
    from agentropy.integrations._extras import require

    trl = require("trl", extra=_EXTRA)
    transformers = require("transformers", extra=_EXTRA)
    import torch

    from agentropy.rl.losses import (
        RhythmConfig,
        RhythmState,
        init_coef_state,
        masked_sum_and_count,
        rhythm_loss,
        update_coef_state,
    )

    class BreathCallback(transformers.TrainerCallback):
        """Accumulates the rollouts of each logging window into breath metrics.

        Fed by :class:`BreathGRPOTrainer` / :class:`RhythmGRPOTrainer` (TRL gives callbacks no
        per-token data); their ``log`` merges :meth:`pop_metrics` into the logs. ``history``
        keeps every emitted metrics dict with its ``step``.
        """

        def __init__(
            self,
            *,
            breath: BreathConfig | None = None,
            loops: LoopConfig | None = None,
            prefix: str = "breath/",
        ) -> None:
            self.breath = breath
            self.loops = loops
            self.prefix = prefix
            self.episodes: list[Episode] = []
            self.history: list[dict[str, float]] = []
            self.attached = False

        def add_episodes(self, episodes: Sequence[Episode]) -> None:
            """Add rollouts (with entropies) to the current logging window."""
            self.episodes.extend(episodes)

        def pop_metrics(self, step: int | None = None) -> dict[str, float]:
            """Breath metrics of the window so far ({} if empty); starts a new window."""
            metrics = breath_metrics(
                self.episodes, breath=self.breath, loops=self.loops, prefix=self.prefix
            )
            self.episodes = []
            if metrics:
                self.history.append({**metrics, "step": float(step or 0)})
            return metrics

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.episodes = []

        def on_log(self, args: Any, state: Any, control: Any, logs=None, **kwargs: Any) -> None:
            # A plain GRPOTrainer never feeds this callback: fail loudly instead of logging nothing.
            if not self.attached:
                raise RuntimeError(
                    "BreathCallback only works with agentropy.integrations.trl.BreathGRPOTrainer "
                    "or RhythmGRPOTrainer (TRL's GRPOTrainer gives callbacks no per-token data)"
                )

    class BreathGRPOTrainer(trl.GRPOTrainer):
        """TRL's ``GRPOTrainer`` (its own loss) with breath metrics in the logs.

        Extra keyword arguments: ``markers`` (chat-format span markers, default the ToolWorld
        ones) and ``is_tool_failure`` (default :func:`is_trl_error`). Everything else is
        ``GRPOTrainer``'s. A :class:`BreathCallback` is attached unless one is passed in
        ``callbacks``.
        """

        def __init__(
            self,
            *args: Any,
            markers: PhaseMarkers = DEFAULT_MARKERS,
            is_tool_failure: Callable[[Mapping[str, Any]], bool] = is_trl_error,
            **kwargs: Any,
        ) -> None:
            super().__init__(*args, **kwargs)
            self.agentropy_markers = markers
            self.agentropy_is_tool_failure = is_tool_failure
            self._agentropy_messages: list[list[dict[str, Any]]] | None = None
            self._agentropy_next_row = 0
            self._agentropy_seen: set[int] = set()
            self._agentropy_capture: list[torch.Tensor] | None = None
            if not self.breath_callbacks:
                self.add_callback(BreathCallback())
            for cb in self.breath_callbacks:
                cb.attached = True

        @property
        def breath_callbacks(self) -> list[BreathCallback]:
            return [cb for cb in self.callback_handler.callbacks if isinstance(cb, BreathCallback)]

        # -- rollouts --------------------------------------------------------------------
        def _tool_call_loop(self, *args: Any, **kwargs: Any) -> Any:
            out = super()._tool_call_loop(*args, **kwargs)
            self._agentropy_messages = out[1]  # (tool_mask, completions, ...): the messages
            return out

        def _generate_and_score_completions(self, inputs: Any) -> dict[str, Any]:
            self._agentropy_messages = None
            out = super()._generate_and_score_completions(inputs)
            ids = out["completion_ids"].cpu().numpy()
            lengths = out["completion_mask"].sum(dim=1).cpu().numpy()
            tool_mask = out.get("tool_mask")
            tm = None if tool_mask is None else tool_mask.cpu().numpy()
            messages = self._agentropy_messages
            step = int(self.state.global_step)
            rollouts = []
            for i in range(ids.shape[0]):
                n = int(lengths[i])
                row_id = self._agentropy_next_row
                self._agentropy_next_row += 1
                ro = build_rollout(
                    ids[i, :n],
                    None if tm is None else tm[i, :n],
                    None if messages is None else messages[i],
                    self.processing_class,
                    episode_id=f"trl-s{step}-r{row_id}",
                    step=step,
                    markers=self.agentropy_markers,
                    is_tool_failure=self.agentropy_is_tool_failure,
                )
                ro.row_id = row_id
                rollouts.append(ro)
            width = ids.shape[1]
            device = out["completion_ids"].device

            def padded(key: str, fill: int) -> torch.Tensor:
                rows = [np.pad(getattr(r, key), (0, width - getattr(r, key).shape[0]),
                               constant_values=fill) for r in rollouts]  # fmt: skip
                return torch.as_tensor(np.stack(rows), device=device)

            out["agentropy_phase"] = padded("phase", 0)
            out["agentropy_trigger_offset"] = padded("trigger_offset", -1)
            out["agentropy_rollouts"] = rollouts
            return out

        # -- per-token data ----------------------------------------------------------------
        def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any) -> Any:
            logps, entropies, aux = super()._get_per_token_logps_and_entropies(*args, **kwargs)
            if self._agentropy_capture is not None and entropies is not None:
                self._agentropy_capture.append(entropies)
            return logps, entropies, aux

        def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
            self._agentropy_capture = []
            try:
                loss = super()._compute_loss(model, inputs)
            finally:
                captured, self._agentropy_capture = self._agentropy_capture, None
            if captured:
                self._record(inputs, captured[0])
            return loss

        def _record(self, inputs: Mapping[str, Any], entropies: torch.Tensor) -> None:
            """Fill the rows' entropies into their episodes and feed the breath callbacks."""
            if not self.model.training or "agentropy_rollouts" not in inputs:
                return
            ent = entropies.detach().float().cpu().numpy()
            episodes = []
            for i, ro in enumerate(inputs["agentropy_rollouts"]):
                if ro.row_id in self._agentropy_seen:
                    continue  # num_iterations > 1: the same rollout is trained on again
                self._agentropy_seen.add(ro.row_id)
                turns = []
                a = 0
                for turn in ro.episode.turns:
                    if turn.role == "assistant":
                        s, e = ro.spans[a]
                        a += 1
                        turn = Turn(
                            role="assistant", entropy=ent[i, s:e], token_ids=turn.token_ids,
                            phase=turn.phase,
                        )  # fmt: skip
                    turns.append(turn)
                ep = ro.episode
                episodes.append(
                    Episode(episode_id=ep.episode_id, turns=turns, step=ep.step, policy=ep.policy)
                )
            for cb in self.breath_callbacks:
                cb.add_episodes(episodes)

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if self.model.training:
                for cb in self.breath_callbacks:
                    logs.update(cb.pop_metrics(step=int(self.state.global_step)))
            super().log(logs, start_time)

    class RhythmGRPOTrainer(BreathGRPOTrainer):
        """``GRPOTrainer`` whose loss is :func:`agentropy.rl.losses.rhythm_loss`.

        Extra keyword argument ``rhythm`` (:class:`~agentropy.rl.losses.RhythmConfig`); the
        rest as :class:`BreathGRPOTrainer`. The PPO clip bounds are TRL's ``epsilon`` and
        ``epsilon_high``; the loss is a token-mean over the optimizer step (TRL's ``dapo``
        normaliser, never a mean of micro-batch means). Per-phase coefficients are updated at
        each optimizer step from the step's per-phase entropies (summed over micro-batches and
        processes) and logged as ``coef/lambda_<phase>``. TRL options this loss would silently
        ignore are refused at construction.
        """

        def __init__(self, *args: Any, rhythm: RhythmConfig | None = None, **kwargs: Any) -> None:
            # Check before TRL's __init__, which e.g. loads a reference model when beta != 0.
            config = kwargs.get("args", args[2] if len(args) > 2 else None)
            if config is not None:
                _refuse_ignored_options(config)
            super().__init__(*args, **kwargs)
            if getattr(self, "aux_loss_enabled", False):
                raise ValueError(
                    "RhythmGRPOTrainer does not add the MoE router aux loss; set the model's "
                    "output_router_logits=False"
                )
            self.rhythm = rhythm if rhythm is not None else RhythmConfig()
            self.rhythm_state: RhythmState = init_coef_state(self.rhythm)  # type: ignore[assignment]
            self._rhythm_window: torch.Tensor | None = None

        def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
            prompt_ids, completion_ids = inputs["prompt_ids"], inputs["completion_ids"]
            completion_mask = inputs["completion_mask"]
            input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
            attention_mask = torch.cat([inputs["prompt_mask"], completion_mask], dim=1)
            extra = {k: inputs.get(k) for k in _FORWARD_KEYS}  # multimodal inputs, as TRL
            logps, entropies, _ = self._get_per_token_logps_and_entropies(
                model,
                input_ids,
                attention_mask,
                completion_ids.size(1),
                compute_entropy=True,
                **extra,
            )  # (B, C) each, at T = args.temperature
            mask = completion_mask
            if "tool_mask" in inputs:
                mask = completion_mask * inputs["tool_mask"]
            old = inputs.get("old_per_token_logps")
            old = logps.detach() if old is None else old
            phase = inputs["agentropy_phase"]
            loss, metrics = rhythm_loss(
                logprob=logps,
                old_logprob=old,
                advantages=inputs["advantages"],
                mask=mask,
                entropy=entropies,
                phase=phase,
                trigger_offset=inputs["agentropy_trigger_offset"],
                lambdas=self.rhythm_state.lambdas,
                clip_low=self.epsilon_low,
                clip_high=self.epsilon_high,
                agg_mode="token-mean",
                **self.rhythm.loss_kwargs(),
            )
            mode = "train" if self.model.training else "eval"
            keep = mask != 0
            if mode == "train":
                # Token-mean over the whole optimizer step: rescale this micro-batch's mean by its
                # share of the step's tokens (TRL's dapo normaliser).
                normalizer = inputs["num_items_in_batch"].clamp(min=1.0)
                normalizer = normalizer / self.accelerator.num_processes
                normalizer = normalizer * self.current_gradient_accumulation_steps
                normalizer = normalizer / self.args.steps_per_generation
                loss = loss * keep.sum() / normalizer
            for key, value in metrics.items():
                if key.startswith(("loss/", "clip/", "kl/", "contraction/")):
                    self._metrics[mode][key].append(value)
            if mode == "train":
                self._record(inputs, entropies)
                self._update_coefficients(entropies.detach().float(), keep, phase)
            return loss

        def _update_coefficients(
            self, entropies: torch.Tensor, keep: torch.Tensor, phase: torch.Tensor
        ) -> None:
            # Per-phase entropy sums and counts of this micro-batch; summed over the accumulation
            # window and processes, then one update per optimizer step.
            parts = []
            for code in range(len(PHASES)):
                total, count = masked_sum_and_count(entropies, keep & (phase == code))
                parts += [total, count]
            stats = torch.stack(parts)
            self._rhythm_window = (
                stats if self._rhythm_window is None else self._rhythm_window + stats
            )
            if not self.accelerator.sync_gradients:
                return
            window = self.accelerator.reduce(self._rhythm_window, reduction="sum").cpu()
            self._rhythm_window = None
            measured: dict[str, float] = {}
            for code, name in enumerate(PHASES):
                total, count = float(window[2 * code]), float(window[2 * code + 1])
                measured[f"tokens/{name}"] = count
                measured[f"entropy/{name}_mean"] = total / count if count else math.nan
            self.rhythm_state = update_coef_state(self.rhythm_state, measured, self.rhythm)  # type: ignore[assignment]
            for name, value in zip(PHASES, self.rhythm_state.lambdas, strict=True):
                self._metrics["train"][f"coef/lambda_{name}"].append(value)

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            super()._save_checkpoint(model, trial)
            if self.args.should_save:
                folder = (
                    f"{transformers.trainer_utils.PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
                )
                path = os.path.join(self._get_output_dir(trial=trial), folder, _STATE_FILE)
                with open(path, "w") as f:
                    json.dump(self.rhythm_state.state_dict(), f)

        def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
            super()._load_optimizer_and_scheduler(checkpoint)
            if checkpoint is not None:
                path = os.path.join(checkpoint, _STATE_FILE)
                if os.path.exists(path):
                    with open(path) as f:
                        self.rhythm_state = RhythmState.load(json.load(f))

    for cls in (BreathCallback, BreathGRPOTrainer, RhythmGRPOTrainer):
        cls.__module__ = __name__
    return {
        "BreathCallback": BreathCallback,
        "BreathGRPOTrainer": BreathGRPOTrainer,
        "RhythmGRPOTrainer": RhythmGRPOTrainer,
    }


def _refuse_ignored_options(a: Any) -> None:
    """Refuse GRPOConfig options the rhythm loss would otherwise silently ignore."""
    refused = {
        "beta": a.beta != 0.0,
        "entropy_coef": a.entropy_coef != 0.0 or a.use_adaptive_entropy,
        "top_entropy_quantile": a.top_entropy_quantile < 1.0,
        "importance_sampling_level": a.importance_sampling_level != "token",
        "off_policy_mask_threshold": a.off_policy_mask_threshold is not None,
        "delta": a.delta is not None,
        "use_vllm": a.use_vllm,
        "loss_type": a.loss_type != "dapo",
    }
    bad = [k for k, v in refused.items() if v]
    if bad:
        raise ValueError(
            f"RhythmGRPOTrainer does not implement GRPOConfig options {bad}; leave them at their "
            "defaults (beta=0, entropy_coef=0, use_adaptive_entropy=False, top_entropy_quantile=1, "
            "importance_sampling_level='token', off_policy_mask_threshold=None, delta=None, "
            "use_vllm=False, loss_type='dapo')"
        )


#: Batch keys TRL forwards to the model besides ids and masks (vision-language models).
_FORWARD_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)

_STATE_FILE = "agentropy_rhythm_state.json"
"""Checkpoint file holding the rhythm coefficients (``RhythmState.state_dict()``)."""
