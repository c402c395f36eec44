"""benchmarks/_inflate.py: the embedded agent enlarged keeps its function (logits and greedy
tokens) at a larger cost."""

from __future__ import annotations

import pytest
import torch

from agentropy.agent import shipped, tiny
from conftest import load_script

pytestmark = pytest.mark.skipif(
    shipped.shipped_agent_path() is None, reason="no current agent shipped in agent/default/"
)


@pytest.fixture(scope="module")
def agent():
    model, tokenizer = tiny.load_agent(shipped.shipped_agent_path())
    return model, tokenizer


@pytest.mark.parametrize("head_dim", [None, 32])
def test_inflated_agent_computes_the_same_function(agent, head_dim) -> None:
    inflate = load_script("benchmarks", "_inflate")
    model, tokenizer = agent
    big = inflate.inflate(model, hidden=256, layers=6, head_dim=head_dim)
    assert type(big) is type(model) and not big.training and big.dtype == model.dtype
    assert big.config.num_hidden_layers == 6 and big.config.hidden_size == 256
    assert inflate.n_params(big) > 5 * inflate.n_params(model)
    assert big.generation_config.eos_token_id == model.generation_config.eos_token_id

    prompts = inflate.toolworld_prompts(tokenizer, level=2, n=2)
    assert inflate.max_logit_diff(model, big, prompts) < 1e-4
    for ids in prompts:
        x = torch.tensor([ids])
        kw = {"max_new_tokens": 20, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
        with torch.no_grad():
            assert torch.equal(model.generate(x, **kw), big.generate(x, **kw))


def test_inflate_is_deterministic_and_only_grows(agent) -> None:
    inflate = load_script("benchmarks", "_inflate")
    model, _ = agent
    a, b = (inflate.inflate(model, hidden=192, layers=4) for _ in range(2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    with pytest.raises(ValueError, match="only grows"):
        inflate.inflate(model, hidden=256, layers=2)
    with pytest.raises(ValueError, match="multiple"):
        inflate.inflate(model, hidden=256, layers=4, head_dim=24)
