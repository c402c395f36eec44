"""GRPO for multi-turn tool-using agents, on-policy with per-token temperatures.

:func:`train` is one loop that reads top to bottom: sample a batch of ToolWorld tasks from the
curriculum, roll each out ``G`` times through :func:`agentropy.agent.runner.rollout` with the
chosen sampling policy, normalise rewards within each task's group, run PPO epochs over
minibatches, adapt the entropy coefficients, evaluate on held-out tasks now and then, log,
checkpoint. The objective is one line, ``loss = policy_loss + entropy_loss``: the policy term
and the entropy term named by ``config.loss`` (:data:`agentropy.rl.losses.LOSSES`; the policy
term is :func:`agentropy.rl.losses.ppo_clip_loss` or a published token-level variant of it from
:mod:`agentropy.rl.policy_terms`, the entropy term's coefficients come from its pure schedule in
:mod:`agentropy.rl.coefs`). The run's plumbing (run
directory, resume, checkpoints, trace and metric sinks) is in :mod:`agentropy.rl.run`; the small
pure helpers here (batch construction, the forward pass, promotion) are what the tests poke at.

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
4. **Loss**: PPO clipped ratio with DAPO clip-higher (dual-clip optional; the peers
   ``clip_cov``, ``kl_cov`` and ``top_entropy`` mask or add to it per token, with Clip-Cov's
   random draw from torch's global generator, which checkpoints save), token-mean
   aggregation through the one :func:`agentropy.rl.losses.aggregate` (the entropy term follows
   ``agg_mode`` unless ``entropy_token_mean``); no KL-to-reference term (DAPO, Dr. GRPO drop it).
   ``old_logprob`` is the log-prob recorded at sampling time (the behaviour policy exactly).
   Dropout stays off (the model is never put in train mode), so the policy being trained is
   exactly the one that sampled.
5. **Advantages**: ``(r - mean_g) / (std_g + eps)`` within each task's group of ``G`` rollouts,
   population std by default (``adv_std="unbiased"``: verl's and TRL's); a group whose rewards are all equal gets 0 (``adv/zero_std_groups`` counts
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

Live monitor (:mod:`agentropy.monitor`), every step, after the step's metrics are complete:
``breath/loop_rate``, ``breath/hallucination_rate``, ``breath/valid_action_rate``,
``breath/failure_rate`` (:mod:`agentropy.monitor.rates`) and ``rollout/entropy[_<phase>]`` (the
sampling-time model entropy) join the row; a :class:`~agentropy.monitor.Tracker` turns the row
into alerts, logged as ``monitor/alerts`` and ``monitor/<name>`` counts, printed to the console
and kept in ``summary.json["alerts"]``; ``config.stop_on`` names alerts that end the run (after
a checkpoint of that step). Why entropy moved: the first PPO epoch sums, per phase, the
covariance statistics of the sampled tokens' T = 1 log-prob and their advantage
(:func:`agentropy.monitor.covariance_stats`, arXiv 2505.22617), logged as ``cov/<group>`` and
the predicted change ``cov/<group>_pred_dH`` (= -cov, logit step 1); once the next step's
rollouts exist, the realised change ``cov/<group>_realised_dH`` (next step's
``rollout/entropy[_<group>]`` minus this step's) is written into the same row of
``metrics.parquet`` (TensorBoard gets the rows as they are logged, so without it).
``time/monitor_s`` is the monitor's share of ``time/step_s``.

Resume (``resume=True``): the newest checkpoint restores model, optimizer, loss-coefficient state,
curriculum state, evaluation history, the monitor's state and every RNG (python, numpy, torch,
the trainer's numpy generator); per-step sampler seeds derive from ``(seed, step)``, so the next step is exactly the
step an uninterrupted run would have taken. The sampling controller keeps no state across steps
(the runner re-initialises it for every batch of episodes), so there is none to save beyond its
name.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from agentropy.agent.runner import RunnerConfig, rollout
from agentropy.monitor import ALERT_NAMES, Alert, Tracker
from agentropy.monitor.rates import episode_rates
from agentropy.outputs import atomic_dir, atomic_write_text
from agentropy.rl.advantages import group_advantages
from agentropy.rl.config import TrainConfig
from agentropy.rl.losses import get_entropy_term
from agentropy.rl.policy_terms import get_policy_term
from agentropy.rl.run import (
    LoopState,
    MetricAccumulator,
    Sinks,
    check_sinks,
    derive_seed,
    latest_checkpoint,
    open_run_dir,
    read_metrics,
    restore_checkpoint,
    save_checkpoint,
    seed_everything,
)
from agentropy.trace import FAILED_STATUSES, Episode

__all__ = [
    "Batch",
    "TrainResult",
    "build_batch",
    "episode_reward",
    "group_advantages",
    "latest_checkpoint",
    "policy_logprobs",
    "policy_outputs",
    "promote",
    "read_metrics",
    "train",
]


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
            ids_ok = turn.token_ids is not None and list(ids[start:end]) == turn.token_ids.tolist()
            if end - start != n or not ids_ok:
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
    logprob, entropy, _ = policy_outputs(model, batch, model_logprob=False)
    return logprob, entropy


def policy_outputs(
    model: Any, batch: Batch, *, model_logprob: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """:func:`policy_logprobs` plus, if ``model_logprob``, the detached log-prob of each token
    under the model's own distribution (T = 1), (B, L-1) fp32, 0 off ``batch.mask``.

    The entropy-change attribution (:mod:`agentropy.monitor.attribution`) needs the T = 1
    log-prob: the update moves the logits, and model entropy is a function of them. It is the
    sampling log-prob itself (no second pass) when every trained token was sampled at T = 1.
    """
    from agentropy.entropy import logprobs_and_entropy, token_entropy

    device = next(model.parameters()).device
    logits = model(
        input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)
    ).logits[:, :-1]  # (B, L-1, V): logits at j predict token j + 1
    mask = batch.mask.to(device)
    temperature = batch.temperature.to(device)
    targets = batch.targets.to(device)
    logprob, _ = logprobs_and_entropy(logits, targets, temperature=temperature, mask=mask)
    entropy = token_entropy(logits, mask=mask)
    lp1 = None
    if model_logprob:
        if bool((temperature[mask] == 1.0).all()):
            lp1 = logprob.detach()
        else:
            with torch.no_grad():
                lp1, _ = logprobs_and_entropy(logits.detach(), targets, mask=mask)
    return logprob, entropy, lp1


def promote(
    level_index: int, success: dict[str, float], levels: Sequence[int], threshold: float
) -> int:
    """Curriculum step: move past every level, from the current one on, whose held-out success
    (``success["L<level>"]``) reaches ``threshold``; the last level is never left."""
    while level_index + 1 < len(levels) and success[f"L{levels[level_index]}"] >= threshold:
        level_index += 1
    return level_index


def draw_tasks(
    config: TrainConfig, world: Any, rng: np.random.Generator, level_index: int, step: int
) -> list[Any]:
    """One step's tasks: the current curriculum level, a share ``mix_lower`` from lower levels."""
    level = config.levels[level_index]
    n_lower = round(config.mix_lower * config.tasks_per_step) if level_index > 0 else 0
    lower = rng.integers(0, level_index, size=n_lower) if n_lower else np.zeros(0, int)
    counts = {level: config.tasks_per_step - n_lower}
    for li in lower.tolist():
        counts[config.levels[li]] = counts.get(config.levels[li], 0) + 1
    tasks = []
    for lv, n in sorted(counts.items()):
        tasks += world.tasks(split="train", level=lv, n=n, seed=derive_seed(config.seed, step, lv))
    return tasks


def rollout_metrics(
    episodes: Sequence[Episode], rewards: torch.Tensor, groups: torch.Tensor, adv: torch.Tensor
) -> dict[str, float]:
    """``rollout/*`` and ``adv/*`` metrics of one step's rollouts."""
    group_std = torch.stack([rewards[groups == g].std(unbiased=False)
                             for g in torch.unique(groups)])  # fmt: skip
    return {
        "rollout/reward_mean": float(rewards.mean()),
        "rollout/success": float(np.mean([bool(e.success) for e in episodes])),
        "rollout/tokens_per_episode": float(np.mean([e.n_tokens for e in episodes])),
        "rollout/turns_per_episode": float(np.mean([len(e.assistant_turns) for e in episodes])),
        "rollout/tool_failures": float(np.mean([sum(t.failed for t in e.turns) for e in episodes])),
        "adv/abs_mean": float(adv.abs().mean()),
        "adv/zero_std_groups": float((group_std == 0).float().mean()),
    }


def rollout_entropy(episodes: Sequence[Episode]) -> dict[str, float]:
    """``rollout/entropy`` and ``rollout/entropy_<phase>``: token-mean model entropy (T = 1,
    nats) of the sampled tokens as recorded at sampling time, i.e. of the policy that sampled
    the step, before its updates. Its change from one step to the next is the *realised*
    entropy change of the update in between (paired with ``cov/*_pred_dH``)."""
    from agentropy.trace import PHASES

    sums = np.zeros(len(PHASES) + 1)
    counts = np.zeros(len(PHASES) + 1)
    for ep in episodes:
        for turn in ep.assistant_turns:
            if turn.n_tokens == 0:
                continue
            ent = np.asarray(turn.entropy, np.float64)
            codes = np.asarray(turn.phase, np.int64)
            sums[0] += ent.sum()
            counts[0] += ent.shape[0]
            sums[1:] += np.bincount(codes, weights=ent, minlength=len(PHASES))[: len(PHASES)]
            counts[1:] += np.bincount(codes, minlength=len(PHASES))[: len(PHASES)]
    names = ["rollout/entropy", *(f"rollout/entropy_{p}" for p in PHASES)]
    return {k: float(v / n) for k, v, n in zip(names, sums, counts, strict=True) if n > 0}


def backfill_realised(previous: dict[str, Any], current: dict[str, Any]) -> None:
    """Write into ``previous`` (step ``s``'s metrics row) ``cov/<group>_realised_dH``: the
    rollout entropy of step ``s + 1`` minus that of step ``s`` (nats), the change the update of
    step ``s`` actually made, beside its ``cov/<group>_pred_dH``."""
    from agentropy.monitor.attribution import GROUPS

    for g in GROUPS:
        key = "rollout/entropy" if g == "all" else f"rollout/entropy_{g}"
        if key in previous and key in current:
            previous[f"cov/{g}_realised_dH"] = current[key] - previous[key]


def _fmt_alert(alert: Alert) -> str:
    kind = f" ({alert.kind})" if alert.kind else ""
    return f"step {alert.step}: monitor {alert.name}{kind} on {alert.metric}: {alert.suggestion}"


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
    alerts: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """Every monitor alert of the run (:meth:`agentropy.monitor.Alert.to_dict`)."""
    stopped_by: dict[str, Any] | None = None
    """The alert named in ``config.stop_on`` that ended training early, or None."""

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
            "alerts": self.alerts,
            "stopped_by": self.stopped_by,
        }


def _load_policy(config: TrainConfig, model: Any, tokenizer: Any, console: Any) -> tuple[Any, Any]:
    if model is None or tokenizer is None:
        from agentropy.agent.loading import load_model

        if config.model is None:
            console.print("loading the embedded agent (trained on first use: minutes on CPU)")
        model, tokenizer = load_model(config.model)
    # Eval mode throughout, gradients included: dropout would make the trained policy differ
    # from the one that sampled (and the on-policy check fail) for models that have it.
    model.eval()
    return model, tokenizer


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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from agentropy.control.temperature import schedule_from_name
    from agentropy.env.toolworld import TOOL_NAMES, ToolWorld, ToolWorldConfig
    from agentropy.monitor.attribution import GROUPS, attribution_metrics, covariance_stats

    t_start = time.perf_counter()
    out = Path(config.out)
    console = console if console is not None else Console(stderr=True, quiet=not config.progress)

    # ---- setup: run directory, seeds, model, optimizer, world, sampling policies, loss
    check_sinks(config)
    ckpt_dir = open_run_dir(config, resume=resume)
    rng = seed_everything(config)  # the trainer's own draws: task mix, minibatch order
    model, tokenizer = _load_policy(config, model, tokenizer, console)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    world = (
        world
        if world is not None
        else ToolWorld(ToolWorldConfig(seed=config.world_seed, faults=config.faults))
    )
    world_tools = TOOL_NAMES  # tool names a call may use; any other is a hallucinated tool
    schedule = schedule_from_name(config.policy)
    eval_schedule = schedule_from_name(config.resolved_eval_policy)
    runner_config = RunnerConfig(
        max_turns=config.max_turns,
        max_new_tokens=config.max_new_tokens,
        max_tokens=config.max_tokens,
        batch_size=config.rollout_batch_size,
        record_inputs=True,
    )
    policy_term = get_policy_term(config.policy_term)  # ppo, or a peer's variant of it
    policy_kwargs = config.policy_term_kwargs()
    entropy_term = get_entropy_term(config.entropy_term)
    coefs = config.entropy_schedule()
    state = LoopState(level_index=config.levels.index(config.start_level), coef_state=coefs.init())
    if ckpt_dir is not None:
        state = restore_checkpoint(
            ckpt_dir, model=model, optimizer=optimizer, rng=rng, schedule=coefs
        )
        console.print(f"resumed {out} at step {state.step} from {ckpt_dir.name}")
    sinks = Sinks(
        out,
        tensorboard=config.tensorboard,
        wandb_project=config.wandb_project if config.wandb else None,
        run_config=config.to_dict(),
        console=console,
    )
    # The live monitor (agentropy.monitor): alerts on this run's own metric rows.
    tracker = Tracker(config.monitor, stop_on=config.stop_on)
    if state.monitor is not None:
        tracker.load_state_dict(state.monitor)
    else:  # a checkpoint from before the monitor: the detector is pure, so replay its rows
        for row in state.metric_rows:
            tracker.step(int(row["step"]), row)

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
            sinks.write_episodes(episodes, evaluation=True)
            success[f"L{level}"] = float(np.mean([bool(e.success) for e in episodes]))
        record = {"step": step, "success": success, "mean": float(np.mean(list(success.values())))}
        state.eval_history.append(record)
        return record

    bar = Progress(
        TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.description}"), console=console, disable=not config.progress,
    )  # fmt: skip
    bar_task = bar.add_task("", total=config.steps, completed=state.step)
    try:
        bar.start()
        if state.step == 0:
            first = evaluate(0)
            console.print(f"held-out success before training: {_fmt_eval(first)}")
            state.level_index = promote(
                state.level_index, first["success"], config.levels, config.promote_threshold
            )

        for step in range(state.step + 1, config.steps + 1):
            t_step = time.perf_counter()
            metrics: dict[str, Any] = {"step": step}

            # ---- 1. tasks: current curriculum level, a share from lower levels, G copies each
            level = config.levels[state.level_index]
            tasks = draw_tasks(config, world, rng, state.level_index, step)
            expanded = [t for t in tasks for _ in range(config.group_size)]
            groups = torch.arange(len(tasks)).repeat_interleave(config.group_size)  # (N,)

            # ---- 2. rollouts with the sampling policy (per-token temperatures recorded)
            t0 = time.perf_counter()
            episodes = rollout(
                model, tokenizer, world, expanded, schedule=schedule, config=runner_config,
                seed=derive_seed(config.seed, step), policy_name=config.policy, step=step,
            )  # fmt: skip
            metrics["time/rollout_s"] = time.perf_counter() - t0

            # ---- 3. group-normalised advantages per task
            rewards = torch.tensor([episode_reward(e, config.partial_credit) for e in episodes])
            adv = group_advantages(rewards, groups, config.adv_eps, std=config.adv_std)  # (N,)
            metrics.update(rollout_metrics(episodes, rewards, groups, adv))
            metrics["curriculum/level"] = float(level)
            t0 = time.perf_counter()
            metrics.update(rollout_entropy(episodes))
            metrics.update(episode_rates(episodes, known_tools=world_tools))
            t_monitor = time.perf_counter() - t0

            # ---- 4. PPO epochs over minibatches of episodes
            term_kwargs = coefs.term_kwargs(state.coef_state)
            first_epoch, later = MetricAccumulator(), MetricAccumulator()
            n_updates, grad_norms, n_greedy = 0, [], 0
            cov_stats = torch.zeros(len(GROUPS), 4, dtype=torch.float64)  # attribution sums
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
                    # (B, T) each, T = L - 1; lp_model: detached T = 1 log-prob (epoch 0 only)
                    logprob, entropy, lp_model = policy_outputs(
                        model, batch, model_logprob=epoch == 0
                    )
                    device = logprob.device
                    mask = batch.mask.to(device)  # (B, T) sampled assistant tokens
                    old_logprob = batch.old_logprob.to(device)  # (B, T)
                    mb_adv = adv[torch.as_tensor(idx)].to(device)  # (B,)
                    if lp_model is not None:
                        # Why entropy moves: Cov(log pi, A) per phase (arXiv 2505.22617).
                        t0 = time.perf_counter()
                        cov_stats += covariance_stats(
                            lp_model, mb_adv, mask, batch.phase.to(device)
                        ).cpu()
                        t_monitor += time.perf_counter() - t0
                    if n_updates == 0:
                        # On-policy check: nothing has been updated yet, so the recomputed
                        # log-probs must equal the rollout's up to float noise.
                        with torch.no_grad():
                            diff = (logprob - old_logprob).abs()
                            ediff = (entropy - batch.entropy.to(device)).abs()
                            metrics["onpolicy/logprob_mae"] = float(diff[mask].mean())
                            metrics["onpolicy/logprob_max"] = float(diff[mask].max())
                            metrics["onpolicy/entropy_mae"] = float(ediff[mask].mean())
                    policy_loss, pg_m = policy_term(
                        logprob=logprob, old_logprob=old_logprob, advantages=mb_adv, mask=mask,
                        entropy=entropy.detach(), **policy_kwargs,
                    )  # fmt: skip
                    entropy_loss, ent_m = entropy_term(
                        entropy=entropy, mask=mask, phase=batch.phase.to(device),
                        trigger_offset=batch.trigger_offset.to(device),
                        agg_mode=config.entropy_agg_mode, **term_kwargs,
                    )  # fmt: skip
                    loss = policy_loss + entropy_loss
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if config.max_grad_norm > 0:
                        gn = torch.nn.utils.clip_grad_norm_(
                            model.parameters(), config.max_grad_norm
                        )
                        grad_norms.append(float(gn))
                    optimizer.step()
                    n_updates += 1
                    m = {**pg_m, **ent_m, "loss/total": float(loss.detach())}
                    (first_epoch if epoch == 0 else later).add(m, float(n_tok))
            step_metrics = first_epoch.result()
            metrics.update(step_metrics)
            if later:
                # Diagnostics of the policy as it drifts within the step (clip, KL).
                metrics.update({f"last_epoch/{k}": v for k, v in later.result().items()
                                if k.startswith(("clip/", "kl/"))})  # fmt: skip
            metrics["tokens/greedy_masked"] = float(n_greedy)
            metrics["optim/updates"] = float(n_updates)
            metrics["optim/grad_norm"] = float(np.mean(grad_norms)) if grad_norms else 0.0
            metrics.update(attribution_metrics(cov_stats))

            # ---- 5. adapt the entropy coefficients from this step's entropy (pure update)
            if step_metrics:
                state.coef_state = coefs.update(state.coef_state, step_metrics)

            # ---- 6. store the episodes (step set) for the analyzer
            sinks.write_episodes(episodes)

            # ---- 7. held-out evaluation and curriculum promotion
            if step % config.eval_every == 0 or step == config.steps:
                record = evaluate(step)
                for lv, s in record["success"].items():
                    metrics[f"eval/success_{lv}"] = s
                metrics["eval/success_mean"] = record["mean"]
                new_index = promote(
                    state.level_index, record["success"], config.levels, config.promote_threshold
                )
                if new_index != state.level_index:
                    state.level_index = new_index
                    console.print(f"step {step}: promoted to level {config.levels[new_index]}")
                console.print(f"step {step}: held-out success {_fmt_eval(record)}")

            # ---- 8. monitor and telemetry
            t0 = time.perf_counter()
            if state.metric_rows:
                backfill_realised(state.metric_rows[-1], metrics)
            alerts = tracker.step(step, metrics)
            metrics["monitor/alerts"] = float(len(alerts))
            for name in ALERT_NAMES:
                metrics[f"monitor/{name}"] = float(sum(a.name == name for a in alerts))
            state.monitor = tracker.state_dict()
            metrics["time/monitor_s"] = t_monitor + time.perf_counter() - t0
            for a in alerts:
                console.print(_fmt_alert(a))
            metrics["time/step_s"] = time.perf_counter() - t_step
            metrics["time/elapsed_s"] = time.perf_counter() - t_start
            state.metric_rows.append(metrics)
            state.step = step
            sinks.write_metrics(state.metric_rows)
            bar.update(
                bar_task, advance=1,
                description=f"L{level} reward {metrics['rollout/reward_mean']:.2f}",
            )  # fmt: skip

            # ---- 9. checkpoint: everything the next step depends on
            every = config.checkpoint_every
            if (every and step % every == 0) or step == config.steps or tracker.should_stop:
                save_checkpoint(
                    out, state, model=model, optimizer=optimizer, rng=rng, policy=schedule.name,
                    keep=config.keep_checkpoints,
                )  # fmt: skip
            if (reason := tracker.stop_reason) is not None:  # tracker.should_stop
                console.print(f"step {step}: stopping (stop_on): {_fmt_alert(reason)}")
                break
    finally:
        bar.stop()
        sinks.close()

    # ---- final model and summary
    _save_final(out / "final", model, tokenizer)
    result = TrainResult(
        out=str(out),
        steps=state.step,
        wall_s=time.perf_counter() - t_start,
        level=config.levels[state.level_index],
        eval_history=state.eval_history,
        alerts=[a.to_dict() for a in tracker.alerts],
        stopped_by=None if tracker.stop_reason is None else tracker.stop_reason.to_dict(),
    )
    atomic_write_text(out / "summary.json", json.dumps(result.to_dict(), indent=2), force=True)
    return result


def _save_final(final: Path, model: Any, tokenizer: Any) -> None:
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # transformers' shard-writing bar would break our output
    try:
        # Saved whole or not at all: a kill mid-save never leaves a half-written final/.
        with atomic_dir(final, force=True) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _fmt_eval(record: dict[str, Any]) -> str:
    per = ", ".join(f"{lv} {100 * s:.0f}%" for lv, s in record["success"].items())
    return f"{100 * record['mean']:.1f}% mean ({per})"
