"""Sparse training as Optax transformations: masks live in the optimizer state."""

from s2sam_jax.sparse.distributions import DISTRIBUTIONS
from s2sam_jax.sparse.distributions import count_for_density
from s2sam_jax.sparse.distributions import default_prunable
from s2sam_jax.sparse.distributions import layer_densities
from s2sam_jax.sparse.distributions import path_str
from s2sam_jax.sparse.distributions import random_masks
