#!/usr/bin/env bash
# A new user's install, checked end to end: build the wheel, install it in a fresh virtual
# environment with its core dependencies only (no extras; the CPU torch from the constraints
# file), then run `analyze`, `report` and `demo --quick` from that environment, outside the
# source tree so nothing is imported from src/.
# Usage: .ci/plain_install.sh PYTHON VENV CONSTRAINTS
set -euo pipefail
py=${1:-python3}
venv=${2:-.venv-wheel}
constraints=$(realpath "${3:-requirements/constraints-cpu.txt}")
venv=$(realpath -m "$venv")
work=$(mktemp -d)
trap 'rm -rf "$work" "$venv"' EXIT

rm -rf "$venv"
"$py" -m venv "$venv"
bin=$(realpath "$venv/bin")
"$bin/pip" install -q "setuptools>=68" wheel
"$bin/pip" wheel -q --no-deps --no-build-isolation -w "$work/dist" .
"$bin/pip" install -q -c "$constraints" torch
"$bin/pip" install -q -c "$constraints" "$work"/dist/agentropy-*.whl
# Only core dependencies: no extra may have slipped in.
for extra in trl verl vllm wandb tensorboard openai pandas polars pytest; do
  if "$bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$extra') is None)"; then
    echo "plain install pulled in $extra" >&2
    exit 1
  fi
done

cd "$work"
export AGENTROPY_HOME="$work/home"
cat > traces.jsonl <<'JSONL'
{"episode_id": "e1", "success": true, "turns": [{"role": "assistant", "entropy": [0.2, 0.1, 0.3]}, {"role": "tool", "name": "lookup", "status": "error", "content": "upstream failure"}, {"role": "assistant", "entropy": [1.4, 1.1, 0.6, 0.2]}]}
{"episode_id": "e2", "success": false, "turns": [{"role": "assistant", "entropy": [0.3, 0.2]}, {"role": "tool", "name": "calc", "status": "ok", "content": "4"}, {"role": "assistant", "entropy": [0.2, 0.2, 0.1]}]}
JSONL
"$bin/agentropy" --version
"$bin/agentropy" analyze traces.jsonl --json analysis.json
test -s analysis.json
"$bin/agentropy" report traces.jsonl --out report.html
test -s report.html
start=$(date +%s)
"$bin/agentropy" demo --quick --no-progress --out demo
test -s demo/report.html
echo "plain install: analyze, report and demo --quick passed (demo $(( $(date +%s) - start )) s)"
