"""Ship the polished default agent (notes only; session 7).

The default recipe is recipe ``85652a1f710b`` (the main stage, built and shipped in session 6 in
5,203 s on one thread) followed by the decision polish (``TinyRecipe.polish_steps``). This runs
only the polish on the shipped main-stage weights, exactly what ``fit`` runs after its main
stage, then ships the result with a build record whose wall time is the sum of both stages.

    OMP_NUM_THREADS=1 PYTHONPATH=src python notes/polish.py BASE_DIR OUT_BUILT_DIR EPISODES

BASE_DIR: a copy of the session-6 shipped agent (``git show a1d8cbc:src/agentropy/agent/default/...``).
"""

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from agentropy.agent import shipped, tiny
from agentropy.agent.tiny import sft
from agentropy.agent.tiny.corpus import _expert_conversations, _world

base, built, episodes = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(1)
recipe = tiny.TinyRecipe()
main_stage = dataclasses.replace(recipe, polish_steps=0)
base_info = tiny.read_agent_info(base)
base_build = json.loads((base / "build.json").read_text())
assert base_info["recipe_hash"] == main_stage.recipe_hash, (base_info["recipe_hash"], main_stage.recipe_hash)
model, tokenizer = tiny.load_agent(base)
t0 = time.perf_counter()
losses = sft.polish(model, tokenizer, recipe, on_step=None)
polish_s = time.perf_counter() - t0
print(f"polish {recipe.polish_steps} steps {polish_s:.0f} s, loss {losses[0]:.3f} -> {sum(losses[-10:]) / 10:.3f}", flush=True)
world = _world(recipe.world_seed)
held = sft._encode_all(tokenizer, [c for _, c in _expert_conversations(world, split="test", levels=recipe.levels, n=recipe.n_eval_tasks_per_level, seed=recipe.seed)], world.tool_schemas(), recipe.max_length)
model.eval()
info = dict(base_info)
info.update(
    recipe=recipe.to_dict(),
    recipe_hash=recipe.recipe_hash,
    polish_losses=losses,
    polish_seconds=polish_s,
    train_seconds=base_info["train_seconds"] + polish_s,
    heldout=sft.evaluate(model, held, pad_id=tokenizer.pad_token_id),
    main_stage={"recipe_hash": main_stage.recipe_hash, "train_seconds": base_info["train_seconds"],
                "build_wall_s": base_build["build_wall_s"], "threads": base_build["threads"]},
)
print("heldout", info["heldout"], flush=True)
if built.exists():
    shutil.rmtree(built)
built.mkdir(parents=True)
model.save_pretrained(built)
tokenizer.save_pretrained(built)
(built / tiny.INFO_FILE).write_text(json.dumps(info, indent=2))
wall = base_build["build_wall_s"] + polish_s
t1 = time.perf_counter()
out = shipped.ship(built, wall_s=wall, threads=1, eval_episodes=episodes)
record = shipped.read_build_record(out)
record["stages"] = {
    "main": {"recipe_hash": main_stage.recipe_hash, "wall_s": base_build["build_wall_s"], "threads": base_build["threads"], "built": "session 6 (2026-12-01), bootstrap --rebuild of that recipe"},
    "polish": {"steps": recipe.polish_steps, "wall_s": round(polish_s, 1), "threads": 1, "built": "session 7, notes/polish.py on the main stage's shipped weights"},
}
(out / shipped.BUILD_FILE).write_text(json.dumps(record, indent=2) + "\n")
for row in record["eval"]["rows"]:
    print(row, flush=True)
print("ship_s", round(time.perf_counter() - t1))
