"""Phase of every assistant token: ``plan``, ``act``, ``recover`` or ``answer`` (DESIGN.md).

Definitions ("Phases and the temperature controller" in DESIGN.md):

- ``act``: inside a tool-call span, the span markers included (``<tool_call>`` ... ``</tool_call>``);
- ``answer``: inside the final-answer span, markers included (``<answer>`` ... ``</answer>``);
- ``recover``: free text after a failed or unexpected tool result, until the next tool call or
  answer *starts* (an opening marker resolves the failure, whatever happens next);
- ``plan``: any other free text.

Phases are decided on the decoded *text*, never on token ids, because a marker may be one added
token (our tiny tokenizer, Qwen) or several ordinary tokens (``<``, ``tool``, ``_call``, ``>``).
The labelling rule, used both online and after the fact, is:

    a token belongs to a span if any of its characters does.

So the token that completes an opening marker is labelled with the span's phase, and so are the
earlier tokens that hold the marker's first characters (and a token holding free text plus the
first characters of a marker). A token that decodes to no text (a partial UTF-8 byte, an
invisible special token) is labelled by where it sits: inside a span if the span covers its
position, otherwise free text.

Online (:class:`PhaseTracker`), two different questions are answered:

- :attr:`PhaseTracker.phase` is the phase of the *next* token, from the text decoded so far. It
  is what a temperature schedule sees before sampling. Right before a marker nobody can know a
  span is starting, so the token that opens a span is sampled under the free-text phase, and the
  token after a closing marker under the span's phase (the runner ends the turn there anyway).
- :meth:`PhaseTracker.labels` is the recorded label of each token of the turn so far. It applies
  the rule above to the whole text, so it may relabel earlier tokens once a multi-token marker
  completes; it always equals :func:`label_tokens` on the same token texts (the offline labelling
  used for imported traces).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from agentropy.trace import PHASE_CODE, Turn

__all__ = [
    "DEFAULT_MARKERS",
    "IncrementalDecoder",
    "PhaseMarkers",
    "PhaseTracker",
    "Span",
    "SpanKind",
    "decode_token_texts",
    "episode_phases",
    "find_spans",
    "label_tokens",
    "resolves_failure",
]


SpanKind = Literal["act", "answer"]

PLAN, ACT, RECOVER, ANSWER = (PHASE_CODE[p] for p in ("plan", "act", "recover", "answer"))


@dataclass(frozen=True, slots=True)
class PhaseMarkers:
    """Span markers of the chat format. Defaults are the ToolWorld format constants."""

    tool_open: str = "<tool_call>"
    """Opens a tool-call span (``act``)."""
    tool_close: str = "</tool_call>"
    """Closes a tool-call span."""
    answer_open: str = "<answer>"
    """Opens the final-answer span (``answer``)."""
    answer_close: str = "</answer>"
    """Closes the final-answer span."""

    def __post_init__(self) -> None:
        names = ("tool_open", "tool_close", "answer_open", "answer_close")
        values = [getattr(self, n) for n in names]
        for name, value in zip(names, values, strict=True):
            if not isinstance(value, str) or not value:
                raise ValueError(f"PhaseMarkers.{name} must be a non-empty string, got {value!r}")
        if len(set(values)) != 4:
            raise ValueError(f"PhaseMarkers must be four distinct strings, got {values!r}")
        for a, b in ((self.tool_open, self.answer_open), (self.answer_open, self.tool_open)):
            if b.startswith(a):
                raise ValueError(f"opening marker {a!r} is a prefix of {b!r}; make them distinct")


DEFAULT_MARKERS = PhaseMarkers()


def _default_markers() -> PhaseMarkers:
    """The ToolWorld format constants when that module is importable, else the same literals."""
    try:
        from agentropy.env import format as fmt
    except ImportError:  # the env package is optional for the tracker
        return DEFAULT_MARKERS
    return PhaseMarkers(
        tool_open=fmt.TOOL_CALL_OPEN,
        tool_close=fmt.TOOL_CALL_CLOSE,
        answer_open=fmt.ANSWER_OPEN,
        answer_close=fmt.ANSWER_CLOSE,
    )


@dataclass(frozen=True, slots=True)
class Span:
    """A marker-delimited span of a turn's text: characters ``[start, end)``."""

    start: int
    end: int
    """End offset (exclusive); for an unclosed span, the text length at scan time."""
    kind: SpanKind
    closed: bool


def find_spans(text: str, markers: PhaseMarkers = DEFAULT_MARKERS) -> list[Span]:
    """Non-overlapping tool-call and answer spans of ``text``, left to right.

    A span runs from its opening marker to the end of the matching closing marker; an opening
    marker without a closing one opens a span to the end of the text (``closed=False``).
    Markers inside a span (e.g. ``<answer>`` inside a tool call's JSON) are part of the span.
    """
    spans: list[Span] = []
    pos = 0
    opens = (
        (markers.tool_open, markers.tool_close, "act"),
        (markers.answer_open, markers.answer_close, "answer"),
    )
    while True:
        best: tuple[int, str, str, SpanKind] | None = None
        for open_m, close_m, kind in opens:
            i = text.find(open_m, pos)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, open_m, close_m, kind)  # type: ignore[assignment]
        if best is None:
            return spans
        start, open_m, close_m, kind = best
        j = text.find(close_m, start + len(open_m))
        if j < 0:
            spans.append(Span(start, len(text), kind, closed=False))
            return spans
        end = j + len(close_m)
        spans.append(Span(start, end, kind, closed=True))
        pos = end


def label_tokens(
    token_texts: Sequence[str],
    *,
    failure_pending: bool = False,
    markers: PhaseMarkers = DEFAULT_MARKERS,
) -> np.ndarray:
    """Phase code of each token of one assistant turn, after the fact.

    Args:
        token_texts: decoded text of each token, in order (their concatenation is the turn text).
        failure_pending: the last tool result before this turn failed (error or unexpected) and
            no tool call or answer has started since.
        markers: span markers of the chat format.

    Returns:
        (n,) int8 phase codes (indices into :data:`agentropy.trace.PHASES`), by the rule "a token
        belongs to a span if any of its characters does"; free text is ``recover`` while a
        failure is pending (up to the first opening marker) and ``plan`` otherwise.
    """
    text = "".join(token_texts)
    spans = find_spans(text, markers)
    ends = [sp.end if sp.closed else len(text) + 1 for sp in spans]  # unclosed: to the end
    # Free text before the first span is recover if a failure is pending; the first opening
    # marker resolves it, so free text after it is plan.
    first_open = spans[0].start if spans else len(text) + 1
    out = np.empty(len(token_texts), dtype=np.int8)
    k = 0  # first span that does not end at or before the current token's start
    s = 0
    for i, t in enumerate(token_texts):
        e = s + len(t)
        while k < len(spans) and ends[k] <= s:
            k += 1
        inside = False
        if k < len(spans):
            start = spans[k].start
            # Zero-width tokens are inside a span if the span covers their position.
            inside = (e > start) if e > s else (start <= s)
        if inside:
            out[i] = ACT if spans[k].kind == "act" else ANSWER
        else:
            out[i] = RECOVER if failure_pending and s < first_open else PLAN
        s = e
    return out


def resolves_failure(text: str, markers: PhaseMarkers = DEFAULT_MARKERS) -> bool:
    """Whether a turn's text starts a tool call or an answer (which ends a pending failure)."""
    return markers.tool_open in text or markers.answer_open in text


def episode_phases(
    turns: Sequence[Turn],
    token_texts: Callable[[Turn], Sequence[str]],
    *,
    markers: PhaseMarkers = DEFAULT_MARKERS,
) -> list[np.ndarray | None]:
    """Phase codes of every assistant turn of an episode (for imported traces).

    Args:
        turns: the episode's turns, in order.
        token_texts: maps an assistant turn to its per-token texts, e.g.
            ``lambda t: decode_token_texts(tokenizer, t.token_ids)``.
        markers: span markers of the chat format.

    Returns:
        one entry per turn: (n,) int8 phase codes for assistant turns, None for tool turns.
        A failed tool turn (status ``error``/``unexpected``) makes the following free text
        ``recover``; an ``ok`` result clears a pending failure.
    """
    pending = False
    out: list[np.ndarray | None] = []
    for turn in turns:
        if turn.role == "tool":
            pending = turn.failed
            out.append(None)
            continue
        texts = list(token_texts(turn))
        out.append(label_tokens(texts, failure_pending=pending, markers=markers))
        if resolves_failure("".join(texts), markers):
            pending = False
    return out


class PhaseTracker:
    """Online phase of one row's assistant tokens, fed token texts and tool events.

    Usage per episode: ``start_turn()`` at each assistant turn, ``push(text)`` after each sampled
    token, ``on_tool_result(failed=...)`` after each tool turn. :attr:`phase` is the phase of the
    next token (what the schedule sees); :meth:`labels` is what gets recorded (see the module
    docstring for why the two can differ on marker tokens).
    """

    def __init__(self, markers: PhaseMarkers | None = None) -> None:
        self.markers = markers if markers is not None else _default_markers()
        m = self.markers
        self._opens: tuple[tuple[str, str, SpanKind], ...] = (
            (m.tool_open, m.tool_close, "act"),
            (m.answer_open, m.answer_close, "answer"),
        )
        self._max_open = max(len(m.tool_open), len(m.answer_open))
        self.failure_pending = False
        self.reset()

    def reset(self) -> None:
        """Forget everything (a new episode)."""
        self.failure_pending = False
        self.start_turn()

    def start_turn(self) -> None:
        """Begin a new assistant turn (keeps a pending failure)."""
        self._texts: list[str] = []
        self._text = ""
        self._scan = 0  # where the search for the next marker resumes
        self._open: tuple[int, str, SpanKind] | None = None  # (start, close marker, kind)
        self._pending_at_start = self.failure_pending
        self._first_open: int | None = None
        self.closed: list[SpanKind] = []
        """Kinds of the spans closed in this turn, in order."""

    def on_tool_result(self, *, failed: bool) -> None:
        """A tool result arrived: a failed (``error``/``unexpected``) one starts ``recover``."""
        self.failure_pending = bool(failed)

    @property
    def text(self) -> str:
        """Text of the current turn decoded so far."""
        return self._text

    @property
    def phase(self) -> int:
        """Phase code of the next token, from the text decoded so far."""
        if self._open is not None:
            return ACT if self._open[2] == "act" else ANSWER
        return RECOVER if self.failure_pending else PLAN

    @property
    def in_span(self) -> SpanKind | None:
        """Kind of the span the text so far ends inside, if any."""
        return None if self._open is None else self._open[2]

    def push(self, token_text: str) -> int:
        """Add one token's decoded text; return its label given the text so far.

        The label may still change (see :meth:`labels`) when this token holds the first
        characters of a marker that later tokens complete.
        """
        s = len(self._text)
        self._texts.append(token_text)
        self._text += token_text
        e = len(self._text)
        touched = self._advance()
        for start, end, kind in touched:
            inside = (s < end and e > start) if e > s else (start <= s < end)
            if inside:
                return ACT if kind == "act" else ANSWER
        if self._first_open is not None and self._first_open <= s:
            return PLAN
        return RECOVER if self._pending_at_start else PLAN

    def _advance(self) -> list[tuple[int, int, SpanKind]]:
        """Scan the new text for markers; return the spans this push touched (start, end, kind).

        The still-open span is returned with an end past the text, as in :func:`label_tokens`.
        """
        text = self._text
        touched: list[tuple[int, int, SpanKind]] = []
        while True:
            if self._open is None:
                best: tuple[int, str, str, SpanKind] | None = None
                for open_m, close_m, kind in self._opens:
                    i = text.find(open_m, self._scan)
                    if i >= 0 and (best is None or i < best[0]):
                        best = (i, open_m, close_m, kind)
                if best is None:
                    # No marker yet: resume where a marker could still be completing.
                    self._scan = max(self._scan, len(text) - self._max_open + 1)
                    return touched
                start, open_m, close_m, kind = best
                self._open = (start, close_m, kind)
                if self._first_open is None:
                    self._first_open = start
                self.failure_pending = False  # a tool call or answer starts: failure resolved
                self._scan = start + len(open_m)
            else:
                start, close_m, kind = self._open
                j = text.find(close_m, self._scan)
                if j < 0:
                    self._scan = max(self._scan, len(text) - len(close_m) + 1)
                    touched.append((start, len(text) + 1, kind))
                    return touched
                end = j + len(close_m)
                touched.append((start, end, kind))
                self.closed.append(kind)
                self._open = None
                self._scan = end

    def labels(self) -> np.ndarray:
        """(n,) int8 phase codes of this turn's tokens; equals :func:`label_tokens`."""
        return label_tokens(
            self._texts, failure_pending=self._pending_at_start, markers=self.markers
        )


class _Decodes(Protocol):
    def decode(self, ids: Any, **kwargs: Any) -> str: ...


class IncrementalDecoder:
    """Per-token text of a token stream, such that the texts concatenate to the decoded stream.

    Decoding tokens one by one is wrong for byte-level BPE (a character may span tokens) and for
    SentencePiece (leading-space handling depends on the neighbour), so each token's text is the
    growth of the decoded text over a short window of previous tokens; a token that leaves an
    incomplete character (U+FFFD at the end) gets "" and its text arrives with a later token.
    Special tokens are kept, since markers may be special tokens.
    """

    def __init__(self, tokenizer: _Decodes, *, window: int = 6) -> None:
        self.tokenizer = tokenizer
        self.window = window
        self.ids: list[int] = []
        self._prefix = 0  # window start
        self._read = 0  # tokens whose text has been emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it adds ("" while a character is incomplete)."""
        self.ids.append(int(token_id))
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        if new_text.endswith("\ufffd"):
            return ""
        self._read = len(self.ids)
        self._prefix = max(0, self._read - self.window)
        return new_text[len(prefix_text) :]


def decode_token_texts(
    tokenizer: _Decodes, token_ids: Sequence[int] | np.ndarray | None
) -> list[str]:
    """Per-token texts of ``token_ids`` exactly as the runner computes them online.

    ``None`` (a turn's ``token_ids`` when the trace has none) raises ``ValueError``: phases are
    labelled from token texts, so they need the ids.
    """
    if token_ids is None:
        raise ValueError("the turn has no token_ids: token texts (and phases) need them")
    dec = IncrementalDecoder(tokenizer)
    return [dec.push(int(t)) for t in token_ids]
