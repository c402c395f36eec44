"""``agentropy score``: teacher-forced entropy of existing conversations (parity with the runner)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch

from agentropy.agent.runner import rollout
from agentropy.agent.score import ScoreConfig, rescore_episodes, score_conversations
from agentropy.control.base import ConstantTemperature
from agentropy.env.toolworld import ToolWorld, ToolWorldConfig
from agentropy.trace import Episode
from agentropy.trace.importers.chat import Conversation, validate_messages
from conftest import tiny_lm, tool_tokenizer
from test_runner import Spy, _script

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tok() -> Any:
    return tool_tokenizer()


@pytest.fixture(scope="module")
def world() -> ToolWorld:
    return ToolWorld(ToolWorldConfig())


def _scripted(tok: Any, arch: str) -> torch.nn.Module:
    extra = {"head_dim": 8} if arch == "qwen3" else {}
    model = tiny_lm(tok, arch=arch, seed=1, layers=2, **extra)
    Spy(model, _script(tok, len(tok)))
    return model


def _runner_episodes(tok: Any, world: ToolWorld, model: Any) -> list[Episode]:
    from agentropy.agent.config import RunnerConfig

    tasks = [*world.tasks(split="test", level=1, n=3, seed=0),
             *world.tasks(split="test", level=3, n=3, seed=0)]  # fmt: skip
    cfg = RunnerConfig(max_turns=4, max_new_tokens=8, max_tokens=40, batch_size=3,
                       record_inputs=True)  # fmt: skip
    return rollout(model, tok, world, tasks, schedule=ConstantTemperature(1.0), config=cfg, seed=3)


def _messages(ep: Episode, tok: Any, world: ToolWorld) -> list[dict[str, Any]]:
    """The runner's episode as OpenAI chat messages (tool calls left inline, as sampled)."""
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": world.system_prompt()},
        {"role": "user", "content": ep.meta["question"]},
    ]
    turns = list(ep.turns)
    while turns and turns[-1].role == "tool":
        turns.pop()
    for t in turns:
        if t.role == "assistant":
            text = tok.decode(t.token_ids.tolist(), skip_special_tokens=False)
            msgs.append({"role": "assistant", "content": text.removesuffix(tok.eos_token)})
        else:  # the call stays inline in the content, as sampled (Hermes style)
            msgs.append({"role": "tool", "content": t.content})
    return msgs


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_rescoring_a_runner_trace_reproduces_its_entropy_logprob_and_phases(tok, world, arch):
    model = _scripted(tok, arch)
    episodes = _runner_episodes(tok, world, model)
    assert any(t.failed for ep in episodes for t in ep.turns)  # recover phases are exercised
    scored = list(rescore_episodes(model, tok, episodes, config=ScoreConfig(max_batch_tokens=512)))
    n = 0
    for ep, sc in zip(episodes, scored, strict=True):
        assert sc.episode_id == ep.episode_id
        for a, b in zip(ep.turns, sc.turns, strict=True):
            assert a.role == b.role
            if a.role == "tool":
                assert a.status == b.status
                continue
            np.testing.assert_array_equal(a.token_ids, b.token_ids)
            np.testing.assert_allclose(b.entropy, a.entropy, atol=1e-4, rtol=0)
            np.testing.assert_allclose(b.logprob, a.logprob, atol=1e-4, rtol=0)
            np.testing.assert_array_equal(a.phase, b.phase)
            n += a.n_tokens
    assert n > 50


def test_scoring_messages_matches_the_runner(tok, world):
    """The same episodes as chat messages: rendered by the template, spans from its mask."""
    model = _scripted(tok, "llama")
    episodes = _runner_episodes(tok, world, model)
    convs = [Conversation(id=ep.episode_id, messages=validate_messages(_messages(ep, tok, world)),
                          tools=world.tool_schemas()) for ep in episodes]  # fmt: skip
    checked = 0
    for ep, sc in zip(episodes, score_conversations(model, tok, convs), strict=True):
        runner = [t for t in ep.turns]
        while runner and runner[-1].role == "tool":
            runner.pop()
        assert [t.role for t in sc.turns] == [t.role for t in runner]
        for a, b in zip(runner, sc.turns, strict=True):
            if a.role == "tool":
                assert a.status == b.status  # ToolWorld errors start with "error:"
                continue
            ids = a.token_ids.tolist()
            # The template closes every turn with <|im_end|>; the runner only records it when the
            # model sampled it (a turn that ended on </tool_call> had it injected).
            if ids[-1] != tok.eos_token_id:
                assert b.token_ids.tolist() == [*ids, tok.eos_token_id]
                m = len(ids)
            else:
                assert b.token_ids.tolist() == ids
                m = len(ids)
            np.testing.assert_allclose(b.entropy[:m], a.entropy, atol=1e-4, rtol=0)
            np.testing.assert_allclose(b.logprob[:m], a.logprob, atol=1e-4, rtol=0)
            np.testing.assert_array_equal(b.phase[:m], a.phase)
            checked += m
    assert checked > 50


def test_windowing_scores_every_token_and_reports_it(tok, world):
    model = tiny_lm(tok, seed=0, layers=1)
    msgs = [{"role": "system", "content": "You help."}, {"role": "user", "content": "hi " * 30}]
    for i in range(6):
        msgs.append({"role": "assistant", "content": f"step {i} " + "ok " * 20})
        msgs.append({"role": "user", "content": "more " * 10})
    conv = Conversation(id="long", messages=validate_messages(msgs))
    first = tok.apply_chat_template(msgs[:3], tokenize=False)
    ctx = len(tok(first, add_special_tokens=False)["input_ids"]) + 4  # the first turn fits
    full = next(score_conversations(model, tok, [conv]))
    small = next(score_conversations(model, tok, [conv], config=ScoreConfig(max_context=ctx)))
    assert "windowing" not in full.meta
    w = small.meta["windowing"]
    assert w["policy"] == "keep-head-slide" and w["max_context"] == ctx and w["head_kept"]
    assert w["windowed_tokens"] > 0
    for a, b in zip(full.assistant_turns, small.assistant_turns, strict=True):
        np.testing.assert_array_equal(a.token_ids, b.token_ids)  # nothing dropped
    # The first turn fits in the context: the same up to float noise of another sequence length;
    # the last one saw less context (different values) and is marked windowed.
    assert "windowed_tokens" not in small.assistant_turns[0].meta
    np.testing.assert_allclose(small.assistant_turns[0].logprob, full.assistant_turns[0].logprob,
                               atol=1e-3)  # fmt: skip
    assert small.assistant_turns[-1].meta["windowed_tokens"] == small.assistant_turns[-1].n_tokens
    assert not np.array_equal(small.assistant_turns[-1].logprob, full.assistant_turns[-1].logprob)
    assert sum(t.meta.get("windowed_tokens", 0) for t in small.turns) == w["windowed_tokens"]


def test_batching_does_not_change_results(tok, world):
    model = tiny_lm(tok, arch="qwen3", seed=2, layers=1, head_dim=8)
    convs = []
    for i in range(5):
        msgs = [{"role": "user", "content": "q " * (3 + 7 * i)},
                {"role": "assistant", "content": "a " * (2 + 3 * i)}]  # fmt: skip
        convs.append(Conversation(id=str(i), messages=validate_messages(msgs)))
    one = [next(score_conversations(model, tok, [c], config=ScoreConfig(max_batch_tokens=1)))
           for c in convs]  # fmt: skip
    many = list(score_conversations(model, tok, convs, config=ScoreConfig(max_batch_tokens=4096)))
    for a, b in zip(one, many, strict=True):
        np.testing.assert_allclose(a.turns[0].entropy, b.turns[0].entropy, atol=1e-5)
        np.testing.assert_allclose(a.turns[0].logprob, b.turns[0].logprob, atol=1e-5)
    json.dumps([m.meta for m in many])


def test_templates_without_a_generation_mask_use_prefix_rendering(tok, world):
    """Real Qwen templates have no {% generation %} block: spans come from prefix renderings."""
    model = _scripted(tok, "qwen3")
    episodes = _runner_episodes(tok, world, model)
    convs = [Conversation(id=ep.episode_id, messages=validate_messages(_messages(ep, tok, world)),
                          tools=world.tool_schemas()) for ep in episodes]  # fmt: skip
    plain = tool_tokenizer()
    plain.chat_template = tok.chat_template.replace("{%- generation %}", "").replace(
        "{%- endgeneration %}", ""
    )
    assert "generation %}" not in plain.chat_template
    masked = list(score_conversations(model, tok, convs))
    prefixed = list(score_conversations(model, plain, convs))
    for a, b in zip(masked, prefixed, strict=True):
        for x, y in zip(a.assistant_turns, b.assistant_turns, strict=True):
            np.testing.assert_array_equal(x.token_ids, y.token_ids)
            np.testing.assert_array_equal(x.phase, y.phase)
            np.testing.assert_allclose(x.entropy, y.entropy, atol=1e-6)


@pytest.mark.slow
def test_embedded_agent_parity(world):
    """The embedded agent (bootstrapped on first use): runner at T = 1 vs ``score``, both paths."""
    from agentropy.agent.config import RunnerConfig
    from agentropy.agent.tiny import load_agent

    model, tk = load_agent(progress=False)
    tasks = [t for lv in (1, 2, 3) for t in world.tasks(split="test", level=lv, n=4, seed=1)]
    cfg = RunnerConfig(max_turns=6, max_new_tokens=96, batch_size=6, record_inputs=True)
    episodes = rollout(model, tk, world, tasks, schedule=ConstantTemperature(1.0), config=cfg,
                       seed=5)  # fmt: skip
    rescored = list(rescore_episodes(model, tk, episodes))
    worst, n = 0.0, 0
    for ep, sc in zip(episodes, rescored, strict=True):
        for a, b in zip(ep.assistant_turns, sc.assistant_turns, strict=True):
            np.testing.assert_array_equal(a.token_ids, b.token_ids)
            np.testing.assert_array_equal(a.phase, b.phase)
            worst = max(worst, float(np.abs(a.entropy - b.entropy).max()),
                        float(np.abs(a.logprob - b.logprob).max()))  # fmt: skip
            n += a.n_tokens
    assert worst < 1e-4 and n > 200, (worst, n)
    assert [t.status for ep in episodes for t in ep.tool_turns] == [
        t.status for ep in rescored for t in ep.tool_turns
    ]
    # As chat messages (re-rendered, re-tokenised): as long as the re-tokenisation gives back the
    # sampled tokens (so the whole context is the same), values, phases and statuses are the
    # runner's.
    convs = [Conversation(id=ep.episode_id, messages=validate_messages(_messages(ep, tk, world)),
                          tools=world.tool_schemas()) for ep in episodes]  # fmt: skip
    same = 0
    for ep, sc in zip(episodes, score_conversations(model, tk, convs), strict=True):
        runner = list(ep.turns)
        while runner and runner[-1].role == "tool":
            runner.pop()
        for a, b in zip(runner, sc.turns, strict=True):
            if a.role == "tool":
                assert a.status == b.status
                continue
            m = a.n_tokens
            if b.token_ids[:m].tolist() != a.token_ids.tolist():
                break  # from here on the re-tokenised history differs: another context
            np.testing.assert_allclose(b.entropy[:m], a.entropy, atol=1e-4, rtol=0)
            np.testing.assert_allclose(b.logprob[:m], a.logprob, atol=1e-4, rtol=0)
            np.testing.assert_array_equal(b.phase[:m], a.phase)
            same += 1
    assert same >= 0.5 * sum(len(ep.assistant_turns) for ep in episodes), same
