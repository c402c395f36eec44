"""Tool-call / answer text protocol: round trips, informative errors, never raising on garbage."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from agentropy.env.format import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    ParsedTurn,
    parse_assistant,
    render_answer,
    render_tool_call,
    tool_message,
)
from agentropy.trace import ToolCall

json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=10)
json_values = st.recursive(
    json_scalars,
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(
    name=st.text(min_size=1, max_size=12).filter(lambda s: s.strip() == s and s),
    args=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    prefix=st.sampled_from(["", "I will look it up.", "The lookup failed. I will retry.\n"]),
)
def test_tool_call_round_trip(name, args, prefix):
    call = ToolCall(name, args)
    parsed = parse_assistant(prefix + render_tool_call(call))
    assert parsed.kind == "tool_call" and parsed.error is None
    assert parsed.call == call
    assert parsed.text == prefix.strip()


def test_rendering_is_compact_hermes_style():
    text = render_tool_call(ToolCall("lookup", {"entity": "Kalo", "attribute": "age"}))
    assert text.startswith(TOOL_CALL_OPEN) and text.endswith(TOOL_CALL_CLOSE)
    body = json.loads(text[len(TOOL_CALL_OPEN) : -len(TOOL_CALL_CLOSE)])
    assert body == {"name": "lookup", "arguments": {"entity": "Kalo", "attribute": "age"}}
    assert " " not in text
    assert render_answer("42") == f"{ANSWER_OPEN}42{ANSWER_CLOSE}"
    assert tool_message("calc", "x") == {"role": "tool", "name": "calc", "content": "x"}
    assert tool_message(None, "x") == {"role": "tool", "content": "x"}


def test_answers():
    p = parse_assistant("I have the answer.\n<answer> 42 </answer> trailing")
    assert (p.kind, p.answer, p.text, p.error) == ("answer", "42", "I have the answer.", None)
    assert parse_assistant("<answer>17").answer == "17"  # stopped before the closing tag
    assert parse_assistant("just thinking").kind == "none"
    # The first tag decides.
    assert parse_assistant("<answer>1</answer><tool_call>{}</tool_call>").kind == "answer"
    first = parse_assistant('<tool_call>{"name":"calc","arguments":{}}</tool_call><answer>1')
    assert first.kind == "tool_call" and first.call == ToolCall("calc", {})


def test_unclosed_but_complete_call_is_accepted():
    p = parse_assistant('<tool_call>{"name":"calc","arguments":{"expression":"1 + 2"}}')
    assert p.error is None and p.call == ToolCall("calc", {"expression": "1 + 2"})


def test_arguments_as_json_string_are_accepted():
    p = parse_assistant(
        '<tool_call>{"name":"calc","arguments":"{\\"expression\\":\\"1\\"}"}</tool_call>'
    )
    assert p.error is None and p.call == ToolCall("calc", {"expression": "1"})


def test_malformed_calls_give_informative_errors():
    cases = {
        "<tool_call></tool_call>": "empty",
        '<tool_call>{"name": "lookup", </tool_call>': "invalid JSON",
        "<tool_call>[1, 2]</tool_call>": "JSON object",
        '<tool_call>{"arguments": {}}</tool_call>': '"name"',
        '<tool_call>{"name": 3, "arguments": {}}</tool_call>': '"name"',
        '<tool_call>{"name": "lookup"}</tool_call>': '"arguments"',
        '<tool_call>{"name": "lookup", "arguments": [1]}</tool_call>': '"arguments"',
        '<tool_call>{"name": "lookup", "arguments": {"a": 1}': "not closed",
        '<tool_call>{"name": "lookup", "arguments": {}': "invalid JSON",
    }
    for text, needle in cases.items():
        p = parse_assistant(text)
        assert p.kind == "tool_call", text
        assert p.error is not None and needle in p.error, (text, p.error)
    partial = parse_assistant('<tool_call>{"name": "lookup"}</tool_call>')
    assert partial.call == ToolCall("lookup", {})  # partial: the name is known


def test_error_echo_is_bounded():
    p = parse_assistant(TOOL_CALL_OPEN + "{" + "x" * 10_000 + TOOL_CALL_CLOSE)
    assert p.error is not None and len(p.error) < 300


def test_pathological_inputs_do_not_raise():
    for text in (
        TOOL_CALL_OPEN + "[" * 100_000 + TOOL_CALL_CLOSE,
        TOOL_CALL_OPEN + '{"name":"x","arguments":' + "[" * 50_000,
        TOOL_CALL_OPEN * 3,
        ANSWER_OPEN + ANSWER_CLOSE,
        "\x00\ud800" + TOOL_CALL_OPEN + '{"name":"\\ud800","arguments":{}}' + TOOL_CALL_CLOSE,
    ):
        assert isinstance(parse_assistant(text), ParsedTurn)
    for obj in (None, 3, b"<answer>1</answer>", ["<answer>"]):
        p = parse_assistant(obj)
        assert p.kind == "none" and p.error


fragments = st.sampled_from(
    [TOOL_CALL_OPEN, TOOL_CALL_CLOSE, ANSWER_OPEN, ANSWER_CLOSE, "{", "}", "[", "]", '"name"',
     '"arguments"', ":", ",", '"lookup"', "null", "1e999", "\\", '"', "\n"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(fragments | st.text(max_size=8), max_size=25).map("".join) | st.text())
def test_garbage_never_raises(text):
    p = parse_assistant(text)
    assert p.kind in ("tool_call", "answer", "none")
    if p.kind == "tool_call":
        assert p.call is not None or p.error  # an unreadable call always says why
        assert TOOL_CALL_OPEN in text
    if p.kind == "answer":
        assert isinstance(p.answer, str) and ANSWER_OPEN in text
    if p.kind == "none":
        assert TOOL_CALL_OPEN not in text and ANSWER_OPEN not in text
