"""Traces from logs that already carry log-probs: no model needed.

OpenAI-compatible APIs return, per sampled token, its ``logprob`` and up to ~20
``top_logprobs`` (``choices[i].logprobs.content[j] = {"token", "logprob", "bytes",
"top_logprobs": [{"token", "logprob"}, ...]}``). The exact entropy needs the whole distribution;
from the top-k we get the interval of DESIGN.md ("Top-k estimate")::

    H_k - r log min(p_k, r) <= H <= H_k - r log r + r log(V - k)

Each assistant token's ``entropy`` is the midpoint of that interval (the value with the smallest
worst-case error, :func:`agentropy.entropy.topk_entropy_bounds`) and the interval itself is kept
in the turn's ``meta["entropy_bounds"] = {"lower": [...], "upper": [...]}`` (nats, one value
per token), with ``Episode.meta["entropy_source"] = "topk"`` and the ``vocab_size`` used, so
every reader can show how wide the uncertainty is. ``logprob`` is the sampled token's logprob as
the API reported it (under the sampling distribution).

Input, one object per JSONL line (or a JSON array):

- a conversation ``{"messages": [...], ...}`` as in :mod:`~agentropy.trace.importers.chat`,
  whose assistant messages carry ``"logprobs": {"content": [...]}`` (what a client appends when
  it stores ``choices[0].message`` together with ``choices[0].logprobs``); or
- a raw chat-completion response ``{"choices": [{"message": ..., "logprobs": ...}], ...}``: one
  assistant turn (the first choice).

Phases come from the token strings with :func:`agentropy.control.phases.episode_phases`, as
for every trace; token ids are not known (APIs return strings), so ``token_ids`` is absent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from agentropy.errors import InputError
from agentropy.trace.importers.chat import (
    FailureDetector,
    _json_items,
    _outcome,
    _step,
    has_logprobs,
    validate_messages,
)
from agentropy.trace.model import Episode, ToolCall, Turn

__all__ = ["DEFAULT_VOCAB_SIZE", "has_logprobs", "read_logprob_episodes"]  # has_logprobs: re-export

#: Vocabulary size for the upper bound when the caller does not give one: the size of OpenAI's
#: o200k tokenizer. The bound grows only as ``r log(V - k)``, so a wrong V moves it little.
DEFAULT_VOCAB_SIZE = 200_000


def _assistant_turn(lp: Any, where: str, w: dict[str, Any], vocab_size: int) -> Turn:
    from agentropy.entropy import topk_entropy_bounds

    content = lp.get("content") if isinstance(lp, Mapping) else None
    if not isinstance(content, list) or not content:
        raise InputError("must be {'content': [per-token entries]}", field=where, **w)
    tokens, sampled = [], []
    for j, entry in enumerate(content):
        ok = isinstance(entry, Mapping) and isinstance(entry.get("token"), str)
        value = entry.get("logprob") if ok else None
        if not ok or isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError("needs 'token' (string) and 'logprob' (number)",
                             field=f"{where}.content[{j}]", **w)  # fmt: skip
        if not isinstance(entry.get("top_logprobs"), list) or not entry["top_logprobs"]:
            raise InputError("needs top_logprobs (request logprobs with top_logprobs >= 1)",
                             field=f"{where}.content[{j}].top_logprobs", **w)  # fmt: skip
        tokens.append(entry["token"])
        sampled.append(float(value))
    try:
        est, lo, hi = topk_entropy_bounds(content, vocab_size)
    except ValueError as err:
        raise InputError(str(err), field=f"{where}.content", **w) from None
    return Turn(
        role="assistant", entropy=est.numpy(), logprob=np.asarray(sampled, dtype=np.float32), text="".join(tokens),
        meta={"tokens": tokens,
              "entropy_bounds": {"lower": lo.tolist(), "upper": hi.tolist()}},
    )  # fmt: skip


def _episode(
    obj: Any, w: dict[str, Any], default_id: str, vocab_size: int, detect: FailureDetector
) -> Episode:
    from agentropy.control.phases import episode_phases

    if not isinstance(obj, Mapping):
        raise InputError(f"must be a JSON object, got {type(obj).__name__}", **w)
    turns: list[Turn] = []
    if isinstance(obj.get("choices"), list):
        choice = obj["choices"][0] if obj["choices"] else None
        if not isinstance(choice, Mapping):
            raise InputError("needs at least one choice", field="choices", **w)
        turns.append(_assistant_turn(choice.get("logprobs"), "choices[0].logprobs", w, vocab_size))
        extra = {k: v for k, v in obj.items() if k not in ("choices", "id")}
    else:
        messages = validate_messages(obj.get("messages"), **w)
        calls: dict[str, ToolCall] = {}
        for i, m in enumerate(messages):
            if m["role"] == "assistant":
                if not m.get("logprobs"):
                    raise InputError("assistant message has no logprobs",
                                     field=f"messages[{i}].logprobs", **w)  # fmt: skip
                turns.append(_assistant_turn(m["logprobs"], f"messages[{i}].logprobs", w,
                                             vocab_size))  # fmt: skip
                for tc in m.get("tool_calls") or []:
                    f = tc["function"]
                    calls[tc["id"]] = ToolCall(f["name"], json.loads(f["arguments"]))
            elif m["role"] == "tool":
                content = m["content"]
                turns.append(Turn(role="tool", call=calls.get(m.get("tool_call_id") or ""),
                                  content=content, status="error" if detect(content) else "ok"))  # fmt: skip
        extra = {k: v for k, v in obj.items() if k not in ("messages", "id", "tools")}
    for turn, ph in zip(turns, episode_phases(turns, lambda t: t.meta["tokens"]), strict=True):
        if ph is not None:
            turn.phase = ph
    success, reward = _outcome(obj, w)
    for k in ("success", "correct", "solved", "reward", "score", "step"):
        extra.pop(k, None)
    meta = {**extra, "entropy_source": "topk", "vocab_size": vocab_size}
    return Episode(episode_id=str(obj.get("id", default_id)), turns=turns, success=success,
                   reward=reward, step=_step(obj, w), meta=meta)  # fmt: skip


def read_logprob_episodes(
    path: str | Path, *, vocab_size: int = DEFAULT_VOCAB_SIZE, error_pattern: str | None = None
) -> Iterator[Episode]:
    """Episodes of one file of responses / conversations with top-k logprobs (module docstring).

    Raises :class:`InputError` naming file, line and field for malformed input.
    """
    p = Path(path)
    detect = FailureDetector(error_pattern)
    for line, obj in _json_items(p):
        yield _episode(obj, {"path": p, "line": line}, f"{p.stem}-{line}", vocab_size, detect)
