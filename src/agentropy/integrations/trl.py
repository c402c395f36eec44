"""TRL adapter: breath metrics and the phase-aware ``rhythm`` loss inside TRL's ``GRPOTrainer``.

Install with ``pip install 'agentropy[trl]'`` (TRL 1.16). This module imports TRL at the top (a
missing TRL raises ``MissingExtraError`` naming the extra); ``agentropy.integrations`` loads it
lazily, and the framework-free pieces (:func:`build_rollout`, :func:`breath_metrics`,
:func:`prepare_tokenizer` ...) live in ``agentropy.integrations._trl_core``, re-exported here.

What it gives (all thin: the math is :mod:`agentropy.rl.losses`, the phase rule is
:mod:`agentropy.control.phases`, the analysis is :mod:`agentropy.analysis.breath` / ``loops``):

- :class:`BreathGRPOTrainer`: TRL's ``GRPOTrainer`` with TRL's own loss, plus per-step breath
  metrics in the logs (``breath/entropy_recover``, ``breath/spike_ratio_failed``,
  ``breath/eruptions_divergent``, ``breath/loops`` ...; :data:`BREATH_KEYS` lists them).
- :class:`RhythmGRPOTrainer`: the same, with the loss replaced by agentropy's
  ``ppo_clip_loss + rhythm_term`` (:mod:`agentropy.rl.losses`: per-phase adaptive entropy
  coefficients plus the recover contraction term); the coefficients are updated once per optimizer step and saved in
  checkpoints (``agentropy_rhythm_state.json``).
- :class:`BreathCallback`: the ``TrainerCallback`` that accumulates the rollouts of a logging
  window and turns them into breath metrics. The two trainers attach one automatically; pass your
  own (``callbacks=[BreathCallback(breath=BreathConfig(...), loops=LoopConfig(...))]``) to
  change thresholds.
- :class:`MonitorCallback`: the live training monitor (alerts on eruption, divergence,
  collapse; ``stop_on=``) over TRL's own logged metrics, on a plain ``GRPOTrainer`` too.
- :func:`prepare_tokenizer`: gives a tokenizer whose chat template TRL does not know (e.g. the
  tiny agent's, :func:`agentropy.agent.tiny.build_tokenizer`) the ``response_template`` TRL needs
  to parse ``<tool_call>{json}</tool_call>`` turns.

Usage (everything but ``rhythm=`` is plain TRL)::

    from trl import GRPOConfig
    from agentropy.integrations.trl import RhythmGRPOTrainer, prepare_tokenizer
    from agentropy.rl.coefs import RhythmConfig

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
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from agentropy.control.phases import DEFAULT_MARKERS, PhaseMarkers
from agentropy.integrations._extras import require
from agentropy.integrations._trl_core import (
    BREATH_KEYS,
    Rollout,
    breath_metrics,
    build_rollout,
    is_trl_error,
    prepare_tokenizer,
)
from agentropy.monitor import ALERT_NAMES, Alert, MonitorConfig, TagMap, Tracker
from agentropy.outputs import atomic_write_text
from agentropy.rl.coefs import RhythmConfig, RhythmSchedule, RhythmState
from agentropy.rl.losses import masked_sum_and_count, ppo_clip_loss, rhythm_term
from agentropy.trace import PHASES, Episode, Turn

trl = require("trl", extra="trl")
transformers = require("transformers", extra="trl")

if TYPE_CHECKING:
    # The framework classes themselves for mypy; at run time, from the modules required above.
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from agentropy.analysis.breath import BreathConfig
    from agentropy.analysis.loops import LoopConfig
else:
    TrainerCallback = transformers.TrainerCallback
    GRPOTrainer = trl.GRPOTrainer

__all__ = [
    "BREATH_KEYS",
    "BreathCallback",
    "BreathGRPOTrainer",
    "MonitorCallback",
    "RhythmGRPOTrainer",
    "Rollout",
    "breath_metrics",
    "build_rollout",
    "is_trl_error",
    "prepare_tokenizer",
]


class BreathCallback(TrainerCallback):
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


class MonitorCallback(TrainerCallback):
    """The live training monitor (:mod:`agentropy.monitor`) as a ``TrainerCallback``.

    Works with a plain ``trl.GRPOTrainer`` (or any ``Trainer``): it reads TRL's own logged
    metrics (``entropy``, ``reward``, ``completions/mean_length``, ``tools/failure_frequency``;
    :data:`agentropy.monitor.DEFAULT_TAGS`). Under :class:`BreathGRPOTrainer` /
    :class:`RhythmGRPOTrainer` the logs also hold ``breath/entropy_<phase>`` and the degeneracy
    rates (``breath/loop_rate``, ``breath/hallucination_rate``, ``breath/valid_action_rate``),
    so each phase is its own channel and eruptions are classified productive or degenerate.

    Each ``on_log`` feeds one update (``state.global_step``); alerts are printed to stderr,
    kept in :attr:`alerts`, and their counts (``monitor/alerts``, ``monitor/<name>``) added to
    that step's ``state.log_history`` entry. ``stop_on`` alert names set
    ``control.should_training_stop`` (training ends after the current step; Trainer saves then
    if its save strategy says so). The detector state is saved as
    ``checkpoint-N/agentropy_monitor_state.json`` and restored when training resumes from
    ``checkpoint-N``.

    Usage::

        trainer = GRPOTrainer(..., callbacks=[MonitorCallback(stop_on=["divergence"])])
    """

    def __init__(
        self,
        config: MonitorConfig | None = None,
        *,
        stop_on: Sequence[str] = (),
        tags: TagMap | None = None,
        console: Any = None,
    ) -> None:
        from rich.console import Console

        if tags is None:
            tags = TagMap.default(extra={f"entropy_{p}": f"breath/entropy_{p}" for p in PHASES})
        self.tracker = Tracker(config, tags=tags, stop_on=stop_on)
        self.console = console if console is not None else Console(stderr=True)

    @property
    def alerts(self) -> list[Alert]:
        """Every alert so far."""
        return self.tracker.alerts

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # Trainer has restored ``state`` from the checkpoint it resumes from (if any) by now.
        if state.global_step > 0:
            path = os.path.join(
                args.output_dir,
                f"{transformers.trainer_utils.PREFIX_CHECKPOINT_DIR}-{state.global_step}",
                _MONITOR_FILE,
            )
            if os.path.exists(path):
                with open(path) as f:
                    self.tracker.load_state_dict(json.load(f))

    def on_log(self, args: Any, state: Any, control: Any, logs=None, **kwargs: Any) -> None:
        if not logs or state.global_step <= (self.tracker.state.step or 0):
            return  # evaluation logs of the same step, or steps replayed on resume
        alerts = self.tracker.step(int(state.global_step), logs)
        counts = {"monitor/alerts": float(len(alerts))}
        counts.update(
            {f"monitor/{n}": float(sum(a.name == n for a in alerts)) for n in ALERT_NAMES}
        )
        logs.update(counts)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(counts)
        for a in alerts:
            kind = f" ({a.kind})" if a.kind else ""
            self.console.print(
                f"step {a.step}: monitor {a.name}{kind} on {a.metric}: {a.suggestion}"
            )
        if self.tracker.should_stop:
            control.should_training_stop = True

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not args.should_save:
            return
        folder = os.path.join(
            args.output_dir,
            f"{transformers.trainer_utils.PREFIX_CHECKPOINT_DIR}-{state.global_step}",
        )
        if os.path.isdir(folder):
            # Atomic: a kill mid-write never leaves a checkpoint with a truncated monitor file
            # (force: TRL may save the same step twice; the newest state wins).
            path = os.path.join(folder, _MONITOR_FILE)
            atomic_write_text(path, json.dumps(self.tracker.state_dict()), force=True)


class BreathGRPOTrainer(GRPOTrainer):
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

    @property
    def _in_training_mode(self) -> bool:
        """Whether the model is in training mode (a built trainer always holds a model)."""
        return self.model is not None and self.model.training

    def _record(self, inputs: Mapping[str, Any], entropies: torch.Tensor) -> None:
        """Fill the rows' entropies into their episodes and feed the breath callbacks."""
        if not self._in_training_mode or "agentropy_rollouts" not in inputs:
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
        if self._in_training_mode:
            for cb in self.breath_callbacks:
                logs.update(cb.pop_metrics(step=int(self.state.global_step)))
        super().log(logs, start_time)


class RhythmGRPOTrainer(BreathGRPOTrainer):
    """``GRPOTrainer`` whose loss is agentropy's ``ppo_clip_loss + rhythm_term``.

    Extra keyword argument ``rhythm`` (:class:`~agentropy.rl.coefs.RhythmConfig`); the
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
        self.rhythm_schedule = RhythmSchedule(self.rhythm)
        self.rhythm_state: RhythmState = self.rhythm_schedule.init()
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
        policy_loss, metrics = ppo_clip_loss(
            logps, old, inputs["advantages"], mask,
            clip_low=self.epsilon_low, clip_high=self.epsilon_high, agg_mode="token-mean",
        )  # fmt: skip
        entropy_loss, ent_metrics = rhythm_term(
            entropy=entropies, mask=mask, phase=phase,
            trigger_offset=inputs["agentropy_trigger_offset"], agg_mode="token-mean",
            **self.rhythm_schedule.term_kwargs(self.rhythm_state),
        )  # fmt: skip
        loss = policy_loss + entropy_loss
        metrics.update(ent_metrics)
        metrics["loss/total"] = float(loss.detach())
        mode = "train" if self._in_training_mode else "eval"
        keep = mask != 0
        if mode == "train":
            # Token-mean over the whole optimizer step: rescale this micro-batch's mean by its
            # share of the step's tokens (TRL's dapo normaliser).
            normalizer = inputs["num_items_in_batch"].clamp(min=1.0)
            normalizer = normalizer / self.accelerator.num_processes
            normalizer = normalizer * self.current_gradient_accumulation_steps
            # TRL types a trainer's args as transformers' TrainingArguments; they are its GRPOConfig.
            args = cast("GRPOConfig", self.args)
            normalizer = normalizer / args.steps_per_generation
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
        self._rhythm_window = stats if self._rhythm_window is None else self._rhythm_window + stats
        if not self.accelerator.sync_gradients:
            return
        window = self.accelerator.reduce(self._rhythm_window, reduction="sum").cpu()
        self._rhythm_window = None
        measured: dict[str, float] = {}
        for code, name in enumerate(PHASES):
            summed, tokens = float(window[2 * code]), float(window[2 * code + 1])
            measured[f"tokens/{name}"] = tokens
            measured[f"entropy/{name}_mean"] = summed / tokens if tokens else math.nan
        self.rhythm_state = self.rhythm_schedule.update(self.rhythm_state, measured)
        for name, value in zip(PHASES, self.rhythm_state.lambdas, strict=True):
            self._metrics["train"][f"coef/lambda_{name}"].append(value)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = f"{transformers.trainer_utils.PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            path = os.path.join(self._get_output_dir(trial=trial), folder, _STATE_FILE)
            atomic_write_text(path, json.dumps(self.rhythm_state.state_dict()), force=True)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            path = os.path.join(checkpoint, _STATE_FILE)
            if os.path.exists(path):
                with open(path) as f:
                    self.rhythm_state = self.rhythm_schedule.load(json.load(f))


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

_MONITOR_FILE = "agentropy_monitor_state.json"
"""Checkpoint file holding the monitor's state (:meth:`agentropy.monitor.Tracker.state_dict`)."""

_STATE_FILE = "agentropy_rhythm_state.json"
"""Checkpoint file holding the rhythm coefficients (``RhythmState.state_dict()``)."""
