#!/usr/bin/env bash
# Benchmarks against the peers, side by side in one run, from a clean checkout:
#   bash bench/run.sh                 # ratio table (RL, memory, pretrain/SFT), then the cost-growth table/plot
#   bash bench/run.sh --reps 3 --threads 1 --grpo-iterations 1,4
# Arguments go to bench/compare_peers.py. Creates .venv (make) and the peer venvs under .peers/ when missing;
# everything it writes lands in .peers-results/ (gitignored) and docs/benchmarks_scaling.png.
# SCALING=0 skips bench/scaling.py; PROFILE=0 skips bench/profile_rl.py.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/rlhf ] || make .venv/bin/rlhf   # the project venv, as `make test` builds it
threads=1
for ((i = 1; i <= $#; i++)); do [ "${!i}" = "--threads" ] && { j=$((i + 1)); threads="${!j}"; }; done
.venv/bin/python bench/compare_peers.py "$@"
if [ "${PROFILE:-1}" != 0 ]; then
  for stage in ppo grpo; do .venv/bin/python bench/profile_rl.py --stage "$stage" --threads "$threads" 2>/dev/null | grep -v "it/s"; done
fi
if [ "${SCALING:-1}" != 0 ]; then
  .venv/bin/python bench/scaling.py --threads "$threads"
fi
