"""The model as pure functions, and the jitted train and evaluation steps.

What one training step does (a pure function, compiled once per command,
data-parallel over every visible device: the batch is sharded over the
``data`` axis of a :class:`jax.sharding.Mesh`, params and optimizer state are
replicated)::

    x  = normalize(augment(key_t, batch))                     # on device
    (L, new_bn), g = value_and_grad(loss)(params, bn, x, y)   # BN stats from this pass
    updates, opt   = tx.update(g, opt, params [, grad_fn])    # SAM: grad_fn(p) = ∇L(p) on x
    params         = apply_updates(params, updates)

Evaluation uses the clean weights, ``s2sam_jax.unperturbed(params, opt)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import s2sam_jax
from experiments import data as data_lib
from experiments import models as models_lib
from experiments.configs import TrainConfig


class Model(NamedTuple):
  """A zoo model as pure functions over dicts of arrays, and its init."""

  apply_train: Callable  # (params, stats, x) -> (logits, new_stats)
  apply_eval: Callable  # (params, stats, x) -> logits
  params: Any
  stats: Any
  forward_flops: dict[str, float]  # kernel path -> dense forward FLOPs per example


def make_model(cfg: TrainConfig, num_classes: int, input_shape, key) -> Model:
  """Creates ``cfg.model``; ``forward_flops`` counts 2 FLOPs per multiply-add."""
  dtype = jnp.bfloat16 if cfg.bf16 else None
  model = models_lib.create_model(
    cfg.model, num_classes=num_classes, rngs=nnx.Rngs(key), dtype=dtype
  )
  flops = {k: 2.0 * v for k, v in models_lib.layer_macs(model, (1,) + tuple(input_shape)).items()}
  model.train()
  g_train, p_state, s_state = nnx.split(model, nnx.Param, ...)
  model.eval()
  g_eval, _, _ = nnx.split(model, nnx.Param, ...)

  def merge(graphdef, params, stats):
    ps = jax.tree.map(lambda v: v, p_state)
    nnx.replace_by_pure_dict(ps, params)
    ss = jax.tree.map(lambda v: v, s_state)
    nnx.replace_by_pure_dict(ss, stats)
    return nnx.merge(graphdef, ps, ss)

  def apply_train(params, stats, x):
    model = merge(g_train, params, stats)
    logits = model(x)
    _, _, new_stats = nnx.split(model, nnx.Param, ...)
    return logits, nnx.to_pure_dict(new_stats)

  def apply_eval(params, stats, x):
    return merge(g_eval, params, stats)(x)

  return Model(apply_train, apply_eval, nnx.to_pure_dict(p_state), nnx.to_pure_dict(s_state), flops)


def cross_entropy(logits, labels, num_classes: int, smoothing: float):
  """Mean softmax cross-entropy in float32 (label smoothing if ``smoothing``)."""
  logits = logits.astype(jnp.float32)
  if smoothing:
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), smoothing)
    return optax.softmax_cross_entropy(logits, targets).mean()
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def input_fn(cfg: TrainConfig, info) -> Callable:
  """``(key, images, train) -> x``: augment (training only), normalise, cast.

  Shared by the training step and the SNIP/GraSP scoring batch, so masks are
  scored on inputs prepared exactly as training prepares them.
  """
  dtype = jnp.bfloat16 if cfg.bf16 else jnp.float32
  size = info.input_shape[0] if info.augmentation == "imagenet" else None

  def prepare(key, images, train: bool):
    x = data_lib.augment(key, images, info.augmentation, train=train, size=size)
    return data_lib.normalize(x, info).astype(dtype)

  return prepare


class Steps(NamedTuple):
  """The compiled steps of a command (compiled once, reused by every round)."""

  train: Callable  # (params, stats, opt_state, batch, key) -> (params, stats, opt_state, metrics)
  eval: Callable  # (params, stats, opt_state, batch, valid) -> {loss, correct} sums


def make_steps(cfg: TrainConfig, model: Model, info, tx, mesh: Mesh) -> Steps:
  """The jitted train and eval steps for ``tx`` (the optimizer state holds
  the masks, so LT/LRR rounds reuse them)."""
  num_classes = info.num_classes
  prepare = input_fn(cfg, info)
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

  def train_step(params, stats, opt_state, batch, key):
    x, y = prepare(key, batch["image"], True), batch["label"]

    def loss_fn(p):
      logits, new_stats = model.apply_train(p, stats, x)
      return cross_entropy(logits, y, num_classes, cfg.label_smoothing), (logits, new_stats)

    (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    extra = {}
    if cfg.optimizer_mode == "sam":
      extra["grad_fn"] = lambda p: jax.grad(lambda q: loss_fn(q)[0])(p)
    updates, opt_state = tx.update(grads, opt_state, params, **extra)
    params = optax.apply_updates(params, updates)
    correct = jnp.sum(jnp.argmax(logits, -1) == y)
    return params, new_stats, opt_state, {"loss": loss, "correct": correct}

  def eval_step(params, stats, opt_state, batch, valid):
    clean = s2sam_jax.unperturbed(params, opt_state)
    logits = model.apply_eval(clean, stats, prepare(None, batch["image"], False))
    logits = logits.astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    hits = jnp.argmax(logits, -1) == batch["label"]
    return {"loss": jnp.sum(jnp.where(valid, losses, 0.0)), "correct": jnp.sum(hits & valid)}

  train_jit = jax.jit(
    train_step,
    in_shardings=(replicated, replicated, replicated, sharded, replicated),
    out_shardings=(replicated, replicated, replicated, replicated),
    donate_argnums=(0, 1, 2),
  )
  eval_jit = jax.jit(
    eval_step,
    in_shardings=(replicated, replicated, replicated, sharded, sharded),
    out_shardings=replicated,
  )
  return Steps(train_jit, eval_jit)


def to_global(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  """This process's slice of a global batch, as one sharded global array."""
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
  }


def evaluate(
  eval_step, params, stats, opt_state, source, batch_size: int, sharding
) -> dict[str, float]:
  """Loss and accuracy over the whole ``source``, ``batch_size`` examples at a
  time (the last batch padded and the padding masked out)."""
  n = len(source)
  per_process = batch_size // jax.process_count()
  totals = []
  for start in range(0, n, batch_size):
    idx = np.arange(start, min(start + batch_size, n))
    valid = np.zeros(batch_size, bool)
    valid[: len(idx)] = True
    idx = np.concatenate([idx, np.full(batch_size - len(idx), idx[0])])
    lo = jax.process_index() * per_process
    local = source.get_batch(idx[lo : lo + per_process])
    local["valid"] = valid[lo : lo + per_process]
    batch = to_global(local, sharding)
    valid_arr = batch.pop("valid")
    totals.append(eval_step(params, stats, opt_state, batch, valid_arr))
  loss_sum = correct = 0.0
  for t in totals:
    loss_sum += float(t["loss"])
    correct += float(t["correct"])
  return {"loss": loss_sum / n, "accuracy": correct / n}


def scoring_loss(cfg: TrainConfig, model: Model, info, source) -> tuple[Callable, dict]:
  """``(loss_fn(params, batch, temperature=1), batch)`` for SNIP/GraSP.

  SNIP scores the first training batch of epoch 0 with eval-mode batch norm;
  GraSP a class-balanced sample (``--grasp-samples-per-class``) with batch
  statistics, as their reference codes do. Inputs are prepared as the
  training step prepares them, without augmentation.
  """
  grasp = cfg.method == "grasp"
  if grasp:
    idx = balanced_indices(source, cfg.grasp_samples_per_class, info.num_classes, cfg.seed)
  else:
    idx = data_lib.epoch_order(len(source), seed=cfg.seed, epoch=0)[: cfg.snip_batch]
  raw = source.get_batch(idx)
  images = input_fn(cfg.replace(bf16=False), info)(None, jnp.asarray(raw["image"]), False)
  batch = {"image": images, "label": jnp.asarray(raw["label"])}

  def loss_fn(p, b, temperature=1.0):
    if grasp:
      logits, _ = model.apply_train(p, model.stats, b["image"])
    else:
      logits = model.apply_eval(p, model.stats, b["image"])
    return cross_entropy(
      logits.astype(jnp.float32) / temperature, b["label"], info.num_classes, 0.0
    )

  return loss_fn, batch


def balanced_indices(source, per_class: int, num_classes: int, seed: int) -> np.ndarray:
  """``per_class`` examples of each class (GraSP's sample), the first ones in
  a seeded random order; labels are read in chunks until every class is full
  (or from ``source.labels`` when the source holds them)."""
  order = np.random.default_rng([seed, 10**6]).permutation(len(source))
  held = getattr(source, "labels", None)
  picked = {c: [] for c in range(num_classes)}
  for start in range(0, len(order), 1024):
    chunk = order[start : start + 1024]
    labels = held[chunk] if held is not None else source.get_batch(chunk)["label"]
    for i, c in zip(chunk, labels):
      if len(picked[int(c)]) < per_class:
        picked[int(c)].append(int(i))
    if all(len(v) >= per_class for v in picked.values()):
      break
  return np.sort(np.concatenate([np.asarray(v, np.int64) for v in picked.values()]))
