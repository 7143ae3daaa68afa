"""Sparse training as Optax transformations: masks live in the optimizer state."""
