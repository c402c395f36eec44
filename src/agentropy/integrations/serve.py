"""A minimal OpenAI-compatible chat-completions server for a local Hugging Face causal LM.

It exists so that the OpenAI-compatible backend (:mod:`agentropy.integrations.openai`) can be
tested end to end against a real HTTP server with the official ``openai`` client, and so that the
embedded tiny agent can be served to any tool that speaks the chat-completions schema. It is not a
production server: one request at a time, no batching.

What it implements of ``POST /v1/chat/completions``: ``messages`` (rendered with the tokenizer's
chat template, ``tools`` passed through), ``temperature`` (0 = greedy), ``max_tokens`` (or
``max_completion_tokens``), ``stop``, ``seed``, ``logprobs`` and ``top_logprobs`` (at most 20, as
OpenAI). Generation stops at the tokenizer's end-of-sequence/end-of-turn tokens, at a closing
``</tool_call>`` or ``</answer>`` marker, or at a ``stop`` string.

Logprobs are reported under the *model* distribution (T = 1), not the sampling distribution: that
is vLLM's default (``logprobs_mode="raw_logprobs"``), and it is what makes the client's top-k
entropy estimate an estimate of model entropy.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from agentropy.integrations._extras import require

__all__ = [
    "END_MARKERS",
    "MAX_TOP_LOGPROBS",
    "create_app",
    "generate_completion",
]


#: Closing markers that end an assistant turn in our tool-call format (Hermes/Qwen convention).
END_MARKERS: tuple[str, ...] = ("</tool_call>", "</answer>")
MAX_TOP_LOGPROBS = 20


def generate_completion(
    model: Any,
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    temperature: float = 1.0,
    max_tokens: int = 128,
    stop: list[str] | None = None,
    seed: int | None = None,
    top_logprobs: int = 0,
) -> dict[str, Any]:
    """Generate one assistant message; return text, finish reason, tokens and logprob records.

    Each record is ``{"token", "logprob", "top_logprobs": [{"token", "logprob"}...]}`` under the
    model distribution (T = 1). ``temperature`` < 0 raises ``ValueError``.
    """
    import torch

    from agentropy.agent.runner import forward_kwargs, stop_token_ids
    from agentropy.entropy import apply_temperature

    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
        raise ValueError(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {top_logprobs}")
    prompt = tokenizer.apply_chat_template(
        messages, tools=tools, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    if isinstance(prompt, dict) or hasattr(prompt, "input_ids"):
        prompt = prompt["input_ids"]
    input_ids = torch.tensor([list(prompt)], dtype=torch.long)
    generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    end_ids = stop_token_ids(model, tokenizer)
    stops = list(END_MARKERS) + list(stop or [])

    records: list[dict[str, Any]] = []
    out_ids: list[int] = []
    finish = "length"
    cache = None
    cache_kw, _ = forward_kwargs(model)
    step_input = input_ids
    with torch.no_grad():
        for _ in range(max_tokens):
            out = model(input_ids=step_input, use_cache=True, **{cache_kw: cache})
            # Look the legacy name up only if needed: reading it warns on newer transformers.
            cache = out[cache_kw] if cache_kw in out else out.get("past_key_values")
            z = out.logits[0, -1].float()  # (V,) fp32 before any temperature
            logp = torch.log_softmax(z, dim=-1)
            if temperature == 0:
                tok = int(torch.argmax(z))
            else:
                probs = torch.softmax(apply_temperature(z, temperature), dim=-1)
                tok = int(torch.multinomial(probs, 1, generator=generator))
            if tok in end_ids:
                finish = "stop"
                break
            out_ids.append(tok)
            rec: dict[str, Any] = {
                "token": tokenizer.decode([tok]),
                "logprob": float(logp[tok]),
                "top_logprobs": [],
            }
            if top_logprobs:
                vals, idx = torch.topk(logp, k=min(top_logprobs, logp.shape[0]))
                rec["top_logprobs"] = [
                    {"token": tokenizer.decode([int(i)]), "logprob": float(v)}
                    for v, i in zip(vals, idx, strict=True)
                ]
            records.append(rec)
            text = tokenizer.decode(out_ids)
            if any(text.endswith(s) for s in stops):
                finish = "stop"
                break
            step_input = torch.tensor([[tok]], dtype=torch.long)
    text = tokenizer.decode(out_ids)
    # OpenAI semantics: a user stop string is not part of the returned text (our markers are).
    for s in stop or []:
        if text.endswith(s):
            text = text[: -len(s)]
    return {
        "text": text,
        "finish_reason": finish,
        "token_ids": out_ids,
        "records": records,
        "prompt_tokens": int(input_ids.shape[1]),
    }


def create_app(model: Any, tokenizer: Any, *, model_name: str = "agentropy-tiny") -> Any:
    """A FastAPI app serving ``model`` through ``/v1/chat/completions`` and ``/v1/models``."""
    fastapi = require("fastapi", extra="openai")
    from fastapi.responses import JSONResponse

    app = fastapi.FastAPI(title="agentropy chat-completions server")
    lock = threading.Lock()  # one generation at a time: the model is not re-entrant

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model"}]}

    @app.post("/v1/chat/completions")
    def chat_completions(body: dict[str, Any]) -> Any:
        try:
            messages = body["messages"]
            stop = body.get("stop")
            stop = [stop] if isinstance(stop, str) else stop
            with lock:
                gen = generate_completion(
                    model,
                    tokenizer,
                    messages,
                    tools=body.get("tools"),
                    temperature=float(body.get("temperature", 1.0)),
                    max_tokens=int(
                        body.get("max_completion_tokens") or body.get("max_tokens", 128)
                    ),
                    stop=stop,
                    seed=body.get("seed"),
                    top_logprobs=int(body.get("top_logprobs") or 0),
                )
        except (KeyError, TypeError, ValueError) as err:
            return JSONResponse(
                status_code=400,
                content={"error": {"message": f"bad request: {err}", "type": "invalid_request"}},
            )
        logprobs = None
        if body.get("logprobs"):
            logprobs = {
                "content": [
                    {
                        "token": r["token"],
                        "logprob": r["logprob"],
                        "bytes": list(r["token"].encode()),
                        "top_logprobs": [
                            {"token": t["token"], "logprob": t["logprob"], "bytes": None}
                            for t in r["top_logprobs"]
                        ],
                    }
                    for r in gen["records"]
                ],
                "refusal": None,
            }
        n_out = len(gen["token_ids"])
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", model_name),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": gen["text"]},
                    "finish_reason": gen["finish_reason"],
                    "logprobs": logprobs,
                }
            ],
            "usage": {
                "prompt_tokens": gen["prompt_tokens"],
                "completion_tokens": n_out,
                "total_tokens": gen["prompt_tokens"] + n_out,
            },
        }

    return app
