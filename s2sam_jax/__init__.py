"""s2sam-jax: single-step sharpness-aware minimization and sparse training for Optax.

Public API:
  s2sam, S2SAMState      single-step SAM around any optax optimizer
  sam, SAMState          two-step SAM, the baseline
  unperturbed, perturbed the clean / perturbed weights from a (nested) state
  perturbation           the shared ε computation (plain or ASAM-adaptive)
  sparse                 sparse-training transformations and utilities
"""

from s2sam_jax import sparse
from s2sam_jax._perturbation import perturbation
from s2sam_jax.s2sam import S2SAMState, perturbed, s2sam, unperturbed
from s2sam_jax.sam import SAMState, sam

__version__ = "0.1.0"

__all__ = [
  "S2SAMState",
  "SAMState",
  "perturbation",
  "perturbed",
  "s2sam",
  "sam",
  "sparse",
  "unperturbed",
]
