"""Multi-turn rollouts and training steps: agentropy's runner and trainer vs TRL's tool loop
(issue 18, target 2: >= 2x assistant tokens/s on the same agent, tools, tasks and batch).

Same model (the bootstrapped embedded agent, which calls ToolWorld tools; ``agentropy bootstrap``
builds it), same tokenizer and chat template, same ToolWorld tasks (level ``--level``, train
split), same tools and tool outputs (TRL gets them through ``environment_factory``: one
environment per rollout whose methods call the task's ToolWorld session, so the tool messages
are the same strings ours feed), temperature 1, same batch of ``tasks x group`` episodes.

- **Rollouts** (in this process, interleaved rounds, medians): ours is :func:`rollout`
  (KV-cached token-in/token-out decode loop, recording per-token entropies); TRL's is
  ``GRPOTrainer._generate`` inside ``_generate_and_score_completions`` (transformers
  ``generate`` per tool iteration on the concatenated ids, TRL's own tool loop), timed around
  ``_generate`` only. Reported: assistant tokens/s (TRL: completion tokens with
  ``tool_mask = 1``; ours: sampled assistant tokens) and tool turns/s (tool calls executed).
- **Training step** (each trainer in its own process, steps interleaved: the parent hands a
  baton back and forth, so step k of one trainer runs between steps k of the other, in
  alternating order, and load drift hits both alike): wall and CPU time of a whole multi-turn
  GRPO step (rollouts + scoring + loss + backward + optimizer), median and range over the
  steps after the first (ours: also before the last, which runs the final evaluation). Ours is
  timed from one training rollout's start to the next (the runner call is wrapped in the
  worker), TRL's by a callback from ``on_step_begin`` to ``on_step_end``.

CPU time (``time.process_time``: every thread of the process, so work a library does in
helper threads counts too) does not count the time a process waits for a core, so on a loaded
machine its ratios are the ones to read; wall times are given next to them.

Budgets differ in kind: ours caps assistant tokens per turn and per episode and the number of
turns; TRL caps everything after the prompt (tool messages included) with
``max_completion_length`` and the tool iterations with ``max_tool_calling_iterations``. Both are
set so that episodes can finish (``--turns`` turns, ``--length`` tokens); the rates above are per
token and per tool call, so they compare the loops, not the budgets.

``--inflate HIDDEN,LAYERS[,HEAD_DIM]`` runs both sides on a larger model that computes the
embedded agent's function (``benchmarks/_inflate.py``: zero-padded width, heads and MLP units,
extra layers that add 0 to the residual stream), so the loops are compared at a realistic
model cost with the same tool-calling behaviour; the header gives its parameter count and its
largest logit difference from the embedded agent (rounding only).

    AGENTROPY_HOME=... .venv/bin/python benchmarks/bench_multiturn_vs_trl.py \
        [--tasks 4 --group 4 --turns 4 --length 160 --rounds 3 --steps 4 --inflate 512,8,64]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _measure import python_argv

THREADS = int(os.environ.get("BENCH_THREADS", "1"))
LR = 1e-6


def _agent(inflate: str | None = None) -> tuple[Any, Any]:
    """The embedded agent and its tokenizer; with ``inflate`` (``--inflate``), the agent enlarged
    by :func:`_inflate.inflate` (same function, a larger model's cost)."""
    import torch

    from agentropy import integrations as adapter
    from agentropy.agent import tiny
    from agentropy.agent.shipped import shipped_agent_path

    torch.set_num_threads(THREADS)
    # The agent shipped in the repository, else the one `agentropy bootstrap` built.
    path = shipped_agent_path() or tiny.default_agent_path()
    if not (path / "config.json").is_file():
        raise SystemExit(f"no embedded agent at {path}; run `agentropy bootstrap` first")
    model, tokenizer = tiny.load_agent(path)
    if inflate:
        model = _inflated(model, inflate)
    return model, adapter.prepare_tokenizer(tokenizer)


def _inflated(model: Any, spec: str) -> Any:
    """``model`` enlarged as ``HIDDEN,LAYERS[,HEAD_DIM]`` says (the same seed in every process,
    so both trainers get the same weights)."""
    from _inflate import inflate

    hidden, layers, *head_dim = (int(x) for x in spec.split(","))
    return inflate(model, hidden=hidden, layers=layers, head_dim=head_dim[0] if head_dim else None)


def _inflation_record(args: argparse.Namespace) -> str:
    """The header's line on the inflated model: its shape, parameter count, and how far its
    logits are from the embedded agent's on real prompts."""
    from _inflate import max_logit_diff, n_params, toolworld_prompts

    small, tokenizer = _agent()
    big = _inflated(small, args.inflate)
    c = big.config
    diff = max_logit_diff(small, big, toolworld_prompts(tokenizer, level=args.level, n=4))
    return (
        f"Inflated (`--inflate {args.inflate}`, benchmarks/_inflate.py): hidden {c.hidden_size}, "
        f"{c.num_hidden_layers} layers, {c.num_attention_heads} heads x {c.head_dim}, MLP "
        f"{c.intermediate_size}: {n_params(big):,} parameters (embedded agent: "
        f"{n_params(small):,}); max |logit difference| vs the embedded agent on 4 level-"
        f"{args.level} prompts: {diff:.1e} (fp32).\n"
    )


def _world_and_tasks(level: int, n: int) -> tuple[Any, list[Any]]:
    from agentropy.env.toolworld import ToolWorld, ToolWorldConfig

    world = ToolWorld(ToolWorldConfig(seed=0))
    return world, world.tasks(split="train", level=level, n=n, seed=0)


def _environment_class(world: Any, tasks: dict[str, Any]) -> type:
    """TRL environment: one per rollout; its public methods are the ToolWorld tools.

    Docstrings and signatures give TRL the same rendered tool list as ``world.tool_schemas()``
    (the chat template prints names, parameter types and descriptions). Tool outputs are the
    session's content strings, as our runner feeds them, failures included.
    """
    from agentropy.trace import ToolCall

    class ToolWorldEnv:
        calls = 0  # tool calls executed, over all instances (counted by the benchmark)

        def __init__(self) -> None:
            self.session: Any = None

        def reset(self, **row: Any) -> None:
            self.session = world.start(tasks[row["task_id"]])

        def _call(self, name: str, **arguments: Any) -> str:
            type(self).calls += 1
            return self.session.call(ToolCall(name, arguments)).content

        def lookup(self, entity: str, attribute: str) -> str:
            """Look up an attribute of an entity.

            Args:
                entity: entity name, e.g. Kalo
                attribute: one of: age, weight, height, distance
            """
            return self._call("lookup", entity=entity, attribute=attribute)

        def backup_lookup(self, entity: str, attribute: str) -> str:
            """Fail-over copy of lookup; works only while lookup is down.

            Args:
                entity: entity name, e.g. Kalo
                attribute: one of: age, weight, height, distance
            """
            return self._call("backup_lookup", entity=entity, attribute=attribute)

        def calc(self, expression: str) -> str:
            """Integer arithmetic with + - * and parentheses.

            Args:
                expression: e.g. 42 + 17
            """
            return self._call("calc", expression=expression)

        def convert(self, value: int, from_unit: str, to_unit: str) -> str:
            """Convert a whole number between units.

            Args:
                value: the number
                from_unit: one of: years, months, kg, g, km, m, cm
                to_unit: one of: years, months, kg, g, km, m, cm
            """
            return self._call("convert", value=value, from_unit=from_unit, to_unit=to_unit)

    return ToolWorldEnv


def _reward_fn(tasks: dict[str, Any]) -> Any:
    from agentropy.env.format import parse_assistant

    def reward(completions: list, task_id: list, **_: Any) -> list[float]:
        out = []
        for c, tid in zip(completions, task_id, strict=True):
            parsed = parse_assistant(str(c[-1].get("content", "")))
            ok = parsed.kind == "answer" and str(parsed.answer).strip() == tasks[tid].answer
            out.append(1.0 if ok else 0.0)
        return out

    return reward


def _trl_trainer(model, tokenizer, world, tasks, args, out: str, steps: int, callbacks=()):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    by_id = {t.task_id: t for t in tasks}
    rows = {
        "prompt": [
            [
                {"role": "system", "content": world.system_prompt()},
                {"role": "user", "content": t.question},
            ]
            for t in tasks
        ],
        "task_id": [t.task_id for t in tasks],
    }
    config = GRPOConfig(
        output_dir=out,
        per_device_train_batch_size=args.tasks * args.group,
        num_generations=args.group,
        max_completion_length=args.length,
        max_tool_calling_iterations=args.turns - 1,
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
    return GRPOTrainer(
        model=model,
        reward_funcs=_reward_fn(by_id),
        args=config,
        train_dataset=Dataset.from_dict(rows),
        processing_class=tokenizer,
        environment_factory=_environment_class(world, by_id),
        callbacks=list(callbacks),
    )


# --------------------------------------------------------------------------------------------
# Rollouts, interleaved in this process
# --------------------------------------------------------------------------------------------


def rollouts(args: argparse.Namespace) -> dict:
    from agentropy.agent.runner import RunnerConfig, rollout
    from agentropy.control.base import ConstantTemperature

    model, tokenizer = _agent(args.inflate)
    world, tasks = _world_and_tasks(args.level, args.tasks)
    batch = [t for t in tasks for _ in range(args.group)]
    ours_cfg = RunnerConfig(
        max_turns=args.turns,
        max_new_tokens=args.length,
        max_tokens=args.length,
        batch_size=len(batch),
    )
    with tempfile.TemporaryDirectory() as out:
        trainer = _trl_trainer(model, tokenizer, world, tasks, args, out, steps=1)
        env_cls = trainer.environment_factories[None]
        timed: dict[str, float] = {}
        inner = trainer._generate

        def generate(prompts):
            t0, c0 = time.perf_counter(), time.process_time()
            result = inner(prompts)
            timed["s"] = time.perf_counter() - t0
            timed["cpu"] = time.process_time() - c0
            timed["assistant_tokens"] = float(sum(sum(m) for m in result[2]))
            return result

        trainer._generate = generate
        inputs = [
            {
                "prompt": [
                    {"role": "system", "content": world.system_prompt()},
                    {"role": "user", "content": t.question},
                ],
                "task_id": t.task_id,
            }
            for t in batch
        ]

        def run_trl() -> dict:
            env_cls.calls = 0
            trainer.model.eval()
            trainer._generate_and_score_completions([dict(x) for x in inputs])
            return {
                "s": timed["s"],
                "cpu": timed["cpu"],
                "tokens": timed["assistant_tokens"],
                "tools": env_cls.calls,
            }

        def run_ours(seed: int) -> dict:
            t0, c0 = time.perf_counter(), time.process_time()
            eps = rollout(
                model, tokenizer, world, batch, schedule=ConstantTemperature(1.0),
                config=ours_cfg, seed=seed,
            )  # fmt: skip
            s, cpu = time.perf_counter() - t0, time.process_time() - c0
            tokens = sum(t.n_tokens for e in eps for t in e.assistant_turns)
            tools = sum(1 for e in eps for t in e.turns if t.role == "tool")
            return {"s": s, "cpu": cpu, "tokens": float(tokens), "tools": tools}

        run_trl(), run_ours(0)  # warm-up
        res: dict[str, list[dict]] = {"ours": [], "trl": []}
        for r in range(args.rounds):  # alternating order: neither side always runs first
            if r % 2:
                res["trl"].append(run_trl())
            res["ours"].append(run_ours(r + 1))
            if not r % 2:
                res["trl"].append(run_trl())
    return res


# --------------------------------------------------------------------------------------------
# Training steps: each trainer in its own process, steps interleaved by a baton
# --------------------------------------------------------------------------------------------


class _Baton:
    """The worker's side of the baton: before each training step it prints ``@@wait`` and
    blocks until the parent writes a line on stdin; after the step it prints ``@@done <wall s>
    <cpu s>``. Only ``@@`` lines are protocol (trainers print their own logs)."""

    def __init__(self) -> None:
        self.t0: float | None = None
        self.c0 = 0.0

    def begin(self) -> None:
        print("@@wait", flush=True)
        if not sys.stdin.readline():
            raise SystemExit("parent closed the baton")
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def end(self) -> None:
        if self.t0 is not None:
            wall, cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
            print(f"@@done {wall:.6f} {cpu:.6f}", flush=True)
            self.t0 = None


def worker_ours(args: argparse.Namespace) -> None:
    import agentropy.rl.trainer as trainer_mod
    from agentropy.rl.config import TrainConfig

    model, tokenizer = _agent(args.inflate)
    baton = _Baton()
    inner = trainer_mod.rollout

    def rollout(*a: Any, **kw: Any) -> Any:
        # A training step starts with its rollout; evaluations (policy "eval:...") are inside
        # the step that runs them. The previous step ends where the next one starts.
        if not str(kw.get("policy_name") or "").startswith("eval:"):
            baton.end()
            baton.begin()
        return inner(*a, **kw)

    trainer_mod.rollout = rollout
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            out=os.path.join(out, "run"),
            seed=0,
            steps=args.steps,
            tasks_per_step=args.tasks,
            group_size=args.group,
            policy="constant:1.0",
            max_turns=args.turns,
            max_new_tokens=args.length,
            max_tokens=args.length,
            rollout_batch_size=args.tasks * args.group,
            loss="vanilla",
            lr=LR,
            ppo_epochs=1,
            minibatch_size=args.tasks * args.group,
            levels=(args.level,),
            start_level=args.level,
            mix_lower=0.0,
            eval_every=10**6,
            eval_episodes=1,
            checkpoint_every=10**6,
            tensorboard=False,
            progress=False,
        )
        trainer_mod.train(config, model=model, tokenizer=tokenizer)
    baton.end()


def worker_trl(args: argparse.Namespace) -> None:
    from transformers import TrainerCallback

    baton = _Baton()

    class StepBaton(TrainerCallback):
        def on_step_begin(self, a, state, control, **kwargs):
            baton.begin()

        def on_step_end(self, a, state, control, **kwargs):
            baton.end()

    model, tokenizer = _agent(args.inflate)
    world, tasks = _world_and_tasks(args.level, args.tasks * args.steps)
    model.train()
    with tempfile.TemporaryDirectory() as out:
        trainer = _trl_trainer(
            model, tokenizer, world, tasks, args, out, steps=args.steps, callbacks=[StepBaton()]
        )
        trainer.train()


def _worker_argv(kind: str, args: argparse.Namespace) -> list[str]:
    flags = [f"--{k}={getattr(args, k)}" for k in ("tasks", "group", "turns", "length", "steps")]
    if args.inflate:
        flags.append(f"--inflate={args.inflate}")
    return python_argv(__file__, f"--worker={kind}", f"--level={args.level}", *flags)


def interleaved_steps(args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    """Start both trainers, then hand the baton to each in turn (order alternating per step);
    return each one's ``(wall s, cpu s)`` per step."""
    import contextlib
    import subprocess

    times: dict[str, list[tuple[float, float]]] = {"ours": [], "trl": []}
    with contextlib.ExitStack() as stack:
        logs = {k: stack.enter_context(tempfile.TemporaryFile(mode="w+")) for k in times}
        procs = {
            kind: stack.enter_context(
                subprocess.Popen(
                    _worker_argv(kind, args),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=logs[kind],
                    text=True,
                    bufsize=1,
                    env=dict(os.environ),
                )
            )
            for kind in times
        }

        def failure(kind: str, what: str) -> RuntimeError:
            procs[kind].kill()
            procs[kind].wait()
            logs[kind].seek(0)
            return RuntimeError(f"{kind} trainer {what}:\n{logs[kind].read()[-4000:]}")

        def expect(kind: str, word: str) -> list[str]:
            out = procs[kind].stdout
            assert out is not None
            for line in out:
                if line.startswith("@@" + word):
                    return line.split()[1:]
            raise failure(kind, f"exited without {word!r}")

        try:
            for step in range(args.steps):
                for kind in ("ours", "trl") if step % 2 == 0 else ("trl", "ours"):
                    expect(kind, "wait")
                    stdin = procs[kind].stdin
                    assert stdin is not None
                    stdin.write("go\n")
                    stdin.flush()
                    wall, cpu = expect(kind, "done")
                    times[kind].append((float(wall), float(cpu)))
            for kind, p in procs.items():
                if p.wait(timeout=600) != 0:
                    raise failure(kind, "failed")
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=4, help="distinct tasks per batch")
    ap.add_argument("--group", type=int, default=4, help="episodes per task (GRPO group)")
    ap.add_argument("--turns", type=int, default=4, help="assistant turns per episode at most")
    ap.add_argument("--length", type=int, default=160, help="token budget (see docstring)")
    ap.add_argument("--level", type=int, default=2, help="ToolWorld level of the tasks")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rollout rounds (0: skip)")
    ap.add_argument(
        "--steps", type=int, default=6, help="training steps per trainer, interleaved (0: skip)"
    )
    ap.add_argument(
        "--inflate",
        default=None,
        metavar="HIDDEN,LAYERS[,HEAD_DIM]",
        help="run both sides on the embedded agent enlarged to this shape, computing the same "
        "function (benchmarks/_inflate.py); default: the embedded agent as it is",
    )
    ap.add_argument("--worker", choices=("ours", "trl"), default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        (worker_ours if args.worker == "ours" else worker_trl)(args)
        return

    inflation = _inflation_record(args) if args.inflate else ""
    roll = rollouts(args) if args.rounds > 0 else {}
    steps = interleaved_steps(args) if args.steps > 2 else {}
    _report(args, roll, steps, inflation)


def _spread(xs: list[float], fmt: str = "{:,.1f}") -> str:
    """``median [min-max]``."""
    med, lo, hi = statistics.median(xs), min(xs), max(xs)
    return f"{fmt.format(med)} [{fmt.format(lo)}-{fmt.format(hi)}]"


def _report(args: argparse.Namespace, roll: dict, steps: dict, inflation: str = "") -> None:
    print(
        f"\n### Multi-turn vs TRL ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{platform.machine()} {os.cpu_count()} CPUs, {THREADS} thread(s) per process)\n"
    )
    print(
        f"Embedded agent, ToolWorld level {args.level} train tasks: {args.tasks} tasks x "
        f"{args.group} = batch {args.tasks * args.group}, <= {args.turns} turns, budget "
        f"{args.length} tokens, T = 1.\n"
    )
    if inflation:
        print(inflation)
    if roll:
        n = len(roll["ours"])
        print(
            f"Rollouts: {n} interleaved rounds in one process; median [min-max] over rounds; "
            "ratios are per round (paired), then median [min-max].\n"
        )
        print("| metric | agentropy | TRL | agentropy / TRL |")
        print("| --- | ---: | ---: | ---: |")
        for key, label in (("tokens", "assistant tokens"), ("tools", "tool turns")):
            for clock, unit in (("s", "wall s"), ("cpu", "CPU s")):
                ours = [r[key] / r[clock] for r in roll["ours"]]
                trl = [r[key] / r[clock] for r in roll["trl"]]
                ratio = [o / t if t else float("nan") for o, t in zip(ours, trl, strict=True)]
                print(
                    f"| {label} / {unit} | {_spread(ours)} | {_spread(trl)} | "
                    f"{_spread(ratio, '{:.2f}')}x |"
                )
        for key, label in (
            ("s", "rollout wall s"),
            ("cpu", "rollout CPU s"),
            ("tokens", "assistant tokens"),
            ("tools", "tool turns"),
        ):
            ours = [r[key] for r in roll["ours"]]
            trl = [r[key] for r in roll["trl"]]
            ratio = [o / t if t else float("nan") for o, t in zip(ours, trl, strict=True)]
            print(
                f"| {label} (per batch) | {_spread(ours, '{:,.2f}')} | {_spread(trl, '{:,.2f}')} "
                f"| {_spread(ratio, '{:.2f}')} |"
            )
    if steps:
        # Drop the first step of each (warm-up) and our last (it runs the final evaluation).
        ours = steps["ours"][1:-1]
        trl = steps["trl"][1 : len(ours) + 1]
        print(
            f"\nTraining steps: both trainers in their own processes, steps interleaved (baton, "
            f"order alternating); steps 2..{len(ours) + 1} of {args.steps}; median [min-max]; "
            "ratios per step pair.\n"
        )
        print("| whole GRPO step | agentropy | TRL | agentropy / TRL |")
        print("| --- | ---: | ---: | ---: |")
        for i, unit in ((0, "wall s"), (1, "CPU s")):
            o = [x[i] for x in ours]
            t = [x[i] for x in trl]
            ratio = [a / b for a, b in zip(o, t, strict=True)]
            print(
                f"| {unit} | {_spread(o, '{:.2f}')} | {_spread(t, '{:.2f}')} | "
                f"{_spread(ratio, '{:.2f}')} |"
            )
    print(
        f"\nLoad average (1, 5, 15 min) at the end: {os.getloadavg()}; command: `python {' '.join(sys.argv)}`"
    )


if __name__ == "__main__":
    main()
