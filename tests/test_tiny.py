"""Tests for the embedded tiny agent: tokenizer, chat template, model, training, cache."""

from __future__ import annotations

import itertools
import json
import random
import re

import pytest
import torch

from agentropy.agent import tiny
from agentropy.env.expert import expert_messages
from agentropy.env.format import parse_assistant
from agentropy.env.toolworld import ToolWorld, ToolWorldConfig


@pytest.fixture(scope="module")
def world() -> ToolWorld:
    return ToolWorld(ToolWorldConfig(seed=0))


@pytest.fixture(scope="module")
def tok():
    return tiny.build_tokenizer()


def _conversation(world: ToolWorld, *, level: int, split: str = "test", index: int = 0):
    task = world.tasks(split=split, level=level, n=index + 1, seed=3)[index]
    return expert_messages(world, task, random.Random(7))


def _faulty_conversation(world: ToolWorld):
    """An expert transcript containing at least one tool message and two assistant turns."""
    for index in range(40):
        messages = _conversation(world, level=3, index=index)
        if sum(m["role"] == "assistant" for m in messages) >= 3:
            return messages
    raise AssertionError("no multi-turn L3 transcript found")


# ------------------------------------------------------------------------------ tokenizer


def test_digits_are_single_tokens(tok) -> None:
    for text in ("0123456789", "value 42000 kg", " 7", "x=31415;"):
        pieces = tok.convert_ids_to_tokens(tok(text)["input_ids"])
        digit_pieces = [p for p in pieces if any(c.isdigit() for c in p)]
        assert digit_pieces, text
        assert all(len(p) == 1 for p in digit_pieces), (text, pieces)
        assert tok.decode(tok(text)["input_ids"]) == text


@pytest.mark.parametrize(
    "marker", [*tiny.MARKER_TOKENS, tiny.ROLE_START, tiny.ROLE_END, tiny.PAD_TOKEN]
)
def test_markers_are_single_tokens(tok, marker: str) -> None:
    ids = tok(f"a{marker}b")["input_ids"]
    assert tok.convert_tokens_to_ids(marker) in ids
    assert len(tok(marker)["input_ids"]) == 1


def test_span_markers_survive_skip_special_tokens(tok) -> None:
    text = '<tool_call>{"name":"lookup"}</tool_call><answer>4</answer><|im_end|>'
    decoded = tok.decode(tok(text)["input_ids"], skip_special_tokens=True)
    assert decoded == '<tool_call>{"name":"lookup"}</tool_call><answer>4</answer>'
    assert tok.eos_token == tiny.ROLE_END
    assert tok.pad_token == tiny.PAD_TOKEN


def test_test_split_entities_split_into_known_pieces(tok, world: ToolWorld) -> None:
    train = set(world.entities["train"])
    names = world.entities["test"]
    assert names and not train & set(names)
    vocab = tok.get_vocab()
    for name in names:
        for text in (name, f" {name}", f'"{name}"'):
            ids = tok(text)["input_ids"]
            assert tok.decode(ids) == text
            assert all(0 <= i < len(tok) for i in ids)
        # Syllable merges, not raw characters: at most one piece per syllable plus the capital.
        pieces = tok.tokenize(name)
        assert all(p in vocab for p in pieces)
        assert len(pieces) <= 3, (name, pieces)


def test_tokenizer_is_deterministic(tok) -> None:
    again = tiny.build_tokenizer()
    assert again.get_vocab() == tok.get_vocab()
    assert again is not tok


# ------------------------------------------------------------------------------ chat template


def test_chat_template_renders_tools_and_tool_messages(tok, world: ToolWorld) -> None:
    messages = _faulty_conversation(world)
    text = tok.apply_chat_template(messages, tools=world.tool_schemas(), tokenize=False)
    for schema in world.tool_schemas():
        assert schema["function"]["name"] + "(" in text
    assert text.startswith("<|im_start|>system\n" + messages[0]["content"])
    for message in messages:
        if message["role"] == "tool":
            assert f"<tool_response>\n{message['content']}\n</tool_response>" in text
        else:
            assert message["content"] in text
    assert text.count("<|im_start|>assistant\n") == sum(m["role"] == "assistant" for m in messages)
    prompt = tok.apply_chat_template(
        messages[:2], tools=world.tool_schemas(), tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    no_tools = tok.apply_chat_template(messages[:2], tokenize=False)
    assert "<tools>" not in no_tools and no_tools.startswith("<|im_start|>system\n")


def test_chat_template_accepts_structured_tool_calls(tok) -> None:
    messages = [
        {"role": "user", "content": "age of Kalo?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "function": {
                        "name": "lookup",
                        "arguments": {"entity": "Kalo", "attribute": "age"},
                    }
                }
            ],
        },
    ]
    text = tok.apply_chat_template(messages, tokenize=False)
    turn = text.split("<|im_start|>assistant\n")[1].removesuffix("<|im_end|>\n")
    parsed = parse_assistant(turn)
    assert parsed.kind == "tool_call" and parsed.error is None
    assert parsed.call is not None and parsed.call.arguments == {
        "entity": "Kalo",
        "attribute": "age",
    }


def test_assistant_labels_mask_everything_but_assistant_tokens(tok, world: ToolWorld) -> None:
    messages = _faulty_conversation(world)
    ids, labels = tiny.assistant_labels(tok, messages, tools=world.tool_schemas())
    assert len(ids) == len(labels)
    kept = [i for i, label in zip(ids, labels, strict=True) if label != -100]
    assert all(label in (-100, i) for i, label in zip(ids, labels, strict=True))
    expected = "".join(m["content"] + tiny.ROLE_END for m in messages if m["role"] == "assistant")
    assert tok.decode(kept) == expected
    # Every tool result, the system prompt and the user question are masked.
    masked = tok.decode([i for i, label in zip(ids, labels, strict=True) if label == -100])
    assert messages[0]["content"] in masked and messages[1]["content"] in masked
    assert "<tool_response>" in masked and "<tool_response>" not in tok.decode(kept)
    short_ids, short_labels = tiny.assistant_labels(
        tok, messages, tools=world.tool_schemas(), max_length=50
    )
    assert short_ids == ids[:50] and short_labels == labels[:50]


# ------------------------------------------------------------------------------ model, recipe


def test_default_model_size_is_small(tok) -> None:
    model = tiny.build_model(tiny.TinyRecipe(), tok)
    n_params = sum(p.numel() for p in model.parameters())
    assert 200_000 <= n_params <= 5_000_000
    assert model.config.vocab_size == len(tok)
    assert model.config.eos_token_id == tok.eos_token_id


def test_recipe_hash_and_validation(tmp_path) -> None:
    base = tiny.TinyRecipe()
    assert base.recipe_hash == tiny.TinyRecipe().recipe_hash
    assert base.recipe_hash != tiny.TinyRecipe(steps=base.steps + 1).recipe_hash
    assert tiny.agent_path(base, home=tmp_path) == tmp_path / "agents" / f"tiny-{base.recipe_hash}"
    assert tiny.default_agent_path(home=tmp_path) == tiny.agent_path(base, home=tmp_path)
    with pytest.raises(ValueError, match="hidden_size"):
        tiny.TinyRecipe(hidden_size=100, n_heads=3)
    with pytest.raises(ValueError, match="warmup_steps"):
        tiny.TinyRecipe(steps=10, warmup_steps=10)
    with pytest.raises(ValueError, match="lr"):
        tiny.TinyRecipe(lr=0.0)
    with pytest.raises(ValueError, match="drill_mix"):
        tiny.TinyRecipe(drill_mix=-1)
    with pytest.raises(ValueError, match="drill_batch_size"):
        tiny.TinyRecipe(drill_steps=10, drill_batch_size=0)
    assert base.recipe_hash != tiny.TinyRecipe(drill_steps=base.drill_steps + 1).recipe_hash


def test_agentropy_home_env(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("AGENTROPY_HOME", str(tmp_path / "h"))
    assert tiny.default_agent_path().parent == tmp_path / "h" / "agents"


def test_save_load_round_trip(tok, world: ToolWorld, tmp_path) -> None:
    from transformers import AutoTokenizer

    recipe = tiny.TinyRecipe.quick()
    model = tiny.build_model(recipe, tok)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded_model, loaded_tok = tiny.load_agent(tmp_path)
    auto_tok = AutoTokenizer.from_pretrained(tmp_path)
    messages = _faulty_conversation(world)
    tools = world.tool_schemas()
    expected = tiny.assistant_labels(tok, messages, tools=tools)
    for other in (loaded_tok, auto_tok):
        assert tiny.assistant_labels(other, messages, tools=tools) == expected
        assert other.get_vocab() == tok.get_vocab()
        assert other.chat_template == tok.chat_template
        assert (other.eos_token, other.pad_token) == (tok.eos_token, tok.pad_token)
    ids = torch.tensor([expected[0][:40]])
    with torch.no_grad():
        assert torch.equal(model.eval()(ids).logits, loaded_model(ids).logits)


def test_shared_prefix_forward_matches_full_forward(tok, world: ToolWorld) -> None:
    torch.manual_seed(0)
    model = tiny.build_model(tiny.TinyRecipe.quick(), tok).train()
    tools = world.tool_schemas()
    examples = [
        tiny.assistant_labels(tok, _conversation(world, level=lvl, index=i), tools=tools)
        for lvl, i in ((0, 0), (1, 1), (3, 0))
    ]
    prefix_len = tiny.shared_prefix_length(examples)
    assert prefix_len > 50  # the system turn and tool list are shared
    for ids, labels in examples:
        assert ids[:prefix_len] == examples[0][0][:prefix_len]
        assert all(label == -100 for label in labels[: prefix_len + 1])
    shared_logits, shared_target = tiny.sft._assistant_logits(
        model, examples, prefix_len, tok.pad_token_id
    )
    full_logits, full_target = tiny.sft._assistant_logits(model, examples, 0, tok.pad_token_id)
    assert torch.equal(shared_target, full_target)
    assert torch.allclose(shared_logits, full_logits, atol=1e-4)
    loss = torch.nn.functional.cross_entropy(shared_logits, shared_target)
    (grad_shared,) = torch.autograd.grad(loss, model.model.embed_tokens.weight)
    loss = torch.nn.functional.cross_entropy(full_logits, full_target)
    (grad_full,) = torch.autograd.grad(loss, model.model.embed_tokens.weight)
    assert torch.allclose(grad_shared, grad_full, atol=1e-6)


def test_rename_entities_is_consistent_and_fresh(world: ToolWorld) -> None:
    import re

    conversations = tiny.corpus._expert_conversations(
        world, split="train", levels=(3,), n=12, seed=0
    )
    renamed = tiny.corpus._rename_entities(world, conversations, prob=1.0, seed=0)
    assert tiny.corpus._rename_entities(world, conversations, prob=0.0, seed=0) == conversations
    for (_, before), (_, after) in zip(conversations, renamed, strict=True):
        assert [m["role"] for m in before] == [m["role"] for m in after]
        text = "\n".join(m["content"] for m in after)
        assert not any(re.search(rf"\b{n}\b", text) for n in world.kb)
        # The question's differing words give the mapping; undoing it restores every message.
        old_words = before[1]["content"].rstrip("?").split()
        new_words = after[1]["content"].rstrip("?").split()
        back = {n: o for o, n in zip(old_words, new_words, strict=True) if o != n}
        assert len(back) == 2 and set(back.values()) <= set(world.entities["train"])
        for b, a in zip(before, after, strict=True):
            restored = re.sub(
                r"\b[A-Z][a-z]{3}\b", lambda m, back=back: back.get(m[0], m[0]), a["content"]
            )
            assert restored == b["content"]


def test_evaluate_counts_only_assistant_tokens(tok, world: ToolWorld) -> None:
    torch.manual_seed(0)
    model = tiny.build_model(tiny.TinyRecipe.quick(), tok)
    examples = [
        tiny.assistant_labels(tok, _conversation(world, level=lvl), tools=world.tool_schemas())
        for lvl in (0, 1)
    ]
    metrics = tiny.evaluate(model, examples, pad_id=tok.pad_token_id, batch_size=1)
    # Labels are unshifted; the first token is never an assistant token, so every label counts.
    n_assistant = sum(sum(label != -100 for label in labels) for _, labels in examples)
    assert metrics["tokens"] == n_assistant
    batched = tiny.evaluate(model, examples, pad_id=tok.pad_token_id, batch_size=2)
    assert batched["tokens"] == n_assistant
    assert batched["loss"] == pytest.approx(metrics["loss"], rel=1e-4)
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_bootstrap_cli_with_fake_training(monkeypatch, tmp_path) -> None:
    """The command wiring and report, without training (a stub writes the record)."""
    from typer.testing import CliRunner

    from agentropy.cli import app

    calls = []

    def fake_train(recipe, out_dir, *, progress):
        calls.append((recipe, progress))
        (out_dir / "config.json").write_text("{}")
        info = {
            "n_params": 1234567,
            "vocab_size": 700,
            "n_train_transcripts": 10,
            "train_seconds": 1.5,
            "initial_loss": 6.5,
            "final_loss": 0.25,
            "heldout": {"accuracy": 0.9, "loss": 0.3, "entropy": 0.2, "tokens": 100.0},
            "sample": {"question": "What is 1 + 2?", "generated": "<answer>3</answer>"},
        }
        (out_dir / "agentropy_tiny.json").write_text(json.dumps(info))
        return info

    monkeypatch.setattr(tiny.store, "_train", fake_train)
    runner = CliRunner()
    env = {"AGENTROPY_HOME": str(tmp_path)}
    result = runner.invoke(app, ["bootstrap", "--quick", "--no-progress"], env=env)
    assert result.exit_code == 0, result.output
    path = tiny.agent_path(tiny.TinyRecipe.quick(), home=tmp_path)
    assert f"agent: {path}" in result.output
    assert "1,234,567" in result.output and "6.500 -> 0.250" in result.output
    assert "accuracy 0.900" in result.output and "<answer>3</answer>" in result.output
    assert calls == [(tiny.TinyRecipe.quick(), False)]
    # Cached: no second training; --force retrains.
    assert runner.invoke(app, ["bootstrap", "--quick"], env=env).exit_code == 0
    assert len(calls) == 1
    assert runner.invoke(app, ["bootstrap", "--quick", "--force"], env=env).exit_code == 0
    assert len(calls) == 2 and path.is_dir()
    assert [p.name for p in tmp_path.joinpath("agents").iterdir()] == [path.name]
    bad = runner.invoke(app, ["bootstrap", "--threads", "0"], env=env)
    assert bad.exit_code == 2


# ------------------------------------------------------------------------------ copy drills


def test_copy_drills_are_answerable_by_copying(tok) -> None:
    """Every name and number the assistant writes in a drill is in the turn before it."""
    kinds = set()
    for seed in range(200):
        messages = tiny.copy_drill(random.Random(seed))
        assert messages == tiny.copy_drill(random.Random(seed))  # deterministic
        prompt, reply = messages[0]["content"], messages[-1]["content"]
        assert [m["role"] for m in messages][-1] == "assistant"
        words = re.findall(r"[A-Z][a-z]+|\d+", reply)
        assert words, reply
        copied = [w for w in words if w not in ("I",)]
        assert all(w in prompt for w in copied), (prompt, reply)
        kinds.add("answer" if "<answer>" in reply else "call" if "<tool_call>" in reply else "echo")
        ids, labels = tiny.assistant_labels(tok, messages)
        n_labels = sum(label != -100 for label in labels)
        assert n_labels >= 3
        trained = [i for i, label in zip(ids, labels, strict=True) if label != -100]
        assert tok.decode(trained).startswith(reply)
    assert kinds == {"answer", "call", "echo"}


def test_arith_drills_are_correct_and_follow_toolworld(tok) -> None:
    """L0 facts are right and never negative; calc expressions take the operator the question
    names and the values in the question's order (the reply is what the calc call would hold)."""
    from agentropy.env.toolworld import calc_value

    words = {"plus": "+", "minus": "-", "times": "*"}
    kinds = set()
    for seed in range(300):
        messages = tiny.arith_drill(random.Random(seed), max_operand=9)
        assert messages == tiny.arith_drill(random.Random(seed), max_operand=9)
        prompt, reply = messages[0]["content"], messages[-1]["content"]
        if "=" in reply:
            kinds.add("facts")
            facts = re.findall(r"(\d+) ([+-]) (\d+) = (-?\d+)\.", reply)
            assert len(facts) == prompt.count("?") >= 1
            for a, op, b, value in facts:
                assert f"What is {a} {op} {b}?" in prompt
                assert 0 <= int(a) <= 9 and 0 <= int(b) <= 9
                assert int(value) == calc_value(f"{a} {op} {b}") >= 0
        else:
            kinds.add("expression")
            question, *lines = prompt.split("\n")
            values = dict(re.findall(r"The \w+ of (\w+) is (\d+)\.", "\n".join(lines)))
            m = re.fullmatch(r"What is the \w+ of (\w+) (plus|minus|times) (.+)\?", question)
            assert m, question
            first, word, rest = m.groups()
            second = re.fullmatch(r"the \w+ of (\w+)", rest)
            right = values[second.group(1)] if second else rest
            assert reply == f"{values[first]} {words[word]} {right}"
            assert calc_value(reply) >= 0
        ids, labels = tiny.assistant_labels(tok, messages)
        trained = [i for i, label in zip(ids, labels, strict=True) if label != -100]
        assert tok.decode(trained).startswith(reply)
    assert kinds == {"facts", "expression"}


def test_decision_drills_are_minimal_pairs_whose_last_turn_is_the_right_move(tok) -> None:
    """Each group asks four questions about one lookup that differ only in their tail; the
    trained turn (the last) is the move the tail asks for: answer, convert, calc or a second
    lookup, and it is the only labelled turn."""
    from agentropy.agent.tiny.corpus import _world

    world = _world(0)
    tools = world.tool_schemas()
    for seed in range(4):
        chats = tiny.decision_drills(world, random.Random(seed), n_groups=3, rename_prob=0.8)
        assert chats == tiny.decision_drills(
            world, random.Random(seed), n_groups=3, rename_prob=0.8
        )
        assert len(chats) == 12
        for group in (chats[i : i + 4] for i in range(0, len(chats), 4)):
            questions = [chat[1]["content"] for chat in group]
            tails = [re.fullmatch(r"What is the \w+ of \w+(.*)\?", q).group(1) for q in questions]
            assert tails[0] == ""
            assert re.fullmatch(r" in \w+", tails[1])
            assert re.fullmatch(r" (plus|times) \d+", tails[2])
            assert re.fullmatch(r" (plus|minus) the \w+ of \w+", tails[3])
            moves = []
            for chat in group:
                roles = [m["role"] for m in chat]
                assert roles == ["system", "user", "assistant", "tool", "assistant"]
                assert '"value"' in chat[3]["content"]  # fault-free: the lookup answered
                last = chat[-1]["content"]
                moves.append(
                    "answer" if "<answer>" in last else last.split('"name":"')[1].split('"')[0]
                )
            assert moves == ["answer", "convert", "calc", "lookup"]
            for chat in group:
                ids, labels = tiny.sft._last_turn_only(
                    tiny.assistant_labels(tok, chat, tools=tools)
                )
                trained = tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab != -100])
                assert trained.startswith(chat[-1]["content"])
                assert chat[2]["content"] not in trained


def test_recipe_hash_ignores_polish_fields_without_a_polish() -> None:
    """A recipe without a polish stage keeps the hash it had before the polish fields existed
    (the shipped agent's main stage); with one, every polish field changes the hash."""
    import dataclasses

    plain = dataclasses.replace(tiny.TinyRecipe(), polish_steps=0)
    assert dataclasses.replace(plain, polish_lr=5e-4, decision_groups=2).recipe_hash == (
        plain.recipe_hash
    )
    full = tiny.TinyRecipe()
    assert full.polish_steps > 0 and full.recipe_hash != plain.recipe_hash
    for change in ({"polish_lr": 5e-4}, {"decision_groups": 2}, {"polish_steps": 100}):
        assert dataclasses.replace(full, **change).recipe_hash != full.recipe_hash


def test_polish_lr_warms_up_then_decays() -> None:
    recipe = tiny.TinyRecipe(polish_steps=40, polish_warmup_steps=5)
    factors = [tiny.sft._polish_lr_factor(s, recipe) for s in range(recipe.polish_steps)]
    assert factors[0] == pytest.approx(0.2) and factors[4] == pytest.approx(1.0)
    assert factors[5] == pytest.approx(1.0) and factors[-1] == pytest.approx(recipe.min_lr_ratio)
    assert all(a >= b for a, b in itertools.pairwise(factors[4:]))
    with pytest.raises(ValueError, match="polish_warmup_steps"):
        tiny.TinyRecipe(polish_steps=5, polish_warmup_steps=5)


def test_lr_schedule_warms_up_holds_through_drills_and_decays_over_transcripts() -> None:
    recipe = tiny.TinyRecipe(steps=50, drill_steps=30, drill_batch_size=4, warmup_steps=10)
    assert recipe.total_steps == 80 + recipe.polish_steps
    drills = [tiny.sft._lr_factor(s, recipe) for s in range(20)]  # the warm-up stopped at 20
    assert drills[0] == pytest.approx(0.1) and drills[9:] == [1.0] * 11
    decay = [tiny.sft._lr_factor(20 + t, recipe, transcript_step=t) for t in range(recipe.steps)]
    assert decay[0] == pytest.approx(1.0)
    assert decay[-1] == pytest.approx(recipe.min_lr_ratio)
    assert all(a >= b for a, b in itertools.pairwise(decay))
    with pytest.raises(ValueError, match="drill_target_loss"):
        tiny.TinyRecipe(drill_target_loss=-1.0)


# ------------------------------------------------------------------------------ slow tier


def _small_recipe() -> tiny.TinyRecipe:
    return tiny.TinyRecipe.quick()


@pytest.fixture(scope="module")
def bootstrapped(quick_agent):
    """The session's quick agent (conftest), bootstrapped with one torch thread."""
    assert quick_agent.threads[1] == quick_agent.threads[0]  # restored
    return quick_agent.home, quick_agent.path


@pytest.mark.slow
def test_bootstrap_trains_saves_and_reuses(bootstrapped, monkeypatch) -> None:
    home, path = bootstrapped
    assert path == tiny.agent_path(_small_recipe(), home=home)
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    info = tiny.read_agent_info(path)
    assert info["recipe_hash"] == _small_recipe().recipe_hash
    losses = info["losses"]
    run = info["drill_steps_run"]
    assert 1 <= run <= _small_recipe().drill_steps
    assert len(losses) == run + _small_recipe().steps
    drills = info["drill_losses"]
    assert len(drills) == len(losses)  # warm-up steps, then one per mixed step
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first
    assert info["heldout"]["tokens"] > 0

    def no_training(*args, **kwargs):
        raise AssertionError("bootstrap retrained a cached agent")

    monkeypatch.setattr(tiny.store, "_train", no_training)
    assert tiny.bootstrap(_small_recipe(), home=home, progress=False) == path
    model, tokenizer = tiny.load_agent(path)
    assert not model.training
    assert tokenizer.chat_template == tiny.CHAT_TEMPLATE


@pytest.mark.slow
def test_bootstrap_cli(bootstrapped) -> None:
    from typer.testing import CliRunner

    from agentropy.cli import app

    home, path = bootstrapped
    result = CliRunner().invoke(
        app,
        ["bootstrap", "--quick", "--no-progress", "--threads", "1"],
        env={"AGENTROPY_HOME": str(home)},
    )
    assert result.exit_code == 0, result.output
    assert f"agent: {path}" in result.output
    info = tiny.read_agent_info(path)
    assert f"{info['n_params']:,}" in result.output
    assert "held-out assistant tokens: accuracy" in result.output
    json.dumps(info)  # the record is plain JSON


def _copy_recipe() -> tiny.TinyRecipe:
    """A reduced recipe that already copies: L1 transcripts only, a 2-layer 8-head shape
    (narrower MLP) and a full-length copy-drill warm-up."""
    return tiny.TinyRecipe(
        levels=(1,),
        n_tasks_per_level=48,
        n_eval_tasks_per_level=4,
        tokenizer_tasks_per_level=32,
        hidden_size=128,
        n_layers=2,
        n_heads=8,
        intermediate_size=256,
        steps=200,
        batch_size=8,
        warmup_steps=20,
        drill_steps=600,
        drill_batch_size=32,
        drill_mix=8,
    )


@pytest.mark.slow
def test_drill_warmup_makes_the_agent_copy(world: ToolWorld, tmp_path) -> None:
    """Greedy L1 episodes copy the question's entity into the call and the tool's value into the
    answer. Without the drills (the earlier recipe) neither happened in 0 of 24 episodes."""
    from agentropy.agent.runner import RunnerConfig, rollout
    from agentropy.control.base import ConstantTemperature

    path = tiny.bootstrap(_copy_recipe(), home=tmp_path, progress=False, num_threads=1)
    model, tok = tiny.load_agent(path)
    tasks = world.tasks(split="train", level=1, n=16, seed=5)
    episodes = rollout(
        model,
        tok,
        world,
        tasks,
        schedule=ConstantTemperature(0.0),
        config=RunnerConfig(batch_size=16),
    )
    entity_copies = value_copies = 0
    for task, episode in zip(tasks, episodes, strict=True):
        tools = [t for t in episode.turns if t.role == "tool"]
        if not tools or tools[0].call is None:
            continue
        entity = task.meta["lookups"][0][0]
        entity_copies += tools[0].call.arguments.get("entity") == entity
        after = [t for t in episode.turns[episode.turns.index(tools[0]) + 1 :]]
        answer = re.search(r"<answer>(.*?)</answer>", after[0].text or "") if after else None
        if answer and tools[0].status == "ok":
            value_copies += answer.group(1) == str(json.loads(tools[0].content)["value"])
    # Measured 5 entity and 0 value copies of 16 (1 thread, seed 0, 200 transcript steps); with
    # the earlier one-token paraphrases 100 steps gave 4 and 7, with the word-level grammar
    # (TOOLWORLD_VERSION 3) they give 2 and 0: the varied plan text takes longer to get through.
    # The drill-free recipe: 0 and 0. The floor is for "copies at all", not for a copy rate.
    assert entity_copies + value_copies >= 4, (entity_copies, value_copies)
