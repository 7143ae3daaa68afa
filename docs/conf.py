"""Sphinx configuration of the s2sam-jax documentation site.

Build (warnings are errors, as in CI)::

    pip install -e ".[docs]"
    sphinx-build -W --keep-going -b html docs docs/_build/html
"""

import os
import sys

# Document the checkout this file belongs to, whatever is installed.
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # autodoc imports jax; no accelerator needed

import s2sam_jax  # noqa: E402

project = "s2sam-jax"
author = "s2sam-jax authors"
copyright = "the s2sam-jax authors"  # noqa: A001
release = version = s2sam_jax.__version__

extensions = [
  "myst_parser",
  "sphinx.ext.autodoc",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
  "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
# ``x`` in the docstrings is code, as in optax's and JAX's.
default_role = "code"

# Markdown pages: $...$ / $$...$$ math, ::: fences, GitHub-style heading
# anchors (docs/methods.md#rigl works on GitHub and on the site alike).
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# Google-style docstrings (Args:, Returns:, Example:, Attributes:).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True  # show `default_prunable`, not <function ...>
# Type aliases by name rather than expanded. (MaskTree and MasksOrFn appear in
# unions, which Sphinx 9 would print as ``TypeAliasForwardRef('MaskTree') | None``:
# they stay expanded, ``Any | None``.)
autodoc_type_aliases = {
  name: name.split(".")[-1]
  for name in (
    "Prunable",
    "distributions.Prunable",
    "ScalarOrSchedule",
    "_perturbation.ScalarOrSchedule",
  )
}
python_display_short_literal_types = True

html_theme = "furo"
html_title = f"s2sam-jax {release}"
html_static_path = []
html_theme_options = {"navigation_with_keys": True}
