"""OpenAI-compatible backend end to end: the official ``openai`` client against a real HTTP
server on 127.0.0.1 (FastAPI + uvicorn) serving a tiny in-process model with the tiny agent's
tokenizer and chat template."""

from __future__ import annotations

import math
import socket
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from agentropy.env.toolworld import ToolWorld
from agentropy.integrations.openai import OpenAIAgentConfig, make_client, run_episode
from agentropy.trace import PHASE_CODE, entropy_bounds_of

uvicorn = pytest.importorskip("uvicorn")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(random_llama, tiny_tokenizer):
    """A uvicorn server on a free loopback port serving a random-weight tiny Llama."""
    from agentropy.integrations.serve import create_app

    model, tok = random_llama, tiny_tokenizer
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(model, tok), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start within 20 s")
        time.sleep(0.05)
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}/v1", vocab_size=len(tok), tok=tok)
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.slow
def test_chat_completion_returns_topk_logprobs(served):
    client = make_client(served.url)
    resp = client.chat.completions.create(
        model="agentropy-tiny",
        messages=[{"role": "user", "content": "What is 2 + 3?"}],
        temperature=1.0,
        max_tokens=6,
        logprobs=True,
        top_logprobs=5,
        seed=1,
    )
    choice = resp.choices[0]
    assert resp.usage.completion_tokens == len(choice.logprobs.content)
    for tok in choice.logprobs.content:
        tops = [t.logprob for t in tok.top_logprobs]
        assert len(tops) == 5
        assert tops == sorted(tops, reverse=True)
        # The sampled token's logprob can never exceed the best one.
        assert tok.logprob <= tops[0] + 1e-6


def test_bad_request_is_a_400_not_a_crash(served):
    import openai

    client = make_client(served.url)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="agentropy-tiny",
            messages=[{"role": "user", "content": "hi"}],
            temperature=-1.0,
            max_tokens=2,
        )


def test_run_episode_records_topk_entropy_with_bounds(served):
    world = ToolWorld()
    task = world.tasks(split="test", level=1, n=1, seed=0)[0]
    client = make_client(served.url)
    cfg = OpenAIAgentConfig(vocab_size=served.vocab_size, max_turns=2, max_tokens=12)
    ep = run_episode(client, world, task, config=cfg)
    turns = ep.assistant_turns
    assert turns, "no assistant turn recorded"
    first = turns[0]
    n = first.n_tokens
    assert n > 0
    assert first.temperature.shape == (n,) and first.phase.shape == (n,)
    bounds = entropy_bounds_of(first.meta, n)
    assert bounds is not None
    lo, hi = bounds
    assert np.all(lo <= first.entropy + 1e-5) and np.all(first.entropy <= hi + 1e-5)
    assert np.all(hi <= math.log(served.vocab_size) + 1e-4)
    # The first request follows no failure: sampled at the plan temperature.
    assert np.all(first.temperature == np.float32(cfg.temperatures.plan))
    assert ep.success in (True, False) and ep.latency_s > 0


class _ScriptedCompletions:
    """A stand-in for ``client.chat.completions`` replaying fixed assistant texts, recording the
    temperature of each request (tests the loop's control logic without a model)."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = list(texts)
        self.temperatures: list[float] = []

    def create(self, **kw):
        self.temperatures.append(kw["temperature"])
        text = self.texts.pop(0)
        pieces = [text[i : i + 4] for i in range(0, len(text), 4)]
        content = [
            SimpleNamespace(
                token=p,
                logprob=-0.1,
                top_logprobs=[SimpleNamespace(logprob=-0.1), SimpleNamespace(logprob=-2.5)],
            )
            for p in pieces
        ]
        msg = SimpleNamespace(content=text, tool_calls=None)
        choice = SimpleNamespace(
            message=msg, logprobs=SimpleNamespace(content=content), finish_reason="stop"
        )
        return SimpleNamespace(choices=[choice])


def test_request_after_failed_tool_uses_recover_temperature():
    world = ToolWorld()
    # An unknown tool is an error tool turn; the next request must be sampled at `recover`.
    task = world.tasks(split="test", level=1, n=1, seed=0)[0]
    completions = _ScriptedCompletions(
        [
            'I will look. <tool_call>{"name":"nosuchtool","arguments":{}}</tool_call>',
            "Let me retry. <answer>0</answer>",
        ]
    )
    client = SimpleNamespace(chat=SimpleNamespace(completions=completions))
    cfg = OpenAIAgentConfig(vocab_size=1000, max_turns=4)
    ep = run_episode(client, world, task, config=cfg)
    assert completions.temperatures == [cfg.temperatures.plan, cfg.temperatures.recover]
    assert [t.role for t in ep.turns] == ["assistant", "tool", "assistant"]
    assert ep.turns[1].status == "error"
    second = ep.turns[2]
    # Free text after the failure is `recover`, the answer span is `answer`.
    assert second.phase[0] == PHASE_CODE["recover"]
    assert second.phase[-1] == PHASE_CODE["answer"]
    assert np.all(second.temperature == np.float32(cfg.temperatures.recover))


def test_config_validation_messages():
    with pytest.raises(ValueError, match="top_logprobs"):
        OpenAIAgentConfig(top_logprobs=50)
    with pytest.raises(ValueError, match="unknown policy"):
        OpenAIAgentConfig(policy="hot")
    with pytest.raises(ValueError, match=">= 0"):
        OpenAIAgentConfig(policy="constant:-1")
