"""Experiments for s2sam-jax: Flax model zoo, data pipelines and the training command."""
