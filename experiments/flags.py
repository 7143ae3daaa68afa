"""The training command's flags: one per :class:`TrainConfig` field.

Precedence: the dataclass defaults < ``--config NAME`` < flags given
explicitly (every flag's default is ``None``, so only given flags override).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from experiments import configs as configs_lib
from experiments.configs import TrainConfig
from experiments.run_state import saved_config

# What each flag does (--help); the default is appended.
HELP = {
  "method": "sparse-training method (dense: none)",
  "distribution": "how the sparsity is spread over the layers: uniform, er or erk",
  "optimizer_mode": "original (the base optimizer), sam (two passes) or s2sam (one pass)",
  "schedule": "learning-rate schedule",
  "sparsity": "fraction of the prunable weights that are zero (0 <= s < 1)",
  "drop_fraction": "SET/RigL: fraction of active weights dropped and regrown per update (cosine-decayed for RigL)",
  "mest_decay_epochs": "MEST: epochs where its offsets' phase changes",
  "dsr_threshold": "DSR: initial pruning threshold H",
  "snip_batch": "SNIP: examples in the scoring batch",
  "snip_scope": "SNIP: 'global' ranking (SNIP) or per 'layer' (RigL's variant)",
  "grasp_samples_per_class": "GraSP: scoring examples per class",
  "grasp_temperature": "GraSP: softmax temperature of the scoring loss",
  "prune_fraction": "lt/lrr: fraction of the remaining weights pruned per round",
  "rewind_steps": "lt: rewind point (steps of the dense round; 0: the init)",
  "rho": "SAM/S2-SAM perturbation radius",
  "adaptive": "scale the perturbation per weight (ASAM; see --adaptive-formula)",
  "eta": "ASAM's eta in |w| + eta",
  "epochs": "training epochs (per round for lt/lrr)",
  "batch_size": "global batch size (divisible by the number of devices)",
  "lr": "peak learning rate",
  "lr_end": "cosine schedule: final learning rate",
  "lr_gamma": "step schedule: factor at each milestone",
  "warmup_epochs": "linear warmup from lr/steps to lr over this many epochs",
  "weight_decay": "coupled L2 weight decay (added to the gradient, as torch.optim.SGD)",
  "momentum": "SGD momentum (0: plain SGD)",
  "nesterov": "Nesterov momentum",
  "label_smoothing": "label smoothing of the training loss",
  "seed": "seed of the init, data order and masks (shared by paired arms)",
  "out_dir": "work dir: metrics, checkpoints, summary (default runs/<model>-<data>-<method>-<mode>-seed<n>); the same command again resumes or reports the run there",
  "resume": "insist on resuming from --out-dir's checkpoints (an error if there are none); without it a run there resumes anyway",
  "eval_every": "epochs between test evaluations (0: about 20 per run)",
  "eval_batch_size": "examples per evaluation batch (the peak memory of evaluation grows with it)",
  "keep_checkpoints": "checkpoints kept (the newest ones)",
  "checkpoint_every": "epochs between checkpoints, also at the end and at --max-steps (0: about 50 per run)",
  "progress": "progress bar and per-evaluation lines (--no-progress: one JSON line per epoch)",
  "model": "model name (experiments.models.MODEL_NAMES)",
  "dataset": "mnist1d, cifar10, cifar100, imagenet2012, "
  "imagenet2012_corrupted/<cfg>, imagefolder:<root>",
  "data_dir": "tfds data dir, or an image-folder root (<dir>/{train,test}/<class>/*.jpg)",
  "keep_dense": "'paper' (the model's dense layers in the authors' "
  "profiles), 'none', or a regex of param paths kept dense",
  "config": "named config (python -m experiments.train --list-configs)",
  "max_steps": "stop and checkpoint after this many steps (of the current "
  "round for lt/lrr; 0: no limit)",
  "lr_milestones": "step schedule: epochs (or fractions of the epochs if "
  "all < 1) where the lr is multiplied by --lr-gamma",
  "update_every": "topology update period ΔT in steps",
  "update_every_epochs": "MEST: ΔT in epochs (0: use --update-every)",
  "update_end": "fraction of training after which the topology is frozen",
  "adaptive_formula": "with --adaptive: 'asam' (ASAM's |w|+eta scaling) or "
  "'authors' (the S2-SAM authors' rho g^3/||u g||)",
  "mask_gradients": "mask the gradient before the optimizer (--no-mask-"
  "gradients: the authors' SAM path)",
  "perturb_pruned": "perturb pruned weights too (the authors' code)",
  "mest_prune_offsets": "MEST prune offsets dL per phase (fractions of the "
  "layer); empty: the authors' profile",
  "mest_grow_offsets": "MEST grow offsets dU per phase; empty: the authors' profile",
  "dsr_target": "DSR weights reallocated per rewire (N_target) as a count; "
  "0: --dsr-target-fraction",
  "dsr_target_fraction": "DSR N_target as a fraction of the initial active "
  "weights (DSR's WRN-28-2 value)",
  "dsr_period_doublings": "fractions of the epochs at which DSR's rewiring period doubles",
  "train_subset": "train on n evenly spaced examples only (0: all)",
  "validation_fraction": "hold out this fraction of the training set (the same examples for "
  "every seed) and evaluate on it instead of the test set, for tuning (0: test set)",
  "test_subset": "evaluate on n evenly spaced test examples only (0: all)",
  "extra_eval": "further test sets evaluated at the end",
  "distributed": "call jax.distributed.initialize() (multi-host)",
  "bf16": "bf16 compute (params stay f32)",
  "image_size": "resize (shorter side) and centre-crop the images of an "
  "image folder to N x N (0: they must share one size)",
  "coordinator_address": "--distributed: host:port of process 0 (omit on "
  "TPU pods and SLURM, where JAX finds it)",
  "num_processes": "--distributed with --coordinator-address: number of processes",
  "process_id": "--distributed with --coordinator-address: this process's index",
}


def _flag(name: str) -> str:
  return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
  """Flags mirror :class:`TrainConfig`'s fields; every default is ``None`` so
  that only flags given explicitly override a named config."""
  parser = argparse.ArgumentParser(
    prog="python -m experiments.train",
    description="Train a (sparse) network with S2-SAM, SAM or the plain "
    "optimizer. With no flags: MNIST-1D CNN, RigL at 90% sparsity, S2-SAM. "
    "Precedence: defaults < --config < explicit flags.",
  )
  defaults = TrainConfig()
  choices = {
    "method": configs_lib.METHODS,
    "optimizer_mode": configs_lib.OPTIMIZER_MODES,
    "schedule": configs_lib.SCHEDULES,
    "distribution": configs_lib.DISTRIBUTION_CHOICES,
  }
  for field in dataclasses.fields(TrainConfig):
    name, default = field.name, getattr(defaults, field.name)
    kwargs: dict[str, Any] = dict(default=None, help=HELP[name])
    if isinstance(default, bool):
      kwargs["action"] = argparse.BooleanOptionalAction
    elif isinstance(default, tuple):
      kwargs["nargs"] = "*"
      kwargs["type"] = (
        str if name == "extra_eval" else (int if name == "mest_decay_epochs" else float)
      )
    elif isinstance(default, float):
      kwargs["type"] = float
    elif isinstance(default, int):
      kwargs["type"] = int
    else:
      kwargs["type"] = str
    if name in choices:
      kwargs["choices"] = choices[name]
    kwargs["help"] = (kwargs["help"] + f" (default: {default!r})").strip().replace("%", "%%")
    parser.add_argument(_flag(name), dest=name, **kwargs)
  parser.add_argument(
    "--list-configs", action="store_true", help="print the named configs and exit"
  )
  parser.add_argument("--describe", action="store_true", help="print the resolved config and exit")
  return parser


def config_from_args(argv=None) -> tuple[TrainConfig, argparse.Namespace]:
  """Defaults < named config < explicit flags; with ``--resume --out-dir``
  the saved run's config stands in for the defaults."""
  args = build_parser().parse_args(argv)
  values: dict[str, Any] = {}
  if args.resume and args.out_dir:
    values.update(saved_config(args.out_dir))
  if args.config:
    values.update(configs_lib.get_config(args.config))
  for field in dataclasses.fields(TrainConfig):
    value = getattr(args, field.name)
    if value is not None:
      values[field.name] = tuple(value) if isinstance(value, list) else value
  cfg = TrainConfig(**values)
  configs_lib.validate(cfg)
  return configs_lib.resolve(cfg), args


def describe(cfg: TrainConfig) -> str:
  """Every resolved field, ``name = value``, with the source of derived ones."""
  notes = {}
  if cfg.method.startswith("mest-"):
    notes["mest_prune_offsets"] = notes["mest_grow_offsets"] = configs_lib.offsets_source(cfg)
  return "\n".join(
    f"{k} = {v!r}" + (f"   # {notes[k]}" if k in notes else "")
    for k, v in dataclasses.asdict(cfg).items()
  )
