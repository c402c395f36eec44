"""The framework-free half of the verl adapter: batch keys, phase records, turn temperatures,
verl's global loss normalisation and the driver-side coefficient update.

:mod:`agentropy.integrations.verl` (which imports verl) uses these; they import without verl so
they can be tested in the main environment. See that module's docstring for the data path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from agentropy.control.temperature import PhaseTemperature, PhaseTemperatureConfig
from agentropy.control.temperature import schedule_from_name as _schedule_from_name
from agentropy.integrations._vllm_core import EXTRA_ARGS_KEY
from agentropy.monitor import ALERT_NAMES, Alert, MonitorConfig, TagMap, Tracker
from agentropy.rl.coefs import RhythmConfig, RhythmSchedule, RhythmState
from agentropy.rl.losses import AGG_MODES
from agentropy.trace import FAILED_STATUSES, PHASE_CODE, PHASES

__all__ = [
    "AGENT_NAME",
    "OFFSET_KEY",
    "PHASE_KEY",
    "VERL_AGG_MODES",
    "PhaseRecord",
    "VerlMonitor",
    "global_scale",
    "pad_rows",
    "phase_config",
    "rhythm_coef_update",
    "tool_failed",
    "turn_sampling_params",
]

#: Batch key of per-token phase codes (-1 off assistant tokens).
PHASE_KEY = "agentropy_phase"
#: Batch key of per-token trigger offsets (assistant tokens since the last failed tool; -1: none).
OFFSET_KEY = "agentropy_trigger_offset"
#: Name the agent loop is registered under (``agent_name`` column / ``default_agent_loop``).
AGENT_NAME = "agentropy_phase"

# verl's ToolAgentLoop._call_tool answers these itself when a call cannot run.
_VERL_TOOL_ERRORS = (
    "Unknown function '",
    "Invalid JSON in arguments for '",
    "Error executing tool '",
)
#: verl's ``loss_agg_mode`` values: agentropy's :data:`~agentropy.rl.losses.AGG_MODES` and
#: ``token-sum``.
VERL_AGG_MODES: tuple[str, ...] = (*AGG_MODES, "token-sum")


def phase_config(policy: str = "phase") -> PhaseTemperatureConfig:
    """Per-phase temperatures from a policy name ``phase[:key=value,...]``."""
    schedule = _schedule_from_name(policy)
    if not isinstance(schedule, PhaseTemperature):
        raise ValueError(
            f"policy must be 'phase[:key=value,...]' for the agent loop, got {policy!r}"
        )
    return schedule.config


def turn_sampling_params(
    sampling_params: Mapping[str, Any],
    *,
    failure_pending: bool,
    config: PhaseTemperatureConfig,
    per_token: bool = False,
    markers: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Sampling params of the next turn.

    Per turn: ``{**sampling_params, "temperature": T}`` with ``T = config.recover`` right after
    a failed tool result, ``config.plan`` otherwise. Per token (``per_token=True``): temperature
    1.0 and ``extra_args["agentropy"]`` for the vLLM processor (phase temperatures, budget,
    ``failure_pending``, optional marker ids). A greedy request (temperature 0) is unchanged.
    """
    if float(sampling_params.get("temperature", 1.0)) == 0.0:
        return dict(sampling_params)
    if not per_token:
        t = config.recover if failure_pending else config.plan
        return {**sampling_params, "temperature": t}
    options: dict[str, Any] = {
        "failure_pending": bool(failure_pending),
        "phase_temperatures": {p: float(getattr(config, p)) for p in PHASES},
        "recover_budget": config.recover_budget,
    }
    if markers is not None:
        options["markers"] = {k: list(v) for k, v in markers.items()}
    extra = {**(sampling_params.get("extra_args") or {}), EXTRA_ARGS_KEY: options}
    return {**sampling_params, "temperature": 1.0, "extra_args": extra}


def tool_failed(text: str | None, result: Any) -> bool:
    """Whether a tool call failed, from the tool response text and the tool's metrics dict."""
    if isinstance(result, Mapping) and (
        result.get("status") in FAILED_STATUSES or result.get("failed") is True
    ):
        return True
    return bool(text and text.startswith(_VERL_TOOL_ERRORS))


class PhaseRecord:
    """Per-response-token phase codes and trigger offsets of one trajectory, built turn by turn.

    The lists stay aligned with verl's ``response_mask`` (assistant tokens 1, tool tokens 0):
    :meth:`sync` pads tool tokens with -1; :meth:`add_turn` labels a turn's new positions.
    """

    def __init__(self) -> None:
        self.phases: list[int] = []
        self.offsets: list[int] = []
        self.failure_pending = False
        """The last tool round had a failed call and no tool call or answer has started since."""
        self.round_failed = False
        """Some call of the current tool round failed (set while the round runs)."""
        self._since = -1  # assistant tokens since the last failed tool result; -1: none

    def sync(self, n: int) -> None:
        """Align to a response of ``n`` tokens: new (tool) positions get -1; extra ones drop."""
        for lst in (self.phases, self.offsets):
            del lst[n:]
            lst.extend([-1] * (n - len(lst)))

    def add_turn(self, labels: Sequence[int], new_mask: Sequence[int]) -> None:
        """Append one assistant turn: ``new_mask`` is the response mask of its new positions.

        Positions with mask 1 take ``labels`` in order (if the token builder added or dropped
        tokens, the count may differ: missing labels repeat the last one); mask 0 gets -1.
        """
        k = 0
        last = int(labels[-1]) if len(labels) else PHASE_CODE["plan"]
        for m in new_mask:
            if not m:
                self.phases.append(-1)
                self.offsets.append(-1)
                continue
            self.phases.append(int(labels[k]) if k < len(labels) else last)
            k += 1
            self.offsets.append(self._since)
            if self._since >= 0:
                self._since += 1

    def on_tool_results(self, *, failed: bool) -> None:
        """A tool round finished; a failed call starts ``recover`` (offsets restart at 0)."""
        self.failure_pending = bool(failed)
        self._since = 0 if failed else -1


def pad_rows(rows: Sequence[Sequence[int] | None], width: int, *, key: str) -> torch.Tensor:
    """(B, width) int64 from per-sample lists, -1 padded; a missing row is an error."""
    out = torch.full((len(rows), width), -1, dtype=torch.int64)
    for i, row in enumerate(rows):
        if row is None:
            raise ValueError(
                f"sample {i} of the batch has no {key!r}: roll out every sample with the "
                f"{AGENT_NAME!r} agent loop (or put per-token values under {key!r})"
            )
        values = np.asarray(row, dtype=np.int64).reshape(-1)
        if values.shape[0] > width:
            raise ValueError(f"{key!r} of sample {i} has {values.shape[0]} tokens > {width}")
        out[i, : values.shape[0]] = torch.from_numpy(values)
    return out


def global_scale(
    mode: str,
    mask: torch.Tensor,
    *,
    dp_size: int = 1,
    batch_num_tokens: Any = None,
    global_batch_size: Any = None,
    loss_scale_factor: Any = None,
) -> tuple[str, float]:
    """``(agentropy_mode, scale)``: ``scale * aggregate(x, mask, agentropy_mode)`` equals verl's
    ``agg_loss(x, mask, mode, ...)`` for the micro-batch ``mask`` (B, T).

    agentropy's :func:`~agentropy.rl.losses.aggregate` divides by the micro-batch's own token
    (sequence) count; verl divides by the global count and multiplies by ``dp_size`` so that
    summing micro-batch gradients and averaging over ranks gives the global mean.
    """
    if mode not in VERL_AGG_MODES:
        raise ValueError(f"unknown loss_agg_mode {mode!r}; verl's modes are {VERL_AGG_MODES}")
    keep = mask != 0
    if mode in ("token-mean", "token-sum"):
        n_local = float(keep.sum())
        if mode == "token-sum":
            return "token-mean", n_local * dp_size
        if batch_num_tokens is None:
            return "token-mean", 1.0
        return "token-mean", n_local / float(batch_num_tokens) * dp_size
    n_seq = float((keep.sum(dim=-1) > 0).sum())
    scale = 1.0 if global_batch_size is None else n_seq / float(global_batch_size) * dp_size
    if mode == "seq-mean-token-mean":
        return "seq-mean-token-mean", scale
    if mode == "seq-mean-token-sum-norm":
        factor = loss_scale_factor if loss_scale_factor is not None else mask.shape[-1]
        scale /= float(factor)
    return "seq-mean-token-sum", scale


def _reduce(value: Any) -> float:
    """One number from a verl metric value (Metric, list of floats, or float)."""
    if hasattr(value, "aggregate"):
        return float(value.aggregate())
    if isinstance(value, list | tuple | np.ndarray):
        return float(np.mean(value)) if len(value) else 0.0
    return float(value)


def rhythm_coef_update(
    state: RhythmState, metrics: Mapping[str, Any], config: RhythmConfig
) -> RhythmState:
    """Next coefficient state from one step's actor metrics (keys with or without ``actor/``).

    Per-phase mean entropy = ``rhythm/entropy_sum_{p}`` / ``rhythm/tokens_{p}``: both are
    reduced the same way by verl, so the ratio is the step's token mean.
    """
    step: dict[str, float] = {}
    for p in PHASES:
        s = t = None
        for prefix in ("actor/", ""):
            if f"{prefix}rhythm/tokens_{p}" in metrics:
                s = _reduce(metrics[f"{prefix}rhythm/entropy_sum_{p}"])
                t = _reduce(metrics[f"{prefix}rhythm/tokens_{p}"])
                break
        if s is None or t is None:  # both set together
            raise KeyError(
                f"actor metrics have no 'rhythm/tokens_{p}': is the rhythm loss installed "
                "(install_rhythm_loss) and actor.calculate_entropy=True?"
            )
        step[f"tokens/{p}"] = t
        step[f"entropy/{p}_mean"] = s / t if t > 0 else 0.0
    return RhythmSchedule(config).update(state, step)


class VerlMonitor:
    """The live training monitor (:mod:`agentropy.monitor`) over verl's per-step metrics dict.

    Call it once per step on the driver, in ``RayPPOTrainer.fit``
    (``verl/trainer/ppo/ray_trainer.py``), right after the step's ``metrics`` dict is complete
    (after ``metrics.update(compute_data_metrics(...))``, the timing and throughput metrics) and
    just before ``logger.log(data=metrics, step=self.global_steps)``::

        monitor = VerlMonitor(stop_on=["divergence", "collapse"])   # once, before the loop
        ...
        if monitor(metrics, self.global_steps):                      # every step
            logger.log(data=metrics, step=self.global_steps)
            break                                                    # (after saving, if wanted)
        logger.log(data=metrics, step=self.global_steps)

    It reads verl's names (``actor/entropy``, ``critic/score/mean``, ``critic/rewards/mean``,
    ``response_length/mean``; :data:`agentropy.monitor.DEFAULT_TAGS`); with the rhythm loss
    installed (:func:`agentropy.integrations.verl.install_rhythm_loss`) also the per-phase
    entropies ``actor/rhythm/entropy_sum_<p> / actor/rhythm/tokens_<p>``, so each phase is its
    own channel. It adds ``monitor/alerts`` and ``monitor/<name>`` counts to ``metrics`` (so
    verl's logger records them), prints alerts, and returns True once an alert named in
    ``stop_on`` has fired. Checkpoint :meth:`state_dict` next to verl's own
    (``global_step_N/``) and :meth:`load_state_dict` it on resume.
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

        self.tracker = Tracker(config, tags=tags, stop_on=stop_on)
        self.console = console if console is not None else Console(stderr=True)

    @property
    def alerts(self) -> list[Alert]:
        """Every alert so far."""
        return self.tracker.alerts

    def __call__(self, metrics: dict[str, Any], step: int) -> bool:
        """Feed one step's metrics (verl values may be numbers, lists or ``Metric`` s)."""
        raw: dict[str, float] = {}
        for k, v in metrics.items():
            try:
                raw[k] = _reduce(v)
            except (TypeError, ValueError):
                continue
        for p in PHASES:
            for prefix in ("actor/", ""):
                t = raw.get(f"{prefix}rhythm/tokens_{p}")
                if t is not None:
                    if t > 0:
                        raw[f"entropy/{p}_mean"] = raw[f"{prefix}rhythm/entropy_sum_{p}"] / t
                    break
        alerts = self.tracker.step(int(step), raw)
        metrics["monitor/alerts"] = float(len(alerts))
        for name in ALERT_NAMES:
            metrics[f"monitor/{name}"] = float(sum(a.name == name for a in alerts))
        for a in alerts:
            kind = f" ({a.kind})" if a.kind else ""
            self.console.print(
                f"step {a.step}: monitor {a.name}{kind} on {a.metric}: {a.suggestion}"
            )
        return self.tracker.should_stop

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready checkpoint (:meth:`agentropy.monitor.Tracker.state_dict`)."""
        return self.tracker.state_dict()

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.tracker.load_state_dict(d)
