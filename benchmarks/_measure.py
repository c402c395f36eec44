"""Run a command in its own process and read the OS's record of its peak resident memory.

Benchmarks use this to measure each variant in isolation: the worker allocates its input, runs,
prints a result (e.g. JSON) on stdout and exits; the parent gets the stdout, exit code, wall time
and the worker's peak RSS. Extra memory of a variant is its peak RSS minus the peak RSS of a
worker that only allocates the same input.

The peak comes from the kernel's ``ru_maxrss`` for that one child, read with ``os.wait4``. (The
aggregate ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` holds the same counter but as the
maximum over *every* child waited for so far, so after one large variant all later, smaller ones
would report the large one's peak.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Measurement:
    """Outcome of one isolated run."""

    stdout: str
    """Everything the child wrote to stdout."""
    stderr: str
    """Everything the child wrote to stderr."""
    returncode: int
    """Exit code (negative: killed by that signal)."""
    peak_rss_bytes: int
    """Peak resident set size of the child process, bytes (from ``ru_maxrss``)."""
    wall_s: float
    """Wall-clock seconds from start to exit (includes interpreter start-up and imports)."""

    def check(self) -> Measurement:
        """Raise ``RuntimeError`` with the child's stderr if it failed; return self otherwise."""
        if self.returncode != 0:
            raise RuntimeError(f"child exited with {self.returncode}:\n{self.stderr[-4000:]}")
        return self


def _maxrss_bytes(ru_maxrss: int) -> int:
    # Linux reports kilobytes, macOS bytes.
    return ru_maxrss if sys.platform == "darwin" else ru_maxrss * 1024


def run_isolated(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None
) -> Measurement:
    """Run ``argv`` as a child process; return its output, exit code and peak RSS.

    Output goes through temporary files rather than pipes so the parent can reap the child
    itself with ``os.wait4`` (which returns that child's own resource usage) without risking a
    pipe-buffer deadlock.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), stdout=out, stderr=err, env=None if env is None else dict(env), cwd=cwd
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        err.seek(0)
        return Measurement(
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            returncode=proc.returncode,
            peak_rss_bytes=_maxrss_bytes(usage.ru_maxrss),
            wall_s=wall,
        )


def python_argv(script: str, *args: str) -> list[str]:
    """``[sys.executable, script, *args]``: run a benchmark script's worker mode."""
    return [sys.executable, script, *args]
