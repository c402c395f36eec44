"""Imports of optional dependencies with an actionable error message.

The framework adapters (``trl``, ``verl``, ``vllm``) call :func:`require` at their top, so a
missing framework is one line, ``pip install 'agentropy[<extra>]'``, whether the adapter is
imported directly or through ``agentropy.integrations``' lazy ``__getattr__``.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional dependency is missing; the message says which extra installs it."""


def require(module: str, *, extra: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``agentropy[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(
            f"{module} is required for this feature: pip install 'agentropy[{extra}]'"
        ) from err
