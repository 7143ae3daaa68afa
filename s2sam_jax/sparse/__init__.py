"""Sparse training as Optax transformations: masks live in the optimizer state."""

from s2sam_jax.sparse.distributions import DISTRIBUTIONS
from s2sam_jax.sparse.distributions import count_for_density
from s2sam_jax.sparse.distributions import default_prunable
from s2sam_jax.sparse.distributions import layer_densities
from s2sam_jax.sparse.distributions import path_str
from s2sam_jax.sparse.distributions import random_masks
from s2sam_jax.sparse.pruning_at_init import grasp_masks
from s2sam_jax.sparse.pruning_at_init import grasp_scores
from s2sam_jax.sparse.pruning_at_init import magnitude_masks
from s2sam_jax.sparse.pruning_at_init import snip_masks
from s2sam_jax.sparse.pruning_at_init import snip_scores
from s2sam_jax.sparse._wrapper import DynamicSparseState
from s2sam_jax.sparse._wrapper import SparseState
from s2sam_jax.sparse._wrapper import apply_masks
from s2sam_jax.sparse._wrapper import get_masks
from s2sam_jax.sparse.rigl import drop_fraction_schedule
from s2sam_jax.sparse.rigl import rigl
from s2sam_jax.sparse.set_ import set_
from s2sam_jax.sparse.static import static_masks
from s2sam_jax.sparse.static import static_random
from s2sam_jax.sparse.dsr import DSRState
from s2sam_jax.sparse.dsr import dsr
from s2sam_jax.sparse.gmp import gmp
from s2sam_jax.sparse.gmp import gmp_sparsity
from s2sam_jax.sparse.mest import MESTState
from s2sam_jax.sparse.mest import mest
