"""Moving from ``optax.contrib.sam`` to ``s2sam_jax.sam`` and ``s2sam_jax.s2sam``.

The same small MLP, trained four ways for the same number of SAM steps:

1. ``optax.contrib.sam(opt, adv_opt, opaque_mode=True)``: one ``update`` per step, which calls
   ``grad_fn(params, i)`` for the gradient at the ascent point;
2. ``optax.contrib.sam(opt, adv_opt)`` (its default, ``opaque_mode=False``): two ``update``
   calls per step, the first moves the params to the ascent point, the second does the real step;
3. ``s2sam_jax.sam(opt, rho)``: the same algorithm as 1 (the same weights, to float rounding);
4. ``s2sam_jax.s2sam(opt, rho)``: single-step SAM, which perturbs with the previous step's
   gradient, so it needs no second gradient.

The arguments map as follows (``rho`` the radius, ``opt`` any optax optimizer, ``grad`` the
loss gradient on the current batch):

    optax.contrib.sam(                              s2sam_jax.sam(
      opt,                                            opt,
      optax.chain(optax.contrib.normalize(),          rho=rho,
                  optax.sgd(rho)),                    eps=1e-12,  # added to ‖g‖: no 0/0
      sync_period=2,  # one ascent step               # always one ascent step
      opaque_mode=True,                             )
    )
    tx.update(g, state, params,                     tx.update(g, state, params,
              grad_fn=lambda p, i: grad(p))                   grad_fn=grad)

S2-SAM replaces either form with one ``update`` per step and no ``grad_fn``:
``tx = s2sam_jax.s2sam(opt, rho=rho)`` and ``tx.update(g, state, params)``, ``g`` the gradient at
the params the loop holds (the perturbed point ``w_t + ε_t``; ``s2sam_jax.unperturbed(params,
state)`` gives ``w_t``).

``batch_axis_name`` has no counterpart: under ``pmap``/``shard_map`` the ``grad_fn`` given to
``s2sam_jax.sam`` takes its own ``lax.pmean``. ``reset_state`` concerns the adversarial
optimizer, which ``s2sam_jax`` does not have. What ``s2sam_jax`` adds: ``adaptive=True``
(ASAM), ``rho`` schedules, and sparse inner optimizers (``ss.sam(ss.sparse.rigl(opt, ...))``)
whose masks confine the perturbation.

We count gradient evaluations (forward-backward passes) rather than time them: SAM takes two per
step, S2-SAM one.

Run: ``python examples/from_optax_contrib_sam.py``
"""

import jax
import jax.numpy as jnp
import optax

import s2sam_jax as ss


def make_problem(key, n=512, dim=16, hidden=64, classes=4):
  k1, k2, k3 = jax.random.split(key, 3)
  x = jax.random.normal(k1, (n, dim))
  y = jnp.argmax(x[:, :classes] + 0.5 * x[:, classes : 2 * classes], axis=1)
  params = {
    "w1": jax.random.normal(k2, (dim, hidden)) / jnp.sqrt(dim),
    "w2": jax.random.normal(k3, (hidden, classes)) / jnp.sqrt(hidden),
  }
  return params, x, y


def loss_fn(params, x, y):
  logits = jnp.tanh(x @ params["w1"]) @ params["w2"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


class CountingGrad:
  """``jax.grad(loss_fn)`` on one batch that counts how often it is evaluated."""

  def __init__(self, x, y):
    self.calls = 0
    self._grad = jax.jit(jax.grad(loss_fn))
    self.x, self.y = x, y

  def __call__(self, params):
    self.calls += 1
    return self._grad(params, self.x, self.y)


def max_difference(a, b):
  return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def run_updates(tx, params, grad, calls, **update_args):
  """``calls`` calls of ``tx.update`` on the gradient at the params held, each applied.

  Returns the final params and state; ``update_args`` go to every ``update`` (``grad_fn``).
  """
  state = tx.init(params)
  for _ in range(calls):
    updates, state = tx.update(grad(params), state, params, **update_args)
    params = optax.apply_updates(params, updates)
  return params, state


def optax_adversarial_optimizer(rho):
  """``optax.contrib.sam``'s ascent step of radius ``rho``: ``rho · g / ‖g‖``."""
  return optax.chain(optax.contrib.normalize(), optax.sgd(rho))


def train_optax_sam_opaque(params, grad, steps, lr, rho):
  adv_opt = optax_adversarial_optimizer(rho)
  tx = optax.contrib.sam(optax.sgd(lr), adv_opt, sync_period=2, opaque_mode=True)
  return run_updates(tx, params, grad, steps, grad_fn=lambda p, _: grad(p))[0]


def train_optax_sam_default(params, grad, steps, lr, rho):
  tx = optax.contrib.sam(optax.sgd(lr), optax_adversarial_optimizer(rho), sync_period=2)
  # Odd calls: ascent; even calls: the step, back from the ascent point.
  return run_updates(tx, params, grad, 2 * steps)[0]


def train_ss_sam(params, grad, steps, lr, rho):
  return run_updates(ss.sam(optax.sgd(lr), rho=rho), params, grad, steps, grad_fn=grad)[0]


def train_ss_s2sam(params, grad, steps, lr, rho):
  # The params the loop holds are the perturbed point w_t + ε_t: its gradient is the only one.
  params, state = run_updates(ss.s2sam(optax.sgd(lr), rho=rho), params, grad, steps)
  return ss.unperturbed(params, state)


def main(steps=300, lr=0.5, rho=0.05, seed=0):
  params, x, y = make_problem(jax.random.key(seed))
  initial_loss = float(loss_fn(params, x, y))
  print(f"initial loss {initial_loss:.4f}; {steps} steps each")
  results = {}
  for name, train in [
    ("optax.contrib.sam (opaque)", train_optax_sam_opaque),
    ("optax.contrib.sam (default)", train_optax_sam_default),
    ("s2sam_jax.sam", train_ss_sam),
    ("s2sam_jax.s2sam", train_ss_s2sam),
  ]:
    grad = CountingGrad(x, y)
    final = train(params, grad, steps, lr, rho)
    results[name] = {"params": final, "loss": float(loss_fn(final, x, y)), "grads": grad.calls}
    print(f"{name:28s} loss {results[name]['loss']:.5f}  gradient evaluations {grad.calls}")

  # The three SAM runs took the same steps: their weights agree to float rounding.
  reference = results["s2sam_jax.sam"]["params"]
  sam_gap = max(
    max_difference(results[name]["params"], reference)
    for name in ("optax.contrib.sam (opaque)", "optax.contrib.sam (default)")
  )
  print(f"s2sam_jax.sam vs optax.contrib.sam: largest weight difference {sam_gap:.1e}")
  saved = 1 - results["s2sam_jax.s2sam"]["grads"] / results["s2sam_jax.sam"]["grads"]
  print(f"S2-SAM saves {saved:.0%} of SAM's gradient evaluations")
  return {
    "initial_loss": initial_loss,
    "losses": {k: v["loss"] for k, v in results.items()},
    "grads": {k: v["grads"] for k, v in results.items()},
    "sam_gap": sam_gap,
  }


if __name__ == "__main__":
  main()
