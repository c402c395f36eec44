"""The two exception types the CLI turns into a one-line message and exit status 2.

Every reader and validator raises :class:`InputError` naming the file, the line (JSONL) or row
(Parquet), and the field; library users get an ordinary ``ValueError`` subclass. Every writer
raises :class:`OutputError` naming the path and what failed ("read-only file system", "no space
left on device", "exists; pass --force to replace it").
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

__all__ = [
    "InputError",
    "read_toml",
]


class InputError(ValueError):
    """Bad input: a message that says where (file, line or row, field) and what is wrong."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        row: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line
        self.row = row
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.path is not None:
            where.append(self.path)
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        prefix = ", ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


#: Plain words for the ``errno`` values a user can fix (full disk, read-only mount, permissions).
_OS_REASONS: dict[int, str] = {
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "a parent is not a directory",
    errno.EISDIR: "is a directory",
    errno.EEXIST: "already exists",
    errno.EFBIG: "file too large",
    errno.EIO: "input/output error",
}


def os_reason(err: OSError) -> str:
    """A short lower-case phrase for ``err`` ("no space left on device"), without the path."""
    if err.errno in _OS_REASONS:
        return _OS_REASONS[err.errno]
    text = err.strerror or str(err) or type(err).__name__
    return text[:1].lower() + text[1:]


def read_toml(path: str | Path) -> dict[str, Any]:
    """The parsed TOML file at ``path``; a missing or malformed file is an :class:`InputError`
    naming it (every ``--config`` reader goes through here)."""
    import tomllib

    p = Path(path)
    try:
        return tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise InputError("config file not found", path=p) from None
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"not valid TOML: {err}", path=p) from None


class OutputError(Exception):
    """An output could not be written: which path, and why in plain words.

    Raised before long work starts when a check fails (existing output without ``force``,
    read-only directory, full disk) and when writing fails midway; the CLI prints ``str(err)``
    and exits with status 2. Nothing half-written is left at ``path`` (see
    :mod:`agentropy.outputs`).
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.reason}"

    @classmethod
    def from_os(cls, path: str | Path, err: OSError) -> OutputError:
        """The error for an ``OSError`` raised while writing ``path``."""
        return cls(path, os_reason(err))
