"""Write docs/metrics.md from agentropy.metrics.METRICS; ``--check`` fails if the page is stale."""

from __future__ import annotations

import sys
from pathlib import Path

from agentropy.metrics import METRICS

PAGE = Path(__file__).with_name("metrics.md")

HEADER = """# Metric names

Generated from `agentropy.metrics.METRICS` by `docs/gen_metrics.py`; do not edit by hand.
`{p}` stands for each phase: `plan`, `act`, `recover`, `answer`; `{alert}` for each alert of
the training monitor: `eruption`, `subsided`, `divergence`, `collapse`, `nonfinite`. The same key means the same
value whichever trainer logs it: our trainer (`metrics.parquet`; the `breath/*` keys go to
TensorBoard and Weights & Biases),
the TRL adapter (`RhythmGRPOTrainer`, `BreathGRPOTrainer`) and the training monitor
(`Sinks.log_alerts`). The verl adapter logs none of these yet: verl's own names (`actor/entropy`, ...)
are read by `agentropy watch` through its tag map.

| name | unit | logged by | meaning |
| --- | --- | --- | --- |
"""


def render() -> str:
    rows = [f"| `{m.name}` | {m.unit} | {', '.join(m.producers)} | {m.meaning} |" for m in METRICS]
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        if not PAGE.is_file() or PAGE.read_text() != text:
            sys.exit(f"{PAGE} is stale: run python docs/gen_metrics.py")
    else:
        PAGE.write_text(text)
