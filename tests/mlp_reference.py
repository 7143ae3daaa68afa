"""A tanh MLP with softmax cross-entropy, written twice: in JAX, and in NumPy
with hand-derived backpropagation (float64). The NumPy side is the independent
reference the optimizer tests compare against."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

N_IN, N_HIDDEN, N_OUT, N_BATCH = 5, 7, 3, 16
# S2-SAM reference run: SGD + momentum + coupled weight decay.
LR, MOMENTUM, WD, RHO, STEPS = 0.3, 0.9, 5e-3, 0.2, 12


def make_problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {
    "w1": rng.normal(0, 0.7, (N_IN, N_HIDDEN)),
    "b1": rng.normal(0, 0.1, (N_HIDDEN,)),
    "w2": rng.normal(0, 0.7, (N_HIDDEN, N_OUT)),
    "b2": rng.normal(0, 0.1, (N_OUT,)),
  }
  x = rng.normal(size=(N_BATCH, N_IN))
  y = rng.integers(0, N_OUT, N_BATCH)
  return params, x, y


def jax_loss(params, x, y):
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  logits = h @ params["w2"] + params["b2"]
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def numpy_grad(params, x, y):
  """Gradient of the mean cross-entropy by hand-written backprop."""
  a1 = x @ params["w1"] + params["b1"]
  h = np.tanh(a1)
  logits = h @ params["w2"] + params["b2"]
  z = logits - logits.max(axis=1, keepdims=True)
  p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
  d_logits = p.copy()
  d_logits[np.arange(len(y)), y] -= 1.0
  d_logits /= len(y)
  d_h = d_logits @ params["w2"].T
  d_a1 = d_h * (1.0 - h**2)
  return {"w1": x.T @ d_a1, "b1": d_a1.sum(0), "w2": h.T @ d_logits, "b2": d_logits.sum(0)}


def to_jax(tree, dtype=jnp.float32):
  return {k: jnp.asarray(v, dtype) for k, v in tree.items()}


def global_norm(tree):
  return np.sqrt(sum(np.sum(np.square(v)) for v in tree.values()))


def numpy_perturbation(g, w, rho, adaptive=False, eta=0.01, eps=1e-12, masks=None):
  """ε = ρ g/‖g‖ or ASAM ε = ρ T²g/‖Tg‖, T = |w| + η (masked first)."""
  if masks is not None:
    g = {k: v * masks[k] if masks.get(k) is not None else v for k, v in g.items()}
  if adaptive:
    t = {k: np.abs(w[k]) + eta for k in g}
    tg = {k: t[k] * g[k] for k in g}
    n = global_norm(tg)
    return {k: rho * t[k] * tg[k] / (n + eps) for k in g}
  n = global_norm(g)
  return {k: rho * g[k] / (n + eps) for k in g}


def numpy_s2sam_trajectory(adaptive, eta=0.01, steps=STEPS):
  """Clean weights w_1..w_T of S2-SAM with SGD+momentum+wd, all in NumPy."""
  w, x, y = make_problem()
  buf = {k: np.zeros_like(v) for k, v in w.items()}
  eps = {k: np.zeros_like(v) for k, v in w.items()}  # ε_0 = 0
  trajectory = []
  for _ in range(steps):
    g = numpy_grad({k: w[k] + eps[k] for k in w}, x, y)
    for k in w:
      d = g[k] + WD * w[k]  # decay sees the clean weights
      buf[k] = MOMENTUM * buf[k] + d
      w[k] = w[k] - LR * buf[k]
    eps = numpy_perturbation(g, w, RHO, adaptive=adaptive, eta=eta)
    trajectory.append({k: v.copy() for k, v in w.items()})
  return trajectory, x, y


def sgd_momentum_wd():
  """PyTorch-style SGD: coupled weight decay, momentum without dampening."""
  return optax.chain(optax.add_decayed_weights(WD), optax.sgd(LR, momentum=MOMENTUM))


def numpy_authors_trajectory(steps=STEPS, masks=None, rho=RHO):
  """The S2-SAM authors' ``--sam-v2 --adaptive`` loop (jjsrf/SSAM-NEURIPS2024
  ``sam.py`` + ``main_prune_train.py``), re-derived in NumPy: PyTorch-1.x
  semantics, SGD with momentum and coupled weight decay, optional fixed masks
  applied to the weights after every step (gradients and perturbation
  unmasked). Returns the clean weights after each step."""
  w, x, y = make_problem()
  if masks is not None:  # --sp-prune-before-retrain: start sparse
    w = {k: v * masks[k] if masks.get(k) is not None else v for k, v in w.items()}
  buf = {k: np.zeros_like(v) for k, v in w.items()}
  prev_grad = prev_u = None
  trajectory = []
  for _ in range(steps):
    # first_step: nothing stored at step 0, so no perturbation.
    e = {k: np.zeros_like(v) for k, v in w.items()}
    if prev_grad is not None:
      norm = global_norm({k: np.abs(prev_u[k]) * prev_grad[k] for k in w})
      e = {k: rho * prev_grad[k] ** 3 / (norm + 1e-12) for k in w}
    u = {k: w[k] + e[k] for k in w}
    g = numpy_grad(u, x, y)
    # second_step: store the raw gradient and the perturbed weights, remove
    # the perturbation, take the SGD step with the unmasked gradient.
    prev_grad, prev_u = g, u
    for k in w:
      buf[k] = MOMENTUM * buf[k] + g[k] + WD * w[k]
      w[k] = w[k] - LR * buf[k]
      if masks is not None and masks.get(k) is not None:
        w[k] = w[k] * masks[k]  # prune_apply_masks
    trajectory.append({k: v.copy() for k, v in w.items()})
  return trajectory, x, y
