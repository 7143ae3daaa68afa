"""Smoke test of experiments.bench_sparse_overhead (tiny model, no timing asserted)."""

from __future__ import annotations

import json

from experiments import bench_sparse_overhead


def test_quick_run_writes_tables(tmp_path):
  result = bench_sparse_overhead.main(
    ["--quick", "--models", "mlp", "--methods", "dense,static,rigl", "--out-dir", str(tmp_path)]
  )
  timing = result["models"]["mlp"]["timing"]
  assert {"dense", "static", "rigl", "rigl/update", "rigl+s2sam"} <= set(timing)
  assert timing["dense"]["ratio"] == 1.0
  assert "amortised_ratio" in timing["rigl"]
  memory = result["models"]["mlp"]["memory"]
  params = memory["params_bytes"]
  # S2-SAM holds one params-sized buffer (half of it in bfloat16), a sparse wrapper one mask tree.
  extra = memory["dense+s2sam"]["state_bytes"] - memory["dense"]["state_bytes"]
  assert params <= extra <= params + 64
  extra_bf16 = memory["dense+s2sam_bf16"]["state_bytes"] - memory["dense"]["state_bytes"]
  assert params // 2 <= extra_bf16 <= params // 2 + 64
  extra_masks = memory["static"]["state_bytes"] - memory["dense"]["state_bytes"]
  assert memory["mask_tree_bytes"] <= extra_masks <= memory["mask_tree_bytes"] + 64
  with open(tmp_path / "sparse_overhead.json") as f:
    assert json.load(f)["models"]["mlp"]["timing"]["dense"]["ratio"] == 1.0
  assert "| rigl |" in (tmp_path / "sparse_overhead.md").read_text()
