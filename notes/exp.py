"""Scratch experiment driver (notes only): build a recipe variant, then greedy-eval it.

Usage: python notes/exp.py '{"hidden_size": 192, ...}' EPISODES
"""

import json
import sys
import time

import torch

from agentropy.agent import tiny
from agentropy.agent.runner import RunnerConfig
from agentropy.pipelines.compare import EvalConfig, run_eval

over = json.loads(sys.argv[1])
episodes = int(sys.argv[2]) if len(sys.argv) > 2 else 40
threads = int(over.pop("threads", 1))
recipe = tiny.TinyRecipe(**over)
T0 = time.time()
_orig = tiny.sft._lr_factor


_LAST = []
_ce = torch.nn.functional.cross_entropy


def _ce_logged(*a, **k):
    out = _ce(*a, **k)
    _LAST.append(out.item())
    return out


torch.nn.functional.cross_entropy = _ce_logged


def _logged(step, r, **kw):
    if step % 100 == 0:
        recent = _LAST[-100:]
        mean = sum(recent) / max(1, len(recent))
        print(f"step {step} t={time.time() - T0:.0f}s {kw} ce {mean:.3f}", flush=True)
        _LAST.clear()
    return _orig(step, r, **kw)


tiny.sft._lr_factor = _logged
path = tiny.bootstrap(recipe, progress=False, num_threads=threads)
build = time.time() - T0
info = tiny.read_agent_info(path)
print("recipe", recipe.recipe_hash, path, "params", info["n_params"], "build_s", round(build))
print("heldout", info["heldout"])
print("losses", [round(x, 3) for x in info["losses"][:: max(1, len(info["losses"]) // 25)]])
model, tok = tiny.load_agent(path)
torch.set_num_threads(threads)
t0 = time.time()
cfg = EvalConfig(policies=("greedy",), episodes=episodes)
res = run_eval(model, tok, config=cfg, runner_config=RunnerConfig(batch_size=32))
for r in res["rows"]:
    print(
        "L%d %s success %.2f recovery %s fails %s"
        % (r["level"], r["policy"], r["success"], r["recovery"], r["failure_episodes"]),
        flush=True,
    )
print("eval_s", round(time.time() - t0))
