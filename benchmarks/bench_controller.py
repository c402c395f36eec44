"""Overhead of phase-controlled sampling vs a constant temperature (issue 18; targets <= 3% on
the embedded agent at batch 32 and <= 1% on a model of realistic shape).

Runs ``model.generate`` side by side in one process on the same prompts, same number of new
tokens (eos disabled), batch 32 by default:

- ``constant (generate's temperature)``: ``do_sample=True, temperature=0.7`` - the reference;
- ``constant via processor``: :class:`ScheduledTemperatureProcessor` with ``constant:0.7``
  (cost of the processor plumbing: entropies, records);
- ``phase``: the phase controller with a cheap token-table phase callback;
- ``edt``: the EDT peer.

Variants are interleaved round-robin and the median over rounds is reported, so drift on a
shared machine hits all of them alike. It also times ``PhaseTemperature.update`` alone.
Uses the bootstrapped tiny agent if it exists (never trains it), else a randomly initialised
``LlamaForCausalLM`` of the same size built in-process; the table says which. ``--model
qwen3-0.6b`` instead builds a randomly initialised ``Qwen3ForCausalLM`` with Qwen3-0.6B's shape
(28 layers, d = 1024, V = 151,936; no download), where one decoding step costs what it costs on a
real model.

The overhead column compares wall times of separate ``generate`` calls, so on a loaded machine
its noise can exceed a 1% effect; the last column (time measured inside our processor, as a
share of the same call) is the direct measurement and has no such noise.

    .venv/bin/python benchmarks/bench_controller.py [--batch 32 --tokens 128 --rounds 5]
    .venv/bin/python benchmarks/bench_controller.py --model qwen3-0.6b --batch 8 --tokens 8 --rounds 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import time

import torch
from transformers import LogitsProcessor

from agentropy.control.base import StepObservation, obs_arrays, state_arrays
from agentropy.control.hf import ScheduledTemperatureProcessor
from agentropy.control.temperature import PhaseTemperature, schedule_from_name
from agentropy.trace import PHASE_CODE


class Timed(LogitsProcessor):
    """Wraps a processor and accumulates the wall time and the CPU time of this thread spent
    inside it (CPU time does not count the time the process waits for a core, so its share is
    the one a loaded machine does not distort)."""

    def __init__(self, inner: LogitsProcessor) -> None:
        self.inner, self.seconds, self.cpu_seconds = inner, 0.0, 0.0

    def __call__(self, input_ids, scores):
        t0, c0 = time.perf_counter(), time.thread_time()
        out = self.inner(input_ids, scores)
        self.cpu_seconds += time.thread_time() - c0
        self.seconds += time.perf_counter() - t0
        return out


def qwen3_shaped():
    """(model, description): a random Qwen3ForCausalLM with Qwen3-0.6B's published shape."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        vocab_size=151_936,
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(cfg).eval()
    n = sum(p.numel() for p in model.parameters()) / 1e6
    return model, f"random Qwen3ForCausalLM, Qwen3-0.6B shape ({n:.0f}M parameters, V=151,936)"


def load_model():
    """(model, description): the embedded agent (shipped in the repository, else bootstrapped
    in the cache) if present, else a random model of its size."""
    try:
        from agentropy.agent import tiny
        from agentropy.agent.shipped import shipped_agent_path

        for path in (shipped_agent_path(), tiny.default_agent_path()):
            if path is not None and (path / "config.json").is_file():
                model, _ = tiny.load_agent(path)
                return model, f"embedded agent ({path.name}, V={model.config.vocab_size})"
        recipe = tiny.TinyRecipe()
        vocab = recipe.vocab_size + 32  # BPE vocab plus special/marker tokens, roughly
        dims = (recipe.hidden_size, recipe.n_layers, recipe.n_heads, recipe.intermediate_size)
    except ImportError:
        vocab, dims = 1056, (192, 4, 4, 512)
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, inter = dims
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    desc = f"random LlamaForCausalLM (tiny-agent size: V={vocab}, d={hidden}, L={layers})"
    return model, desc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per generate call")
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--span", type=int, default=16, help="tokens per phase span (spans mode)")
    ap.add_argument("--stress", action="store_true", help="token-table phases (see phase_fn)")
    ap.add_argument(
        "--model", choices=("agent", "qwen3-0.6b"), default="agent", help="model to generate with"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, desc = load_model() if args.model == "agent" else qwen3_shaped()
    model.generation_config.eos_token_id = None  # same number of tokens for every variant
    model.generation_config.pad_token_id = 0
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (args.batch, args.prompt), generator=g)
    mask = torch.ones_like(ids)
    # Cheap phase callbacks. "spans" (default): each row cycles plan -> act -> recover -> answer
    # in spans of --span tokens, offset per row (a quarter of tokens are recover, one trigger per
    # row every 4 spans: already far more failures than a real agent sees). "table" (--stress):
    # phase = a fixed random token -> phase table at the last token, so recover stretches start
    # and end every few tokens and the trigger path (baseline median) runs on almost every step.
    table = torch.tensor([PHASE_CODE["plan"]] * vocab)
    table[torch.randperm(vocab, generator=g)[: vocab // 2]] = PHASE_CODE["recover"]
    table[torch.randperm(vocab, generator=g)[: vocab // 8]] = PHASE_CODE["act"]
    cycle = torch.tensor([PHASE_CODE[p] for p in ("plan", "act", "recover", "answer")])
    offsets = torch.randint(0, 4 * args.span, (args.batch,), generator=g)

    # The spans are precomputed per sequence length: a phase callback's own cost is the
    # caller's (the runner's trackers), and four torch ops here were 5% of the processor.
    spans = [cycle[((n + offsets) // args.span) % 4] for n in range(args.prompt + args.tokens + 1)]

    def phase_fn(input_ids: torch.Tensor) -> torch.Tensor:
        if args.stress:
            return table[input_ids[:, -1]]
        return spans[input_ids.shape[1]]

    variants = {
        "constant 0.7 (generate's temperature)": (lambda: [], 0.7),
        "constant 0.7 via ScheduledTemperatureProcessor": (
            lambda: [ScheduledTemperatureProcessor(schedule_from_name("constant:0.7"))],
            1.0,
        ),
        "phase (ours)": (
            lambda: [ScheduledTemperatureProcessor(schedule_from_name("phase"), phase_fn)],
            1.0,
        ),
        "edt": (lambda: [ScheduledTemperatureProcessor(schedule_from_name("edt"), phase_fn)], 1.0),
    }

    def run(make, temperature):
        procs = [Timed(p) for p in make()]
        t0, c0 = time.perf_counter(), time.thread_time()
        with torch.no_grad():
            model.generate(
                ids,
                attention_mask=mask,
                logits_processor=procs,
                do_sample=True,
                temperature=temperature,
                top_k=None,
                top_p=None,
                max_new_tokens=args.tokens,
                min_new_tokens=args.tokens,
            )
        total, cpu = time.perf_counter() - t0, time.thread_time() - c0
        return total, sum(p.seconds for p in procs), sum(p.cpu_seconds for p in procs) / cpu

    for make, temp in variants.values():  # warm-up
        run(make, temp)
    times: dict[str, list[float]] = {k: [] for k in variants}
    inside: dict[str, list[float]] = {k: [] for k in variants}
    inside_cpu: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, (make, temp) in variants.items():
            total, in_proc, cpu_share = run(make, temp)
            times[name].append(total)
            inside[name].append(in_proc / total)
            inside_cpu[name].append(cpu_share)

    # The controller alone: one update per token for the whole batch.
    sched = PhaseTemperature()
    b = args.batch
    obs = [
        StepObservation(
            phase=phase_fn(torch.zeros(b, args.prompt + i, dtype=torch.long)),
            entropy=torch.rand(b, generator=g) * 3,
            prev_sampling_entropy=torch.rand(b, generator=g) * 3,
            active=torch.ones(b, dtype=torch.bool),
            reset=torch.zeros(b, dtype=torch.bool),
        )
        for i in range(args.tokens)
    ]
    state = sched.init(b)
    t0 = time.thread_time()
    for o in obs:
        _, state = sched.update(state, o)
    update_us = (time.thread_time() - t0) / len(obs) * 1e6
    obs_np = [obs_arrays(o) for o in obs]
    state = state_arrays(sched.init(b))
    t0 = time.thread_time()
    for o in obs_np:
        _, state = sched.update_arrays(state, o)
    arrays_us = (time.thread_time() - t0) / len(obs) * 1e6

    ref_name = "constant 0.7 (generate's temperature)"
    ref = statistics.median(times[ref_name])
    ref_min = min(times[ref_name])
    n_tok = args.batch * args.tokens
    print(
        f"\n### Controller overhead ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {args.threads} thread(s))\n"
    )
    mode = "token-table phases (stress)" if args.stress else f"phase spans of {args.span} tokens"
    print(f"Model: {desc}. Batch {args.batch}, prompt {args.prompt}, {args.tokens} new tokens, ")
    print(f"{mode}, ")
    print(f"{args.rounds} interleaved rounds (median; min in the overhead column too).\n")
    print(
        "| sampling | s / generate | ms / step | tokens / s | overhead vs constant "
        "(median / min) | time inside our processor | CPU time inside our processor |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, ts in times.items():
        med, best = statistics.median(ts), min(ts)
        share = statistics.median(inside[name]) * 100
        cpu_share = statistics.median(inside_cpu[name]) * 100
        print(
            f"| {name} | {med:.3f} | {med / args.tokens * 1e3:.2f} | {n_tok / med:,.0f} | "
            f"{(med / ref - 1) * 100:+.1f}% / {(best / ref_min - 1) * 100:+.1f}% | "
            f"{share:.1f}% | {cpu_share:.1f}% |"
        )
    print(
        f"\nThe phase controller alone, batch {b}, CPU µs per step: `update` (tensors) "
        f"{update_us:.0f}, `update_arrays` (NumPy, what the processor calls) {arrays_us:.0f}."
    )
    print(f"Load average (1, 5, 15 min) at the end: {os.getloadavg()}; command: `{_command()}`")


def _command() -> str:
    import sys

    return " ".join(["python", *sys.argv])


if __name__ == "__main__":
    main()
