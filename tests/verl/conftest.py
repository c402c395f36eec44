"""tests/verl/ runs only in the verl environment (.venv-verl, requirements/verl.txt).

verl 0.9 needs transformers < 5.11, so it cannot live in the main .venv; there these tests are
not collected at all (rather than skipped) so the fast tier stays free of verl imports.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import warnings


def _have_verl() -> bool:
    # Ask for the installed distribution, not `find_spec("verl")`: with tests/ on sys.path (as
    # pytest puts it), this very directory would be found as a namespace package "verl".
    try:
        importlib.metadata.version("verl")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


HAVE_VERL = _have_verl()
collect_ignore_glob = [] if HAVE_VERL else ["test_*.py"]

if HAVE_VERL:
    # verl and ray emit deprecation warnings at import time (e.g. ray.experimental.state);
    # pyproject turns warnings into errors for *our* code, so import theirs once, quietly.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _module in (
            "verl.experimental.agent_loop.tool_agent_loop",
            "verl.workers.utils.losses",
            "verl.workers.rollout.replica",
            "verl.tools.function_tool",
            "hydra.utils",
        ):
            importlib.import_module(_module)
