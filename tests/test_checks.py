"""The shared argument validators (``s2sam_jax._checks``) and that every entry
point taking a sparsity, a fraction or a density uses the same rule.

Expected outcomes are written from the rule itself (a real number, not bool or
a string, in the stated interval), not by calling the validators another way.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

from s2sam_jax import _checks, sparse

NOT_NUMBERS = ["0.5", b"0.5", None, True, False, np.bool_(True), 0.5j, [0.5], (0.5,), {"s": 0.5}]


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_check_sparsity_accepts_exactly_the_floats_in_0_1(x):
  if 0.0 <= x < 1.0:
    assert _checks.check_sparsity(x) == x
  else:
    with pytest.raises(ValueError, match=r"`sparsity` must be a float in \[0, 1\)"):
      _checks.check_sparsity(x)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_open_fraction_and_density_intervals(x):
  if 0.0 < x < 1.0:
    assert _checks.check_open_fraction(x, "drop_fraction") == x
  else:
    with pytest.raises(ValueError, match=r"`drop_fraction` must be a float in \(0, 1\)"):
      _checks.check_open_fraction(x, "drop_fraction")
  if 0.0 <= x <= 1.0:
    assert _checks.check_density(x) == x
  else:
    with pytest.raises(ValueError, match=r"`density` must be a float in \[0, 1\]"):
      _checks.check_density(x)


@given(st.text())
def test_strings_are_never_sparsities(text):
  with pytest.raises(ValueError, match="`sparsity`"):
    _checks.check_sparsity(text)


@pytest.mark.parametrize("value", NOT_NUMBERS)
def test_non_numbers_are_refused_everywhere(value):
  # One rule: the library's entry points agree on what a sparsity is.
  params = {"w": jnp.ones((4, 4))}
  users = [
    lambda: _checks.check_sparsity(value),
    lambda: sparse.layer_densities(params, value),
    lambda: sparse.magnitude_masks(params, sparsity=value, scope="global"),
    lambda: sparse.imp_schedule(value),
    lambda: sparse.gmp(optax.sgd(0.1), value, end_step=10),
    lambda: sparse.mest_profile_offsets("em", value),
  ]
  for use in users:
    with pytest.raises(ValueError, match="sparsity`"):
      use()
  with pytest.raises(ValueError, match="`prune_fraction`"):
    sparse.imp_schedule(0.5, prune_fraction=value)
  with pytest.raises(ValueError, match="`density`"):
    sparse.count_for_density(10, value)
  with pytest.raises(ValueError, match="`power`"):
    sparse.layer_densities(params, 0.5, power=value)


@pytest.mark.parametrize(
  "value", [0.25, 0, np.float32(0.25), np.float64(0.25), np.int64(0), jnp.float32(0.25)]
)
def test_real_scalars_of_any_kind_are_numbers(value):
  assert _checks.as_real(value) == float(value)
  assert _checks.check_sparsity(value) == float(value)


def test_as_real_refuses_arrays_and_traced_values():
  assert _checks.as_real(np.ones(2)) is None
  assert _checks.as_real(jnp.ones((1,))) is None
  assert _checks.as_real(jnp.array(True)) is None
  seen = []
  jax.jit(lambda x: seen.append(_checks.as_real(x)) or x)(1.0)
  assert seen == [None]


@pytest.mark.parametrize("value", [-1, 2.0, 2.5, True, "3", None, np.float64(3.0)])
def test_check_int_refuses_what_is_not_an_integer_at_least_the_minimum(value):
  with pytest.raises(ValueError, match=r"`update_every` must be an integer >= 0"):
    _checks.check_int(value, "update_every", 0)


def test_check_int_accepts_python_and_numpy_integers():
  assert _checks.check_int(3, "n", 1) == 3
  assert _checks.check_int(np.int32(3), "n", 1) == 3
  assert type(_checks.check_int(np.int64(3), "n", 1)) is int


def test_check_step_range():
  _checks.check_step_range(0, 10, end_required=True)
  _checks.check_step_range(5, None, end_required=False)
  with pytest.raises(
    ValueError, match=r"`end_step` is required with x \(an integer > begin_step=2"
  ):
    _checks.check_step_range(2, None, end_required=True, why=" with x")
  for begin, end, arg in [(5, 5, "end_step"), (5, 2.5, "end_step"), (-1, 4, "begin_step")]:
    with pytest.raises(ValueError, match=f"`{arg}`"):
      _checks.check_step_range(begin, end, end_required=True)


def test_check_choice():
  assert _checks.check_choice("erk", "distribution", ("er", "erk")) == "erk"
  for bad in ("gauss", None, ["erk"]):
    with pytest.raises(ValueError, match=r"`distribution` must be one of \('er', 'erk'\)"):
      _checks.check_choice(bad, "distribution", ("er", "erk"))


def test_raw_key_forms():
  np.testing.assert_array_equal(_checks.raw_key(3), jax.random.PRNGKey(3))
  typed = jax.random.key(3)
  np.testing.assert_array_equal(_checks.raw_key(typed), jax.random.key_data(typed))
  raw = jax.random.PRNGKey(5)
  assert _checks.raw_key(raw) is raw
  for bad in ("seed", 1.5, True, jnp.zeros(3, jnp.uint32)):
    with pytest.raises(ValueError, match="`key` must be an int seed or a JAX PRNG key"):
      _checks.raw_key(bad)


def test_messages_name_the_argument_and_the_interval():
  with pytest.raises(ValueError) as info:
    _checks.check_interval(math.nan, "rho_max", 0.0, 2.0, closed="both")
  assert str(info.value) == "`rho_max` must be a float in [0, 2]; got nan."
