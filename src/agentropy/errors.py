"""The one exception type for bad user input, so the CLI can turn it into a one-line message.

Every reader and validator raises :class:`InputError` naming the file, the line (JSONL) or row
(Parquet), and the field. The CLI prints ``str(err)`` and exits with status 2; library users get
an ordinary ``ValueError`` subclass.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "InputError",
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
