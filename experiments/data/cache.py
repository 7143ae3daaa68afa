"""On-disk cache of decoded datasets: a folder of .npy arrays written atomically.

The cache folder is `cache_dir` if given, else $S2SAM_JAX_CACHE, else ~/.cache/s2sam_jax.
An entry is a sub-folder named by a key (which encodes the source path and the
modification times of what was decoded); it is written to a temporary folder and
renamed into place, so readers never see half an entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

_META = "meta.json"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
  """The cache folder: `cache_dir`, else $S2SAM_JAX_CACHE, else ~/.cache/s2sam_jax."""
  if cache_dir is None:
    cache_dir = os.environ.get("S2SAM_JAX_CACHE") or Path.home() / ".cache" / "s2sam_jax"
  return Path(cache_dir).expanduser()


def digest(*parts) -> str:
  """A short stable hash of `parts` (anything json-serialisable)."""
  text = json.dumps(parts, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_entry(folder: Path, *, mmap: bool = False) -> tuple[dict[str, np.ndarray], dict] | None:
  """Arrays and metadata of a complete entry, or None if there is none.

  With `mmap`, arrays are read-only memory maps (opening costs nothing).
  """
  if not (folder / _META).is_file():
    return None
  meta = json.loads((folder / _META).read_text())
  mode = "r" if mmap else None
  arrays = {name: np.load(folder / f"{name}.npy", mmap_mode=mode) for name in meta["arrays"]}
  return arrays, meta["meta"]


def save_entry(folder: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
  """Writes an entry atomically; if another process wrote it first, keeps theirs.

  A cache folder that cannot be written only costs a warning (the data is still used).
  """
  try:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
  except OSError as err:
    warnings.warn(
      f"not caching decoded data: cannot write to {folder.parent} ({err}); "
      "set cache_dir or $S2SAM_JAX_CACHE to a writable folder"
    )
    return
  try:
    for name, array in arrays.items():
      np.save(tmp / f"{name}.npy", array)
    (tmp / _META).write_text(json.dumps({"arrays": sorted(arrays), "meta": meta}))
    try:
      os.rename(tmp, folder)
    except OSError:  # a concurrent writer won the race; its entry is equivalent
      if not (folder / _META).is_file():
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
