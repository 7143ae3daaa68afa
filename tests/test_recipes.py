"""Named recipes against the methods' own codes.

Independent references: the bounds of the S2-SAM authors' profile yaml files
(``tests/data/mest_profile_bounds.txt``) and the values of their scripts, typed
by hand with the file each comes from (jjsrf/SSAM-NEURIPS2024); DSR's N_target and period schedule
(IntelAI/dynamic-reparameterization); counts recomputed from the layer sizes.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments import configs, recipes, train
from experiments import models as models_lib
from s2sam_jax import sparse


def _profile_files(table: pathlib.Path):
  """``{(model, variant, sparsity): (file, (lower_bound, upper_bound))}`` of the table."""
  rows = {}
  for line in table.read_text().splitlines():
    if not line.strip() or line.startswith("#"):
      continue
    path, *bounds = line.split()
    model = path.split("_LTH/")[0]
    _, level, profile = path.rsplit("/", 1)[1].removesuffix(".yaml").split("_")
    key = (model, "em" if profile == "without" else "ems", float(level))
    values = tuple(float(v) for v in bounds)
    rows[key] = ("profiles/" + path, (values[:3], values[3:]))
  return rows


PROFILES = _profile_files(pathlib.Path(__file__).parent / "data" / "mest_profile_bounds.txt")
# (model, variant, sparsity): (lower_bound, upper_bound) as the yaml files write them
YAML_BOUNDS = {key: bounds for key, (_, bounds) in PROFILES.items()}


@pytest.mark.parametrize("key", sorted(YAML_BOUNDS))
def test_profile_table_equals_the_yaml_files(key):
  model, variant, level = key
  assert sparse.MEST_PROFILES[key] == YAML_BOUNDS[key]
  low, up = YAML_BOUNDS[key]
  prune, grow = sparse.mest_profile_offsets(variant, level, model=model)
  np.testing.assert_allclose(prune, np.subtract(low, level), atol=1e-9)
  np.testing.assert_allclose(grow, np.subtract(up, level), atol=1e-9)
  assert sparse.mest_profile_file(model, variant, level) == PROFILES[key][0]


def test_missing_profiles_are_named_as_missing():
  # The scripts' resnet_0.9_{with,without}.yaml are not in the repository.
  assert sparse.mest_profile_file("resnet32", "em", 0.9) is None
  assert sparse.mest_profile_file("vgg19", "ems", 0.5) is None
  assert sparse.mest_profile_file("vgg19", "em", 0.5).endswith("vgg_0.5_without.yaml")


@pytest.mark.parametrize(
  "name,model,variant,level",
  [
    ("table1/cifar10/resnet32/mest-em/0.98/s2sam", "resnet32", "em", 0.98),
    ("table1/cifar100/vgg19/mest-em/0.98/original", "vgg19", "em", 0.98),
    ("table1/cifar10/vgg19/mest-ems/0.98/s2sam", "vgg19", "ems", 0.98),
    ("table1/cifar10/resnet32/mest-ems/0.95/s2sam", "resnet32", "ems", 0.95),
    ("authors/cifar10/resnet32/mest-ems/0.98/s2sam", "resnet32", "ems", 0.98),
  ],
)
def test_named_configs_use_the_profile_offsets(name, model, variant, level, capsys):
  low, up = YAML_BOUNDS[model, variant, level]
  cfg, _ = train.config_from_args(["--config", name])
  np.testing.assert_allclose(cfg.mest_prune_offsets, np.subtract(low, level), atol=1e-9)
  np.testing.assert_allclose(cfg.mest_grow_offsets, np.subtract(up, level), atol=1e-9)
  assert train.main(["--config", name, "--describe"]) == 0
  out = capsys.readouterr().out
  assert f"mest_prune_offsets = {cfg.mest_prune_offsets!r}" in out
  assert "_without.yaml" in out or "_with.yaml" in out


def test_offsets_follow_sparsity_flags_and_flags_override_them():
  cfg, _ = train.config_from_args(
    ["--config", "table1/cifar10/resnet32/mest-em", "--sparsity", "0.98"]
  )
  assert cfg.mest_prune_offsets == (0.002, 0.001, 0.0)
  cfg, _ = train.config_from_args(
    [
      "--config",
      "table1/cifar10/resnet32/mest-em/0.98/s2sam",
      "--mest-prune-offsets",
      "0.004",
      "0.002",
      "0",
    ]
  )
  assert cfg.mest_prune_offsets == (0.004, 0.002, 0.0)
  assert cfg.mest_grow_offsets == (0.0, 0.0, 0.0)


def test_bad_offset_flags_are_one_line_errors(capsys):
  code = train.main(
    ["--config", "table1/cifar10/resnet32/mest-em", "--mest-prune-offsets", "0.01", "0"]
  )
  err = capsys.readouterr().err
  assert code == 2 and "--mest-prune-offsets" in err and "Traceback" not in err


def _resnet32_at_98():
  model = models_lib.create_model("resnet32", num_classes=10, rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  cfg = train.TrainConfig(model="resnet32", dataset="cifar10")
  prunable = recipes.make_prunable(cfg)  # keep_dense="paper": block convs
  densities = sparse.layer_densities(params, 0.98, "uniform", prunable=prunable)
  return params, sparse.magnitude_masks(params, densities)


def _mest_em(masks, prune_offsets, grow_offsets):
  """MEST EM from ``masks``, mutating every 10 steps, phases from steps 100 and 200."""
  return sparse.mest(
    optax.sgd(0.1),
    variant="em",
    masks=masks,
    update_every=10,
    decay_steps=(100, 200),
    prune_offsets=prune_offsets,
    grow_offsets=grow_offsets,
  )


def test_mest_em_at_98_keeps_its_weights_through_an_update():
  params, masks = _resnet32_at_98()
  n_active = sum(int(m.sum()) for m in jax.tree.leaves(masks))
  assert 36_000 < n_active < 37_500  # 2% of the 30 block convs
  prune, grow = sparse.mest_profile_offsets("em", 0.98)
  tx = _mest_em(masks, prune, grow)
  state = tx.init(params)
  _, state = tx.update(
    jax.tree.map(jnp.zeros_like, params), state, sparse.apply_masks(params, state)
  )
  before, after = jax.tree.leaves(masks), jax.tree.leaves(state.masks)
  kept = sum(int(np.sum(np.asarray(b) & np.asarray(a))) for b, a in zip(before, after))
  now = sum(int(a.sum()) for a in after)
  # δL = 0.002 of each layer: 10% of its active weights are dropped (and as
  # many regrown); the count is kept exactly. (Retained weights cannot reach
  # 99%: the profile itself drops 10%.)
  assert now == n_active
  expected_kept = sum(int(b.sum()) - round(0.002 * b.size) for b in before)
  assert expected_kept <= kept <= expected_kept + 0.01 * n_active
  assert kept / n_active >= 0.899


def test_the_old_fixed_offsets_are_refused_at_98():
  params, masks = _resnet32_at_98()
  tx = _mest_em(masks, (0.02, 0.01, 0.0), (0.0, 0.0, 0.0))
  with pytest.raises(ValueError, match=r"prune_offsets\[0\] = 0.02 .*layer"):
    tx.init(params)


def test_library_default_offsets_follow_the_sparsity():
  params = {"w": jnp.ones((50, 100))}  # one layer of 5,000 weights
  for level, kept_at_least in ((0.9, 0.8), (0.98, 0.9), (0.99, 0.8)):
    tx = sparse.mest(optax.sgd(0.1), sparsity=level, update_every=5, decay_steps=(10, 20))
    state = tx.init(params)
    before = np.asarray(state.masks["w"])
    _, state = tx.update({"w": jnp.zeros((50, 100))}, state, sparse.apply_masks(params, state))
    after = np.asarray(state.masks["w"])
    assert after.sum() == before.sum()
    assert (before & after).sum() / before.sum() >= kept_at_least - 1e-9
  with pytest.raises(ValueError, match="prune_offsets"):  # 0.1% dense: refused
    sparse.mest(optax.sgd(0.1), sparsity=0.999, update_every=5, decay_steps=(10, 20)).init(params)


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (
      dict(variant="ems", prune_offsets=(0, 0, 0), grow_offsets=(-0.6, -0.3, 0)),
      r"grow_offsets\[0\] = -0.6 .*'w'",
    ),
    (
      dict(variant="em", prune_offsets=(0.5, 0.1, 0), grow_offsets=(0, 0, 0)),
      r"prune_offsets\[0\] = 0.5 .*'w'",
    ),
  ],
)
def test_invalid_offsets_are_refused_naming_the_layer(kwargs, match):
  params = {"w": jnp.ones((10, 10)), "b": jnp.ones(10)}
  tx = sparse.mest(optax.sgd(0.1), sparsity=0.5, update_every=5, decay_steps=(10, 20), **kwargs)
  with pytest.raises(ValueError, match=match):
    tx.init(params)


def test_dsr_period_grows_on_schedule():
  # All weights far above H, so each rewire removes K = 0 < 0.9 N_target and
  # doubles H: H doubles exactly at the rewire steps.
  params = {"w": jnp.full((8, 8), 5.0)}
  tx = sparse.dsr(
    optax.sgd(0.0), sparsity=0.5, update_every={0: 2, 6: 4}, target_count=3, init_threshold=1e-3
  )
  state = tx.init(params)
  p = sparse.apply_masks(params, state)
  rewired = []
  for t in range(14):
    h = float(state.threshold)
    u, state = tx.update({"w": jnp.zeros((8, 8))}, state, p)
    p = optax.apply_updates(p, u)
    if float(state.threshold) != h:
      rewired.append(t)
  assert rewired == [2, 4, 8, 12]
  with pytest.raises(ValueError, match="update_every"):
    sparse.dsr(optax.sgd(0.1), sparsity=0.5, update_every={5: 100})


def test_dsr_recipe_carries_the_wrn_fraction_and_schedule():
  # 20,000 of WRN-28-2's 145,152 active block-conv weights at 90%.
  assert configs.DSR_TARGET_FRACTION == pytest.approx(20_000 / 145_152)
  cfg, _ = train.config_from_args(["--config", "table1/cifar10/resnet32/dsr/0.98/s2sam"])
  assert (cfg.distribution, cfg.dsr_target) == ("uniform", 0)
  assert cfg.dsr_target_fraction == pytest.approx(0.13779, abs=1e-5)
  sched = recipes.Schedule(steps_per_epoch=781, total_steps=781 * 160)
  # 100 steps; 200 from epoch 20, 400 from 64, 800 from 112 (25/80/140 of 200)
  assert recipes.dsr_periods(cfg, sched) == {0: 100, 20 * 781: 200, 64 * 781: 400, 112 * 781: 800}
  imagenet = configs.get_config("table2/imagenet2012/resnet50/dsr")
  assert (imagenet["dsr_target"], imagenet["update_every"]) == (400_000, 1000)


# field -> value -> the named configs that fix it so
FIXED_RECIPES = {
  "distribution": {
    "uniform": (
      "table1/cifar10/resnet32/mest-em",
      "table1/cifar10/vgg19/mest-ems",
      "table1/cifar100/resnet32/magnitude",
      "table1/cifar10/resnet32/dsr",
      "table1/cifar10/resnet32/rigl-uniform",
      "table2/imagenet2012/resnet50/rigl-uniform",
    ),
    "erk": ("table1/cifar10/resnet32/rigl-erk",),
  },
  "keep_dense": {
    "none": (
      "table1/cifar10/resnet32/snip",
      "table1/cifar100/vgg19/grasp",
      "table1/cifar10/resnet32/lt",
      "table1/cifar10/resnet32/lrr",
      "table2/imagenet2012/resnet50/grasp",
    )
  },
  "method": {"rigl": ("table1/cifar10/resnet32/rigl-uniform",)},
}


@pytest.mark.parametrize(
  "name,field,value",
  [
    (name, field, value)
    for field, by_value in FIXED_RECIPES.items()
    for value, names in by_value.items()
    for name in names
  ],
)
def test_describe_shows_the_fixed_recipes(name, field, value, capsys):
  assert train.main(["--config", name, "--describe"]) == 0
  assert f"\n{field} = {value!r}" in "\n" + capsys.readouterr().out


def test_global_methods_count_every_kernel():
  cfg = train.TrainConfig(**configs.get_config("table1/cifar10/resnet32/snip"))
  assert recipes.dense_patterns(cfg) == ()
  assert "every conv and linear kernel" in recipes.counted_over(cfg)
  cfg = train.TrainConfig(**configs.get_config("table1/cifar10/resnet32/rigl-erk"))
  assert "'^conv1/'" in recipes.counted_over(cfg)


# jjsrf/SSAM-NEURIPS2024 scripts/run_mag_prune_irregular_sp_0.9.sh (original)
# and scripts/run_mag_prune_irregular_sp_0.9_sam.sh (s2sam), main_prune_train.py
AUTHORS_SCRIPT_VALUES = {
  "original": dict(
    optimizer_mode="original",
    weight_decay=1e-4,
    seed=914,
    mask_gradients=True,
    perturb_pruned=False,
    adaptive=False,
  ),
  "s2sam": dict(
    optimizer_mode="s2sam",
    weight_decay=5e-4,
    seed=444,
    rho=0.05,
    adaptive=True,
    adaptive_formula="authors",
    perturb_pruned=True,
    mask_gradients=False,
  ),
}


@pytest.mark.parametrize("mode", ["original", "s2sam"])
def test_authors_cells_carry_every_value_of_their_scripts(mode):
  cfg, _ = train.config_from_args(["--config", f"authors/cifar10/resnet32/mest-ems/0.9/{mode}"])
  for field, value in AUTHORS_SCRIPT_VALUES[mode].items():
    assert getattr(cfg, field) == value, field
  assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.schedule, cfg.lr_end) == (
    160,
    64,
    0.1,
    "cosine",
    4e-8,
  )
  assert (cfg.momentum, cfg.nesterov, cfg.update_every_epochs, cfg.mest_decay_epochs) == (
    0.9,
    False,
    5,
    (100, 130),
  )
  assert (cfg.distribution, cfg.keep_dense, cfg.eval_every) == ("uniform", "paper", 1)


def test_authors_family_covers_every_profile():
  names = [n for n in configs.list_configs() if n.startswith("authors/")]
  # 11 no_mutate + 11 without + (10 + 1) with (ResNet-32: 0.9 from the
  # scripts) + VGG-19: 11 no_mutate + 11 without + 2 with; x2 datasets, x2 modes
  assert len(names) == (11 + 11 + 11 + 11 + 11 + 2) * 2 * 2
  assert "authors/cifar100/vgg19/magnitude/0.98/original" in names
  assert "authors/cifar10/vgg19/mest-ems/0.5/s2sam" not in names
  with pytest.raises(ValueError, match="--config"):
    configs.get_config("authors/cifar10/resnet32/mest-em")


def test_adaptive_formula_flag_needs_adaptive(capsys):
  code = train.main(["--adaptive-formula", "authors", "--describe"])
  assert code == 2 and "--adaptive-formula" in capsys.readouterr().err
  cfg, _ = train.config_from_args(
    ["--adaptive", "--adaptive-formula", "authors", "--no-mask-gradients"]
  )
  assert (cfg.adaptive_formula, cfg.mask_gradients) == ("authors", False)


def test_authors_protocol_trains_end_to_end(tmp_path):
  """The authors' flags on a tiny MNIST-1D run: ε covers pruned weights,
  the clean weights stay exactly sparse, and the loss is finite."""
  from test_train import TINY, clean_params_and_masks, masked_pairs

  import s2sam_jax

  cfg, _ = train.config_from_args(
    TINY
    + [
      "--method",
      "mest-em",
      "--update-every",
      "4",
      "--mest-decay-epochs",
      "1",
      "2",
      "--adaptive",
      "--adaptive-formula",
      "authors",
      "--perturb-pruned",
      "--no-mask-gradients",
      "--weight-decay",
      "5e-4",
      "--out-dir",
      str(tmp_path),
    ]
  )
  runner = train.train_and_evaluate(*train.setup(cfg))
  summary = runner.summary
  assert np.isfinite(summary["final_test_accuracy"])
  clean, masks = clean_params_and_masks(runner)
  for name, m, p in masked_pairs(clean, masks):
    assert np.all(p[~m] == 0), name
  eps = jax.device_get(s2sam_jax.S2SAMState(*runner.state.opt_state).perturbation)
  eps_masked = [e[~m] for _, m, e in masked_pairs(eps, masks)]
  assert any(np.any(e != 0) for e in eps_masked)  # the dense perturbation
