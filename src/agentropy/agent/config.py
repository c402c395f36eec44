"""Budgets and options of the rollout runner (:func:`agentropy.agent.runner.rollout`).

Its own module, free of torch, so that the command line can take its defaults from
:class:`RunnerConfig` without importing the runner (``agentropy --help`` stays fast).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentropy.control.phases import PhaseMarkers

__all__ = ["RunnerConfig"]


@dataclass(frozen=True)
class RunnerConfig:
    """Budgets and options of :func:`~agentropy.agent.runner.rollout`."""

    max_turns: int = 8
    """Maximum assistant turns per episode; an episode without an answer by then fails."""
    max_new_tokens: int = 128
    """Maximum tokens sampled in one assistant turn (the turn is then parsed as it stands)."""
    max_tokens: int = 1024
    """Maximum assistant tokens sampled per episode (prompt and tool tokens not counted)."""
    batch_size: int = 8
    """Episodes decoded together (one row each)."""
    max_context: int | None = None
    """Cap on a row's sequence length (prompt + all turns); default the model's
    ``max_position_embeddings`` if it has one. A row that reaches it ends its episode."""
    record_inputs: bool = False
    """Store each episode's full token sequence in ``meta["input_ids"]`` and the ``[start, end)``
    offsets of its assistant turns in ``meta["assistant_spans"]`` (for trainers and tests)."""
    markers: PhaseMarkers | None = None
    """Span markers for phases; default the ToolWorld format constants."""
    hold_steps: int = 16
    """Decoding steps a row may wait before its tool message (a block of many tokens) is fed,
    so that several rows' tool messages share one block instead of each padding the whole
    batch's cache by its length; 0 feeds every tool message at once."""
    kv_cache: str = "growing"
    """``"growing"``: each layer's keys/values live in a buffer with spare columns and a step's
    block is written in place (:mod:`agentropy.agent.kvcache`); ``"dynamic"``: transformers'
    ``DynamicCache``, which re-copies the whole cache with ``torch.cat`` at every step. Same
    values either way; ``"dynamic"`` is kept for comparison (``benchmarks/bench_kvcache.py``)."""
    share_prompts: bool = True
    """Rows of a wave with the same prompt (a GRPO group: one task, several rollouts) have it
    prefilled once and the keys/values copied to each (needs ``kv_cache="growing"``); a wave
    of distinct prompts is fed as before. Same episodes up to floating-point differences
    from the prefill's batch shape."""

    def __post_init__(self) -> None:
        for name in ("max_turns", "max_new_tokens", "max_tokens", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"RunnerConfig.{name} must be a positive integer, got {value!r}")
        if self.max_context is not None and (
            not isinstance(self.max_context, int) or self.max_context < 2
        ):
            raise ValueError(
                f"RunnerConfig.max_context must be None or an integer >= 2, got {self.max_context!r}"
            )
        if not isinstance(self.hold_steps, int) or self.hold_steps < 0:
            raise ValueError(
                f"RunnerConfig.hold_steps must be an integer >= 0 (steps), got {self.hold_steps!r}"
            )
        if self.kv_cache not in ("growing", "dynamic"):
            raise ValueError(
                f"RunnerConfig.kv_cache must be 'growing' or 'dynamic', got {self.kv_cache!r}"
            )
