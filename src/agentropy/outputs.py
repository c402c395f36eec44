"""Atomic outputs: never a half-written file, never a silent overwrite, failures before the work.

Every output the CLI writes (HTML report, JSON summary, JSONL trace, checkpoint, agent folder)
goes through here:

1. :func:`check_output` runs *before* any long work: it refuses an existing output unless
   ``force`` and proves the directory takes a write (a probe file, written and fsynced), so a
   read-only mount or a full disk fails in a second, not after an hour of generation.
2. :func:`atomic_path` (files) and :func:`atomic_dir` (folders) hand out a temporary name in the
   *same* directory; on success the data is fsynced and renamed over the target in one step (a
   rename within a file system is atomic), then the directory is fsynced so the rename itself
   survives a power cut. On any failure the temporary is removed and the previous output, if
   any, is left untouched.
3. :func:`output_group` does both for a run that writes several outputs as one unit (a demo's
   folder): refused up front unless ``force``; with ``force`` the earlier outputs are kept
   aside until the new run succeeds and put back if it fails.

Every ``OSError`` becomes an :class:`~agentropy.errors.OutputError` naming the path and the
reason in plain words.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from agentropy.errors import OutputError

__all__ = [
    "PREVIOUS_PREFIX",
    "PROBE_BYTES",
    "atomic_dir",
    "atomic_path",
    "atomic_write_text",
    "check_output",
    "fsync_dir",
    "fsync_file",
    "output_group",
    "pid_alive",
]

#: Bytes the writability probe writes and fsyncs: enough that a full disk refuses it.
PROBE_BYTES = 64 * 1024

#: Name prefix of the hidden folder in which :func:`output_group` keeps a group's earlier
#: outputs while a ``--force`` run replaces them (``<prefix><pid>-<random>``).
PREVIOUS_PREFIX = ".agentropy-previous-"

_FORCE_HINT = "exists; pass --force to replace it"


def fsync_file(path: str | Path) -> None:
    """Flush ``path``'s data to disk (so a rename that publishes it never exposes a hole)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries (makes a rename durable); ignored where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


@functools.cache
def _umask() -> int:
    # Read once (the only portable way sets it; set back at once).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _tmp_name(target: Path, tag: str) -> Path:
    # Hidden, in the same directory (so the rename is atomic), unique per process and call.
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".{tag}", dir=target.parent)
    os.close(fd)
    # mkstemp makes it owner-only; the output gets the mode a plain open() would give it.
    os.chmod(name, 0o666 & ~_umask())
    return Path(name)


def check_output(path: str | Path, *, force: bool = False, is_dir: bool = False) -> Path:
    """Check, before any work, that ``path`` can be written; returns it as a :class:`Path`.

    Refuses an existing output unless ``force`` (a folder too, when ``is_dir``), a parent that is
    missing or not a folder, and a directory that does not take a small fsynced write (read-only
    file system, permissions, full disk). Creates missing parent folders. Raises
    :class:`OutputError`.
    """
    p = Path(path)
    if p.exists() or p.is_symlink():
        if not force:
            raise OutputError(p, _FORCE_HINT)
        if p.is_dir() and not is_dir:
            raise OutputError(p, "is a directory")
        if not p.is_dir() and is_dir and not p.is_symlink():
            raise OutputError(p, "exists and is not a directory")
    _make_parent(p)
    _probe(p)
    return p


def _make_parent(p: Path, named: Path | None = None) -> None:
    """Create ``p``'s missing parent folders; errors (a parent that is a file, a refused
    ``mkdir``) are an :class:`OutputError` naming ``named`` (default ``p``)."""
    named = p if named is None else named
    parent = p.parent
    existing = next((a for a in (parent, *parent.parents) if a.exists()), None)
    if existing is not None and not existing.is_dir():
        raise OutputError(named, f"a parent is not a directory ({existing})")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError.from_os(named, err) from None


def _probe(p: Path, named: Path | None = None) -> None:
    """Write, fsync and delete :data:`PROBE_BYTES` next to ``p`` (proves the folder takes data);
    a failure is an :class:`OutputError` naming ``named`` (default ``p``)."""
    named = p if named is None else named
    probe: Path | None = None
    try:
        probe = _tmp_name(p, "probe")
        with open(probe, "wb") as fh:
            fh.write(b"\0" * PROBE_BYTES)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        raise OutputError.from_os(named, err) from None
    finally:
        if probe is not None:
            with contextlib.suppress(OSError):
                probe.unlink()


@contextlib.contextmanager
def atomic_path(path: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; on success fsync it and rename it over.

    Refuses an existing ``path`` unless ``force`` (checked again at the end: another process may
    have written it meanwhile). On any exception the temporary is removed and ``path`` is left
    as it was; ``OSError`` is re-raised as :class:`OutputError`.
    """
    target = Path(path)
    if target.exists() and not force:
        raise OutputError(target, _FORCE_HINT)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_name(target, "tmp")
    except OSError as err:
        raise OutputError.from_os(target, err) from None
    try:
        yield tmp
        fsync_file(tmp)
        if target.exists() and not force:
            raise OutputError(target, _FORCE_HINT)
        if target.is_dir():
            raise OutputError(target, "is a directory")
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except OSError as err:
        raise OutputError.from_os(target, err) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str, *, force: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path`); returns the path."""
    with atomic_path(path, force=force) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success move it into place.

    For outputs that are folders (a saved model, a checkpoint): the caller fills the temporary
    folder, whose files are then fsynced; an existing ``path`` (only with ``force``) is moved
    aside, the new folder renamed in, and the old one deleted. ``path`` never holds a partial
    folder: a kill leaves the old or the new one there, or, in the instant between the two
    renames, neither (the old one then survives under a hidden ``.<name>.*.old`` name). On
    failure the temporary is deleted and the old folder, if it was moved aside, put back.
    """
    target = Path(path)
    if target.exists() and not force:
        raise OutputError(target, _FORCE_HINT)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        tmp.chmod(0o777 & ~_umask())  # as a plain mkdir would make it
    except OSError as err:
        raise OutputError.from_os(target, err) from None
    old: Path | None = None
    published = False
    try:
        yield tmp
        for root, _dirs, files in os.walk(tmp):
            for name in files:
                fsync_file(Path(root) / name)
            fsync_dir(root)
        if target.exists():
            if not force:
                raise OutputError(target, _FORCE_HINT)
            old = Path(
                tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent)
            )
            os.replace(target, old / "x")
        os.replace(tmp, target)
        published = True
        fsync_dir(target.parent)
    except OSError as err:
        raise OutputError.from_os(target, err) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            if not published and (old / "x").exists():
                try:
                    os.replace(old / "x", target)  # the new one never arrived: the old returns
                except OSError:
                    old = None  # keep it, hidden, rather than delete the only copy
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (this process counts; another user's too)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def output_group(
    folder: str | Path, names: Sequence[str], *, force: bool = False, keep_partial: bool = False
) -> Iterator[Path]:
    """Make room in ``folder`` for outputs that one long run writes together; yields ``folder``.

    For commands whose outputs are one unit (``agentropy demo``: ``train/``, ``eval/``,
    ``report.html``, ``demo.json``; ``agentropy experiment``). ``names`` are the outputs, files
    or folders, relative to ``folder``. Before the work: existing outputs among ``names`` are
    refused unless ``force`` (one :class:`OutputError` naming them all), and ``folder`` (created
    if missing) must take a fsynced write. With ``force`` the earlier outputs are renamed into a
    hidden ``<folder>/.agentropy-previous-<pid>-*`` folder (no copy); the caller then writes the
    new ones, each atomically. On success the earlier outputs are deleted. On any exception,
    Ctrl-C included, the new outputs are deleted and the earlier ones moved back: a failed run
    leaves ``folder`` as it found it. ``keep_partial`` (for runs of hours whose finished parts
    are worth keeping): when there was nothing earlier to put back, a failed run's outputs stay,
    and a later run refuses them without ``force``, as after a kill. A process killed outright
    leaves the earlier outputs in the hidden folder (and the new ones partly written); the next
    ``force`` run deletes such folders of dead processes, as it was asked to.
    """
    if not names:
        raise ValueError("output_group needs at least one output name")
    root = Path(folder)
    if root.exists() and not root.is_dir():
        raise OutputError(root, "exists and is not a directory")
    existing = [n for n in names if (root / n).exists() or (root / n).is_symlink()]
    if existing and not force:
        raise OutputError(
            root, f"holds earlier outputs ({', '.join(existing)}); pass --force to replace them"
        )
    _make_parent(root / names[0], named=root)
    _probe(root / names[0], named=root)
    if force:
        for child in root.glob(f"{PREVIOUS_PREFIX}*"):
            tag = child.name[len(PREVIOUS_PREFIX) :].split("-", 1)[0]
            if tag.isdigit() and not pid_alive(int(tag)):
                shutil.rmtree(child, ignore_errors=True)
    aside: Path | None = None
    moved: list[str] = []
    try:
        if existing:
            aside = Path(tempfile.mkdtemp(prefix=f"{PREVIOUS_PREFIX}{os.getpid()}-", dir=root))
            for name in existing:
                os.replace(root / name, aside / name)
                moved.append(name)
    except OSError as err:
        _restore(root, aside, moved)
        raise OutputError.from_os(root, err) from None
    try:
        yield root
    except BaseException:
        if aside is not None or not keep_partial:
            for name in names:
                _remove(root / name)
            _restore(root, aside, moved)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    fsync_dir(root)


def _restore(root: Path, aside: Path | None, moved: list[str]) -> None:
    """Move the outputs :func:`output_group` set aside back into ``root``; drop the aside folder."""
    if aside is None:
        return
    for name in moved:
        with contextlib.suppress(OSError):
            os.replace(aside / name, root / name)
    if not any(aside.iterdir()):
        aside.rmdir()
