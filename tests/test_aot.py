"""Deviceless TPU compilation (`unlearn_jax.aot`): the tiny steps of each task family compile
for v5e:2x2 on a (data=2, fsdp=2) mesh through the run's own `training.jit_step`, with
memory numbers that are positive and below the chip's HBM; a step that cannot be sharded
fails here."""
import os
import subprocess
import sys

import pytest
from jax.sharding import PartitionSpec as P

from unlearn_jax import aot, config_lib, mesh, pipeline
from unlearn_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPOLOGY = "v5e:2x2"

try:
  aot.topology_devices(TOPOLOGY)
  HAVE_LIBTPU = True
except UserError:
  HAVE_LIBTPU = False
# libtpu comes with the [test] extra; without it (e.g. a core-only install) these tests cannot run.
needs_libtpu = pytest.mark.skipif(not HAVE_LIBTPU, reason='needs libtpu: pip install -e ".[tpu]"')


def _exec(name, arg):
  import importlib.util
  spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(REPO, "configs", name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()


def _digits():
  """The classes family: a class-conditional DDPM UNet on 8x8 digits (tests' tiny config)."""
  sys.path.insert(0, os.path.join(REPO, "tests"))
  from test_dimum_pipeline import tiny_config
  c = tiny_config()
  c.stages["salun_mask"] = config_lib.stage("mask", method="salun", init="pretrained", steps=1)
  c.stages["salun"] = config_lib.stage("unlearn", method="salun", init="pretrained", mask="salun_mask", steps=2)
  c.stage_order = tuple(c.stage_order) + ("salun_mask", "salun")
  return c


def _toy():
  """The SGU family: the toy's MLP score model on a VE SDE, SGU's two objectives."""
  c = _exec("sgu_toy.py", None)
  c.data.toy_num_samples = 64
  return c


CASES = {"classes_ddpm": (_digits, ("pretrained", "salun")), "sgu_score": (_toy, ("standard", "sgu_obtuse"))}


@needs_libtpu
@pytest.mark.parametrize("case", sorted(CASES))
def test_tiny_steps_compile_for_tpu_with_fsdp(case):
  make, stages = CASES[case]
  config = make()
  config.mesh.fsdp = 2
  exp = pipeline.build_experiment(config)
  rows = aot.compile_run(exp, TOPOLOGY, stages)
  assert [r["stage"] for r in rows] == list(stages)
  hbm = aot.CHIPS["v5e"].hbm_gib * (1 << 30)
  for r in rows:
    assert r["mesh"] == {"data": 2, "fsdp": 2} and r["devices"] == 4
    assert 0 < r["args_bytes"] and 0 < r["out_bytes"] and 0 < r["peak_bytes"] < hbm, r
    assert r["flops"] > 0 and r["fits"]
  table = aot.format_table(rows, TOPOLOGY)
  assert table.count("\n| ") == len(rows) + 2       # the header, the separator, one line per step


@needs_libtpu
def test_a_parameter_split_the_mesh_does_not_divide_fails_to_compile(monkeypatch):
  """Break the sharding on purpose: every parameter split 4 ways along its first dimension,
  whatever its size (the MLP's input kernel has 2 rows) (jit would pad an uneven split and compile); the step must be refused, naming the leaf."""
  monkeypatch.setattr(mesh, "leaf_spec", lambda shape, fsdp, min_size=None: P(mesh.BATCH_AXES) if shape else P())
  config = _toy()
  config.mesh.fsdp = 2
  exp = pipeline.build_experiment(config)
  with pytest.raises(ValueError, match=r"params.*is split 4 ways .* which does not divide it"):
    aot.compile_run(exp, TOPOLOGY, ("standard",))


def test_topology_errors_name_the_flag():
  with pytest.raises(UserError, match=r"--topology.*v5e:2x4"):
    aot.chip_of("v9x:2x2")
  assert aot.chip_of("v5litepod:2x4") is aot.CHIPS["v5e"]


def test_cli_bad_topology_is_one_line_and_exit_2():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "unlearn_jax.aot", "--config=configs/sgu_toy.py", "--topology=v9:1x1"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert [l for l in proc.stderr.splitlines() if l.startswith("error:")] == [
      l for l in proc.stderr.splitlines() if "--topology" in l]
