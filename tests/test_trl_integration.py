"""TRL adapter (agentropy.integrations.trl): pure pieces fast, TRL training runs marked slow.

The slow tests train a tiny in-process Llama with TRL's own ``tools=`` multi-turn loop on CPU. To
make the policy call tools at all, the model is first fitted (a few seconds) to one transcript:
call ``lookup`` (which always raises, so TRL reports a failed tool), say something, call
``backup_lookup``, answer.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agentropy import integrations as adapter
from agentropy.control.phases import decode_token_texts, label_tokens
from agentropy.trace import PHASE_CODE, Episode, ToolCall, Turn
from conftest import tiny_lm

PLAN, ACT, RECOVER, ANSWER = (PHASE_CODE[p] for p in ("plan", "act", "recover", "answer"))

# TRL 1.16 calls `model.is_gradient_checkpointing` on every generation, which transformers 5.24
# deprecates with a FutureWarning; nothing we can change from outside TRL.
TRL_GC_WARNING = "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"


def lookup(key: str) -> str:
    """Look up a value.

    Args:
        key: the key to look up.
    """
    raise RuntimeError("upstream failure")


def backup_lookup(key: str) -> str:
    """Look up a value in the backup store.

    Args:
        key: the key to look up.
    """
    return "7"


TOOLS = [lookup, backup_lookup]
PROMPT = [{"role": "user", "content": "What is a?"}]
ERROR = "{'error': 'upstream failure'}"  # how TRL 1.16 reports a tool that raised


def _call(name: str, content: str = "") -> dict:
    fn = {"name": name, "arguments": {"key": "a"}}
    return {
        "role": "assistant",
        "content": content,
        "tool_calls": [{"type": "function", "function": fn}],
    }


CONVERSATION = [
    *PROMPT,
    _call("lookup"),
    {"role": "tool", "name": "lookup", "content": ERROR},
    _call("backup_lookup", "Try the backup."),
    {"role": "tool", "name": "backup_lookup", "content": "7"},
    {"role": "assistant", "content": "<answer>7</answer>"},
]


@pytest.fixture(scope="module")
def tokenizer():
    from agentropy.agent.tiny import build_tokenizer

    return adapter.prepare_tokenizer(build_tokenizer())


# --------------------------------------------------------------------------------------------
# Fast: no TRL needed
# --------------------------------------------------------------------------------------------


def test_missing_trl_raises_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "trl", None)  # makes `import trl` raise ImportError
    monkeypatch.delitem(sys.modules, "agentropy.integrations.trl", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'agentropy\[trl\]'"):
        from agentropy.integrations.trl import RhythmGRPOTrainer  # noqa: F401
    with pytest.raises(ImportError, match=r"pip install 'agentropy\[trl\]'"):
        adapter.BreathCallback  # noqa: B018


@pytest.mark.slow
def test_importing_agentropy_and_adapter_does_not_import_trl():
    code = (
        "import sys, agentropy, agentropy.integrations as a; "
        "a.build_rollout, a.breath_metrics, a.prepare_tokenizer, a.PHASE_KEY, a.MarkerIds; "
        "print(sorted(m for m in ('trl', 'datasets', 'accelerate', 'verl', 'vllm') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_prepare_tokenizer_parses_tool_calls(tokenizer):
    # TRL calls parse_response(text, prefix=...), which transformers has only since 5.13 (the
    # trl extra's floor); the core floor is lower, and without `prefix` nothing uses the template.
    if "prefix" not in inspect.signature(tokenizer.parse_response).parameters:
        pytest.skip("transformers < 5.13: no parse_response(prefix=), so no TRL tool parsing")
    prefix = tokenizer.apply_chat_template(
        PROMPT, tools=TOOLS, add_generation_prompt=True, tokenize=False
    )
    text = 'Hmm.<tool_call>{"name": "lookup", "arguments": {"key": "a"}}</tool_call><|im_end|>'
    parsed = tokenizer.parse_response(text, prefix=prefix)
    assert parsed["tool_calls"] == [
        {"type": "function", "function": {"name": "lookup", "arguments": {"key": "a"}}}
    ]
    assert parsed["content"] == "Hmm."


def _completion(tokenizer):
    """Completion ids and tool_mask exactly as TRL's tool loop splices them, plus the messages."""
    full = tokenizer.apply_chat_template(
        CONVERSATION, tools=TOOLS, tokenize=True, return_dict=False
    )
    prompt = tokenizer.apply_chat_template(
        PROMPT, tools=TOOLS, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    ids = list(full[len(prompt) :])
    # Model tokens: each assistant turn's content up to and including <|im_end|>; the newline,
    # tool block and next assistant header are tool tokens (mask 0), as in TRL.
    eos = tokenizer.eos_token_id
    mask, in_assistant = [], True
    header_end = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    i = 0
    while i < len(ids):
        mask.append(1 if in_assistant else 0)
        if in_assistant and ids[i] == eos:
            in_assistant = False
        elif not in_assistant and ids[i - len(header_end) + 1 : i + 1] == header_end:
            in_assistant = True
        i += 1
    # Drop the trailing "\n" after the final <|im_end|> (TRL stops generating at eos).
    while mask and mask[-1] == 0:
        mask.pop()
        ids.pop()
    return np.array(ids), np.array(mask), CONVERSATION[1:]


def test_build_rollout_phases_offsets_and_tool_turns(tokenizer):
    ids, mask, messages = _completion(tokenizer)
    ro = adapter.build_rollout(ids, mask, messages, tokenizer, episode_id="e", step=3)

    roles = [t.role for t in ro.episode.turns]
    assert roles == ["assistant", "tool", "assistant", "tool", "assistant"]
    tools = ro.episode.tool_turns
    assert [t.status for t in tools] == ["error", "ok"]
    assert [t.call for t in tools] == [
        ToolCall("lookup", {"key": "a"}),
        ToolCall("backup_lookup", {"key": "a"}),
    ]
    assert tools[0].content == ERROR
    assert ro.episode.step == 3

    # Phases: the offline rule applied to each turn's decoded tokens, with failure context.
    texts = [decode_token_texts(tokenizer, t.token_ids) for t in ro.episode.assistant_turns]
    expected = [
        label_tokens(texts[0], failure_pending=False),
        label_tokens(texts[1], failure_pending=True),
        label_tokens(texts[2], failure_pending=False),
    ]
    for turn, exp, (s, e) in zip(ro.episode.assistant_turns, expected, ro.spans, strict=True):
        np.testing.assert_array_equal(turn.phase, exp)
        np.testing.assert_array_equal(ro.phase[s:e], exp)
        np.testing.assert_array_equal(ids[s:e], turn.token_ids)
    assert set(expected[1]) == {RECOVER, ACT, PLAN}  # "Try the backup." then the call, then eos
    assert ANSWER in expected[2]
    assert (mask[np.concatenate([np.arange(s, e) for s, e in ro.spans])] == 1).all()
    assert sum(e - s for s, e in ro.spans) == int(mask.sum())

    # Trigger offsets: count from 0 after the failed lookup, -1 again after the ok result.
    s1, e1 = ro.spans[1]
    np.testing.assert_array_equal(ro.trigger_offset[s1:e1], np.arange(e1 - s1))
    assert (ro.trigger_offset[: ro.spans[0][1]] == -1).all()
    assert (ro.trigger_offset[ro.spans[2][0] :] == -1).all()


def test_build_rollout_without_messages_has_unknown_tool_status(tokenizer):
    ids, mask, _ = _completion(tokenizer)
    ro = adapter.build_rollout(ids, mask, None, tokenizer, episode_id="e")
    assert [t.status for t in ro.episode.tool_turns] == [None, None]
    assert RECOVER not in ro.phase
    assert (ro.trigger_offset == -1).all()


def test_breath_metrics_on_a_known_episode():
    failed = Turn(role="tool", call=ToolCall("lookup", {"k": 1}), status="error", content="x")
    ok = Turn(role="tool", call=ToolCall("alt", {"k": 1}), status="ok", content="7")
    calm = np.full(20, 0.1, np.float32)
    spike = np.concatenate([np.full(16, 1.0), np.full(16, 0.1)]).astype(np.float32)
    ep = Episode(
        episode_id="e",
        turns=[
            Turn(role="assistant", entropy=calm, phase=np.full(20, PLAN)),
            failed,
            Turn(role="assistant", entropy=spike, phase=np.full(32, RECOVER)),
            ok,
            Turn(role="assistant", entropy=calm[:4], phase=np.full(4, ANSWER)),
        ],
    )
    m = adapter.breath_metrics([ep, Episode(episode_id="empty")])
    assert m["breath/episodes"] == 1.0  # episodes without tokens are skipped
    assert m["breath/tokens"] == 56.0
    assert m["breath/entropy_recover"] == pytest.approx(spike.mean())
    assert "breath/entropy_act" not in m and m["breath/tokens_act"] == 0.0
    assert m["breath/tool_failures"] == 1.0 and m["breath/tool_calls"] == 2.0
    # Baseline: median of the 20 calm tokens = 0.1; the next 16 tokens average 1.0: S = 10.
    assert m["breath/spike_ratio_failed"] == pytest.approx(10.0, rel=1e-5)
    assert m["breath/eruptions"] == 1.0
    assert m["breath/eruptions_productive"] == 1.0  # contracted, and the next call succeeded
    assert m["breath/loops"] == 0.0
    assert adapter.breath_metrics([]) == {}


# --------------------------------------------------------------------------------------------
# Slow: real TRL training on CPU
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted_model(tokenizer):
    """A tiny Llama fitted to CONVERSATION, so that TRL's tool loop actually runs."""
    pytest.importorskip("trl")
    import torch
    from transformers import GenerationConfig

    from agentropy.agent.tiny import assistant_labels

    torch.set_num_threads(1)  # the machine is shared; more threads only spin
    model = _model(tokenizer, seed=0)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    ids, labels = assistant_labels(tokenizer, CONVERSATION, tools=TOOLS)
    x, y = torch.tensor([ids]), torch.tensor([labels])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    # 250 steps: with the TOOLWORLD_VERSION 3 tokenizer the loss is 0.17 after 150, 0.006 after
    # 200 and 0.002 after 250 (measured; the fit is a precondition, not what is tested).
    for _ in range(250):
        loss = model(input_ids=x, labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, "the tiny model did not fit the transcript"
    return model.state_dict()


def _trainer(cls, tokenizer, state, tmp_path, **kwargs):
    import torch
    from datasets import Dataset
    from trl import GRPOConfig

    model = _model(tokenizer, seed=None)  # weights come from ``state``
    model.load_state_dict(state)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    config_kw = {
        "output_dir": str(tmp_path),
        "per_device_train_batch_size": 4,
        "num_generations": 4,
        "max_completion_length": 128,
        "max_steps": 2,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "use_cpu": True,
        "bf16": False,
        "activation_checkpointing": False,  # `gradient_checkpointing` is a deprecated alias
        "report_to": "none",
        "save_strategy": "no",
        "disable_tqdm": True,
        "seed": 0,
        **kwargs.pop("config", {}),
    }

    def reward(completions, **_):
        return [1.0 if "7" in str(c[-1].get("content", "")) else 0.0 for c in completions]

    return cls(
        model=model,
        reward_funcs=reward,
        args=GRPOConfig(**config_kw),
        train_dataset=Dataset.from_dict({"prompt": [PROMPT] * 8}),
        processing_class=tokenizer,
        tools=TOOLS,
        **kwargs,
    )


def _model(tokenizer, seed):
    """The tiny Llama the slow tests train (in train mode; ``seed=None``: current RNG state)."""
    return tiny_lm(
        tokenizer,
        seed=seed,
        hidden=64,
        layers=2,
        heads=2,
        max_positions=512,
        train=True,
        tie_word_embeddings=True,
        bos_token_id=None,
    )


@pytest.mark.slow
@pytest.mark.filterwarnings(TRL_GC_WARNING)
def test_rhythm_trainer_trains_with_tools_and_logs_breath(tokenizer, fitted_model, tmp_path):
    import torch

    from agentropy.rl.coefs import RhythmConfig

    # lambda_init > 0: the entropy bonus gives a gradient even if all rewards in a group tie.
    trainer = _trainer(
        adapter.RhythmGRPOTrainer, tokenizer, fitted_model, tmp_path,
        rhythm=RhythmConfig(lambda_init=1e-3),
        config={"save_strategy": "steps", "save_steps": 2},
    )  # fmt: skip
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()

    changed = [
        k for k, v in trainer.model.named_parameters() if not torch.equal(before[k], v.detach())
    ]
    assert changed, "no parameter changed"
    logs = [h for h in trainer.state.log_history if "breath/episodes" in h]
    assert len(logs) == 2  # one per step (logging_steps=1)
    first = logs[0]
    assert first["breath/episodes"] == 4.0
    assert first["breath/tool_failures"] >= 1.0  # lookup always raises
    assert first["breath/tokens_recover"] > 0 and "breath/entropy_recover" in first
    assert first["breath/tokens_act"] > 0 and "breath/spike_ratio_failed" in first
    for key in ("breath/eruptions_divergent", "breath/loops", "loss/pg", "coef/lambda_recover"):
        assert key in first
    # TRL's own tool counter agrees that tools ran and failed.
    assert first["tools/failure_frequency"] > 0
    # One coefficient update per optimizer step, logged and checkpointed.
    assert trainer.rhythm_state.n_updates == 2
    assert logs[-1]["coef/lambda_act"] == pytest.approx(
        trainer.rhythm_state.lambdas[PHASE_CODE["act"]]
    )
    saved = json.loads(Path(tmp_path, "checkpoint-2", "agentropy_rhythm_state.json").read_text())
    assert saved["lambdas"]["act"] == pytest.approx(trainer.rhythm_state.lambdas[PHASE_CODE["act"]])
    assert saved["n_updates"] == 2


@pytest.mark.slow
@pytest.mark.filterwarnings(TRL_GC_WARNING)
def test_breath_trainer_keeps_trl_loss_and_covers_the_same_tokens(
    tokenizer, fitted_model, tmp_path
):
    trainer = _trainer(
        adapter.BreathGRPOTrainer, tokenizer, fitted_model, tmp_path, config={"max_steps": 1}
    )
    trainer.train()
    (log,) = [h for h in trainer.state.log_history if "breath/episodes" in h]
    # TRL's `entropy` metric is the masked mean over completion_mask * tool_mask; breath/entropy
    # averages the assistant turns built from the same tool_mask: equal iff the masks agree.
    assert log["breath/entropy"] == pytest.approx(log["entropy"], rel=1e-4, abs=1e-7)
    assert log["breath/tool_failures"] >= 1.0
    assert "loss/pg" not in log  # TRL's loss, not ours


@pytest.mark.slow
@pytest.mark.filterwarnings(TRL_GC_WARNING)
def test_rhythm_trainer_refuses_options_it_would_ignore(tokenizer, fitted_model, tmp_path):
    with pytest.raises(ValueError, match="beta"):
        _trainer(adapter.RhythmGRPOTrainer, tokenizer, fitted_model, tmp_path, config={"beta": 0.1})


@pytest.mark.slow
def test_breath_callback_on_a_plain_trainer_fails_loudly():
    pytest.importorskip("trl")
    cb = adapter.BreathCallback()
    with pytest.raises(RuntimeError, match="BreathGRPOTrainer"):
        cb.on_log(None, None, None, logs={})
