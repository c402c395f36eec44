"""Throughput of ``agentropy score`` against the naive loop a user would write.

Same random-weight model (a Llama over the embedded agent's tokenizer, ``--hidden`` wide,
``--layers`` deep) and the same multi-turn tool-use conversations (``--conversations`` of
``--turns`` assistant turns, each followed by a tool result, every third one a failure):

- **naive**: for each conversation, for each assistant turn, re-render the prefix up to and
  including that turn with the chat template, run one full forward over it and take the
  entropy / log-prob of that turn's tokens (locating them by rendering the prefix before it).
  Quadratic in the number of turns: every turn re-reads the whole conversation so far.
- **score**: :func:`agentropy.agent.score.score_conversations` (one forward per conversation,
  batched by length, logits only at assistant positions).

Each variant runs in its own process (``_measure.run_isolated``) so peak RSS is its own. Prints a
markdown table (tokens/s, wall time, peak RSS, ratio) and the max |difference| between the two
variants' entropies (they must agree: same tokens, same model).

    .venv/bin/python benchmarks/bench_score.py
    .venv/bin/python benchmarks/bench_score.py --conversations 16 --turns 12 --threads 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))


def _setup(args: argparse.Namespace) -> tuple[Any, Any, list[Any]]:
    import torch
    import transformers

    from agentropy.agent.tiny import build_tokenizer
    from agentropy.trace.importers.chat import Conversation, validate_messages

    torch.manual_seed(0)
    tok = build_tokenizer()
    cfg = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=2 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=8192, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(cfg).eval()
    convs = []
    for c in range(args.conversations):
        msgs: list[dict[str, Any]] = [
            {"role": "system", "content": "You answer questions with tools. " * 4},
            {"role": "user", "content": f"Question {c}: how old is entity number {c}?"},
        ]
        for t in range(args.turns):
            msgs.append({"role": "assistant", "content": (
                f"Step {t}: I will look up entity {c} again, carefully. " * 2
                + f'<tool_call>{{"name": "lookup", "arguments": {{"entity": "E{c}"}}}}</tool_call>'
            )})  # fmt: skip
            failed = t % 3 == 0
            content = "error: lookup: service unavailable" if failed else f'{{"age": {c + t}}}'
            msgs.append({"role": "tool", "content": content})
        msgs.append({"role": "assistant", "content": f"<answer>{c}</answer>"})
        convs.append(Conversation(id=str(c), messages=validate_messages(msgs)))
    return model, tok, convs


def _naive(model: Any, tok: Any, convs: list[Any]) -> list[list[float]]:
    """What a user would write: one full forward per assistant turn on the re-rendered prefix."""
    import torch

    out = []
    with torch.inference_mode():
        for conv in convs:
            ent: list[float] = []
            for i, m in enumerate(conv.messages):
                if m["role"] != "assistant":
                    continue
                before = tok.apply_chat_template(conv.messages[:i], tokenize=False,
                                                 add_generation_prompt=True)  # fmt: skip
                upto = tok.apply_chat_template(conv.messages[: i + 1], tokenize=False)
                a = len(tok(before, add_special_tokens=False)["input_ids"])
                ids = tok(upto, add_special_tokens=False)["input_ids"]
                b = ids.index(tok.eos_token_id, a) + 1  # through the turn's <|im_end|>
                logits = model(torch.tensor([ids[:b]])).logits[0, a - 1 : b - 1].float()
                logp = torch.log_softmax(logits, -1)
                ent.extend((-(logp.exp() * logp).sum(-1)).tolist())
            out.append(ent)
    return out


def _score(model: Any, tok: Any, convs: list[Any], batch_tokens: int) -> list[list[float]]:
    from agentropy.agent.score import ScoreConfig, score_conversations

    eps = score_conversations(model, tok, convs, config=ScoreConfig(max_batch_tokens=batch_tokens))
    return [[float(x) for t in ep.assistant_turns for x in t.entropy] for ep in eps]


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    model, tok, convs = _setup(args)
    if args.worker == "setup":
        print(json.dumps({"tokens": 0, "seconds": 0.0, "entropy": []}))
        return
    t0 = time.perf_counter()
    if args.worker == "naive":
        ent = _naive(model, tok, convs)
    else:
        ent = _score(model, tok, convs, args.batch_tokens)
    dt_s = time.perf_counter() - t0
    print(json.dumps({"tokens": sum(map(len, ent)), "seconds": dt_s, "entropy": ent}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conversations", type=int, default=16)
    ap.add_argument("--turns", type=int, default=8, help="assistant turns with a tool call")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-tokens", type=int, default=None, help="default: score's own")
    ap.add_argument("--worker", choices=["naive", "score", "setup"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    from _measure import run_isolated

    base = [sys.executable, __file__, *sys.argv[1:]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH")]))}  # fmt: skip
    res = {}
    for name in ("setup", "naive", "score"):
        m = run_isolated([*base, "--worker", name], env=env).check()
        res[name] = (json.loads(m.stdout), m.peak_rss_bytes / 2**20)
    (nv, nv_rss), (sc, sc_rss), (_, base_rss) = res["naive"], res["score"], res["setup"]
    diff = max(abs(a - b) for x, y in zip(nv["entropy"], sc["entropy"], strict=True)
               for a, b in zip(x, y, strict=True))  # fmt: skip
    tps = {k: v[0]["tokens"] / v[0]["seconds"] for k, v in res.items() if k != "setup"}
    print(f"bench_score: {args.conversations} conversations x {args.turns + 1} assistant turns, "
          f"Llama hidden={args.hidden} layers={args.layers}, threads={args.threads}; "
          f"{platform.processor() or platform.machine()}, {dt.date.today()}")  # fmt: skip
    print()
    print("| variant | assistant tokens | seconds | tokens/s | peak RSS (MiB) | over setup (MiB) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for k, (r, rss) in (("naive loop", res["naive"]), ("agentropy score", res["score"])):
        print(f"| {k} | {r['tokens']} | {r['seconds']:.2f} | "
              f"{r['tokens'] / r['seconds']:.0f} | {rss:.0f} | {rss - base_rss:.0f} |")  # fmt: skip
    print()
    print(f"speed-up: {tps['score'] / tps['naive']:.1f}x; max |entropy difference| = {diff:.2e} "
          f"nats; peak RSS ratio score/naive = {sc_rss / nv_rss:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
