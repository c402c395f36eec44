"""The seal of a Parquet store part: checksums that let a reader skip re-validating the part.

Why: validating a part (:mod:`agentropy.trace.parquet_read`) re-checks every turn of every
episode in Python, which was about 70% of ``agentropy analyze``'s time on a store. A part that
:class:`~agentropy.trace.TraceWriter` wrote was validated on the way in (``write`` runs every field
rule), so re-validating it proves nothing new as long as its files are still what the writer
wrote. The writer records that in the seal, a JSON object stored under :data:`SEAL_KEY` in the
schema metadata of the part's episodes file (written last, so a part with an episodes file has its
seal):

- ``tokens_crc32``, ``tokens_size``: CRC-32 and size of the whole tokens file, every byte
  (columns the analyzer does not read included, so an edit anywhere is caught);
- ``episodes_sha256``: SHA-256 of the episodes table's content (:func:`episodes_digest`; the seal
  sits inside that file, so it cannot hash the file's own bytes). A file rewritten with an edited
  value fails it even when the rewrite carries the schema metadata over (pyarrow does). Seal
  version 2 (store format 2, whose episodes file has list columns per turn) hashes every column
  from its Arrow buffers; version 1 (format 1) hashes non-string columns as JSON and is still
  checked as such;
- ``nonfinite_rows``: token rows holding a NaN or infinite float (writers store them as given),
  so that a reader can leave such parts to the validating path, which applies ``nan_policy``.

A part whose seal is missing, unreadable or does not match its files, or that holds non-finite
values, is fully validated as before; a mismatch is not an error in itself (a part fixed by hand
may be perfectly valid), the validation decides. Stores written before seals existed have none
and are read as before. The seal is a checksum, not a signature: it catches accidental and
hand edits, not a forger who recomputes it.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "SEAL_KEY",
    "episodes_digest",
    "make_seal",
    "read_seal",
    "seal_holds",
]

#: Schema-metadata key of the seal in a part's episodes file.
SEAL_KEY = b"agentropy.seal"
#: Seal versions a reader checks (1: store format 1, 2: format 2); others are ignored.
_SEAL_VERSIONS = (1, 2)
#: Seal version the writer of the current store format writes.
_SEAL_VERSION = 2


def _hash_array(h: Any, arr: pa.Array) -> None:
    """Feed one Arrow array's values (not its buffers' layout) into ``h``: null mask, then the
    values; lists as their lengths and then their flattened values, recursively."""
    import pyarrow as pa
    import pyarrow.compute as pc

    nulls = arr.is_null().to_numpy(zero_copy_only=False)
    h.update(np.packbits(nulls).tobytes())
    typ = arr.type
    if pa.types.is_string(typ):
        offsets = np.frombuffer(arr.buffers()[1], np.int32)[arr.offset : arr.offset + len(arr) + 1]
        data = arr.buffers()[2]
        h.update(np.diff(offsets).astype(np.int64).tobytes())
        if data is not None and len(arr):
            h.update(memoryview(data)[int(offsets[0]) : int(offsets[-1])])
    elif pa.types.is_list(typ):
        lengths = pc.fill_null(pc.list_value_length(arr), 0)
        h.update(lengths.to_numpy(zero_copy_only=False).astype(np.int64).tobytes())
        _hash_array(h, pc.list_flatten(arr))
    elif pa.types.is_boolean(typ):
        values = pc.fill_null(arr, False) if arr.null_count else arr
        h.update(np.packbits(values.to_numpy(zero_copy_only=False)).tobytes())
    elif pa.types.is_integer(typ) or pa.types.is_floating(typ):
        values = pc.fill_null(arr, 0) if arr.null_count else arr
        h.update(np.ascontiguousarray(values.to_numpy(zero_copy_only=False)).tobytes())
    else:  # pragma: no cover (no such column in the layout)
        text = json.dumps(arr.to_pylist(), ensure_ascii=False, separators=(",", ":"), default=str)
        h.update(text.encode("utf-8", "surrogatepass"))


def _type_name(typ: pa.DataType) -> str:
    """A column type's name without list item names (Parquet reads ``list<item: T>`` back as
    ``list<element: T>``)."""
    import pyarrow as pa

    if pa.types.is_list(typ):
        return f"list<{_type_name(typ.value_type)}>"
    return str(typ)


def episodes_digest(table: pa.Table, *, version: int = 1) -> str:
    """SHA-256 (hex) of an episodes table's content, column by column, in order.

    Computed from the decoded values, so the writer (from the table it is about to write) and a
    reader (from the table it read back) agree whatever the file's encoding. ``version`` 2 (seal
    version 2) hashes each column's type and values from its Arrow buffers
    (:func:`_hash_array`); ``version`` 1 hashes string columns that way and the others as
    canonical JSON (so version-1 seals of existing stores still check).
    """
    if version >= 2:
        h = hashlib.sha256()
        for name in table.column_names:
            column = table.column(name)
            h.update(name.encode() + b"\0" + _type_name(column.type).encode() + b"\0")
            _hash_array(h, column.combine_chunks() if column.num_chunks != 1 else column.chunk(0))
            h.update(b"\0")
        return h.hexdigest()
    return _digest_v1(table)


def _digest_v1(table: pa.Table) -> str:
    """The version-1 digest: string columns (the bulk: the ``turns`` JSON) hashed as their UTF-8
    bytes, value lengths and null mask, straight from the Arrow buffers; the other columns as
    canonical JSON of their values (floats serialise with ``repr``, so any changed bit changes
    the digest)."""
    import pyarrow as pa

    h = hashlib.sha256()
    for name in table.column_names:
        column = table.column(name)
        h.update(name.encode() + b"\0")
        if pa.types.is_string(column.type):
            arr = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
            nulls = arr.is_null().to_numpy(zero_copy_only=False)
            offsets = np.frombuffer(arr.buffers()[1], np.int32)[
                arr.offset : arr.offset + len(arr) + 1
            ]
            data = arr.buffers()[2]
            h.update(np.packbits(nulls).tobytes())
            h.update(np.diff(offsets).astype(np.int64).tobytes())
            if data is not None and len(arr):
                h.update(memoryview(data)[int(offsets[0]) : int(offsets[-1])])
        else:
            text = json.dumps(column.to_pylist(), ensure_ascii=False, separators=(",", ":"))
            h.update(text.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


def make_seal(
    tokens_file: bytes | pa.Buffer,
    episodes: pa.Table,
    nonfinite_rows: int,
    *,
    version: int = _SEAL_VERSION,
) -> bytes:
    """The seal of a part (module docstring), as the bytes stored under :data:`SEAL_KEY`.

    ``tokens_file``: the tokens file exactly as written; ``episodes``: the episodes table;
    ``version``: the seal version (that of the store format being written).
    """
    if version not in _SEAL_VERSIONS:
        raise ValueError(f"seal version must be one of {_SEAL_VERSIONS}, got {version!r}")
    seal = {
        "version": version,
        "tokens_crc32": zlib.crc32(tokens_file),
        "tokens_size": len(tokens_file),
        "nonfinite_rows": int(nonfinite_rows),
        "episodes_sha256": episodes_digest(episodes, version=version),
    }
    return json.dumps(seal, sort_keys=True).encode()


def read_seal(episodes: pa.Table) -> dict[str, Any] | None:
    """The seal stored in an episodes table's schema metadata; None if absent or malformed."""
    raw = (episodes.schema.metadata or {}).get(SEAL_KEY)
    if raw is None:
        return None
    try:
        seal = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    keys = ("tokens_crc32", "tokens_size", "nonfinite_rows", "episodes_sha256")
    if not isinstance(seal, dict) or seal.get("version") not in _SEAL_VERSIONS:
        return None
    if any(k not in seal for k in keys):
        return None
    return seal


def seal_holds(seal: dict[str, Any], tokens_file: bytes, episodes: pa.Table) -> bool:
    """Whether both files of a part are what the writer sealed and hold only finite values.

    ``tokens_file``: the tokens file's bytes; ``episodes``: its episodes table as read (all
    columns, in the documented order). Cheap checks first: size, then the CRC of the tokens
    file (about 1 GB/s), then the digest of the (small) episodes table.
    """
    return (
        seal["nonfinite_rows"] == 0
        and seal["tokens_size"] == len(tokens_file)
        and seal["tokens_crc32"] == zlib.crc32(tokens_file)
        and seal["episodes_sha256"] == episodes_digest(episodes, version=seal["version"])
    )
