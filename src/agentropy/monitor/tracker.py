"""A stateful wrapper of the detector for trainers and framework hooks: raw metrics in, alerts out.

The detector itself is pure (:class:`~agentropy.monitor.detector.Monitor`); training loops want
one object that remembers the state, maps their own metric names (:class:`TagMap`), keeps the
alerts, and says when to stop. :class:`Tracker` is that object, and the one place where
``stop_on`` is decided, so our trainer, a TRL ``TrainerCallback`` and a verl hook behave alike:

- agentropy's trainer: ``tracker.step(step, metrics)`` after the step's metrics dict is complete;
  ``tracker.state_dict()`` goes into the checkpoint.
- TRL: in ``TrainerCallback.on_log(args, state, control, logs=...)``, ``tracker.step(
  state.global_step, logs)``; set ``control.should_training_stop = tracker.should_stop``.
- verl: in ``RayPPOTrainer.fit`` (``verl/trainer/ppo/ray_trainer.py``), just before
  ``logger.log(data=metrics, step=self.global_steps)``, ``tracker.step(self.global_steps,
  metrics)``; the dict then holds ``actor/entropy``, ``critic/score/mean`` and
  ``response_length/mean`` from ``compute_data_metrics``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from agentropy.monitor.detector import (
    ALERT_NAMES,
    METRICS,
    Alert,
    Monitor,
    MonitorConfig,
    load_state,
    state_dict,
)
from agentropy.trace.importers.scalars import TagMap

__all__ = ["Tracker", "replay"]


class Tracker:
    """Detector state plus tag mapping plus ``stop_on``, for one training run."""

    def __init__(
        self,
        config: MonitorConfig | None = None,
        *,
        tags: TagMap | None = None,
        stop_on: Iterable[str] = (),
    ) -> None:
        self.monitor = Monitor(config)
        self.tags = tags if tags is not None else TagMap.default()
        self.stop_on = frozenset(stop_on)
        bad = sorted(self.stop_on - set(ALERT_NAMES))
        if bad:
            raise ValueError(f"stop_on: unknown alert names {bad}; choose from {list(ALERT_NAMES)}")
        self.state = self.monitor.init()
        self.alerts: list[Alert] = []
        self.stop_reason: Alert | None = None

    def step(self, step: int, raw: Mapping[str, Any]) -> list[Alert]:
        """Feed one step's metrics (any names the tag map knows; non-numbers are ignored).

        A step not after the last one seen (a resumed run replaying logged steps) is skipped.
        Returns the alerts it fired.
        """
        if self.state.step is not None and step <= self.state.step:
            return []
        numeric = {
            k: float(v)
            for k, v in raw.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        alerts, self.state = self.monitor.update(self.state, self.tags.resolve(numeric), step=step)
        self.alerts += alerts
        if self.stop_reason is None:
            self.stop_reason = next((a for a in alerts if a.name in self.stop_on), None)
        return alerts

    @property
    def should_stop(self) -> bool:
        """True once an alert named in ``stop_on`` has fired."""
        return self.stop_reason is not None

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready checkpoint: detector state and the alerts so far."""
        return {
            "monitor": state_dict(self.state),
            "alerts": [a.to_dict() for a in self.alerts],
        }

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (alerts are kept; ``stop_reason`` restarts empty)."""
        self.state = load_state(d["monitor"])
        self.alerts = [Alert(**a) for a in d.get("alerts", [])]
        self.stop_reason = None


def replay(series: Mapping[str, Any], config: MonitorConfig | None = None) -> list[Alert]:
    """The alerts the live monitor would have raised over a finished run's step series.

    ``series`` is column-wise, as the analyzer's ``training["series"]``
    (:func:`agentropy.analysis.training.step_series`): ``step`` plus any of
    :data:`~agentropy.monitor.METRICS` as equal-length sequences (None or NaN: not logged).
    The HTML report draws these on its training chart.
    """
    import math

    steps = list(series.get("step") or [])
    monitor = Monitor(config)
    state = monitor.init()
    alerts: list[Alert] = []
    names = [m for m in METRICS if m in series]
    for i, step in enumerate(steps):
        row: dict[str, float | None] = {}
        for m in names:
            v = series[m][i]
            row[m] = None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
        fired, state = monitor.update(state, row, step=int(step))
        alerts += fired
    return alerts
