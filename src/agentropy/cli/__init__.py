"""The ``agentropy`` command line (typer).

Each command lives in its own module under ``agentropy.cli`` and exposes ``register(app)``; the
modules are listed in :data:`COMMAND_MODULES`. Commands wrap themselves in
:func:`agentropy.cli._common.guarded`, so bad input (:class:`agentropy.errors.InputError`, or a
``ValueError`` raised while validating options) becomes a one-line message on stderr and exit
status 2, never a traceback.
"""

from __future__ import annotations

import importlib

import typer

from agentropy import __version__

#: Command modules, each with a ``register(app: typer.Typer) -> None`` function.
COMMAND_MODULES: tuple[str, ...] = (
    "bootstrap",
    "check",
    "analyze",
    "score",
    "watch",
    "rollout",
    "eval",
    "train",
    "experiment",
    "report",
    "demo",
)

app = typer.Typer(
    name="agentropy",
    help="Entropy dynamics of tool-using LLM agents: observe, control, train.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"agentropy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Entropy dynamics of tool-using LLM agents: observe, control, train."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"agentropy.cli.{_name}").register(app)


def main() -> None:
    """Console-script entry point."""
    app()
