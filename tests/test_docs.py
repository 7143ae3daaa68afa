"""The documentation site's pages: their examples run, and the API reference covers the API.

The site itself is built in CI (`.ci/run`: `sphinx-build -W`); these checks need no Sphinx.
"""

from __future__ import annotations

import pathlib
import re
import types

import s2sam_jax
from s2sam_jax import sparse

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"


def python_blocks(page: str) -> list[str]:
  return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)


def run(code: str, namespace: dict) -> dict:
  exec(compile(code, "getting_started.md", "exec"), namespace)  # pylint: disable=exec-used
  return namespace


def test_getting_started_optax_examples_are_the_readmes():
  """They run in tests/test_readme.py; the page shows them as they are tested."""
  readme = re.findall(r"```python\n(.*?)```", (DOCS.parent / "README.md").read_text(), flags=re.S)
  assert python_blocks("getting_started.md")[:2] == readme[:2]


def test_getting_started_nnx_example_trains_a_sparse_network():
  ns = run(python_blocks("getting_started.md")[2], {})
  nnx = ns["nnx"]
  clean = nnx.to_pure_dict(ns["clean"])
  masks = nnx.to_pure_dict(ns["masks"])
  kernels = ("hidden", "out")
  assert all(((clean[k]["kernel"] != 0) <= masks[k]["kernel"]).all() for k in kernels)
  assert float(ns["loss_fn"](ns["eval_model"], ns["x"], ns["y"])) < 0.5


def _documented() -> set[str]:
  """Full names given to autodoc / py directives on the API pages."""
  names, module = set(), None
  directive = re.compile(r"\.\. (currentmodule|module|auto\w+|py:\w+):: (\S+)")
  for page in sorted((DOCS / "api").glob("*.md")):
    for kind, name in directive.findall(page.read_text()):
      if kind in ("currentmodule", "module"):
        module = name
      elif kind != "automodule":
        names.add(name if name.startswith("s2sam_jax.") else f"{module}.{name}")
  return names


def test_api_reference_documents_every_public_name():
  public = {f"s2sam_jax.{n}" for n in s2sam_jax.__all__ if n != "sparse"}
  public |= {
    f"s2sam_jax.sparse.{n}"
    for n, v in vars(sparse).items()
    if not n.startswith("_") and not isinstance(v, types.ModuleType)
  }
  documented = _documented()
  assert not public - documented, f"missing from docs/api/: {sorted(public - documented)}"
  assert not documented - public, f"not public: {sorted(documented - public)}"
