"""The same S2-SAM run on 1 device and data-parallel on 8 (virtual CPU) devices."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import s2sam_jax as ss

    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 6)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 64))
    params0 = {"w1": jnp.asarray(rng.normal(0, .5, (6, 16)), jnp.float32),
               "b1": jnp.zeros(16), "w2": jnp.asarray(rng.normal(0, .5, (16, 3)), jnp.float32)}

    def loss(p, x, y):
      logits = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    tx = ss.s2sam(optax.sgd(0.2, momentum=0.9), rho=0.1, adaptive=ADAPTIVE)

    def step(p, s, x, y):
      u, s = tx.update(jax.grad(loss)(p, x, y), s, p)
      return optax.apply_updates(p, u), s

    def run(shard):
      p, s = params0, tx.init(params0)
      xs, ys = x, y
      f = jax.jit(step)
      if shard:
        mesh = Mesh(np.array(jax.devices()), ("data",))
        rep = NamedSharding(mesh, P())
        p, s = jax.device_put((p, s), rep)
        xs = jax.device_put(x, NamedSharding(mesh, P("data")))
        ys = jax.device_put(y, NamedSharding(mesh, P("data")))
        f = jax.jit(step, out_shardings=(rep, rep))
      else:
        p, s = jax.device_put((p, s), jax.devices()[0])
        xs, ys = jax.device_put((x, y), jax.devices()[0])
      for _ in range(10):
        p, s = f(p, s, xs, ys)
      if shard:
        assert len(xs.sharding.device_set) == 8
      return ss.unperturbed(p, s)

    one, eight = jax.device_get(run(False)), jax.device_get(run(True))
    diff = max(float(np.max(np.abs(one[k] - eight[k]))) for k in one)
    scale = max(float(np.max(np.abs(one[k]))) for k in one)
    print(json.dumps({"max_abs_diff": diff, "scale": scale}))
""")


@pytest.mark.slow
@pytest.mark.parametrize("adaptive", [False, True])
def test_one_vs_eight_devices(adaptive):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  out = subprocess.run(
    [sys.executable, "-c", SCRIPT.replace("ADAPTIVE", str(adaptive))],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["scale"] > 0.1
  assert result["max_abs_diff"] <= 1e-5 * result["scale"] + 1e-6, result
