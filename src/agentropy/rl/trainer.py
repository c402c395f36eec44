"""GRPO for multi-turn tool-using agents, on-policy with per-token temperatures.

:func:`train` is one loop that reads top to bottom: sample a batch of ToolWorld tasks from the
curriculum, roll each out ``G`` times through :func:`agentropy.agent.runner.rollout` with the
chosen sampling policy, normalise rewards within each task's group, run PPO epochs over
minibatches, adapt the entropy coefficients, evaluate on held-out tasks now and then, log,
checkpoint. The small pure helpers above it (advantages, batch construction, the forward pass)
are what the tests poke at.

How it departs from textbook GRPO (DeepSeekMath), and why:

1. **Multi-turn episodes, token-in/token-out.** A training sequence is exactly the token stream
   the runner fed the model (``meta["input_ids"]``): prompt, sampled assistant tokens, the
   runner-injected end-of-turn/header tokens and the tool messages. Only the sampled assistant
   tokens (``meta["assistant_spans"]``) carry loss; prompt, tool, injected and padding tokens are
   masked out (DESIGN.md, "Rules that prevent known bugs").
2. **Per-token temperature, still on-policy.** The runner records the temperature ``T_t`` each
   token was sampled at (the phase controller changes it token by token). Training recomputes
   ``log p(token)`` from ``softmax(logits / T_t)`` with that token's own ``T_t``
   (:func:`agentropy.entropy.logprobs_and_entropy` with a (B, T) temperature), so the PPO ratio
   compares like with like. ``onpolicy/logprob_mae`` (mean |rollout log-prob - recomputed
   log-prob| before the first update) checks it: ~1e-6, never more than float noise. Tokens
   sampled greedily (T = 0) have no sampling distribution to be on-policy to; they are masked
   from the loss and counted in ``tokens/greedy_masked``.
3. **Which entropy the entropy terms use: the model entropy at T = 1.** The entropy losses
   (``flat``, ``target``, ``rhythm``) shape the model's own distribution; the temperature is the
   sampling controller's business. Using the sampling entropy would make the loss chase whatever
   the controller did (a hot ``recover`` phase would look "explored enough" while the model itself
   stays collapsed) and would count the same lever twice. The model entropy is also what the
   runner records as ``entropy`` and what the analyzer's eruptions and training cycles are
   computed from, so loss targets, metrics and analysis share one unit.
4. **Loss**: PPO clipped ratio with DAPO clip-higher, token-mean aggregation through the one
   :func:`agentropy.rl.losses.aggregate`; no KL-to-reference term (DAPO, Dr. GRPO drop it).
   ``old_logprob`` is the log-prob recorded at sampling time (the behaviour policy exactly).
   Dropout stays off (the model is never put in train mode), so the policy being trained is
   exactly the one that sampled.
5. **Advantages**: ``(r - mean_g) / (std_g + eps)`` within each task's group of ``G`` rollouts,
   population std; a group whose rewards are all equal gets 0 (``adv/zero_std_groups`` counts
   them). Reward is 1 for a correct final answer, else 0, or with ``partial_credit`` > 0 a
   fraction of it for the task's sub-goals reached (right lookups, right calc/convert result):
   on levels where no sampled rollout answers correctly, answer-only rewards are all 0 and
   their groups carry no advantage at all.
6. **Curriculum**: training starts at ``start_level``; after a held-out evaluation, if success at
   the current level reaches ``promote_threshold``, the next level becomes current. A share
   ``mix_lower`` of each step's tasks comes from lower levels (rehearsal).
7. **Held-out evaluation** uses the test split (entities never seen in training), the same
   ``eval_episodes`` tasks per level and the same sampling seed every time, with
   ``eval_policy``: by default the training policy itself, the one whose expected reward GRPO
   raises (``greedy`` is a different policy: its success can stay flat while the sampled
   policy's rises). Promotion follows this evaluation, so with the default a level counts as
   solved when the policy being trained solves it, not when its argmax does.

Outputs under ``config.out``: ``config.toml``; ``metrics.parquet`` (one row per step, namespaced
keys such as ``rollout/success``, ``onpolicy/logprob_mae``, ``entropy/recover_mean``,
``eval/success_L2``); ``traces/`` (a :class:`~agentropy.trace.TraceWriter` store of every
training episode with ``step`` set, so ``agentropy analyze out/traces`` finds training cycles);
``eval_traces/``; ``checkpoints/step-NNNNNN/state.pt``; ``final/`` (``save_pretrained`` model and
tokenizer); ``summary.json``; ``tb/`` if TensorBoard is importable.

Resume (``resume=True``): the newest checkpoint restores model, optimizer, loss-coefficient state,
curriculum state, evaluation history and every RNG (python, numpy, torch, the trainer's numpy
generator); per-step sampler seeds derive from ``(seed, step)``, so the next step is exactly the
step an uninterrupted run would have taken. The sampling controller keeps no state across steps
(the runner re-initialises it for every batch of episodes), so there is none to save beyond its
name.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from agentropy.agent.runner import RunnerConfig, rollout
from agentropy.rl.config import TrainConfig
from agentropy.trace import FAILED_STATUSES, Episode

__all__ = [
    "Batch",
    "TrainResult",
    "build_batch",
    "episode_reward",
    "group_advantages",
    "latest_checkpoint",
    "policy_logprobs",
    "promote",
    "read_metrics",
    "train",
]

#: Config fields that may differ between a run and its resumption (they do not change results).
RESUMABLE_FIELDS = frozenset(
    {"steps", "progress", "tensorboard", "checkpoint_every", "keep_checkpoints"}
)


# --------------------------------------------------------------------------------------------
# Pure pieces
# --------------------------------------------------------------------------------------------


def episode_reward(episode: Episode, partial_credit: float = 0.0) -> float:
    """Training reward: 1 for a correct answer; otherwise ``partial_credit`` times the share of
    the task's sub-goals reached (``meta["subgoals_reached"] / meta["subgoals"]``, recorded by
    ToolWorld sessions), 0 when the task has none or ``partial_credit`` is 0."""
    if episode.success:
        return 1.0
    total = episode.meta.get("subgoals") or 0
    if partial_credit <= 0 or total <= 0:
        return 0.0
    return partial_credit * min(episode.meta.get("subgoals_reached", 0), total) / total


def group_advantages(rewards: torch.Tensor, groups: torch.Tensor, eps: float) -> torch.Tensor:
    """GRPO advantages: ``(r - mean_g) / (std_g + eps)`` within each group.

    Args:
        rewards: (N,) float rewards.
        groups: (N,) int group id of each rollout (one group per task).
        eps: added to the group's population std (ddof = 0); groups whose rewards are all
            equal get exactly 0.

    Returns:
        (N,) float32 advantages.
    """
    r = rewards.double()
    adv = torch.zeros_like(r)
    for g in torch.unique(groups):
        sel = groups == g
        x = r[sel]
        std = x.std(unbiased=False) if x.numel() > 1 else torch.zeros((), dtype=r.dtype)
        adv[sel] = (x - x.mean()) / (std + eps)
    return adv.float()


class Batch(NamedTuple):
    """Padded training tensors for ``B`` episodes; ``L`` = longest token stream.

    Position ``j`` of the (B, L-1) tensors is the prediction of token ``input_ids[:, j + 1]``
    from the logits at ``j``.
    """

    input_ids: torch.Tensor
    """(B, L) int64: the token stream the runner fed (prompt, sampled, injected, tool tokens),
    right-padded."""
    attention_mask: torch.Tensor
    """(B, L) int64: 1 on real tokens, 0 on padding."""
    targets: torch.Tensor
    """(B, L-1) int64: ``input_ids[:, 1:]``."""
    mask: torch.Tensor
    """(B, L-1) bool: True on sampled assistant tokens with T > 0 (the tokens that carry loss)."""
    old_logprob: torch.Tensor
    """(B, L-1) float32: rollout log-prob under the sampling distribution (0 off ``mask``)."""
    temperature: torch.Tensor
    """(B, L-1) float32: the temperature each token was sampled at (1 off ``mask``)."""
    entropy: torch.Tensor
    """(B, L-1) float32: rollout model entropy at T = 1 (0 off ``mask``)."""
    phase: torch.Tensor
    """(B, L-1) int64: phase codes (0 off ``mask``)."""
    trigger_offset: torch.Tensor
    """(B, L-1) int64: assistant tokens since the last failed tool result, -1 where none."""
    n_greedy: int
    """Sampled assistant tokens left out of ``mask`` because they were sampled at T = 0."""


def build_batch(episodes: Sequence[Episode], pad_id: int) -> Batch:
    """Training tensors from runner episodes recorded with ``RunnerConfig(record_inputs=True)``.

    The loss mask is built from ``meta["assistant_spans"]`` (the ``[start, end)`` offsets of each
    assistant turn's sampled tokens in ``meta["input_ids"]``), checked against the turn's
    ``token_ids``; everything else (prompt, tool messages, runner-injected tokens, padding) is
    False.
    """
    streams = []
    for ep in episodes:
        ids = ep.meta.get("input_ids")
        spans = ep.meta.get("assistant_spans")
        if ids is None or spans is None:
            raise ValueError(
                f"episode {ep.episode_id} has no meta['input_ids'] / meta['assistant_spans']; "
                "roll out with RunnerConfig(record_inputs=True)"
            )
        streams.append((ids, spans))
    b = len(episodes)
    length = max(len(ids) for ids, _ in streams)
    input_ids = torch.full((b, length), pad_id, dtype=torch.int64)
    attention = torch.zeros((b, length), dtype=torch.int64)
    shape = (b, max(length - 1, 1))
    mask = torch.zeros(shape, dtype=torch.bool)
    old_lp = torch.zeros(shape, dtype=torch.float32)
    temps = torch.ones(shape, dtype=torch.float32)
    ent = torch.zeros(shape, dtype=torch.float32)
    phase = torch.zeros(shape, dtype=torch.int64)
    offset = torch.full(shape, -1, dtype=torch.int64)
    n_greedy = 0
    for i, (ep, (ids, spans)) in enumerate(zip(episodes, streams, strict=True)):
        input_ids[i, : len(ids)] = torch.as_tensor(ids, dtype=torch.int64)
        attention[i, : len(ids)] = 1
        turns = ep.assistant_turns
        if len(turns) != len(spans):
            raise ValueError(
                f"episode {ep.episode_id}: {len(turns)} assistant turns but {len(spans)} spans"
            )
        since = -1  # tokens since the last failed tool result; -1 = no unresolved failure
        k = 0
        for turn in ep.turns:
            if turn.role == "tool":
                since = 0 if turn.status in FAILED_STATUSES else -1
                continue
            start, end = spans[k]
            k += 1
            n = turn.n_tokens
            if end - start != n or list(ids[start:end]) != turn.token_ids.tolist():
                raise ValueError(
                    f"episode {ep.episode_id}: assistant span [{start}, {end}) does not hold "
                    "the turn's sampled tokens"
                )
            cols = slice(start - 1, end - 1)  # logits at p - 1 predict the token at p
            t = torch.as_tensor(turn.temperature, dtype=torch.float32)
            sampled = t > 0
            n_greedy += int((~sampled).sum())
            mask[i, cols] = sampled
            old_lp[i, cols] = torch.where(sampled, torch.as_tensor(turn.logprob), 0.0)
            temps[i, cols] = torch.where(sampled, t, 1.0)
            ent[i, cols] = torch.as_tensor(turn.entropy, dtype=torch.float32)
            phase[i, cols] = torch.as_tensor(turn.phase, dtype=torch.int64)
            if since >= 0:
                offset[i, cols] = torch.arange(since, since + n)
                since += n
    return Batch(
        input_ids=input_ids,
        attention_mask=attention,
        targets=input_ids[:, 1:] if length > 1 else input_ids,
        mask=mask,
        old_logprob=old_lp,
        temperature=temps,
        entropy=ent,
        phase=phase,
        trigger_offset=offset,
        n_greedy=n_greedy,
    )


def policy_logprobs(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable ``(logprob, entropy)``, each (B, L-1) fp32, 0 off ``batch.mask``.

    ``logprob`` is under ``softmax(logits / T_t)`` with each token's recorded temperature (the
    sampling distribution: on-policy); ``entropy`` is the model entropy at T = 1 (module
    docstring, point 3).
    """
    from agentropy.entropy import logprobs_and_entropy, token_entropy

    device = next(model.parameters()).device
    logits = model(
        input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)
    ).logits[:, :-1]  # (B, L-1, V): logits at j predict token j + 1
    mask = batch.mask.to(device)
    logprob, _ = logprobs_and_entropy(
        logits, batch.targets.to(device), temperature=batch.temperature.to(device), mask=mask
    )
    entropy = token_entropy(logits, mask=mask)
    return logprob, entropy


def promote(
    level_index: int, success: dict[str, float], levels: Sequence[int], threshold: float
) -> int:
    """Curriculum step: move past every level, from the current one on, whose held-out success
    (``success["L<level>"]``) reaches ``threshold``; the last level is never left."""
    while level_index + 1 < len(levels) and success[f"L{levels[level_index]}"] >= threshold:
        level_index += 1
    return level_index


def _np_state() -> tuple[Any, ...]:
    # numpy's legacy global state holds an ndarray; store a list so weights_only loading works.
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return (name, keys.tolist(), int(pos), int(has_gauss), float(gauss))


def _set_np_state(state: Sequence[Any]) -> None:
    name, keys, pos, has_gauss, gauss = state
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))


def _derive_seed(seed: int, *keys: int) -> int:
    """Independent 31-bit seed for ``(seed, *keys)`` (SeedSequence mixing)."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, *keys]).generate_state(1)[0] >> 1)


def _weighted(acc: dict[str, list[float]], metrics: dict[str, float], weight: float) -> None:
    """Accumulate minibatch metrics: sums of value x weight and of weights (no mean of means).

    Entropy means are weighted by their own token counts (``entropy/recover_mean`` by
    ``tokens/recover``), counts add up, everything else is weighted by the minibatch's tokens.
    """
    for key, v in metrics.items():
        w = weight
        if key == "entropy/mean":
            w = metrics.get("tokens/total", weight)
        elif key.startswith("entropy/") and key.endswith("_mean"):
            w = metrics.get(f"tokens/{key[len('entropy/') : -len('_mean')]}", weight)
        elif key.startswith("tokens/"):
            w = 1.0
        acc.setdefault(key, [0.0, 0.0])
        acc[key][0] += v * w
        acc[key][1] += w


def _reduce(acc: dict[str, list[float]]) -> dict[str, float]:
    out = {}
    for key, (total, weight) in acc.items():
        out[key] = total if key.startswith("tokens/") else total / weight if weight else 0.0
    return out


# --------------------------------------------------------------------------------------------
# Checkpoints and telemetry files
# --------------------------------------------------------------------------------------------


def latest_checkpoint(out: str | Path) -> Path | None:
    """The newest ``checkpoints/step-NNNNNN`` directory of a run, or None."""
    root = Path(out) / "checkpoints"
    steps = sorted(p for p in root.glob("step-*") if (p / "state.pt").is_file())
    return steps[-1] if steps else None


def _save_checkpoint(out: Path, step: int, payload: dict[str, Any], keep: int) -> Path:
    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(payload, tmp / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # a checkpoint exists only once complete
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    table = pa.table({k: [row.get(k) for row in rows] for k in keys})
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_metrics(out: str | Path) -> list[dict[str, Any]]:
    """The rows of ``out/metrics.parquet`` (one dict per step; missing values are None)."""
    import pyarrow.parquet as pq

    return pq.read_table(Path(out) / "metrics.parquet").to_pylist()


def _existing_episode_ids(store: Path) -> set[str]:
    from agentropy.trace import iter_parts

    if not (store / "episodes").is_dir():
        return set()
    ids: set[str] = set()
    for ep_table, _ in iter_parts(store):
        ids.update(ep_table.column("episode_id").to_pylist())
    return ids


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns (also written to ``out/summary.json``)."""

    out: str
    """Run directory."""
    steps: int
    """Steps completed (including those before a resume)."""
    wall_s: float
    """Wall time of this invocation, seconds."""
    level: int
    """Curriculum level at the end."""
    eval_history: list[dict[str, Any]]
    """Held-out evaluations: ``{"step": s, "success": {"L<level>": rate}, "mean": rate}``."""

    @property
    def held_out_before(self) -> float | None:
        """Mean held-out success over levels before the first step."""
        first = next((e for e in self.eval_history if e["step"] == 0), None)
        return None if first is None else first["mean"]

    @property
    def held_out_after(self) -> float | None:
        """Mean held-out success over levels at the last evaluation."""
        return self.eval_history[-1]["mean"] if self.eval_history else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": self.out,
            "steps": self.steps,
            "wall_s": self.wall_s,
            "level": self.level,
            "held_out_before": self.held_out_before,
            "held_out_after": self.held_out_after,
            "eval_history": self.eval_history,
        }


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    model: Any = None,
    tokenizer: Any = None,
    world: Any = None,
    console: Any = None,
) -> TrainResult:
    """Run GRPO training as configured (module docstring); returns a summary.

    Args:
        config: the run.
        resume: continue from the newest checkpoint in ``config.out`` (exactly: see module
            docstring). Without it, a run directory that already holds a run is an error.
        model, tokenizer: train these instead of loading ``config.model`` (tests pass tiny
            in-process models). The model is trained in place.
        world: the tool world (default ``ToolWorld(ToolWorldConfig(seed=config.world_seed))``).
        console: a rich ``Console`` for the progress bar and notes (default: stderr, silent when
            ``config.progress`` is False).
    """
    from rich.console import Console

    from agentropy.control.temperature import schedule_from_name
    from agentropy.env.toolworld import ToolWorld, ToolWorldConfig
    from agentropy.rl.losses import get_loss, init_coef_state, update_coef_state
    from agentropy.trace import TraceWriter

    t_start = time.perf_counter()
    out = Path(config.out)
    console = console if console is not None else Console(stderr=True, quiet=not config.progress)

    # ---- run directory: fresh, or resuming the same config
    ckpt_dir = latest_checkpoint(out) if resume else None
    if resume and ckpt_dir is None:
        raise ValueError(f"--resume: no checkpoint under {out / 'checkpoints'}; start without it")
    if not resume and ((out / "metrics.parquet").exists() or (out / "checkpoints").exists()):
        raise ValueError(f"{out} already holds a run: pass --resume, or choose another --out")
    if ckpt_dir is not None:
        saved = TrainConfig.from_toml(out / "config.toml")
        changed = [
            k for k, v in config.to_dict().items()
            if k not in RESUMABLE_FIELDS and saved.to_dict().get(k) != v
        ]  # fmt: skip
        if changed:
            raise ValueError(
                f"cannot resume {out} with a different config ({', '.join(changed)} changed); "
                f"resume with the saved {out / 'config.toml'} (only {sorted(RESUMABLE_FIELDS)} "
                "may change) or choose another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.toml").write_text(config.to_toml())

    # ---- threads, seeds, model, optimizer, world, sampling policy, loss
    if config.threads:
        torch.set_num_threads(config.threads)
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)  # the trainer's own draws: task mix, minibatches
    if model is None or tokenizer is None:
        from agentropy.agent.loading import load_model

        if config.model is None:
            console.print("loading the embedded agent (trained on first use: minutes on CPU)")
        model, tokenizer = load_model(config.model)
    # Eval mode throughout, gradients included: dropout would make the trained policy differ
    # from the one that sampled (and the on-policy check fail) for models that have it.
    model.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    world = (
        world
        if world is not None
        else ToolWorld(ToolWorldConfig(seed=config.world_seed, faults=config.faults))
    )
    schedule = schedule_from_name(config.policy)
    eval_schedule = schedule_from_name(config.resolved_eval_policy)
    runner_config = RunnerConfig(
        max_turns=config.max_turns,
        max_new_tokens=config.max_new_tokens,
        max_tokens=config.max_tokens,
        batch_size=config.rollout_batch_size,
        record_inputs=True,
    )
    loss_fn = get_loss(config.loss)
    coef_config = {"target": config.target, "rhythm": config.rhythm}.get(config.loss)
    coef_state = init_coef_state(coef_config) if coef_config is not None else None
    level_index = config.levels.index(config.start_level)  # curriculum state
    eval_history: list[dict[str, Any]] = []
    metric_rows: list[dict[str, Any]] = []
    start_step = 0

    # ---- resume: restore everything the next step depends on
    if ckpt_dir is not None:
        state = torch.load(ckpt_dir / "state.pt", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        tr = state["trainer"]
        start_step = int(tr["step"])
        level_index = int(tr["level_index"])
        eval_history = json.loads(tr["eval_history"])
        if coef_state is not None:
            coef_state = type(coef_state).load(json.loads(tr["coef_state"]))
        random.setstate(tr["python_rng"])
        _set_np_state(tr["numpy_global_rng"])
        torch.set_rng_state(tr["torch_rng"])
        rng.bit_generator.state = json.loads(tr["numpy_rng"])
        if (out / "metrics.parquet").exists():
            metric_rows = [r for r in read_metrics(out) if r["step"] <= start_step]
        console.print(f"resumed {out} at step {start_step} from {ckpt_dir.name}")

    # ---- telemetry sinks
    traces = TraceWriter(out / "traces")
    eval_traces = TraceWriter(out / "eval_traces")
    # An interrupted run may have flushed episodes of steps after its last checkpoint; the
    # resumed run regenerates them identically, so already-stored ones are skipped.
    stored_ids = _existing_episode_ids(out / "traces") | _existing_episode_ids(out / "eval_traces")
    tb = None
    if config.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(out / "tb"))
        except ImportError:
            console.print("note: torch.utils.tensorboard is not importable; TensorBoard skipped")

    def evaluate(step: int) -> dict[str, Any]:
        """Held-out success per level with the eval policy on fixed test-split tasks."""
        success: dict[str, float] = {}
        for level in config.levels:
            tasks = world.tasks(
                split="test", level=level, n=config.eval_episodes, seed=config.eval_seed
            )
            episodes = rollout(
                model, tokenizer, world, tasks, schedule=eval_schedule, config=runner_config,
                seed=config.eval_seed, policy_name=f"eval:{config.resolved_eval_policy}", step=step,
            )  # fmt: skip
            for ep in episodes:
                ep.episode_id = f"eval-L{level}-{ep.episode_id}"
                ep.meta.pop("input_ids", None)
                ep.meta.pop("assistant_spans", None)
                if ep.episode_id not in stored_ids:
                    eval_traces.write(ep)
            eval_traces.flush()
            success[f"L{level}"] = float(np.mean([bool(e.success) for e in episodes]))
        record = {"step": step, "success": success, "mean": float(np.mean(list(success.values())))}
        eval_history.append(record)
        return record

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.description}"), console=console, disable=not config.progress,
    )  # fmt: skip
    bar_task = bar.add_task("", total=config.steps, completed=start_step)
    try:
        bar.start()
        if start_step == 0:
            first = evaluate(0)
            console.print(f"held-out success before training: {_fmt_eval(first)}")
            level_index = promote(
                level_index, first["success"], config.levels, config.promote_threshold
            )

        for step in range(start_step + 1, config.steps + 1):
            t_step = time.perf_counter()
            metrics: dict[str, Any] = {"step": step}

            # ---- 1. tasks: current curriculum level, a share from lower levels, G copies each
            level = config.levels[level_index]
            n_lower = round(config.mix_lower * config.tasks_per_step) if level_index > 0 else 0
            lower = rng.integers(0, level_index, size=n_lower) if n_lower else np.zeros(0, int)
            counts = {level: config.tasks_per_step - n_lower}
            for li in lower.tolist():
                counts[config.levels[li]] = counts.get(config.levels[li], 0) + 1
            tasks = []
            for lv, n in sorted(counts.items()):
                tasks += world.tasks(
                    split="train", level=lv, n=n, seed=_derive_seed(config.seed, step, lv)
                )
            expanded = [t for t in tasks for _ in range(config.group_size)]
            groups = torch.arange(len(tasks)).repeat_interleave(config.group_size)

            # ---- 2. rollouts with the sampling policy (per-token temperatures recorded)
            t0 = time.perf_counter()
            episodes = rollout(
                model, tokenizer, world, expanded, schedule=schedule, config=runner_config,
                seed=_derive_seed(config.seed, step), policy_name=config.policy, step=step,
            )  # fmt: skip
            metrics["time/rollout_s"] = time.perf_counter() - t0
            rewards = torch.tensor([episode_reward(e, config.partial_credit) for e in episodes])

            # ---- 3. group-normalised advantages per task
            adv = group_advantages(rewards, groups, config.adv_eps)
            group_std = torch.stack([rewards[groups == g].std(unbiased=False)
                                     for g in range(len(tasks))])  # fmt: skip
            metrics.update({
                "rollout/reward_mean": float(rewards.mean()),
                "rollout/success": float(np.mean([bool(e.success) for e in episodes])),
                "rollout/tokens_per_episode": float(np.mean([e.n_tokens for e in episodes])),
                "rollout/turns_per_episode": float(
                    np.mean([len(e.assistant_turns) for e in episodes])
                ),
                "rollout/tool_failures": float(
                    np.mean([sum(t.failed for t in e.turns) for e in episodes])
                ),
                "adv/abs_mean": float(adv.abs().mean()),
                "adv/zero_std_groups": float((group_std == 0).float().mean()),
                "curriculum/level": float(level),
            })  # fmt: skip

            # ---- 4. PPO epochs over minibatches of episodes
            coef_kwargs: dict[str, Any] = {}
            if config.loss == "flat":
                coef_kwargs = {"coef": config.flat_coef}
            elif config.loss == "target":
                coef_kwargs = {"coef": coef_state.coef, "target": config.target.target}
            elif config.loss == "rhythm":
                coef_kwargs = {"lambdas": coef_state.lambdas, **config.rhythm.loss_kwargs()}
            first_epoch: dict[str, list[float]] = {}
            later: dict[str, list[float]] = {}
            n_updates, grad_norms, n_greedy = 0, [], 0
            for epoch in range(config.ppo_epochs):
                perm = rng.permutation(len(episodes))
                for mb_start in range(0, len(episodes), config.minibatch_size):
                    idx = perm[mb_start : mb_start + config.minibatch_size]
                    batch = build_batch([episodes[i] for i in idx], pad_id)
                    if epoch == 0:
                        n_greedy += batch.n_greedy
                    n_tok = int(batch.mask.sum())
                    if n_tok == 0:
                        continue
                    logprob, entropy = policy_logprobs(model, batch)  # (B, L-1) each
                    mask = batch.mask.to(logprob.device)
                    if n_updates == 0:
                        # On-policy check: nothing has been updated yet, so the recomputed
                        # log-probs must equal the rollout's up to float noise.
                        with torch.no_grad():
                            diff = (logprob - batch.old_logprob.to(logprob.device)).abs()
                            ediff = (entropy - batch.entropy.to(entropy.device)).abs()
                            metrics["onpolicy/logprob_mae"] = float(diff[mask].mean())
                            metrics["onpolicy/logprob_max"] = float(diff[mask].max())
                            metrics["onpolicy/entropy_mae"] = float(ediff[mask].mean())
                    loss, m = loss_fn(
                        logprob=logprob,
                        old_logprob=batch.old_logprob.to(logprob.device),
                        advantages=adv[torch.as_tensor(idx)].to(logprob.device),
                        mask=mask,
                        entropy=entropy,
                        phase=batch.phase.to(logprob.device),
                        trigger_offset=batch.trigger_offset.to(logprob.device),
                        clip_low=config.clip_low,
                        clip_high=config.clip_high,
                        agg_mode=config.agg_mode,
                        **coef_kwargs,
                    )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if config.max_grad_norm > 0:
                        gn = torch.nn.utils.clip_grad_norm_(
                            model.parameters(), config.max_grad_norm
                        )
                        grad_norms.append(float(gn))
                    optimizer.step()
                    n_updates += 1
                    _weighted(first_epoch if epoch == 0 else later, m, float(n_tok))
            step_metrics = _reduce(first_epoch)
            metrics.update(step_metrics)
            if later:
                # Diagnostics of the policy as it drifts within the step (clip, KL).
                metrics.update({f"last_epoch/{k}": v for k, v in _reduce(later).items()
                                if k.startswith(("clip/", "kl/"))})  # fmt: skip
            metrics["tokens/greedy_masked"] = float(n_greedy)
            metrics["optim/updates"] = float(n_updates)
            metrics["optim/grad_norm"] = float(np.mean(grad_norms)) if grad_norms else 0.0

            # ---- 5. adapt the entropy coefficients (target / rhythm) from this step's entropy
            if coef_state is not None and step_metrics:
                coef_state = update_coef_state(coef_state, step_metrics, coef_config)

            # ---- 6. store the episodes (step set) for the analyzer; drop the token streams
            for ep in episodes:
                ep.meta.pop("input_ids", None)
                ep.meta.pop("assistant_spans", None)
                if ep.episode_id not in stored_ids:
                    traces.write(ep)
            traces.flush()

            # ---- 7. held-out evaluation and curriculum promotion
            if step % config.eval_every == 0 or step == config.steps:
                record = evaluate(step)
                for lv, s in record["success"].items():
                    metrics[f"eval/success_{lv}"] = s
                metrics["eval/success_mean"] = record["mean"]
                new_index = promote(
                    level_index, record["success"], config.levels, config.promote_threshold
                )
                if new_index != level_index:
                    level_index = new_index
                    console.print(f"step {step}: promoted to level {config.levels[level_index]}")
                console.print(f"step {step}: held-out success {_fmt_eval(record)}")

            # ---- 8. telemetry
            metrics["time/step_s"] = time.perf_counter() - t_step
            metrics["time/elapsed_s"] = time.perf_counter() - t_start
            metric_rows.append(metrics)
            _write_metrics(out / "metrics.parquet", metric_rows)
            if tb is not None:
                for k, v in metrics.items():
                    if k != "step" and isinstance(v, float) and math.isfinite(v):
                        tb.add_scalar(k, v, step)
            bar.update(
                bar_task, advance=1,
                description=f"L{level} reward {metrics['rollout/reward_mean']:.2f}",
            )  # fmt: skip

            # ---- 9. checkpoint: everything the next step depends on
            every = config.checkpoint_every
            if (every and step % every == 0) or step == config.steps:
                _save_checkpoint(out, step, {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "trainer": {
                        "step": step,
                        "level_index": level_index,
                        "eval_history": json.dumps(eval_history),
                        "coef_state": json.dumps(
                            coef_state.state_dict() if coef_state is not None else None
                        ),
                        "policy": schedule.name,
                        "python_rng": random.getstate(),
                        "numpy_global_rng": _np_state(),
                        "torch_rng": torch.get_rng_state(),
                        "numpy_rng": json.dumps(rng.bit_generator.state),
                    },
                }, config.keep_checkpoints)  # fmt: skip
    finally:
        bar.stop()
        traces.close()
        eval_traces.close()
        if tb is not None:
            tb.close()

    # ---- final model and summary
    final = out / "final"
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # transformers' shard-writing bar would break our output
    try:
        model.save_pretrained(final)
        tokenizer.save_pretrained(final)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    result = TrainResult(
        out=str(out),
        steps=config.steps,
        wall_s=time.perf_counter() - t_start,
        level=config.levels[level_index],
        eval_history=eval_history,
    )
    (out / "summary.json").write_text(json.dumps(result.to_dict(), indent=2))
    return result


def _fmt_eval(record: dict[str, Any]) -> str:
    per = ", ".join(f"{lv} {100 * s:.0f}%" for lv, s in record["success"].items())
    return f"{100 * record['mean']:.1f}% mean ({per})"
