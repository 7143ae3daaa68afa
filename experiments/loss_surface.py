"""Loss surfaces and sharpness of trained runs: ``python -m experiments.loss_surface``.

The paper's Figures 1 and 3 (S2-SAM flattens the loss surface of sparse networks), for runs
of ``python -m experiments.train`` or of a study. For each run, at its clean weights
``θ = s2sam_jax.unperturbed(params, opt_state)``:

* the loss surface ``L(θ + α d1 + β d2)`` on a ``--grid`` x ``--grid`` grid of
  ``α, β ∈ [-r, r]`` (``--radius``): ``d1, d2`` random Gaussian directions (drawn from
  ``--direction-seed``, the same for every run), **filter-normalised** (Li et al., 2018,
  "Visualizing the loss landscape of neural nets"): each filter of a kernel -- one output
  unit, ``d[..., j]`` in Flax's layouts -- rescaled to the norm of the same filter of ``θ``;
  biases and normalisation parameters get 0 (not perturbed). For a sparse run ``d`` is
  masked first, so every point of the surface is the sparse network (pruned weights exactly 0);
* its roughness ``Ra = mean |L - mean L|`` over the grid (the mean absolute deviation, as a
  surface's arithmetic-mean roughness) and the loss at the centre;
* the top Hessian eigenvalue ``λ_max`` of the same loss at ``θ``: power iteration on
  Hessian-vector products (forward-over-reverse, ``jax.jvp`` of ``jax.grad``), restricted to
  the active weights of a sparse run (``v`` and ``Hv`` projected with the masks; biases and
  kernels kept dense count as active), until the Rayleigh quotient changes by less than
  ``--tol`` (relative) or after ``--max-iters`` products. Power iteration finds the eigenvalue
  of largest magnitude: the top one wherever the curvature is dominated by its positive part,
  as at a trained minimum.

The loss is the mean cross-entropy of the model in eval mode (batch-norm running statistics,
no augmentation) on a fixed set of *training* examples: ``--examples`` of them, evenly spaced
(default: all of a set of at most 10,000, as MNIST-1D's 4,000; else 2,000). The whole grid is
one jitted ``lax.map`` over the points (``--points-per-batch`` of them vmapped at a time), each
a scan over batches of ``--batch-size`` examples; the power iteration is one jitted
``lax.while_loop``.

Example (the Figure 1/3 runs of the MNIST-1D study: dense and RigL ERK at 90% and 98%, each
original vs S2-SAM, every seed recorded)::

    python -m experiments.loss_surface --study table1_mnist1d \\
        --select method=dense --select 'method=rigl,distribution=erk,sparsity=0.9|0.98' \\
        --modes original s2sam
    python -m experiments.loss_surface --runs runs/a runs/b --name ab --grid 11

``--select K=V[,K=V...]`` keeps the study's ``runs.jsonl`` rows whose fields match every
``K=V`` (``V`` may list alternatives ``a|b``; numbers compare as numbers); several
``--select`` are alternatives. Runs are grouped by their config without seed and optimizer
mode (e.g. "mnist1d_cnn64 rigl erk 90%"), each group's modes compared seed by seed.

Outputs in ``--out-dir`` (default ``experiments/results/loss_surface/<name>/``):

* ``<run>/contour.png``, ``<run>/surface.png``: the run's 2-D contours and 3-D surface;
  ``<run>/surface.json``: the grid, its losses and accuracies and every number below;
* ``group_<group>_contour.png``, ``group_<group>_surface.png``: a group's modes side by side
  (columns; one row per seed), one colour scale and one z range for the whole figure;
* ``surfaces.json``: one row per run (run dir, method, sparsity, mode, seed, final test
  accuracy from its ``summary.json``, centre loss, Ra, λ_max, power iterations, the last
  relative change, grid, radius, examples, direction seed);
* ``table.md``: per group and mode the mean ± sample std over seeds of test accuracy, Ra and
  λ_max; the paired differences (each mode − original, seed by seed) with their count;
* ``command.txt``: the command that wrote them.

A run whose ``<run>/surface.json`` holds the same settings and checkpoint is not recomputed
(the figures and tables are redrawn). Bad input (no such run dir, no checkpoint, unknown
study, a selection that matches nothing) ends with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import s2sam_jax
from experiments import steps, train
from experiments import study as study_lib
from experiments.checkpoint import finished_steps
from experiments.configs import TrainConfig
from experiments.models import cpu_conv
from experiments.run_state import RUN_ONLY_FIELDS
from s2sam_jax import sparse

PROG = "python -m experiments.loss_surface"
DEFAULT_OUT = os.path.join(study_lib.RESULTS, "loss_surface")
# Training sets up to this size are used whole; larger ones are subsampled (--examples).
WHOLE_SET_LIMIT = 10_000
DEFAULT_EXAMPLES = 2_000
# Config fields that tell the compared arms of a group apart (the seed, the optimizer mode and
# what the modes set, as the authors' family does); with RUN_ONLY_FIELDS, not part of a group.
ARM_FIELDS = frozenset(
  {"seed", "optimizer_mode", "rho", "adaptive", "adaptive_formula", "eta", "perturb_pruned"}
  | {"mask_gradients", "weight_decay"}
)


# ---------------------------------------------------------------- the math


def _mask_leaves(masks, params) -> list:
  """The masks as a list aligned with ``jax.tree.leaves(params)`` (None: no mask)."""
  n = len(jax.tree.leaves(params))
  if masks is None:
    return [None] * n
  leaves = jax.tree.leaves(masks, is_leaf=lambda m: m is None)
  if len(leaves) != n:
    raise ValueError(f"masks have {len(leaves)} leaves, params {n}")
  return leaves


def is_kernel(leaf) -> bool:
  """Conv and dense kernels (rank >= 2, output unit last); biases and norms are rank 1."""
  return np.ndim(leaf) >= 2


def project(tree, masks):
  """``m ⊙ x`` on every masked leaf of ``tree``; leaves without a mask unchanged."""
  leaves, treedef = jax.tree.flatten(tree)
  return treedef.unflatten(
    [
      x if m is None else jnp.where(m, x, jnp.zeros_like(x))
      for x, m in zip(leaves, _mask_leaves(masks, tree))
    ]
  )


def filter_normalize(direction, params, masks=None):
  """Li et al.'s filter normalisation of ``direction`` at ``params``, inside the masks.

  For a kernel leaf ``w`` of shape ``(..., n_out)`` (dense ``(n_in, n_out)``, conv
  ``(kh, kw, c_in, c_out)``) with mask ``m`` (all ones when absent), filter ``j`` is the slice
  ``[..., j]``::

      d'[..., j] = (m ⊙ d)[..., j] · ‖w[..., j]‖ / ‖(m ⊙ d)[..., j]‖

  so ``‖d'[..., j]‖ = ‖w[..., j]‖`` (a filter whose masked direction is 0 stays 0), and
  ``d' = 0`` wherever ``m = 0``. Leaves of rank < 2 (biases, normalisation scales and
  offsets) become 0: they are not perturbed.

  Args:
    direction: a pytree of arrays shaped as ``params``.
    params: the weights ``θ``.
    masks: ``None``, or a tree of boolean masks (``None`` for unmasked leaves) as held by a
      sparse wrapper's state (``s2sam_jax.sparse.get_masks``).

  Returns:
    The normalised direction, shaped as ``params``.
  """

  def scale(d, w, m):
    if not is_kernel(w):
      return jnp.zeros_like(d)
    d = d if m is None else jnp.where(m, d, jnp.zeros_like(d))
    axes = tuple(range(d.ndim - 1))
    d_norm = jnp.sqrt(jnp.sum(jnp.square(d), axis=axes, keepdims=True))
    w_norm = jnp.sqrt(jnp.sum(jnp.square(w.astype(d.dtype)), axis=axes, keepdims=True))
    return d * jnp.where(d_norm > 0, w_norm / jnp.where(d_norm > 0, d_norm, 1.0), 0.0)

  leaves, treedef = jax.tree.flatten(direction)
  w_leaves = treedef.flatten_up_to(params)
  return treedef.unflatten(
    [scale(d, w, m) for d, w, m in zip(leaves, w_leaves, _mask_leaves(masks, params))]
  )


def random_directions(key, params, masks=None, count: int = 2) -> list:
  """``count`` filter-normalised, masked Gaussian directions at ``params`` (float32)."""
  leaves, treedef = jax.tree.flatten(params)
  directions = []
  for k in jax.random.split(key, count):
    keys = jax.random.split(k, len(leaves))
    d = [jax.random.normal(kk, np.shape(x)) for kk, x in zip(keys, leaves)]
    directions.append(filter_normalize(treedef.unflatten(d), params, masks))
  return directions


def mean_absolute_deviation(values) -> float:
  """``Ra = mean |z - mean z|`` over every entry of ``values``."""
  z = np.asarray(values, np.float64)
  return float(np.mean(np.abs(z - z.mean())))


class EvalSet(NamedTuple):
  """Prepared examples in ``B`` batches of ``b``: ``x (B, b, ...)``, labels ``y (B, b)``
  and ``valid (B, b)``, 1.0 for examples and 0.0 for the padding of the last batch."""

  x: Any
  y: Any
  valid: Any


def dataset_loss(apply_eval: Callable, stats) -> Callable:
  """``loss(params, data: EvalSet) -> (mean cross-entropy, accuracy)`` over the valid examples,
  one batch at a time (``lax.scan``); logits in float32."""

  def loss(params, data: EvalSet):
    def body(carry, batch):
      x, y, valid = batch
      logits = apply_eval(params, stats, x).astype(jnp.float32)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
      hits = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
      return (carry[0] + jnp.sum(ce * valid), carry[1] + jnp.sum(hits * valid)), None

    zero = jnp.zeros((), jnp.float32)
    (total, correct), _ = jax.lax.scan(body, (zero, zero), tuple(data))
    n = jnp.sum(data.valid)
    return total / n, correct / n

  return loss


def grid_losses(loss: Callable, params, d1, d2, coords, data, points_per_batch: int):
  """``loss(θ + α d1 + β d2, data)`` for each row ``(α, β)`` of ``coords`` (``(P, 2)``).

  One ``lax.map`` over the points, ``points_per_batch`` of them vmapped at a time (1: one
  after the other; vmapping over weights turns every convolution into a grouped one, several
  times slower on XLA:CPU). Pruned weights stay 0 at every point when ``θ``, ``d1`` and
  ``d2`` are 0 there. Returns the ``(P,)`` losses and accuracies.
  """

  def at(c):
    p = jax.tree.map(lambda w, a, b: w + (c[0] * a + c[1] * b).astype(w.dtype), params, d1, d2)
    return loss(p, data)

  batch = min(points_per_batch, coords.shape[0])
  return jax.lax.map(at, coords, batch_size=batch if batch > 1 else None)


class PowerIteration(NamedTuple):
  """The result of :func:`power_iteration`: the Rayleigh quotient ``vᵀHv`` of the last unit
  vector, that vector, the Hessian-vector products spent and the last relative change
  ``|λ_k - λ_{k-1}| / |λ_k|`` (``inf`` after a single product)."""

  eigenvalue: Any
  vector: Any
  iterations: Any
  relative_change: Any


def power_iteration(
  matvec: Callable, v0, masks=None, *, tol: float = 1e-3, max_iters: int = 100
) -> PowerIteration:
  """The dominant eigenvalue of the symmetric linear map ``matvec`` (a pytree -> pytree
  function), restricted to the masked subspace: power iteration on ``P H P`` with ``P`` the
  projection onto the active entries (:func:`project`)::

      v_0 = P v0 / ‖P v0‖;   w = P H v_k;   λ_k = v_kᵀ w;   v_{k+1} = w / ‖w‖

  stopping when ``|λ_k - λ_{k-1}| / |λ_k| < tol`` (at least two products) or after
  ``max_iters`` products. One ``lax.while_loop``: jit it with ``matvec``.
  """

  tiny = jnp.finfo(jnp.float32).tiny

  def unit(t):
    return optax.tree.scale(1.0 / jnp.maximum(optax.tree.norm(t), tiny), t)

  def cond(carry):
    i, _, _, rel = carry
    return (i < max_iters) & ~(rel < tol)

  def body(carry):
    i, v, lam, _ = carry
    w = project(matvec(v), masks)
    new = optax.tree.vdot(v, w)
    rel = jnp.where(i == 0, jnp.inf, jnp.abs(new - lam) / jnp.maximum(jnp.abs(new), tiny))
    return i + 1, unit(w), new, rel.astype(jnp.float32)

  v = unit(project(v0, masks))
  init = (jnp.zeros((), jnp.int32), v, jnp.zeros((), jnp.float32), jnp.full((), jnp.inf))
  i, v, lam, rel = jax.lax.while_loop(cond, body, init)
  return PowerIteration(lam, v, i, rel)


def hessian_vector_product(loss: Callable, params) -> Callable:
  """``v -> H v`` with ``H = ∇²loss(params)``: ``jax.jvp`` of ``jax.grad`` (forward over
  reverse, one forward and backward pass per product, no Hessian formed)."""
  grad = jax.grad(loss)
  return lambda v: jax.jvp(grad, (params,), (v,))[1]


def top_hessian_eigenvalue(
  loss: Callable, params, key, masks=None, *, tol: float = 1e-3, max_iters: int = 100
) -> PowerIteration:
  """:func:`power_iteration` on the Hessian of ``loss`` (a scalar function of ``params``) at
  ``params``, from a Gaussian vector drawn with ``key``."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  v0 = treedef.unflatten([jax.random.normal(k, np.shape(x), x.dtype) for k, x in zip(keys, leaves)])
  return power_iteration(
    hessian_vector_product(loss, params), v0, masks, tol=tol, max_iters=max_iters
  )


@contextlib.contextmanager
def xla_convolutions() -> Iterator[None]:
  """Traces with XLA's own convolution: the model zoo's CPU convolution has a custom VJP
  (and a C++ kernel gradient) without a JVP rule, which forward-over-reverse needs. The
  switch (:mod:`experiments.models.cpu_conv`'s environment variable) is read at trace time."""
  old = os.environ.get(cpu_conv.ENV_VAR)
  os.environ[cpu_conv.ENV_VAR] = "0"
  try:
    yield
  finally:
    if old is None:
      del os.environ[cpu_conv.ENV_VAR]
    else:
      os.environ[cpu_conv.ENV_VAR] = old


# ------------------------------------------------------------- the runs


class Run(NamedTuple):
  """A finished run of ``experiments.train``: its dir, config (``config.json``), summary."""

  run_dir: str
  config: dict[str, Any]
  summary: dict[str, Any]

  @property
  def mode(self) -> str:
    return self.config["optimizer_mode"]

  @property
  def seed(self) -> int:
    return int(self.config["seed"])

  @property
  def sparse(self) -> bool:
    return self.config["method"] != "dense"


def read_run(run_dir: str) -> Run:
  """The run in ``run_dir``; ``ValueError`` when it is not a finished, checkpointed run."""
  if not os.path.isdir(run_dir):
    raise ValueError(f"no such run dir: {run_dir}")
  paths = {n: os.path.join(run_dir, n) for n in ("config.json", "summary.json")}
  for name, path in paths.items():
    if not os.path.exists(path):
      raise ValueError(f"{run_dir} holds no {name} (not a finished run of experiments.train)")
  if not finished_steps(os.path.join(run_dir, "checkpoints")):
    raise ValueError(f"{run_dir} holds no checkpoint (checkpoints/ is missing or empty)")
  with open(paths["config.json"]) as f:
    config = json.load(f)
  with open(paths["summary.json"]) as f:
    summary = json.load(f)
  if not summary.get("finished"):
    raise ValueError(f"{run_dir} is not finished (its summary.json says finished: false)")
  return Run(os.path.normpath(run_dir), config, summary)


def parse_select(text: str) -> dict[str, list[str]]:
  """``'method=rigl,sparsity=0.9|0.98'`` -> ``{'method': ['rigl'], 'sparsity': ['0.9', '0.98']}``."""
  out = {}
  for part in filter(None, (p.strip() for p in text.split(","))):
    key, eq, value = part.partition("=")
    if not eq or not key.strip():
      raise ValueError(f"--select {text!r}: each part must be KEY=VALUE; got {part!r}")
    out[key.strip()] = [v.strip() for v in value.split("|")]
  return out


def _matches(value: Any, wanted: str) -> bool:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return str(value) == wanted
  try:
    return math.isclose(float(value), float(wanted), rel_tol=1e-9, abs_tol=1e-12)
  except ValueError:
    return False


def select_rows(rows: list[dict], selects: Sequence[dict[str, list[str]]]) -> list[dict]:
  """The rows matching any of ``selects`` (each: every key matches one of its values);
  every row when ``selects`` is empty. Unknown keys are refused."""
  known = set().union(*(r.keys() for r in rows)) if rows else set()
  for sel in selects:
    unknown = sorted(set(sel) - known)
    if unknown:
      raise ValueError(
        f"--select: no row has {', '.join(unknown)} (row keys: {', '.join(sorted(known))})"
      )
  if not selects:
    return list(rows)
  return [
    r
    for r in rows
    if any(all(any(_matches(r.get(k), v) for v in vs) for k, vs in sel.items()) for sel in selects)
  ]


def study_runs(
  name: str, selects: Sequence[dict[str, list[str]]], results_dir: str, work_dir: str
) -> list[str]:
  """The cell dirs ``<work_dir>/<name>/<cell>`` of the selected finished rows of study
  ``name`` (``<results_dir>/<name>/runs.jsonl``; the last row of a cell counts)."""
  path = os.path.join(results_dir, name, "runs.jsonl")
  if not os.path.exists(path):
    if name not in study_lib.STUDIES:
      raise ValueError(f"unknown study {name!r} (known: {', '.join(sorted(study_lib.STUDIES))})")
    raise ValueError(f"study {name} has no finished runs yet ({path} is missing)")
  rows = {r["cell"]: r for r in study_lib.read_rows(path) if r.get("finished", True)}
  picked = select_rows(list(rows.values()), selects)
  if not picked:
    raise ValueError(f"no finished run of study {name} matches the selection ({len(rows)} rows)")
  return [os.path.join(work_dir, name, r["cell"]) for r in picked]


def group_key(config: dict[str, Any]) -> tuple:
  """What defines a run's group: its config without seed, the optimizer mode and its
  parameters, and the fields that may differ between a run and its resumption."""
  skip = ARM_FIELDS | RUN_ONLY_FIELDS
  return tuple(sorted((k, json.dumps(v)) for k, v in config.items() if k not in skip))


def group_label(config: dict[str, Any]) -> str:
  """``'mnist1d mnist1d_cnn64 dense'``, ``'mnist1d mnist1d_cnn64 rigl erk 90%'``."""
  head = f"{config['dataset']} {config['model']} {config['method']}"
  if config["method"] == "dense":
    return head
  return f"{head} {config['distribution']} {config['sparsity']:.0%}"


def slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


def group_runs(runs: Sequence[Run]) -> list[tuple[str, list[Run]]]:
  """``[(label, runs)]`` in first-seen order; two runs of one group, mode and seed are
  refused. Groups whose labels coincide get their index appended."""
  groups: dict[tuple, list[Run]] = {}
  for run in runs:
    groups.setdefault(group_key(run.config), []).append(run)
  out, labels = [], {}
  for members in groups.values():
    seen = {}
    for run in members:
      other = seen.setdefault((run.mode, run.seed), run)
      if other is not run:
        raise ValueError(
          f"{other.run_dir} and {run.run_dir} are the same group, mode ({run.mode}) and seed "
          f"({run.seed}); select one of them"
        )
    label = group_label(members[0].config)
    labels[label] = labels.get(label, 0) + 1
    if labels[label] > 1:
      label = f"{label} ({labels[label]})"
    mode_order = {m: i for i, m in enumerate(("original", "sam", "s2sam"))}
    out.append((label, sorted(members, key=lambda r: (mode_order.get(r.mode, 9), r.seed))))
  return out


# -------------------------------------------------------------- measuring


class Settings(NamedTuple):
  """What a surface depends on besides the run."""

  grid: int
  radius: float
  examples: int | None  # None: the default for the run's training set
  direction_seed: int
  tol: float
  max_iters: int


def _train_config(run: Run, data_dir: str | None):

  fields = {f.name for f in dataclasses.fields(TrainConfig)}
  values = {k: tuple(v) if isinstance(v, list) else v for k, v in run.config.items() if k in fields}
  values.update(out_dir=run.run_dir, progress=False, resume=True, distributed=False, extra_eval=())
  if data_dir is not None:
    values["data_dir"] = data_dir
  return TrainConfig(**values)


def example_indices(n: int, examples: int | None) -> np.ndarray:
  """All ``n`` when ``examples`` is None and ``n <= WHOLE_SET_LIMIT``, else ``examples``
  (default :data:`DEFAULT_EXAMPLES`) evenly spaced indices."""
  if examples is None:
    examples = n if n <= WHOLE_SET_LIMIT else DEFAULT_EXAMPLES
  examples = min(int(examples), n)
  if examples < 1:
    raise ValueError(f"--examples must be >= 1; got {examples}")
  return np.arange(examples, dtype=np.int64) * n // examples


def eval_set(source, indices: np.ndarray, prepare: Callable, batch_size: int) -> EvalSet:
  """The examples ``indices`` of ``source``, prepared (eval mode), in batches of
  ``min(batch_size, len(indices))``, the last one padded."""
  b = min(batch_size, len(indices))
  count = -(-len(indices) // b)
  padded = np.concatenate([indices, np.full(count * b - len(indices), indices[0])])
  xs, ys = [], []
  for start in range(0, len(padded), b):
    batch = source.get_batch(padded[start : start + b])
    xs.append(prepare(None, jnp.asarray(batch["image"]), False))
    ys.append(np.asarray(batch["label"], np.int32))
  valid = (np.arange(count * b) < len(indices)).astype(np.float32).reshape(count, b)
  return EvalSet(jnp.stack(xs), jnp.asarray(np.stack(ys)), jnp.asarray(valid))


def measure(run: Run, settings: Settings, *, data_dir=None, batch_size=1000, points_per_batch=1):
  """The surface, Ra and λ_max of ``run``'s final clean weights (see the module docstring).

  Returns a dict: ``alphas``, ``betas`` (``(grid,)``), ``loss`` and ``accuracy``
  (``(grid, grid)``, ``[i, j]`` at ``θ + alphas[i] d1 + betas[j] d2``), ``centre_loss``,
  ``centre_accuracy``, ``ra``, ``lambda_max``, ``iterations``, ``relative_change``,
  ``examples`` and timings.
  """

  cfg = _train_config(run, data_dir)
  exp, state, _ = train.setup(cfg)
  params = s2sam_jax.unperturbed(state.params, state.opt_state)
  masks = sparse.get_masks(state.opt_state)
  info = exp.train_source.info
  indices = example_indices(len(exp.train_source), settings.examples)
  data = eval_set(exp.train_source, indices, steps.input_fn(cfg, info), batch_size)
  loss = dataset_loss(exp.model.apply_eval, state.stats)

  key = jax.random.key(settings.direction_seed)
  axis = np.linspace(-settings.radius, settings.radius, settings.grid)
  grid = np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
  coords = jnp.asarray(np.concatenate([np.zeros((1, 2)), grid]))  # the centre, then the grid

  @jax.jit
  def surface(params, masks, data, key):
    d1, d2 = random_directions(key, params, masks)
    return grid_losses(loss, params, d1, d2, coords, data, points_per_batch)

  @jax.jit
  def eigen(params, masks, data, key):
    objective = lambda p: loss(p, data)[0]
    return top_hessian_eigenvalue(
      objective, params, key, masks, tol=settings.tol, max_iters=settings.max_iters
    )

  t0 = time.time()
  losses, accs = jax.device_get(surface(params, masks, data, jax.random.fold_in(key, 0)))
  (centre_loss, losses), (centre_acc, accs) = (
    (v[0], np.asarray(v[1:], np.float64).reshape(settings.grid, settings.grid))
    for v in (losses, accs)
  )
  t1 = time.time()
  with xla_convolutions():
    top = eigen(params, masks, data, jax.random.fold_in(key, 1))
  t2 = time.time()
  return dict(
    alphas=axis.tolist(),
    betas=axis.tolist(),
    loss=losses.tolist(),
    accuracy=accs.tolist(),
    centre_loss=float(centre_loss),
    centre_accuracy=float(centre_acc),
    ra=mean_absolute_deviation(losses),
    lambda_max=float(top.eigenvalue),
    iterations=int(top.iterations),
    relative_change=float(top.relative_change),
    examples=len(indices),
    checkpoint_step=int(state.step),
    checkpoint_round=int(state.round),
    surface_seconds=t1 - t0,
    hessian_seconds=t2 - t1,
  )


# ------------------------------------------------------------- the pictures


def _pyplot():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def _levels(grids: Sequence[np.ndarray], count: int = 25) -> np.ndarray:
  """Log-spaced contour levels spanning every grid of ``grids`` (one scale per figure)."""
  lo = max(min(float(np.min(g)) for g in grids), 1e-6)
  hi = max(max(float(np.max(g)) for g in grids), lo * 1.001)
  return np.geomspace(lo, hi, count)


def _mesh(result) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  a, b = np.meshgrid(result["alphas"], result["betas"], indexing="ij")
  return a, b, np.asarray(result["loss"])


def _contour(ax, result, levels, title: str):
  """Filled log-scale contours of one surface, the centre marked."""
  from matplotlib.colors import LogNorm

  a, b, z = _mesh(result)
  z = np.clip(z, levels[0], levels[-1])
  cs = ax.contourf(a, b, z, levels=levels, norm=LogNorm(levels[0], levels[-1]), cmap="viridis")
  ax.contour(a, b, z, levels=levels[::4], colors="white", linewidths=0.5, alpha=0.7)
  ax.plot([0], [0], "r+", markersize=9)
  ax.set(title=title, xlabel="α (d1)", ylabel="β (d2)", aspect="equal")
  ax.title.set_fontsize("small")
  return cs


def _colorbar(fig, cs, axes, levels):
  from matplotlib.ticker import FixedLocator, FormatStrFormatter

  bar = fig.colorbar(cs, ax=axes, label="training loss", shrink=0.9)
  bar.ax.yaxis.set_major_locator(FixedLocator(levels[::4]))
  bar.ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
  bar.ax.yaxis.set_minor_locator(FixedLocator([]))


def _surface(ax, result, zlim, title: str):
  """The 3-D surface of one run, ``zlim`` its z range and colour scale."""
  a, b, z = _mesh(result)
  ax.plot_surface(a, b, z, cmap="viridis", vmin=zlim[0], vmax=zlim[1], linewidth=0)
  ax.set(zlim=zlim, title=title, xlabel="α", ylabel="β", zlabel="loss")
  ax.title.set_fontsize("small")


def _caption(row: dict[str, Any]) -> str:
  return (
    f"{row['mode']} seed {row['seed']}: acc {row['final_test_accuracy']:.3f}\n"
    f"Ra {row['ra']:.3g}, λmax {row['lambda_max']:.3g}"
  )


def plot_run(result: dict, row: dict, label: str, out_dir: str) -> list[str]:
  """``contour.png`` and ``surface.png`` of one run in ``out_dir``."""
  plt = _pyplot()
  title = f"{label}\n{_caption(row)}"
  paths = [os.path.join(out_dir, "contour.png"), os.path.join(out_dir, "surface.png")]
  z = np.asarray(result["loss"])
  levels = _levels([z])
  fig, ax = plt.subplots(figsize=(5.6, 5), layout="constrained")
  _colorbar(fig, _contour(ax, result, levels, title), ax, levels)
  fig.savefig(paths[0], dpi=120)
  plt.close(fig)
  fig = plt.figure(figsize=(6, 5.4), layout="constrained")
  _surface(fig.add_subplot(projection="3d"), result, (float(z.min()), float(z.max())), title)
  fig.savefig(paths[1], dpi=120)
  plt.close(fig)
  return paths


def plot_group(label: str, cells: list[tuple[dict, dict]], out_dir: str) -> list[str]:
  """A group's modes side by side (columns), one row per seed, one colour scale and one z
  range for the figure: ``group_<label>_contour.png`` and ``group_<label>_surface.png``."""
  plt = _pyplot()
  modes = list(dict.fromkeys(row["mode"] for _, row in cells))
  seeds = sorted({row["seed"] for _, row in cells})
  at = {(row["mode"], row["seed"]): (res, row) for res, row in cells}
  grids = [np.asarray(res["loss"]) for res, _ in cells]
  levels = _levels(grids)
  zlim = (min(float(g.min()) for g in grids), max(float(g.max()) for g in grids))
  size = (4.3 * len(modes) + 1.3, 4.1 * len(seeds) + 0.5)
  name = os.path.join(out_dir, f"group_{slug(label)}")
  paths = [name + "_contour.png", name + "_surface.png"]
  places = [(i, j, mode, seed) for i, seed in enumerate(seeds) for j, mode in enumerate(modes)]

  fig, axes = plt.subplots(
    len(seeds), len(modes), figsize=size, squeeze=False, layout="constrained"
  )
  for i, j, mode, seed in places:
    if (mode, seed) in at:
      res, row = at[(mode, seed)]
      cs = _contour(axes[i, j], res, levels, _caption(row))
    else:
      axes[i, j].set_axis_off()
      axes[i, j].set_title(f"{mode} seed {seed}: no run", fontsize="small")
  _colorbar(fig, cs, axes, levels)
  fig.suptitle(f"{label}: training loss, one colour scale")
  fig.savefig(paths[0], dpi=110)
  plt.close(fig)

  fig = plt.figure(figsize=size, layout="constrained")
  for i, j, mode, seed in places:
    if (mode, seed) in at:
      ax = fig.add_subplot(len(seeds), len(modes), i * len(modes) + j + 1, projection="3d")
      _surface(ax, *at[(mode, seed)][:1], zlim, _caption(at[(mode, seed)][1]))
  fig.suptitle(f"{label}: training loss, one z range")
  fig.savefig(paths[1], dpi=110)
  plt.close(fig)
  return paths


# ---------------------------------------------------------------- the table


def _mean_std(values: Sequence[float], fmt: str, scale: float = 1.0) -> str:
  v = np.asarray(values, np.float64) * scale
  if len(v) == 0:
    return "–"
  if len(v) == 1:
    return format(v[0], fmt)
  return f"{format(v.mean(), fmt)} ± {format(v.std(ddof=1), fmt.lstrip('+'))}"


def table(rows: list[dict], settings: dict[str, Any], groups: list[str]) -> str:
  """``table.md``: per group and mode mean ± sample std over seeds; the paired differences
  mode − original over the seeds both have."""
  lines = [
    "# Loss surfaces and sharpness",
    "",
    f"Grid {settings['grid']} x {settings['grid']} over [-{settings['radius']:g}, "
    f"{settings['radius']:g}]^2 along two filter-normalised random directions (seed "
    f"{settings['direction_seed']}; masked for sparse runs); loss: mean cross-entropy, eval "
    f"mode, on {settings['examples']} training examples. Ra = mean |L - mean L| over the "
    f"grid. λ_max: power iteration with Hessian-vector products on the same loss, active "
    f"weights only, to a relative change < {settings['tol']:g} or {settings['max_iters']} "
    "products. Accuracy: the run's final test accuracy (summary.json). Mean ± sample std "
    "over seeds.",
    "",
    "| group | mode | seeds | test acc (%) | centre loss | Ra | λ_max | converged |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for g in groups:
    members = [r for r in rows if r["group"] == g]
    for mode in dict.fromkeys(r["mode"] for r in members):
      rs = [r for r in members if r["mode"] == mode]
      seeds = ",".join(str(r["seed"]) for r in rs)
      conv = sum(r["relative_change"] < r["tol"] for r in rs)
      lines.append(
        f"| {g} | {mode} | {seeds} | "
        f"{_mean_std([r['final_test_accuracy'] for r in rs], '.2f', 100)} | "
        f"{_mean_std([r['centre_loss'] for r in rs], '.4f')} | "
        f"{_mean_std([r['ra'] for r in rs], '.4g')} | "
        f"{_mean_std([r['lambda_max'] for r in rs], '.4g')} | {conv}/{len(rs)} |"
      )
  diffs = []
  for g in groups:
    members = [r for r in rows if r["group"] == g]
    base = {r["seed"]: r for r in members if r["mode"] == "original"}
    for mode in dict.fromkeys(r["mode"] for r in members if r["mode"] != "original"):
      pairs = [(base[r["seed"]], r) for r in members if r["mode"] == mode and r["seed"] in base]
      if not pairs:
        continue
      d = lambda k: [b[k] - o[k] for o, b in pairs]
      diffs.append(
        f"| {g} | {mode} − original | {len(pairs)} | "
        f"{_mean_std(d('final_test_accuracy'), '+.2f', 100)} | "
        f"{_mean_std(d('ra'), '+.4g')} | {_mean_std(d('lambda_max'), '+.4g')} |"
      )
  if diffs:
    lines += [
      "",
      "Paired differences (same seed), mean ± sample std over the pairs:",
      "",
      "| group | difference | pairs | Δ test acc (pp) | ΔRa | Δλ_max |",
      "|---|---|---|---|---|---|",
      *diffs,
    ]
  return "\n".join(lines) + "\n"


# -------------------------------------------------------------------- CLI


def _row(run: Run, label: str, result: dict, settings: Settings, run_out: str) -> dict[str, Any]:
  c = run.config
  return dict(
    run_dir=run.run_dir,
    group=label,
    dataset=c["dataset"],
    model=c["model"],
    method=c["method"],
    distribution=c["distribution"] if run.sparse else None,
    sparsity=c["sparsity"] if run.sparse else 0.0,
    mode=run.mode,
    seed=run.seed,
    rho=c["rho"] if run.mode != "original" else None,
    final_test_accuracy=run.summary["final_test_accuracy"],
    centre_loss=result["centre_loss"],
    centre_train_accuracy=result["centre_accuracy"],
    ra=result["ra"],
    lambda_max=result["lambda_max"],
    iterations=result["iterations"],
    relative_change=result["relative_change"],
    tol=settings.tol,
    max_iters=settings.max_iters,
    grid=settings.grid,
    radius=settings.radius,
    examples=result["examples"],
    direction_seed=settings.direction_seed,
    surface=os.path.join(run_out, "surface.json"),
  )


def _cached(path: str, key: dict[str, Any]) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    saved = json.load(f)
  return saved["result"] if saved.get("key") == key else None


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--runs", nargs="+", metavar="RUN_DIR", help="work dirs of experiments.train")
  src.add_argument("--study", metavar="NAME", help="a study's finished runs (experiments.study)")
  p.add_argument(
    "--select",
    action="append",
    default=[],
    metavar="K=V[,K=V]",
    help="keep the study rows matching every K=V (V: a|b alternatives); repeat for alternatives",
  )
  p.add_argument(
    "--modes",
    nargs="+",
    metavar="MODE",
    help="keep only these optimizer modes (e.g. original s2sam); default: every mode",
  )
  p.add_argument("--results-dir", default=study_lib.RESULTS, help="where studies keep runs.jsonl")
  p.add_argument("--work-dir", default=os.path.join("runs", "studies"), help="studies' run dirs")
  p.add_argument("--data-dir", help="the runs' data dir, if not the one in their config.json")
  p.add_argument("--grid", type=int, default=21, help="points per axis (default 21)")
  p.add_argument("--radius", type=float, default=1.0, help="α, β in [-r, r] (default 1.0)")
  p.add_argument(
    "--examples",
    type=int,
    help=f"training examples of the loss (default: all for sets of <= {WHOLE_SET_LIMIT:,}, "
    f"else {DEFAULT_EXAMPLES:,} evenly spaced)",
  )
  p.add_argument("--batch-size", type=int, default=1000, help="examples per forward pass")
  p.add_argument(
    "--points-per-batch",
    type=int,
    default=1,
    help="grid points vmapped together (default 1: fastest on CPU, where it makes grouped convs)",
  )
  p.add_argument("--direction-seed", type=int, default=0, help="seed of d1, d2 and the power start")
  p.add_argument("--tol", type=float, default=1e-3, help="power iteration: relative change")
  p.add_argument("--max-iters", type=int, default=100, help="power iteration: most products")
  p.add_argument("--name", help="results name (default: the study, or 'runs')")
  p.add_argument("--out-dir", help=f"default {DEFAULT_OUT}/<name>")
  return p


def _error(message) -> int:
  print(f"{PROG}: error: {message}", file=sys.stderr)
  return 2


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = _parser().parse_args(argv)
  if args.grid < 2 or args.radius <= 0 or args.max_iters < 1 or args.tol <= 0:
    return _error("--grid must be >= 2, --radius, --tol > 0 and --max-iters >= 1")
  try:
    if args.study:
      selects = [parse_select(s) for s in args.select]
      dirs = study_runs(args.study, selects, args.results_dir, args.work_dir)
    elif args.select:
      return _error("--select needs --study")
    else:
      dirs = args.runs
    runs = [read_run(d) for d in dirs]
    if args.modes:
      runs = [r for r in runs if r.mode in args.modes]
      if not runs:
        return _error(f"no selected run has a mode in {args.modes}")
    groups = group_runs(runs)
  except ValueError as e:
    return _error(e)

  name = args.name or args.study or "runs"
  out_dir = args.out_dir or os.path.join(DEFAULT_OUT, name)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "command.txt"), "w") as f:
    f.write(f"{PROG} {shlex.join(argv)}\n")
  settings = Settings(
    args.grid, args.radius, args.examples, args.direction_seed, args.tol, args.max_iters
  )
  rows, group_cells = [], {}
  for label, members in groups:
    for run in members:
      run_out = os.path.join(out_dir, slug(f"{label} {run.mode} seed{run.seed}"))
      os.makedirs(run_out, exist_ok=True)
      path = os.path.join(run_out, "surface.json")
      key = dict(settings._asdict(), run_dir=os.path.abspath(run.run_dir))
      key["steps"] = run.summary.get("steps")
      result = _cached(path, key)
      if result is None:
        print(f"[{label}] {run.mode} seed {run.seed}: {run.run_dir}", file=sys.stderr, flush=True)
        try:
          result = measure(
            run,
            settings,
            data_dir=args.data_dir,
            batch_size=args.batch_size,
            points_per_batch=args.points_per_batch,
          )
        except (ValueError, FileNotFoundError) as e:  # data or checkpoint the run cannot load
          return _error(f"{run.run_dir}: {e}")
        with open(path, "w") as f:
          json.dump(dict(key=key, result=result), f)
      row = _row(run, label, result, settings, run_out)
      rows.append(row)
      group_cells.setdefault(label, []).append((result, row))
      plot_run(result, row, label, run_out)
      print(
        f"  Ra {row['ra']:.4g}  λmax {row['lambda_max']:.4g} ({row['iterations']} products, "
        f"last change {row['relative_change']:.2g})  centre loss {row['centre_loss']:.4g}",
        file=sys.stderr,
        flush=True,
      )
  for label, cells in group_cells.items():
    plot_group(label, cells, out_dir)
  with open(os.path.join(out_dir, "surfaces.json"), "w") as f:
    json.dump(rows, f, indent=1)
  examples = sorted({r["examples"] for r in rows})
  shown = dict(settings._asdict(), examples=", ".join(map(str, examples)))
  with open(os.path.join(out_dir, "table.md"), "w") as f:
    f.write(table(rows, shown, list(group_cells)))
  print(os.path.join(out_dir, "table.md"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
