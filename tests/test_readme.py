"""The README's code runs as written: the usage example trains a sparse network."""

import math
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
  return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def run(code, namespace):
  exec(compile(code, "README.md", "exec"), namespace)  # pylint: disable=exec-used
  return namespace


def test_usage_example_runs_and_learns():
  ns = run(python_blocks()[0], {})
  ss, state, params = ns["ss"], ns["state"], ns["params"]
  clean = ss.unperturbed(params, state)
  masks = ss.sparse.get_masks(state)
  assert abs(ss.sparse.nnz(masks) / (20 * 64 + 64 * 4) - 0.2) < 0.01
  for k in clean:
    assert ((clean[k] != 0) <= masks[k]).all()  # exactly sparse
  # Chance level is log(4) = 1.39; the example must learn well below it.
  assert float(ns["loss_fn"](clean, ns["x"], ns["y"])) < 0.7 * math.log(4)


def test_sam_snippet_runs():
  ns = run(python_blocks()[0].split("# RigL at")[0], {})
  run(
    "grads = jax.grad(loss_fn)(params, x, y)\n"
    "state = ss.sam(optax.sgd(0.1, momentum=0.9), rho=0.05).init(params)\n",
    ns,
  )
  run(python_blocks()[1], ns)
  assert ns["updates"]["w1"].shape == (20, 64)
