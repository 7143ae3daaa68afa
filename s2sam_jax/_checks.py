"""Argument validators shared by every module: one rule per kind of argument.

Each ``check_*`` returns the checked value (as a Python ``float``/``int``/
``str``) or raises ``ValueError`` naming the argument and what it must be.
Numbers are Python or NumPy reals, or concrete 0-d integer/float arrays;
``bool``, strings and other objects are refused (``"0.5"`` is not a number).

Example:
  >>> from s2sam_jax import _checks
  >>> _checks.check_sparsity(0.9)
  0.9
  >>> _checks.check_sparsity("0.5")
  Traceback (most recent call last):
  ...
  ValueError: `sparsity` must be a float in [0, 1); got '0.5'.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(x) -> bool:
  """``True`` for a JAX tracer (a value only known inside ``jit``/``grad``)."""
  return isinstance(x, jax.core.Tracer)


def _is_bool(x) -> bool:
  return isinstance(x, (bool, np.bool_)) or (
    hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.bool_)
  )


def as_real(x) -> float | None:
  """``float(x)`` for a concrete real scalar, ``None`` for anything else.

  Real scalars: Python and NumPy integers and floats, and concrete 0-d
  integer or floating arrays. ``bool``, strings, complex numbers, traced
  values and arrays with more than one entry are not.
  """
  if _is_bool(x) or is_traced(x) or isinstance(x, str):
    return None
  if isinstance(x, numbers.Real):
    return float(x)
  if not isinstance(x, (np.ndarray, np.generic, jax.Array)) or np.ndim(x) != 0:
    return None
  dtype = x.dtype
  if jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating):
    return float(x)
  return None


def check_interval(value, name: str, low: float, high: float, *, closed: str = "left") -> float:
  """``value`` as a float in the interval ``low .. high``, else ``ValueError``.

  ``closed``: ``'left'`` (``[low, high)``), ``'both'`` (``[low, high]``) or
  ``'neither'`` (``(low, high)``). NaN is never in an interval.
  """
  x = as_real(value)
  left_ok = x is not None and (x > low or (x == low and closed in ("left", "both")))
  right_ok = x is not None and (x < high or (x == high and closed == "both"))
  if not (left_ok and right_ok):
    lb = "[" if closed in ("left", "both") else "("
    rb = "]" if closed == "both" else ")"
    raise ValueError(f"`{name}` must be a float in {lb}{low:g}, {high:g}{rb}; got {value!r}.")
  return x


def check_sparsity(sparsity, name: str = "sparsity") -> float:
  """A sparsity: a float in ``[0, 1)``."""
  return check_interval(sparsity, name, 0.0, 1.0, closed="left")


def check_density(density, name: str = "density") -> float:
  """A density: a float in ``[0, 1]``."""
  return check_interval(density, name, 0.0, 1.0, closed="both")


def check_open_fraction(value, name: str) -> float:
  """A fraction strictly between 0 and 1: a float in ``(0, 1)``."""
  return check_interval(value, name, 0.0, 1.0, closed="neither")


def check_int(value, name: str, minimum: int) -> int:
  """An integer ``>= minimum`` (Python or NumPy; not ``bool``)."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    raise ValueError(f"`{name}` must be an integer >= {minimum}; got {value!r}.")
  return int(value)


def check_step_range(begin_step, end_step, *, end_required: bool, why: str = "") -> None:
  """``begin_step`` an integer ``>= 0`` and ``end_step`` an integer
  ``> begin_step``; ``end_step=None`` is allowed unless ``end_required``
  (``why`` says what needs it, e.g. ``" with drop_schedule='cosine'"``)."""
  check_int(begin_step, "begin_step", 0)
  if end_step is None:
    if end_required:
      raise ValueError(f"`end_step` is required{why} (an integer > begin_step={begin_step}).")
  elif check_int(end_step, "end_step", 0) <= begin_step:
    raise ValueError(f"`end_step` must be > begin_step={begin_step}; got {end_step!r}.")


def check_choice(value, name: str, choices) -> str:
  """One of ``choices``."""
  if not isinstance(value, str) or value not in choices:
    raise ValueError(f"`{name}` must be one of {tuple(choices)}; got {value!r}.")
  return value


def raw_key(key, name: str = "key") -> jax.Array:
  """An int seed or a PRNG key (typed or raw) as a raw ``uint32`` key."""
  if isinstance(key, numbers.Integral) and not isinstance(key, bool):
    return jax.random.PRNGKey(int(key))
  try:
    key = key if isinstance(key, jax.Array) else jnp.asarray(key)
  except (TypeError, ValueError):
    raise ValueError(f"`{name}` must be an int seed or a JAX PRNG key; got {key!r}.") from None
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(key)
  if key.dtype != jnp.uint32 or key.shape != (2,):
    raise ValueError(f"`{name}` must be an int seed or a JAX PRNG key; got {key!r}.")
  return key
