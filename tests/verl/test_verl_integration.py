"""agentropy's verl integration against verl 0.9 itself, on CPU (run in .venv-verl).

The loss is compared with verl's own ``ppo_loss`` on batches built by verl's own padding code;
the agent loop is instantiated the way verl's ``AgentLoopWorker`` does (registry + hydra) and
driven by a scripted fake server manager, as verl's CPU agent-loop tests do; the plugin entry
point is exercised through ``importlib.metadata`` in a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from agentropy.integrations import verl as av
from agentropy.rl.coefs import RhythmConfig, RhythmState
from agentropy.trace import PHASE_CODE, PHASES

verl_losses = pytest.importorskip("verl.workers.utils.losses")
from verl.protocol import DataProto  # noqa: E402
from verl.utils import tensordict_utils as tu  # noqa: E402
from verl.workers.config import FSDPActorConfig  # noqa: E402
from verl.workers.utils.padding import left_right_2_no_padding  # noqa: E402

PLAN, ACT, RECOVER, ANSWER = (PHASE_CODE[p] for p in ("plan", "act", "recover", "answer"))
B, P, R = 3, 4, 6  # sequences, prompt width, response width


def actor_config(**kw: Any) -> FSDPActorConfig:
    return FSDPActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=2, **kw)


def make_batch(
    *, seed: int = 0, tensor_phases: bool = False, dp: tuple[int, Any, Any] = (1, None, None)
) -> tuple[Any, dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """A micro-batch as verl's engine hands it to the loss, plus leaf tensors and raw phases."""
    g = torch.Generator().manual_seed(seed)
    prompt_lens = [4, 2, 3]
    resp_lens = [6, 4, 5]
    prompts = torch.zeros(B, P, dtype=torch.long)
    responses = torch.zeros(B, R, dtype=torch.long)
    attn = torch.zeros(B, P + R, dtype=torch.long)
    resp_mask = torch.zeros(B, R, dtype=torch.long)
    for i, (pl, rl) in enumerate(zip(prompt_lens, resp_lens, strict=True)):
        prompts[i, P - pl :] = torch.randint(1, 50, (pl,), generator=g)
        responses[i, :rl] = torch.randint(1, 50, (rl,), generator=g)
        attn[i, P - pl : P + rl] = 1
        resp_mask[i, :rl] = 1
    resp_mask[0, 2:4] = 0  # tool tokens inside sample 0's response
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
    # Phases per response token (tool tokens -1), as the agent loop records them.
    phases = [[PLAN, ACT, -1, -1, RECOVER, RECOVER], [PLAN, PLAN, ANSWER, ANSWER],
              [RECOVER, RECOVER, RECOVER, ACT, ACT]]  # fmt: skip
    offsets = [[-1, -1, -1, -1, 0, 1], [-1, -1, -1, -1], [3, 70, 71, 72, 73]]
    batch = {
        "prompts": prompts, "responses": responses, "input_ids": torch.cat([prompts, responses], 1),
        "attention_mask": attn, "position_ids": position_ids, "response_mask": resp_mask,
        "old_log_probs": -torch.rand(B, R, generator=g) * 2,
        "advantages": torch.randn(B, 1, generator=g).expand(B, R).contiguous(),
    }  # fmt: skip
    non_tensor: dict[str, np.ndarray] = {}
    if tensor_phases:
        batch[av.PHASE_KEY] = av.pad_rows(phases, R, key=av.PHASE_KEY)
        batch[av.OFFSET_KEY] = av.pad_rows(offsets, R, key=av.OFFSET_KEY)
    else:
        for key, rows in ((av.PHASE_KEY, phases), (av.OFFSET_KEY, offsets)):
            arr = np.empty(B, dtype=object)
            arr[:] = rows
            non_tensor[key] = arr
    td = DataProto.from_dict(tensors=batch, non_tensors=non_tensor).to_tensordict()
    td = left_right_2_no_padding(td)
    tu.assign_non_tensor(td, dp_size=dp[0], batch_num_tokens=dp[1], global_batch_size=dp[2])
    total = sum(prompt_lens) + sum(resp_lens)
    leaves = {
        "log_probs": (-torch.rand(total, generator=g) * 2).requires_grad_(),
        "entropy": (torch.rand(total, generator=g) * 3).requires_grad_(),
    }
    return td, leaves, {"phases": np.array(phases, dtype=object), "offsets": offsets}


def model_output(td: Any, leaves: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    offsets = td["input_ids"].offsets()
    return {k: torch.nested.nested_tensor_from_jagged(v, offsets) for k, v in leaves.items()}


def padded(td: Any, leaves: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    from verl.workers.utils.padding import no_padding_2_padding

    return no_padding_2_padding(model_output(td, leaves)[key], td)


def grads(loss: torch.Tensor, leaves: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, list(leaves.values())))


# ---------------------------------------------------------------------------------- the loss


@pytest.mark.parametrize(
    ("mode", "dp"),
    [
        ("token-mean", (1, None, None)),
        ("token-mean", (2, 31, 7)),  # global normalisation: this micro-batch is part of more
        ("seq-mean-token-mean", (2, 31, 7)),
        ("seq-mean-token-sum", (1, None, None)),
        ("seq-mean-token-sum-norm", (2, 31, 7)),
        ("token-sum", (2, 31, 7)),
    ],
)
def test_equal_lambdas_equal_verl_flat_entropy_bonus(mode: str, dp: tuple) -> None:
    """All lambda_p = c (no contraction) is exactly verl's ppo_loss with entropy_coeff = c."""
    c = 0.01
    td, leaves, _ = make_batch(dp=dp)
    ours, metrics = av.rhythm_ppo_loss(
        actor_config(loss_agg_mode=mode), model_output(td, leaves), td,
        lambdas=(c,) * 4, rhythm=RhythmConfig(contraction_coef=0.0),
    )  # fmt: skip
    ref, ref_metrics = verl_losses.ppo_loss(
        actor_config(loss_agg_mode=mode, entropy_coeff=c), model_output(td, leaves), td
    )
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)
    for g_ours, g_ref in zip(grads(ours, leaves), grads(ref, leaves), strict=True):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-8)
    assert float(metrics["actor/pg_loss"].aggregate()) == pytest.approx(
        float(ref_metrics["actor/pg_loss"].aggregate())
    )


def test_per_phase_lambdas_and_contraction_match_a_hand_computation() -> None:
    lam = (0.01, -0.02, 0.03, -0.04)
    rhythm = RhythmConfig(horizon=64, band_hi=0.5, contraction_coef=0.2)
    td, leaves, raw = make_batch(seed=3)
    ours, metrics = av.rhythm_ppo_loss(
        actor_config(), model_output(td, leaves), td, lambdas=lam, rhythm=rhythm
    )
    pg, _ = verl_losses.ppo_loss(actor_config(), model_output(td, leaves), td)
    ent = padded(td, leaves, "entropy").detach().numpy()
    mask = td.select("response_mask").to_padded_tensor()["response_mask"].numpy().astype(bool)
    bonus, n, excess = 0.0, 0, []
    ent_sum = dict.fromkeys(PHASES, 0.0)
    tok = dict.fromkeys(PHASES, 0)
    for i, (ph, off) in enumerate(zip(raw["phases"], raw["offsets"], strict=True)):
        for t, (p, o) in enumerate(zip(ph, off, strict=True)):
            if not mask[i, t]:
                continue
            h = float(ent[i, t])
            bonus += lam[p] * h
            n += 1
            ent_sum[PHASES[p]] += h
            tok[PHASES[p]] += 1
            if p == RECOVER and o > rhythm.horizon and h > rhythm.band_hi:
                excess.append(h - rhythm.band_hi)
    assert excess, "the batch must exercise the contraction term"
    expected = float(pg.detach()) - bonus / n + rhythm.contraction_coef * float(np.mean(excess))
    assert float(ours.detach()) == pytest.approx(expected, rel=1e-5)
    for p in PHASES:
        assert metrics[f"rhythm/tokens_{p}"].aggregate() == tok[p]
        assert metrics[f"rhythm/entropy_sum_{p}"].aggregate() == pytest.approx(ent_sum[p], rel=1e-6)
        assert metrics[f"rhythm/lambda_{p}"] == lam[PHASES.index(p)]


def test_tensor_and_non_tensor_phase_keys_give_the_same_loss() -> None:
    lam = (0.01, -0.02, 0.03, -0.04)
    a_td, leaves, _ = make_batch(seed=5)
    b_td, _, _ = make_batch(seed=5, tensor_phases=True)
    la, _ = av.rhythm_ppo_loss(actor_config(), model_output(a_td, leaves), a_td, lambdas=lam)
    lb, _ = av.rhythm_ppo_loss(actor_config(), model_output(b_td, leaves), b_td, lambdas=lam)
    assert float(la.detach()) == float(lb.detach())


def test_loss_errors_are_actionable() -> None:
    td, leaves, _ = make_batch()
    out = model_output(td, leaves)
    with pytest.raises(ValueError, match="calculate_entropy=True"):
        av.rhythm_ppo_loss(actor_config(), {"log_probs": out["log_probs"]}, td, lambdas=(0,) * 4)
    td.pop(av.PHASE_KEY)
    with pytest.raises(ValueError, match="agentropy_phase"):
        av.rhythm_ppo_loss(actor_config(), out, td, lambdas=(0,) * 4)
    # A masked-in (assistant) token without a phase is a recording bug, never silently trained.
    bad, leaves, _ = make_batch(tensor_phases=True)
    bad[av.PHASE_KEY][1, 0] = -1
    with pytest.raises(ValueError, match="phase codes"):
        av.rhythm_ppo_loss(actor_config(), model_output(bad, leaves), bad, lambdas=(0,) * 4)


def test_coefficients_adapt_on_the_driver_and_are_pushed_to_workers() -> None:
    pushed = []
    td, leaves, _ = make_batch(seed=2)
    _, metrics = av.rhythm_ppo_loss(actor_config(), model_output(td, leaves), td, lambdas=(0,) * 4)

    class Trainer:
        config = None
        actor_rollout_wg = SimpleNamespace(set_loss_fn=pushed.append)

        def _update_actor(self, batch: Any) -> Any:
            # verl returns per-key lists after its own reductions; two identical mini-batches.
            m = {f"actor/{k}": [v.aggregate(), v.aggregate()] if hasattr(v, "aggregate") else v
                 for k, v in metrics.items()}  # fmt: skip
            return SimpleNamespace(meta_info={"metrics": m})

    trainer = Trainer()
    rhythm = RhythmConfig(step=1e-3, target_plan=0.0, target_act=10.0)
    ctl = av.install_rhythm_loss(trainer, rhythm=rhythm, actor_config=actor_config())
    assert len(pushed) == 1 and pushed[0].keywords["lambdas"] == (0.0,) * 4
    out = trainer._update_actor(None)
    lam = dict(zip(PHASES, ctl.state.lambdas, strict=True))
    assert lam["plan"] == pytest.approx(-1e-3)  # entropy above a 0 target: penalty grows
    assert lam["act"] == pytest.approx(1e-3)  # below a 10-nat target: bonus grows
    assert ctl.state.n_updates == 1
    assert pushed[-1].keywords["lambdas"] == ctl.state.lambdas
    assert out.meta_info["metrics"]["actor/rhythm/lambda_next_plan"] == lam["plan"]
    with pytest.raises(KeyError, match="rhythm/tokens_plan"):
        av.rhythm_coef_update(ctl.state, {}, rhythm)


def test_global_scale_matches_verl_agg_loss_on_random_masks() -> None:
    from verl.trainer.ppo.core_algos import agg_loss

    from agentropy.rl.losses import aggregate

    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 9, generator=g)
    mask = torch.rand(5, 9, generator=g) > 0.4
    mask[2] = False  # an empty sequence
    for mode in av.VERL_AGG_MODES:
        for info in ({}, {"dp_size": 4, "batch_num_tokens": 100, "global_batch_size": 13}):
            ours_mode, scale = av.global_scale(mode, mask, **info)
            ref = agg_loss(x, mask.float(), mode, **info)
            torch.testing.assert_close(
                scale * aggregate(x, mask, ours_mode), ref, rtol=1e-5, atol=1e-6
            )


def test_aggregate_equals_verl_agg_loss_on_one_batch_in_every_shared_mode() -> None:
    from verl.trainer.ppo.core_algos import agg_loss

    from agentropy.rl.losses import AGG_MODES, aggregate

    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 11, generator=g)
    mask = torch.rand(6, 11, generator=g) > 0.5
    mask[4] = False  # an empty sequence
    for mode in AGG_MODES:
        ref = agg_loss(x, mask.float(), mode)
        torch.testing.assert_close(aggregate(x, mask, mode), ref, rtol=1e-5, atol=1e-6)
    ref = agg_loss(x, mask.float(), "seq-mean-token-sum-norm", loss_scale_factor=4)
    ours = aggregate(x, mask, "seq-mean-token-sum-norm", scale_factor=4)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ agent loop


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from agentropy.agent.tiny import build_tokenizer

    return build_tokenizer()


class FakeServerManager:
    """Scripted stand-in for verl's LLM server client: returns the next scripted turn."""

    def __init__(self, tokenizer: Any, turns: list[str]) -> None:
        self.tokenizer = tokenizer
        self.turns = list(turns)
        self.calls: list[dict[str, Any]] = []

    async def generate(self, *, request_id: str, prompt_ids: list[int],
                       sampling_params: dict[str, Any], **kwargs: Any) -> Any:  # fmt: skip
        from verl.workers.rollout.replica import TokenOutput

        self.calls.append(dict(sampling_params))
        text = self.turns.pop(0)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return TokenOutput(token_ids=ids, log_probs=[-0.5] * len(ids))


def lookup_tool() -> Any:
    from verl.tools.function_tool import FunctionTool
    from verl.tools.schemas import OpenAIFunctionToolSchema

    calls = {"n": 0}

    def lookup(key: str) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            return "upstream failure", 0.0, {"status": "error"}
        return "42", 0.0, {"status": "ok"}

    schema = OpenAIFunctionToolSchema.model_validate({
        "type": "function",
        "function": {"name": "lookup", "description": "Look a key up.",
                     "parameters": {"type": "object", "properties": {"key": {"type": "string"}},
                                    "required": ["key"]}},
    })  # fmt: skip
    return FunctionTool(name="lookup", fn=lookup, tool_schema=schema)


def make_loop(tokenizer: Any, server: Any, **agent_kwargs: Any) -> Any:
    import hydra
    from verl.experimental.agent_loop.agent_loop import (
        DictConfigWrap,
        ToolListWrap,
        _agent_loop_registry,
    )

    cls = av.PhaseToolAgentLoop  # creating the class registers it
    assert _agent_loop_registry[av.AGENT_NAME] == {
        "_target_": f"{cls.__module__}.PhaseToolAgentLoop"
    }
    config = OmegaConf.create({
        "actor_rollout_ref": {"rollout": {
            "prompt_length": 512, "response_length": 512, "full_determinism": False,
            "multi_turn": {"max_user_turns": 5, "max_assistant_turns": 5, "max_parallel_calls": 1,
                           "max_tool_response_length": 256, "tool_response_truncate_side": "right",
                           "format": "hermes"}}},
        "data": {},
    })  # fmt: skip
    target = {**_agent_loop_registry[av.AGENT_NAME], **agent_kwargs}
    return hydra.utils.instantiate(
        config=target, trainer_config=DictConfigWrap(config), server_manager=server,
        tokenizer=tokenizer, processor=None, hf_model_type=None, dataset_cls=None,
        data_config=DictConfigWrap(config.data), tools=ToolListWrap([lookup_tool()]),
    )  # fmt: skip


CALL = '<tool_call>{"name": "lookup", "arguments": {"key": "x"}}</tool_call>'
TURNS = [f"let me look {CALL}", f"retry {CALL}", "<answer>42</answer>"]


def run_episode(tokenizer: Any, server: Any, temperature: float = 1.0, **agent_kwargs: Any) -> Any:
    """One episode; the loop is built inside the event loop (verl captures the running loop)."""
    params = {"temperature": temperature, "top_p": 1.0, "top_k": -1, "logprobs": False}
    messages = [{"role": "user", "content": "what is x?"}]

    async def go() -> Any:
        loop = make_loop(tokenizer, server, **agent_kwargs)
        return await loop.run(params, raw_prompt=messages)

    return asyncio.run(go())


def test_agent_loop_sets_turn_temperature_and_records_phases(tokenizer: Any) -> None:
    server = FakeServerManager(tokenizer, TURNS)
    out = run_episode(tokenizer, server, policy="phase:recover=1.3")
    cfg = av.phase_config("phase:recover=1.3")
    # Turn 2 follows a failed tool result: recover temperature; the others plan.
    assert [c["temperature"] for c in server.calls] == [cfg.plan, cfg.recover, cfg.plan]
    assert all(c["top_p"] == 1.0 for c in server.calls)  # other params pass through

    phases = out.extra_fields[av.PHASE_KEY]
    offsets = out.extra_fields[av.OFFSET_KEY]
    mask = out.response_mask
    assert len(phases) == len(offsets) == len(mask) == len(out.response_ids)
    assert all((p >= 0) == bool(m) for p, m in zip(phases, mask, strict=True))
    # Decode each assistant run and check its labels.
    runs, cur = [], []
    for tok, p, o, m in zip(out.response_ids, phases, offsets, mask, strict=True):
        if m:
            cur.append((tok, p, o))
        elif cur:
            runs.append(cur)
            cur = []
    runs.append(cur)
    assert len(runs) == 3
    by_text = []
    for run in runs:
        text = tokenizer.decode([t for t, _, _ in run])
        by_text.append((text, [p for _, p, _ in run], [o for _, _, o in run]))
    t1, t2, t3 = by_text
    assert t1[0].startswith("let me look") and set(t1[1]) == {PLAN, ACT}
    assert set(t1[2]) == {-1}  # no failure before turn 1
    assert t2[0].startswith("retry") and t2[1][0] == RECOVER and t2[1][-1] == ACT
    assert t2[2] == list(range(len(t2[2])))  # tokens since the failed result: 0, 1, 2, ...
    assert t3[0].startswith("<answer>") and set(t3[1]) == {ANSWER}
    assert set(t3[2]) == {-1}  # the second call succeeded: no pending failure


def test_agent_loop_per_token_mode_sends_processor_options(tokenizer: Any) -> None:
    from agentropy.integrations import EXTRA_ARGS_KEY, MarkerIds, parse_request

    server = FakeServerManager(tokenizer, TURNS)
    run_episode(tokenizer, server, per_token=True)
    assert [c["temperature"] for c in server.calls] == [1.0, 1.0, 1.0]
    pending = [c["extra_args"][EXTRA_ARGS_KEY]["failure_pending"] for c in server.calls]
    assert pending == [False, True, False]
    spec = parse_request(server.calls[1]["extra_args"])  # what the vLLM processor will parse
    assert spec is not None and spec.markers == MarkerIds.from_tokenizer(tokenizer)


def test_agent_loop_leaves_greedy_validation_alone(tokenizer: Any) -> None:
    server = FakeServerManager(tokenizer, TURNS)
    run_episode(tokenizer, server, temperature=0.0)
    assert [c["temperature"] for c in server.calls] == [0.0, 0.0, 0.0]


def test_tool_failure_detection() -> None:
    assert av.tool_failed("x", {"status": "error"}) and av.tool_failed("x", {"failed": True})
    assert av.tool_failed("Unknown function 'nope'. Available tools: []", {})
    assert not av.tool_failed("42", {"status": "ok"}) and not av.tool_failed(None, None)


# ------------------------------------------------------------------------------------ plugin


@pytest.mark.slow  # a fresh interpreter importing verl, ray and the agent loop: ~10-40 s
def test_verl_plugins_entry_point_registers_the_agent_loop(tmp_path: Path) -> None:
    """`import verl` loads the `verl.plugins` entry point (as in every Ray worker)."""
    dist = tmp_path / "agentropy_verl_plugin-0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: agentropy-verl-plugin\nVersion: 0.0\n"
    )
    (dist / "entry_points.txt").write_text(
        "[verl.plugins]\nagentropy = agentropy.integrations.verl:PhaseToolAgentLoop\n"
    )
    code = (
        "import verl\n"
        "from verl.experimental.agent_loop.agent_loop import _agent_loop_registry as r\n"
        "print(json.dumps(r.get('agentropy_phase')))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    res = subprocess.run([sys.executable, "-W", "ignore", "-c", "import json\n" + code],
                         env=env, capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got == {"_target_": "agentropy.integrations.verl.PhaseToolAgentLoop"}


def test_rhythm_state_round_trips_through_the_controller() -> None:
    state = RhythmState(lambdas=(0.001, 0.0, -0.002, 0.0), n_updates=3)
    assert RhythmState.load(state.state_dict()) == state
    assert not math.isnan(sum(state.lambdas))


def test_phases_follow_samples_through_verl_micro_batching() -> None:
    """verl splits and reorders the batch (micro-batches, dynamic batch size); phases follow."""
    td, _, raw = make_batch(seed=4)
    like = torch.zeros(B, R)
    full = av._per_token(td, av.PHASE_KEY, like)
    order = [2, 0, 1]
    picked = tu.index_select_tensor_dict(td, torch.tensor(order))
    torch.testing.assert_close(av._per_token(picked, av.PHASE_KEY, like), full[order])
    chunks = tu.chunk_tensordict(td, 3)
    for i, chunk in enumerate(chunks):
        got = av._per_token(chunk, av.PHASE_KEY, like[:1])
        assert got[0, : len(raw["phases"][i])].tolist() == list(raw["phases"][i])
