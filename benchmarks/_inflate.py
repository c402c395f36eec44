"""A function-preserving enlargement of a Llama (Net2Net-style): the embedded agent at the cost
of a larger model, for benchmarks whose question is how a loop scales with model cost (issue 18).

The embedded agent is the only model that calls ToolWorld tools, but at 0.77M parameters a
forward of one token costs about as much as one of a whole block, so it cannot show what KV
caching saves. :func:`inflate` builds a real ``LlamaForCausalLM`` that is wider and deeper yet
computes the same function (exactly in real arithmetic; in fp32 the logits differ by rounding,
see :func:`max_logit_diff`), so it makes the same tool calls at the cost of its size:

- **width**: the residual stream gets zero coordinates. Every weight reading the stream has
  zero columns there and every weight writing it zero rows, so the new coordinates stay 0.
  RMSNorm averages squares over the whole width, which shrinks the mean by ``r = H_old /
  H_new``; norm weights are scaled by ``sqrt(r)`` (``eps`` by ``r``) so the old coordinates are
  normalised as before (the new ones get weight 0).
- **heads**: each old head becomes one new head; with a larger ``head_dim`` (a multiple of the
  old one) its coordinates are spread out so that the rotary pairs ``(i, i + d/2)`` keep their
  frequencies (old coordinate ``i`` of the first half goes to ``stride * i``), and queries are
  scaled by ``sqrt(stride)`` to undo the change of the ``1/sqrt(head_dim)`` attention scale. The
  other heads have zero ``q/k/v`` rows and zero ``o_proj`` columns: they add exactly 0.
- **MLP**: new intermediate units have zero weights (``silu(0) * 0 = 0``).
- **depth**: new decoder layers after the old ones, with the model's random initialisation
  (they cost real compute) but zero ``o_proj`` and ``down_proj``, so each adds 0 to the
  residual stream.

Rope, vocabulary, special tokens and generation config are kept; the chat template lives in the
tokenizer, which is unchanged.
"""

from __future__ import annotations

import copy
import math
from typing import Any


def inflate(
    model: Any,
    *,
    hidden: int,
    layers: int,
    intermediate: int | None = None,
    head_dim: int | None = None,
    seed: int = 0,
) -> Any:
    """A ``LlamaForCausalLM`` ``hidden`` wide and ``layers`` deep computing ``model``'s function.

    ``intermediate`` (MLP width) defaults to the old one scaled like ``hidden``; ``head_dim``
    defaults to the old one (a larger one must be a multiple of it); there are ``hidden /
    head_dim`` heads, at least as many as before. The new layers' random weights are drawn
    from ``seed`` (the global RNG is left alone), so every process builds the same model.
    Returned in eval mode, in ``model``'s dtype.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    old = model.config
    h0, l0, i0 = old.hidden_size, old.num_hidden_layers, old.intermediate_size
    n0, kv0 = old.num_attention_heads, old.num_key_value_heads
    d0 = getattr(old, "head_dim", None) or h0 // n0
    d = head_dim or d0
    inter = intermediate or round(i0 * hidden / h0)
    heads, group = hidden // d, n0 // kv0
    if d % d0 or d0 % 2:
        raise ValueError(f"head_dim {d} must be a multiple of the model's ({d0})")
    if hidden % d or heads < n0 or heads % group:
        raise ValueError(
            f"hidden {hidden} must be a multiple of head_dim {d} giving >= {n0} heads "
            f"(a multiple of {group})"
        )
    if hidden < h0 or layers < l0 or inter < i0:
        raise ValueError(
            f"inflate only grows: hidden >= {h0}, layers >= {l0}, intermediate >= {i0}"
        )
    r = h0 / hidden
    fields = old.to_dict()
    fields.update(
        hidden_size=hidden,
        num_hidden_layers=layers,
        intermediate_size=inter,
        num_attention_heads=heads,
        num_key_value_heads=heads // group,
        head_dim=d,
        rms_norm_eps=old.rms_norm_eps * r,
    )
    fields.pop("layer_types", None)  # sized by num_hidden_layers; rebuilt by the config
    config = LlamaConfig.from_dict(fields)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        big = LlamaForCausalLM(config).to(model.dtype)

    # Where each old coordinate goes: the stream's are the first h0; a head's coordinate i
    # goes to stride * i within its half (rotary pairs (i, i + d/2) keep their frequencies).
    stride, half0 = d // d0, d0 // 2
    within = torch.cat([torch.arange(half0) * stride, d // 2 + torch.arange(half0) * stride])

    def head_rows(n: int) -> torch.Tensor:
        return (torch.arange(n)[:, None] * d + within[None, :]).reshape(-1)

    stream, q_rows, kv_rows = torch.arange(h0), head_rows(n0), head_rows(kv0)
    units = torch.arange(i0)

    def put(dst: torch.Tensor, src: torch.Tensor, rows: torch.Tensor, cols: Any = None) -> None:
        dst.zero_()
        if cols is None:
            dst[rows] = src
        else:
            dst[rows[:, None], cols[None, :]] = src

    scale_norm = math.sqrt(r)
    with torch.no_grad():
        put(big.model.embed_tokens.weight, model.model.embed_tokens.weight, torch.arange(old.vocab_size), stream)  # fmt: skip
        put(big.model.norm.weight, model.model.norm.weight * scale_norm, stream)
        if not config.tie_word_embeddings:
            put(big.lm_head.weight, model.lm_head.weight, torch.arange(old.vocab_size), stream)
        for k, new in enumerate(big.model.layers):
            a, m = new.self_attn, new.mlp
            if k >= l0:  # a new layer: random, but writes nothing to the residual stream
                a.o_proj.weight.zero_()
                m.down_proj.weight.zero_()
                continue
            src = model.model.layers[k]
            sa, sm = src.self_attn, src.mlp
            put(new.input_layernorm.weight, src.input_layernorm.weight * scale_norm, stream)
            put(new.post_attention_layernorm.weight, src.post_attention_layernorm.weight * scale_norm, stream)  # fmt: skip
            put(a.q_proj.weight, sa.q_proj.weight * math.sqrt(stride), q_rows, stream)
            put(a.k_proj.weight, sa.k_proj.weight, kv_rows, stream)
            put(a.v_proj.weight, sa.v_proj.weight, kv_rows, stream)
            put(a.o_proj.weight, sa.o_proj.weight, stream, q_rows)
            put(m.gate_proj.weight, sm.gate_proj.weight, units, stream)
            put(m.up_proj.weight, sm.up_proj.weight, units, stream)
            put(m.down_proj.weight, sm.down_proj.weight, stream, units)
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                if getattr(getattr(sa, name), "bias", None) is not None:
                    raise ValueError("inflate supports Llamas without attention biases")
    big.generation_config = copy.deepcopy(model.generation_config)
    return big.eval()


def n_params(model: Any) -> int:
    """Distinct parameters (a tied ``lm_head`` counts once)."""
    return sum(p.numel() for p in model.parameters())


def toolworld_prompts(tokenizer: Any, *, level: int = 2, n: int = 4) -> list[list[int]]:
    """Token ids of ``n`` ToolWorld train prompts at ``level``, rendered as the runner renders
    them (system prompt, tool list, question, generation prompt)."""
    from agentropy.env.toolworld import ToolWorld, ToolWorldConfig

    world = ToolWorld(ToolWorldConfig(seed=0))
    out = []
    for task in world.tasks(split="train", level=level, n=n, seed=0):
        messages = [
            {"role": "system", "content": world.system_prompt()},
            {"role": "user", "content": task.question},
        ]
        text = tokenizer.apply_chat_template(
            messages, tools=world.tool_schemas(), tokenize=False, add_generation_prompt=True
        )
        out.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return out


def max_logit_diff(small: Any, big: Any, input_ids: list[list[int]]) -> float:
    """Largest ``|logit_small - logit_big|`` over every position and token of each sequence
    (one forward per sequence, no padding)."""
    import torch

    worst = 0.0
    with torch.no_grad():
        for ids in input_ids:
            x = torch.tensor([ids])
            diff = (small(input_ids=x).logits - big(input_ids=x).logits).abs().max()
            worst = max(worst, float(diff))
    return worst
