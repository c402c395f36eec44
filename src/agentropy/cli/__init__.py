"""The ``agentropy`` command line (typer).

Each command is a module-level function in its own module under ``agentropy.cli``; the module's
``register(app)`` adds it, and the modules are listed in :data:`COMMAND_MODULES`. Options that
mirror a config dataclass field take its default and help from the field
(:func:`agentropy.cli._options.field_option`). Errors take one path
(:mod:`agentropy.cli._common`): bad input, a bad option or an unwritable output is one line on
stderr and exit status 2; an internal error is one line plus the file holding its traceback.
"""

from __future__ import annotations

import importlib

import typer

from agentropy import __version__
from agentropy.cli._common import AgentropyGroup

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
    cls=AgentropyGroup,
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
