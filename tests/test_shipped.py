"""The shipped default agent: a fixed artifact, loaded without a build, with its build record."""

from __future__ import annotations

import dataclasses
import json

import pytest

from agentropy.agent import shipped, tiny

MAX_BYTES = 16 * 1024 * 1024

requires_shipped = pytest.mark.skipif(
    not (shipped.SHIPPED_DIR / "model.safetensors").is_file(),
    reason="no agent shipped in agent/default/ yet",
)


def test_recipe_hash_covers_data_version_and_template(monkeypatch) -> None:
    import agentropy.env.toolworld as toolworld

    base = tiny.TinyRecipe().recipe_hash
    monkeypatch.setattr(toolworld, "TOOLWORLD_VERSION", "changed")
    assert tiny.TinyRecipe().recipe_hash != base
    monkeypatch.undo()
    monkeypatch.setattr(tiny.sft, "CHAT_TEMPLATE", tiny.CHAT_TEMPLATE + " ")
    assert tiny.TinyRecipe().recipe_hash != base


def test_stale_shipped_agent_is_not_used(monkeypatch, tmp_path) -> None:
    # A recipe the shipped agent was not built from never resolves to the shipped files.
    assert shipped.shipped_agent_path(tiny.TinyRecipe.quick()) is None
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path)
    assert shipped.shipped_agent_path() is None  # nothing there


@requires_shipped
def test_shipped_agent_matches_the_default_recipe_and_fits() -> None:
    record = shipped.read_build_record()
    assert record["recipe_hash"] == tiny.TinyRecipe().recipe_hash
    assert shipped.shipped_agent_path() == shipped.SHIPPED_DIR
    total = sum(p.stat().st_size for p in shipped.SHIPPED_DIR.iterdir() if p.is_file())
    assert total <= MAX_BYTES
    info = tiny.read_agent_info(shipped.SHIPPED_DIR)
    assert info["recipe_hash"] == record["recipe_hash"]
    assert len(info["losses"]) == info["drill_steps_run"] + tiny.TinyRecipe().steps  # loss curve
    assert len(info["polish_losses"]) == tiny.TinyRecipe().polish_steps
    if "stages" in record:  # built in stages: the main stage is the recipe without its polish
        main = dataclasses.replace(tiny.TinyRecipe(), polish_steps=0)
        assert record["stages"]["main"]["recipe_hash"] == main.recipe_hash
        assert record["stages"]["polish"]["steps"] == tiny.TinyRecipe().polish_steps
        stage_s = record["stages"]["main"]["wall_s"] + record["stages"]["polish"]["wall_s"]
        assert record["build_wall_s"] == pytest.approx(stage_s, abs=0.2)
    assert {"torch", "transformers", "tokenizers"} <= set(record["library_versions"])
    assert record["build_wall_s"] > 0
    rows = record["eval"]["rows"]
    if record["eval"]["episodes_per_level"] > 0:  # 0: shipped without its eval table
        assert {(r["faults"], r["level"]) for r in rows} >= {("seen", lv) for lv in range(4)}
    json.dumps(record)


@requires_shipped
def test_default_agent_loads_without_a_build(monkeypatch, tmp_path) -> None:
    def no_training(*args, **kwargs):
        raise AssertionError("the default agent must not be rebuilt")

    monkeypatch.setattr(tiny.store, "_train", no_training)
    monkeypatch.setenv("AGENTROPY_HOME", str(tmp_path))
    assert tiny.bootstrap() == shipped.SHIPPED_DIR
    model, tokenizer = tiny.load_agent()
    assert not model.training
    assert tokenizer.chat_template == tiny.CHAT_TEMPLATE
    assert not (tmp_path / "agents").exists()


@requires_shipped
@pytest.mark.slow
def test_shipped_record_matches_the_transcripts_the_code_generates() -> None:
    record = shipped.read_build_record()
    assert record["transcript_hash"] == shipped.transcript_hash(tiny.TinyRecipe())


def test_ship_copies_files_and_writes_the_build_record(
    monkeypatch, tmp_path, tiny_tokenizer, random_llama
) -> None:
    built = tmp_path / "built"
    random_llama.save_pretrained(built)
    tiny_tokenizer.save_pretrained(built)
    recipe = tiny.TinyRecipe()
    (built / tiny.INFO_FILE).write_text(json.dumps({"recipe_hash": recipe.recipe_hash}))
    monkeypatch.setattr(shipped, "transcript_hash", lambda recipe: "0" * 16)
    out = shipped.ship(built, out=tmp_path / "default", wall_s=12.5, threads=1, eval_episodes=0)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    record = shipped.read_build_record(out)
    assert record["recipe_hash"] == recipe.recipe_hash and record["build_wall_s"] == 12.5
    assert record["threads"] == 1 and record["eval"]["rows"] == []
    assert set(shipped.library_versions()) <= set(record["library_versions"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left
    (built / tiny.INFO_FILE).write_text(json.dumps({"recipe_hash": "not-the-default"}))
    with pytest.raises(ValueError, match="default recipe"):
        shipped.ship(built, out=tmp_path / "other", wall_s=1.0, threads=1, eval_episodes=0)
