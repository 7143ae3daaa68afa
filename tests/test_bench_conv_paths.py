"""experiments.bench_conv_paths: the harness (timing, shapes, tables) on tiny inputs."""

import os

from experiments import bench_conv_paths as bench
from experiments.models import conv_paths, cpu_conv


def test_interleaved_rotates_and_reports_quartiles():
  calls = []
  fns = {k: (lambda k=k: calls.append(k)) for k in "abc"}
  stats = bench.interleaved(fns, samples=3, warmup=1)
  assert calls == list("abc") + list("abc") + list("bca") + list("cab")
  for s in stats.values():
    assert s["samples"] == 3 and s["q1_s"] <= s["median_s"] <= s["q3_s"]


def test_environment_sets_and_restores(monkeypatch):
  monkeypatch.delenv(conv_paths.ENV_VAR, raising=False)
  monkeypatch.setenv(cpu_conv.ENV_VAR, "1")
  with bench.environment(bench.SETTINGS["xla"]):
    assert not cpu_conv.fast_cpu_conv_enabled()
  assert cpu_conv.fast_cpu_conv_enabled() and conv_paths.ENV_VAR not in os.environ


def test_zoo_geometries_of_the_default_job():
  geoms = bench.zoo_geometries("mnist1d_cnn", 128)
  assert [g.c for g, _ in geoms] == [1, 25, 25] and [dx for _, dx in geoms] == [False, True, True]
  assert bench.model_paths("mnist1d_cnn", 128) == {"xla": 3, "hlo": 0, "native": 0}


def test_time_geometry_and_tables():
  g = conv_paths.Geometry(2, 6, 6, 8, 3, 3, 16, (1, 1), ((1, 1), (1, 1)))
  row = bench.time_geometry(g, True, samples=3, warmup=1, target_s=0.001)
  assert set(row["times"]) == {"xla", "hlo", "native"} and row["choice"] == "xla"
  assert row["max_rel_diff_vs_xla"] < 1e-5
  row["used_by"] = ["m/b2"]
  table = bench.shapes_markdown({"commands": ["cmd"], "machines": [{}], "rows": [row]})
  assert table.splitlines()[-1].startswith("| 2x6x6x8 k3x3 ->16 s1x1 p1111 | dense | y |")
  t = lambda s: {"median_s": s, "q1_s": s * 0.9, "q3_s": s * 1.1, "cpu_median_s": 2 * s}
  models = {
    "commands": ["cmd"],
    "machines": [{}],
    "rows": [
      {
        "model": "m",
        "batch_size": 2,
        "paths": {"xla": 1, "hlo": 2, "native": 3},
        "times": {"auto": t(0.5), "xla": t(1.0)},
      }
    ],
  }
  assert bench.models_markdown(models).splitlines()[-1] == (
    "| m | 2 | 1/2/3 | 0.5000 [0.4500-0.5500] | 1.0000 [0.9000-1.1000] | 0.500 | 0.41-0.61 | 0.500 | 1 |"
  )


def test_merge_replaces_rows_by_key(tmp_path):
  class Args:
    merge, out = True, str(tmp_path / "r.json")

  result = bench._start(Args, "first")
  for v in (1, 2):
    bench._put(result, {"k": v, "x": 0}, lambda r: r["k"])
  bench._write(result, Args.out, lambda r: "")
  result = bench._start(Args, "second")
  bench._put(result, {"k": 2, "x": 1}, lambda r: r["k"])
  assert result["commands"] == ["first", "second"] and len(result["machines"]) == 2
  assert result["rows"] == [{"k": 1, "x": 0, "run": 1}, {"k": 2, "x": 1, "run": 2}]
