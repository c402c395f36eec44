"""Traces: the one data model every part of agentropy reads and writes, and its two formats.

This package is the public face; import from here (``from agentropy.trace import Episode``).
Its rooms, each owning one job:

- :mod:`~agentropy.trace.model`: :class:`Episode`, :class:`Turn`, :class:`ToolCall`,
  :class:`Episodes` and every shared name (roles, phases, tool statuses and their codes, per-token
  array fields, NaN policies);
- :mod:`~agentropy.trace.validate`: every field rule, applied by the constructors, the writers and
  every reader (:func:`validate_episode`);
- :mod:`~agentropy.trace.jsonl`: JSONL/JSON interchange, the public import/export format;
- :mod:`~agentropy.trace.parquet` (layout, :class:`TraceWriter`) and
  :mod:`~agentropy.trace.parquet_read` (validated readers and streaming iterators): the crash-safe
  Parquet store for large runs, whose parts carry a :mod:`~agentropy.trace.seal` that lets the
  analyzer skip re-validating parts the writer wrote;
- :mod:`~agentropy.trace.table`: :class:`TraceTable`, the columnar view the analyzer works on.

Every reader raises :class:`agentropy.errors.InputError` naming the file, the line (JSONL) or row
(Parquet part) and the field. pyarrow is imported only when a Parquet store is read or written.
"""

from agentropy.trace.jsonl import episode_from_dict, episode_to_dict, read_jsonl, write_jsonl
from agentropy.trace.model import (
    BOUNDS_META_KEY,
    DROPPED_META_KEY,
    FAILED_STATUSES,
    NAN_POLICIES,
    PHASE_CODE,
    PHASES,
    ROLES,
    STATUS_CODES,
    TOKEN_ARRAY_FIELDS,
    TOKEN_FLOAT_FIELDS,
    TOOL_STATUSES,
    Episode,
    Episodes,
    NanPolicy,
    Phase,
    Role,
    ToolCall,
    ToolStatus,
    Turn,
    canonical_arguments,
    entropy_bounds_of,
)
from agentropy.trace.parquet import DEFAULT_EPISODES_PER_PART, TraceWriter, write_parquet
from agentropy.trace.parquet_read import (
    VALIDATIONS,
    Validation,
    iter_episodes,
    iter_episodes_counted,
    iter_part_tables,
    iter_parts,
    iter_token_batches,
    read_parquet,
    read_traces,
)
from agentropy.trace.table import TraceTable
from agentropy.trace.validate import validate_episode

__all__ = [
    "BOUNDS_META_KEY",
    "DEFAULT_EPISODES_PER_PART",
    "DROPPED_META_KEY",
    "FAILED_STATUSES",
    "NAN_POLICIES",
    "PHASES",
    "PHASE_CODE",
    "ROLES",
    "STATUS_CODES",
    "TOKEN_ARRAY_FIELDS",
    "TOKEN_FLOAT_FIELDS",
    "TOOL_STATUSES",
    "VALIDATIONS",
    "Episode",
    "Episodes",
    "NanPolicy",
    "Phase",
    "Role",
    "ToolCall",
    "ToolStatus",
    "TraceTable",
    "TraceWriter",
    "Turn",
    "Validation",
    "canonical_arguments",
    "entropy_bounds_of",
    "episode_from_dict",
    "episode_to_dict",
    "iter_episodes",
    "iter_episodes_counted",
    "iter_part_tables",
    "iter_parts",
    "iter_token_batches",
    "read_jsonl",
    "read_parquet",
    "read_traces",
    "validate_episode",
    "write_jsonl",
    "write_parquet",
]
