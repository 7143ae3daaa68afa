"""Two processes on this machine through JAX's multi-controller runtime.

Two ``python -m experiments.train --distributed`` processes meet at a local
coordinator (127.0.0.1, gloo collectives on CPU), split every batch between
them, and must end where one process training on the whole batch ends (float
tolerance: the gradient is summed in another order); a run stopped and
resumed in that setting must equal the uninterrupted two-process run bit for
bit.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from test_train import REPO, TINY, leaves, run

from experiments.checkpoint import Checkpointer

pytestmark = pytest.mark.slow
FLAGS = ["--method", "rigl", "--optimizer-mode", "s2sam", "--epochs", "2"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes(out_dir, *flags, timeout=300):
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        "-m",
        "experiments.train",
        *TINY,
        *FLAGS,
        *flags,
        "--distributed",
        "--coordinator-address",
        f"127.0.0.1:{port}",
        "--num-processes",
        "2",
        "--process-id",
        str(i),
        "--out-dir",
        str(out_dir),
      ],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  try:
    outs = [p.communicate(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]


def _final_state(out_dir, template):
  ckpt = Checkpointer(str(out_dir / "checkpoints"))
  state, meta = ckpt.restore(template)
  ckpt.close()
  return state, meta


def test_two_processes_train_as_one_and_resume_exactly(tmp_path):
  one, _ = run(tmp_path / "one", *FLAGS)
  template = one.state.arrays()
  _two_processes(tmp_path / "two")
  two, meta = _final_state(tmp_path / "two", template)
  assert meta["step"] == one.state.step == one.summary["steps"]
  for a, b in zip(leaves(template), leaves(two)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
  # Checkpointed by both processes mid-run, resumed by both: bit for bit.
  _two_processes(tmp_path / "cut", "--max-steps", "5")
  _two_processes(tmp_path / "cut", "--resume")
  resumed, _ = _final_state(tmp_path / "cut", template)
  for a, b in zip(leaves(two), leaves(resumed)):
    assert np.array_equal(a, b)
