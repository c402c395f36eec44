"""Ship the built default agent (notes only): python notes/ship.py BUILT_DIR WALL_S EPISODES."""

import sys
import time

import torch

from agentropy.agent import shipped

torch.set_num_threads(1)
t0 = time.time()
out = shipped.ship(sys.argv[1], wall_s=float(sys.argv[2]), threads=1, eval_episodes=int(sys.argv[3]))
record = shipped.read_build_record(out)
for row in record["eval"]["rows"]:
    print(row, flush=True)
print("ship_s", round(time.time() - t0))
