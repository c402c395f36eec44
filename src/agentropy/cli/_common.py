"""One error path for every command: a one-line message, exit status 2, never a traceback.

- :func:`guarded` (on each command body) turns :class:`~agentropy.errors.InputError`, a
  ``ValueError`` from validating an option, :class:`~agentropy.errors.OutputError` and a bare
  ``OSError`` into ``error: <message>`` on stderr and exit status 2.
- :class:`AgentropyGroup` (the app's click group) does the same for typer's own usage errors
  (``--nan-policy bogus``, a missing argument): one line instead of a usage box. Anything else
  is a bug: one line saying so and where the full traceback was saved, exit status 1
  (``AGENTROPY_TRACEBACK=1`` lets it propagate instead, for debugging).
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

import typer
from typer.core import TyperGroup

from agentropy.errors import InputError, OutputError, os_reason
from agentropy.integrations._extras import MissingExtraError

P = ParamSpec("P")
R = TypeVar("R")

#: Exit status of every user-fixable error (bad input, bad option, unwritable output).
USER_ERROR_EXIT = 2
#: Exit status of an internal error (a bug: traceback saved to a file).
INTERNAL_ERROR_EXIT = 1
#: Exit status when a monitor alert the user named fired: ``watch --fail-on``, and a ``train``
#: that ``--stop-on`` (the config's ``stop_on``) ended early. Scripts tell it from success (0)
#: and from errors (1, 2).
ALERT_EXIT = 3
#: Set to 1 to let internal errors propagate with their traceback.
TRACEBACK_ENV = "AGENTROPY_TRACEBACK"


def _usage_error_class() -> type[Exception]:
    """The base class of the installed typer's usage errors (bad option, missing argument).

    ``typer.TyperException`` since typer 0.28; before it, click's ``ClickException`` (typer's
    vendored copy of click in 0.26-0.27, click itself earlier), a base of ``typer.BadParameter``.
    Looked up rather than named so the declared typer floor keeps working.
    """
    base: type[Exception] | None = getattr(typer, "TyperException", None)
    if base is None:
        base = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    return base


_USAGE_ERROR = _usage_error_class()


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` to stderr and return the exit (status 2) for the caller to raise."""
    first = " ".join(str(message).split())  # one line, whatever the message held
    typer.echo(f"error: {first}", err=True)
    return typer.Exit(code=USER_ERROR_EXIT)


def describe_os_error(err: OSError) -> str:
    """``path: reason`` for an ``OSError`` not already wrapped by a reader or writer."""
    where = err.filename if err.filename is not None else None
    return f"{where}: {os_reason(err)}" if where else os_reason(err)


def guarded(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a command so any user-fixable error exits with status 2 and one line."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (InputError, OutputError, ValueError, MissingExtraError) as err:
            raise fail(str(err)) from None
        except RecursionError:
            raise fail("input nested too deeply") from None
        except MemoryError:
            raise fail("out of memory (input too large?)") from None
        except OSError as err:
            raise fail(describe_os_error(err)) from None

    return wrapper


def save_traceback(err: BaseException) -> str:
    """Write ``err``'s traceback to a new file in the temp folder; returns its path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    fd, name = tempfile.mkstemp(prefix=f"agentropy-crash-{stamp}-", suffix=".txt")
    with os.fdopen(fd, "w") as fh:
        fh.write(f"agentropy {' '.join(sys.argv[1:])}\n\n")
        fh.write("".join(traceback.format_exception(err)))
    return name


class AgentropyGroup(TyperGroup):
    """The root click group: usage errors in one line; internal errors in one line plus a file."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except _USAGE_ERROR as err:  # typer's (click's) usage errors
            ctx = getattr(err, "ctx", None)
            if type(err).__name__ == "NoArgsIsHelpError" and ctx is not None:
                typer.echo(ctx.get_help())
                sys.exit(USER_ERROR_EXIT)  # as click does: help was not asked for
            message = err.format_message() if hasattr(err, "format_message") else str(err)
            message = message.replace("Value error, ", "")  # typer's coercion prefix
            command = f"{ctx.info_name}: " if ctx is not None and ctx.parent else ""
            fail(f"{command}{message}")
            sys.exit(getattr(err, "exit_code", USER_ERROR_EXIT) or USER_ERROR_EXIT)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(130)
        except Exception as err:
            if os.environ.get(TRACEBACK_ENV) == "1":
                raise
            if isinstance(err, OSError):  # raised outside a guarded body: still user-fixable
                fail(describe_os_error(err))
                sys.exit(USER_ERROR_EXIT)
            try:
                where = f"full traceback in {save_traceback(err)}"
            except OSError:
                where = f"set {TRACEBACK_ENV}=1 to see the traceback"
            summary = " ".join(f"{type(err).__name__}: {err}".split())[:300]
            typer.echo(f"internal error: {summary} ({where})", err=True)
            sys.exit(INTERNAL_ERROR_EXIT)
        sys.exit(code if isinstance(code, int) else 0)
