"""``agentropy bootstrap``: train (or reuse) the embedded tiny agent and say where it is."""

from __future__ import annotations

import typer

from agentropy.cli._common import guarded
from agentropy.cli._options import PROGRESS_OPTION


@guarded
def bootstrap_command(
    force: bool = typer.Option(
        False, "--force", help="Retrain even if an agent for this recipe is already cached."
    ),
    rebuild: bool = typer.Option(
        False,
        "--rebuild",
        help="Rebuild the shipped default agent from its recipe and overwrite the files in "
        "the package's agent/default/ (with its build record and eval table).",
    ),
    eval_episodes: int = typer.Option(
        200,
        "--eval-episodes",
        min=0,
        help="With --rebuild: held-out tasks per level and fault family for the build "
        "record's greedy eval table (0 skips it).",
    ),
    quick: bool = typer.Option(
        False, "--quick", help="Use the reduced recipe (seconds instead of minutes)."
    ),
    progress: bool = PROGRESS_OPTION,
    threads: int | None = typer.Option(
        None,
        "--threads",
        min=1,
        help="Torch threads while training (default: torch's choice). On a busy shared "
        "machine, 1 is often faster.",
    ),
) -> None:
    """Build the tiny agent (a small Llama warm-started on ToolWorld expert transcripts).

    The default agent ships with the package (agent/default/) and needs no build; other
    recipes (--quick) are saved in Hugging Face format under
    $AGENTROPY_HOME/agents/tiny-<recipe hash>/ (default home ~/.cache/agentropy) and reused
    by later commands. --rebuild re-creates the shipped agent from its recipe.
    """
    from agentropy.agent.tiny import TinyRecipe, bootstrap, read_agent_info

    if rebuild and quick:
        raise ValueError("--rebuild rebuilds the default agent; it cannot be combined with --quick")
    recipe = TinyRecipe.quick() if quick else TinyRecipe()
    if rebuild:
        from agentropy.agent.shipped import read_build_record
        from agentropy.agent.shipped import rebuild as rebuild_default

        path = rebuild_default(num_threads=threads, eval_episodes=eval_episodes, progress=progress)
        record = read_build_record(path)
        typer.echo(
            f"build wall time: {record['build_wall_s']:.0f} s  recipe {record['recipe_hash']}"
        )
        for row in record["eval"]["rows"]:
            recovery = row["recovery"]
            typer.echo(
                f"eval {row['faults']} L{row['level']} greedy: success {row['success']:.2f}  "
                f"recovery {recovery if recovery is None else round(recovery, 2)}"
            )
    else:
        path = bootstrap(recipe, progress=progress, force=force, num_threads=threads)
    info = read_agent_info(path)
    heldout = info.get("heldout") or {}
    typer.echo(f"agent: {path}")
    typer.echo(
        f"parameters: {info['n_params']:,}  vocab: {info['vocab_size']}  "
        f"train transcripts: {info['n_train_transcripts']}"
    )
    typer.echo(
        f"train time: {info['train_seconds']:.1f} s  "
        f"loss: {info['initial_loss']:.3f} -> {info['final_loss']:.3f}"
    )
    if heldout:
        typer.echo(
            f"held-out assistant tokens: accuracy {heldout['accuracy']:.3f}  "
            f"loss {heldout['loss']:.3f}  entropy {heldout['entropy']:.3f} nats "
            f"({int(heldout['tokens'])} tokens)"
        )
    sample = info.get("sample") or {}
    if sample:
        typer.echo(f"sample question: {sample['question']}")
        typer.echo(f"sample greedy reply: {sample['generated']}")


def register(app: typer.Typer) -> None:
    """Add the ``bootstrap`` command to ``app``."""
    app.command("bootstrap")(bootstrap_command)
