"""experiments.bench_cpu_conv: the harness (timing, switches, table) without PyTorch; the
PyTorch twins' parameter counts where torch is installed."""

import os

import pytest

from experiments import bench_cpu_conv
from experiments.models import native_kernels


def test_interleaved_times_every_variant_round_robin():
  calls = []
  fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
  stats = bench_cpu_conv.interleaved(fns, steps=3, warmup=1, settle_s=0.0)
  assert calls == ["a", "b"] + ["a", "b"] * 3  # warmup, then alternating
  for s in stats.values():
    assert s["samples"] == 3 and 0 <= s["min_s"] <= s["median_s"] <= s["max_s"]
    assert s["page_faults_median"] >= 0


def test_switch_env_sets_and_restores(monkeypatch):
  name = native_kernels.ENV_VAR
  monkeypatch.delenv(name, raising=False)
  with bench_cpu_conv.switch_env(name, False):
    assert os.environ[name] == "0" and not native_kernels.enabled()
  assert name not in os.environ
  monkeypatch.setenv(name, "1")
  with bench_cpu_conv.switch_env(name, False):
    assert not native_kernels.enabled()
  assert os.environ[name] == "1"


def test_markdown_reports_ratios():
  t = lambda s: {"median_s": s, "cpu_median_s": s}
  result = {
    "command": "cmd",
    "machine": {},
    "configs": [
      {
        "model": "resnet20_classic",
        "batch_size": 64,
        "times": {"jax_plain": t(0.2), "jax_fast": t(0.1), "torch": t(0.08)},
        "ratio_jax_plain_to_best_torch": 2.5,
        "ratio_jax_fast_to_best_torch": 1.25,
      }
    ],
  }
  row = bench_cpu_conv.markdown(result).splitlines()[-1]
  assert row == (
    "| resnet20_classic | 64 | 0.200 (0.200) | 0.100 (0.100) | 0.080 (0.080) | 0.50 | 2.50 | 1.25 |"
  )


@pytest.mark.parametrize("name", list(bench_cpu_conv.MODELS))
def test_torch_twins_have_the_zoo_parameter_counts(name):
  """experiments.torch_models builds each benchmark model with the JAX zoo's parameter count
  (needs the ``bench`` extra)."""
  pytest.importorskip("torch")
  counts = bench_cpu_conv.parameter_counts(name)
  assert counts["jax"] == counts["torch"]
