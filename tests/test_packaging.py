"""The distribution: its wheel ships `s2sam_jax` alone, and that wheel alone provides it.

`experiments/` is a folder of the repository, run from its root (`python -m experiments.train`);
a top-level `experiments` package in site-packages would collide with any other project's.

The wheel is built from a copy of the repository's files (so the build leaves nothing in the
checkout) and installed with pip into a new virtual environment that has no pip, no repository
on its path and nothing else of this project. Its dependencies (jax, optax, numpy) are the test
interpreter's: a `.pth` file appends that environment's site-packages *after* the new one's, so
`s2sam_jax` must come from the wheel (checked by its path), while the test stays a few seconds
(no download of jax).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IGNORED = (".git", ".venv", "build", "dist", "runs", "_build", "*.egg-info", "__pycache__")


def _copy_sources(dest: Path) -> None:
  """The checkout's files (tracked and untracked, not ignored) into ``dest``."""
  try:
    listed = subprocess.run(
      ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
      cwd=REPO,
      capture_output=True,
      check=True,
    ).stdout
  except (OSError, subprocess.CalledProcessError):  # not a git checkout: copy the tree
    shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(*IGNORED), dirs_exist_ok=True)
    return
  for name in filter(None, listed.decode().split("\0")):
    source = REPO / name
    if source.is_file():  # skips deleted files and submodule folders
      (dest / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(source, dest / name)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
  src = tmp_path_factory.mktemp("src")
  out = tmp_path_factory.mktemp("wheel")
  _copy_sources(src)
  build = subprocess.run(
    [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-3000:]
  (path,) = out.glob("s2sam_jax-*.whl")
  return path


def test_wheel_ships_the_library_only(wheel):
  names = zipfile.ZipFile(wheel).namelist()
  dist_info = [n for n in names if n.split("/")[0].endswith(".dist-info")]
  files = sorted(set(names) - set(dist_info))
  assert files, names
  outside = [n for n in files if not n.startswith("s2sam_jax/")]
  assert not outside, f"the wheel ships files outside s2sam_jax/: {outside}"
  assert not any(n.split("/")[0] == "experiments" for n in names)
  assert "s2sam_jax/py.typed" in files
  assert "s2sam_jax/__init__.py" in files and "s2sam_jax/sparse/__init__.py" in files
  # Every module of the package is shipped.
  package = sorted(str(p.relative_to(REPO)) for p in (REPO / "s2sam_jax").rglob("*.py"))
  assert sorted(n for n in files if n.endswith(".py")) == package
  with zipfile.ZipFile(wheel) as z:
    (top_level,) = [n for n in dist_info if n.endswith("/top_level.txt")]
    assert z.read(top_level).decode().split() == ["s2sam_jax"]
    (metadata,) = [n for n in dist_info if n.endswith("/METADATA")]
    requires = [
      line.split(":", 1)[1].strip()
      for line in z.read(metadata).decode().splitlines()
      if line.startswith("Requires-Dist:")
    ]
  core = sorted(r.split(">")[0].split("=")[0].strip() for r in requires if "extra ==" not in r)
  assert core == ["jax", "numpy", "optax"], requires


def test_wheel_alone_provides_the_library(wheel, tmp_path):
  env_dir = tmp_path / "venv"
  venv.EnvBuilder(with_pip=False).create(env_dir)
  python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
  site = Path(
    subprocess.run(
      [str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
      capture_output=True,
      text=True,
      check=True,
    ).stdout.strip()
  )
  install = subprocess.run(
    [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps"]
    + ["--no-index", str(wheel)],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-3000:]
  shipped = sorted(p.name for p in site.iterdir() if not p.name.startswith("_"))
  assert shipped[0] == "s2sam_jax" and shipped[1].startswith("s2sam_jax-"), shipped
  assert len(shipped) == 2, f"installing the wheel added more than s2sam_jax: {shipped}"
  # jax, optax and numpy from the test's environment, after the new site-packages.
  deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
  (site / "zz_test_dependencies.pth").write_text("\n".join(deps) + "\n")
  script = (
    "import json, s2sam_jax as ss, s2sam_jax.sparse;"
    "print(json.dumps({'file': ss.__file__, 'version': ss.__version__, 'api': sorted(ss.__all__)}))"
  )
  run = subprocess.run(
    [str(python), "-I", "-c", script],  # -I: no cwd, PYTHONPATH or user site on the path
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=120,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert run.returncode == 0, run.stderr[-3000:]
  import json

  result = json.loads(run.stdout.strip().splitlines()[-1])
  assert Path(result["file"]).is_relative_to(site), result
  import s2sam_jax

  assert result["version"] == s2sam_jax.__version__
  assert result["api"] == sorted(s2sam_jax.__all__)
  assert not (site / "experiments").exists()


def test_experiments_run_from_the_repository_root():
  """The editable install no longer maps `experiments`; the repository root provides it, with
  the C++ sources its native kernels compile on first use."""
  from experiments.models import native_kernels

  assert Path(native_kernels.__file__).resolve().is_relative_to(REPO)
  assert native_kernels.SOURCE.is_file()
  assert native_kernels.SOURCE.resolve().is_relative_to(REPO / "experiments")
