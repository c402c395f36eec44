"""Phase-aware agent loop over any OpenAI-compatible chat-completions server.

A chat-completions request has one temperature, so control here is per turn, not per token: the
request right after a failed or unexpected tool result is sampled at the ``recover`` temperature
(the agent inhales), every other request at the ``plan`` temperature (DESIGN.md, "Backends").
Tool-call and answer spans inside a turn cannot get their own temperature through this API; the
per-token controller (:mod:`agentropy.control.hf`, the vLLM processor) can.

Servers return at most ~20 log-probs per position, so entropy is not exact: each token's entropy
is the top-k estimate of :func:`agentropy.entropy.topk_entropy_bounds`, and the bounds are kept in
the turn's ``meta[BOUNDS_META_KEY]`` (``{"lower": [...], "upper": [...]}``, the layout every reader
of bounds uses; ``entropy_source = "topk"``). The
server's ``logprob`` of the sampled token is recorded in ``meta["model_logprob"]``: most servers
(vLLM by default, our :mod:`agentropy.integrations.serve`) report it under the model distribution,
not the sampling distribution, so it is not put in the ``logprob`` field.

Both tool-call conventions are handled: structured ``message.tool_calls`` (servers with a tool
parser) and Hermes-style ``<tool_call>{...}</tool_call>`` text in ``message.content``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agentropy.control.phases import label_tokens, resolves_failure
from agentropy.control.temperature import PhaseTemperatureConfig
from agentropy.env.format import parse_assistant, render_tool_call
from agentropy.integrations._extras import require
from agentropy.trace import BOUNDS_META_KEY, Episode, ToolCall, Turn

__all__ = [
    "OpenAIAgentConfig",
    "make_client",
    "run_episode",
    "run_episodes",
]


@dataclass(frozen=True)
class OpenAIAgentConfig:
    """How the agent loop talks to the server."""

    model: str = "agentropy-tiny"
    """Model name sent with every request."""
    vocab_size: int = 32_000
    """Vocabulary size of the served model (needed for the entropy upper bound)."""
    top_logprobs: int = 20
    """Log-probs requested per position (OpenAI allows at most 20)."""
    max_turns: int = 8
    """Assistant turns per episode before the episode is cut off."""
    max_tokens: int = 96
    """Completion tokens per request."""
    policy: str = "phase"
    """``phase`` (recover temperature after a failed tool result) or ``constant:T``."""
    temperatures: PhaseTemperatureConfig = field(default_factory=PhaseTemperatureConfig)
    """Per-phase temperatures; this loop uses ``plan`` and ``recover``."""
    seed: int | None = 0
    """Sent as ``seed`` (request i of an episode gets ``seed + i``); None to omit."""

    def __post_init__(self) -> None:
        if not 1 <= self.top_logprobs <= 20:
            raise ValueError(f"top_logprobs must be in [1, 20], got {self.top_logprobs}")
        if self.vocab_size <= self.top_logprobs:
            raise ValueError(
                f"vocab_size ({self.vocab_size}) must exceed top_logprobs ({self.top_logprobs})"
            )
        if self.max_turns < 1 or self.max_tokens < 1:
            raise ValueError("max_turns and max_tokens must be >= 1")
        self.turn_temperature(failure_pending=False)  # validates `policy`

    def turn_temperature(self, *, failure_pending: bool) -> float:
        """Temperature of the next request."""
        if self.policy == "phase":
            return self.temperatures.recover if failure_pending else self.temperatures.plan
        if self.policy.startswith("constant:"):
            t = float(self.policy.split(":", 1)[1])
            if t < 0:
                raise ValueError(f"temperature must be >= 0, got {t}")
            return t
        if self.policy == "greedy":
            return 0.0
        raise ValueError(f"unknown policy {self.policy!r}: use phase, greedy or constant:T")


def make_client(base_url: str, *, api_key: str = "EMPTY", timeout: float = 60.0) -> Any:
    """An ``openai.OpenAI`` client for ``base_url`` (e.g. ``http://127.0.0.1:8000/v1``)."""
    openai = require("openai", extra="openai")
    return openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout)


def _token_records(
    logprobs: Any, config: OpenAIAgentConfig
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Token texts, entropy estimate, bounds and model log-probs from a choice's ``logprobs``."""
    from agentropy.entropy import topk_entropy_bounds

    content = list(getattr(logprobs, "content", None) or [])
    texts = [c.token for c in content]
    model_lp = np.array([c.logprob for c in content], dtype=np.float32)
    if not content:
        empty = np.zeros(0, dtype=np.float32)
        return texts, empty, empty, empty, model_lp
    tops = [[{"logprob": t.logprob} for t in (c.top_logprobs or [])] for c in content]
    if any(len(t) == 0 for t in tops):
        raise ValueError("server returned a token without top_logprobs; request top_logprobs >= 1")
    est, lo, hi = topk_entropy_bounds(tops, config.vocab_size)
    as_np = [np.asarray(x, dtype=np.float32).reshape(-1) for x in (est, lo, hi)]
    return texts, as_np[0], as_np[1], as_np[2], model_lp


def run_episode(
    client: Any,
    world: Any,
    task: Any,
    *,
    config: OpenAIAgentConfig | None = None,
    episode_id: str | None = None,
) -> Episode:
    """Run one ToolWorld task through a chat-completions server and return its trace."""
    config = config or OpenAIAgentConfig()
    session = world.start(task)
    tools = world.tool_schemas()
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": world.system_prompt()},
        {"role": "user", "content": task.question},
    ]
    ep = Episode(
        episode_id=episode_id or f"{task.task_id}-oai",
        task_id=task.task_id,
        level=task.level,
        policy=config.policy,
    )
    pending = False
    answered = False
    success = False
    start = time.perf_counter()
    tool_latency = 0.0
    for i in range(config.max_turns):
        temperature = config.turn_temperature(failure_pending=pending)
        t0 = time.perf_counter()
        kwargs: dict[str, Any] = {
            "model": config.model,
            "messages": messages,
            "tools": tools,
            "temperature": temperature,
            "max_tokens": config.max_tokens,
            "logprobs": True,
            "top_logprobs": config.top_logprobs,
        }
        if config.seed is not None:
            kwargs["seed"] = config.seed + i
        resp = client.chat.completions.create(**kwargs)
        choice = resp.choices[0]
        msg = choice.message
        texts, est, lo, hi, model_lp = _token_records(choice.logprobs, config)
        content = msg.content or ""
        structured = list(msg.tool_calls or [])
        if structured:
            fn = structured[0].function
            try:
                args = json.loads(fn.arguments or "{}")
            except json.JSONDecodeError:
                args = {"_raw": fn.arguments}
            content = content + render_tool_call(ToolCall(fn.name, args))
        phase = label_tokens(texts, failure_pending=pending) if texts else np.zeros(0, np.int8)
        n = len(texts)
        ep.turns.append(
            Turn(
                role="assistant",
                entropy=est,
                temperature=np.full(n, temperature, dtype=np.float32),
                phase=phase,
                text=content,
                wall_s=time.perf_counter() - t0,
                meta={
                    "entropy_source": "topk",
                    BOUNDS_META_KEY: {"lower": lo.tolist(), "upper": hi.tolist()},
                    "model_logprob": model_lp.tolist(),
                    "finish_reason": choice.finish_reason,
                },
            )
        )
        if resolves_failure(content):
            pending = False
        if structured:
            messages.append(
                {
                    "role": "assistant",
                    "content": msg.content,
                    "tool_calls": [tc.model_dump() for tc in structured[:1]],
                }
            )
        else:
            messages.append({"role": "assistant", "content": content})
        parsed = parse_assistant(content)
        if parsed.kind == "answer":
            answered = True
            success = bool(session.check_answer(parsed.answer or ""))
            break
        if parsed.kind == "none":
            # Neither a call nor an answer: the episode cannot progress (a real agent framework
            # would ask again; we end it so the trace shows the stall).
            break
        result = (
            session.call(parsed.call)
            if parsed.call is not None and parsed.error is None
            else session.call_error(parsed.error or "unreadable tool call")
        )
        tool_latency += float(result.latency_s or 0.0)
        ep.turns.append(
            Turn(
                role="tool",
                call=parsed.call,
                status=result.status,
                content=result.content,
                latency_s=result.latency_s,
                meta={} if result.fault is None else {"fault": result.fault},
            )
        )
        pending = result.status != "ok"
        tool_msg: dict[str, Any] = {"role": "tool", "content": result.content}
        if structured:
            tool_msg["tool_call_id"] = structured[0].id
        elif parsed.call is not None:
            tool_msg["name"] = parsed.call.name
        messages.append(tool_msg)
    ep.success = success
    ep.reward = 1.0 if success else 0.0
    ep.fault_kinds = list(session.fault_kinds)
    ep.latency_s = time.perf_counter() - start + tool_latency
    ep.meta = {"record": session.record(), "answered": answered, "backend": "openai"}
    return ep


def run_episodes(
    client: Any,
    world: Any,
    tasks: list[Any],
    *,
    config: OpenAIAgentConfig | None = None,
    progress: bool = False,
) -> list[Episode]:
    """Run tasks one after another (with a rich progress bar if ``progress``)."""
    config = config or OpenAIAgentConfig()
    if not progress:
        return [run_episode(client, world, t, config=config) for t in tasks]
    from rich.progress import Progress

    out = []
    with Progress() as bar:
        job = bar.add_task(f"openai {config.policy}", total=len(tasks))
        for t in tasks:
            out.append(run_episode(client, world, t, config=config))
            bar.advance(job)
    return out
