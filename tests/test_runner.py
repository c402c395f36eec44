"""Runner: batched KV-cached multi-turn rollouts on tiny random models built in-process.

A random model talks gibberish, so a forward hook adds a "script" bias to its logits, keyed on the
last real token of each row (from the block the runner feeds): it makes the model emit tool calls
(one readable, one malformed), free text, answers and end-of-turn tokens with probabilities set by
the bias, while the model's own logits still matter for entropies. Everything the runner does
with cache, padding and positions is exercised for real.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
import torch

from agentropy.agent.runner import RunnerConfig, ToolSuffix, rollout
from agentropy.control.base import ConstantTemperature, StepObservation
from agentropy.env.toolworld import ToolWorld, ToolWorldConfig
from agentropy.trace import PHASE_CODE, Episode
from conftest import CALL_BAD, CALL_OK, tiny_lm, tool_tokenizer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tok() -> Any:
    return tool_tokenizer()


@pytest.fixture(scope="module")
def world() -> ToolWorld:
    return ToolWorld(ToolWorldConfig())


@pytest.fixture(scope="module")
def tasks(world: ToolWorld) -> list[Any]:
    return [
        *world.tasks(split="test", level=1, n=3, seed=0),
        *world.tasks(split="test", level=3, n=3, seed=0),
    ]


def _script(tok: Any, vocab: int) -> torch.Tensor:
    """(V, V) bias: row = last fed token, column = next token."""
    ids = {
        s: tok.convert_tokens_to_ids(s)
        for s in ("<tool_call>", "</tool_call>", "<answer>", "</answer>", "<|im_end|>")
    }
    nl = tok("\n", add_special_tokens=False)["input_ids"][0]
    word = tok(" t", add_special_tokens=False)["input_ids"][0]
    five = tok("5", add_special_tokens=False)["input_ids"][0]
    ok, bad = (tok(s, add_special_tokens=False)["input_ids"][0] for s in (CALL_OK, CALL_BAD))
    bias = torch.zeros(vocab, vocab)
    table = {
        nl: {ids["<tool_call>"]: 16.0, word: 15.0, ids["<answer>"]: 14.0},
        word: {
            ids["<tool_call>"]: 15.0,
            ids["<answer>"]: 15.5,
            word: 14.0,
            ids["<|im_end|>"]: 13.0,
        },
        ids["<tool_call>"]: {ok: 15.0, bad: 15.0},
        ok: {ids["</tool_call>"]: 20.0},
        bad: {ids["</tool_call>"]: 20.0},
        ids["<answer>"]: {five: 20.0},
        five: {ids["</answer>"]: 20.0},
    }
    for prev, nxt in table.items():
        for t, v in nxt.items():
            bias[prev, t] = v
    bias[:, tok.pad_token_id] = -30.0  # padding must never be sampled: it would show a leak
    return bias


class Spy:
    """Forward hooks: add the script bias and record what the runner feeds."""

    def __init__(self, model: torch.nn.Module, bias: torch.Tensor) -> None:
        self.bias = bias.to(next(model.parameters()).dtype)
        self.fed: list[tuple[torch.Tensor, torch.Tensor]] = []
        model.register_forward_pre_hook(self.pre, with_kwargs=True)
        model.register_forward_hook(self.post, with_kwargs=True)

    def pre(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs["input_ids"]
        self.fed.append((ids.clone(), kwargs["attention_mask"][:, -ids.shape[1] :].clone()))

    def post(self, module: Any, args: Any, kwargs: dict[str, Any], out: Any) -> Any:
        ids = kwargs["input_ids"]
        keep = kwargs.get("logits_to_keep", 0)
        cols = ids[:, keep] if isinstance(keep, torch.Tensor) else ids[:, -keep:] if keep else ids
        out.logits = out.logits + self.bias[cols]
        return out


def _llama(tok: Any, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    return tiny_lm(tok, seed=seed, layers=2).to(dtype)


def _qwen3(tok: Any, seed: int = 0) -> torch.nn.Module:
    return tiny_lm(tok, arch="qwen3", seed=seed, layers=2, head_dim=8)


CFG = RunnerConfig(max_turns=3, max_new_tokens=6, max_tokens=40, batch_size=6, record_inputs=True)


def _check_episode(ep: Episode, tok: Any) -> None:
    """Masks and token-in/token-out invariants of one recorded episode."""
    seq = ep.meta["input_ids"]
    spans = ep.meta["assistant_spans"]
    assistant = ep.assistant_turns
    assert len(spans) == len(assistant) >= 1
    for turn, (a, b) in zip(assistant, spans, strict=True):
        n = turn.n_tokens
        for name in ("token_ids", "logprob", "sampling_entropy", "temperature", "phase"):
            assert getattr(turn, name).shape == (n,), name
        # Assistant tokens exactly as sampled, at their place in the sequence.
        assert seq[a:b] == turn.token_ids.tolist()
        assert tok.pad_token_id not in turn.token_ids.tolist()
        assert np.isfinite(turn.entropy).all() and (turn.entropy >= 0).all()
    # Between assistant spans only prompt/injected/tool tokens: none of them in the arrays.
    assert sum(t.n_tokens for t in assistant) == sum(b - a for a, b in spans)
    assert all(s1[1] <= s2[0] for s1, s2 in itertools.pairwise(spans))


def _full_render(ep: Episode, tok: Any, world: ToolWorld, task: Any) -> str:
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": world.system_prompt()},
        {"role": "user", "content": task.question},
    ]
    turns = list(ep.turns)
    while turns and turns[-1].role == "tool":  # a tool result that ended the episode is not fed
        turns.pop()
    for turn in turns:
        if turn.role == "assistant":
            text = tok.decode(turn.token_ids.tolist(), skip_special_tokens=False)
            msgs.append({"role": "assistant", "content": text.removesuffix(tok.eos_token)})
        else:
            msgs.append({"role": "tool", "content": turn.content})
    return tok.apply_chat_template(msgs, tools=world.tool_schemas(), tokenize=False)


def test_rollout_masks_and_token_in_token_out(tok, world, tasks) -> None:
    model = _llama(tok)
    spy = Spy(model, _script(tok, len(tok)))
    eps = rollout(
        model,
        tok,
        world,
        tasks[:1],
        schedule=ConstantTemperature(1.0),
        config=RunnerConfig(max_turns=4, max_new_tokens=6, batch_size=1, record_inputs=True),
        seed=3,
    )
    (ep,) = eps
    _check_episode(ep, tok)
    # Tokens fed to the model (batch of one: no compaction) = the sequence minus the final
    # sampled token, which ends the episode and is never fed.
    fed = [t for ids, m in spy.fed for t in ids[0][m[0] == 1].tolist()]
    assert fed == ep.meta["input_ids"][:-1]
    # Appending the tool-message suffixes reproduces the full chat-template render.
    text = tok.decode(ep.meta["input_ids"], skip_special_tokens=False)
    full = _full_render(ep, tok, world, tasks[0])
    assert full.startswith(text) and full[len(text) :] in ("", "<|im_end|>\n", "\n")


def test_batched_rollouts_sample_tool_calls_and_keep_invariants(tok, world, tasks) -> None:
    model = _llama(tok)
    Spy(model, _script(tok, len(tok)))
    eps = rollout(model, tok, world, tasks, schedule=ConstantTemperature(1.0), config=CFG, seed=1)
    assert [e.task_id for e in eps] == [t.task_id for t in tasks]
    assert len({e.episode_id for e in eps}) == len(eps)
    for ep, task in zip(eps, tasks, strict=True):
        _check_episode(ep, tok)
        text = tok.decode(ep.meta["input_ids"], skip_special_tokens=False)
        full = _full_render(ep, tok, world, task)
        assert full.startswith(text)
        assert ep.reward == (1.0 if ep.success else 0.0)
        assert ep.latency_s is not None and ep.latency_s >= 0
        assert "end_reason" in ep.meta and "faults" in ep.meta
    # The script makes tool calls common, with both ok and error results across the batch.
    statuses = {t.status for e in eps for t in e.tool_turns}
    assert "error" in statuses and len(eps[0].turns) >= 2
    # At T = 1 the sampling distribution is the model's: sampling entropy == model entropy.
    for e in eps:
        for t in e.assistant_turns:
            np.testing.assert_allclose(t.sampling_entropy, t.entropy, rtol=1e-5, atol=1e-6)
            assert (t.logprob <= 0).all() and (t.temperature == 1.0).all()


def test_phases_recorded(tok, world, tasks) -> None:
    model = _llama(tok)
    Spy(model, _script(tok, len(tok)))
    eps = rollout(model, tok, world, tasks, schedule=ConstantTemperature(1.0), config=CFG, seed=2)
    tc = tok.convert_tokens_to_ids("<tool_call>")
    seen = set()
    for ep in eps:
        failed = False
        for turn in ep.turns:
            if turn.role == "tool":
                failed = turn.failed
                continue
            ids = turn.token_ids.tolist()
            seen.update(turn.phase.tolist())
            if tc in ids:  # everything from the call marker on is act
                k = ids.index(tc)
                assert (turn.phase[k:] == PHASE_CODE["act"]).all()
                free = turn.phase[:k]
            else:
                free = turn.phase[~np.isin(turn.phase, [PHASE_CODE["answer"]])]
            want = PHASE_CODE["recover"] if failed else PHASE_CODE["plan"]
            assert (free == want).all()
    assert PHASE_CODE["act"] in seen


def test_greedy_batched_equals_one_by_one(tok, world, tasks) -> None:
    model = _llama(tok, dtype=torch.float64)  # float64: no ties from batch-shape rounding
    Spy(model, _script(tok, len(tok)))
    sched = ConstantTemperature(0.0)
    cfg1 = RunnerConfig(max_turns=3, max_new_tokens=6, batch_size=1, record_inputs=True)
    one = rollout(model, tok, world, tasks, schedule=sched, config=cfg1, seed=0)
    many = rollout(model, tok, world, tasks, schedule=sched, config=CFG, seed=0)
    for a, b in zip(one, many, strict=True):
        assert a.meta["input_ids"] == b.meta["input_ids"]
        assert len(a.turns) == len(b.turns)
        for ta, tb in zip(a.assistant_turns, b.assistant_turns, strict=True):
            assert ta.token_ids.tolist() == tb.token_ids.tolist()
            np.testing.assert_allclose(ta.entropy, tb.entropy, rtol=1e-5, atol=1e-6)
            assert (ta.temperature == 0).all() and (ta.logprob == 0).all()
            assert (ta.sampling_entropy == 0).all()
    # Multi-turn with appended tool messages of different lengths across rows happened.
    assert all(len(e.tool_turns) >= 1 for e in many)


def test_seed_reproducible_and_batch_invariant_sampling(tok, world, tasks) -> None:
    model = _llama(tok, dtype=torch.float64)
    Spy(model, _script(tok, len(tok)))
    sched = ConstantTemperature(1.0)
    a = rollout(model, tok, world, tasks, schedule=sched, config=CFG, seed=7)
    b = rollout(model, tok, world, tasks, schedule=sched, config=CFG, seed=7)
    cfg2 = RunnerConfig(
        max_turns=3, max_new_tokens=6, max_tokens=40, batch_size=4, record_inputs=True
    )
    c = rollout(model, tok, world, tasks, schedule=sched, config=cfg2, seed=7)
    d = rollout(model, tok, world, tasks, schedule=sched, config=CFG, seed=8)
    ids = [[e.meta["input_ids"] for e in r] for r in (a, b, c, d)]
    assert ids[0] == ids[1] == ids[2]
    assert ids[0] != ids[3]


def test_held_tool_messages_change_nothing_but_the_batch_shape(tok, world, tasks) -> None:
    """Rows whose tool message waits for others (``hold_steps``) sample the same episodes as
    rows fed at once (fp64, so the batch shape cannot flip a draw); and holding does happen."""
    model = _llama(tok, dtype=torch.float64)
    spy = Spy(model, _script(tok, len(tok)))
    sched = ConstantTemperature(1.0)
    cfg = dict(max_turns=3, max_new_tokens=6, max_tokens=40, batch_size=6, record_inputs=True)
    at_once = rollout(
        model, tok, world, tasks, schedule=sched, config=RunnerConfig(**cfg, hold_steps=0), seed=5
    )
    spy.fed.clear()
    held = rollout(
        model, tok, world, tasks, schedule=sched, config=RunnerConfig(**cfg, hold_steps=4), seed=5
    )
    assert [e.meta["input_ids"] for e in held] == [e.meta["input_ids"] for e in at_once]
    for a, b in zip(held, at_once, strict=True):
        for ta, tb in zip(a.assistant_turns, b.assistant_turns, strict=True):
            np.testing.assert_allclose(ta.logprob, tb.logprob, rtol=1e-6, atol=1e-9)
    # Some block fed a row nothing (a held row) while another row fed tokens.
    assert any(bool(((m.sum(1) == 0) & (m.sum() > 0)).any()) for _, m in spy.fed)
    with pytest.raises(ValueError, match="hold_steps"):
        RunnerConfig(hold_steps=-1)


def test_batched_draw_equals_the_row_by_row_draw() -> None:
    """The runner's batched inverse-CDF draw gives the bits of one draw per row."""
    from agentropy.agent.runner import _sample
    from agentropy.entropy import apply_temperature

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 300, generator=g) * 3
    logits[1, 5:] = -math.inf
    temps = torch.tensor([1.0, 0.7, 0.0, 1.3, 0.2, 0.0, 2.0])
    gens = [torch.Generator().manual_seed(100 + j) for j in range(7)]
    tokens, logprob, ent = _sample(logits, temps, gens)
    ref_gens = [torch.Generator().manual_seed(100 + j) for j in range(7)]
    for j in range(7):
        if temps[j] == 0:
            assert tokens[j] == logits[j].argmax() and logprob[j] == 0 and ent[j] == 0
            continue
        probs = torch.softmax(apply_temperature(logits[j : j + 1], temps[j : j + 1]), -1)[0]
        u = torch.rand((), generator=ref_gens[j], dtype=torch.float64)
        cdf = probs.double().cumsum(0)
        k = torch.searchsorted(cdf, (u * cdf[-1]).reshape(1), right=True).clamp_max(299)[0]
        assert int(tokens[j]) == int(k)


@pytest.mark.parametrize("case", ["all_draw", "greedy_rows", "neg_inf"])
def test_sample_logprob_and_entropy_have_the_bits_of_logprobs_and_entropy(case) -> None:
    """The runner's per-step shortcut (no argument checks, no greedy work when no row is greedy)
    records the bits :func:`logprobs_and_entropy` gives on the scaled logits."""
    from agentropy.agent.runner import _sample
    from agentropy.entropy import apply_temperature, logprobs_and_entropy

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(9, 1007, generator=g) * 4
    temps = torch.rand(9, generator=g) * 1.5 + 0.1
    if case == "greedy_rows":
        temps[[2, 5]] = 0.0
    if case == "neg_inf":
        logits[3, ::2] = -math.inf  # 0 * log 0 terms: the checked path
    gens = [torch.Generator().manual_seed(j) for j in range(9)]
    tokens, logprob, ent = _sample(logits, temps, gens)
    t = torch.where(temps == 0, torch.ones_like(temps), temps)
    lp_ref, h_ref = logprobs_and_entropy(apply_temperature(logits, t), tokens)
    greedy = temps == 0
    assert torch.equal(logprob, torch.where(greedy, 0.0, lp_ref))
    assert torch.equal(ent, torch.where(greedy, 0.0, h_ref))
    assert torch.isfinite(logprob).all() and (ent >= 0).all()


class RecordingSchedule:
    """Per-row temperatures that vary by row, phase and step (some rows greedy); logs them."""

    name = "recording"

    def __init__(self) -> None:
        self.log: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def init(self, batch_size: int) -> int:
        return 0

    def update(self, state: int, obs: StepObservation) -> tuple[torch.Tensor, int]:
        b = obs.phase.shape[0]
        rows = torch.arange(b, dtype=torch.float32)
        temps = 0.3 + 0.1 * rows + 0.05 * obs.phase.float() + 0.01 * (state % 7)
        temps = torch.where(torch.arange(b) % 3 == 2, torch.zeros(b), temps)
        assert obs.active.any() and torch.isfinite(obs.entropy[obs.active]).all()
        self.log.append((temps.clone(), obs.active.clone(), obs.reset.clone()))
        return temps, state + 1


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_recorded_temperatures_are_the_schedule_s(tok, world, tasks, arch) -> None:
    model = _llama(tok) if arch == "llama" else _qwen3(tok)
    Spy(model, _script(tok, len(tok)))
    sched = RecordingSchedule()
    eps = rollout(model, tok, world, tasks, schedule=sched, config=CFG, seed=4)
    for j, ep in enumerate(eps):
        _check_episode(ep, tok)
        want = [float(t[j]) for t, active, _ in sched.log if active[j]]
        got = np.concatenate([t.temperature for t in ep.assistant_turns]).tolist()
        assert got == pytest.approx(want, abs=0)
        # reset is raised exactly once per row, on its first step
        resets = [bool(r[j]) for _, active, r in sched.log if active[j]]
        assert resets[0] and not any(resets[1:])
        greedy = np.concatenate([t.temperature for t in ep.assistant_turns]) == 0
        lp = np.concatenate([t.logprob for t in ep.assistant_turns])
        assert (lp[greedy] == 0).all() and (lp[~greedy] <= 0).all()
    assert any(len(e.tool_turns) for e in eps)


def test_budgets(tok, world, tasks) -> None:
    model = _llama(tok)
    Spy(model, _script(tok, len(tok)))
    cfg = RunnerConfig(
        max_turns=2, max_new_tokens=3, max_tokens=5, batch_size=3, record_inputs=True
    )
    eps = rollout(model, tok, world, tasks, schedule=ConstantTemperature(1.0), config=cfg, seed=5)
    for ep in eps:
        assert len(ep.assistant_turns) <= 2
        assert all(t.n_tokens <= 3 for t in ep.assistant_turns)
        assert ep.n_tokens <= 5
        assert ep.meta["end_reason"] in {
            "answer",
            "no_action",
            "max_turns",
            "token_budget",
            "turn_budget",
            "context",
        }


def test_tool_suffix_matches_full_render(tok, world, tasks) -> None:
    msgs = [
        {"role": "system", "content": world.system_prompt()},
        {"role": "user", "content": tasks[0].question},
    ]
    suffix = ToolSuffix(tok, msgs, world.tool_schemas())
    tool = {"role": "tool", "content": "error: lookup is down"}
    content = "<tool_call>" + CALL_OK + "</tool_call>"
    full = tok.apply_chat_template(
        [*msgs, {"role": "assistant", "content": content}, tool],
        tools=world.tool_schemas(),
        tokenize=False,
        add_generation_prompt=True,
    )
    head = tok.apply_chat_template(
        msgs, tools=world.tool_schemas(), tokenize=False, add_generation_prompt=True
    )
    assert full == head + content + suffix.render(tool)
    ids = suffix.ids(tool, emitted_eot=None)
    assert tok.decode(ids, skip_special_tokens=False) == suffix.render(tool)
    # When the model emitted its own end-of-turn, it is not injected twice.
    ids2 = suffix.ids(tool, emitted_eot=tok.eos_token)
    assert ids2 == ids[1:] and ids[0] == tok.eos_token_id


def test_trace_round_trip(tok, world, tasks, tmp_path) -> None:
    from agentropy.trace import read_traces, write_jsonl

    model = _llama(tok)
    Spy(model, _script(tok, len(tok)))
    eps = rollout(model, tok, world, tasks[:3], schedule=ConstantTemperature(0.7), config=CFG)
    path = tmp_path / "t.jsonl"
    write_jsonl(eps, path)
    back = read_traces(path)
    assert [e.episode_id for e in back] == [e.episode_id for e in eps]
    for a, b in zip(eps, back, strict=True):
        assert a.success == b.success and a.meta["input_ids"] == b.meta["input_ids"]
        for ta, tb in zip(a.turns, b.turns, strict=True):
            assert ta.role == tb.role
            if ta.role == "assistant":
                for name in ("token_ids", "entropy", "logprob", "temperature", "phase"):
                    np.testing.assert_array_equal(getattr(ta, name), getattr(tb, name))
            else:
                assert (ta.status, ta.content, ta.call) == (tb.status, tb.content, tb.call)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="max_turns"):
        RunnerConfig(max_turns=0)
    with pytest.raises(ValueError, match="batch_size"):
        RunnerConfig(batch_size=-1)
    assert math.isfinite(RunnerConfig().max_tokens)


@pytest.fixture(scope="module")
def model_dir(tok, tmp_path_factory) -> Any:
    path = tmp_path_factory.mktemp("model")
    _llama(tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_cli_rollout_writes_traces_and_table(model_dir, tmp_path) -> None:
    from typer.testing import CliRunner

    from agentropy.cli import app
    from agentropy.trace import read_traces

    runner = CliRunner()
    for name in ("t.jsonl", "t.parquet"):
        out = tmp_path / name
        res = runner.invoke(
            app,
            [
                "rollout",
                "--model",
                str(model_dir),
                "--level",
                "1",
                "--level",
                "2",
                "--episodes",
                "2",
                "--temperature",
                "0",
                "--seed",
                "1",
                "--out",
                str(out),
                "--max-turns",
                "2",
                "--max-new-tokens",
                "4",
                "--no-progress",
            ],
        )
        assert res.exit_code == 0, res.output
        assert "L1" in res.output and "L2" in res.output and "H recover" in res.output
        eps = read_traces(out)
        assert len(eps) == 4 and {e.level for e in eps} == {1, 2}
        assert all(e.policy == "greedy" for e in eps)
        t = eps[0].assistant_turns[0]
        assert (t.temperature == 0).all() and t.token_ids is not None and t.phase is not None


def test_cli_rollout_budget_defaults_are_the_runner_config_s() -> None:
    import typer

    from agentropy.cli import app

    command = typer.main.get_command(app).commands["rollout"]
    defaults = {p.name: p.default for p in command.params}
    runner = RunnerConfig()
    for name in ("batch_size", "max_turns", "max_new_tokens", "max_tokens"):
        assert defaults[name] == getattr(runner, name), name


@pytest.mark.parametrize(
    ("args", "msg"),
    [(["--temperature", "-1", "--out", "x.jsonl"], "--temperature"), (["--out", "x.csv"], "--out")],
)
def test_cli_rollout_bad_options_exit_2(args, msg, tmp_path) -> None:
    from typer.testing import CliRunner

    from agentropy.cli import app

    res = CliRunner().invoke(app, ["rollout", "--model", str(tmp_path), *args])
    assert res.exit_code == 2
    assert msg in res.output and len(res.output.strip().splitlines()) == 1


def test_level_summary_recovery_and_phase_means() -> None:
    from agentropy.cli.rollout import level_summary
    from agentropy.trace import Turn

    def ep(i, success, statuses, phases, ent):
        turns = [
            Turn(
                role="assistant", entropy=np.array(ent, np.float32), phase=np.array(phases, np.int8)
            )
        ]
        turns += [Turn(role="tool", status=s, content="") for s in statuses]
        return Episode(episode_id=str(i), turns=turns, success=success)

    r = level_summary(
        [
            ep(0, True, ["error", "ok"], [0, 1], [1.0, 2.0]),
            ep(1, False, ["unexpected"], [2, 2, 2], [3.0, 3.0, 6.0]),
            ep(2, True, ["ok"], [0], [3.0]),
        ]
    )
    assert (r["recovered"], r["failure_episodes"]) == (1, 2)
    assert r["tool_calls"] == pytest.approx(4 / 3) and r["failures"] == pytest.approx(2 / 3)
    assert r["entropy"]["plan"] == pytest.approx(2.0)  # (1 + 3) / 2 tokens, not a mean of means
    assert r["entropy"]["recover"] == pytest.approx(4.0) and r["entropy"]["answer"] is None


@pytest.mark.parametrize("name", ["phase", "edt"])
def test_control_schedules_plug_in(tok, world, tasks, name) -> None:
    from agentropy.control.temperature import schedule_from_name

    model = _llama(tok)
    Spy(model, _script(tok, len(tok)))
    sched = schedule_from_name(name)
    eps = rollout(model, tok, world, tasks, schedule=sched, config=CFG, seed=6)
    temps = np.concatenate([t.temperature for e in eps for t in e.assistant_turns])
    assert np.isfinite(temps).all() and (temps >= 0).all()
    assert len(np.unique(temps)) > 1  # per-token temperatures actually vary
    assert all(e.policy == sched.name for e in eps)
    if name == "phase":
        # Inside a tool call (after the opening marker was sampled) the act temperature applies.
        act_t, tc, checked = sched.config.act, tok.convert_tokens_to_ids("<tool_call>"), 0
        for e in eps:
            for t in e.assistant_turns:
                ids = t.token_ids.tolist()
                if tc in ids and ids.index(tc) + 1 < len(ids):
                    assert t.temperature[ids.index(tc) + 1] == pytest.approx(act_t)
                    checked += 1
        assert checked > 0
