"""Per-step degeneracy rates of a batch of episodes: the monitor's evidence beyond reward.

The detector (:mod:`agentropy.monitor.detector`) tells a productive eruption from a degenerate
one by the rates of duplication, hallucinated tool calls and invalid actions before and after it
(arXiv 2605.27954: such patterns, once acquired in an eruption, persist). Trainers that hold the
step's rollouts as :class:`~agentropy.trace.Episode` s (ours, the TRL adapter) compute them here,
with the analyzer's own definitions (DESIGN.md, "Loop" and "hallucinated tool calls";
:mod:`agentropy.analysis.loops`), so the live monitor and ``agentropy analyze`` agree:

- ``loop_rate``: share of episodes with at least one loop (three identical consecutive calls,
  or an assistant turn whose token 3-gram repetition rate is >= 0.5).
- ``hallucination_rate``: hallucinated tool calls / tool calls that could be checked (unknown
  tool name when ``known_tools`` is given, or an argument value found neither in the question
  nor in an earlier tool output).
- ``valid_action_rate``: valid actions / actions. An action is a tool turn (valid when the call
  parsed: ``Turn.call`` is set) or the end of an episode whose runner recorded
  ``meta["end_reason"]`` ``answer`` (valid) or ``no_action`` (invalid: the turn ended with
  neither a call nor an answer).
- ``failure_rate``: failed (``error`` / ``unexpected``) tool turns / tool turns.

Each is None when its denominator is 0 (the monitor then treats the metric as not logged).
Keys are ``<prefix><name>`` with the ``breath/`` prefix that :data:`agentropy.monitor.DEFAULT_TAGS`
maps onto the detector's metrics.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from agentropy.trace import FAILED_STATUSES, Episode

__all__ = ["RATE_NAMES", "episode_rates"]

#: Rate names, in the order of the module docstring (keys are ``prefix + name``).
RATE_NAMES: tuple[str, ...] = (
    "loop_rate",
    "hallucination_rate",
    "valid_action_rate",
    "failure_rate",
)


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


def episode_rates(
    episodes: Sequence[Episode],
    *,
    known_tools: Iterable[str] | None = None,
    prefix: str = "breath/",
) -> dict[str, float | None]:
    """Degeneracy rates of one step's episodes (module docstring); keys ``prefix + name``.

    Costs one :class:`~agentropy.trace.TraceTable` build and one pass over the tool turns:
    milliseconds for a step of 32 episodes (``benchmarks/bench_monitor.py``).
    """
    from agentropy.analysis.loops import LoopConfig, find_loops, hallucinated_calls
    from agentropy.trace import TraceTable

    out: dict[str, float | None] = dict.fromkeys((prefix + n for n in RATE_NAMES), None)
    if not episodes:
        return out
    tool_turns = [t for ep in episodes for t in ep.turns if t.role == "tool"]
    n_calls = len(tool_turns)
    failed = sum(t.status in FAILED_STATUSES for t in tool_turns)
    valid = sum(t.call is not None for t in tool_turns)
    actions = n_calls
    for ep in episodes:
        end = ep.meta.get("end_reason")
        if end in ("answer", "no_action"):
            actions += 1
            valid += end == "answer"
    out[prefix + "failure_rate"] = _ratio(failed, n_calls)
    out[prefix + "valid_action_rate"] = _ratio(valid, actions)
    # Entropies play no part in these rates: drop non-finite ones (a blown-up policy) rather
    # than lose the step's evidence exactly when it matters.
    table = TraceTable.from_episodes(list(episodes), nan_policy="drop")
    loops = find_loops(table, LoopConfig())
    out[prefix + "loop_rate"] = _ratio(np.unique(loops.ep).shape[0], table.n_episodes)
    tools = None if known_tools is None else frozenset(known_tools)
    checked, halluc = hallucinated_calls(table, known_tools=tools)
    out[prefix + "hallucination_rate"] = _ratio(float(halluc.sum()), float(checked.sum()))
    return out
