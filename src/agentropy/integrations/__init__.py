"""Thin adapters to other frameworks: TRL, verl, vLLM (and OpenAI-compatible servers).

``trl``, ``verl`` and ``vllm`` each import their framework at the top; this package loads them
lazily with one idiom (PEP 562 module ``__getattr__``): ``agentropy.integrations.<name>`` imports
the submodule that defines ``name`` on first access, so ``import agentropy`` and
``import agentropy.integrations`` never import a framework. A missing framework surfaces as
:class:`~agentropy.integrations._extras.MissingExtraError`, an ``ImportError`` whose one line
says ``pip install 'agentropy[<extra>]'``.

The framework-free halves (``_trl_core``, ``_verl_core``, ``_vllm_core``: rollout parsing,
phase records, request options, loss normalisation) are reachable here without the framework,
e.g. ``from agentropy.integrations import MarkerIds, build_rollout``. The core library never
imports this package.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> submodule defining it. Framework-free names point at the ``_*_core`` modules.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        ("BREATH_KEYS", "Rollout", "breath_metrics", "build_rollout", "is_trl_error",
         "prepare_tokenizer"),
        "_trl_core",
    ),
    **dict.fromkeys(
        ("BreathCallback", "BreathGRPOTrainer", "MonitorCallback", "RhythmGRPOTrainer"), "trl"
    ),
    **dict.fromkeys(
        ("AGENT_NAME", "OFFSET_KEY", "PHASE_KEY", "VERL_AGG_MODES", "PhaseRecord", "VerlMonitor",
         "global_scale", "pad_rows",
         "phase_config", "rhythm_coef_update", "tool_failed", "turn_sampling_params"),
        "_verl_core",
    ),
    **dict.fromkeys(
        ("PhaseToolAgentLoop", "RhythmController", "install_rhythm_loss", "make_rhythm_loss",
         "rhythm_ppo_loss"),
        "verl",
    ),
    **dict.fromkeys(
        ("EXTRA_ARGS_KEY", "MarkerIds", "PhaseStream", "RequestSpec", "parse_request",
         "processor_class", "scale_rows"),
        "_vllm_core",
    ),
    **dict.fromkeys(("PhaseLogitsProcessor", "PhaseLogitsProcessorV1"), "vllm"),
}  # fmt: skip

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # The submodule's own top-level `require(...)` turns a missing framework into
    # MissingExtraError ("pip install 'agentropy[extra]'").
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
