"""Training configuration: one dataclass, and named configs for the paper's tables.

A run is described by a :class:`TrainConfig`. ``python -m experiments.train``
builds it in three layers, later ones winning: the dataclass defaults (the
offline default job: MNIST-1D CNN, RigL at 90% sparsity, S2-SAM), a named
config (``--config NAME``), then every flag given explicitly.

Named configs
-------------
Names are ``<family>/<dataset>/<model>/<method>``, e.g.
``table1/cifar10/resnet32/rigl-erk``. A name sets the recipe of a *cell family*
(model, data, schedule, method hyperparameters); ``--sparsity`` and
``--optimizer-mode {original, sam, s2sam}`` pick the cell inside it. A full
cell name may append both, ``table1/cifar10/resnet32/rigl-erk/0.95/s2sam``.
:func:`list_configs` lists the names (``--list-configs``); ``--describe``
prints the resolved values of a run; the provenance of each value is in the
comments of this module.

Provenance, in the comment beside each value: ``[code]`` values
were read in the method's reference code, ``[paper]`` in its paper, and
``[UNCONFIRMED]`` ones are choices of ours where neither the S2-SAM code nor
the method's code says what the S2-SAM paper used. The authors' repository
has code only for MEST (EM, EM&S), static magnitude masks, ResNet-32/VGG-19
and CIFAR; every other method's recipe in the paper is [UNCONFIRMED], and so
is which table holds which cells beyond Tables 1 and 2:

* ``table1``: CIFAR-10/100, ResNet-32 (GraSP variant) and VGG-19, sparsity
  90/95/98%, every sparse method, original vs S2-SAM.
* ``table2``: ImageNet, ResNet-50, sparsity 80/90%.
* ``table4`` [UNCONFIRMED mapping]: dense CIFAR models (ResNet-20/56 classic,
  ResNet-32, VGG-19, MobileNetV2) under original / SAM / S2-SAM.
* ``table5`` [UNCONFIRMED mapping]: dense ImageNet models (ResNet-18/34/50,
  EfficientNet-B0) under original / SAM / S2-SAM.
* ``table6`` [UNCONFIRMED mapping]: robustness on ImageNet-C: sparse
  ResNet-50 trained as in table2, evaluated on every
  ``imagenet2012_corrupted`` config (``extra_eval``).
* ``authors``: the S2-SAM authors' own protocol, full cells only
  (``authors/<dataset>/<model>/<method>/<sparsity>/<mode>``, mode
  ``original`` or ``s2sam``) for every profile of their repository
  (jjsrf/SSAM-NEURIPS2024: MEST EM ``without``, EM&S ``with``, magnitude
  ``no_mutate``; ResNet-32 and VGG-19; CIFAR-10/100) with every value of
  their scripts, seed included (see :func:`authors_cell`).

Choices common to every other named config (documented, overridable by flags):
* S2-SAM uses ``rho=0.05`` [code] and non-adaptive perturbation. The authors'
  script passes ``--adaptive --sam-v2``, whose formula is neither SAM nor
  ASAM (``s2sam_jax.s2sam(adaptive_formula="authors")``); it is used by the
  ``authors`` family only. ``--adaptive`` gives ASAM's.
* Perturbation and gradients are masked (``perturb_pruned=False``,
  ``mask_gradients=True``); the authors' SAM path perturbs every weight and
  feeds the unmasked gradient to momentum (``authors`` family).
* Weight decay is the method's baseline value for every optimizer mode. The
  authors' S2-SAM script used 5e-4 where its SGD baseline used 1e-4 [code];
  the ``authors`` family reproduces that.
* Sparse layers: layer-wise methods keep the stem conv, 1x1 shortcuts and
  classifier dense (``keep_dense="paper"``, the model zoo's per-model regexes,
  as the authors' profiles list only the block convs) [UNCONFIRMED for
  methods other than MEST/static/DSR]. The global methods (SNIP, GraSP, LT,
  LRR) rank every conv and linear kernel, as their reference codes do
  (``keep_dense="none"``); the summary's ``sparsity.counted_over`` says
  which weights a reported sparsity counts.
* MEST offsets: the authors' profile for the run's model and sparsity
  (``s2sam_jax.sparse.mest_profile_offsets``; VGG-19's own at 98%, ResNet-32's
  for every other model), resolved by :func:`resolve` and shown by
  ``--describe``; ``--mest-prune-offsets/--mest-grow-offsets`` override.
* Accuracy: the summary reports both the final and the best test accuracy
  (the authors' loop tracks the best; which one the paper reports is
  [UNCONFIRMED]).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from s2sam_jax import sparse

METHODS = (
  "dense",
  "static",
  "magnitude",
  "snip",
  "grasp",
  "set",
  "dsr",
  "rigl",
  "mest-em",
  "mest-ems",
  "gmp",
  "lt",
  "lrr",
)
OPTIMIZER_MODES = ("original", "sam", "s2sam")
SCHEDULES = ("cosine", "step", "constant")
DISTRIBUTION_CHOICES = ("uniform", "er", "erk")
ADAPTIVE_FORMULAS = ("asam", "authors")  # s2sam_jax's adaptive_formula

# DSR's N_target carried from its WRN-28-2 run as a fraction of the active
# weights [code] (s2sam_jax.sparse.dsr: 20,000 of 145,152 at 90%).
DSR_TARGET_FRACTION = sparse.DSR_TARGET_FRACTION


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Every knob of one training run (field names are the flags' names)."""

  # what to train
  model: str = "mnist1d_cnn"
  dataset: str = "mnist1d"
  data_dir: str | None = None
  # image folders of mixed sizes: resize and crop to N x N (0: keep their common size)
  image_size: int = 0
  # sparse method
  method: str = "rigl"
  sparsity: float = 0.9
  distribution: str = "erk"
  keep_dense: str = "paper"  # "paper" (model zoo profile), "none", or a regex
  update_every: int = 100  # ΔT in steps (set, rigl, dsr, gmp)
  update_every_epochs: float = 0  # ΔT in epochs (mest); 0 -> update_every
  drop_fraction: float = 0.3  # set, rigl
  update_end: float = 0.75  # fraction of training after which the topology freezes
  mest_decay_epochs: tuple[int, ...] = (100, 130)
  dsr_target: int = 0  # DSR N_target as a count; 0: --dsr-target-fraction
  dsr_target_fraction: float = DSR_TARGET_FRACTION  # N_target / initial active weights
  # fractions of the epochs where DSR's rewiring period doubles
  dsr_period_doublings: tuple[float, ...] = (0.125, 0.4, 0.7)
  dsr_threshold: float = 1e-3  # DSR initial H
  mest_prune_offsets: tuple[float, ...] = ()  # MEST δL per phase; () = profile
  mest_grow_offsets: tuple[float, ...] = ()  # MEST δU per phase; () = profile
  snip_batch: int = 128
  snip_scope: str = "global"  # SNIP ranking: "global" (SNIP) or "layer" (RigL's variant)
  grasp_samples_per_class: int = 10
  grasp_temperature: float = 200.0
  prune_fraction: float = 0.2  # lt, lrr: fraction of remaining weights pruned per round
  rewind_steps: int = 0  # lt: rewind point θ_k (0 = original LTH)
  perturb_pruned: bool = False  # authors' dense perturbation
  # False: unmasked gradients into the optimizer (the authors' SAM path)
  mask_gradients: bool = True
  # optimizer
  optimizer_mode: str = "s2sam"
  rho: float = 0.05
  adaptive: bool = False
  adaptive_formula: str = "asam"  # with --adaptive: "asam" or the authors' "authors"
  eta: float = 0.01
  epochs: int = 3000  # the default job: 4000 MNIST-1D examples, ~93k steps
  batch_size: int = 128
  lr: float = 0.1
  schedule: str = "cosine"
  lr_end: float = 4e-8  # cosine: final lr [code, S2-SAM/MEST]
  lr_milestones: tuple[float, ...] = (0.5, 0.75)  # step: epochs, or fractions of epochs if all < 1
  lr_gamma: float = 0.1
  warmup_epochs: float = 0.0
  weight_decay: float = 5e-4
  momentum: float = 0.9
  nesterov: bool = False
  label_smoothing: float = 0.0
  # run
  seed: int = 0
  out_dir: str | None = None
  resume: bool = False
  bf16: bool = False
  max_steps: int = 0  # stop (and checkpoint) after this many steps; 0 = no limit
  eval_every: int = 0  # epochs between test evaluations; 0: about 20 per run
  # examples per evaluation batch (memory: a CIFAR ResNet-32 at 1000 peaks at 5 GB, at 250 at 2.5)
  eval_batch_size: int = 250
  keep_checkpoints: int = 2
  # epochs between checkpoints (also at the end and at --max-steps); 0: about 50 per run
  checkpoint_every: int = 0
  train_subset: int = 0  # use n training examples, evenly spaced (tests); 0 = all
  # hold out this fraction of the training set and evaluate on it instead of
  # the test set (hyperparameter tuning); 0: evaluate on the test set
  validation_fraction: float = 0.0
  test_subset: int = 0  # likewise for the test set
  extra_eval: tuple[str, ...] = ()  # further test sets evaluated at the end (e.g. ImageNet-C)
  distributed: bool = False  # multi-process: jax.distributed.initialize()
  # host:port of process 0 (None: detected by JAX on TPU pods, SLURM, ...)
  coordinator_address: str | None = None
  num_processes: int = 0  # with --coordinator-address
  process_id: int = -1  # with --coordinator-address
  progress: bool = True
  config: str | None = None  # the named config this run started from

  def replace(self, **changes) -> "TrainConfig":
    return dataclasses.replace(self, **changes)


def _checker(cfg: TrainConfig):
  """``check(ok, field, allowed)``: raises ``ValueError`` naming ``--field``."""

  def check(ok, field, allowed):
    if not ok:
      raise ValueError(
        f"--{field.replace('_', '-')} must be {allowed}; got {getattr(cfg, field)!r}."
      )

  return check


def validate(cfg: TrainConfig) -> None:
  """Raises ``ValueError`` naming the bad field and what it allows."""
  check = _checker(cfg)
  for field in dataclasses.fields(cfg):  # no NaN or inf anywhere
    values = getattr(cfg, field.name)
    for v in values if isinstance(values, tuple) else (values,):
      if isinstance(v, float):
        check(math.isfinite(v), field.name, "a finite number")
  _check_training(cfg, check)
  _check_methods(cfg, check)


def _check_training(cfg: TrainConfig, check) -> None:
  """Model, data, optimizer, schedule and run fields."""
  check(cfg.method in METHODS, "method", f"one of {', '.join(METHODS)}")
  check(
    cfg.optimizer_mode in OPTIMIZER_MODES, "optimizer_mode", f"one of {', '.join(OPTIMIZER_MODES)}"
  )
  check(cfg.schedule in SCHEDULES, "schedule", f"one of {', '.join(SCHEDULES)}")
  check(
    cfg.distribution in DISTRIBUTION_CHOICES,
    "distribution",
    f"one of {', '.join(DISTRIBUTION_CHOICES)}",
  )
  check(0.0 <= cfg.sparsity < 1.0, "sparsity", "in [0, 1)")
  check(cfg.rho >= 0.0, "rho", ">= 0")
  check(cfg.epochs >= 1, "epochs", ">= 1")
  check(cfg.batch_size >= 1, "batch_size", ">= 1")
  check(cfg.lr > 0.0, "lr", "> 0")
  check(cfg.weight_decay >= 0.0, "weight_decay", ">= 0")
  check(0.0 <= cfg.momentum < 1.0, "momentum", "in [0, 1)")
  check(cfg.max_steps >= 0, "max_steps", ">= 0")
  check(cfg.eval_every >= 0, "eval_every", ">= 0")
  check(cfg.update_every >= 1, "update_every", ">= 1")
  check(0.0 < cfg.drop_fraction < 1.0, "drop_fraction", "in (0, 1)")
  check(0.0 < cfg.prune_fraction < 1.0, "prune_fraction", "in (0, 1)")
  check(cfg.keep_checkpoints >= 1, "keep_checkpoints", ">= 1")
  check(cfg.snip_scope in ("global", "layer"), "snip_scope", "'global' or 'layer'")
  check(cfg.checkpoint_every >= 0, "checkpoint_every", ">= 0")
  check(cfg.eta >= 0.0, "eta", ">= 0")
  check(cfg.lr_end >= 0.0, "lr_end", ">= 0")
  check(cfg.lr_gamma > 0.0, "lr_gamma", "> 0")
  check(
    all(m >= 0 for m in cfg.lr_milestones) and list(cfg.lr_milestones) == sorted(cfg.lr_milestones),
    "lr_milestones",
    "increasing epochs >= 0",
  )
  check(0.0 <= cfg.label_smoothing < 1.0, "label_smoothing", "in [0, 1)")
  check(
    0.0 <= cfg.warmup_epochs <= cfg.epochs, "warmup_epochs", f"in [0, --epochs] = [0, {cfg.epochs}]"
  )
  check(cfg.eval_batch_size >= 1, "eval_batch_size", ">= 1")
  check(cfg.train_subset >= 0, "train_subset", ">= 0 (0: all)")
  check(0.0 <= cfg.validation_fraction < 1.0, "validation_fraction", "in [0, 1) (0: none)")
  check(cfg.test_subset >= 0, "test_subset", ">= 0 (0: all)")


def _check_methods(cfg: TrainConfig, check) -> None:
  """The sparse methods' fields, and the run's process layout."""
  check(cfg.snip_batch >= 1, "snip_batch", ">= 1")
  check(cfg.grasp_samples_per_class >= 1, "grasp_samples_per_class", ">= 1")
  check(cfg.grasp_temperature > 0.0, "grasp_temperature", "> 0")
  check(cfg.dsr_threshold > 0.0, "dsr_threshold", "> 0")
  check(cfg.update_every_epochs >= 0.0, "update_every_epochs", ">= 0")
  check(0.0 < cfg.update_end <= 1.0, "update_end", "in (0, 1]")
  check(cfg.rewind_steps >= 0, "rewind_steps", ">= 0")
  check(cfg.image_size >= 0, "image_size", ">= 0 (0: the images' own size)")
  check(
    all(e >= 0 for e in cfg.mest_decay_epochs)
    and list(cfg.mest_decay_epochs) == sorted(set(cfg.mest_decay_epochs)),
    "mest_decay_epochs",
    "strictly increasing epochs >= 0",
  )
  if cfg.keep_dense not in ("paper", "none"):
    try:
      re.compile(cfg.keep_dense)
    except re.error as e:
      check(False, "keep_dense", f"'paper', 'none' or a valid regex ({e})")
  if cfg.coordinator_address:
    check(cfg.num_processes >= 1, "num_processes", ">= 1 with --coordinator-address")
    check(
      0 <= cfg.process_id < cfg.num_processes,
      "process_id",
      f"in [0, --num-processes) = [0, {cfg.num_processes})",
    )
  check(
    cfg.adaptive_formula in ADAPTIVE_FORMULAS,
    "adaptive_formula",
    f"one of {', '.join(ADAPTIVE_FORMULAS)}",
  )
  check(
    cfg.adaptive or cfg.adaptive_formula == "asam",
    "adaptive_formula",
    "'asam' unless --adaptive is given ('authors' needs --adaptive)",
  )
  check(cfg.dsr_target >= 0, "dsr_target", ">= 0 (0: --dsr-target-fraction)")
  check(0.0 < cfg.dsr_target_fraction < 1.0, "dsr_target_fraction", "in (0, 1)")
  doublings = cfg.dsr_period_doublings
  check(
    all(0.0 < f < 1.0 for f in doublings) and list(doublings) == sorted(set(doublings)),
    "dsr_period_doublings",
    "increasing fractions in (0, 1)",
  )
  phases = len(cfg.mest_decay_epochs) + 1
  for field in ("mest_prune_offsets", "mest_grow_offsets"):
    check(
      len(getattr(cfg, field)) in (0, phases),
      field,
      f"empty (the authors' profile) or {phases} values, one per phase "
      "(len(--mest-decay-epochs) + 1)",
    )


# --------------------------------------------------------------------------
# Recipes. Each value carries its provenance in the comment next to it.

# S2-SAM / MEST base recipe [code]: jjsrf/SSAM-NEURIPS2024
# scripts/run_mag_prune_irregular_sp_0.9.sh and main_prune_train.py's defaults.
_MEST_BASE = dict(
  epochs=160,
  batch_size=64,
  lr=0.1,
  schedule="cosine",
  lr_end=4e-8,
  momentum=0.9,
  weight_decay=1e-4,
  rho=0.05,
)

# GraSP-paper protocol for CIFAR [code] (alecwangcq/GraSP configs/cifar10/
# resnet32/GraSP_98.json, main_prune_non_imagenet.py); SNIP trained so
# [UNCONFIRMED]. wd: 1e-4 ResNet-32, 5e-4 VGG-19.
_GRASP_CIFAR = dict(
  epochs=160,
  batch_size=128,
  lr=0.1,
  schedule="step",
  lr_milestones=(80, 120),
  lr_gamma=0.1,
  momentum=0.9,
)

# [code] MEST base; ΔT = 5 epochs, decays at epochs 100/130; one uniform
# ratio per layer (the profiles); offsets from the profile (resolve()).
_MEST_CIFAR = dict(
  _MEST_BASE, update_every_epochs=5, mest_decay_epochs=(100, 130), distribution="uniform"
)
# [UNCONFIRMED] the reference's suggestion for SET and RigL: MEST base, ΔT 100
# steps, α = 0.3 cosine, end at 75% of training.
_DST_CIFAR = dict(_MEST_BASE, update_every=100, drop_fraction=0.3, update_end=0.75)

# Named-config keys are Table 1's rows; ``method`` is the training method.
_CIFAR_METHODS: dict[str, dict[str, Any]] = {
  "mest-em": _MEST_CIFAR,
  "mest-ems": _MEST_CIFAR,
  # [code] one-shot per-layer magnitude of the random init (S2-SAM
  # `no_mutate`), one uniform ratio per layer.
  "magnitude": dict(_MEST_BASE, distribution="uniform"),
  # [UNCONFIRMED] MEST base recipe for static random masks.
  "static": dict(_MEST_BASE),
  # Table 1 has both RigL rows: "RigL" (uniform, the RigL paper's default)
  # and "RigL (ERK)".
  "rigl-uniform": dict(_DST_CIFAR, method="rigl", distribution="uniform"),
  "rigl-erk": dict(_DST_CIFAR, method="rigl", distribution="erk"),
  "set": _DST_CIFAR,
  # [UNCONFIRMED] MEST base with DSR's official CIFAR rewiring [code]: every
  # layer at the same sparsity; period 100 steps doubling at 12.5/40/70% of
  # training (epochs 25/80/140 of 200); N_target as WRN-28-2's fraction of
  # active weights (DSR_TARGET_FRACTION); H0 1e-3; stop at 95% (190/200).
  "dsr": dict(
    _MEST_BASE,
    distribution="uniform",
    update_every=100,
    dsr_target=0,
    dsr_target_fraction=DSR_TARGET_FRACTION,
    dsr_period_doublings=(0.125, 0.4, 0.7),
    dsr_threshold=1e-3,
    update_end=0.95,
  ),
  # [code] GraSP protocol; SNIP one batch of 128 [UNCONFIRMED]. Both rank
  # every conv and linear kernel globally [code].
  "snip": dict(_GRASP_CIFAR, snip_batch=128, keep_dense="none"),
  "grasp": dict(
    _GRASP_CIFAR, grasp_samples_per_class=10, grasp_temperature=200.0, keep_dense="none"
  ),
  # [code] OpenLTH CIFAR defaults: batch 128, 160 epochs, steps at 80/120,
  # wd 1e-4, 20% global per round over every conv and linear kernel;
  # rewind step [UNCONFIRMED]: 500 steps.
  "lt": dict(
    _GRASP_CIFAR, weight_decay=1e-4, prune_fraction=0.2, rewind_steps=500, keep_dense="none"
  ),
  # [code] Renda et al. CIFAR ResNet: 182 epochs, batch 128, ×0.1 at 91
  # and 136, wd 2e-4 (5e-4 for VGG), full-schedule rewind [paper]; global.
  "lrr": dict(
    _GRASP_CIFAR,
    epochs=182,
    lr_milestones=(91, 136),
    weight_decay=2e-4,
    prune_fraction=0.2,
    keep_dense="none",
  ),
  # [UNCONFIRMED] gradual magnitude pruning on the MEST base recipe.
  "gmp": dict(_MEST_BASE, update_every=100, update_end=0.75),
  # [code] MEST base recipe, no masks.
  "dense": dict(_MEST_BASE),
}

_CIFAR_WD = {  # per model where the reference differs [code]
  ("snip", "vgg19"): 5e-4,
  ("grasp", "vgg19"): 5e-4,
  ("lrr", "vgg19"): 5e-4,
  ("snip", "resnet32"): 1e-4,
  ("grasp", "resnet32"): 1e-4,
}

# ImageNet ResNet-50: RigL's recipe (google-research/rigl
# rigl/imagenet_resnet/imagenet_train_eval.py), DSR's, GraSP's, OpenLTH's and Renda et al.'s, as named beside each.
_RIGL_IMAGENET = dict(  # [code + paper]
  epochs=100,
  batch_size=4096,
  lr=0.1 * 4096 / 256,
  schedule="step",
  lr_milestones=(30, 70, 90),
  lr_gamma=0.1,
  momentum=0.9,
  weight_decay=1e-4,
  label_smoothing=0.1,
  update_every=100,
  drop_fraction=0.3,
  update_end=0.75,
  distribution="erk",
)
# [UNCONFIRMED] MEST has no ImageNet code: RigL's recipe, MEST's uniform
# profile, ΔT 5 epochs, decays at 60/80% of training as at 100/130 of 160.
_MEST_IMAGENET = dict(
  _RIGL_IMAGENET, distribution="uniform", update_every_epochs=5, mest_decay_epochs=(62, 81)
)
# SGD momentum 0.9, wd 1e-4, steps of x0.1 on the epochs given: the ImageNet
# codes of DSR, GraSP, OpenLTH and Renda et al. and the dense family [code].
_STEP_IMAGENET = dict(
  schedule="step", lr_gamma=0.1, momentum=0.9, weight_decay=1e-4, epochs=90, batch_size=256, lr=0.1
)
# OpenLTH's ResNet-50 recipe (lt) and Renda et al.'s TPU one (lrr) [code]:
# batch 1024, lr 0.4, steps at 30/60/80 after 5 warmup epochs, 20% global per round.
_LTH_IMAGENET = dict(
  _STEP_IMAGENET,
  batch_size=1024,
  lr=0.4,
  lr_milestones=(30, 60, 80),
  warmup_epochs=5,
  prune_fraction=0.2,
  keep_dense="none",
)
_IMAGENET_METHODS: dict[str, dict[str, Any]] = {
  # RigL's two distributions [code]: uniform (first layer dense, as
  # keep_dense="paper") and ERK.
  "rigl-uniform": dict(_RIGL_IMAGENET, method="rigl", distribution="uniform"),
  "rigl-erk": dict(_RIGL_IMAGENET, method="rigl"),
  "set": dict(_RIGL_IMAGENET),
  # RigL pipeline, per layer [code]; RigL's ERK masks every kernel.
  "snip": dict(_RIGL_IMAGENET, snip_scope="layer", keep_dense="none"),
  "static": dict(_RIGL_IMAGENET),  # [UNCONFIRMED]
  "magnitude": dict(_RIGL_IMAGENET),  # [UNCONFIRMED]
  "mest-em": _MEST_IMAGENET,
  "mest-ems": _MEST_IMAGENET,
  "gmp": dict(_RIGL_IMAGENET),  # [UNCONFIRMED]
  "dense": dict(_RIGL_IMAGENET),  # [UNCONFIRMED]
  # [code] DSR's ResNet-50 run: period 1000 doubling at epochs 25/50/75 of
  # 100, N_target 400,000 (the code's count for this network).
  "dsr": dict(
    _STEP_IMAGENET,
    epochs=100,
    lr_milestones=(30, 60, 90),
    distribution="uniform",
    update_every=1000,
    dsr_target=400000,
    dsr_period_doublings=(0.25, 0.5, 0.75),
    dsr_threshold=1e-3,
    update_end=0.95,
  ),
  "grasp": dict(
    _STEP_IMAGENET,
    lr_milestones=(30, 60),
    grasp_temperature=200.0,
    keep_dense="none",
    # GraSP scores 150 batches of 250 images [code]; here a
    # class-balanced sample of the same size (37 x 1000).
    grasp_samples_per_class=37,
  ),
  "lt": dict(_LTH_IMAGENET, rewind_steps=6255),  # rewind to ~5 epochs [UNCONFIRMED]
  "lrr": _LTH_IMAGENET,
}

# Dense families [UNCONFIRMED mapping and recipe].
_DENSE_CIFAR = dict(_MEST_BASE, method="dense", sparsity=0.0)
_DENSE_IMAGENET = dict(_STEP_IMAGENET, lr_milestones=(30, 60, 80), method="dense", sparsity=0.0)

_IMAGENET_C = tuple(
  f"imagenet2012_corrupted/{c}_{s}"
  for c in (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
  )
  for s in range(1, 6)
)


# MNIST-1D (this project's studies; no reference code trains it) [ours]: one
# recipe for every method (SGD momentum, cosine, the CIFAR families' method
# knobs with their epoch-based ones scaled to the run's length), on the
# 64-channel CNN, where 98% sparsity still leaves a network that learns.
MNIST1D_EPOCHS = 300
_MNIST1D_BASE = dict(  # the MEST base recipe at batch 128, weight decay 5e-4
  _MEST_BASE,
  model="mnist1d_cnn64",
  dataset="mnist1d",
  epochs=MNIST1D_EPOCHS,
  batch_size=128,
  weight_decay=5e-4,
  eval_every=10,
)
_SCALE = MNIST1D_EPOCHS / 160  # MEST's epochs 5, 100, 130 of 160
_MEST_MNIST1D = dict(
  update_every_epochs=5 * _SCALE,
  mest_decay_epochs=(round(100 * _SCALE), round(130 * _SCALE)),
  distribution="uniform",
)
_MNIST1D_METHODS: dict[str, dict[str, Any]] = {
  key: dict(recipe, **{k: v for k, v in _MNIST1D_BASE.items()})
  for key, recipe in {
    "mest-em": _MEST_MNIST1D,
    "mest-ems": _MEST_MNIST1D,
    "magnitude": dict(distribution="uniform"),
    "static": dict(),
    "rigl-uniform": dict(method="rigl", distribution="uniform", update_every=100),
    "rigl-erk": dict(method="rigl", distribution="erk", update_every=100),
    "set": dict(update_every=100),
    "dsr": dict(
      distribution="uniform", update_every=100, dsr_period_doublings=(0.125, 0.4, 0.7),
      update_end=0.95,
    ),
    "snip": dict(snip_batch=128, keep_dense="none"),
    "grasp": dict(grasp_samples_per_class=10, grasp_temperature=200.0, keep_dense="none"),
    "lt": dict(prune_fraction=0.2, rewind_steps=0, keep_dense="none"),
    "lrr": dict(prune_fraction=0.2, keep_dense="none"),
    "gmp": dict(update_every=100),
    "dense": dict(),
  }.items()
}  # fmt: skip


def _cell(recipe: dict[str, Any], key: str, **values) -> dict[str, Any]:
  """A recipe as config values: ``method`` is the key unless the recipe
  names it (``rigl-uniform`` / ``rigl-erk`` train ``rigl``)."""
  method = recipe.get("method", key)
  return dict(recipe, method=method, sparsity=0.0 if method == "dense" else 0.9, **values)


# The authors' scripts (jjsrf/SSAM-NEURIPS2024 scripts/run_mag_prune_irregular_
# sp_0.9.sh and ..._sam.sh) [code]: MEST base recipe, mask update every 5
# epochs from epoch 0, decays at 100/130, one uniform ratio over the profile's
# layers (the block convs: keep_dense="paper"), test set every epoch.
_AUTHORS_BASE = dict(_MEST_CIFAR, keep_dense="paper")
_AUTHORS_MODES = {
  # --optmzr sgd: SGD momentum 0.9, weight decay 1e-4 hard-coded, seed 914;
  # gradients masked before the step.
  "original": dict(optimizer_mode="original", weight_decay=1e-4, seed=914),
  # --optmzr sgd-sam --adaptive --sam-v2 --sam-rho 0.05: weight decay
  # --weight-decay's default 5e-4, seed 444; ε over every weight (pruned
  # ones too), unmasked gradients into the momentum.
  "s2sam": dict(
    optimizer_mode="s2sam",
    rho=0.05,
    adaptive=True,
    adaptive_formula="authors",
    perturb_pruned=True,
    mask_gradients=False,
    weight_decay=5e-4,
    seed=444,
  ),
}
_AUTHORS_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)


def authors_cells():
  """``(model, method, sparsity)`` of every profile the authors ship, plus
  the ResNet-32 90% MEST cells their scripts run (whose yaml files are
  missing from the repository; their bounds follow the others')."""
  cells = []
  for model in sparse.MEST_PROFILE_MODELS:
    for level in _AUTHORS_LEVELS:
      cells.append((model, "magnitude", level))  # *_no_mutate.yaml
      for variant in ("em", "ems"):
        scripted = model == "resnet32" and level == 0.9
        if scripted or sparse.mest_profile_file(model, variant, level):
          cells.append((model, f"mest-{variant}", level))
  return cells


def _build_registry() -> dict[str, dict[str, Any]]:
  reg: dict[str, dict[str, Any]] = {}
  for dataset in ("cifar10", "cifar100"):
    for model in ("resnet32", "vgg19"):
      for key, recipe in _CIFAR_METHODS.items():
        values = _cell(recipe, key, model=model, dataset=dataset)
        if (key, model) in _CIFAR_WD:
          values["weight_decay"] = _CIFAR_WD[(key, model)]
        reg[f"table1/{dataset}/{model}/{key}"] = values
  for key, recipe in _MNIST1D_METHODS.items():
    reg[f"table1/mnist1d/mnist1d_cnn64/{key}"] = _cell(recipe, key)
  for key, recipe in _IMAGENET_METHODS.items():
    reg[f"table2/imagenet2012/resnet50/{key}"] = _cell(
      recipe, key, model="resnet50", dataset="imagenet2012"
    )
  for dataset in ("cifar10", "cifar100"):
    for model in ("resnet20_classic", "resnet56_classic", "resnet32", "vgg19", "mobilenetv2"):
      reg[f"table4/{dataset}/{model}/dense"] = dict(_DENSE_CIFAR, model=model, dataset=dataset)
  for model in ("resnet18", "resnet34", "resnet50", "efficientnet_b0"):
    reg[f"table5/imagenet2012/{model}/dense"] = dict(
      _DENSE_IMAGENET, model=model, dataset="imagenet2012"
    )
  for key in ("rigl-uniform", "rigl-erk", "set", "static", "snip", "mest-em", "mest-ems", "dense"):
    reg[f"table6/imagenet2012/resnet50/{key}"] = _cell(
      _IMAGENET_METHODS[key], key, model="resnet50", dataset="imagenet2012", extra_eval=_IMAGENET_C
    )
  for dataset in ("cifar10", "cifar100"):
    for model, method, level in authors_cells():
      for mode, values in _AUTHORS_MODES.items():
        reg[f"authors/{dataset}/{model}/{method}/{level:g}/{mode}"] = dict(
          _AUTHORS_BASE, model=model, dataset=dataset, method=method, sparsity=level, **values
        )
  return reg


CONFIGS: dict[str, dict[str, Any]] = {
  # the authors' loop evaluates every epoch; the MNIST-1D family every 10
  name: {"eval_every": 1, **values}
  for name, values in _build_registry().items()
}


def _mest_profile_model(model: str) -> str:
  return "vgg19" if model == "vgg19" else "resnet32"


def resolve(cfg: TrainConfig) -> TrainConfig:
  """Fills the values derived from others: for MEST, empty offsets become
  the authors' profile for the run's model and sparsity."""
  if not cfg.method.startswith("mest-") or (cfg.mest_prune_offsets and cfg.mest_grow_offsets):
    return cfg
  prune, grow = sparse.mest_profile_offsets(
    cfg.method[len("mest-") :], cfg.sparsity, model=_mest_profile_model(cfg.model)
  )
  return cfg.replace(
    mest_prune_offsets=cfg.mest_prune_offsets or prune,
    mest_grow_offsets=cfg.mest_grow_offsets or grow,
  )


def offsets_source(cfg: TrainConfig) -> str:
  """Where a MEST run's offsets come from (for ``--describe``)."""
  variant = cfg.method[len("mest-") :]
  model = _mest_profile_model(cfg.model)
  levels = sorted(l for (m, v, l) in sparse.MEST_PROFILES if m == model and v == variant)
  level = min(levels, key=lambda l: (abs(l - cfg.sparsity), -l))
  if (cfg.mest_prune_offsets, cfg.mest_grow_offsets) != sparse.mest_profile_offsets(
    variant, level, model=model
  ):
    return "set by flags"
  path = sparse.mest_profile_file(model, variant, level)
  return (
    f"jjsrf/SSAM-NEURIPS2024 {path}"
    if path
    else f"{model} {level:g} {variant}: no yaml in the repository; the bounds of the other profiles"
  )


def every(value: int, epochs: int, count: int) -> int:
  """``value``, or for 0 the period giving about ``count`` events per run."""
  return value if value > 0 else max(1, epochs // count)


def list_configs():
  """Sorted names of every named config (cell families)."""
  return sorted(CONFIGS)


def summarize_config(name: str) -> str:
  """One line: what the named config trains, and on which recipe."""
  v = {**dataclasses.asdict(TrainConfig()), **CONFIGS[name]}
  global_ranking = v["method"] in ("dense", "snip", "grasp", "lt", "lrr")
  method = v["method"] + ("" if global_ranking else f" ({v['distribution']})")
  if name.startswith("authors/"):
    method += f" at {v['sparsity']:.0%}, {v['optimizer_mode']}, seed {v['seed']}"
  lr = f"{v['schedule']} lr {v['lr']:g}"
  return (
    f"{method}: {v['model']} on {v['dataset']}, {v['epochs']} epochs, batch {v['batch_size']}, "
    f"{lr}, wd {v['weight_decay']:g}"
  )


def config_listing() -> str:
  """``--list-configs``: every name with its one-line summary."""
  lines = [
    "Named configs (--config NAME). A family name (table1/..., table2/..., table4-6/...) "
    "takes /<sparsity>/<mode> as a suffix, e.g. table1/cifar10/resnet32/rigl-erk/0.95/s2sam "
    "(or --sparsity and --optimizer-mode); authors/... names are complete cells.",
    "",
  ]
  width = max(len(n) for n in CONFIGS)
  lines += [f"{n:<{width}}  {summarize_config(n)}" for n in list_configs()]
  return "\n".join(lines)


def get_config(name: str) -> dict[str, Any]:
  """The field values of a named config.

  ``name`` is a name from :func:`list_configs`: a family name optionally
  followed by ``/<sparsity>/<optimizer mode>`` (e.g.
  ``table1/cifar10/resnet32/rigl-erk/0.95/s2sam``), or a full ``authors/``
  cell.
  """
  if name.strip("/") in CONFIGS:
    return dict(CONFIGS[name.strip("/")], config=name)
  parts = name.strip("/").split("/")
  base, extra = "/".join(parts[:4]), parts[4:]
  if base not in CONFIGS or len(extra) > 2:
    close = [n for n in CONFIGS if n.startswith("/".join(parts[:2]))][:8]
    raise ValueError(
      f"--config must be a name from experiments.configs.list_configs() "
      f"(<family>/<dataset>/<model>/<method>[/<sparsity>/<mode>]); got "
      f"{name!r}. Some names: {close or list_configs()[:8]}"
    )
  values = dict(CONFIGS[base], config=name)
  if extra:
    try:
      values["sparsity"] = float(extra[0])
    except ValueError:
      raise ValueError(
        f"--config: sparsity part {extra[0]!r} of {name!r} is not a number."
      ) from None
  if len(extra) == 2:
    values["optimizer_mode"] = extra[1]
  return values
