"""The scripts in examples/ run and do what they say, each on a small budget."""

import importlib.util
import pathlib
import re

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py"))


def load(name):
  spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_script_says_how_to_run_it_and_is_listed(script):
  doc = load(script[:-3]).__doc__
  assert f"python examples/{script}" in doc
  assert f"python examples/{script}" in (EXAMPLES / "README.md").read_text()


def test_nnx_rigl_s2sam_learns_at_exact_sparsity():
  result = load("nnx_rigl_s2sam").main(steps=200)  # asserts exact per-layer counts itself
  assert result["final_loss"] < result["first_loss"] - 0.3
  assert result["test_accuracy"] > 0.6  # chance: 0.25
  assert result["sparsity"] == pytest.approx(0.9, abs=1e-3)


def test_linen_train_state_learns_at_exact_sparsity():
  result = load("linen_train_state").main(steps=200)
  assert result["test_loss"] < 0.6 * result["initial_loss"]
  assert result["test_accuracy"] > 0.75  # chance: 1/3
  assert result["sparsity"] == pytest.approx(0.8, abs=1e-4)


def test_pure_optax_set_fits_and_moves_its_masks():
  result = load("pure_optax").main(steps=300)
  assert result["final_loss"] < 0.2 * result["initial_loss"]
  assert result["kept_connections"] < 0.95  # SET replaced connections
  assert result["sparsity"] == pytest.approx(0.9, abs=1e-3)


def test_from_optax_contrib_sam_same_sam_and_half_the_gradients():
  steps = 40
  result = load("from_optax_contrib_sam").main(steps=steps)
  grads = result["grads"]
  assert grads["s2sam_jax.s2sam"] == steps
  assert grads["s2sam_jax.sam"] == grads["optax.contrib.sam (opaque)"] == 2 * steps
  assert grads["optax.contrib.sam (default)"] == 2 * steps
  assert result["sam_gap"] < 1e-5  # ss.sam reproduces optax.contrib.sam's weights
  assert all(loss < 0.3 * result["initial_loss"] for loss in result["losses"].values())


def test_examples_readme_lists_only_existing_scripts():
  listed = set(re.findall(r"examples/(\w+\.py)", (EXAMPLES / "README.md").read_text()))
  assert listed == set(SCRIPTS)
