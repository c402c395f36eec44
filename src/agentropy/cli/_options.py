"""CLI options whose default and help text come from a config dataclass field (one source).

Config dataclasses document each field with a docstring under it (the cleanrl ``Args`` habit);
:func:`field_option` reads that docstring from the class source and the default from
``dataclasses.fields``, so ``--help`` and the behaviour never drift from the config::

    episodes: int = field_option(EvalConfig, "episodes", "--episodes")

Options that mirror a field but must stay unset when not given (so a TOML config or a preset can
supply the value) use ``default=None`` and still take the help text from the field.

The config may be named ``"module:Class"`` instead of passed: its help is then read from the
module's source without importing it (``agentropy.rl.config`` imports torch, which would cost
every command, even ``--help``, seconds); the class is imported only if its default is needed.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import importlib.util
import inspect
import re
import textwrap
from enum import StrEnum
from typing import Any, cast

import typer

from agentropy.trace import NAN_POLICIES, NanPolicy

__all__ = [
    "FORCE_OPTION",
    "NAN_POLICY_OPTION",
    "PROGRESS_OPTION",
    "ConfigRef",
    "NanPolicyChoice",
    "alert_names",
    "field_default",
    "field_help",
    "field_option",
    "nan_policy_of",
]

_MISSING: Any = object()


ConfigRef = type | str
"""A config dataclass, or its ``"module:Class"`` name (read without importing the module)."""


def _class_docs(tree: ast.ClassDef) -> dict[str, str]:
    docs: dict[str, str] = {}
    for node, after in zip(tree.body, tree.body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = after.value.value
    return docs


@functools.cache
def _class_node(ref: str) -> ast.ClassDef:
    """The ``ast`` of class ``"module:Class"``, parsed from the module's file (not imported)."""
    module, _, name = ref.partition(":")
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ValueError(f"cannot find the source of {ref}")
    with open(spec.origin, encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise ValueError(f"no class {name} in {module}")


def _literal_default(ref: str, name: str) -> Any:
    """The default of field ``name`` of ``ref`` if written as a literal, else :data:`_MISSING`."""
    for node in _class_node(ref).body:
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == name
            and node.value is not None
        ):
            try:
                return ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError):
                return _MISSING
    return _MISSING


@functools.cache
def _field_docs(cls: ConfigRef) -> dict[str, str]:
    """Docstrings written under the fields of dataclass ``cls`` (and its bases), by field name."""
    if isinstance(cls, str):
        return _class_docs(_class_node(cls))
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        docs.update(_class_docs(ast.parse(source).body[0]))  # type: ignore[arg-type]
    return docs


def _resolve(cls: ConfigRef) -> type:
    if isinstance(cls, str):
        module, _, name = cls.partition(":")
        return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]
    return cls


def _plain(doc: str) -> str:
    """First paragraph of a field docstring as plain text (reST roles and literals unwrapped)."""
    para = inspect.cleandoc(doc).split("\n\n")[0]
    # :meth:`TinyRecipe.quick` -> TinyRecipe.quick; :class:`~a.b.C` -> C (Sphinx's "~" rule).
    para = re.sub(
        r":[a-z]+:`(~?)([^`]+)`",
        lambda m: m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2),
        para,
    )
    para = para.replace("``", "")
    return " ".join(para.split())


def _field(cls: ConfigRef, name: str) -> dataclasses.Field[Any]:
    for f in dataclasses.fields(_resolve(cls)):
        if f.name == name:
            return f
    raise AttributeError(f"{cls} has no field {name!r}")


def field_default(cls: ConfigRef, name: str) -> Any:
    """The default of field ``name`` of dataclass ``cls`` (calling its default factory).

    For a ``"module:Class"`` name, a literal default is read from the source (no import)."""
    if isinstance(cls, str):
        value = _literal_default(cls, name)
        if value is not _MISSING:
            return value
    f = _field(cls, name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise ValueError(f"{cls}.{name} has no default")


def field_help(cls: ConfigRef, name: str) -> str:
    """The help text of field ``name``: its docstring's first paragraph (or, for a passed class,
    ``metadata['help']``)."""
    if not isinstance(cls, str):
        f = _field(cls, name)
        if "help" in f.metadata:
            return str(f.metadata["help"])
    doc = _field_docs(cls).get(name)
    if doc is None:
        raise ValueError(f"{cls}.{name} has no docstring to use as help")
    return _plain(doc)


def field_option(
    cls: ConfigRef,
    name: str,
    *flags: str,
    default: Any = _MISSING,
    convert: Any = None,
    **kwargs: Any,
) -> Any:
    """A ``typer.Option`` for field ``name`` of ``cls``: its default and help from the field.

    ``default`` overrides the field's default (e.g. ``None`` = "leave the config's value");
    ``convert`` maps the field default to the CLI's spelling (a tuple to ``"a,b"``).
    """
    value = field_default(cls, name) if default is _MISSING else default
    if convert is not None and default is _MISSING:
        value = convert(value)
    kwargs.setdefault("help", field_help(cls, name))
    return typer.Option(value, *flags, **kwargs)


# ---------------------------------------------------------------- options shared by commands
#: CLI choices of :data:`agentropy.trace.NAN_POLICIES` (the one definition; typer validates).
NanPolicyChoice = StrEnum("NanPolicyChoice", {p: p for p in NAN_POLICIES})  # type: ignore[misc]


def nan_policy_of(choice: NanPolicyChoice) -> NanPolicy:
    """The readers' ``nan_policy`` for a ``--nan-policy`` choice."""
    # The enum is built from NAN_POLICIES (NanPolicy's values); mypy cannot see a dynamic enum's.
    return cast(NanPolicy, choice.value)


#: ``--nan-policy`` of ``entropy-check``, ``analyze`` and ``report``.
NAN_POLICY_OPTION: Any = typer.Option(
    NanPolicyChoice(NAN_POLICIES[0]),
    "--nan-policy",
    help="Tokens whose entropy, logprob or temperature is NaN or infinite: 'raise' rejects the "
    "file (exit 2), 'drop' drops and counts them.",
)
#: ``--force`` of every command that writes a file: never replace an output silently.
FORCE_OPTION: Any = typer.Option(
    False, "--force", help="Replace an existing output (by default an existing output is an error)."
)
#: ``--progress/--no-progress`` of the long-running commands.
PROGRESS_OPTION: Any = typer.Option(True, "--progress/--no-progress", help="Progress bars.")


def alert_names(text: str | None, option: str) -> tuple[str, ...]:
    """The monitor alert names of a comma-separated option value (``train --stop-on``,
    ``watch --fail-on``), in the order given, without repeats; ``()`` for None or ``""``.

    The names are :data:`agentropy.monitor.ALERT_NAMES`; any other raises ``ValueError`` naming
    the option and listing the valid names (one line, exit status 2 in a command).
    """
    from agentropy.monitor import ALERT_NAMES

    names = tuple(dict.fromkeys(t.strip() for t in (text or "").split(",") if t.strip()))
    bad = [n for n in names if n not in ALERT_NAMES]
    if bad:
        raise ValueError(
            f"{option}: unknown alert names {bad}; choose from {', '.join(ALERT_NAMES)}"
        )
    return names
