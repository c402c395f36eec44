"""GPU check (issue 18, target 4): the entropy kernel and the trainer step against the TRL and
verl formulas, bf16, realistic shapes. One short script, time-boxed, for a session lent a GPU.

Three parts, each variant timed side by side in this one process (median of ``--repeats`` after
a warm-up, ``torch.cuda.synchronize`` around each call; peak memory is
``torch.cuda.max_memory_allocated`` above what was allocated before the call, CUDA only):

1. **Entropy kernel**, no gradient, logits ``--shape`` (default 8 x 4096 x 151,936) in
   ``--dtype`` (default bf16): ours (:func:`agentropy.entropy.token_entropy`: chunked, fp32
   arithmetic) vs TRL's ``trl.trainer.utils.entropy_from_logits`` (the installed TRL, chunked, in
   the input dtype) vs verl's formula ``logsumexp(x) - sum(softmax(x) * x)`` in the input dtype
   (verl is not installed in this environment; the formula is verl's
   ``entropy_from_logits``). Error: max |entropy - fp64 entropy| over the first 256 rows.
2. **Loss side of a training step** from the same logits as a leaf requiring grad: log-probs of
   given tokens and the entropy, ``loss = -(logprob * adv).mean() - 0.01 * entropy.mean()``,
   forward + backward. Ours: what our trainer calls (``logprobs_and_entropy`` then
   ``token_entropy``); TRL: ``selective_log_softmax`` + ``entropy_from_logits``; verl formula:
   ``log_softmax(x).gather(tokens)`` + the formula above.
3. **Whole trainer step** (``--model qwen3-0.6b``, skipped with ``--model none``): a random
   ``Qwen3ForCausalLM`` of Qwen3-0.6B's shape in bf16, ``--model-batch`` x ``--model-len``
   tokens: forward, the loss of part 2 with each formula, backward, AdamW step.

Absolute times belong to the GPU's record (BENCHMARKS.md keeps them next to the machine); the
ratios are what compares. On a CPU the script runs at small shapes (``--quick``), which the
tests use to keep it working:

    PYTHONPATH=src python benchmarks/bench_gpu.py                 # on the GPU machine
    PYTHONPATH=src python benchmarks/bench_gpu.py --quick --device cpu
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

COEF = 0.01  # entropy coefficient of the loss in parts 2 and 3
ERR_ROWS = 256  # rows compared against fp64
QUICK = {"shape": "2,64,2048", "model_batch": 2, "model_len": 32}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, float]:
    """(median seconds, peak extra MB) of ``fn()`` after one warm-up call."""
    fn()
    _sync(device)
    times, peak = [], float("nan")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        del out
        if device.type == "cuda":
            peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return statistics.median(times), peak


def entropy_variants() -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    from trl.trainer.utils import entropy_from_logits

    from agentropy.entropy import token_entropy

    def verl_formula(x: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(x, dim=-1) - (torch.softmax(x, dim=-1) * x).sum(-1)

    return {"agentropy": token_entropy, "trl": entropy_from_logits, "verl formula": verl_formula}


def loss_variants() -> dict[str, Callable[[torch.Tensor, torch.Tensor], tuple[Any, Any]]]:
    """Each maps (logits, tokens) to (logprob, entropy), as the framework's trainer gets them."""
    from trl.trainer.utils import entropy_from_logits, selective_log_softmax

    from agentropy.entropy import logprobs_and_entropy, token_entropy

    ent = entropy_variants()["verl formula"]

    def ours(x: torch.Tensor, tok: torch.Tensor) -> tuple[Any, Any]:
        lp, _ = logprobs_and_entropy(x, tok)
        return lp, token_entropy(x)

    def trl(x: torch.Tensor, tok: torch.Tensor) -> tuple[Any, Any]:
        return selective_log_softmax(x, tok), entropy_from_logits(x)

    def verl(x: torch.Tensor, tok: torch.Tensor) -> tuple[Any, Any]:
        lp = torch.log_softmax(x, dim=-1).gather(-1, tok.unsqueeze(-1)).squeeze(-1)
        return lp, ent(x)

    return {"agentropy": ours, "trl": trl, "verl formula": verl}


def _loss(lp: torch.Tensor, h: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    return -(lp.float() * adv).mean() - COEF * h.float().mean()


def make_logits(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(0)
    return (torch.randn(shape, generator=g, device=device, dtype=torch.float32) * 3).to(dtype)


def part_entropy(x: torch.Tensor, repeats: int) -> list[dict]:
    flat = x.reshape(-1, x.shape[-1])[:ERR_ROWS]
    ref = entropy_variants()["verl formula"](flat.double())
    rows = []
    with torch.no_grad():
        for name, fn in entropy_variants().items():
            s, mb = timed(lambda fn=fn: fn(x), x.device, repeats)
            err = float((fn(flat).double() - ref).abs().max())
            rows.append({"variant": name, "s": s, "peak_mb": mb, "max_err_nats": err})
    return rows


def part_loss(x: torch.Tensor, repeats: int) -> list[dict]:
    g = torch.Generator(device=x.device).manual_seed(1)
    tok = torch.randint(0, x.shape[-1], x.shape[:-1], generator=g, device=x.device)
    adv = torch.randn(x.shape[:-1], generator=g, device=x.device)
    rows = []
    for name, fn in loss_variants().items():
        leaf = x.detach().requires_grad_(True)

        def step(fn: Callable = fn, leaf: torch.Tensor = leaf) -> torch.Tensor:
            leaf.grad = None
            loss = _loss(*fn(leaf, tok), adv)
            loss.backward()
            return loss.detach()

        s, mb = timed(step, x.device, repeats)
        rows.append({"variant": name, "s": s, "peak_mb": mb, "loss": float(step())})
    return rows


def part_model(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[dict]:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    if args.quick:
        cfg = Qwen3Config(
            vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
        )  # fmt: skip
        torch.manual_seed(0)
        model = Qwen3ForCausalLM(cfg)
    else:
        from bench_controller import qwen3_shaped

        model, _ = qwen3_shaped()
    model = model.to(device=device, dtype=dtype).train()
    v = model.config.vocab_size
    g = torch.Generator(device=device).manual_seed(2)
    shape = (args.model_batch, args.model_len)
    ids = torch.randint(0, v, shape, generator=g, device=device)
    adv = torch.randn(args.model_batch, args.model_len - 1, generator=g, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    rows = []
    for name, fn in loss_variants().items():

        def step(fn: Callable = fn) -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            logits = model(input_ids=ids).logits[:, :-1]
            loss = _loss(*fn(logits, ids[:, 1:]), adv)
            loss.backward()
            opt.step()
            return loss.detach()

        s, mb = timed(step, device, args.repeats)
        rows.append({"variant": name, "s": s, "peak_mb": mb})
    n = sum(p.numel() for p in model.parameters()) / 1e6
    for r in rows:
        r["params_m"] = round(n, 1)
    return rows


def table(title: str, rows: list[dict], extra: str | None = None) -> str:
    base = rows[0]["s"]
    head = f"| variant | ms | x agentropy | peak extra MB |{f' {extra} |' if extra else ''}"
    lines = [f"\n{title}\n", head, "| --- | ---: | ---: | ---: |" + (" ---: |" if extra else "")]
    for r in rows:
        cell = f" {r[extra]:.2e} |" if extra else ""
        lines.append(
            f"| {r['variant']} | {r['s'] * 1e3:.2f} | {r['s'] / base:.2f} | {r['peak_mb']:.0f} |{cell}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", help="default cuda; without a GPU only --quick runs (on cpu)")
    ap.add_argument("--shape", default="8,4096,151936", help="B,T,V of the logits")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", default="qwen3-0.6b", choices=("qwen3-0.6b", "none"))
    ap.add_argument("--model-batch", type=int, default=8)
    ap.add_argument("--model-len", type=int, default=1024)
    ap.add_argument("--quick", action="store_true", help="small shapes (a CPU smoke run)")
    ap.add_argument("--json", help="also write the results here (JSON)")
    args = ap.parse_args(argv)
    if args.quick:
        args.shape, args.model_batch, args.model_len = (
            QUICK["shape"],
            QUICK["model_batch"],
            QUICK["model_len"],
        )
    if args.device is None:
        if not torch.cuda.is_available() and not args.quick:
            print("bench_gpu: no CUDA device here; skipped (--quick --device cpu: a smoke run)")
            return 0
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    shape = tuple(int(s) for s in args.shape.split(","))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"GPU check — {now}; device {device} ({gpu}); torch {torch.__version__}; {args.dtype}")

    x = make_logits(shape, dtype, device)
    results: dict[str, Any] = {"device": str(device), "name": gpu, "date": now}
    results["entropy"] = part_entropy(x, args.repeats)
    print(table(f"Entropy kernel, logits {shape}, no grad", results["entropy"], "max_err_nats"))
    results["loss"] = part_loss(x, args.repeats)
    print(table(f"Log-probs + entropy + loss, forward + backward, logits {shape}", results["loss"]))
    del x
    if args.model != "none":
        results["step"] = part_model(args, device, dtype)
        n = results["step"][0]["params_m"]
        print(
            table(
                f"Whole trainer step, random Qwen3 ({n}M parameters), "
                f"{args.model_batch} x {args.model_len} tokens",
                results["step"],
            )
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
