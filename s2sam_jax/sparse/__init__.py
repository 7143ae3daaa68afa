"""Sparse training as Optax transformations: masks live in the optimizer state.

Every method takes its initial masks as one argument, ``masks``: a mask tree,
or a function ``params -> masks`` such as :func:`random_init`'s (random masks
from a sparsity and a layer-wise distribution) or a pruner at init
(:func:`magnitude_masks`, :func:`snip_masks`, :func:`grasp_masks`);
``sparsity=s`` is shorthand for ``masks=random_init(s)`` with the method's
customary distribution. :func:`create` builds a method by name.
"""

from s2sam_jax.sparse._factory import METHOD_NAMES, create
from s2sam_jax.sparse._wrapper import DynamicSparseState, SparseState, apply_masks, get_masks
from s2sam_jax.sparse.distributions import (
  DISTRIBUTIONS,
  RandomInit,
  count_for_density,
  default_prunable,
  layer_densities,
  path_str,
  random_init,
  random_masks,
)
from s2sam_jax.sparse.dsr import TARGET_FRACTION as DSR_TARGET_FRACTION
from s2sam_jax.sparse.dsr import DSRState, dsr
from s2sam_jax.sparse.gmp import gmp, gmp_sparsity
from s2sam_jax.sparse.lottery import dense_masks, imp_next_round, imp_schedule
from s2sam_jax.sparse.mest import PROFILE_MODELS as MEST_PROFILE_MODELS
from s2sam_jax.sparse.mest import PROFILES as MEST_PROFILES
from s2sam_jax.sparse.mest import MESTState, mest
from s2sam_jax.sparse.mest import profile_file as mest_profile_file
from s2sam_jax.sparse.mest import profile_offsets as mest_profile_offsets
from s2sam_jax.sparse.pruning_at_init import (
  grasp_masks,
  grasp_scores,
  magnitude_masks,
  snip_masks,
  snip_scores,
)
from s2sam_jax.sparse.rigl import drop_fraction_schedule, rigl
from s2sam_jax.sparse.set_ import set_
from s2sam_jax.sparse.static import static_masks
from s2sam_jax.sparse.summary import (
  FlopsEstimate,
  LayerOverlap,
  LayerSparsity,
  MaskOverlap,
  SparsitySummary,
  mask_overlap,
  nnz,
  sparsity_summary,
  training_flops,
)
