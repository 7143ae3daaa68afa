#!/usr/bin/env bash
# ResNet-32 (GraSP variant) on CIFAR-10 (../shared/data/cifar10-jpeg), the Table 1
# cell RigL 90% + S2-SAM, stopped after 300 steps (batch 64) to measure images/s.
# The test accuracy after 300 of 124,960 steps means nothing; the throughput does.
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=experiments/results/train_cifar10_resnet32
data=${DATA:-/work/shared/data/cifar10-jpeg}
rm -rf runs/cifar10_resnet32   # a fresh run (the command refuses to overwrite one)
uptime > $out/load_before.txt
/usr/bin/time -v .venv/bin/python -m experiments.train \
  --config table1/cifar10/resnet32/rigl-erk/0.9/s2sam --data-dir "$data" \
  --max-steps 300 --test-subset 2000 --out-dir runs/cifar10_resnet32 \
  > $out/stdout.txt 2> >(tr '\r' '\n' | grep -v '^\s*$' > $out/stderr.txt)
uptime > $out/load_after.txt
cp runs/cifar10_resnet32/summary.json runs/cifar10_resnet32/metrics.jsonl $out/
