"""Fixtures and model builders shared across test files.

Plain helpers (:func:`tiny_lm`, :func:`tool_tokenizer`, :func:`load_experiment`, :data:`CALL_OK`,
:data:`CALL_BAD`) are
imported by test modules with ``from conftest import ...`` (pytest puts ``tests/`` on
``sys.path``), for module-level helpers that cannot take fixtures.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

#: Two whole tool calls (one readable, one cut off) that :func:`tool_tokenizer` makes single tokens.
CALL_OK = '{"name":"lookup","arguments":{"entity":"Pata","attribute":"age"}}'
CALL_BAD = '{"name":"lookup","argu'


def load_script(folder: str, name: str) -> ModuleType:
    """The script ``<folder>/<name>.py`` of the repository (``experiments``, ``benchmarks``: no
    packages) imported as a module."""
    path = Path(__file__).resolve().parents[1] / folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{folder}_{name}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_experiment(name: str) -> ModuleType:
    """The script ``experiments/<name>.py`` imported as a module."""
    return load_script("experiments", name)


def tool_tokenizer() -> Any:
    """A fresh tiny tokenizer plus :data:`CALL_OK` and :data:`CALL_BAD` as single tokens."""
    from agentropy.agent.tiny import build_tokenizer

    tok = build_tokenizer()
    tok.add_tokens([CALL_OK, CALL_BAD])
    return tok


def tiny_lm(
    tokenizer: Any,
    *,
    arch: str = "llama",
    seed: int | None = 0,
    hidden: int = 32,
    layers: int = 1,
    heads: int = 4,
    max_positions: int = 2048,
    train: bool = False,
    **config: Any,
) -> Any:
    """A random-weight causal LM over ``tokenizer``, in eval mode unless ``train``.

    ``arch`` is ``llama`` or ``qwen3``. Weights are drawn after ``torch.manual_seed(seed)``
    (``seed=None``: from the current RNG state). The model is ``hidden`` wide with an MLP twice
    as wide, ``layers`` deep, with ``heads`` attention heads over 2 key-value heads; ``config``
    sets further config fields (e.g. ``tie_word_embeddings``, ``head_dim``).
    """
    import torch
    import transformers

    prefix = {"llama": "Llama", "qwen3": "Qwen3"}[arch]
    if seed is not None:
        torch.manual_seed(seed)
    cfg = getattr(transformers, f"{prefix}Config")(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **config,
    )
    model = getattr(transformers, f"{prefix}ForCausalLM")(cfg)
    return model if train else model.eval()


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Any:
    """The embedded agent's tokenizer (built offline; cached per process by ``build_tokenizer``)."""
    from agentropy.agent.tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def random_llama(tiny_tokenizer: Any) -> Any:
    """A random-weight 1-layer Llama over the tiny tokenizer (seeded), in eval mode."""
    return tiny_lm(tiny_tokenizer)


@pytest.fixture(scope="session")
def quick_agent(tmp_path_factory: Any) -> Any:
    """The quick recipe's agent, bootstrapped once per session for every slow test that needs a
    trained agent (about a minute on 2 shared cores, so not once per test file).

    ``home`` (an ``AGENTROPY_HOME``), ``path`` (the agent folder) and ``threads`` (torch's
    thread count before and after the bootstrap, which trains with one thread).
    """
    from types import SimpleNamespace

    import torch

    from agentropy.agent import tiny

    home = tmp_path_factory.mktemp("agentropy-home")
    before = torch.get_num_threads()
    path = tiny.bootstrap(tiny.TinyRecipe.quick(), home=home, progress=False, num_threads=1)
    return SimpleNamespace(home=home, path=path, threads=(before, torch.get_num_threads()))
