"""The metric names shared by our trainer, the TRL adapter and the verl adapter: one table.

Metric keys are the only interface between trainers, the monitor and the report (STYLE.md), so
they are listed here once; ``docs/gen_metrics.py`` renders :data:`METRICS` as the table in
``docs/metrics.md`` (``make docs`` fails when the page is stale). ``{p}`` runs over the phases
(:data:`agentropy.trace.PHASES`), ``{alert}`` over the monitor's alert names
(:data:`agentropy.monitor.ALERT_NAMES`).

The ``breath/*`` window metrics come from one function,
:func:`agentropy.integrations._trl_core.breath_metrics`, called by the TRL adapter on each
logging window and by our trainer's sinks (TensorBoard, W&B) on each step's training episodes.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["METRICS", "Metric", "expand"]


class Metric(NamedTuple):
    """One metric key and where it is logged."""

    name: str
    """Key as logged; ``{p}`` stands for each phase."""
    unit: str
    """nats, tokens, count, ratio, ..."""
    producers: tuple[str, ...]
    """Which of ``trainer``, ``trl``, ``verl`` log it."""
    meaning: str
    """One line: what the value is."""


_BOTH = ("trainer", "trl")

METRICS: tuple[Metric, ...] = (
    Metric("breath/episodes", "count", _BOTH, "episodes in the logging window"),
    Metric("breath/tokens", "tokens", _BOTH, "assistant tokens in the window"),
    Metric("breath/entropy", "nats", _BOTH, "mean model entropy of assistant tokens"),
    Metric("breath/entropy_{p}", "nats", _BOTH, "mean model entropy of phase-p tokens"),
    Metric("breath/tokens_{p}", "tokens", _BOTH, "assistant tokens in phase p"),
    Metric("breath/tool_calls", "count", _BOTH, "tool turns (triggers)"),
    Metric("breath/tool_failures", "count", _BOTH, "tool turns with status error or unexpected"),
    Metric("breath/no_response", "count", _BOTH, "triggers with no assistant token after them"),
    Metric("breath/spike_ratio_failed", "ratio", _BOTH, "mean spike ratio S after failed tools"),
    Metric("breath/spike_ratio_ok", "ratio", _BOTH, "mean spike ratio S after successful tools"),
    Metric("breath/eruptions", "count", _BOTH, "triggers with S >= 2"),
    Metric("breath/eruptions_productive", "count", _BOTH, "eruptions that contract, then progress"),
    Metric("breath/eruptions_neutral", "count", _BOTH, "eruptions that contract without progress"),
    Metric("breath/eruptions_divergent", "count", _BOTH, "eruptions that never contract"),
    Metric("breath/frozen", "count", _BOTH, "failures met with S < 1.2 and the same call again"),
    Metric("breath/loops", "count", _BOTH, "loops (repeated calls or n-gram repetition)"),
    Metric("breath/loops_repeated_call", "count", _BOTH, "three identical tool calls in a row"),
    Metric("breath/loops_ngram", "count", _BOTH, "assistant turns with 3-gram repetition >= 0.5"),
    Metric("breath/loop_rate", "share", _BOTH, "episodes with at least one loop"),
    Metric("breath/hallucination_rate", "share", _BOTH,
           "hallucinated tool calls (unknown tool or invented value) / checkable calls"),
    Metric("breath/valid_action_rate", "share", _BOTH, "tool calls that parsed / tool calls"),
    Metric("breath/failure_rate", "share", _BOTH, "tool turns with status error or unexpected"),
    Metric("breath/alert_{alert}", "count", ("trainer", "monitor"),
           "training-monitor alerts of that name at the step (eruption, subsided, divergence, "
           "collapse, nonfinite)"),
    Metric("entropy/mean", "nats", ("trainer",), "token-mean entropy over the training batch"),
    Metric("entropy/{p}_mean", "nats", ("trainer",), "token-mean entropy of phase-p tokens (batch)"),
    Metric("tokens/{p}", "tokens", ("trainer",), "phase-p tokens in the training batch"),
    Metric("tokens/total", "tokens", ("trainer",), "trained assistant tokens in the batch"),
    Metric("loss/total", "nats", ("trainer", "trl"), "policy term plus entropy term"),
)  # fmt: skip


def expand(name: str) -> list[str]:
    """The concrete keys of ``name`` (``{p}`` replaced by each phase, ``{alert}`` by each alert
    name)."""
    from agentropy.monitor import ALERT_NAMES
    from agentropy.trace import PHASES

    if "{p}" in name:
        return [name.format(p=p) for p in PHASES]
    if "{alert}" in name:
        return [name.format(alert=a) for a in ALERT_NAMES]
    return [name]
