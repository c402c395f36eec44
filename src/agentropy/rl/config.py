"""Configuration of the GRPO trainer (:mod:`agentropy.rl.trainer`): one frozen dataclass.

:class:`TrainConfig` is flat for the knobs a user turns every day (steps, group size, sampling
policy, loss, learning rate, curriculum, evaluation, checkpoints) and nests the two adaptive
entropy-coefficient configs of :mod:`agentropy.rl.coefs` (:class:`TargetConfig` as ``target``,
:class:`RhythmConfig` as ``rhythm``) and the live monitor's thresholds
(:class:`~agentropy.monitor.MonitorConfig` as ``monitor``); numeric loss defaults (clip bounds, flat coefficient) are
the constants of :mod:`agentropy.rl.losses`, so every default lives in exactly one place.

Files and overrides (``agentropy train --config run.toml --set lr=3e-5 --set rhythm.step=1e-3``):

- TOML: top-level keys are :class:`TrainConfig` fields; ``[target]`` and ``[rhythm]`` tables
  hold the nested fields. Unknown keys are errors that suggest the closest known key.
- ``--set key=value``: ``key`` is a field name, dotted for nested fields (``rhythm.step``);
  ``value`` is read as a TOML value (``3e-5``, ``true``, ``[0, 1]``, ``"phase"``) and, when that
  fails, as a bare string (``--set policy=constant:1.0``). ``none`` sets an optional field to None.
- :meth:`TrainConfig.to_toml` writes a file that :meth:`TrainConfig.from_toml` reads back to an
  equal config (a run directory keeps ``config.toml`` so a resumed run can be checked against it).

Default budget: the defaults train the embedded tiny agent on 2 CPU cores in about five minutes
(see the field docstrings for each choice; BENCHMARKS.md for measured numbers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentropy.env.toolworld import LEVELS
from agentropy.errors import InputError, read_toml
from agentropy.monitor.detector import ALERT_NAMES, MonitorConfig
from agentropy.rl.advantages import ADV_STDS, AdvStd
from agentropy.rl.coefs import (
    CoefSchedule,
    FixedCoef,
    RhythmConfig,
    RhythmSchedule,
    TargetConfig,
    TargetSchedule,
)
from agentropy.rl.losses import (
    AGG_MODES,
    CLIP_HIGH,
    CLIP_LOW,
    FLAT_COEF,
    LOSS_POLICY_TERMS,
    LOSS_TERMS,
    AggMode,
)
from agentropy.rl.policy_terms import (
    CLIP_COV_LB,
    CLIP_COV_RATIO,
    CLIP_COV_UB,
    KL_COV_COEF,
    KL_COV_RATIO,
    TOP_ENTROPY_QUANTILE,
)

__all__ = ["TrainConfig", "apply_overrides", "build_config", "parse_override"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything one ``agentropy train`` run needs; equal configs give identical runs."""

    # ---------------------------------------------------------------- run
    out: str = "runs/train"
    """Run directory: ``config.toml``, ``metrics.parquet``, ``traces/`` (training episodes,
    ``step`` set), ``eval_traces/``, ``checkpoints/``, ``final/`` (the trained model)."""
    model: str | None = None
    """Hugging Face model directory to train; None = the embedded tiny agent."""
    seed: int = 0
    """Seed of initial RNG state, task draws and sampling (per-step sampler seeds derive from it)."""
    world_seed: int = 0
    """``ToolWorldConfig(seed=...)``: which knowledge base and task generator (the tiny agent was
    warm-started on world 0)."""
    faults: str = "seen"
    """``ToolWorldConfig(faults=...)``: fault family of training and held-out tasks: ``seen``
    (the kinds expert transcripts show), ``novel`` (kinds they never show) or ``all``."""
    steps: int = 100
    """Training steps (one rollout batch and its PPO updates each); 100 x 32 rollouts fit the
    five-minute CPU budget of the defaults (BENCHMARKS.md)."""

    # ---------------------------------------------------------------- rollouts
    tasks_per_step: int = 8
    """Distinct training tasks per step (each rolled out ``group_size`` times)."""
    group_size: int = 4
    """G: rollouts per task; advantages are normalised within each task's group (GRPO)."""
    policy: str = "constant:1.0"
    """Sampling policy during training: ``constant:T``, ``phase`` (per-token phase temperature,
    e.g. ``phase:recover=1.0``) or ``edt``. Greedy tokens (T = 0) cannot be trained on-policy:
    they are masked from the loss and counted in ``tokens/greedy_masked``."""
    max_turns: int = 6
    """Assistant turns per episode (ToolWorld L3 needs at most ~4 with one recovery)."""
    max_new_tokens: int = 64
    """Tokens per assistant turn; expert turns are under ~40 tokens."""
    max_tokens: int = 256
    """Assistant tokens per episode."""
    rollout_batch_size: int = 32
    """Episodes decoded together by the runner (one step's rollouts in one wave by default)."""

    # ---------------------------------------------------------------- optimisation
    loss: str = "flat"
    """Loss by name (:data:`agentropy.rl.losses.LOSSES`): PPO plus an entropy term (vanilla =
    none, flat, target, rhythm), or a published peer that modifies the PPO term per token
    (clip_cov, kl_cov: arXiv 2505.22617; top_entropy: arXiv 2506.01939;
    :mod:`agentropy.rl.policy_terms`). Entropy terms and masks use the model entropy at T = 1
    (see the trainer's docstring)."""
    lr: float = 2e-5
    """AdamW learning rate (constant). Measured on the embedded agent (RESULTS.md): 3e-4
    collapsed it within two steps (sampled success to 0, entropy up, every group then
    reward-less); 1e-4 halved greedy L1 success in 20 steps; 5e-5 cost 6 points of greedy L1;
    2e-5 raised sampled held-out success without hurting greedy. With ~32 noisy rollouts per
    step, Adam's per-coordinate normalisation moves every weight by ~lr per update whatever
    the signal, so the rate must be small."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay (0: RL steps should not shrink the warm-started weights)."""
    ppo_epochs: int = 1
    """Passes over each step's rollouts. Forward/backward over the long shared prompt costs as
    much as the rollouts, so on CPU one pass with several minibatches buys more updates per
    second than several passes."""
    minibatch_size: int = 8
    """Episodes per optimiser step; a step makes ``ppo_epochs * ceil(episodes / minibatch)``
    updates (4 with the defaults)."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip (0 disables)."""
    clip_low: float = CLIP_LOW
    """PPO lower clip: ratio >= 1 - clip_low."""
    clip_high: float = CLIP_HIGH
    """PPO upper clip (DAPO clip-higher): ratio <= 1 + clip_high."""
    clip_ratio_c: float | None = None
    """Dual-clip bound (verl's ``clip_ratio_c``, which defaults to 3.0 there): tokens with
    negative advantage lose at most ``-A * clip_ratio_c``. None = off (PPO's plain clip)."""
    agg_mode: AggMode = "token-mean"
    """Loss reduction (:func:`agentropy.rl.losses.aggregate`): token-mean, seq-mean-token-sum,
    seq-mean-token-mean, seq-mean-token-sum-norm (verl's modes)."""
    entropy_token_mean: bool = False
    """Aggregate the entropy term as a token-mean whatever ``agg_mode`` is (TRL's convention);
    False = the entropy term uses ``agg_mode`` like the PPO term (verl's convention)."""
    partial_credit: float = 0.0
    """Reward of an episode whose final answer is wrong: ``partial_credit x (sub-goals reached /
    sub-goals)`` (ToolWorld's :attr:`~agentropy.env.toolworld.ToolSession.progress`: the right
    lookups done, the right calc/convert result obtained); a correct answer always scores 1.
    0 = answer-only reward (the default: 0.5 measured no better on L1, and did not unlock L2 in
    40 steps; RESULTS.md). Held-out success is always the answer alone."""
    adv_eps: float = 1e-6
    """Advantage = (r - mean) / (std + adv_eps) within a group; a group with equal rewards gets 0."""
    adv_std: AdvStd = "population"
    """Group std of the advantages: ``population`` (ddof = 0) or ``unbiased`` (ddof = 1, what
    verl's GRPO and TRL use)."""
    flat_coef: float = FLAT_COEF
    """Entropy coefficient of the ``flat`` loss (> 0 bonus, < 0 penalty)."""
    clip_cov_ratio: float = CLIP_COV_RATIO
    """``clip_cov`` loss: share of tokens whose policy gradient is detached, at least one per
    minibatch (verl's default 2e-4; 0 = plain PPO)."""
    clip_cov_lb: float = CLIP_COV_LB
    """``clip_cov`` loss: lower bound of the covariance band of candidate tokens (verl: 1)."""
    clip_cov_ub: float = CLIP_COV_UB
    """``clip_cov`` loss: upper bound of the covariance band of candidate tokens (verl: 5)."""
    kl_cov_ratio: float = KL_COV_RATIO
    """``kl_cov`` loss: share of tokens, by largest covariance, that get the KL penalty, at
    least one per minibatch (verl's default 2e-4; 0 = plain PPO)."""
    kl_cov_coef: float = KL_COV_COEF
    """``kl_cov`` loss: coefficient of ``|log pi - log pi_old|`` on the selected tokens (verl's
    ``ppo_kl_coef``, 1)."""
    top_entropy_quantile: float = TOP_ENTROPY_QUANTILE
    """``top_entropy`` loss: share of tokens, by highest entropy in the minibatch, that keep
    their policy gradient (the paper's 0.2; 1 = plain PPO, TRL's default)."""
    target: TargetConfig = field(default_factory=TargetConfig)
    """Adaptive coefficient of the ``target`` loss (Skywork-OR1)."""
    rhythm: RhythmConfig = field(default_factory=RhythmConfig)
    """Per-phase coefficients and contraction term of the ``rhythm`` loss."""

    # ---------------------------------------------------------------- curriculum
    levels: tuple[int, ...] = LEVELS
    """Curriculum levels in order (ToolWorld L0-L3); held-out evaluation covers all of them."""
    start_level: int = 1
    """Level training starts at (must be in ``levels``); the step-0 evaluation promotes at once
    past levels the starting model already solves. Default L1: the embedded agent does L0
    arithmetic by rote, and training on L0 alone for 100 steps cost 13 points of greedy L1
    success on 200 held-out tasks (58% -> 45%) for +4 on L0 (RESULTS.md)."""
    promote_threshold: float = 0.7
    """Promote to the next level when held-out success at the current level reaches this."""
    mix_lower: float = 0.25
    """Share of each step's tasks drawn from lower curriculum levels (rehearsal)."""

    # ---------------------------------------------------------------- evaluation and output
    eval_every: int = 25
    """Held-out evaluation every this many steps (also before step 1 and after the last)."""
    eval_episodes: int = 32
    """Held-out test-split tasks per level; the same tasks at every evaluation (32 x 4 levels:
    a standard error of ~4 points on the mean over levels; noisy, but cheap)."""
    eval_policy: str = "train"
    """Sampling policy of the held-out evaluation: ``train`` = the training ``policy`` (what
    GRPO optimises: the expected reward of the policy that samples), or any policy name, e.g.
    ``greedy``. Every evaluation uses the same tasks and sampling seed, so the change between
    evaluations is the policy's, not the draw's. (Measured: greedy success barely moves in a
    five-minute run even when sampled success rises; see RESULTS.md.)"""
    eval_seed: int = 1000
    """Task seed of the held-out tasks."""
    checkpoint_every: int = 25
    """Checkpoint every this many steps (and after the last); 0 = only at the end."""
    keep_checkpoints: int = 2
    """Most recent checkpoints kept on disk."""
    tensorboard: bool = True
    """Also log metrics to TensorBoard under ``out/tb`` if ``torch.utils.tensorboard`` imports."""
    wandb: bool = False
    """Also log metrics to Weights & Biases (``pip install 'agentropy[wandb]'``; checked before
    any work). ``WANDB_MODE=offline`` keeps the run local (files under ``out/wandb``)."""
    wandb_project: str = "agentropy"
    """W&B project of the run (the run is named after ``out``)."""
    progress: bool = True
    """Show a rich progress bar."""

    # ---------------------------------------------------------------- monitor
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    """Thresholds of the live training monitor (:mod:`agentropy.monitor`); it runs every step
    over the step's metrics, logs ``monitor/*`` and prints each alert."""
    stop_on: tuple[str, ...] = ()
    """Alert names that end training at the step they fire (e.g. ``["divergence",
    "collapse"]``); a checkpoint of that step is written first, so the run can be inspected or
    resumed with other settings. Empty: alerts only warn."""
    threads: int = 0
    """torch intra-op threads for the run (0 = leave torch's default). On a small shared CPU,
    1 is often several times faster for the tiny agent (no oversubscription)."""

    def __post_init__(self) -> None:
        from agentropy.control.temperature import schedule_from_name

        def positive(name: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")

        for name in ("steps", "tasks_per_step", "group_size", "max_turns", "max_new_tokens",
                     "max_tokens", "rollout_batch_size", "ppo_epochs", "minibatch_size",
                     "eval_every", "eval_episodes", "keep_checkpoints"):  # fmt: skip
            positive(name)
        from agentropy.env.faults import FAULT_FAMILIES

        if self.faults not in FAULT_FAMILIES:
            raise ValueError(
                f"faults must be one of {', '.join(FAULT_FAMILIES)}, got {self.faults!r}"
            )
        if self.group_size < 2:
            raise ValueError(
                f"group_size must be >= 2 (group-normalised advantages of a single rollout are "
                f"always 0), got {self.group_size}"
            )
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise ValueError(
                f"threads must be an integer >= 0 (0 = torch default), got {self.threads!r}"
            )
        if isinstance(self.checkpoint_every, bool) or self.checkpoint_every < 0:
            raise ValueError(
                f"checkpoint_every must be >= 0 (0 = only at the end), got {self.checkpoint_every}"
            )
        if self.loss not in LOSS_TERMS:
            raise ValueError(
                f"unknown loss {self.loss!r}; choose one of {', '.join(sorted(LOSS_TERMS))}"
            )
        if self.adv_std not in ADV_STDS:
            raise ValueError(f"adv_std must be one of {ADV_STDS}, got {self.adv_std!r}")
        if self.clip_ratio_c is not None and not self.clip_ratio_c > 1.0:
            raise ValueError(
                f"clip_ratio_c must be > 1 (verl uses 3.0) or none to disable dual-clip, got "
                f"{self.clip_ratio_c}"
            )
        if self.agg_mode not in AGG_MODES:
            raise ValueError(f"agg_mode must be one of {AGG_MODES}, got {self.agg_mode!r}")
        # Validates the names (ValueError lists the choices) without keeping the objects.
        schedule_from_name(self.policy)
        schedule_from_name(self.resolved_eval_policy)
        for name in ("lr", "adv_eps"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        for name in ("weight_decay", "max_grad_norm"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not 0.0 <= self.clip_low < 1.0:
            raise ValueError(f"clip_low must be in [0, 1) (DAPO uses 0.2), got {self.clip_low}")
        if not self.clip_high >= 0.0:
            raise ValueError(f"clip_high must be >= 0 (DAPO uses 0.28), got {self.clip_high}")
        if not 0.0 <= self.partial_credit < 1.0:
            raise ValueError(
                f"partial_credit must be in [0, 1) (a wrong answer must score below a right "
                f"one), got {self.partial_credit}"
            )
        for name in ("clip_cov_ratio", "kl_cov_ratio"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0.0 <= v <= 1.0):
                raise ValueError(
                    f"{name} must be in [0, 1] (a share of tokens; verl uses 2e-4), got {v}"
                )
        if not (math.isfinite(self.clip_cov_lb) and math.isfinite(self.clip_cov_ub)) or not (
            self.clip_cov_lb < self.clip_cov_ub
        ):
            raise ValueError(
                f"clip_cov_lb must be below clip_cov_ub, both finite (verl: 1 and 5), got "
                f"{self.clip_cov_lb} and {self.clip_cov_ub}"
            )
        if not (math.isfinite(self.kl_cov_coef) and self.kl_cov_coef >= 0.0):
            raise ValueError(f"kl_cov_coef must be a finite number >= 0, got {self.kl_cov_coef}")
        if not (math.isfinite(self.top_entropy_quantile) and 0.0 < self.top_entropy_quantile <= 1):
            raise ValueError(
                f"top_entropy_quantile must be in (0, 1] (the paper uses 0.2; 1 trains on every "
                f"token), got {self.top_entropy_quantile}"
            )
        if not math.isfinite(self.flat_coef):
            raise ValueError(f"flat_coef must be finite, got {self.flat_coef}")
        if not self.levels or any(lv not in LEVELS for lv in self.levels):
            raise ValueError(f"levels must be a non-empty list of 0, 1, 2, 3; got {self.levels}")
        if len(set(self.levels)) != len(self.levels):
            raise ValueError(f"levels must not repeat, got {self.levels}")
        if self.start_level not in self.levels:
            raise ValueError(
                f"start_level {self.start_level} is not among levels {list(self.levels)}; "
                f"add it to levels or start at {self.levels[0]}"
            )
        if not 0.0 < self.promote_threshold <= 1.0:
            raise ValueError(
                f"promote_threshold must be in (0, 1] (a success rate), got "
                f"{self.promote_threshold}"
            )
        if not 0.0 <= self.mix_lower < 1.0:
            raise ValueError(f"mix_lower must be in [0, 1), got {self.mix_lower}")
        if not self.out:
            raise ValueError("out must be a directory path, e.g. runs/train")
        bad = sorted(set(self.stop_on) - set(ALERT_NAMES))
        if bad:
            raise ValueError(
                f"stop_on: unknown alert names {bad}; choose from {', '.join(ALERT_NAMES)}"
            )

    # ------------------------------------------------------------------ views

    @property
    def episodes_per_step(self) -> int:
        """Rollouts per step: ``tasks_per_step * group_size``."""
        return self.tasks_per_step * self.group_size

    @property
    def resolved_eval_policy(self) -> str:
        """The held-out evaluation's policy name (``policy`` when ``eval_policy`` is ``train``)."""
        return self.policy if self.eval_policy == "train" else self.eval_policy

    @property
    def entropy_term(self) -> str:
        """Name of the entropy term of ``loss`` (:data:`agentropy.rl.losses.LOSS_TERMS`)."""
        return LOSS_TERMS[self.loss]

    @property
    def policy_term(self) -> str:
        """Name of the policy term of ``loss`` (:data:`agentropy.rl.losses.LOSSES`)."""
        return LOSS_POLICY_TERMS[self.loss]

    def policy_term_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the policy term (:mod:`agentropy.rl.policy_terms`): the PPO clip
        settings every term shares, plus the peer's own."""
        own: dict[str, dict[str, Any]] = {
            "ppo": {},
            "clip_cov": {"ratio": self.clip_cov_ratio, "lb": self.clip_cov_lb,
                         "ub": self.clip_cov_ub},
            "kl_cov": {"ratio": self.kl_cov_ratio, "coef": self.kl_cov_coef},
            "top_entropy": {"quantile": self.top_entropy_quantile},
        }  # fmt: skip
        return {
            "clip_low": self.clip_low,
            "clip_high": self.clip_high,
            "clip_ratio_c": self.clip_ratio_c,
            "agg_mode": self.agg_mode,
            **own[self.policy_term],
        }

    @property
    def entropy_agg_mode(self) -> AggMode:
        """Reduction of the entropy term: ``token-mean`` if ``entropy_token_mean``, else
        ``agg_mode``."""
        return "token-mean" if self.entropy_token_mean else self.agg_mode

    def entropy_schedule(self) -> CoefSchedule:
        """The coefficient schedule of the entropy term (:mod:`agentropy.rl.coefs`)."""
        schedules: dict[str, CoefSchedule] = {
            "none": FixedCoef(),
            "flat": FixedCoef(coef=self.flat_coef),
            "target": TargetSchedule(self.target),
            "rhythm": RhythmSchedule(self.rhythm),
        }
        return schedules[self.entropy_term]

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python view (tuples become lists; None values are kept)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if dataclasses.is_dataclass(v):
                v = dataclasses.asdict(v)  # type: ignore[arg-type]
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out

    def to_toml(self) -> str:
        """TOML text that :meth:`from_toml` / :meth:`from_dict` read back to an equal config.

        TOML has no null: fields that are None are left out (their default is None)."""
        lines: list[str] = []
        tables: list[str] = []
        for key, v in self.to_dict().items():
            if v is None:
                continue
            if isinstance(v, dict):
                tables.append(f"\n[{key}]")
                tables += [f"{k} = {_toml_value(x)}" for k, x in v.items()]
            else:
                lines.append(f"{key} = {_toml_value(v)}")
        return "\n".join(lines + tables) + "\n"

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from a (TOML-shaped) mapping; unknown keys and wrong types raise ValueError."""
        return _build(cls, data, prefix="")

    @classmethod
    def from_toml(cls, path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
        """Read a TOML file, then apply ``key=value`` overrides (see module docstring).

        Errors name the file (:class:`~agentropy.errors.InputError`) or the override."""
        p = Path(path)
        data = read_toml(p)
        try:
            config = cls.from_dict(data)
        except ValueError as err:
            raise InputError(str(err), path=p) from None
        return apply_overrides(config, overrides)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        # repr round-trips exactly; TOML needs a dot or exponent and spells inf/nan its own way.
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        escaped = v.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _suggest(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"


def build_config(cls: type, data: Mapping[str, Any]) -> Any:
    """Any config dataclass (e.g. :class:`TrainConfig`, or one that nests it) from a TOML-shaped
    mapping, with the same strict rules: values coerced to the field types without silent
    truncation, nested dataclasses from tables, unknown keys an error that suggests the closest
    known key (ValueError)."""
    return _build(cls, data, prefix="")


def _build(cls: type, data: Mapping[str, Any], *, prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ValueError(f"{prefix.rstrip('.') or 'config'} must be a table, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ValueError(f"unknown config key {prefix + key!r}{_suggest(key, list(fields))}")
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` converted to the field type ``hint`` (strict: no silent truncation)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() == "none")
        if is_none and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is typing.Literal:  # the value's type here; __post_init__ checks it is one of them
        return _coerce(value, type(args[0]), key)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, prefix=key + ".")  # type: ignore[arg-type]
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ValueError(f"{key} must be a list, e.g. [0, 1, 2], got {value!r}")
        return tuple(_coerce(v, args[0], key) for v in value)
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config field type {hint!r} for {key}")


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"rhythm.step=1e-3"`` -> ``(["rhythm", "step"], 0.001)``; see the module docstring."""
    key, eq, raw = item.partition("=")
    key, raw = key.strip(), raw.strip()
    if not eq or not key:
        raise ValueError(f"override {item!r} must look like key=value, e.g. lr=3e-5")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare string such as constant:1.0 or runs/x
    return key.split("."), value


def apply_overrides(config: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """``config`` with each ``key=value`` applied in order (later ones win); validated."""
    data = config.to_dict()
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                top = [k for k, v in node.items() if isinstance(v, dict)]
                raise ValueError(
                    f"override {item!r}: {part!r} is not a nested section{_suggest(part, top)}"
                )
            node = node[part]
        if path[-1] not in node:
            raise ValueError(f"override {item!r}: unknown key{_suggest(path[-1], list(node))}")
        node[path[-1]] = value
    return TrainConfig.from_dict(data)
