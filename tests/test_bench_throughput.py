"""The throughput benchmark's memory plan and table (the timing itself is not tested)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from experiments import bench_throughput


def test_memory_plan_counts_a_donated_buffer_once():
  x = jnp.zeros((256, 256), jnp.float32)  # 256 KiB
  plain = bench_throughput.memory(jax.jit(lambda a: a * 2).lower(x).compile())
  donated = bench_throughput.memory(jax.jit(lambda a: a * 2, donate_argnums=0).lower(x).compile())
  assert plain["arguments"] == plain["outputs"] == x.nbytes
  assert plain["peak"] >= 2 * x.nbytes and donated["aliased"] == x.nbytes
  assert donated["peak"] == plain["peak"] - x.nbytes


def test_markdown_has_one_row_per_method_and_mode():
  row = lambda method, mode: dict(
    method=method, mode=mode, images_per_s=100.0, ratio_to_original=1.0,
    memory_bytes={"peak": 2**20}, memory_ratio_to_original=1.0,
  )  # fmt: skip
  result = dict(model="m", batch_size=8, sparsity=0.9, steps=3, command="python -m x", machine={})
  result["rows"] = [row(a, b) for a in ("dense", "rigl-erk") for b in bench_throughput.MODES]
  lines = bench_throughput.markdown(result).splitlines()
  assert len([l for l in lines if l.startswith("| dense") or l.startswith("| rigl")]) == 6
  assert "Command: `python -m x`" in lines[2]
