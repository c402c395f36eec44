"""Fixtures shared across test files."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Any:
    """The embedded agent's tokenizer (built offline; cached per process by ``build_tokenizer``)."""
    from agentropy.agent.tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def random_llama(tiny_tokenizer: Any) -> Any:
    """A random-weight 1-layer Llama over the tiny tokenizer (seeded), in eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = tiny_tokenizer
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return LlamaForCausalLM(config).eval()
