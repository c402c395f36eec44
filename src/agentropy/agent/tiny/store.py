"""Where the tiny agent lives: the home directory, one directory per recipe, bootstrap (train
once, reuse after) and loading.

Model and tokenizer are saved in Hugging Face format under
``$AGENTROPY_HOME/agents/tiny-<recipe hash>/`` (default home ``~/.cache/agentropy``), next to the
build record ``agentropy_tiny.json`` (recipe, sizes, losses, held-out metrics, a sample reply).
They are trained in a temporary directory renamed into place at the end; an existing complete
directory is reused. :func:`load_agent` loads it back.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentropy.agent.tiny import sft
from agentropy.agent.tiny.sft import _FORMAT_VERSION, TinyRecipe
from agentropy.outputs import pid_alive

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

__all__ = [
    "INFO_FILE",
    "agent_path",
    "agentropy_home",
    "bootstrap",
    "default_agent_path",
    "load_agent",
    "read_agent_info",
]

INFO_FILE = "agentropy_tiny.json"
"""The build record's file name inside an agent directory."""


@contextmanager
def _no_hf_progress_bars() -> Iterator[None]:
    """Silence transformers' tqdm bars (shard writing/loading) for a moment, then restore."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _train(recipe: TinyRecipe, out_dir: Path, *, progress: bool) -> dict[str, Any]:
    """Train the agent described by ``recipe``, save it to ``out_dir`` and return its record."""
    result = sft.fit(recipe, progress=progress)
    losses = result.losses
    tail = losses[-min(10, len(losses)) :]
    info = {
        "recipe": recipe.to_dict(),
        "recipe_hash": recipe.recipe_hash,
        "format_version": _FORMAT_VERSION,
        "n_params": sum(p.numel() for p in result.model.parameters()),
        "vocab_size": len(result.tokenizer),
        "n_train_transcripts": result.n_train_transcripts,
        "n_heldout_transcripts": result.n_heldout_transcripts,
        "shared_prefix_tokens": result.shared_prefix_tokens,
        "train_assistant_tokens": result.train_assistant_tokens,
        "train_seconds": result.train_seconds,
        "initial_loss": losses[0],
        "final_loss": sum(tail) / len(tail),
        "drill_steps_run": result.drill_steps_run,
        "losses": losses,
        "drill_losses": result.drill_losses,
        "polish_losses": result.polish_losses,
        "polish_seconds": result.polish_seconds,
        "heldout": result.heldout,
        "sample": result.sample,
    }
    with _no_hf_progress_bars():
        result.model.save_pretrained(out_dir)
    result.tokenizer.save_pretrained(out_dir)
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2))
    return info


def agentropy_home(home: str | os.PathLike[str] | None = None) -> Path:
    """``home`` if given, else ``$AGENTROPY_HOME``, else ``~/.cache/agentropy``."""
    if home is not None:
        return Path(home).expanduser()
    env = os.environ.get("AGENTROPY_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "agentropy"


def agent_path(recipe: TinyRecipe, *, home: str | os.PathLike[str] | None = None) -> Path:
    """Where the agent of ``recipe`` lives: ``<home>/agents/tiny-<recipe_hash>``."""
    return agentropy_home(home) / "agents" / f"tiny-{recipe.recipe_hash}"


def default_agent_path(*, home: str | os.PathLike[str] | None = None) -> Path:
    """Path of the default recipe's agent (it may not exist yet)."""
    return agent_path(TinyRecipe(), home=home)


def _is_complete(path: Path) -> bool:
    return (path / INFO_FILE).is_file() and (path / "config.json").is_file()


def bootstrap(
    recipe: TinyRecipe | None = None,
    *,
    home: str | os.PathLike[str] | None = None,
    progress: bool = True,
    force: bool = False,
    num_threads: int | None = None,
) -> Path:
    """Train (or reuse) the tiny agent of ``recipe`` and return its directory.

    Unless ``force``, the agent shipped in the repository (:mod:`agentropy.agent.shipped`) is
    returned when it was built from ``recipe``: the default recipe needs no build.

    The directory (see :func:`agent_path`) holds ``save_pretrained`` output for model and
    tokenizer plus ``agentropy_tiny.json`` (recipe, parameter count, train time, per-step losses
    (``losses``: the step's total, drill loss included; ``drill_losses``: the drills' own), held-out
    metrics, a sample generation). An existing complete directory is reused unless ``force``.
    Training happens in a temporary sibling directory renamed into place at the end, so an
    interrupted run never leaves a half-written agent behind.

    ``num_threads`` sets torch's intra-op threads while training (restored afterwards); None
    keeps the current setting. On a machine shared with other CPU-heavy processes, fewer threads
    than cores avoids OpenMP threads spinning while they wait for each other.
    """
    recipe = recipe if recipe is not None else TinyRecipe()
    if not force:
        from agentropy.agent.shipped import shipped_agent_path

        shipped = shipped_agent_path(recipe)  # the repository's own copy of the default agent
        if shipped is not None:
            return shipped
    path = agent_path(recipe, home=home)
    if _is_complete(path) and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if num_threads is not None and num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    import torch

    threads = torch.get_num_threads()
    _remove_stranded(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-{os.getpid()}-", dir=path.parent))
    try:
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        _train(recipe, tmp, progress=progress)
        if path.exists():
            # force, or a leftover incomplete directory: move it aside, then swap in the new one.
            stale = Path(tempfile.mkdtemp(prefix=f".{path.name}-old-", dir=path.parent))
            os.replace(path, stale / "agent")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, path)
        except OSError:
            # Another process finished the same recipe first; its result is equivalent.
            if not _is_complete(path):
                raise
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _remove_stranded(path: Path) -> None:
    """Delete temporary folders that killed bootstraps of ``path`` left behind.

    Each bootstrap trains in ``.<name>-<pid>-<random>`` (see :func:`bootstrap`); a folder whose
    process is gone will never be renamed into place. Folders of live processes (a concurrent
    bootstrap of the same recipe) are left alone; ``.<name>-old-*`` folders are always stale.
    """
    for child in path.parent.glob(f".{path.name}-*"):
        if not child.is_dir():
            continue
        tag = child.name[len(path.name) + 2 :].split("-", 1)[0]
        if tag == "old" or (tag.isdigit() and not pid_alive(int(tag))):
            shutil.rmtree(child, ignore_errors=True)


def read_agent_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``agentropy_tiny.json`` record written by :func:`bootstrap`."""
    return json.loads((Path(path) / INFO_FILE).read_text())


def load_agent(
    path: str | os.PathLike[str] | None = None, *, progress: bool = True
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """Load ``(model, tokenizer)`` from ``path``; the model is returned in eval mode.

    ``path=None`` means the default recipe's agent (:func:`default_agent_path`), trained by
    :func:`bootstrap` on first use (with a progress bar unless ``progress=False``).
    """
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    if path is None:
        path = bootstrap(TinyRecipe(), progress=progress)
    path = Path(path)
    if not (path / "config.json").is_file():
        from agentropy.errors import InputError

        raise InputError(f"no agent saved here (config.json missing): {path}", path=str(path))
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    with _no_hf_progress_bars():
        model = LlamaForCausalLM.from_pretrained(path)
    model.eval()
    return model, tokenizer
