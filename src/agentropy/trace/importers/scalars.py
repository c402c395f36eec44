"""Per-step scalars from the logs runs already write, mapped onto the monitor's metric names.

Used by ``agentropy watch`` (the live monitor) and by ``agentropy analyze`` on TensorBoard / CSV
inputs (the training-cycle analysis); it lives with the other importers because it reads other
systems' logs and knows nothing about the monitor beyond the metric names below.

**Readers** (each incremental, so ``agentropy watch`` can follow a run while it trains):

- TensorBoard event directories (``events.out.tfevents.*``, decoded by
  :mod:`agentropy.trace.importers._tfevents` without TensorBoard installed). Event files directly in the
  directory form one run; otherwise every sub-directory holding event files is a run (what
  TensorBoard itself does with ``runs/<name>/``). Files of one run are read in name order (a
  resumed run adds a newer file); for a repeated (step, tag) the last value wins.
- CSV: TensorBoard's export (columns ``Wall time,Step,Value``; the tag is the file name, with a
  ``run-<run>-tag-`` prefix removed) or a wide table with a step column (:data:`STEP_COLUMNS`)
  and one column per metric. A directory of CSV files is one run (TensorBoard exports one file
  per tag). Empty cells are missing values; other non-numbers are an error naming file, line
  and column.
- Our trainer's ``metrics.parquet`` (one row per step), or a run directory holding one.

**Tag map** (:data:`DEFAULT_TAGS`): for each name in :data:`agentropy.monitor.METRICS`, the tags
that may carry it, first match wins. Defaults recognise agentropy's trainer (``entropy/mean``,
``entropy/<phase>_mean``, ``rollout/reward_mean``, ``breath/*``), verl's ``compute_data_metrics``
and actor metrics (``actor/entropy``, ``critic/score/mean``, ``critic/rewards/mean``,
``response_length/mean``) and TRL's ``GRPOTrainer`` logs as the transformers TensorBoard callback
writes them (``train/entropy``, ``train/reward``, ``train/completions/mean_length``,
``train/tools/failure_frequency``; without the ``train/`` prefix in ``log_history`` and CSVs).
Tags compare case-insensitively with every run of non-alphanumerics read as ``_``, so
TensorBoard's CSV file names (``actor_entropy``) match ``actor/entropy``.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agentropy.errors import InputError
from agentropy.trace import PHASES
from agentropy.trace.importers._tfevents import EventFileReader

__all__ = [
    "DEFAULT_TAGS",
    "STEP_COLUMNS",
    "CsvSource",
    "EventDirSource",
    "ParquetSource",
    "ScalarRun",
    "ScalarSource",
    "TagMap",
    "discover",
    "is_scalar_input",
    "read_scalar_runs",
]

#: Tags that may carry each monitor metric, in order of preference. Its keys are exactly
#: :data:`agentropy.monitor.METRICS` (a test checks it); this module does not import the monitor,
#: which imports it.
DEFAULT_TAGS: dict[str, tuple[str, ...]] = {
    "entropy": ("entropy/mean", "actor/entropy", "train/entropy", "entropy"),
    **{f"entropy_{p}": (f"entropy/{p}_mean", f"entropy_{p}") for p in PHASES},
    "reward": (
        "rollout/reward_mean",
        "critic/score/mean",
        "critic/rewards/mean",
        "train/reward",
        "reward",
    ),
    "length": (
        "rollout/tokens_per_episode",
        "response_length/mean",
        "train/completions/mean_length",
        "completions/mean_length",
        "length",
    ),
    "loop_rate": ("breath/loop_rate", "loop_rate"),
    "hallucination_rate": ("breath/hallucination_rate", "hallucination_rate"),
    "valid_action_rate": ("breath/valid_action_rate", "valid_action_rate"),
    "failure_rate": (
        "breath/failure_rate",
        "train/tools/failure_frequency",
        "tools/failure_frequency",
        "failure_rate",
    ),
}

#: Token-count tags that say an entropy tag is empty this step (our trainer logs 0 nats then).
_COUNT_TAGS: dict[str, str] = {
    "entropy/mean": "tokens/total",
    **{f"entropy/{p}_mean": f"tokens/{p}" for p in PHASES},
}

#: Column names accepted as the step of a wide CSV (compared after normalisation).
STEP_COLUMNS: tuple[str, ...] = (
    "step",
    "global_step",
    "_step",
    "train/global_step",
    "trainer/global_step",
    "training/global_step",
)

_NORM = re.compile(r"[^0-9a-z]+")


def norm_tag(tag: str) -> str:
    """Canonical spelling of a tag for matching: lower case, non-alphanumeric runs as ``_``."""
    return _NORM.sub("_", tag.lower()).strip("_")


@dataclass(frozen=True)
class TagMap:
    """Which raw tags feed each monitor metric (first present tag wins)."""

    tags: Mapping[str, tuple[str, ...]]

    @classmethod
    def default(
        cls,
        *,
        entropy_tag: str | None = None,
        reward_tag: str | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> TagMap:
        """:data:`DEFAULT_TAGS`, with ``entropy_tag`` / ``reward_tag`` / ``extra`` (metric ->
        tag) taking precedence over the defaults for their metric."""
        tags = dict(DEFAULT_TAGS)
        over = dict(extra or {})
        if entropy_tag:
            over["entropy"] = entropy_tag
        if reward_tag:
            over["reward"] = reward_tag
        for metric, tag in over.items():
            if metric not in DEFAULT_TAGS:
                raise ValueError(
                    f"unknown monitor metric {metric!r}; expected one of {tuple(DEFAULT_TAGS)}"
                )
            tags[metric] = (tag, *tags.get(metric, ()))
        return cls(tags)

    def resolve(self, raw: Mapping[str, float]) -> dict[str, float | None]:
        """Monitor metrics from one step's raw scalars (missing: None).

        An entropy tag whose token count (``tokens/<phase>``) is 0 at this step is missing, not
        0 nats: our trainer logs an empty phase's mean as 0.
        """
        by_norm = {norm_tag(k): v for k, v in raw.items()}
        out: dict[str, float | None] = {}
        for metric, candidates in self.tags.items():
            value = None
            for tag in candidates:
                key = norm_tag(tag)
                if key in by_norm:
                    count_tag = _COUNT_TAGS.get(tag)
                    count = by_norm.get(norm_tag(count_tag)) if count_tag else None
                    value = None if count is not None and count <= 0 else by_norm[key]
                    break
            out[metric] = value
        return out

    def source_of(self, raw_tags: Iterable[str]) -> dict[str, str]:
        """For display: metric -> the raw tag that feeds it, given the tags a run has."""
        have = {norm_tag(t): t for t in raw_tags}
        out = {}
        for metric, candidates in self.tags.items():
            for tag in candidates:
                if norm_tag(tag) in have:
                    out[metric] = have[norm_tag(tag)]
                    break
        return out


# -------------------------------------------------------------------------------- sources


class ScalarSource:
    """A run's scalar log. :meth:`poll` returns what was added since the last call."""

    name: str
    path: Path
    kind: str

    def poll(self) -> dict[int, dict[str, float]]:
        """New scalars: step -> {tag: value}."""
        raise NotImplementedError


class EventDirSource(ScalarSource):
    """The event files of one TensorBoard run directory (files directly inside it)."""

    kind = "tensorboard"

    def __init__(self, path: Path, name: str) -> None:
        self.path, self.name = path, name
        self._readers: dict[Path, EventFileReader] = {}

    def poll(self) -> dict[int, dict[str, float]]:
        for f in sorted(self.path.glob("*tfevents*")):
            if f.is_file() and f not in self._readers:
                self._readers[f] = EventFileReader(f)
        out: dict[int, dict[str, float]] = {}
        for reader in self._readers.values():
            for step, tag, value in reader.read_new():
                out.setdefault(step, {})[tag] = value
        return out


def _csv_tag(path: Path) -> str:
    stem = path.stem
    m = re.match(r"run-.*?-tag-(.+)$", stem)
    return m.group(1) if m else stem


def _cell(text: str, path: Path, line: int, column: str) -> float | None:
    text = text.strip()
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        raise InputError(
            f"not a number: {text[:40]!r}", path=path, line=line, field=column
        ) from None


class CsvSource(ScalarSource):
    """One CSV file, or every ``*.csv`` in a directory, as one run."""

    kind = "csv"

    def __init__(self, path: Path, name: str) -> None:
        self.path, self.name = path, name
        self._lines: dict[Path, int] = {}  # data lines already returned per file

    def _files(self) -> list[Path]:
        return sorted(self.path.glob("*.csv")) if self.path.is_dir() else [self.path]

    def poll(self) -> dict[int, dict[str, float]]:
        out: dict[int, dict[str, float]] = {}
        for f in self._files():
            try:
                text = f.read_text(encoding="utf-8-sig")
            except OSError as err:
                raise InputError(f"cannot read: {err.strerror}", path=f) from None
            lines = text.splitlines(keepends=True)
            if lines and not lines[-1].endswith(("\n", "\r")):
                lines = lines[:-1]  # a row still being written
            rows = list(csv.reader(lines))
            if not rows:
                continue
            header = [h.strip() for h in rows[0]]
            done = self._lines.get(f, 0)
            for i, row in enumerate(rows[1:], start=1):
                if i <= done or not any(c.strip() for c in row):
                    continue
                line = i + 1
                if len(row) != len(header):
                    raise InputError(
                        f"{len(row)} cells for {len(header)} columns", path=f, line=line
                    )
                for step, tag, value in self._row(f, header, row, line):
                    out.setdefault(step, {})[tag] = value
            self._lines[f] = len(rows) - 1
        return out

    def _row(self, f: Path, header: list[str], row: list[str], line: int):
        normed = [norm_tag(h) for h in header]
        if normed[:3] == ["wall_time", "step", "value"]:
            step = _cell(row[1], f, line, header[1])
            value = _cell(row[2], f, line, header[2])
            if step is None:
                raise InputError("empty step", path=f, line=line, field=header[1])
            if value is not None:
                yield int(step), _csv_tag(f), value
            return
        steps = {norm_tag(s) for s in STEP_COLUMNS}
        col = next((j for j, h in enumerate(normed) if h in steps), None)
        if col is None:
            raise InputError(
                f"no step column (expected one of {list(STEP_COLUMNS)}, or TensorBoard's "
                "'Wall time,Step,Value')",
                path=f,
                line=1,
            )
        step = _cell(row[col], f, line, header[col])
        if step is None or not math.isfinite(step) or step != int(step):
            raise InputError(f"step must be an integer, got {row[col]!r}", path=f, line=line,
                             field=header[col])  # fmt: skip
        for j, h in enumerate(header):
            if j == col:
                continue
            value = _cell(row[j], f, line, h)
            if value is not None:
                yield int(step), h, value


class ParquetSource(ScalarSource):
    """Our trainer's ``metrics.parquet`` (rewritten whole, atomically, every step)."""

    kind = "parquet"

    def __init__(self, path: Path, name: str) -> None:
        self.path, self.name = path, name
        self._seen: int | None = None
        self._stamp: tuple[int, int] | None = None

    def poll(self) -> dict[int, dict[str, float]]:
        import pyarrow.parquet as pq

        try:
            st = self.path.stat()
        except OSError:
            return {}
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return {}
        try:
            rows = pq.read_table(self.path).to_pylist()
        except Exception as err:  # pyarrow raises several types for a bad file
            raise InputError(f"cannot read Parquet: {err}", path=self.path) from None
        self._stamp = stamp
        out: dict[int, dict[str, float]] = {}
        for r, row in enumerate(rows):
            step = row.get("step")
            if not isinstance(step, int):
                raise InputError("missing or non-integer step", path=self.path, row=r, field="step")
            if self._seen is not None and step <= self._seen:
                continue
            out[step] = {
                k: float(v) for k, v in row.items()
                if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
            }  # fmt: skip
        if out:
            self._seen = max(out)
        return out


def discover(path: str | Path) -> list[ScalarSource]:
    """The runs under ``path``: a TensorBoard directory, CSV file/directory, ``metrics.parquet``
    or a trainer run directory. A directory may hold several TensorBoard runs."""
    p = Path(path)
    if not p.exists():
        raise InputError("no such file or directory", path=p)
    if p.is_file():
        if p.suffix == ".parquet":
            return [ParquetSource(p, p.parent.name or p.name)]
        if p.suffix == ".csv":
            return [CsvSource(p, p.stem)]
        if "tfevents" in p.name:
            return [EventDirSource(p.parent, p.parent.name)]
        raise InputError(
            "not a metrics file (expected .csv, .parquet or a TensorBoard events file)", path=p
        )
    if (p / "metrics.parquet").is_file():  # our trainer's run directory (its tb/ holds the same)
        return [ParquetSource(p / "metrics.parquet", p.name)]
    if any(p.glob("*tfevents*")):
        return [EventDirSource(p, p.name)]
    runs = sorted({f.parent for f in p.rglob("*tfevents*") if f.is_file()})
    if runs:
        return [EventDirSource(r, str(r.relative_to(p))) for r in runs]
    if any(p.glob("*.csv")):
        return [CsvSource(p, p.name)]
    raise InputError(
        "no TensorBoard event files, CSV files or metrics.parquet found (a run may not have "
        "logged yet)",
        path=p,
    )


# -------------------------------------------------------------------------------- whole runs


def is_scalar_input(path: str | Path) -> bool:
    """Whether ``path`` holds training scalars (TensorBoard events or CSV) rather than traces.

    A trace store (a directory with ``episodes/``) and JSONL trace files are not scalar inputs.
    """
    p = Path(path)
    if p.is_file():
        return p.suffix == ".csv" or "tfevents" in p.name
    if not p.is_dir() or (p / "episodes").is_dir():
        return False
    return any(p.glob("*.csv")) or any(f.is_file() for f in p.rglob("*tfevents*"))


@dataclass(frozen=True)
class ScalarRun:
    """One run's per-step series, keyed by monitor metric; steps sorted ascending."""

    name: str
    kind: str
    steps: np.ndarray
    """(S,) int64 step numbers."""
    series: dict[str, np.ndarray]
    """metric -> (S,) float64, NaN where the step did not log it; only metrics that appear."""
    tags: dict[str, str]
    """metric -> the raw tag that fed it."""


def read_scalar_runs(
    path: str | Path, *, entropy_tag: str | None = None, reward_tag: str | None = None
) -> list[ScalarRun]:
    """Every run under ``path`` read whole (see :func:`discover`), mapped through the tag map.

    ``entropy_tag`` / ``reward_tag`` take precedence over the default tags. A run with no
    entropy series is an error naming the tags tried, since nothing can be analysed without it.
    """
    tag_map = TagMap.default(entropy_tag=entropy_tag, reward_tag=reward_tag)
    runs = []
    for src in discover(path):
        raw = src.poll()
        steps = np.asarray(sorted(raw), dtype=np.int64)
        all_tags = {t for row in raw.values() for t in row}
        resolved = [tag_map.resolve(raw[int(s)]) for s in steps]
        series: dict[str, np.ndarray] = {}
        for metric in tag_map.tags:
            vals = [r[metric] for r in resolved]
            if any(v is not None for v in vals):
                series[metric] = np.asarray([np.nan if v is None else v for v in vals], np.float64)
        if "entropy" not in series:
            raise InputError(
                f"no entropy series in run {src.name!r}: none of the tags "
                f"{list(tag_map.tags['entropy'])} was logged (pass --entropy-tag; tags seen: "
                f"{sorted(all_tags)[:12]})",
                path=src.path,
            )
        runs.append(ScalarRun(src.name, src.kind, steps, series, tag_map.source_of(all_tags)))
    return runs
