"""Sphinx configuration of the s2sam-jax documentation site.

Build (warnings are errors, as in CI)::

    pip install -e ".[docs]"
    sphinx-build -W --keep-going -b html docs docs/_build/html
"""

import os
import re
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


# --------------------------------------------------------------------------
# Docstrings are written to read as plain text too (``help()``), and two of
# their habits are not RST: formulas set as an indented block after a line
# ending in ":" (RST joins the lines into one paragraph, and a continuation
# line indented further is an error) and |w| for an absolute value (RST reads
# a substitution). This hook, run after napoleon, makes such a block a
# literal block ("text:" -> "text::", rendered "text:") and escapes "|"
# outside code, literal and doctest blocks. Docstrings in proper RST pass
# through unchanged.

_INLINE_CODE = re.compile(r"(``.+?``|`[^`]+`)")


def _indent(line: str) -> int:
  return len(line) - len(line.lstrip())


def _escape_bars(text: str) -> str:
  parts = _INLINE_CODE.split(text)
  return "".join(p if i % 2 else p.replace("|", r"\|") for i, p in enumerate(parts))


def plain_text_to_rst(lines: list[str]) -> None:
  """Rewrites autodoc's docstring ``lines`` in place (see above)."""
  for i in range(len(lines) - 2):
    head, blank, body = lines[i], lines[i + 1], lines[i + 2]
    stripped = head.strip()
    if (
      stripped.endswith(":")
      and not stripped.endswith("::")
      and not stripped.startswith((":", ".."))
      and not blank.strip()
      and body.strip()
      and not body.strip().startswith(">>>")
      and _indent(body) > _indent(head)
    ):
      lines[i] = head + ":"
  literal_indent = None  # indent of the line that opened a literal block
  in_doctest = False
  for i, line in enumerate(lines):
    if not line.strip():
      in_doctest = False
      continue
    if literal_indent is not None:
      if _indent(line) > literal_indent:
        continue
      literal_indent = None
    if in_doctest or line.strip().startswith(">>>"):
      in_doctest = True
      continue
    lines[i] = _escape_bars(line)
    if line.rstrip().endswith("::"):
      literal_indent = _indent(line)


def _process_docstring(app, what, name, obj, options, lines):
  del app, what, name, obj, options
  plain_text_to_rst(lines)


def setup(app):
  app.connect("autodoc-process-docstring", _process_docstring)
