"""``agentropy score`` on the command line: formats, resume, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agentropy.cli import app
from agentropy.trace import read_jsonl, read_parquet
from conftest import tiny_lm, tool_tokenizer

GOOD: dict[str, Any] = {
    "id": "c1",
    "success": True,
    "source": "unit",
    "messages": [
        {"role": "system", "content": "You use tools."},
        {"role": "user", "content": "How old is Pata?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "a", "type": "function",
             "function": {"name": "lookup", "arguments": "{\"entity\": \"Pata\"}"}}]},
        {"role": "tool", "tool_call_id": "a", "name": "lookup", "content": "error: timeout"},
        {"role": "assistant", "content": "Retrying.", "tool_calls": [
            {"id": "b", "type": "function",
             "function": {"name": "lookup", "arguments": "{\"entity\": \"Pata\"}"}}]},
        {"role": "tool", "tool_call_id": "b", "name": "lookup", "content": "{\"age\": 41}"},
        {"role": "assistant", "content": "<answer>41</answer>"},
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    tok = tool_tokenizer()
    d = tmp_path_factory.mktemp("m")
    tiny_lm(tok, seed=0).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _write(path: Path, objs: list[Any]) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return path


def test_score_writes_a_store_and_resumes(model_dir, tmp_path):
    src = _write(tmp_path / "c.jsonl", [GOOD, {**GOOD, "id": "c2", "success": False}])
    out = tmp_path / "store"
    r = CliRunner().invoke(app, ["score", str(src), "--model", str(model_dir), "--out", str(out),
                                 "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    eps = read_parquet(out)
    assert [e.episode_id for e in eps] == ["c1", "c2"]
    ep = eps[0]
    assert ep.success is True and ep.meta["source"] == "unit"
    assert [t.status for t in ep.tool_turns] == ["error", "ok"]
    assert ep.tool_turns[0].call.arguments == {"entity": "Pata"}
    # Free text after the failed call is recover; the call itself is act; the answer is answer.
    second = ep.assistant_turns[1]
    assert "recover" in second.phase_names and "act" in second.phase_names
    # The answer span is answer; the closing <|im_end|> after it is free text (plan), as in the runner.
    assert ep.assistant_turns[2].phase_names[:-1] == ["answer"] * (
        ep.assistant_turns[2].n_tokens - 1
    )
    assert ep.assistant_turns[2].phase_names[-1] == "plan"
    assert all(t.n_tokens > 0 and (t.entropy >= 0).all() for t in ep.assistant_turns)
    # Resume: a second run over a longer input only scores the new conversation.
    src2 = _write(tmp_path / "c2.jsonl", [GOOD, {**GOOD, "id": "c3"}])
    r = CliRunner().invoke(app, ["score", str(src2), "--model", str(model_dir), "--out", str(out),
                                 "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "1 already in the store" in r.output
    assert sorted(e.episode_id for e in read_parquet(out)) == ["c1", "c2", "c3"]


def test_error_pattern_and_messages_key(model_dir, tmp_path):
    conv = {"conversation": GOOD["messages"], "id": "x"}
    src = _write(tmp_path / "c.jsonl", [conv])
    out = tmp_path / "o.jsonl"
    r = CliRunner().invoke(app, ["score", str(src), "--model", str(model_dir), "--out", str(out),
                                 "--messages-key", "conversation", "--error-pattern", "age",
                                 "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    (ep,) = read_jsonl(out)
    assert [t.status for t in ep.tool_turns] == ["ok", "error"]


def _bad(mutate) -> dict[str, Any]:
    obj = json.loads(json.dumps(GOOD))
    mutate(obj)
    return obj


FUZZ = [
    (lambda o: o.pop("messages"), "field 'messages'"),
    (lambda o: o["messages"][2]["tool_calls"][0]["function"].update(arguments="{oops"),
     "field 'messages[2].tool_calls[0].function.arguments'"),
    (lambda o: o["messages"][3].update(tool_call_id="zzz"), "field 'messages[3].tool_call_id'"),
    (lambda o: o["messages"].insert(2, {"role": "tool", "content": "x"}),
     "field 'messages[2].tool_call_id'"),
    (lambda o: o["messages"][1].update(role="critic"), "field 'messages[1].role'"),
    (lambda o: o["messages"][1].update(content=""), "field 'messages[1].content'"),
    (lambda o: o["messages"][6].update(content=None), "field 'messages[6].content'"),
    (lambda o: o["messages"][6].update(content=7), "field 'messages[6].content'"),
    (lambda o: o.update(success="yes"), "field 'success'"),
    (lambda o: o.update(messages=[{"role": "user", "content": "hi"}]), "field 'messages'"),
    (lambda o: o["messages"].__setitem__(0, "hello"), "field 'messages[0]'"),
]  # fmt: skip


@pytest.mark.parametrize("mutate,where", FUZZ)
def test_bad_conversations_exit_2_with_one_line(tmp_path, mutate, where):
    src = _write(tmp_path / "bad.jsonl", [GOOD, _bad(mutate)])
    r = CliRunner().invoke(app, ["score", str(src), "--out", str(tmp_path / "o"), "--no-progress"])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1, r.output
    assert "bad.jsonl, line 2" in lines[0] and where in lines[0], lines[0]


def test_bad_json_and_bad_regex_exit_2(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps(GOOD) + "\n{not json\n")
    r = CliRunner().invoke(app, ["score", str(src), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "line 2" in r.output
    r = CliRunner().invoke(app, ["score", str(src), "--out", str(tmp_path / "o"),
                                 "--error-pattern", "("])  # fmt: skip
    assert r.exit_code == 2 and "--error-pattern" in r.output
