"""Tests of experiments.data: sources, batching, augmentation, errors."""

import io
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from experiments import data
from experiments.data import host_image, mnist1d_source, tfds_source

# ---------------------------------------------------------------------------- tfds (mocked)


@pytest.mark.parametrize("name, num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_through_get_dataset_on_mock_data(tmp_path, name, num_classes):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12):
    source = data.get_dataset(name, "train", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    reference = tfds.data_source(name, split="train", data_dir=tmp_path, download=False)
    expected_images = np.stack([reference[i]["image"] for i in range(12)])
    expected_labels = np.array([reference[i]["label"] for i in range(12)])
  assert len(source) == 12
  batch = source.get_batch(np.array([5, 0, 11]))
  assert batch["image"].dtype == np.uint8 and batch["image"].shape == (3, 32, 32, 3)
  assert batch["label"].dtype == np.int32 and batch["label"].shape == (3,)
  np.testing.assert_array_equal(batch["image"], expected_images[[5, 0, 11]])
  np.testing.assert_array_equal(batch["label"], expected_labels[[5, 0, 11]])
  labels = source.get_batch(np.arange(12))["label"]
  assert labels.min() >= 0 and labels.max() < num_classes
  info = source.info
  assert info.num_classes == num_classes and len(info.class_names) == num_classes
  assert info.image_shape == (32, 32, 3) == info.input_shape
  assert info.augmentation == "cifar" and info.pixel_max == 255.0
  assert len(info.mean) == len(info.std) == 3
  assert all(0.4 < m < 0.55 for m in info.mean) and all(0.2 < s < 0.3 for s in info.std)


def _png_bytes(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def test_random_access_source_decodes_resizes_and_crops():
  rng = np.random.default_rng(0)
  square = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
  wide = np.zeros((16, 40, 3), np.uint8)
  wide[:, 12:28] = 200  # the central 16 columns, which survive the centre crop
  records = [{"image": _png_bytes(square), "label": 3}, {"image": _png_bytes(wide), "label": 7}]
  info = tfds_source.imagenet_info("fake", 10, 16)
  source = tfds_source.RandomAccessImageSource(records, info, image_size=16)
  batch = source.get_batch(np.array([1, 0]))
  assert batch["image"].shape == (2, 16, 16, 3) and batch["image"].dtype == np.uint8
  np.testing.assert_array_equal(batch["label"], [7, 3])
  np.testing.assert_array_equal(batch["image"][0], 200)  # wide image: centre square only
  np.testing.assert_array_equal(batch["image"][1], square)  # already 16x16: untouched
  assert info.augmentation == "imagenet" and info.input_shape == (16, 16, 3)
  assert tfds_source.imagenet_info("x", 1000, 256).input_shape == (224, 224, 3)


def test_resize_shorter_center_crop_matches_pil_reference():
  rng = np.random.default_rng(1)
  array = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
  out = np.asarray(host_image.resize_shorter_center_crop(Image.fromarray(array), 12))
  # Reference: shorter side 30 -> 12 means 50 -> 20, then the middle 12 columns (4..16).
  reference = np.asarray(Image.fromarray(array).resize((20, 12), Image.BILINEAR))[:, 4:16]
  np.testing.assert_array_equal(out, reference)


# ---------------------------------------------------------------------------- image folders

CLASSES_IN_CREATION_ORDER = ["zebra", "ant", "moth"]  # alphabetical: ant=0, moth=1, zebra=2


def _write_folder(root, per_class, size=6, seed=0):
  """Writes root/{train,test}/<class>/<i>.png; returns {split: [(class, array), ...]}."""
  rng = np.random.default_rng(seed)
  written = {}
  for split, count in (("train", per_class), ("test", 1)):
    written[split] = []
    for name in CLASSES_IN_CREATION_ORDER:
      (root / split / name).mkdir(parents=True)
      for i in range(count):
        array = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(array).save(root / split / name / f"{i:02d}.png")
        written[split].append((name, array))
  return written


def test_imagefolder_labels_and_pixels_round_trip(tmp_path):
  written = _write_folder(tmp_path / "folder", per_class=3)
  source = data.get_dataset(
    f"imagefolder:{tmp_path / 'folder'}", "train", cache_dir=tmp_path / "cache"
  )
  assert source.info.class_names == ("ant", "moth", "zebra")
  # Expected order: classes alphabetically, files sorted within each class.
  expected = sorted(written["train"], key=lambda item: item[0])
  expected_labels = [("ant", "moth", "zebra").index(name) for name, _ in expected]
  batch = source.get_batch(np.arange(len(source)))
  np.testing.assert_array_equal(batch["label"], expected_labels)
  np.testing.assert_array_equal(batch["image"], np.stack([a for _, a in expected]))
  assert batch["image"].dtype == np.uint8 and batch["label"].dtype == np.int32
  info = source.info
  assert info.num_classes == 3 and info.image_shape == (6, 6, 3) and info.augmentation == "cifar"
  pixels = np.stack([a for _, a in expected]).reshape(-1, 3) / 255.0
  np.testing.assert_allclose(info.mean, pixels.mean(0), rtol=1e-9)
  np.testing.assert_allclose(info.std, pixels.std(0), rtol=1e-9)

  test = data.get_dataset(
    f"imagefolder:{tmp_path / 'folder'}", "test", cache_dir=tmp_path / "cache"
  )
  np.testing.assert_array_equal(test.get_batch(np.arange(3))["label"], [0, 1, 2])
  assert test.info.mean == info.mean  # normalised with the train statistics


def test_imagefolder_cache_is_used_and_invalidated(tmp_path):
  root = tmp_path / "folder"
  written = _write_folder(root, per_class=1)
  cache_dir = tmp_path / "cache"
  first = data.get_dataset(f"imagefolder:{root}", "train", cache_dir=cache_dir)
  entries = sorted((cache_dir / "imagefolder").iterdir())
  assert len(entries) == 1  # only the train split was asked for
  again = data.get_dataset(f"imagefolder:{root}", "train", cache_dir=cache_dir)
  np.testing.assert_array_equal(first.images, again.images)
  assert sorted((cache_dir / "imagefolder").iterdir()) == entries
  # Rewrite one image: the key changes and the new pixels are read.
  new = np.full((6, 6, 3), 9, np.uint8)
  path = root / "train" / "ant" / "00.png"
  Image.fromarray(new).save(path)
  os.utime(path, ns=(1, 1))
  changed = data.get_dataset(f"imagefolder:{root}", "train", cache_dir=cache_dir)
  np.testing.assert_array_equal(changed.images[0], new)
  assert not np.array_equal(changed.images[0], written["train"][1][1])


def test_imagefolder_jpeg_and_mixed_sizes(tmp_path):
  root = tmp_path / "jpegs"
  for i, (name, size) in enumerate([("a", (8, 8)), ("b", (8, 12))]):
    (root / "train" / name).mkdir(parents=True)
    Image.fromarray(np.full((*size, 3), 40 * (i + 1), np.uint8)).save(
      root / "train" / name / "x.jpg", quality=95
    )
  with pytest.raises(ValueError, match="image_size"):
    data.get_dataset(f"imagefolder:{root}", "train", cache_dir=tmp_path / "c")
  source = data.get_dataset(f"imagefolder:{root}", "train", cache_dir=tmp_path / "c", image_size=8)
  images = source.get_batch(np.arange(2))["image"]
  assert images.shape == (2, 8, 8, 3)
  np.testing.assert_allclose(images[0], 40, atol=2)  # flat colours survive JPEG closely
  np.testing.assert_allclose(images[1], 80, atol=2)


# ---------------------------------------------------------------------------- mnist1d


def test_mnist1d_generation_shape_and_determinism():
  from mnist1d.data import get_dataset_args, make_dataset

  np.random.seed(123)
  before = np.random.get_state()[1].copy()
  first = mnist1d_source.make_mnist1d(num_samples=100)
  assert np.array_equal(np.random.get_state()[1], before)  # global RNG left alone
  second = mnist1d_source.make_mnist1d(num_samples=100)
  assert first["x"].shape == (80, 40) and first["x_test"].shape == (20, 40)
  assert first["x"].dtype == np.float32 and first["y"].dtype == np.int32
  for key in first:
    np.testing.assert_array_equal(first[key], second[key])
  args = get_dataset_args()
  args.num_samples = 100
  reference = make_dataset(args)  # the package itself
  np.testing.assert_allclose(first["x"], reference["x"], rtol=1e-6)
  np.testing.assert_array_equal(first["y_test"], reference["y_test"])


def test_mnist1d_get_dataset_defaults(tmp_path):
  train = data.get_dataset("mnist1d", "train", cache_dir=tmp_path)
  test = data.get_dataset("mnist1d", "test", cache_dir=tmp_path)  # from the cache
  assert len(train) == 4000 and len(test) == 1000
  batch = train.get_batch(np.arange(4000))
  assert batch["image"].shape == (4000, 40) and batch["image"].dtype == np.float32
  assert set(np.unique(batch["label"])) == set(range(10))
  assert train.info.augmentation == "none" and train.info.num_classes == 10
  assert train.info.image_shape == (40,) and train.info.pixel_max == 1.0
  with pytest.raises(ValueError, match="split"):
    data.get_dataset("mnist1d", "validation", cache_dir=tmp_path)


# ---------------------------------------------------------------------------- batches


def _index_source(n):
  info = data.DatasetInfo("idx", 10, (1,), (1,), (0.0,), (1.0,), "none", 1.0)
  return data.ArraySource(np.arange(n, dtype=np.float32)[:, None], np.arange(n), info)


def _labels(iterator):
  return [b["label"] for b in iterator]


@pytest.mark.parametrize("prefetch", [0, 2])
def test_batches_cover_each_index_once(prefetch):
  source = _index_source(103)
  full = _labels(data.batches(source, 10, seed=1, epoch=0, drop_remainder=False, prefetch=prefetch))
  assert [len(b) for b in full] == [10] * 10 + [3]
  flat = np.concatenate(full)
  np.testing.assert_array_equal(np.sort(flat), np.arange(103))
  assert not np.array_equal(flat, np.arange(103))  # shuffled
  dropped = _labels(data.batches(source, 10, seed=1, epoch=0, prefetch=prefetch))
  assert [len(b) for b in dropped] == [10] * 10
  np.testing.assert_array_equal(np.concatenate(dropped), flat[:100])  # remainder = the tail
  ordered = _labels(data.batches(source, 25, seed=1, epoch=0, shuffle=False, prefetch=prefetch))
  np.testing.assert_array_equal(np.concatenate(ordered), np.arange(100))
  for image_batch, label_batch in zip(data.batches(source, 10, seed=1, epoch=0), dropped):
    np.testing.assert_array_equal(image_batch["image"][:, 0], label_batch)


def test_batches_deterministic_in_seed_and_epoch():
  source = _index_source(64)

  def run(seed, epoch, **kw):
    return np.concatenate(_labels(data.batches(source, 8, seed=seed, epoch=epoch, **kw)))

  np.testing.assert_array_equal(run(3, 2), run(3, 2))
  np.testing.assert_array_equal(run(3, 2), run(3, 2, prefetch=0))
  assert not np.array_equal(run(3, 2), run(3, 1))
  assert not np.array_equal(run(3, 2), run(4, 2))
  np.testing.assert_array_equal(run(3, 2, start_step=5), run(3, 2)[40:])


def test_batches_shards_partition_each_global_batch():
  source = _index_source(48)
  global_batches = _labels(data.batches(source, 12, seed=0, epoch=0))
  shards = [
    _labels(data.batches(source, 12, seed=0, epoch=0, num_shards=3, shard_index=i))
    for i in range(3)
  ]
  for step, batch in enumerate(global_batches):
    np.testing.assert_array_equal(np.concatenate([s[step] for s in shards]), batch)
  with pytest.raises(ValueError, match="divisible"):
    data.batches(source, 10, seed=0, epoch=0, num_shards=3)
  with pytest.raises(ValueError, match="drop_remainder"):
    data.batches(source, 12, seed=0, epoch=0, num_shards=3, drop_remainder=False)


def test_batches_prefetch_propagates_errors_and_stops_early():
  class Failing:
    info = None

    def __len__(self):
      return 40

    def get_batch(self, indices):
      if self.calls == 2:
        raise RuntimeError("boom")
      self.calls += 1
      return {"label": indices}

  failing = Failing()
  failing.calls = 0
  iterator = data.batches(failing, 4, seed=0, epoch=0, shuffle=False)
  assert len(next(iterator)["label"]) == 4 and len(next(iterator)["label"]) == 4
  with pytest.raises(RuntimeError, match="boom"):
    next(iterator)
  early = data.batches(_index_source(1000), 10, seed=0, epoch=0)
  next(early)
  early.close()  # the producer thread must stop, not hang


def test_num_batches():
  assert data.num_batches(103, 10) == 10
  assert data.num_batches(103, 10, drop_remainder=False) == 11
  assert data.num_batches(100, 10, drop_remainder=False) == 10
  with pytest.raises(ValueError, match="batch_size"):
    data.num_batches(10, 0)


# ---------------------------------------------------------------------------- augmentation


def _numpy_pad_crop_flip(images, offsets, flips, padding):
  padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  h, w = images.shape[1:3]
  out = np.stack([p[r : r + h, c : c + w] for p, (r, c) in zip(padded, offsets)])
  return np.stack([o[:, ::-1] if f else o for o, f in zip(out, flips)])


@settings(max_examples=15, deadline=None)
@given(
  st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8), st.booleans()), min_size=3, max_size=3)
)
def test_pad_crop_flip_matches_numpy_slicing(params):
  images = np.random.default_rng(0).integers(1, 256, (3, 8, 10, 3), dtype=np.uint8)
  offsets = np.array([(r, c) for r, c, _ in params])
  flips = np.array([f for _, _, f in params])
  out = data.pad_crop_flip(jnp.asarray(images), jnp.asarray(offsets), jnp.asarray(flips), 4)
  assert out.dtype == jnp.uint8
  np.testing.assert_array_equal(np.asarray(out), _numpy_pad_crop_flip(images, offsets, flips, 4))


def test_flip_horizontal_mirrors_width():
  images = np.arange(2 * 2 * 3 * 1).reshape(2, 2, 3, 1)
  out = np.asarray(data.flip_horizontal(jnp.asarray(images), jnp.array([True, False])))
  np.testing.assert_array_equal(out[0, :, :, 0], [[2, 1, 0], [5, 4, 3]])
  np.testing.assert_array_equal(out[1], images[1])


def test_cifar_augment_is_deterministic_and_each_output_is_a_pad_crop_flip():
  images = np.random.default_rng(0).integers(1, 256, (16, 8, 8, 3), dtype=np.uint8)
  step = jax.jit(lambda key, x: data.augment(key, x, "cifar"))
  out = np.asarray(step(jax.random.key(7), images))
  np.testing.assert_array_equal(out, np.asarray(step(jax.random.key(7), images)))
  np.testing.assert_array_equal(out, np.asarray(data.augment(jax.random.key(7), images, "cifar")))
  assert not np.array_equal(out, np.asarray(step(jax.random.key(8), images)))
  seen = set()
  for n in range(16):  # every output is one of the 9 x 9 x 2 NumPy candidates
    matches = [
      (r, c, f)
      for r in range(9)
      for c in range(9)
      for f in (False, True)
      if np.array_equal(out[n], _numpy_pad_crop_flip(images[n : n + 1], [(r, c)], [f], 4)[0])
    ]
    assert matches, f"example {n} is not a pad-4 crop/flip"
    seen.update(matches)
  assert len(seen) > 4  # the draw varies across examples
  np.testing.assert_array_equal(data.augment(None, images, "cifar", train=False), images)


def test_sample_crop_box_within_torchvision_ranges():
  boxes = np.asarray(
    jax.vmap(lambda k: data.sample_crop_box(k, 40, 60))(jax.random.split(jax.random.key(0), 500))
  )
  top, left, h, w = boxes.T
  assert (top >= 0).all() and (left >= 0).all() and (top + h <= 40).all() and (left + w <= 60).all()
  area = h * w / (40 * 60)
  assert area.min() >= 0.08 * 0.85 and area.max() <= 1.0  # rounding of h and w
  ratio = w / h
  assert ratio.min() >= 0.75 * 0.8 and ratio.max() <= 4 / 3 * 1.25
  assert len(np.unique(boxes, axis=0)) > 400


def test_crop_resize_identity_scale_equals_slice_and_matches_pil_downscale():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
  out = data.crop_resize(jnp.asarray(image), jnp.array([3, 5, 8, 8]), 8)
  np.testing.assert_allclose(np.asarray(out), image[3:11, 5:13], atol=1e-3)
  # Halving a 16x16 window: antialiased bilinear (triangle filter), as Pillow computes it
  # when given the window as `box` (border outputs also weigh pixels just outside it).
  half = np.asarray(data.crop_resize(jnp.asarray(image), jnp.array([2, 4, 16, 16]), 8))
  reference = np.asarray(Image.fromarray(image).resize((8, 8), Image.BILINEAR, box=(4, 2, 20, 18)))
  np.testing.assert_allclose(half, reference, atol=1.0)  # Pillow rounds to uint8


def test_imagenet_augment_shapes_determinism_and_eval_center_crop():
  images = np.random.default_rng(0).integers(0, 256, (4, 20, 20, 3), dtype=np.uint8)
  step = jax.jit(lambda key, x: data.augment(key, x, "imagenet", size=12))
  out = step(jax.random.key(1), images)
  assert out.shape == (4, 12, 12, 3) and out.dtype == jnp.float32
  assert float(out.min()) >= -0.5 and float(out.max()) <= 255.5
  np.testing.assert_array_equal(np.asarray(out), np.asarray(step(jax.random.key(1), images)))
  assert not np.array_equal(np.asarray(out), np.asarray(step(jax.random.key(2), images)))
  evaluated = data.augment(None, images, "imagenet", train=False, size=12)
  np.testing.assert_array_equal(np.asarray(evaluated), images[:, 4:16, 4:16])
  upsized = data.augment(None, images, "imagenet", train=False, size=24)
  assert upsized.shape == (4, 24, 24, 3)


def test_normalize_matches_numpy_and_none_is_identity():
  info = data.DatasetInfo("x", 10, (2, 2, 3), (2, 2, 3), (0.5, 0.4, 0.3), (0.2, 0.25, 0.5), "cifar")
  images = np.random.default_rng(0).integers(0, 256, (2, 2, 2, 3), dtype=np.uint8)
  expected = (images / 255.0 - np.array(info.mean)) / np.array(info.std)
  out = jax.jit(data.normalize, static_argnums=1)(images, info)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)
  vectors = np.random.default_rng(1).normal(size=(3, 40)).astype(np.float32)
  assert data.augment(jax.random.key(0), vectors, "none") is vectors
  with pytest.raises(ValueError, match="kind"):
    data.augment(jax.random.key(0), images, "mixup")


# ---------------------------------------------------------------------------- errors


def test_unknown_dataset_name_lists_names():
  with pytest.raises(ValueError, match="imagefolder:<root>") as err:
    data.get_dataset("svhn", "train")
  assert "cifar100" in str(err.value) and "mnist1d" in str(err.value)


def test_missing_image_folder_says_layout(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"<root>/<split>/<class name>"):
    data.get_dataset(f"imagefolder:{tmp_path / 'nowhere'}", "train")


@pytest.mark.parametrize(
  "name, hint",
  [
    ("cifar10", "tfds build cifar10 --file_format=array_record"),
    ("imagenet2012", "ILSVRC2012_img_train.tar"),
    ("imagenet2012_corrupted/gaussian_noise_3", "ILSVRC2012_img_val.tar"),
  ],
)
def test_missing_tfds_data_says_how_to_get_it(tmp_path, name, hint):
  with pytest.raises(FileNotFoundError, match=hint) as err:
    data.get_dataset(name, "train" if name == "cifar10" else "test", data_dir=tmp_path)
  assert str(tmp_path) in str(err.value)


def test_bad_corruption_config():
  with pytest.raises(ValueError, match="gaussian_noise_1"):
    data.get_dataset("imagenet2012_corrupted/fog_9", "test")


def test_unwritable_cache_only_warns(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  with pytest.warns(UserWarning, match="not caching"):
    source = data.get_dataset("mnist1d", "test", cache_dir=blocker / "cache")
  assert len(source) == 1000
