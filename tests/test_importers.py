"""Importers of other systems' logs: top-k logprob responses, verl and TRL dumps."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from agentropy.cli import app
from agentropy.entropy import topk_entropy_bounds
from agentropy.errors import InputError
from agentropy.trace import read_jsonl
from agentropy.trace.importers.chat import FailureDetector, read_conversations, sniff_format
from agentropy.trace.importers.logprobs import read_logprob_episodes


def _entry(token: str, probs: list[float]) -> dict:
    top = [{"token": f"t{i}", "logprob": math.log(p)} for i, p in enumerate(probs)]
    return {"token": token, "logprob": math.log(probs[0]), "top_logprobs": top}


def _lp(tokens: list[str], probs: list[float]) -> dict:
    return {"content": [_entry(t, probs) for t in tokens]}


CONV = {
    "id": "api-1",
    "success": True,
    "messages": [
        {"role": "user", "content": "age of Pata?"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "a", "type": "function",
                         "function": {"name": "lookup", "arguments": "{\"entity\": \"Pata\"}"}}],
         "logprobs": _lp(["<tool_call>", "{...}", "</tool_call>"], [0.9, 0.05])},
        {"role": "tool", "tool_call_id": "a", "content": "{\"error\": \"timeout\"}"},
        {"role": "assistant", "content": "Hmm, retry.",
         "logprobs": _lp(["Hmm", ", retry", ".", "<answer>", "41", "</answer>"], [0.4, 0.3, 0.2])},
    ],
}  # fmt: skip


def test_logprob_conversation_gives_bounds_phases_and_statuses(tmp_path):
    f = tmp_path / "api.jsonl"
    f.write_text(json.dumps(CONV) + "\n")
    assert sniff_format(f) == "logprobs"
    (ep,) = read_logprob_episodes(f, vocab_size=1000)
    assert ep.success is True and ep.meta["entropy_source"] == "topk"
    assert [t.role for t in ep.turns] == ["assistant", "tool", "assistant"]
    assert ep.turns[1].status == "error" and ep.turns[1].call.name == "lookup"
    first, second = ep.assistant_turns
    assert first.phase_names == ["act"] * 3
    assert second.phase_names == ["recover"] * 3 + ["answer"] * 3
    est, lo, hi = topk_entropy_bounds(torch_lp([0.4, 0.3, 0.2]), 1000)
    b = second.meta["entropy_bounds"]
    np.testing.assert_allclose(second.entropy, float(est), rtol=1e-6)
    np.testing.assert_allclose(b["lower"], float(lo), rtol=1e-6)
    np.testing.assert_allclose(b["upper"], float(hi), rtol=1e-6)
    assert all(
        lo_ <= e <= hi_ for lo_, e, hi_ in zip(b["lower"], second.entropy, b["upper"], strict=True)
    )
    np.testing.assert_allclose(second.logprob, math.log(0.4), rtol=1e-6)


def torch_lp(probs: list[float]):
    import torch

    return torch.tensor([math.log(p) for p in probs], dtype=torch.float64)


def test_raw_response_and_cli_without_model(tmp_path):
    resp = {"id": "r1", "choices": [{"message": {"role": "assistant", "content": "ab"},
                                     "logprobs": _lp(["a", "b"], [0.7, 0.2])}]}  # fmt: skip
    f = tmp_path / "resp.jsonl"
    f.write_text(json.dumps(resp) + "\n" + json.dumps(CONV) + "\n")
    out = tmp_path / "o.jsonl"
    # No --model, no embedded agent loaded: logprob inputs need none.
    r = CliRunner().invoke(app, ["score", str(f), "--out", str(out), "--vocab-size", "1000",
                                 "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    eps = read_jsonl(out)
    assert [e.episode_id for e in eps] == ["r1", "api-1"]
    assert eps[0].assistant_turns[0].meta["entropy_bounds"]["upper"][0] > eps[0].turns[0].entropy[0]


def test_logprob_errors_name_line_and_field(tmp_path):
    bad = json.loads(json.dumps(CONV))
    del bad["messages"][3]["logprobs"]["content"][1]["top_logprobs"]
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps(CONV) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(InputError, match=r"line 2, field 'messages\[3\].logprobs.content\[1\]"):
        list(read_logprob_episodes(f))


def test_verl_rollout_dump(tmp_path):
    # The shape verl's RayPPOTrainer._dump_generations writes to rollout_data_dir/<step>.jsonl.
    lines = [{"input": "user\nWhat is 2+3?\nassistant\n", "output": "<answer>5</answer>",
              "gts": "5", "score": 1.0, "step": 7, "acc": True}]  # fmt: skip
    f = tmp_path / "7.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert sniff_format(f) == "verl"
    (c,) = read_conversations(f)
    assert c.raw == (lines[0]["input"], lines[0]["output"])
    assert c.reward == 1.0 and c.step == 7 and c.meta["acc"] is True and c.meta["gts"] == "5"


def test_trl_completions_parquet(tmp_path, random_llama, tiny_tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from agentropy.agent.score import score_conversations

    # The table TRL 1.16's GRPOTrainer.log writes to output_dir/completions/completions_<step>.parquet.
    rows = [{"step": 3,
             "prompt": [{"role": "user", "content": "age of Pata?"}],
             "completion": [{"role": "assistant", "content": "<answer>41</answer>"}],
             "accuracy_reward": 1.0, "format_reward": 0.5, "advantage": 0.3}]  # fmt: skip
    f = tmp_path / "completions_00003.parquet"
    pq.write_table(pa.Table.from_pylist(rows), f)
    (c,) = read_conversations(f)
    assert c.step == 3 and c.reward == 1.5 and c.meta["advantage"] == 0.3
    (ep,) = score_conversations(random_llama, tiny_tokenizer, [c])
    (turn,) = ep.assistant_turns
    assert turn.phase_names[:-1] == ["answer"] * (turn.n_tokens - 1)


def test_failure_detector():
    d = FailureDetector()
    assert d('{"error": "x"}') and d("Error: boom") and d("error: lookup down")
    assert d('{"status": 500, "error": {"code": 1}}')
    assert not d('{"value": 3}') and not d("no error here") and not d("errors: 0")
    assert FailureDetector("timeout")("request timeout") and not FailureDetector("x")("Error")


def test_verl_dump_is_scored_as_one_assistant_turn(tmp_path, random_llama, tiny_tokenizer):
    from agentropy.agent.score import score_conversations

    f = tmp_path / "12.jsonl"
    f.write_text(json.dumps({"input": "What is 2+3?", "output": "It is <answer>5</answer>",
                             "score": 0.0, "step": 12}) + "\n")  # fmt: skip
    (ep,) = score_conversations(random_llama, tiny_tokenizer, read_conversations(f))
    (turn,) = ep.turns
    n_prompt = len(tiny_tokenizer("What is 2+3?", add_special_tokens=False)["input_ids"])
    ids = tiny_tokenizer("What is 2+3?It is <answer>5</answer>", add_special_tokens=False)
    assert (
        turn.token_ids.tolist()
        == tiny_tokenizer("It is <answer>5</answer>", add_special_tokens=False)["input_ids"]
    )
    assert n_prompt < len(ids["input_ids"])
    assert ep.step == 12 and ep.reward == 0.0 and "answer" in turn.phase_names
