"""Watch a training run: streaming alerts over per-step metrics, and why entropy moved.

- :mod:`agentropy.monitor.detector`: the pure streaming detector (``Monitor.init`` /
  ``Monitor.update`` per step, checkpointable state) and its typed :class:`Alert`\\ s
  (``eruption``, ``subsided`` productive/degenerate/neutral, ``divergence``, ``collapse``,
  ``nonfinite``); its thresholds, each documented with the measurement behind its default, are
  :class:`MonitorConfig` (:mod:`agentropy.monitor.config`).
- :mod:`agentropy.monitor.attribution`: the covariance of sampled tokens' log-prob and advantage
  per phase and the entropy change it predicts (arXiv 2505.22617); imports torch, so it is loaded
  only when used.
- :mod:`agentropy.trace.importers.scalars`: scalar readers (TensorBoard event files, CSV exports, our
  trainer's ``metrics.parquet``) and the tag map from TRL / verl / agentropy names to
  :data:`METRICS`.
- :mod:`agentropy.monitor.tracker`: :class:`Tracker`, the stateful wrapper trainers and
  framework hooks call once per step (tag mapping, alerts, ``stop_on``, checkpoint), and
  :func:`replay` (the alerts of a finished run's step series, for the report).
- :mod:`agentropy.monitor.rates`: per-step degeneracy rates (loops, hallucinated calls, invalid
  actions, tool failures) of a batch of episodes, the evidence trainers feed the detector.
- :mod:`agentropy.monitor.synthetic`: planted-pattern series for validation.

Importing this package is cheap (no torch, pyarrow or scipy).
"""

from __future__ import annotations

from typing import Any

from agentropy.monitor.detector import (
    ALERT_NAMES,
    ENTROPY_METRICS,
    EVIDENCE_METRICS,
    METRICS,
    Alert,
    ChannelState,
    Monitor,
    MonitorConfig,
    MonitorState,
    load_state,
    state_dict,
)
from agentropy.monitor.tracker import Tracker, replay
from agentropy.trace.importers.scalars import DEFAULT_TAGS, TagMap

__all__ = [
    "ALERT_NAMES",
    "DEFAULT_TAGS",
    "ENTROPY_METRICS",
    "EVIDENCE_METRICS",
    "METRICS",
    "Alert",
    "ChannelState",
    "Monitor",
    "MonitorConfig",
    "MonitorState",
    "TagMap",
    "Tracker",
    "agreement",
    "attribution_metrics",
    "covariance_stats",
    "entropy_change_attribution",
    "finalize",
    "load_state",
    "replay",
    "state_dict",
]

_LAZY = {
    "agreement",
    "attribution_metrics",
    "covariance_stats",
    "entropy_change_attribution",
    "finalize",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from agentropy.monitor import attribution

        return getattr(attribution, name)
    raise AttributeError(f"module 'agentropy.monitor' has no attribute {name!r}")
