"""``agentropy score IN... --out OUT``: per-token model entropy for transcripts you already have.

Inputs (one format per file, detected; see :mod:`agentropy.trace.importers.chat`): OpenAI chat
messages as JSONL or a JSON array, verl ``rollout_data_dir`` dumps, TRL ``completions_*.parquet``
logs, and agentropy traces recorded with ``record_inputs`` (re-scored token for token). The
output is a Parquet trace store (a directory; appended to, so an interrupted run resumes: episodes
whose id is already in the store are skipped; ``--force`` starts it afresh) or a ``.jsonl`` file
(written atomically; an existing one needs ``--force``). ``--model`` is any
local Hugging Face causal LM with a chat template (default: the embedded tiny agent).
Bad input exits with status 2 and one line naming file, line and field.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from agentropy.agent.score import ACCELERATOR_BATCH_TOKENS, ScoreConfig
from agentropy.cli._common import guarded
from agentropy.trace.importers.chat import FORMATS
from agentropy.trace.importers.logprobs import DEFAULT_VOCAB_SIZE

_DEFAULTS = ScoreConfig()


def _existing_ids(out: Path) -> set[str]:
    """Episode ids already in the store at ``out`` (empty when it does not exist yet)."""
    if not (out / "episodes").is_dir():
        return set()
    import pyarrow.parquet as pq

    ids: set[str] = set()
    for part in sorted((out / "episodes").glob("part-*.parquet")):
        ids.update(pq.read_table(part, columns=["episode_id"]).column(0).to_pylist())
    return ids


def _is_trace(path: Path) -> bool:
    """An agentropy trace (store directory, or JSONL whose first object has ``turns``)."""
    import json

    if path.is_dir():
        return True
    if path.suffix not in (".jsonl", ".json", ".gz"):
        return False
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                try:
                    return isinstance(obj := json.loads(line), dict) and "turns" in obj
                except ValueError:
                    return False
    return False


def score(
    inputs: list[Path] = typer.Argument(..., help="Conversation files (JSONL/JSON/Parquet)."),
    out: Path = typer.Option(..., "--out", help="Output trace store (directory) or .jsonl file."),
    model: Path | None = typer.Option(
        None, "--model", help="Local Hugging Face model directory (default: the embedded agent)."
    ),
    messages_key: str = typer.Option(
        "messages", "--messages-key", help="Name of the messages list in each conversation."
    ),
    fmt: str = typer.Option("auto", "--format", help=f"Input format: {', '.join(FORMATS)}."),
    error_pattern: str | None = typer.Option(
        None,
        "--error-pattern",
        help="Regex marking a tool result failed (default: JSON with "
        "an 'error' key, or text starting with 'Error' / 'error:').",
    ),
    max_context: int | None = typer.Option(
        None,
        "--max-context",
        help="Context length (default: the model's); longer "
        "conversations keep the system prompt and slide over the rest.",
    ),
    max_batch_tokens: int | None = typer.Option(
        _DEFAULTS.max_batch_tokens,
        "--max-batch-tokens",
        help=f"Padded tokens per forward pass (default: {ACCELERATOR_BATCH_TOKENS} on a GPU, one "
        "conversation per pass on CPU).",
    ),
    vocab_size: int = typer.Option(
        DEFAULT_VOCAB_SIZE,
        "--vocab-size",
        help="Top-k logprob inputs: vocabulary size V of "
        "the model that produced them (for the entropy upper bound).",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Replace an existing .jsonl output, or start an existing store afresh (by default "
        "a .jsonl output is an error and a store is resumed).",
    ),
) -> None:
    """Teacher-forced per-token entropy, log-prob and token ids of existing conversations."""
    _run(inputs, out, model, messages_key, fmt, error_pattern, max_context, max_batch_tokens,
         vocab_size, progress, force)  # fmt: skip


@guarded
def _run(
    inputs: list[Path],
    out: Path,
    model_dir: Path | None,
    messages_key: str,
    fmt: str,
    error_pattern: str | None,
    max_context: int | None,
    max_batch_tokens: int | None,
    vocab_size: int,
    progress: bool,
    force: bool,
) -> None:
    from agentropy.agent.loading import load_model
    from agentropy.agent.score import rescore_episodes, score_conversations
    from agentropy.trace import TraceWriter, iter_episodes, write_jsonl
    from agentropy.trace.importers.chat import FailureDetector, read_conversations

    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    FailureDetector(error_pattern)  # a bad regex is an option error before the model loads
    config = ScoreConfig(max_context=max_context, max_batch_tokens=max_batch_tokens,
                         error_pattern=error_pattern)  # fmt: skip
    for p in inputs:
        if not p.exists():
            raise ValueError(f"{p}: no such file or directory")
    from agentropy.outputs import check_output

    to_jsonl = out.suffix in (".jsonl", ".json")
    # Before any scoring: an existing file needs --force (a store is resumed: writability only).
    check_output(out, force=force or not to_jsonl, is_dir=not to_jsonl)
    done = set() if to_jsonl or force else _existing_ids(out)
    from agentropy.trace.importers.chat import sniff_format
    from agentropy.trace.importers.logprobs import read_logprob_episodes

    traces = [p for p in inputs if _is_trace(p)]
    with_lp = [p for p in inputs if p not in traces
               and (fmt == "logprobs" or (fmt == "auto" and sniff_format(p) == "logprobs"))]  # fmt: skip
    chats = [p for p in inputs if p not in traces and p not in with_lp]
    # Validate every conversation before loading the model: bad input fails fast with exit 2.
    ids = [c.id for p in chats for c in read_conversations(p, fmt=fmt, messages_key=messages_key)]  # type: ignore[arg-type]
    ids += [e.episode_id for p in traces for e in iter_episodes(p)]
    ids += [e.episode_id for p in with_lp for e in read_logprob_episodes(p, vocab_size=vocab_size,
                                                                         error_pattern=error_pattern)]  # fmt: skip
    n = sum(i not in done for i in ids)
    n_skipped = len(ids) - n
    # Inputs with top-k logprobs need no model: load one only for the rest.
    lm, tok = load_model(model_dir) if chats or traces else (None, None)
    bar: Any = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=False)
        bar.start()
        task = bar.add_task("score", total=n)

    def advance(k: int) -> None:
        if bar is not None:
            bar.advance(task, k)

    def episodes() -> Iterator[Any]:
        for p in with_lp:
            for ep in read_logprob_episodes(p, vocab_size=vocab_size, error_pattern=error_pattern):
                if ep.episode_id not in done:
                    yield ep
                    advance(1)
        for p in chats:
            convs = (c for c in read_conversations(p, fmt=fmt, messages_key=messages_key)  # type: ignore[arg-type]
                     if c.id not in done)  # fmt: skip
            yield from score_conversations(lm, tok, convs, config=config, progress=advance)
        for p in traces:
            eps = (e for e in iter_episodes(p) if e.episode_id not in done)
            yield from rescore_episodes(lm, tok, eps, config=config, progress=advance)

    written = 0
    windowed = 0
    try:
        if to_jsonl:
            scored = list(episodes())
            written = write_jsonl(scored, out, force=force)
            windowed = sum("windowing" in e.meta for e in scored)
        else:
            with TraceWriter(out, episodes_per_part=64, overwrite=force) as w:
                for ep in episodes():
                    w.write(ep)
                    written += 1
                    windowed += "windowing" in ep.meta
    finally:
        if bar is not None:
            bar.stop()
    skipped = f", {n_skipped} already in the store" if n_skipped else ""
    typer.echo(f"scored {written} conversations -> {out}{skipped}")
    if windowed:
        typer.echo(f"{windowed} conversations exceeded the context and were windowed "
                   "(keep the system prompt, slide over the rest; see meta.windowing)")  # fmt: skip


def register(app: typer.Typer) -> None:
    """Add ``score`` to the CLI."""
    app.command("score")(score)
