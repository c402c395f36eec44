"""The runner's in-place KV cache (:mod:`agentropy.agent.kvcache`) holds what transformers'
``DynamicCache`` holds, and rollouts through it sample the same episodes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.cache_utils import DynamicLayer

from agentropy.agent.kvcache import GrowingLayer, growing_cache
from agentropy.agent.runner import RunnerConfig, rollout
from agentropy.control.base import ConstantTemperature
from agentropy.env.toolworld import ToolWorld, ToolWorldConfig
from conftest import tiny_lm, tool_tokenizer

# One step of the layer API: ("update", block width), ("select", kept rows), ("crop", -n).
# crop(0) is a no-op in transformers 5.24 and crops to length 0 in 5.0 (the lowest we support).
_op = st.one_of(
    st.tuples(st.just("update"), st.integers(1, 300)),
    st.tuples(st.just("select"), st.lists(st.integers(0, 3), min_size=1, max_size=4)),
    st.tuples(st.just("crop"), st.integers(-5, -1)),
)


@settings(max_examples=40, deadline=None)
@given(ops=st.lists(_op, min_size=1, max_size=12), seed=st.integers(0, 2**16))
def test_growing_layer_holds_what_a_dynamic_layer_holds(ops: list[Any], seed: int) -> None:
    """Any sequence of appends (across capacity doublings), row selections and crops leaves
    the same keys and values, and returns the same tensors from ``update``."""
    g = torch.Generator().manual_seed(seed)
    ours, ref = GrowingLayer(), DynamicLayer()
    batch = 4
    for kind, arg in ops:
        if kind == "update":
            k = torch.randn(batch, 2, arg, 3, generator=g)
            v = torch.randn(batch, 2, arg, 3, generator=g)
            got, want = ours.update(k, v), ref.update(k, v)
            for a, b in zip(got, want, strict=True):
                assert torch.equal(a, b)
        elif kind == "select" and ref.get_seq_length() > 0:
            idx = torch.tensor([i % batch for i in arg])
            ours.batch_select_indices(idx)
            ref.batch_select_indices(idx)
            batch = len(idx)
        elif kind == "crop" and ref.get_seq_length() + arg > 0:
            ours.crop(arg)
            ref.crop(arg)
        assert ours.get_seq_length() == ref.get_seq_length()
        if ref.get_seq_length() > 0:
            assert torch.equal(ours.keys, ref.keys) and torch.equal(ours.values, ref.values)


@pytest.fixture(scope="module")
def tok() -> Any:
    return tool_tokenizer()


def test_growing_cache_swaps_only_plain_dynamic_layers(tok: Any) -> None:
    cache = growing_cache(tiny_lm(tok, layers=3).config)
    assert len(cache.layers) == 3 and all(type(x) is GrowingLayer for x in cache.layers)


@pytest.mark.parametrize("arch", ["llama", pytest.param("qwen3", marks=pytest.mark.slow)])
def test_rollouts_through_either_cache_are_the_same(tok: Any, arch: str) -> None:
    """Same episodes (token ids, log-probs, entropies) with the in-place cache as with
    transformers' ``DynamicCache``, tool messages and dropped rows included."""
    world = ToolWorld(ToolWorldConfig())
    tasks = [
        *world.tasks(split="test", level=1, n=2, seed=0),
        *world.tasks(split="test", level=3, n=2, seed=0),
    ]
    model = tiny_lm(tok, arch=arch, seed=1, layers=2, head_dim=8)
    cfg: dict[str, Any] = dict(
        max_turns=3, max_new_tokens=16, max_tokens=40, batch_size=4, record_inputs=True
    )
    sched = ConstantTemperature(1.0)
    runs = [
        rollout(
            model, tok, world, tasks, schedule=sched, config=RunnerConfig(**cfg, kv_cache=k), seed=2
        )
        for k in ("growing", "dynamic")
    ]
    assert [e.meta["input_ids"] for e in runs[0]] == [e.meta["input_ids"] for e in runs[1]]
    assert sum(t.n_tokens for e in runs[0] for t in e.assistant_turns) > 50
    for a, b in zip(*runs, strict=True):
        for ta, tb in zip(a.assistant_turns, b.assistant_turns, strict=True):
            np.testing.assert_allclose(ta.logprob, tb.logprob, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(ta.entropy, tb.entropy, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="kv_cache"):
        RunnerConfig(kv_cache="static")


def test_shared_prompts_are_prefilled_once_and_change_no_episode(tok: Any) -> None:
    """A wave of GRPO groups (each task repeated) prefills each distinct prompt once, then
    samples the same episodes as feeding every row's prompt (fp64, so the prefill's batch shape
    cannot flip a draw); a wave of distinct prompts feeds as before."""
    world = ToolWorld(ToolWorldConfig())
    tasks = world.tasks(split="test", level=2, n=2, seed=0)
    model = tiny_lm(tok, seed=3, layers=2, head_dim=8).to(torch.float64)
    batches: list[int] = []
    model.register_forward_pre_hook(
        lambda m, a, kw: batches.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    cfg: dict[str, Any] = dict(
        max_turns=3, max_new_tokens=16, max_tokens=40, batch_size=6, record_inputs=True
    )
    group = [t for t in tasks for _ in range(3)]
    sched = ConstantTemperature(1.0)
    runs = []
    for share in (True, False):
        batches.clear()
        runs.append(
            rollout(
                model,
                tok,
                world,
                group,
                schedule=sched,
                config=RunnerConfig(**cfg, share_prompts=share),
                seed=4,
            )
        )
        assert batches[0] == (2 if share else 6)
    assert [e.meta["input_ids"] for e in runs[0]] == [e.meta["input_ids"] for e in runs[1]]
    for a, b in zip(*runs, strict=True):
        for ta, tb in zip(a.assistant_turns, b.assistant_turns, strict=True):
            np.testing.assert_allclose(ta.logprob, tb.logprob, rtol=1e-9, atol=1e-12)
    batches.clear()
    rollout(model, tok, world, tasks, schedule=sched, config=RunnerConfig(**cfg), seed=4)
    assert batches[0] == 2  # distinct prompts: one block of both, as before
