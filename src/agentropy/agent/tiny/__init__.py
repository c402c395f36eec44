"""The embedded tiny agent: an offline tokenizer, a tool-calling chat template and a small Llama
warm-started on ToolWorld expert transcripts.

Everything here runs offline on CPU (DESIGN.md, "Everything runs on CPU with a tiny built-in
agent"). One module per concern:

- :mod:`~agentropy.agent.tiny.template`: chat template, special and marker tokens, the BPE
  tokenizer, assistant-only labels;
- :mod:`~agentropy.agent.tiny.corpus`: expert transcripts, entity renaming, copy drills;
- :mod:`~agentropy.agent.tiny.sft`: the recipe, the model, the supervised training loop and
  held-out evaluation;
- :mod:`~agentropy.agent.tiny.store`: the agent directory per recipe, bootstrap, loading and the
  build record.

Every public name is re-exported here, so ``from agentropy.agent.tiny import X`` works for all of
them.
"""

from __future__ import annotations

from agentropy.agent.tiny.corpus import arith_drill, copy_drill, decision_drills
from agentropy.agent.tiny.sft import (
    FitResult,
    TinyRecipe,
    build_model,
    evaluate,
    fit,
    polish,
    shared_prefix_length,
)
from agentropy.agent.tiny.store import (
    INFO_FILE,
    agent_path,
    agentropy_home,
    bootstrap,
    default_agent_path,
    load_agent,
    read_agent_info,
)
from agentropy.agent.tiny.template import (
    CHAT_TEMPLATE,
    MARKER_TOKENS,
    PAD_TOKEN,
    ROLE_END,
    ROLE_START,
    SPECIAL_TOKENS,
    TOOL_RESPONSE_CLOSE,
    TOOL_RESPONSE_OPEN,
    Example,
    assistant_labels,
    build_tokenizer,
)

__all__ = [
    "CHAT_TEMPLATE",
    "INFO_FILE",
    "MARKER_TOKENS",
    "PAD_TOKEN",
    "ROLE_END",
    "ROLE_START",
    "SPECIAL_TOKENS",
    "TOOL_RESPONSE_CLOSE",
    "TOOL_RESPONSE_OPEN",
    "Example",
    "FitResult",
    "TinyRecipe",
    "agent_path",
    "agentropy_home",
    "arith_drill",
    "assistant_labels",
    "bootstrap",
    "build_model",
    "build_tokenizer",
    "copy_drill",
    "decision_drills",
    "default_agent_path",
    "evaluate",
    "fit",
    "load_agent",
    "polish",
    "read_agent_info",
    "shared_prefix_length",
]
