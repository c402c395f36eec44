"""The plumbing of a training run, kept out of the loop: run directory, resume, checkpoints, sinks.

:func:`agentropy.rl.trainer.train` reads top to bottom because everything here is one call:

- :func:`open_run_dir` checks that ``config.out`` is fresh (or, resuming, holds a run of the
  same config; only :data:`RESUMABLE_FIELDS` may change) and writes ``config.toml``.
- :class:`LoopState` is what the next step depends on besides model and optimizer: step,
  curriculum level, evaluation history, entropy-coefficient state, metric rows.
  :func:`save_checkpoint` stores it with the model, optimizer and every RNG (python, numpy,
  torch, the trainer's numpy generator); :func:`restore_checkpoint` puts all of it back, so the
  next step is exactly the step an uninterrupted run would have taken.
- :class:`Sinks` holds the trace stores (``traces/``, ``eval_traces/``), the metrics file
  (``metrics.parquet``, rewritten whole after each step), TensorBoard and Weights & Biases; the
  last two also get the ``breath/*`` window metrics of each step's training episodes, the same
  keys the TRL adapter logs (:data:`agentropy.metrics.METRICS` lists every name).
- :func:`check_sinks` fails before any work when a requested sink's package is missing.
- :class:`MetricAccumulator` combines minibatch metrics by summing values and weights (no mean
  of means; DESIGN.md).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from agentropy.outputs import fsync_dir, fsync_file
from agentropy.rl.config import TrainConfig
from agentropy.trace import Episode

__all__ = [
    "NOTIFY_ALERTS",
    "RESUMABLE_FIELDS",
    "LoopState",
    "MetricAccumulator",
    "Sinks",
    "check_sinks",
    "latest_checkpoint",
    "open_run_dir",
    "read_metrics",
    "restore_checkpoint",
    "save_checkpoint",
    "seed_everything",
]

#: Config fields that may differ between a run and its resumption (they do not change results).
RESUMABLE_FIELDS = frozenset(
    {
        "steps", "progress", "tensorboard", "wandb", "wandb_project", "checkpoint_every",
        "keep_checkpoints", "stop_on",
    }
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Run directory and seeds
# --------------------------------------------------------------------------------------------


def latest_checkpoint(out: str | Path) -> Path | None:
    """The newest ``checkpoints/step-NNNNNN`` directory of a run, or None."""
    root = Path(out) / "checkpoints"
    steps = sorted(p for p in root.glob("step-*") if (p / "state.pt").is_file())
    return steps[-1] if steps else None


#: What a run writes into its directory (cleared when a run stopped before its first checkpoint
#: starts over; nothing else in the directory is touched).
RUN_OUTPUTS: tuple[str, ...] = (
    "metrics.parquet",
    "metrics.tmp",
    "checkpoints",
    "traces",
    "eval_traces",
    "tb",
    "final",
    "summary.json",
)


def open_run_dir(config: TrainConfig, *, resume: bool) -> Path | None:
    """Check ``config.out`` for a fresh run or a resumption, write ``config.toml``.

    Returns the checkpoint to resume from (None for a fresh run). A run killed before its first
    checkpoint has nothing to resume: with or without ``resume`` it starts over in place (its
    partial outputs removed) and says so on stderr, so no kill ever strands a directory. Raises
    ValueError saying how to fix a directory that holds a checkpointed run (without ``resume``),
    ``resume`` where no run ever started, or a changed config.
    """
    from agentropy.outputs import atomic_write_text

    out = Path(config.out)
    ckpt_dir = latest_checkpoint(out)
    started = [name for name in RUN_OUTPUTS if (out / name).exists()]
    if ckpt_dir is None and (started or (out / "config.toml").exists()):
        removing = f" (removing {', '.join(started)})" if started else ""
        print(
            f"note: {out} holds a run stopped before its first checkpoint; starting it over in "
            f"place{removing}",
            file=sys.stderr,
        )
        for name in started:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink()
    elif resume and ckpt_dir is None:
        raise ValueError(f"--resume: no run under {out} to resume; start without --resume")
    elif not resume and ckpt_dir is not None:
        raise ValueError(f"{out} already holds a run: pass --resume, or choose another --out")
    if resume and ckpt_dir is not None:
        saved = TrainConfig.from_toml(out / "config.toml").to_dict()
        changed = [
            k for k, v in config.to_dict().items()
            if k not in RESUMABLE_FIELDS and saved.get(k) != v
        ]  # fmt: skip
        if changed:
            raise ValueError(
                f"cannot resume {out} with a different config ({', '.join(changed)} changed); "
                f"resume with the saved {out / 'config.toml'} (only {sorted(RESUMABLE_FIELDS)} "
                "may change) or choose another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.toml", config.to_toml(), force=True)
    return ckpt_dir if resume else None


def seed_everything(config: TrainConfig) -> np.random.Generator:
    """Set threads and the global RNGs from ``config.seed``; return the trainer's own generator
    (task mix, minibatch order)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    torch.manual_seed(config.seed)
    return np.random.default_rng(config.seed)


def derive_seed(seed: int, *keys: int) -> int:
    """Independent 31-bit seed for ``(seed, *keys)`` (SeedSequence mixing)."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, *keys]).generate_state(1)[0] >> 1)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


@dataclass
class LoopState:
    """What the next step depends on besides model, optimizer and RNGs."""

    level_index: int
    """Index of the current curriculum level in ``config.levels``."""
    coef_state: Any
    """State of the entropy-coefficient schedule (:mod:`agentropy.rl.coefs`)."""
    step: int = 0
    """Last completed step."""
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    """Held-out evaluations so far."""
    metric_rows: list[dict[str, Any]] = field(default_factory=list)
    """One metrics dict per completed step."""
    monitor: dict[str, Any] | None = None
    """The live monitor's checkpoint (:meth:`agentropy.monitor.Tracker.state_dict`)."""


def _np_state() -> tuple[Any, ...]:
    # numpy's legacy global state holds an ndarray; store a list so weights_only loading works.
    # numpy's stubs type get_state() as a str-or-tuple union; legacy=True always gives the tuple.
    name, keys, pos, has_gauss, gauss = cast(tuple[Any, ...], np.random.get_state())
    return (name, keys.tolist(), int(pos), int(has_gauss), float(gauss))


def _set_np_state(state: Sequence[Any]) -> None:
    name, keys, pos, has_gauss, gauss = state
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))


def save_checkpoint(
    out: Path,
    state: LoopState,
    *,
    model: Any,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    policy: str,
    keep: int,
) -> Path:
    """Write ``checkpoints/step-NNNNNN/state.pt`` atomically; keep the newest ``keep``."""
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "trainer": {
            "step": state.step,
            "level_index": state.level_index,
            "eval_history": json.dumps(state.eval_history),
            "coef_state": json.dumps(state.coef_state.state_dict()),
            "monitor": json.dumps(state.monitor),
            "policy": policy,
            "python_rng": random.getstate(),
            "numpy_global_rng": _np_state(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": json.dumps(rng.bit_generator.state),
        },
    }
    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step:06d}"
    tmp = root / f".tmp-step-{state.step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(payload, tmp / "state.pt")
    fsync_file(tmp / "state.pt")  # on disk before the rename publishes it
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # a checkpoint exists only once complete
    fsync_dir(root)
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def restore_checkpoint(
    ckpt_dir: Path,
    *,
    model: Any,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    schedule: Any,
) -> LoopState:
    """Load model, optimizer and every RNG in place; return the loop state of the checkpoint
    (metric rows re-read from ``metrics.parquet`` up to its step)."""
    state = torch.load(ckpt_dir / "state.pt", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    tr = state["trainer"]
    random.setstate(tr["python_rng"])
    _set_np_state(tr["numpy_global_rng"])
    torch.set_rng_state(tr["torch_rng"])
    rng.bit_generator.state = json.loads(tr["numpy_rng"])
    step = int(tr["step"])
    coef = json.loads(tr["coef_state"])
    out = ckpt_dir.parent.parent
    rows = []
    if (out / "metrics.parquet").exists():
        rows = [r for r in read_metrics(out) if r["step"] <= step]
    return LoopState(
        level_index=int(tr["level_index"]),
        # Checkpoints written before fixed schedules had a state stored None for them.
        coef_state=schedule.init() if coef is None else schedule.load(coef),
        step=step,
        eval_history=json.loads(tr["eval_history"]),
        metric_rows=rows,
        # Checkpoints from before the monitor have none: the trainer replays the metric rows.
        monitor=json.loads(tr["monitor"]) if "monitor" in tr else None,
    )


# --------------------------------------------------------------------------------------------
# Sinks: traces, metrics file, TensorBoard
# --------------------------------------------------------------------------------------------


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    table = pa.table({k: [row.get(k) for row in rows] for k in keys})
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    fsync_file(tmp)
    os.replace(tmp, path)


def read_metrics(out: str | Path) -> list[dict[str, Any]]:
    """The rows of ``out/metrics.parquet`` (one dict per step; missing values are None)."""
    import pyarrow.parquet as pq

    return pq.read_table(Path(out) / "metrics.parquet").to_pylist()


def _existing_episode_ids(store: Path) -> set[str]:
    from agentropy.trace import iter_parts

    if not any((store / "episodes").glob("part-*.parquet")):
        return set()  # no part yet (a run killed before its first flush)
    ids: set[str] = set()
    for ep_table, _ in iter_parts(store):
        ids.update(ep_table.column("episode_id").to_pylist())
    return ids


def check_sinks(config: TrainConfig) -> None:
    """Raise :class:`~agentropy.integrations._extras.MissingExtraError` (one line naming the
    extra) if ``config`` asks for a sink whose package is not installed.

    Called before the model loads, so a missing ``wandb`` costs nothing but the message.
    """
    if config.wandb:
        import importlib.util

        from agentropy.integrations._extras import MissingExtraError

        if importlib.util.find_spec("wandb") is None:
            raise MissingExtraError(
                "wandb is required for --set wandb=true: pip install 'agentropy[wandb]'"
            )


#: Monitor alerts that also notify through W&B (``run.alert``: e-mail or Slack, per the user's
#: W&B settings); the others are only logged as ``breath/alert_<name>`` counts.
NOTIFY_ALERTS: frozenset[str] = frozenset({"divergence", "collapse", "nonfinite"})


class Sinks:
    """Where a run's telemetry goes; :meth:`close` in a ``finally``."""

    def __init__(
        self,
        out: Path,
        *,
        tensorboard: bool,
        console: Any,
        wandb_project: str | None = None,
        run_config: Mapping[str, Any] | None = None,
    ) -> None:
        from agentropy.trace import TraceWriter

        self.out = out
        self.traces = TraceWriter(out / "traces")
        self.eval_traces = TraceWriter(out / "eval_traces")
        # An interrupted run may have flushed episodes of steps after its last checkpoint; the
        # resumed run regenerates them identically, so already-stored ones are skipped.
        self.stored_ids = _existing_episode_ids(out / "traces") | _existing_episode_ids(
            out / "eval_traces"
        )
        # breath/* metrics of the last training episodes, logged with the next metrics row.
        self._breath: dict[str, float] = {}
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tb"))
            except ImportError:
                console.print(
                    "note: torch.utils.tensorboard is not importable; TensorBoard skipped"
                )
        self.wandb: Any = None
        if wandb_project is not None:
            import wandb

            # The run id is derived from the directory so that --resume continues the same run.
            run_id = "".join(c if c.isalnum() else "-" for c in out.resolve().as_posix())[-64:]
            self.wandb = wandb.init(
                project=wandb_project,
                name=out.name,
                id=run_id.strip("-") or "run",
                dir=str(out),
                config=dict(run_config or {}),
                resume="allow",
            )

    @property
    def logging(self) -> bool:
        """Whether any scalar sink (TensorBoard, W&B) is open."""
        return self.tb is not None or self.wandb is not None

    def write_episodes(self, episodes: Sequence[Episode], *, evaluation: bool = False) -> None:
        """Store episodes (token streams dropped) unless an interrupted run stored them."""
        writer = self.eval_traces if evaluation else self.traces
        if not evaluation and self.logging:
            from agentropy.integrations._trl_core import breath_metrics

            self._breath = breath_metrics(list(episodes))
        for ep in episodes:
            ep.meta.pop("input_ids", None)
            ep.meta.pop("assistant_spans", None)
            if ep.episode_id not in self.stored_ids:
                writer.write(ep)
        writer.flush()

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite ``metrics.parquet`` with every row; log the last row and the last training
        episodes' ``breath/*`` metrics to TensorBoard and W&B (finite floats only)."""
        _write_metrics(self.out / "metrics.parquet", rows)
        if not rows or not self.logging:
            return
        row = rows[-1]
        scalars = {
            k: v
            for k, v in {**row, **self._breath}.items()
            if k != "step" and isinstance(v, float) and math.isfinite(v)
        }
        self._breath = {}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, row["step"])
        if self.wandb is not None:
            self.wandb.log(scalars, step=int(row["step"]))

    def log_alerts(self, alerts: Sequence[Any], *, step: int) -> None:
        """Log the training monitor's alerts of one step (:class:`agentropy.monitor.Alert`) to
        TensorBoard and W&B: ``breath/alert_<name>`` counts at ``step``, and on W&B a
        notification (``run.alert``) for those named in :data:`NOTIFY_ALERTS`.

        The alerts themselves stay in the tracker's state (and the checkpoint); this only makes
        them visible where the user watches the curves.
        """
        if not alerts:
            return
        counts: dict[str, float] = {}
        for a in alerts:
            counts[f"breath/alert_{a.name}"] = counts.get(f"breath/alert_{a.name}", 0.0) + 1.0
        if self.tb is not None:
            for k, v in counts.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(counts, step=step)
            for a in alerts:
                if a.name in NOTIFY_ALERTS:
                    self.wandb.alert(
                        title=f"agentropy: {a.name} of {a.metric} at step {a.step}",
                        text=a.suggestion or a.name,
                        level="WARN",
                    )

    def close(self) -> None:
        self.traces.close()
        self.eval_traces.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


# --------------------------------------------------------------------------------------------
# Minibatch metrics
# --------------------------------------------------------------------------------------------


class MetricAccumulator:
    """Sums of value x weight and of weights per key, over a step's minibatches.

    Entropy means are weighted by their own token counts (``entropy/recover_mean`` by
    ``tokens/recover``), counts add up, everything else is weighted by the minibatch's tokens.
    """

    def __init__(self) -> None:
        self._acc: dict[str, list[float]] = {}

    def __bool__(self) -> bool:
        return bool(self._acc)

    def add(self, metrics: Mapping[str, float], weight: float) -> None:
        for key, v in metrics.items():
            w = weight
            if key == "entropy/mean":
                w = metrics.get("tokens/total", weight)
            elif key.startswith("entropy/") and key.endswith("_mean"):
                w = metrics.get(f"tokens/{key[len('entropy/') : -len('_mean')]}", weight)
            elif key.startswith("tokens/"):
                w = 1.0
            acc = self._acc.setdefault(key, [0.0, 0.0])
            acc[0] += v * w
            acc[1] += w

    def result(self) -> dict[str, float]:
        """Token-weighted means (sums for ``tokens/*`` keys)."""
        out = {}
        for key, (total, weight) in self._acc.items():
            out[key] = total if key.startswith("tokens/") else total / weight if weight else 0.0
        return out
