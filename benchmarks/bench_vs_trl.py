"""Peer benchmark: agentropy's GRPO trainer vs TRL's ``GRPOTrainer`` on the same tiny model.

Measured in one run, each trainer in its own subprocess (``_measure.run_isolated``: peak RSS from
the OS, ``ru_maxrss`` of that child), both with ``torch.set_num_threads(THREADS)``:

- **step time**: median wall time of a full optimizer step (generation + scoring + loss +
  backward + optimizer), over the steps after the first (warm-up). Ours reads
  ``time/step_s`` from ``metrics.parquet`` (the last step, which also runs the held-out
  evaluation, is left out); TRL's is timed by a callback from ``on_step_begin`` to
  ``on_step_end``.
- **peak RSS** of each process (imports included: TRL pulls in accelerate, datasets, pandas).
- **entropy agreement**: TRL's ``trl.trainer.utils.entropy_from_logits`` vs
  :func:`agentropy.entropy.token_entropy` on identical logits (random and a real forward pass);
  must agree to ~1e-5 nats. Their speed on the same logits is reported too.

What is held equal: the model (``build_model(TinyRecipe())`` seeded, i.e. the tiny agent's
architecture, randomly initialised), the tokenizer, the prompts (the runner's rendered ToolWorld
prompt text for the same level-1 train tasks, fed to TRL as plain-text prompts so the prompt
tokens are identical), ``G`` generations per prompt, the completion budget (ours: one turn of
``max_new_tokens = L``; TRL: ``max_completion_length = L``), temperature 1, one PPO pass per batch
(ours ``ppo_epochs=1``, one minibatch; TRL ``num_iterations=1``), the objective (ours ``vanilla``:
PPO clip-higher, token-mean; TRL ``loss_type="dapo"``, ``beta=0``), learning rate.
What is not: a randomly initialised model never emits a parseable tool call, so both sides run
single-turn episodes (the multi-turn tool loop is exercised by tests/test_trl_integration.py, not
timed here); our runner is a manual KV-cached decode loop recording per-token entropies,
temperatures and phases, TRL uses ``model.generate``; ours also writes traces and metrics to
disk every step and evaluates on held-out tasks at step 0 and at the end (outside the timed
steps).

    .venv/bin/python benchmarks/bench_vs_trl.py [--steps 5 --prompts 4 --group 4 --length 32]

Threads per process: 2 (``BENCH_THREADS`` overrides).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time

THREADS = int(os.environ.get("BENCH_THREADS", "2"))
LEVEL = 1
LR = 1e-5


def _model_and_tokenizer():
    import torch

    from agentropy.agent.tiny import TinyRecipe, build_model, build_tokenizer

    torch.set_num_threads(THREADS)
    tokenizer = build_tokenizer()
    model = build_model(TinyRecipe(seed=0), tokenizer)
    return model, tokenizer


def _prompts(tokenizer, n: int) -> list[str]:
    """The runner's rendered prompt text for ``n`` level-1 train tasks (same as our trainer's)."""
    from agentropy.env.toolworld import ToolWorld, ToolWorldConfig

    world = ToolWorld(ToolWorldConfig(seed=0))
    tasks = world.tasks(split="train", level=LEVEL, n=n, seed=0)
    out = []
    for task in tasks:
        messages = [
            {"role": "system", "content": world.system_prompt()},
            {"role": "user", "content": task.question},
        ]
        out.append(
            tokenizer.apply_chat_template(
                messages, tools=world.tool_schemas(), tokenize=False, add_generation_prompt=True
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# Workers (each runs in its own process)
# --------------------------------------------------------------------------------------------


def worker_ours(steps: int, prompts: int, group: int, length: int) -> dict:
    from agentropy.rl.config import TrainConfig
    from agentropy.rl.trainer import read_metrics, train

    model, tokenizer = _model_and_tokenizer()
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            out=os.path.join(out, "run"),
            seed=0,
            steps=steps,
            tasks_per_step=prompts,
            group_size=group,
            policy="constant:1.0",
            max_turns=1,
            max_new_tokens=length,
            max_tokens=length,
            rollout_batch_size=prompts * group,
            loss="vanilla",
            lr=LR,
            ppo_epochs=1,
            minibatch_size=prompts * group,
            levels=(LEVEL,),
            start_level=LEVEL,
            mix_lower=0.0,
            eval_every=10**6,
            eval_episodes=1,
            checkpoint_every=10**6,
            tensorboard=False,
            progress=False,
        )
        train(config, model=model, tokenizer=tokenizer)
        rows = read_metrics(config.out)
    times = [r["time/step_s"] for r in rows[1:-1]]  # drop warm-up and the evaluating last step
    tokens = [r.get("tokens/total") for r in rows]
    return {"step_s": statistics.median(times), "steps_timed": len(times), "tokens": tokens}


def worker_trl(steps: int, prompts: int, group: int, length: int) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    model, tokenizer = _model_and_tokenizer()
    texts = _prompts(tokenizer, prompts * steps)

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.t0)

    def reward(completions, **_):
        return [float(len(c)) for c in completions]  # any reward: cost does not depend on it

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out,
            per_device_train_batch_size=prompts * group,
            num_generations=group,
            max_completion_length=length,
            max_steps=steps,
            learning_rate=LR,
            temperature=1.0,
            loss_type="dapo",
            beta=0.0,
            num_iterations=1,
            logging_steps=1,
            use_cpu=True,
            bf16=False,
            activation_checkpointing=False,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            seed=0,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=reward,
            args=args,
            train_dataset=Dataset.from_dict({"prompt": texts}),
            processing_class=tokenizer,
            callbacks=[timer],
        )
        trainer.train()
        lengths = [h.get("completions/mean_length") for h in trainer.state.log_history]
    return {
        "step_s": statistics.median(timer.times[1:]),
        "steps_timed": len(timer.times) - 1,
        "mean_completion_length": [x for x in lengths if x is not None],
    }


# --------------------------------------------------------------------------------------------
# Entropy agreement (in the parent process)
# --------------------------------------------------------------------------------------------


def entropy_agreement(prompts: int, rounds: int = 5) -> list[dict]:
    import torch
    from trl.trainer.utils import entropy_from_logits

    from agentropy.entropy import token_entropy

    model, tokenizer = _model_and_tokenizer()
    texts = _prompts(tokenizer, prompts)
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        real = model(**batch).logits.float()  # (B, T, V)
    gen = torch.Generator().manual_seed(0)
    rand = torch.randn(real.shape, generator=gen) * 4.0
    out = []
    for name, logits in (("tiny model forward", real), ("random N(0, 4^2)", rand)):
        ours = token_entropy(logits)
        theirs = entropy_from_logits(logits)
        d = logits.double()
        ref = -(torch.softmax(d, -1) * torch.log_softmax(d, -1)).sum(-1)  # fp64 reference
        t_ours, t_theirs = [], []
        for _ in range(rounds):  # interleaved so machine drift hits both alike
            t = time.perf_counter()
            token_entropy(logits)
            t_ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            entropy_from_logits(logits)
            t_theirs.append(time.perf_counter() - t)
        out.append(
            {
                "logits": name,
                "shape": tuple(logits.shape),
                "max_abs_diff": float((ours - theirs).abs().max()),
                "ours_vs_fp64": float((ours.double() - ref).abs().max()),
                "trl_vs_fp64": float((theirs.double() - ref).abs().max()),
                "mean_entropy": float(ours.mean()),
                "ours_ms": 1e3 * statistics.median(t_ours),
                "trl_ms": 1e3 * statistics.median(t_theirs),
            }
        )
    return out


# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per trainer")
    parser.add_argument("--prompts", type=int, default=4, help="prompts (tasks) per step")
    parser.add_argument("--group", type=int, default=4, help="generations per prompt (G)")
    parser.add_argument("--length", type=int, default=32, help="completion tokens (L)")
    parser.add_argument("--worker", choices=("ours", "trl"), help=argparse.SUPPRESS)
    a = parser.parse_args()
    from agentropy.integrations._extras import require

    require("trl", extra="trl")  # fail at once, with the install hint, not inside a worker
    if a.steps < 3:
        parser.error("--steps must be >= 3 (the first step is warm-up, ours evaluates on the last)")
    if a.worker:
        fn = worker_ours if a.worker == "ours" else worker_trl
        print(json.dumps(fn(a.steps, a.prompts, a.group, a.length)))
        return

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _measure import python_argv, run_isolated

    args = ["--steps", str(a.steps), "--prompts", str(a.prompts), "--group", str(a.group),
            "--length", str(a.length)]  # fmt: skip
    results = {}
    for name in ("ours", "trl"):
        m = run_isolated(python_argv(__file__, *args, "--worker", name)).check()
        results[name] = {**json.loads(m.stdout.strip().splitlines()[-1]), "rss": m.peak_rss_bytes}
    agreement = entropy_agreement(a.prompts)

    ours, trl = results["ours"], results["trl"]
    import torch
    import trl as trl_pkg

    print(f"# agentropy vs TRL {trl_pkg.__version__} GRPO, tiny model on CPU\n")
    print(
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()} "
        f"{platform.processor() or ''} ({os.cpu_count()} CPUs, shared), torch {torch.__version__}, "
        f"{THREADS} threads per process; {a.prompts} prompts x G={a.group}, L={a.length} tokens, "
        f"{a.steps} steps (median of {ours['steps_timed']} / {trl['steps_timed']} timed)\n"
    )
    print("| metric | agentropy | TRL | agentropy / TRL |")
    print("| --- | ---: | ---: | ---: |")
    print(
        f"| step time (s) | {ours['step_s']:.2f} | {trl['step_s']:.2f} | "
        f"{ours['step_s'] / trl['step_s']:.2f} |"
    )
    mib = 2**20
    print(
        f"| peak RSS (MiB) | {ours['rss'] / mib:.0f} | {trl['rss'] / mib:.0f} | "
        f"{ours['rss'] / trl['rss']:.2f} |"
    )
    for row in agreement:
        print(
            f"| entropy time, {row['logits']} {row['shape']} (ms) | {row['ours_ms']:.1f} | "
            f"{row['trl_ms']:.1f} | {row['ours_ms'] / row['trl_ms']:.2f} |"
        )
    print()
    for row in agreement:
        print(
            f"- entropy agreement on {row['logits']} logits {row['shape']}: max |diff| = "
            f"{row['max_abs_diff']:.2e} nats; vs an fp64 reference: agentropy "
            f"{row['ours_vs_fp64']:.2e}, TRL {row['trl_vs_fp64']:.2e} (mean entropy "
            f"{row['mean_entropy']:.3f} nats)"
        )
    print(f"- TRL mean completion length per step: {trl.get('mean_completion_length')}")
    print(f"- agentropy assistant tokens per step: {ours.get('tokens')}")


if __name__ == "__main__":
    main()
