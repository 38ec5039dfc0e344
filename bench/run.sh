#!/usr/bin/env bash
# Benchmarks against the peers, side by side in one run, from a clean checkout (docs/benchmarks.md):
#   bash bench/run.sh                          # the documented run (~35 min on 2 cores)
#   bash bench/run.sh --reps 2 --threads 2     # any bench/compare_peers.py arguments instead
# Builds .venv (make) and the peer venvs under .peers/ when missing; writes .peers-results/ (gitignored) and
# docs/benchmarks_scaling.png. PROFILE=0 skips bench/profile_rl.py, SCALING=0 skips bench/scaling.py.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/rlhf ] || make .venv/bin/rlhf # the project venv, as `make test` builds it
if [ $# -eq 0 ]; then
  set -- --reps 3 --threads 1 --grpo-iterations 1,4 --only ppo,grpo,rloo,same-reward,memory,train
fi
threads=2 # compare_peers.py's default, unless --threads is given
args=("$@")
for ((i = 0; i < ${#args[@]} - 1; i++)); do
  if [ "${args[i]}" = "--threads" ]; then threads="${args[i + 1]}"; fi
done
.venv/bin/python bench/compare_peers.py "$@"
if [ "${PROFILE:-1}" != 0 ]; then
  for stage in ppo grpo; do
    .venv/bin/python bench/profile_rl.py --stage "$stage" --threads "$threads" 2>&1 | sed -n '/^`/,$p'
  done
fi
if [ "${SCALING:-1}" != 0 ]; then
  .venv/bin/python bench/scaling.py --threads "$threads"
fi
