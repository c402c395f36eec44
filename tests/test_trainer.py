"""GRPO trainer: batch construction, masks, on-policy log-probs, advantages, steps, resume.

Everything runs on tiny random Llama models built in-process with the tiny tokenizer. A random
model talks gibberish and never answers, so some tests add an "answer script" bias to its logits
(a forward hook keyed on the token at each position): after any token it tends to open
``<answer>``, then writes one digit, then closes. Answers are then right by chance on L0 sums,
which gives groups with mixed rewards (non-zero advantages), while the model's own logits still
decide which digit comes out.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from agentropy.agent.runner import RunnerConfig, rollout
from agentropy.agent.tiny import build_tokenizer
from agentropy.control.base import StepObservation
from agentropy.control.temperature import schedule_from_name
from agentropy.env.toolworld import ToolWorld, ToolWorldConfig
from agentropy.rl import trainer as trainer_mod
from agentropy.rl.config import TrainConfig
from agentropy.rl.losses import get_entropy_term, ppo_clip_loss
from agentropy.rl.trainer import (
    build_batch,
    episode_reward,
    group_advantages,
    latest_checkpoint,
    policy_logprobs,
    promote,
    read_metrics,
    train,
)
from agentropy.trace import read_traces
from conftest import CALL_BAD, CALL_OK, tiny_lm, tool_tokenizer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tok() -> Any:
    return build_tokenizer()


@pytest.fixture(scope="module")
def world() -> ToolWorld:
    return ToolWorld(ToolWorldConfig())


@pytest.fixture(scope="module")
def tok_tools() -> Any:
    """The tiny tokenizer plus two whole tool calls as single tokens (for the tool script)."""
    return tool_tokenizer()


def tiny_model(tok: Any, *, seed: int = 0, script: str | None = None) -> Any:
    """A random 1-layer Llama; ``script`` ("answer" or "tool") adds a logit bias (docstring)."""
    model = tiny_lm(tok, seed=seed, heads=2, tie_word_embeddings=True, bos_token_id=None)
    if script is not None:
        bias = _script(tok, script)

        def hook(module: Any, args: Any, kwargs: dict[str, Any], out: Any) -> Any:
            ids = kwargs["input_ids"]
            keep = kwargs.get("logits_to_keep", 0)
            if isinstance(keep, torch.Tensor):
                ids = ids[:, keep]
            elif keep:
                ids = ids[:, -keep:]
            out.logits = out.logits + bias[ids]
            return out

        model.register_forward_hook(hook, with_kwargs=True)
    return model


def _script(tok: Any, kind: str) -> torch.Tensor:
    """(V, V) bias: row = token at a position, column = next token."""
    vocab = len(tok)
    bias = torch.zeros(vocab, vocab)
    if kind == "answer":
        open_, close = (tok.convert_tokens_to_ids(s) for s in ("<answer>", "</answer>"))
        digits = [tok(str(d), add_special_tokens=False)["input_ids"][0] for d in range(10)]
        bias[:, open_] = 12.0
        bias[open_, open_] = 0.0
        for d in digits:
            bias[open_, d] = 14.0
            bias[d, close] = 20.0
    else:
        open_, close = (tok.convert_tokens_to_ids(s) for s in ("<tool_call>", "</tool_call>"))
        ok, bad = (tok.convert_tokens_to_ids(s) for s in (CALL_OK, CALL_BAD))
        bias[:, open_] = 8.0
        bias[open_, open_] = 0.0
        bias[open_, ok] = bias[open_, bad] = 12.0
        bias[ok, close] = bias[bad, close] = 20.0
    bias[:, tok.pad_token_id] = -30.0
    return bias


class CycleTemperature:
    """Test schedule: per-row temperature cycling through ``temps`` token by token (0 = greedy)."""

    def __init__(self, temps: tuple[float, ...]) -> None:
        self.temps = temps
        self.name = "cycle"

    def init(self, batch_size: int) -> torch.Tensor:
        return torch.arange(batch_size)

    def update(self, state: torch.Tensor, obs: StepObservation) -> tuple[torch.Tensor, Any]:
        t = torch.tensor([self.temps[int(i) % len(self.temps)] for i in state])
        return t.float(), state + 1


def _config(tmp_path: Any, **kw: Any) -> TrainConfig:
    base = dict(
        out=str(tmp_path / "run"),
        steps=2,
        tasks_per_step=2,
        group_size=2,
        max_turns=2,
        max_new_tokens=8,
        max_tokens=16,
        eval_episodes=2,
        levels=(0, 1),
        start_level=0,
        mix_lower=0.0,
        progress=False,
        tensorboard=False,
        lr=1e-2,
        minibatch_size=2,
        ppo_epochs=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def _episodes(tok: Any, world: ToolWorld, schedule: Any, *, n: int = 4) -> tuple[Any, list]:
    """Rollouts of the tool-script model: tool calls, failures, recover phases."""
    model = tiny_model(tok, script="tool")
    tasks = world.tasks(split="train", level=1, n=n, seed=0)
    cfg = RunnerConfig(max_turns=3, max_new_tokens=10, max_tokens=30, record_inputs=True)
    return model, rollout(model, tok, world, tasks, schedule=schedule, config=cfg, seed=3)


# ------------------------------------------------------------------------------ advantages


def test_group_advantages_are_normalised_within_each_task() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    adv = group_advantages(rewards, groups, eps=1e-6)
    for g in range(3):
        a = adv[groups == g].double()
        assert abs(float(a.mean())) < 1e-6
        if g == 1:
            assert torch.equal(a, torch.zeros_like(a))  # equal rewards: no signal
        else:
            assert float(a.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    # A group's advantages do not depend on the other groups' rewards.
    other = rewards.clone()
    other[groups == 2] = torch.tensor([1.0, 1.0])
    adv2 = group_advantages(other, groups, eps=1e-6)
    assert torch.equal(adv2[groups == 0], adv[groups == 0])
    # Success beats failure inside a group.
    assert adv[0] > 0 > adv[1]


def test_group_advantages_unbiased_std_option() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    pop = group_advantages(rewards, groups, eps=1e-6)
    unb = group_advantages(rewards, groups, eps=1e-6, std="unbiased")
    # G = 4: the unbiased std is sqrt(4/3) times the population std (verl's and TRL's choice).
    assert torch.allclose(unb[:4] * math.sqrt(4 / 3), pop[:4], atol=1e-5)
    assert float(unb[:4].std(unbiased=True)) == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(unb[4:], torch.zeros(2))
    with pytest.raises(ValueError, match="population"):
        group_advantages(rewards, groups, eps=0.0, std="sample")  # type: ignore[arg-type]


def test_group_advantages_ignore_order() -> None:
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 2, (24,), generator=gen).float()
    groups = torch.arange(6).repeat_interleave(4)
    perm = torch.randperm(24, generator=gen)
    adv = group_advantages(rewards, groups, eps=1e-6)
    assert torch.allclose(group_advantages(rewards[perm], groups[perm], eps=1e-6), adv[perm])


def test_episode_reward_gives_partial_credit_for_subgoals_only_to_wrong_answers() -> None:
    from agentropy.trace import Episode

    def ep(success: bool, reached: int, total: int) -> Episode:
        meta = {"subgoals": total, "subgoals_reached": reached}
        return Episode(episode_id="e", turns=[], success=success, meta=meta)

    assert episode_reward(ep(True, 0, 3), 0.5) == 1.0  # a right answer always scores 1
    assert episode_reward(ep(False, 2, 3), 0.5) == pytest.approx(1 / 3)
    assert episode_reward(ep(False, 3, 3), 0.5) == 0.5  # below a right answer
    assert episode_reward(ep(False, 2, 3), 0.0) == 0.0  # answer-only reward
    assert episode_reward(ep(False, 0, 0), 0.5) == 0.0  # L0: no sub-goals
    no_meta = Episode(episode_id="e", turns=[], success=False)
    assert episode_reward(no_meta, 0.5) == 0.0  # episodes of other worlds


# ------------------------------------------------------------------------------ batch and masks


def test_loss_mask_is_exactly_the_sampled_assistant_tokens(
    tok_tools: Any, world: ToolWorld
) -> None:
    _, episodes = _episodes(tok_tools, world, schedule_from_name("phase"))
    assert any(len(e.tool_turns) for e in episodes), "need tool turns to test masking"
    batch = build_batch(episodes, tok_tools.pad_token_id)
    for i, ep in enumerate(episodes):
        spans = ep.meta["assistant_spans"]
        expected = np.zeros(batch.mask.shape[1] + 1, dtype=bool)
        for start, end in spans:
            expected[start:end] = True
        # mask[j] is the loss of the token at j + 1
        assert np.array_equal(batch.mask[i].numpy(), expected[1:])
        n = len(ep.meta["input_ids"])
        assert not batch.mask[i, n - 1 :].any()  # padding
        assert int(batch.mask[i].sum()) == ep.n_tokens
        ids = np.concatenate([t.token_ids for t in ep.assistant_turns])
        assert np.array_equal(batch.targets[i][batch.mask[i]].numpy(), ids)
        lp = np.concatenate([t.logprob for t in ep.assistant_turns])
        assert np.array_equal(batch.old_logprob[i][batch.mask[i]].numpy(), lp)
    # Tool results and runner-injected tokens sit between spans and are never in the mask.
    ep = next(e for e in episodes if e.tool_turns)
    (_, e0), (s1, _) = ep.meta["assistant_spans"][:2]
    i = episodes.index(ep)
    assert s1 > e0 and not batch.mask[i, e0 - 1 : s1 - 1].any()


def test_masked_positions_get_exactly_zero_gradient(tok_tools: Any, world: ToolWorld) -> None:
    model, episodes = _episodes(tok_tools, world, schedule_from_name("phase"))
    batch = build_batch(episodes, tok_tools.pad_token_id)
    captured: dict[str, torch.Tensor] = {}

    def keep_logits(module: Any, args: Any, kwargs: Any, out: Any) -> Any:
        out.logits.retain_grad()
        captured["logits"] = out.logits
        return out

    model.register_forward_hook(keep_logits, with_kwargs=True)
    model.train()
    logprob, entropy = policy_logprobs(model, batch)
    adv = torch.linspace(-1.0, 1.0, len(episodes))
    policy_loss, _ = ppo_clip_loss(logprob, batch.old_logprob, adv, batch.mask)
    entropy_loss, _ = get_entropy_term("rhythm")(
        entropy=entropy, mask=batch.mask, phase=batch.phase, trigger_offset=batch.trigger_offset,
        lambdas=(1e-2, -1e-2, 2e-2, -1e-3), horizon=2, band_hi=0.1, contraction_coef=1.0,
    )  # fmt: skip
    loss = policy_loss + entropy_loss
    loss.backward()
    grad = captured["logits"].grad  # (B, L, V)
    per_pos = grad.abs().sum(-1)  # (B, L)
    assert torch.equal(per_pos[:, -1], torch.zeros_like(per_pos[:, -1]))  # predicts nothing
    masked_out = ~batch.mask
    assert torch.equal(per_pos[:, :-1][masked_out], torch.zeros(int(masked_out.sum())))
    assert bool((per_pos[:, :-1][batch.mask] > 0).all())
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_trigger_offset_counts_tokens_after_a_failed_tool(tok_tools: Any, world: ToolWorld) -> None:
    _, episodes = _episodes(tok_tools, world, schedule_from_name("constant:1.0"), n=6)
    batch = build_batch(episodes, tok_tools.pad_token_id)
    for i, ep in enumerate(episodes):
        got = batch.trigger_offset[i][batch.mask[i]].tolist()
        since, want = -1, []
        for t in ep.turns:
            if t.role == "tool":
                since = 0 if t.failed else -1
                continue
            for _ in range(t.n_tokens):
                want.append(since)
                since = since + 1 if since >= 0 else -1
        assert got == want
    assert any(e.tool_turns and any(t.failed for t in e.tool_turns) for e in episodes)


# ------------------------------------------------------------------------------ on-policy


@pytest.mark.parametrize("policy", ["phase", "cycle"])
def test_recomputed_logprobs_match_rollout_with_per_token_temperatures(
    tok_tools: Any, world: ToolWorld, policy: str
) -> None:
    schedule = (
        CycleTemperature((0.5, 1.0, 1.7, 0.8)) if policy == "cycle" else schedule_from_name("phase")
    )
    model, episodes = _episodes(tok_tools, world, schedule)
    batch = build_batch(episodes, tok_tools.pad_token_id)
    temps = batch.temperature[batch.mask]
    assert len(torch.unique(temps)) >= 2, "the test needs several temperatures"
    with torch.no_grad():
        logprob, entropy = policy_logprobs(model, batch)
    mae = (logprob - batch.old_logprob)[batch.mask].abs().mean()
    assert float(mae) < 1e-5
    # Recomputing at T = 1 instead would be off-policy: the check has teeth.
    wrong = batch._replace(temperature=torch.ones_like(batch.temperature))
    with torch.no_grad():
        lp1, _ = policy_logprobs(model, wrong)
    assert float((lp1 - batch.old_logprob)[batch.mask].abs().mean()) > 1e-3
    # The entropy terms see the model entropy at T = 1, as recorded by the runner.
    assert float((entropy - batch.entropy)[batch.mask].abs().max()) < 1e-4


def test_greedy_tokens_are_masked_and_counted(tok_tools: Any, world: ToolWorld) -> None:
    _, episodes = _episodes(tok_tools, world, CycleTemperature((0.0, 1.0)))
    batch = build_batch(episodes, tok_tools.pad_token_id)
    n_zero = sum(int((t.temperature == 0).sum()) for e in episodes for t in e.assistant_turns)
    assert n_zero > 0 and batch.n_greedy == n_zero
    total = sum(e.n_tokens for e in episodes)
    assert int(batch.mask.sum()) == total - n_zero
    assert bool((batch.temperature[batch.mask] > 0).all())


def test_onpolicy_metric_in_training_with_phase_policy(tok: Any, tmp_path: Any) -> None:
    cfg = _config(tmp_path, steps=1, policy="phase", loss="rhythm", max_turns=3)
    train(cfg, model=tiny_model(tok), tokenizer=tok)
    row = read_metrics(cfg.out)[0]
    assert row["onpolicy/logprob_mae"] < 1e-5
    assert row["tokens/total"] > 0 and row["tokens/greedy_masked"] == 0


# ------------------------------------------------------------------------------ training


def test_parameters_change_after_one_step(tok: Any, tmp_path: Any) -> None:
    model = tiny_model(tok, script="answer")
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cfg = _config(tmp_path, steps=1, tasks_per_step=8, group_size=4, minibatch_size=32, levels=(0,))
    train(cfg, model=model, tokenizer=tok)
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert set(changed) == set(before), set(before) - set(changed)
    row = read_metrics(cfg.out)[0]
    assert row["optim/updates"] == 1 and row["optim/grad_norm"] > 0
    # The script makes some groups mixed: the policy gradient, not only the bonus, is live.
    assert row["adv/abs_mean"] > 0 and row["adv/zero_std_groups"] < 1


@pytest.mark.parametrize(
    ("loss", "settings"),
    [("clip_cov", {"clip_cov_ratio": 0.2, "clip_cov_lb": -10.0, "clip_cov_ub": 10.0}),
     ("kl_cov", {"kl_cov_ratio": 0.2}), ("top_entropy", {"top_entropy_quantile": 0.5})],
)  # fmt: skip
def test_peer_losses_train_through_the_same_loop(
    tok: Any, tmp_path: Any, loss: str, settings: dict[str, float]
) -> None:
    model = tiny_model(tok, script="answer")
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cfg = _config(tmp_path, steps=1, tasks_per_step=4, group_size=4, minibatch_size=16,
                  levels=(0,), loss=loss, **settings)  # fmt: skip
    train(cfg, model=model, tokenizer=tok)
    row = read_metrics(cfg.out)[0]
    assert row["optim/updates"] == 1 and row["onpolicy/logprob_mae"] < 1e-5
    # The mechanism touched a share of the tokens near its setting (>= 1 token per minibatch).
    share = {"clip_cov": (0.0, 0.2), "kl_cov": (0.19, 0.2), "top_entropy": (0.5, 0.6)}[loss]
    n = row["tokens/total"]
    assert share[0] - 1 / n <= row["select/frac"] <= share[1] + 1 / n
    assert "loss/entropy_bonus" not in row  # the peers carry no entropy bonus
    if row["adv/abs_mean"] > 0:
        after = model.state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_next_step(
    tok: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    common = dict(steps=3, checkpoint_every=2, tasks_per_step=3, group_size=2, ppo_epochs=2,
                  loss="target", policy="phase", mix_lower=0.5, levels=(0, 1),
                  promote_threshold=0.05)  # fmt: skip
    # Uninterrupted run.
    cfg_a = _config(tmp_path / "a", **common)
    model_a = tiny_model(tok, script="answer")
    train(cfg_a, model=model_a, tokenizer=tok)

    # Interrupted during step 3's rollouts, then resumed from the step-2 checkpoint.
    cfg_b = _config(tmp_path / "b", **common)
    real_rollout = trainer_mod.rollout

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("step") == 3 and kwargs.get("policy_name") == cfg_b.policy:
            raise KeyboardInterrupt
        return real_rollout(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "rollout", flaky)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_b, model=tiny_model(tok, script="answer"), tokenizer=tok)
    monkeypatch.setattr(trainer_mod, "rollout", real_rollout)
    assert latest_checkpoint(cfg_b.out).name == "step-000002"
    # A fresh model with a different init: everything must come from the checkpoint.
    model_b = tiny_model(tok, seed=1, script="answer")
    train(cfg_b, resume=True, model=model_b, tokenizer=tok)

    sa, sb = model_a.state_dict(), model_b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    rows_a, rows_b = read_metrics(cfg_a.out), read_metrics(cfg_b.out)
    assert [r["step"] for r in rows_b] == [1, 2, 3]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for k, v in ra.items():
            if not k.startswith("time/"):
                assert rb[k] == v, (ra["step"], k)
    # Every training episode stored once, with its step: the analyzer's training cycles input.
    eps = read_traces(f"{cfg_b.out}/traces")
    assert sorted({e.step for e in eps}) == [1, 2, 3]
    assert len(eps) == 3 * cfg_b.episodes_per_step
    assert all("input_ids" not in e.meta for e in eps)


def test_curriculum_promotes_and_mixes_lower_levels(tok: Any, tmp_path: Any) -> None:
    # Greedy answers of the scripted model on L0; threshold 0 < t <= 1 that the step-0
    # evaluation either passes or not: read the outcome from the metrics and check consistency.
    cfg = _config(tmp_path, steps=2, tasks_per_step=4, levels=(0, 1, 2), start_level=1,
                  mix_lower=0.5, promote_threshold=1e-9, eval_every=1)  # fmt: skip
    result = train(cfg, model=tiny_model(tok, script="answer"), tokenizer=tok)
    rows = read_metrics(cfg.out)
    hist = result.eval_history
    assert [h["step"] for h in hist] == [0, 1, 2]
    levels = [r["curriculum/level"] for r in rows]
    # Level 1 is promoted iff its held-out success passed the threshold at step 0.
    assert levels[0] == (2.0 if hist[0]["success"]["L1"] >= 1e-9 else 1.0)
    eps = read_traces(f"{cfg.out}/traces")
    step1 = [e for e in eps if e.step == 1]
    lower = [e for e in step1 if e.level < levels[0]]
    assert len(lower) == round(0.5 * cfg.tasks_per_step) * cfg.group_size


def test_promote_skips_every_solved_level_but_never_leaves_the_last() -> None:
    levels = (0, 1, 2, 3)
    success = {"L0": 0.9, "L1": 0.8, "L2": 0.3, "L3": 1.0}
    assert promote(0, success, levels, 0.7) == 2
    assert promote(2, success, levels, 0.7) == 2
    assert promote(2, success, levels, 0.2) == 3
    assert promote(3, success, levels, 0.2) == 3
    assert promote(0, {"L1": 0.7}, (1, 2), 0.7) == 1  # levels need not start at 0


def test_fresh_run_refuses_an_existing_directory_and_resume_checks_config(
    tok: Any, tmp_path: Any
) -> None:
    cfg = _config(tmp_path, steps=1)
    train(cfg, model=tiny_model(tok), tokenizer=tok)
    with pytest.raises(ValueError, match="--resume"):
        train(cfg, model=tiny_model(tok), tokenizer=tok)
    import dataclasses

    with pytest.raises(ValueError, match="lr"):
        train(dataclasses.replace(cfg, lr=1.0), resume=True, model=tiny_model(tok), tokenizer=tok)
    # More steps is fine: continue to step 2.
    train(dataclasses.replace(cfg, steps=2), resume=True, model=tiny_model(tok), tokenizer=tok)
    assert [r["step"] for r in read_metrics(cfg.out)] == [1, 2]


def test_train_command_runs_end_to_end(tok: Any, tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from agentropy.cli import app

    model_dir = tmp_path / "model"
    tiny_model(tok).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    toml = tmp_path / "run.toml"
    toml.write_text(_config(tmp_path, steps=1).to_toml())
    out = tmp_path / "cli-run"
    res = CliRunner().invoke(app, [
        "train", "--config", str(toml), "--model", str(model_dir), "--out", str(out),
        "--set", "loss=vanilla", "--no-progress",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "held-out success" in res.output
    assert (out / "final" / "config.json").is_file()
    assert TrainConfig.from_toml(out / "config.toml").loss == "vanilla"
    bad = CliRunner().invoke(app, ["train", "--config", str(toml), "--set", "lrr=1"])
    assert bad.exit_code == 2 and "did you mean 'lr'" in bad.output


@pytest.mark.slow
def test_resume_after_traces_outran_the_checkpoint(tok: Any, tmp_path: Any) -> None:
    """A run killed after flushing step 2's episodes but before its checkpoint resumes cleanly:
    step 2 is redone, its (identical) episodes are not stored twice, its metrics row replaced."""
    import shutil

    cfg = _config(tmp_path, steps=2, checkpoint_every=1, keep_checkpoints=5)
    train(cfg, model=tiny_model(tok), tokenizer=tok)
    before = read_traces(f"{cfg.out}/traces")
    shutil.rmtree(f"{cfg.out}/checkpoints/step-000002")
    assert latest_checkpoint(cfg.out).name == "step-000001"
    train(cfg, resume=True, model=tiny_model(tok), tokenizer=tok)
    after = read_traces(f"{cfg.out}/traces")
    assert sorted(e.episode_id for e in after) == sorted(e.episode_id for e in before)
    assert [r["step"] for r in read_metrics(cfg.out)] == [1, 2]
