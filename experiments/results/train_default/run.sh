#!/usr/bin/env bash
# The default job: MNIST-1D CNN, RigL at 90% sparsity (ERK), S2-SAM (rho 0.05),
# 3000 epochs of SGD (lr 0.1 cosine, momentum 0.9, wd 5e-4, batch 128), seed 0.
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=experiments/results/train_default
rm -rf runs/default   # a fresh run (the command refuses to overwrite one)
uptime > $out/load_before.txt
/usr/bin/time -v .venv/bin/python -m experiments.train --out-dir runs/default \
  > $out/stdout.txt 2> >(tr '\r' '\n' | grep -v -e '^train:' -e '^\s*$' > $out/stderr.txt)
uptime > $out/load_after.txt
cp runs/default/summary.json $out/
grep test_accuracy runs/default/metrics.jsonl > $out/metrics_eval.jsonl  # evaluated epochs
