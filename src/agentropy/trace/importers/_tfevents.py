"""Scalars from TensorBoard event files without TensorBoard or protobuf installed.

An event file (``events.out.tfevents.*``) is a TFRecord stream; each record is

    uint64 length | uint32 masked_crc32c(length) | length bytes of data | uint32 masked_crc32c(data)

(little endian; ``masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8 mod 2**32``), and each data
block is a serialised ``tensorflow.Event`` protocol buffer. We decode just the fields a scalar
needs, from the public ``event.proto`` / ``summary.proto`` / ``tensor.proto`` schemas:

- ``Event``: ``wall_time`` = 1 (double), ``step`` = 2 (int64), ``summary`` = 5 (``Summary``);
- ``Summary``: ``value`` = 1 (repeated ``Summary.Value``);
- ``Summary.Value``: ``tag`` = 1 (string), ``simple_value`` = 2 (float: what
  ``torch.utils.tensorboard.SummaryWriter.add_scalar`` writes, hence TRL and verl), ``tensor`` = 8
  (``TensorProto``: what TF2's ``tf.summary.scalar`` writes);
- ``TensorProto``: ``dtype`` = 1 (1 float, 2 double), ``tensor_shape`` = 2 (a scalar has no
  ``dim`` = 2 entries), ``tensor_content`` = 4 (raw little-endian bytes), ``float_val`` = 5,
  ``double_val`` = 6 (packed or not).

Everything else (histograms, images, graphs, text) is skipped. Both CRCs are verified, so a
corrupt record is an error rather than a wrong number; a record cut off at the end of the file
(a writer still writing, or killed mid-record) is left for the next read.
"""

from __future__ import annotations

import struct
from pathlib import Path

from agentropy.errors import InputError

__all__ = ["EventFileReader", "crc32c", "masked_crc32c"]


def _crc_table() -> list[int]:
    poly = 0x82F63B78  # Castagnoli, reflected
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``: ``crc32c(b"123456789") == 0xE3069283``."""
    c = 0xFFFFFFFF
    table = _TABLE
    for b in data:
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The TFRecord checksum: a rotated CRC-32C plus a constant."""
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# -------------------------------------------------------------------------- protobuf wire


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes):
    """Yield ``(field number, wire type, value)``; value is int, bytes, or raw 4/8 bytes."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
            yield num, wt, v
        elif wt == 1:
            if i + 8 > n:
                raise ValueError("truncated fixed64")
            yield num, wt, buf[i : i + 8]
            i += 8
        elif wt == 2:
            ln, i = _varint(buf, i)
            if i + ln > n:
                raise ValueError("truncated length-delimited field")
            yield num, wt, buf[i : i + ln]
            i += ln
        elif wt == 5:
            if i + 4 > n:
                raise ValueError("truncated fixed32")
            yield num, wt, buf[i : i + 4]
            i += 4
        else:
            raise ValueError(f"unsupported wire type {wt}")


def _tensor_scalar(buf: bytes) -> float | None:
    dtype, shape_dims, content = 0, 0, b""
    vals: list[float] = []
    for num, wt, v in _fields(buf):
        if num == 1 and wt == 0:
            dtype = int(v)  # type: ignore[arg-type]
        elif num == 2 and wt == 2:
            shape_dims = sum(1 for f, _, _ in _fields(v) if f == 2)  # type: ignore[arg-type]
        elif num == 4 and wt == 2:
            content = v  # type: ignore[assignment]
        elif num == 5:  # float_val
            vals += _floats(v, wt, "<f", 4)  # type: ignore[arg-type]
        elif num == 6:  # double_val
            vals += _floats(v, wt, "<d", 8)  # type: ignore[arg-type]
    if shape_dims or dtype not in (1, 2):
        return None
    if vals:
        return vals[0]
    size = 4 if dtype == 1 else 8
    if len(content) == size:
        return struct.unpack("<f" if dtype == 1 else "<d", content)[0]
    return None


def _floats(v: bytes, wt: int, fmt: str, size: int) -> list[float]:
    if wt == 2:  # packed
        return [x[0] for x in struct.iter_unpack(fmt, v)] if len(v) % size == 0 else []
    return [struct.unpack(fmt, v)[0]]


def parse_event(data: bytes) -> tuple[int, list[tuple[str, float]]]:
    """``(step, [(tag, value), ...])`` of one serialised ``Event`` (empty list: no scalars)."""
    step = 0
    out: list[tuple[str, float]] = []
    for num, wt, v in _fields(data):
        if num == 2 and wt == 0:
            step = int(v)  # type: ignore[arg-type]
            if step >= 1 << 63:
                step -= 1 << 64
        elif num == 5 and wt == 2:
            for vn, vwt, val in _fields(v):  # type: ignore[arg-type]
                if vn != 1 or vwt != 2:
                    continue
                tag, value = None, None
                for fn, fwt, fv in _fields(val):  # type: ignore[arg-type]
                    if fn == 1 and fwt == 2:
                        tag = bytes(fv).decode("utf-8", "replace")  # type: ignore[arg-type]
                    elif fn == 2 and fwt == 5:
                        value = struct.unpack("<f", fv)[0]  # type: ignore[arg-type]
                    elif fn == 8 and fwt == 2:
                        value = _tensor_scalar(fv)  # type: ignore[arg-type]
                if tag is not None and value is not None:
                    out.append((tag, float(value)))
    return step, out


class EventFileReader:
    """Incremental reader of one event file: each :meth:`read_new` returns the scalars appended
    since the previous call (complete records only)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.offset = 0

    def read_new(self) -> list[tuple[int, str, float]]:
        """New ``(step, tag, value)`` triples in file order."""
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                buf = f.read()
        except OSError as err:
            raise InputError(f"cannot read event file: {err.strerror}", path=self.path) from None
        out: list[tuple[int, str, float]] = []
        i = 0
        while len(buf) - i >= 12:
            header = buf[i : i + 8]
            (length,) = struct.unpack("<Q", header)
            (hcrc,) = struct.unpack("<I", buf[i + 8 : i + 12])
            if masked_crc32c(header) != hcrc:
                raise InputError(
                    f"corrupt TFRecord header at byte {self.offset + i} (length checksum)",
                    path=self.path,
                )
            end = i + 12 + length + 4
            if end > len(buf):
                break  # the writer has not finished this record yet
            data = buf[i + 12 : i + 12 + length]
            (dcrc,) = struct.unpack("<I", buf[end - 4 : end])
            if masked_crc32c(data) != dcrc:
                raise InputError(
                    f"corrupt TFRecord at byte {self.offset + i} (data checksum)", path=self.path
                )
            try:
                step, scalars = parse_event(data)
            except ValueError as err:
                raise InputError(
                    f"undecodable Event record at byte {self.offset + i}: {err}", path=self.path
                ) from None
            out += [(step, tag, value) for tag, value in scalars]
            i = end
        self.offset += i
        return out
