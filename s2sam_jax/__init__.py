"""s2sam-jax: single-step sharpness-aware minimization and sparse training for Optax."""

from s2sam_jax import sparse

__version__ = "0.1.0"
