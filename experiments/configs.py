"""Training configuration: one dataclass, and named configs for the paper's tables.

A run is described by a :class:`TrainConfig`. ``python -m experiments.train``
builds it in three layers, later ones winning: the dataclass defaults (the
offline default job: MNIST-1D CNN, RigL at 90% sparsity, S2-SAM), a named
config (``--config NAME``), then every flag given explicitly.

Named configs
-------------
Names are ``<family>/<dataset>/<model>/<method>``, e.g.
``table1/cifar10/resnet32/rigl``. A name sets the recipe of a *cell family*
(model, data, schedule, method hyperparameters); ``--sparsity`` and
``--optimizer-mode {original, sam, s2sam}`` pick the cell inside it. A full
cell name may append both, ``table1/cifar10/resnet32/rigl/0.95/s2sam``.
:func:`list_configs` lists the names (``--list-configs``); ``--describe``
prints the resolved values of a run; the provenance of each value is in the
comments of this module.

Provenance follows ``reference/sparse-methods.md`` (§3, §13): ``[code]`` values
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

Choices common to every named config (documented, overridable by flags):
* S2-SAM uses ``rho=0.05`` [code] and ASAM-free (non-adaptive) perturbation:
  the authors' script passes ``--adaptive``, whose formula is a bug
  (reference §3.3), so ``adaptive`` is off; ``--adaptive`` gives ASAM's.
* Weight decay is the method's baseline value for every optimizer mode. The
  authors' S2-SAM script used 5e-4 where its SGD baseline used 1e-4 [code]
  (reference §3.4); pass ``--weight-decay 5e-4`` to reproduce that.
* Sparse layers: the authors' profiles keep the stem conv, 1x1 shortcuts and
  classifier dense (``keep_dense="paper"``, the model zoo's per-model regexes)
  for every method [UNCONFIRMED for methods other than MEST/static].
* Accuracy: the summary reports both the final and the best test accuracy
  (the authors' loop tracks the best; which one the paper reports is
  [UNCONFIRMED]).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

METHODS = ("dense", "static", "magnitude", "snip", "grasp", "set", "dsr",
           "rigl", "mest-em", "mest-ems", "gmp", "lt", "lrr")
OPTIMIZER_MODES = ("original", "sam", "s2sam")
SCHEDULES = ("cosine", "step", "constant")
DISTRIBUTION_CHOICES = ("uniform", "er", "erk")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Every knob of one training run (field names are the flags' names)."""
  # what to train
  model: str = "mnist1d_cnn"
  dataset: str = "mnist1d"
  data_dir: Optional[str] = None
  # sparse method
  method: str = "rigl"
  sparsity: float = 0.9
  distribution: str = "erk"
  keep_dense: str = "paper"       # "paper" (model zoo profile), "none", or a regex
  update_every: int = 100         # ΔT in steps (set, rigl, dsr, gmp)
  update_every_epochs: float = 0  # ΔT in epochs (mest); 0 -> update_every
  drop_fraction: float = 0.3      # set, rigl
  update_end: float = 0.75        # fraction of training after which the topology freezes
  mest_decay_epochs: Tuple[int, ...] = (100, 130)
  dsr_target: int = 20000         # DSR N_target (weights reallocated per rewire)
  dsr_threshold: float = 1e-3     # DSR initial H
  snip_batch: int = 128
  snip_scope: str = "global"      # SNIP ranking: "global" (SNIP) or "layer" (RigL's variant)
  grasp_samples_per_class: int = 10
  grasp_temperature: float = 200.0
  prune_fraction: float = 0.2     # lt, lrr: fraction of remaining weights pruned per round
  rewind_steps: int = 0           # lt: rewind point θ_k (0 = original LTH)
  perturb_pruned: bool = False    # authors' dense perturbation
  # optimizer
  optimizer_mode: str = "s2sam"
  rho: float = 0.05
  adaptive: bool = False
  eta: float = 0.01
  epochs: int = 3000              # the default job: 4000 MNIST-1D examples, ~93k steps
  batch_size: int = 128
  lr: float = 0.1
  schedule: str = "cosine"
  lr_end: float = 4e-8            # cosine: final lr [code, S2-SAM/MEST]
  lr_milestones: Tuple[float, ...] = (0.5, 0.75)  # step: epochs, or fractions of epochs if all < 1
  lr_gamma: float = 0.1
  warmup_epochs: float = 0.0
  weight_decay: float = 5e-4
  momentum: float = 0.9
  nesterov: bool = False
  label_smoothing: float = 0.0
  # run
  seed: int = 0
  out_dir: Optional[str] = None
  resume: bool = False
  bf16: bool = False
  max_steps: int = 0              # stop (and checkpoint) after this many steps; 0 = no limit
  eval_every: int = 0             # epochs between test evaluations; 0: about 20 per run
  eval_batch_size: int = 1000
  keep_checkpoints: int = 2
  checkpoint_every: int = 0       # epochs between checkpoints (also at the end and at
                                  # --max-steps); 0: about 50 per run
  train_subset: int = 0           # use n training examples, evenly spaced (tests); 0 = all
  test_subset: int = 0            # likewise for the test set
  extra_eval: Tuple[str, ...] = ()  # further test sets evaluated at the end (e.g. ImageNet-C)
  distributed: bool = False
  progress: bool = True
  config: Optional[str] = None    # the named config this run started from

  def replace(self, **changes) -> "TrainConfig":
    return dataclasses.replace(self, **changes)


def validate(cfg: TrainConfig) -> None:
  """Raises ``ValueError`` naming the bad field and what it allows."""
  def check(ok, field, allowed):
    if not ok:
      raise ValueError(f"--{field.replace('_', '-')} must be {allowed}; "
                       f"got {getattr(cfg, field)!r}.")
  check(cfg.method in METHODS, "method", f"one of {', '.join(METHODS)}")
  check(cfg.optimizer_mode in OPTIMIZER_MODES, "optimizer_mode",
        f"one of {', '.join(OPTIMIZER_MODES)}")
  check(cfg.schedule in SCHEDULES, "schedule", f"one of {', '.join(SCHEDULES)}")
  check(cfg.distribution in DISTRIBUTION_CHOICES, "distribution",
        f"one of {', '.join(DISTRIBUTION_CHOICES)}")
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


# --------------------------------------------------------------------------
# Recipes. Each value carries its provenance in the comment next to it.

# S2-SAM / MEST base recipe (reference §3.1, §13) [code].
_MEST_BASE = dict(epochs=160, batch_size=64, lr=0.1, schedule="cosine",
                  lr_end=4e-8, momentum=0.9, weight_decay=1e-4, rho=0.05)

# GraSP-paper protocol for CIFAR (reference §10.6) [code]; SNIP trained so
# [UNCONFIRMED]. wd: 1e-4 ResNet-32, 5e-4 VGG-19.
_GRASP_CIFAR = dict(epochs=160, batch_size=128, lr=0.1, schedule="step",
                    lr_milestones=(80, 120), lr_gamma=0.1, momentum=0.9)

_CIFAR_METHODS: Dict[str, Dict[str, Any]] = {
    # [code] MEST base; ΔT = 5 epochs, decays at epochs 100/130, bounds §3.5.
    "mest-em": dict(_MEST_BASE, update_every_epochs=5, mest_decay_epochs=(100, 130)),
    "mest-ems": dict(_MEST_BASE, update_every_epochs=5, mest_decay_epochs=(100, 130)),
    # [code] one-shot magnitude of the random init (S2-SAM `no_mutate`).
    "magnitude": dict(_MEST_BASE),
    # [UNCONFIRMED] MEST base recipe for static random masks.
    "static": dict(_MEST_BASE),
    # [UNCONFIRMED] the reference's suggestion: MEST base, ΔT 100 steps,
    # α = 0.3 cosine, end at 75% of training.
    "rigl": dict(_MEST_BASE, update_every=100, drop_fraction=0.3, update_end=0.75),
    "set": dict(_MEST_BASE, update_every=100, drop_fraction=0.3, update_end=0.75),
    # [UNCONFIRMED] MEST base with DSR's official CIFAR rewiring values
    # (period 100 steps, N_target 20k, H0 1e-3, stop at 95% of training).
    "dsr": dict(_MEST_BASE, update_every=100, dsr_target=20000,
                dsr_threshold=1e-3, update_end=0.95),
    # [code] GraSP protocol; SNIP one batch of 128 [UNCONFIRMED].
    "snip": dict(_GRASP_CIFAR, snip_batch=128),
    "grasp": dict(_GRASP_CIFAR, grasp_samples_per_class=10, grasp_temperature=200.0),
    # [code] OpenLTH CIFAR defaults: batch 128, 160 epochs, steps at 80/120,
    # wd 1e-4, 20% global per round; rewind step [UNCONFIRMED]: 500 steps.
    "lt": dict(_GRASP_CIFAR, weight_decay=1e-4, prune_fraction=0.2, rewind_steps=500),
    # [code] Renda et al. CIFAR ResNet: 182 epochs, batch 128, ×0.1 at 91
    # and 136, wd 2e-4 (5e-4 for VGG), full-schedule rewind [paper].
    "lrr": dict(epochs=182, batch_size=128, lr=0.1, schedule="step",
                lr_milestones=(91, 136), lr_gamma=0.1, momentum=0.9,
                weight_decay=2e-4, prune_fraction=0.2),
    # [UNCONFIRMED] gradual magnitude pruning on the MEST base recipe.
    "gmp": dict(_MEST_BASE, update_every=100, update_end=0.75),
    # [code] MEST base recipe, no masks.
    "dense": dict(_MEST_BASE),
}

_CIFAR_WD = {  # per model where the reference differs [code]
    ("snip", "vgg19"): 5e-4, ("grasp", "vgg19"): 5e-4, ("lrr", "vgg19"): 5e-4,
    ("snip", "resnet32"): 1e-4, ("grasp", "resnet32"): 1e-4,
}

# ImageNet ResNet-50 (reference §7.6, §8.3, §10.6, §11.6, §12.5).
_RIGL_IMAGENET = dict(  # [code + paper]
    epochs=100, batch_size=4096, lr=0.1 * 4096 / 256, schedule="step",
    lr_milestones=(30, 70, 90), lr_gamma=0.1, momentum=0.9, weight_decay=1e-4,
    label_smoothing=0.1, update_every=100, drop_fraction=0.3, update_end=0.75,
    distribution="erk")
_IMAGENET_METHODS: Dict[str, Dict[str, Any]] = {
    "rigl": dict(_RIGL_IMAGENET),
    "set": dict(_RIGL_IMAGENET),
    "snip": dict(_RIGL_IMAGENET, snip_scope="layer"),  # RigL pipeline, per layer [code]
    "static": dict(_RIGL_IMAGENET),          # [UNCONFIRMED]
    "magnitude": dict(_RIGL_IMAGENET),       # [UNCONFIRMED]
    # [UNCONFIRMED] MEST has no ImageNet code: RigL's recipe, MEST's uniform
    # profile, ΔT 5 epochs, decays at 60/80% of training as at 100/130 of 160.
    "mest-em": dict(_RIGL_IMAGENET, distribution="uniform",
                    update_every_epochs=5, mest_decay_epochs=(62, 81)),
    "mest-ems": dict(_RIGL_IMAGENET, distribution="uniform",
                     update_every_epochs=5, mest_decay_epochs=(62, 81)),
    "gmp": dict(_RIGL_IMAGENET),             # [UNCONFIRMED]
    "dense": dict(_RIGL_IMAGENET),           # [UNCONFIRMED]
    "dsr": dict(epochs=100, batch_size=256, lr=0.1, schedule="step",  # [code]
                lr_milestones=(30, 60, 90), lr_gamma=0.1, momentum=0.9,
                weight_decay=1e-4, update_every=1000, dsr_target=400000,
                dsr_threshold=1e-3, update_end=0.95),
    "grasp": dict(epochs=90, batch_size=256, lr=0.1, schedule="step",  # [code]
                  lr_milestones=(30, 60), lr_gamma=0.1, momentum=0.9,
                  weight_decay=1e-4, grasp_temperature=200.0,
                  # GraSP scores 150 batches of 250 images [code]; here a
                  # class-balanced sample of the same size (37 x 1000).
                  grasp_samples_per_class=37),
    "lt": dict(epochs=90, batch_size=1024, lr=0.4, schedule="step",  # [code] OpenLTH
               lr_milestones=(30, 60, 80), lr_gamma=0.1, warmup_epochs=5,
               momentum=0.9, weight_decay=1e-4, prune_fraction=0.2,
               rewind_steps=6255),  # rewind to ~5 epochs [UNCONFIRMED]
    "lrr": dict(epochs=90, batch_size=1024, lr=0.4, schedule="step",  # [code] Renda TPU
                lr_milestones=(30, 60, 80), lr_gamma=0.1, warmup_epochs=5,
                momentum=0.9, weight_decay=1e-4, prune_fraction=0.2),
}

# Dense families [UNCONFIRMED mapping and recipe].
_DENSE_CIFAR = dict(_MEST_BASE, method="dense", sparsity=0.0)
_DENSE_IMAGENET = dict(epochs=90, batch_size=256, lr=0.1, schedule="step",
                       lr_milestones=(30, 60, 80), lr_gamma=0.1, momentum=0.9,
                       weight_decay=1e-4, method="dense", sparsity=0.0)

_IMAGENET_C = tuple(
    f"imagenet2012_corrupted/{c}_{s}" for c in (
        "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur",
        "glass_blur", "motion_blur", "zoom_blur", "snow", "frost", "fog",
        "brightness", "contrast", "elastic_transform", "pixelate",
        "jpeg_compression") for s in range(1, 6))


def _build_registry() -> Dict[str, Dict[str, Any]]:
  reg: Dict[str, Dict[str, Any]] = {}
  for dataset in ("cifar10", "cifar100"):
    for model in ("resnet32", "vgg19"):
      for method, recipe in _CIFAR_METHODS.items():
        values = dict(recipe, model=model, dataset=dataset, method=method,
                      sparsity=0.0 if method == "dense" else 0.9)
        if (method, model) in _CIFAR_WD:
          values["weight_decay"] = _CIFAR_WD[(method, model)]
        reg[f"table1/{dataset}/{model}/{method}"] = values
  for method, recipe in _IMAGENET_METHODS.items():
    reg[f"table2/imagenet2012/resnet50/{method}"] = dict(
        recipe, model="resnet50", dataset="imagenet2012", method=method,
        sparsity=0.0 if method == "dense" else 0.9)
  for dataset in ("cifar10", "cifar100"):
    for model in ("resnet20_classic", "resnet56_classic", "resnet32", "vgg19",
                  "mobilenetv2"):
      reg[f"table4/{dataset}/{model}/dense"] = dict(
          _DENSE_CIFAR, model=model, dataset=dataset)
  for model in ("resnet18", "resnet34", "resnet50", "efficientnet_b0"):
    reg[f"table5/imagenet2012/{model}/dense"] = dict(
        _DENSE_IMAGENET, model=model, dataset="imagenet2012")
  for method in ("rigl", "set", "static", "snip", "mest-em", "mest-ems", "dense"):
    reg[f"table6/imagenet2012/resnet50/{method}"] = dict(
        _IMAGENET_METHODS[method], model="resnet50", dataset="imagenet2012",
        method=method, sparsity=0.0 if method == "dense" else 0.9,
        extra_eval=_IMAGENET_C)
  return reg


CONFIGS: Dict[str, Dict[str, Any]] = {
    name: dict(values, eval_every=1)  # the authors' loop evaluates every epoch
    for name, values in _build_registry().items()}


def every(value: int, epochs: int, count: int) -> int:
  """``value``, or for 0 the period giving about ``count`` events per run."""
  return value if value > 0 else max(1, epochs // count)


def list_configs():
  """Sorted names of every named config (cell families)."""
  return sorted(CONFIGS)


def get_config(name: str) -> Dict[str, Any]:
  """The field values of a named config.

  ``name`` is a family name from :func:`list_configs`, optionally followed by
  ``/<sparsity>/<optimizer mode>`` (e.g. ``.../rigl/0.95/s2sam``).
  """
  parts = name.strip("/").split("/")
  base, extra = "/".join(parts[:4]), parts[4:]
  if base not in CONFIGS or len(extra) > 2:
    close = [n for n in CONFIGS if n.startswith("/".join(parts[:2]))][:8]
    raise ValueError(
        f"--config must be a name from experiments.configs.list_configs() "
        f"(<family>/<dataset>/<model>/<method>[/<sparsity>/<mode>]); got "
        f"{name!r}. Some names: {close or list_configs()[:8]}")
  values = dict(CONFIGS[base], config=name)
  if extra:
    try:
      values["sparsity"] = float(extra[0])
    except ValueError:
      raise ValueError(f"--config: sparsity part {extra[0]!r} of {name!r} is "
                       "not a number.") from None
  if len(extra) == 2:
    values["optimizer_mode"] = extra[1]
  return values
