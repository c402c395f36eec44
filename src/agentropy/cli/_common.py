"""Helpers shared by CLI commands: one-line errors with exit status 2."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer

from agentropy.errors import InputError
from agentropy.integrations._extras import MissingExtraError

P = ParamSpec("P")
R = TypeVar("R")


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` to stderr and return the exit (status 2) for the caller to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


def guarded(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a command so bad input exits with status 2 and a one-line message.

    Catches :class:`InputError` (bad files), ``ValueError`` (bad option values such as
    ``T <= 0``), the two ways our library reports a user's mistake, and
    :class:`~agentropy.integrations._extras.MissingExtraError` (an option needs an extra that is
    not installed; the message says what to install, and the library raises it before any work).
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (InputError, ValueError, MissingExtraError) as err:
            raise fail(str(err)) from None

    return wrapper
