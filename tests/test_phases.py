"""Phase tracking on hand-built token streams, online vs after the fact."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentropy.control.phases import (
    DEFAULT_MARKERS,
    PhaseMarkers,
    PhaseTracker,
    decode_token_texts,
    episode_phases,
    find_spans,
    label_tokens,
)
from agentropy.trace import PHASE_CODE, Turn

P, A, R, N = (PHASE_CODE[p] for p in ("plan", "act", "recover", "answer"))


def _online(texts: list[str], *, failed: bool = False, markers: PhaseMarkers | None = None):
    tr = PhaseTracker(markers)
    tr.on_tool_result(failed=failed)
    tr.start_turn()
    before, pushed = [], []
    for t in texts:
        before.append(tr.phase)
        pushed.append(tr.push(t))
    return tr, before, pushed


def test_single_token_markers() -> None:
    texts = ["I", " will", " look", "<tool_call>", '{"name":"x"}', "</tool_call>"]
    tr, before, pushed = _online(texts)
    assert tr.labels().tolist() == [P, P, P, A, A, A]
    assert pushed == [P, P, P, A, A, A]
    # The schedule sees free text before the opening marker, act inside the span.
    assert before == [P, P, P, P, A, A]
    assert tr.closed == ["act"]
    assert label_tokens(texts).tolist() == tr.labels().tolist()


def test_answer_span_and_text_after_a_span_is_plan() -> None:
    texts = ["so", "<answer>", "4", "2", "</answer>", " done"]
    assert label_tokens(texts).tolist() == [P, N, N, N, N, P]
    # After a failure the free text is recover, but only until a span starts.
    assert label_tokens(texts, failure_pending=True).tolist() == [R, N, N, N, N, P]


def test_recover_until_the_next_call_starts() -> None:
    texts = ["hmm", " try", " backup", "<tool_call>", "{}", "</tool_call>"]
    tr, before, _ = _online(texts, failed=True)
    assert tr.labels().tolist() == [R, R, R, A, A, A]
    assert before[:4] == [R, R, R, R]
    assert not tr.failure_pending  # the call resolved it
    # The failure stays pending across a turn of pure free text.
    tr2, _, _ = _online(["still", " thinking"], failed=True)
    assert tr2.labels().tolist() == [R, R] and tr2.failure_pending
    tr2.start_turn()
    assert tr2.phase == R
    tr2.on_tool_result(failed=False)
    assert tr2.phase == P


def test_multi_token_markers_relabel_earlier_tokens() -> None:
    # "<tool_call>" split over four tokens; the first one also carries free text.
    texts = ["ok", " <", "tool", "_call", ">", '{"a":1}', "</", "tool_call", ">"]
    tr, before, pushed = _online(texts)
    want = [P, A, A, A, A, A, A, A, A]
    assert tr.labels().tolist() == want
    assert label_tokens(texts).tolist() == want
    # Online, the marker's first tokens were free text until the token completing it arrived.
    assert pushed[:5] == [P, P, P, P, A]
    assert before[5] == A and tr.closed == ["act"] and tr.in_span is None


def test_unclosed_span_and_zero_width_tokens() -> None:
    texts = ["x", "", "<answer>", "", "7"]
    # A zero-width token (e.g. a partial UTF-8 byte) belongs with the text that follows it.
    assert label_tokens(texts).tolist() == [P, N, N, N, N]
    texts = ["<tool_call>", "{}", "</tool_call>", "", "y"]
    assert label_tokens(texts).tolist() == [A, A, A, P, P]
    tr, _, _ = _online(["<tool_call>", "{"])
    assert tr.in_span == "act" and tr.phase == A and tr.closed == []


def test_find_spans_and_nested_markers() -> None:
    text = 'a<tool_call>{"q":"<answer>"}</tool_call>b<answer>1</answer>'
    spans = find_spans(text)
    assert [(s.kind, s.closed) for s in spans] == [("act", True), ("answer", True)]
    assert text[spans[0].start : spans[0].end].startswith("<tool_call>")
    assert text[spans[1].start : spans[1].end] == "<answer>1</answer>"


def test_custom_markers() -> None:
    m = PhaseMarkers(
        tool_open="[CALL]", tool_close="[/CALL]", answer_open="[ANS]", answer_close="[/ANS]"
    )
    texts = ["go", "[CALL]", "x", "[/CALL]", "<tool_call>"]
    tr, _, _ = _online(texts, markers=m)
    assert tr.labels().tolist() == [P, A, A, A, P]
    assert label_tokens(texts, markers=m).tolist() == [P, A, A, A, P]


def test_markers_validation() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        PhaseMarkers(tool_open="")
    with pytest.raises(ValueError, match="distinct"):
        PhaseMarkers(tool_open="<x>", answer_open="<x>")
    assert DEFAULT_MARKERS.tool_open == "<tool_call>"


def test_episode_phases() -> None:
    turns = [
        Turn(role="assistant", entropy=np.zeros(3, np.float32)),
        Turn(role="tool", status="error", content="boom"),
        Turn(role="assistant", entropy=np.zeros(3, np.float32)),
        Turn(role="tool", status="ok", content="42"),
        Turn(role="assistant", entropy=np.zeros(2, np.float32)),
    ]
    texts = {
        0: ["plan", "<tool_call>", "</tool_call>"],
        2: ["oops", "<tool_call>", "</tool_call>"],
        4: ["fine", "<answer>"],
    }
    for i, t in texts.items():
        turns[i].meta["texts"] = t
    out = episode_phases(turns, lambda t: t.meta["texts"])
    assert out[1] is None and out[3] is None
    assert out[0].tolist() == [P, A, A]
    assert out[2].tolist() == [R, A, A]
    assert out[4].tolist() == [P, N]


_PIECES = [
    "a",
    " b",
    "<",
    "tool",
    "_call",
    ">",
    "</",
    "tool_call",
    "<tool_call>",
    "</tool_call>",
    "<answer>",
    "</answer>",
    "<ans",
    "wer>",
    "",
    "{}",
    "\n",
]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=30), st.booleans())
def test_online_equals_offline(texts: list[str], failed: bool) -> None:
    tr = PhaseTracker()
    tr.on_tool_result(failed=failed)
    tr.start_turn()
    for i, t in enumerate(texts):
        got = tr.push(t)
        offline = label_tokens(texts[: i + 1], failure_pending=failed)
        assert got == offline[-1]
        assert tr.labels().tolist() == offline.tolist()
        # The phase announced for the next token is the label a token would get if it were
        # inside the current span / free text (a non-empty, marker-free continuation).
        nxt = label_tokens([*texts[: i + 1], "z"], failure_pending=failed)[-1]
        assert tr.phase == nxt
    spans = find_spans("".join(texts))
    assert tr.closed == [s.kind for s in spans if s.closed]


def test_decode_token_texts_concatenate_to_the_decoded_text() -> None:
    from agentropy.agent.tiny import build_tokenizer

    tok = build_tokenizer()
    text = 'Plan: café 日本 <tool_call>{"name":"calc"}</tool_call><|im_end|>'
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = decode_token_texts(tok, ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=False)
    assert "" in pieces  # multi-byte characters span byte-level tokens
    labels = label_tokens(pieces)
    k = pieces.index("<tool_call>")
    assert (labels[:k] == P).all() and (labels[k : k + 3] == A).all()
