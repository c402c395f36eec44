"""The whole pipeline in one call (``agentropy demo``): bootstrap -> train -> evaluate -> report.

:func:`run_demo` runs, on CPU, with progress bars:

1. **bootstrap** the embedded tiny agent (:func:`agentropy.agent.tiny.bootstrap`; reused when
   cached under ``$AGENTROPY_HOME``): the full recipe, or :meth:`TinyRecipe.quick` with ``quick``;
2. **train** it briefly with multi-turn GRPO (:func:`agentropy.rl.trainer.train`: phase-aware
   sampling and the ``rhythm`` loss), writing ``train/`` (metrics, training traces with ``step``);
   the demo says plainly, on the terminal and in the report metadata, when training is skipped or
   fails, and then evaluates the warm-started agent;
3. **evaluate** the sampling policies ``greedy``, ``constant:1.0`` and ``phase`` on the same
   held-out tasks at levels 0-3 (:func:`agentropy.pipelines.compare.run_eval`), writing ``eval/``;
4. **analyse** the evaluation traces (and the training traces, for the training section) and
   write ``report.html`` (:func:`agentropy.report.html.report_from_paths`) plus ``demo.json``.

Budgets (:class:`DemoConfig`): the default preset aims at under 10 minutes on 2 (shared) CPU
cores with the agent already cached (bootstrapping the full tiny agent the first time takes
longer: see :mod:`agentropy.agent.tiny`), ``quick`` at about 2-3 minutes including its own
bootstrap; every size is a field so tests can go smaller. ``model`` skips the bootstrap and
demonstrates any local model directory.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentropy.env.toolworld import LEVELS
from agentropy.pipelines.compare import DEFAULT_POLICIES

__all__ = [
    "DEMO_OUTPUTS",
    "DemoConfig",
    "render_summary",
    "run_demo",
]


#: What a demo run directory holds (``force`` replaces exactly these; other files stay).
DEMO_OUTPUTS: tuple[str, ...] = ("train", "eval", "report.html", "demo.json")


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of a demo run. :meth:`preset` gives the default and quick budgets."""

    out: str = "runs/demo"
    """Run directory: ``train/``, ``eval/``, ``report.html``, ``demo.json``."""
    quick: bool = False
    """Use :meth:`TinyRecipe.quick` for the agent (smaller model, trained in well under a
    minute)."""
    model: str | None = None
    """A model directory to use instead of the embedded tiny agent (no bootstrap): our own agent
    or any local Hugging Face causal LM with a chat template."""
    train: bool = True
    """Run the short RL training (False: evaluate the warm-started agent, and say so)."""
    train_steps: int = 12
    """GRPO steps."""
    tasks_per_step: int = 4
    """Training tasks per step."""
    group_size: int = 4
    """Rollouts per training task (GRPO group)."""
    train_eval_episodes: int = 6
    """Held-out tasks per level in the trainer's own evaluations."""
    train_eval_every: int = 4
    """The trainer evaluates (and may promote the curriculum) every this many steps, and before
    the first and after the last; each evaluation costs ``train_eval_episodes * 4`` episodes."""
    eval_episodes: int = 16
    """Evaluation episodes per level and policy."""
    levels: tuple[int, ...] = LEVELS
    """ToolWorld levels evaluated."""
    max_turns: int = 6
    """Assistant turns per episode (training and evaluation)."""
    max_new_tokens: int = 64
    """Tokens per assistant turn."""
    max_tokens: int = 256
    """Assistant tokens per episode."""
    batch_size: int = 16
    """Episodes decoded together in evaluation."""
    seed: int = 0
    """Seed of training, task draws, sampling and bootstrap intervals."""
    home: str | None = None
    """Agent cache directory (None: ``$AGENTROPY_HOME`` or ``~/.cache/agentropy``)."""
    progress: bool = True
    """Show progress bars."""
    force: bool = False
    """Replace an earlier demo in ``out`` (its train/, eval/, report.html and demo.json; other
    files stay), kept aside until the new one is complete. Without it an earlier demo is an
    error."""

    def __post_init__(self) -> None:
        for name in (
            "train_steps",
            "tasks_per_step",
            "train_eval_episodes",
            "train_eval_every",
            "eval_episodes",
            "max_turns",
            "max_new_tokens",
            "max_tokens",
            "batch_size",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"DemoConfig.{name} must be an integer >= 1, got {v!r}")
        if self.group_size < 2:
            raise ValueError(f"DemoConfig.group_size must be >= 2 (GRPO), got {self.group_size}")
        if not self.levels or any(lv not in LEVELS for lv in self.levels):
            raise ValueError(
                f"DemoConfig.levels must be among {', '.join(map(str, LEVELS))}; got {self.levels}"
            )

    @classmethod
    def preset(cls, *, quick: bool = False, **overrides: Any) -> DemoConfig:
        """The default budget (~10 min on 2 cores) or the quick one (~2 min), then overrides."""
        base: dict[str, Any] = {"quick": quick}
        if quick:
            base.update(
                train_steps=3,
                tasks_per_step=3,
                group_size=2,
                train_eval_episodes=3,
                train_eval_every=3,
                eval_episodes=6,
            )
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


def _promotions(train_dir: Path) -> list[dict[str, int]]:
    """Steps where the curriculum level went up, from the trainer's ``metrics.parquet``."""
    from agentropy.rl.trainer import read_metrics

    out: list[dict[str, int]] = []
    prev = None
    for row in sorted(read_metrics(train_dir), key=lambda r: r["step"]):
        level = row.get("curriculum/level")
        if level is None:
            continue
        if prev is not None and level > prev:
            out.append({"step": int(row["step"]), "level": int(level)})
        prev = level
    return out


def run_demo(config: DemoConfig = DemoConfig(), *, console: Any = None) -> dict[str, Any]:
    """Run the pipeline (module docstring); returns what ``demo.json`` holds.

    ``console``: a rich ``Console`` for notes and progress (default: stderr).

    ``config.out`` is checked before the bootstrap: a folder holding any of
    :data:`DEMO_OUTPUTS` from an earlier demo is refused unless ``config.force``
    (:class:`~agentropy.errors.OutputError`, one line), and it must take a write. With
    ``force`` the earlier demo stays, set aside, until this one has written ``demo.json`` (last,
    atomically); if this one fails or is interrupted, its partial outputs are deleted and the
    earlier demo is put back (:func:`agentropy.outputs.output_group`).
    """
    from rich.console import Console

    from agentropy.outputs import output_group

    console = console if console is not None else Console(stderr=True)
    with output_group(config.out, DEMO_OUTPUTS, force=config.force) as out:
        return _run(config, out, console)


def _run(config: DemoConfig, out: Path, console: Any) -> dict[str, Any]:
    import torch

    from agentropy.agent import tiny
    from agentropy.agent.runner import RunnerConfig
    from agentropy.outputs import atomic_write_text
    from agentropy.pipelines.compare import EvalConfig, run_eval
    from agentropy.report.html import environment_versions, report_from_paths

    walls: dict[str, float] = {}
    t_all = time.perf_counter()

    # ---- 1. agent
    t0 = time.perf_counter()
    recipe = tiny.TinyRecipe.quick() if config.quick else tiny.TinyRecipe()
    if config.model is not None:
        from agentropy.agent.loading import load_model

        agent_dir = Path(config.model)
        console.print(f"[bold]1/4 agent[/]: using the model in {agent_dir}")
        model, tokenizer = load_model(agent_dir)
        agent_meta: dict[str, Any] = {"model": agent_dir.name}
    else:
        cached = tiny.agent_path(recipe, home=config.home).joinpath("config.json").is_file()
        console.print(
            f"[bold]1/4 agent[/]: {'cached' if cached else 'bootstrapping'} tiny agent "
            f"({'quick' if config.quick else 'full'} recipe {recipe.recipe_hash})"
        )
        agent_dir = tiny.bootstrap(recipe, home=config.home, progress=config.progress)
        model, tokenizer = tiny.load_agent(agent_dir)
        agent_meta = {"path_name": agent_dir.name, "recipe": recipe.to_dict()}
    walls["bootstrap"] = time.perf_counter() - t0

    # ---- 2. training
    t0 = time.perf_counter()
    train_dir = out / "train"
    training_note: str
    train_result: dict[str, Any] | None = None
    training_section = None
    promotions: list[dict[str, int]] = []
    if not config.train:
        training_note = "skipped (--no-train): the report evaluates the warm-started agent"
        console.print(f"[bold]2/4 training[/]: [yellow]{training_note}[/]")
    else:
        try:
            from agentropy.rl.config import TrainConfig
            from agentropy.rl.trainer import train
        except ImportError as err:  # the trainer is part of the package; guard partial installs
            training_note = f"skipped: the trainer is not available ({err})"
            console.print(f"[bold]2/4 training[/]: [yellow]{training_note}[/]")
        else:
            train_config = TrainConfig(
                out=str(train_dir),
                model=str(agent_dir),
                seed=config.seed,
                steps=config.train_steps,
                tasks_per_step=config.tasks_per_step,
                group_size=config.group_size,
                policy="phase",
                loss="rhythm",
                max_turns=config.max_turns,
                max_new_tokens=config.max_new_tokens,
                max_tokens=config.max_tokens,
                eval_every=config.train_eval_every,
                eval_episodes=config.train_eval_episodes,
                checkpoint_every=0,
                keep_checkpoints=1,
                tensorboard=False,
                progress=config.progress,
            )
            console.print(
                f"[bold]2/4 training[/]: {config.train_steps} GRPO steps x "
                f"{train_config.episodes_per_step} episodes (phase sampling, rhythm loss)"
            )
            try:
                result = train(train_config, model=model, tokenizer=tokenizer, console=console)
            except Exception as err:  # a demo reports a failed stage plainly and goes on
                training_note = f"failed ({type(err).__name__}: {err}); evaluating the agent as is"
                console.print(f"[red]training {training_note}[/]")
                # The weights may be half-updated: evaluate the agent as it was.
                from agentropy.agent.loading import load_model

                model, tokenizer = load_model(agent_dir)
            else:
                train_result = result.to_dict()
                before, after = result.held_out_before, result.held_out_after
                training_note = (
                    f"{result.steps} steps; held-out success "
                    f"({train_config.resolved_eval_policy} sampling) "
                    f"{_pct(before)} -> {_pct(after)}; final level L{result.level}"
                )
                from agentropy.analysis.summary import analyze_paths

                training_section = analyze_paths(train_dir / "traces")["training"]
                promotions = _promotions(train_dir)
    model.eval()
    walls["training"] = time.perf_counter() - t0

    # ---- 3. evaluation
    t0 = time.perf_counter()
    eval_config = EvalConfig(
        policies=DEFAULT_POLICIES,
        levels=config.levels,
        episodes=config.eval_episodes,
        seed=config.seed,
    )
    console.print(
        f"[bold]3/4 evaluation[/]: {', '.join(DEFAULT_POLICIES)} x levels "
        f"{','.join(map(str, config.levels))} x {config.eval_episodes} held-out episodes"
    )
    runner_config = RunnerConfig(
        max_turns=config.max_turns,
        max_new_tokens=config.max_new_tokens,
        max_tokens=config.max_tokens,
        batch_size=config.batch_size,
    )
    with torch.inference_mode():
        evaluation = run_eval(
            model,
            tokenizer,
            config=eval_config,
            runner_config=runner_config,
            out_dir=out / "eval",
            progress=config.progress,
        )
    walls["evaluation"] = time.perf_counter() - t0

    # ---- 4. analysis and report
    t0 = time.perf_counter()
    console.print("[bold]4/4 analysis and report[/]")
    metadata: dict[str, Any] = {
        "command": "agentropy demo" + (" --quick" if config.quick else ""),
        "seed": config.seed,
        "training": training_note,
        "agent": agent_meta,
        "demo config": {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(config).items()
            if k not in ("home", "progress", "force", "out")
        },
        "evaluation config": evaluation["config"],
        "wall seconds (before report)": {k: round(v, 1) for k, v in walls.items()},
    }
    if train_result is not None:
        metadata["training result"] = {
            k: train_result[k] for k in ("steps", "level", "held_out_before", "held_out_after")
        }
    report = out / "report.html"
    stores = [Path(p) for p in evaluation["traces"].values()]
    streamed = report_from_paths(
        stores,
        report,
        eval_rows=evaluation["rows"],
        training=training_section,
        promotions=promotions,
        metadata=metadata,
        seed=config.seed,
        title="agentropy demo",
        force=False,
    )
    walls["report"] = time.perf_counter() - t0
    walls["total"] = time.perf_counter() - t_all

    # The claims exactly as the report shows them (same single pass over the stores).
    claims = streamed.claims
    record = {
        "out": str(out),
        "report": str(report),
        "training": training_note,
        "train_result": train_result,
        "eval_rows": evaluation["rows"],
        "claims": [c.to_dict() for c in claims],
        "wall_s": walls,
        "versions": environment_versions(),
    }
    # Last, atomically: a demo folder with demo.json is a complete demo.
    atomic_write_text(out / "demo.json", json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def render_summary(record: dict[str, Any]) -> list[Any]:
    """Rich renderables summarising a demo record: success per level and policy, claims, times."""
    from rich.table import Table

    from agentropy.report.claims import format_ci, format_value

    rows = record["eval_rows"]
    levels = sorted({r["level"] for r in rows})
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    t = Table(title="Held-out success by level (eval)", title_justify="left")
    t.add_column("policy")
    for lv in levels:
        t.add_column(f"L{lv}", justify="right")
    t.add_column("tok/ep", justify="right")
    for p in policies:
        mine = {r["level"]: r for r in rows if r["policy"] == p}
        tok = [mine[lv]["tokens_per_episode"] for lv in levels if lv in mine]
        t.add_row(
            p,
            *[_pct(mine[lv]["success"]) if lv in mine else "-" for lv in levels],
            f"{sum(tok) / len(tok):.1f}" if tok else "-",
        )
    c = Table(title="Claims of the essay (verdicts by rule)", title_justify="left")
    for col, justify in (
        ("claim", "left"),
        ("ours", "right"),
        ("95% CI", "right"),
        ("n", "right"),
        ("verdict", "left"),
    ):
        c.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in record["claims"]:
        c.add_row(
            row["key"],
            format_value(row["measurement"], row["unit"]),
            format_ci(row["ci"], row["unit"]),
            str(row["n"]),
            row["verdict"],
        )
    w = record["wall_s"]
    times = ", ".join(f"{k} {v:.0f}s" for k, v in w.items())
    return [
        t,
        c,
        f"training: {record['training']}",
        f"wall time: {times}",
        f"report: {record['report']}",
    ]
