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
from s2sam_jax.sparse.lottery import dense_masks
from s2sam_jax.sparse.lottery import imp_next_round
from s2sam_jax.sparse.lottery import imp_schedule
from s2sam_jax.sparse.summary import FlopsEstimate
from s2sam_jax.sparse.summary import LayerOverlap
from s2sam_jax.sparse.summary import LayerSparsity
from s2sam_jax.sparse.summary import MaskOverlap
from s2sam_jax.sparse.summary import SparsitySummary
from s2sam_jax.sparse.summary import mask_overlap
from s2sam_jax.sparse.summary import nnz
from s2sam_jax.sparse.summary import sparsity_summary
from s2sam_jax.sparse.summary import training_flops
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
from s2sam_jax.sparse.dsr import TARGET_FRACTION as DSR_TARGET_FRACTION
from s2sam_jax.sparse.dsr import dsr
from s2sam_jax.sparse.gmp import gmp
from s2sam_jax.sparse.gmp import gmp_sparsity
from s2sam_jax.sparse.mest import MESTState
from s2sam_jax.sparse.mest import PROFILES as MEST_PROFILES
from s2sam_jax.sparse.mest import PROFILE_MODELS as MEST_PROFILE_MODELS
from s2sam_jax.sparse.mest import mest
from s2sam_jax.sparse.mest import profile_file as mest_profile_file
from s2sam_jax.sparse.mest import profile_offsets as mest_profile_offsets
