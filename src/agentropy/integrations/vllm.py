"""vLLM backend of the phase temperature controller: a logits processor with per-request phases.

The processor divides each request's fp32 logits by the temperature of the phase its *next*
token is in (DESIGN.md, "Phases and the temperature controller"): ``act`` inside a tool call,
``answer`` inside the final answer, ``recover`` in free text after a failed tool result (until
the next tool call or answer starts), ``plan`` otherwise. Requests opt in through
``SamplingParams.extra_args``; requests without the key are left untouched::

    SamplingParams(temperature=1.0, extra_args={"agentropy": {
        "failure_pending": True,                      # the last tool result failed
        "phase_temperatures": {"recover": 1.1},       # optional overrides (defaults below)
        "markers": {"tool_open": [151657], ...},      # optional marker token ids
        "recover_budget": 256,                        # optional budget guard (tokens)
    }})

Where it runs in vLLM (0.33, read from its source): custom logits processors run before the
request's own temperature, min-p and top-k/top-p, so the request's ``temperature`` must be 1.0
(or 0 for greedy, which our division cannot change): anything else is rejected by
``validate_params`` because it would compound with the phase temperature. For the sampling
distribution to be exactly ``softmax(z / T_phase)`` also leave ``top_k``/``top_p``/``min_p``
off and frequency/presence penalties at 0.

Phases are tracked from each request's generated token ids by matching **marker token-id
sequences** (no detokenizer on the sampling path): by default the ids of ``<tool_call>``,
``</tool_call>``, ``<answer>``, ``</answer>`` encoded with the served model's tokenizer (loaded
once when the processor is built), or per request ``extra_args["agentropy"]["markers"]``
(:meth:`MarkerIds.from_tokenizer` computes them client-side). Marker matching is exact on ids, so
it is reliable when markers are single added tokens (Qwen's ``<tool_call>``, our tiny
tokenizer); a multi-token marker the model spells with a different tokenisation is missed. The
phase semantics equal :attr:`agentropy.control.phases.PhaseTracker.phase`: the token that
completes an opening marker is sampled under the free-text phase, tokens after it under the
span's phase, and a completed opening marker resolves a pending failure. Of the phase
controller's guards only the *budget guard* is applied here (``recover`` tokens past
``recover_budget`` in the request use the ``plan`` temperature); the divergence guard needs
per-token sampling entropy and is not implemented in this backend.

Two processor classes, one per vLLM model runner. This module imports vLLM at the top (without
it, ``MissingExtraError``: "pip install 'agentropy[vllm]'"); ``agentropy.integrations`` loads it
lazily. The framework-free logic lives in ``agentropy.integrations._vllm_core`` (tested without
vLLM, which has no CPU wheel) and is re-exported here.

- :data:`PhaseLogitsProcessor`: Model Runner V2 (the default runner in vLLM 0.33),
  ``vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor``: per-slot ``add_request``,
  ``apply(logits, ctx)``. The token fed at each row (``ctx.input_ids`` / ``ctx.pos``) is the
  request's latest output token; reading it costs one small device-to-host copy per step.
  Speculative decoding is rejected (one logits row per request is assumed).
- :data:`PhaseLogitsProcessorV1`: the V1 runner (``VLLM_USE_V2_MODEL_RUNNER=0`` or features V2
  lacks), ``vllm.v1.sample.logits_processor.LogitsProcessor``: ``update_state(BatchUpdate)``
  with added / removed / moved rows, ``apply(logits)``. ``is_argmax_invariant()`` is False: V1
  applies argmax-invariant processors *after* the request temperature, and we must run before it
  (on raw logits, as in V2). Use this class with older vLLM releases: e.g. vLLM 0.24 (the version
  verl 0.9.1's ``vllm`` extra pins) has no custom processors in Model Runner V2 and falls back to
  the V1 runner whenever ``logits_processors`` are configured. vLLM 0.33's V2 loader rejects
  V1-interface classes and vice versa, so pick the class matching the runner that will run.

Use (GPU; not run in this project's CI)::

    vllm serve MODEL --logits-processors agentropy.integrations.vllm:PhaseLogitsProcessor
    LLM(MODEL, logits_processors=["agentropy.integrations.vllm:PhaseLogitsProcessor"])
"""

from __future__ import annotations

import importlib
from typing import Any

from agentropy.integrations._extras import require
from agentropy.integrations._vllm_core import (
    EXTRA_ARGS_KEY,
    PROCESSOR_NAMES,
    MarkerIds,
    PhaseStream,
    RequestSpec,
    parse_request,
    processor_class,
    scale_rows,
)

vllm = require("vllm", extra="vllm")
_v1_base = require("vllm.v1.sample.logits_processor", extra="vllm").LogitsProcessor
try:
    _v2_base = importlib.import_module("vllm.v1.worker.gpu.sample.logits_processor").LogitsProcessor
except ImportError:  # releases before Model Runner V2 had custom logits processors
    _v2_base = None

__all__ = [
    "EXTRA_ARGS_KEY",
    "MarkerIds",
    "PhaseLogitsProcessor",
    "PhaseLogitsProcessorV1",
    "PhaseStream",
    "RequestSpec",
    "parse_request",
    "processor_class",
    "scale_rows",
]

#: The V1-runner processor (``VLLM_USE_V2_MODEL_RUNNER=0``, older vLLM such as verl's 0.24).
PhaseLogitsProcessorV1 = processor_class("v1", base=_v1_base)
if _v2_base is not None:
    #: The Model Runner V2 processor (vLLM 0.33's default runner).
    PhaseLogitsProcessor = processor_class("v2", base=_v2_base)


def __getattr__(name: str) -> Any:
    if name == PROCESSOR_NAMES["v2"]:
        raise ImportError(
            f"this vLLM ({vllm.__version__}) has no Model Runner V2 logits processors; use "
            "agentropy.integrations.vllm:PhaseLogitsProcessorV1 (the V1 runner)"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
