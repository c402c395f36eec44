"""Load the model a command should run: the embedded tiny agent, or any local Hugging Face
causal LM with a chat template."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from agentropy.errors import InputError

__all__ = [
    "load_model",
]


def load_model(path: str | os.PathLike[str] | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` in eval mode.

    ``None`` loads the embedded tiny agent (bootstrapping it on first use). A directory holding
    ``save_pretrained`` output loads through ``AutoModelForCausalLM`` / ``AutoTokenizer`` from local
    files only (no hub access at run time); the tokenizer must have a chat template.
    """
    from transformers.utils import logging as hf_logging

    from agentropy.agent import tiny

    hf_logging.disable_progress_bar()  # our commands show their own progress
    if path is None:
        return tiny.load_agent()
    p = Path(path)
    if not (p / "config.json").is_file():
        raise InputError("not a Hugging Face model directory (config.json missing)", path=p)
    if (p / tiny.INFO_FILE).is_file():  # our own agent: load it exactly as saved
        return tiny.load_agent(p)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(p, local_files_only=True)
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("the tokenizer has no chat template", path=p, field="chat_template")
    model = AutoModelForCausalLM.from_pretrained(p, local_files_only=True)
    model.eval()
    return model, tokenizer
