"""verl integration: the ``rhythm`` loss as verl's actor loss, and a phase-temperature agent loop.

Written against verl 0.9.1 (read from its source; it needs ``transformers < 5.11``, so its tests
run in their own environment, see ``requirements/verl.txt``). Three pieces, all thin adapters
of the core:

1. **Loss** (:func:`rhythm_ppo_loss`): a full replacement of verl's actor loss
   (``verl.workers.utils.losses.ppo_loss``), installed with the worker group's ``set_loss_fn``.
   verl's registered policy losses never see entropy; the full loss gets
   ``model_output["entropy"]`` (set ``actor_rollout_ref.actor.calculate_entropy=True``). The PPO
   term is verl's own (``policy_loss.loss_mode``, clip ratios, rollout importance weights and
   the KL loss are honoured exactly as in ``ppo_loss``); the entropy term is agentropy's
   :func:`~agentropy.rl.losses.rhythm_term`: per-phase signed coefficients plus the recover
   contraction term. agentropy reduces
   per micro-batch; the term is rescaled to verl's global-batch normalisation (``dp_size``,
   ``batch_num_tokens`` / ``global_batch_size``), so gradient accumulation over micro-batches and
   ranks gives the global token (or sequence) mean, as verl's ``agg_loss`` does. (The contraction
   term, a mean over its own token set, is weighted by each micro-batch's share of the tokens.)

   Per-token phases come from the rollout: batch key :data:`PHASE_KEY` (``"agentropy_phase"``)
   holds phase codes (index into :data:`agentropy.trace.PHASES`, -1 on tool/padding tokens), and
   :data:`OFFSET_KEY` (``"agentropy_trigger_offset"``) the assistant tokens since the last failed
   tool result (-1 where none). Either a per-sample list in ``non_tensor_batch`` (what the agent
   loop below produces: verl turns ``AgentLoopOutput.extra_fields`` into ``non_tensor_batch``
   columns), aligned with the response tokens, or a ``(B, response_length)`` tensor in ``batch``.

   The per-phase coefficients ``lambda_p`` adapt once per training step on the driver
   (:func:`install_rhythm_loss`): the loss logs per-phase entropy sums and token counts as
   SUM-aggregated verl metrics (``rhythm/entropy_sum_{p}``, ``rhythm/tokens_{p}``), so the
   driver divides once (no mean of means across micro-batches or ranks), calls
   :meth:`~agentropy.rl.coefs.RhythmSchedule.update` and pushes the new coefficients to the workers.

2. **Agent loop** (``PhaseToolAgentLoop``, registered as :data:`AGENT_NAME` =
   ``"agentropy_phase"`` with verl's ``@register``): verl's ``ToolAgentLoop`` with each turn's
   temperature set from the phase, ``{**sampling_params, "temperature": t}``: the turn after a
   failed tool result is sampled at the ``recover`` temperature, other turns at ``plan``. With
   ``per_token=True`` the turn is sent at ``temperature=1.0`` with
   ``extra_args={"agentropy": {...}}`` for :mod:`agentropy.integrations.vllm`'s logits
   processor, which then applies ``act`` / ``answer`` / ``recover`` / ``plan`` temperatures per
   token (the processor must be loaded in vLLM: with verl 0.9.1's pinned vLLM 0.24 that is
   ``PhaseLogitsProcessorV1``, e.g. ``actor_rollout_ref.rollout.engine_kwargs.vllm.logits_processors``;
   untested here, no GPU). Greedy requests (``temperature == 0``, verl's
   validation) are left alone. Every response token's phase (labelled from the decoded text by
   :func:`agentropy.control.phases.label_tokens`, as the core runner does) and trigger offset is
   recorded under the keys above. A tool result counts as failed when verl's tool dispatcher
   reports an error (unknown tool, invalid JSON arguments, the tool raised) or the tool's
   returned metrics dict has ``status`` in ``{"error", "unexpected"}`` or ``failed: true``.

3. **Plugin**: verl imports the ``verl.plugins`` entry points when ``verl`` is imported (in the
   driver and in every Ray worker), so ``agentropy = "agentropy.integrations.verl:PhaseToolAgentLoop"``
   registers the agent loop everywhere. (verl swallows plugin import errors into a debug log.)

4. **Monitor** (:class:`VerlMonitor`, framework-free, also importable without verl): the live
   training monitor over verl's per-step metrics dict. Call it in ``RayPPOTrainer.fit``
   (``verl/trainer/ppo/ray_trainer.py``) once the step's ``metrics`` dict is complete, just
   before ``logger.log(data=metrics, step=self.global_steps)``; it adds ``monitor/*`` counts to
   the dict and returns True when an alert named in ``stop_on`` fired (then log, save, and
   leave the loop). With the rhythm loss installed it tracks each phase's entropy too.

On-policy caveat: verl recomputes log-probs and entropy at one rollout temperature
(``actor_rollout_ref.rollout.temperature``); keep it at 1.0 so ``model_output["entropy"]`` is the
model entropy the rhythm targets are defined on. Tokens sampled at a phase temperature != 1 are
then slightly off-policy for verl's PPO ratio (verl has no per-token temperature in training).

This module imports verl at the top (without it, ``MissingExtraError``: "pip install
'agentropy[verl]'"); ``agentropy.integrations`` loads it lazily. The framework-free pieces
(batch keys, :class:`PhaseRecord`, :func:`global_scale`, :func:`rhythm_coef_update` ...) live in
``agentropy.integrations._verl_core`` and are re-exported here.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from agentropy.control.phases import decode_token_texts, label_tokens, resolves_failure
from agentropy.integrations._extras import require
from agentropy.integrations._verl_core import (
    AGENT_NAME,
    OFFSET_KEY,
    PHASE_KEY,
    VERL_AGG_MODES,
    PhaseRecord,
    VerlMonitor,
    global_scale,
    pad_rows,
    phase_config,
    rhythm_coef_update,
    tool_failed,
    turn_sampling_params,
)
from agentropy.integrations._vllm_core import MarkerIds
from agentropy.rl.coefs import RhythmConfig, RhythmSchedule, RhythmState
from agentropy.rl.losses import rhythm_term
from agentropy.trace import PHASE_CODE, PHASES

core_algos = require("verl.trainer.ppo.core_algos", extra="verl")
padding = require("verl.workers.utils.padding", extra="verl")
verl_metric = require("verl.utils.metric", extra="verl")
verl_config = require("verl.utils.config", extra="verl")
tool_agent_loop = require("verl.experimental.agent_loop.tool_agent_loop", extra="verl")
agent_loop = require("verl.experimental.agent_loop.agent_loop", extra="verl")

if TYPE_CHECKING:  # the class itself for mypy; at run time, from the module required above
    from verl.experimental.agent_loop.tool_agent_loop import ToolAgentLoop
else:
    ToolAgentLoop = tool_agent_loop.ToolAgentLoop

__all__ = [
    "AGENT_NAME",
    "OFFSET_KEY",
    "PHASE_KEY",
    "VERL_AGG_MODES",
    "PhaseRecord",
    "PhaseToolAgentLoop",
    "RhythmController",
    "VerlMonitor",
    "global_scale",
    "install_rhythm_loss",
    "make_rhythm_loss",
    "phase_config",
    "rhythm_coef_update",
    "rhythm_ppo_loss",
    "tool_failed",
    "turn_sampling_params",
]


# --------------------------------------------------------------------------------- the loss


def _per_token(data: Any, key: str, like: torch.Tensor) -> torch.Tensor:
    """(B, T) int64 per-token values of ``key`` from a verl micro-batch, shaped like ``like``."""
    if key not in data:
        raise ValueError(
            f"the training batch has no {key!r}: roll out with the {AGENT_NAME!r} agent loop, "
            f"which records per-token phases under {PHASE_KEY!r} and {OFFSET_KEY!r}"
        )
    value = data[key]
    b, width = like.shape
    if isinstance(value, torch.Tensor):
        if value.is_nested:
            value = value.to_padded_tensor(-1)
        value = value.to(torch.int64)
        if value.shape[0] != b or value.shape[1] > width:
            raise ValueError(f"{key!r} has shape {tuple(value.shape)}, expected ({b}, <= {width})")
        out = torch.full((b, width), -1, dtype=torch.int64)
        out[:, : value.shape[1]] = value.cpu()
        return out.to(like.device)
    rows = list(value)
    if len(rows) != b:
        raise ValueError(f"{key!r} has {len(rows)} rows for a micro-batch of {b}")
    return pad_rows(rows, width, key=key).to(like.device)


def rhythm_ppo_loss(
    config: Any,
    model_output: Mapping[str, Any],
    data: Any,
    dp_group: Any = None,
    *,
    lambdas: Sequence[float],
    rhythm: RhythmConfig | None = None,
    phase_key: str = PHASE_KEY,
    offset_key: str = OFFSET_KEY,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """verl's PPO actor loss with agentropy's ``rhythm`` entropy term; for ``set_loss_fn``.

    Same call convention as ``verl.workers.utils.losses.ppo_loss`` (bind ``config`` — the
    actor's ``ActorConfig`` — and the keywords with :func:`make_rhythm_loss`). ``lambdas`` are
    the current per-phase coefficients (``RhythmState.lambdas``). Returns ``(loss, metrics)``
    with verl ``Metric`` values.
    """
    Metric, Agg = verl_metric.Metric, verl_metric.AggregationType
    rhythm = rhythm if rhythm is not None else RhythmConfig()

    log_prob = padding.no_padding_2_padding(model_output["log_probs"], data)  # (B, T)
    if model_output.get("entropy") is None:
        raise ValueError(
            "model_output has no 'entropy': set actor_rollout_ref.actor.calculate_entropy=True"
        )
    entropy = padding.no_padding_2_padding(model_output["entropy"], data)  # (B, T), nats
    phase = _per_token(data, phase_key, log_prob)
    offset = _per_token(data, offset_key, log_prob)

    info = config.global_batch_info
    info["dp_size"] = data["dp_size"]
    info["batch_num_tokens"] = data["batch_num_tokens"]
    info["global_batch_size"] = data["global_batch_size"]
    info["loss_scale_factor"] = config.loss_scale_factor
    # As in verl's ppo_loss: globally normalised losses add up across micro-batches (SUM).
    global_norm = (
        data["dp_size"] > 1
        or data["batch_num_tokens"] is not None
        or data["global_batch_size"] is not None
        or config.loss_scale_factor is not None
    )
    agg = Agg.SUM if global_norm else Agg.MEAN

    fields = ["response_mask", "old_log_probs", "advantages"]
    fields += [k for k in ("rollout_is_weights", "ref_log_prob") if k in data]
    td = data.select(*fields).to_padded_tensor()
    response_mask = td["response_mask"].to(bool)
    old_log_prob = td["old_log_probs"]
    mode = config.loss_agg_mode

    pg_loss, pg_metrics = core_algos.get_policy_loss_fn(
        config.policy_loss.get("loss_mode", "vanilla")
    )(
        old_log_prob=old_log_prob,
        log_prob=log_prob,
        advantages=td["advantages"],
        response_mask=response_mask,
        loss_agg_mode=mode,
        config=config,
        rollout_is_weights=td.get("rollout_is_weights", None),
    )
    metrics: dict[str, Any] = dict(Metric.from_dict(pg_metrics, aggregation=Agg.MEAN))
    metrics["actor/pg_loss"] = Metric(value=pg_loss, aggregation=agg)

    # The entropy term (-bonus + contraction), reduced over this micro-batch ...
    our_mode, scale = global_scale(mode, response_mask, **info)
    term, m = rhythm_term(
        entropy=entropy,
        mask=response_mask,
        phase=phase,
        trigger_offset=offset,
        lambdas=lambdas,
        agg_mode=our_mode,  # type: ignore[arg-type]
        **rhythm.loss_kwargs(),
    )
    # ... and rescaled to verl's global normalisation.
    entropy_loss = term * scale
    policy_loss = pg_loss + entropy_loss
    metrics["rhythm/loss"] = Metric(value=entropy_loss.detach(), aggregation=agg)
    with torch.no_grad():
        ent = entropy.detach().float()
        for p, code in PHASE_CODE.items():
            sel = response_mask & (phase == code)
            metrics[f"rhythm/entropy_sum_{p}"] = Metric(
                value=float(ent[sel].sum()), aggregation=Agg.SUM
            )
            metrics[f"rhythm/tokens_{p}"] = Metric(value=float(sel.sum()), aggregation=Agg.SUM)
    for k in ("contraction/tokens", "contraction/excess_mean", "contraction/frac_late_recover"):
        metrics[f"rhythm/{k}"] = Metric(value=m[k], aggregation=Agg.MEAN)
    for p in PHASES:
        metrics[f"rhythm/lambda_{p}"] = m[f"coef/lambda_{p}"]

    if config.use_kl_loss:  # verl's KL-to-reference loss, unchanged
        kld = core_algos.kl_penalty(logprob=log_prob, ref_logprob=td["ref_log_prob"],
                              kl_penalty=config.kl_loss_type)  # fmt: skip
        kl_loss = core_algos.agg_loss(
            loss_mat=kld, loss_mask=response_mask, loss_agg_mode=mode, **info
        )
        policy_loss = policy_loss + kl_loss * config.kl_loss_coef
        metrics["kl_loss"] = Metric(value=kl_loss, aggregation=agg)
        metrics["kl_coef"] = config.kl_loss_coef
    return policy_loss, metrics


def make_rhythm_loss(
    actor_config: Any,
    *,
    lambdas: Sequence[float],
    rhythm: RhythmConfig | None = None,
    phase_key: str = PHASE_KEY,
    offset_key: str = OFFSET_KEY,
) -> functools.partial:
    """``rhythm_ppo_loss`` bound to its config and coefficients, ready for ``set_loss_fn``."""
    return functools.partial(
        rhythm_ppo_loss, config=actor_config, lambdas=tuple(float(v) for v in lambdas),
        rhythm=rhythm if rhythm is not None else RhythmConfig(), phase_key=phase_key,
        offset_key=offset_key,
    )  # fmt: skip


class RhythmController:
    """Driver-side state of the rhythm coefficients, attached to a verl ``RayPPOTrainer``.

    Created by :func:`install_rhythm_loss`; ``state`` is the current :class:`RhythmState`
    (``state.state_dict()`` checkpoints it).
    """

    def __init__(self, trainer: Any, actor_config: Any, rhythm: RhythmConfig, state: RhythmState):
        self.trainer = trainer
        self.actor_config = actor_config
        self.rhythm = rhythm
        self.state = state

    def push(self) -> None:
        """Send the loss with the current coefficients to every actor worker."""
        self.trainer.actor_rollout_wg.set_loss_fn(
            make_rhythm_loss(self.actor_config, lambdas=self.state.lambdas, rhythm=self.rhythm)
        )

    def after_step(self, metrics: dict[str, Any]) -> None:
        """Adapt the coefficients from one step's actor metrics and push the new loss."""
        self.state = rhythm_coef_update(self.state, metrics, self.rhythm)
        for p, v in zip(PHASES, self.state.lambdas, strict=True):
            metrics[f"actor/rhythm/lambda_next_{p}"] = v
        self.push()


def install_rhythm_loss(
    trainer: Any,
    *,
    rhythm: RhythmConfig | None = None,
    state: RhythmState | None = None,
    actor_config: Any = None,
) -> RhythmController:
    """Use the rhythm loss in a verl ``RayPPOTrainer`` (call after ``trainer.init_workers()``).

    Sets the actor loss on all workers and wraps ``trainer._update_actor`` so that, after each
    actor update, the coefficients adapt from that step's metrics and the new loss is pushed.
    ``actor_config`` defaults to ``trainer.config.actor_rollout_ref.actor`` as a dataclass.
    """
    if actor_config is None:
        actor_config = verl_config.omega_conf_to_dataclass(trainer.config.actor_rollout_ref.actor)
    rhythm = rhythm if rhythm is not None else RhythmConfig()
    first = state if state is not None else RhythmSchedule(rhythm).init()
    ctl = RhythmController(trainer, actor_config, rhythm, first)
    ctl.push()
    update_actor = trainer._update_actor

    @functools.wraps(update_actor)
    def _update_actor(batch: Any) -> Any:
        out = update_actor(batch)
        ctl.after_step(out.meta_info["metrics"])
        return out

    trainer._update_actor = _update_actor
    return ctl


# ----------------------------------------------------------------------------- agent loop


def _record(agent_data: Any) -> PhaseRecord:
    rec = getattr(agent_data, "_agentropy", None)
    if rec is None:
        rec = PhaseRecord()
        agent_data._agentropy = rec
    return rec


@agent_loop.register(AGENT_NAME)
class PhaseToolAgentLoop(ToolAgentLoop):
    """verl's tool agent loop with phase temperatures and per-token phase records.

    Extra keyword arguments (from an ``agent_loop_config_path`` YAML entry, e.g.
    ``{name: agentropy_phase, _target_: agentropy.integrations.verl.PhaseToolAgentLoop,
    policy: "phase:recover=1.1", per_token: true}``): ``policy`` (per-phase temperatures,
    ``phase[:key=value,...]``) and ``per_token`` (send phase options to the vLLM logits
    processor instead of one temperature per turn).
    """

    def __init__(self, *args: Any, policy: str = "phase", per_token: bool = False,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(*args, **kwargs)
        self.phase_config = phase_config(policy)
        self.per_token = bool(per_token)
        self.marker_ids: dict[str, list[int]] | None = None
        if self.per_token:
            self.marker_ids = MarkerIds.from_tokenizer(self.tokenizer).to_dict()

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> Any:
        output = await super().run(sampling_params, **kwargs)
        n = len(output.response_mask)  # the response may have been cut to response_length
        for key in (PHASE_KEY, OFFSET_KEY):
            values = list(output.extra_fields.get(key) or [])
            output.extra_fields[key] = (values + [-1] * n)[:n]
        return output

    async def _handle_generating_state(
        self, agent_data: Any, sampling_params: dict[str, Any], ignore_termination: bool = False
    ) -> Any:
        rec = _record(agent_data)
        rec.sync(len(agent_data.response_mask))  # tool tokens since the last turn: -1
        before = len(agent_data.response_mask)
        params = turn_sampling_params(
            sampling_params, failure_pending=rec.failure_pending, config=self.phase_config,
            per_token=self.per_token, markers=self.marker_ids,
        )  # fmt: skip
        state = await super()._handle_generating_state(agent_data, params, ignore_termination)
        texts = decode_token_texts(self.tokenizer, list(agent_data.response_ids))
        labels = label_tokens(texts, failure_pending=rec.failure_pending)
        rec.add_turn(labels.tolist(), agent_data.response_mask[before:])
        if resolves_failure("".join(texts)):
            rec.failure_pending = False
        agent_data.extra_fields[PHASE_KEY] = rec.phases
        agent_data.extra_fields[OFFSET_KEY] = rec.offsets
        return state

    async def _handle_processing_tools_state(self, agent_data: Any) -> Any:
        rec = _record(agent_data)
        rec.round_failed = False
        state = await super()._handle_processing_tools_state(agent_data)
        rec.on_tool_results(failed=rec.round_failed)
        rec.sync(len(agent_data.response_mask))
        return state

    async def _call_tool(self, tool_call: Any, tools_kwargs: Any, agent_data: Any) -> Any:
        response, reward, result = await super()._call_tool(tool_call, tools_kwargs, agent_data)
        if tool_failed(getattr(response, "text", None), result):
            _record(agent_data).round_failed = True
        return response, reward, result
