"""agentropy: entropy dynamics of tool-using LLM agents trained with reinforcement learning.

Three verbs over one data model (see DESIGN.md):

- observe: exact per-token entropy (:mod:`agentropy.entropy`) on traces
  (:mod:`agentropy.trace`), analysed into eruptions and contractions (:mod:`agentropy.analysis`);
- control: phase-aware sampling temperature (:mod:`agentropy.control`);
- train: multi-turn GRPO with a phase-aware entropy objective (:mod:`agentropy.rl`).

Importing this package is cheap: torch, transformers and every optional dependency are imported
inside the modules that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
