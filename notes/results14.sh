#!/usr/bin/env bash
# Issue 14 measurements on the shipped agent (RESULTS.md "The embedded agent"). Run from the
# repository root with the project venv active; writes under runs/r14/ (ignored by git).
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
out=runs/r14
rm -rf $out; mkdir -p $out
# 1. Held-out success and recovery, 200 test-split tasks per level, three policies.
agentropy eval --policies greedy,phase,constant:1.0 --levels 0,1,2,3 --episodes 200 --seed 0 \
  --faults seen --out $out/seen --no-progress | tee $out/seen.txt
agentropy eval --policies greedy,phase,constant:1.0 --levels 2,3 --episodes 200 --seed 0 \
  --faults novel --out $out/novel --no-progress | tee $out/novel.txt
# 2. Breath of the greedy episodes: baseline-floor share (analyze --json) and per-phase medians.
for fam in seen novel; do
  agentropy analyze $out/$fam/traces/greedy.parquet --json $out/$fam-greedy-analyze.json --force >/dev/null
  python -c "import json,sys; print('$fam', json.load(open('$out/$fam-greedy-analyze.json'))['baseline_floor'])"
done
# 3. Median model entropy per phase over the greedy episodes (plan target 0.1-1.0 nats), and the
#    share of tokens above 0.1 nats.
for fam in seen novel; do
  python - "$out/$fam/traces/greedy.parquet" <<'PY'
import collections, sys
import numpy as np
from agentropy.trace.parquet_read import iter_episodes
ent = collections.defaultdict(list)
for e in iter_episodes(sys.argv[1]):
    for t in e.turns:
        if t.role == "assistant" and t.phase is not None and t.entropy is not None:
            for h, ph in zip(t.entropy, t.phase_names):
                ent[ph].append(float(h))
print(sys.argv[1], {k: (round(float(np.median(v)), 3), round(float(np.mean(np.asarray(v) > 0.1)), 2)) for k, v in ent.items()})
PY
done
