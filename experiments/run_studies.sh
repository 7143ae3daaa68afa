#!/usr/bin/env bash
# Runs (or resumes) the named studies in order, each as two processes side by
# side (--shard 0/2 and 1/2); rerun the same command after an interruption.
#   bash experiments/run_studies.sh rho_mnist1d table1_mnist1d ...
# Logs: runs/studies/<study>.<shard>.log. CIFAR-10 studies need $CIFAR10_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
mkdir -p runs/studies
for study in "$@"; do
  python -m experiments.study "$study" --shard 0/2 >> "runs/studies/$study.0.log" 2>&1 &
  first=$!
  python -m experiments.study "$study" --shard 1/2 >> "runs/studies/$study.1.log" 2>&1 &
  second=$!
  wait "$first" "$second"
done
