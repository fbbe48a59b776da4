"""Deviceless TPU compilation (`unlearn_jax.aot`): the tiny steps of each task family compile
for v5e:2x2 on a (data=2, fsdp=2) mesh through the run's own `training.jit_step`, with
memory numbers that are positive and below the chip's HBM; a step that cannot be sharded
fails here."""
import importlib.util
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from unlearn_jax import aot, config_lib, mesh, pipeline, settings
from unlearn_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPOLOGY = "v5e:2x2"

# libtpu comes with the [test] extra; without it (e.g. a core-only install) these tests cannot run.
# Where it is installed, a topology that cannot be described fails the tests (no silent skip).
HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None
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


def _sd_tiny():
  """The Stable Diffusion family: the tiny random SD model of the cpu variants (written into a
  temporary directory by `aot.build`), CORE on the cross-attention weights."""
  c = _exec("core_unlearncanvas.py", "cpu")
  c.sd.fit_vae_steps = 0
  return c


def _robust_digits():
  """The condition attack (`attacks.condition.attack_step`: projected steps on class-embedding
  rows, the network frozen in the consts)."""
  return _exec("robustness_digits.py", "cpu,methods=dimum")


CASES = {"classes_ddpm": (_digits, ("pretrained", "salun")), "sgu_score": (_toy, ("standard", "sgu_obtuse")),
         "sd_tiny": (_sd_tiny, ("core",)), "condition_attack": (_robust_digits, ("attack_dimum_condition",))}


@needs_libtpu
@pytest.mark.parametrize("case", sorted(CASES))
def test_tiny_steps_compile_for_tpu_with_fsdp(case, tmp_path):
  make, stages = CASES[case]
  config = make()
  config.mesh.fsdp = 2
  exp = aot.build(config, str(tmp_path))
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


@needs_libtpu
def test_a_step_the_compiler_refuses_for_hbm_is_a_row_that_does_not_fit(monkeypatch):
  """The TPU compiler's RESOURCE_EXHAUSTED (measured: ESD's SD v1.5 step without FSDP on v5e,
  "HLO temporaries (16.98G) exceeds available HBM (15.75G)") becomes a row, not a crash."""
  message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
             "(16.98G) exceeds available HBM (15.75G).")

  def refuse(self, *a, **k):
    raise jax.errors.JaxRuntimeError(message)
  monkeypatch.setattr(jax.stages.Lowered, "compile", refuse)
  exp = pipeline.build_experiment(_toy())
  (row,) = aot.compile_run(exp, TOPOLOGY, ("standard",))
  assert row["fits"] is False and row["compiler_error"] == message and row["peak_bytes"] is None
  assert row["temp_bytes"] == int(16.98 * (1 << 30)) and row["roofline_ms"] is None
  table = aot.format_table([row], TOPOLOGY)
  assert "| does not fit (RESOURCE_EXHAUSTED: Ran out of memory on HBM" in table.splitlines()[-1]
  # any other compiler error still fails the step
  monkeypatch.setattr(jax.stages.Lowered, "compile",
                      lambda self, *a, **k: (_ for _ in ()).throw(jax.errors.JaxRuntimeError("INVALID_ARGUMENT: x")))
  with pytest.raises(jax.errors.JaxRuntimeError, match="INVALID_ARGUMENT"):
    aot.compile_run(exp, TOPOLOGY, ("standard",))


def test_sd_without_a_model_directory_is_the_sd15_shape_preset():
  """No weights, no data: the SD v1.5 UNet's 859.5 M parameters (diffusers' count for v1.x) plus
  the (prompts + 1, 77, 768) table of the config's 50 x 20 UnlearnCanvas prompts."""
  config = _exec("core_unlearncanvas.py", None)
  assert aot.uses_preset(config)
  exp = aot.sd15_experiment(settings.of(config))
  step_fn, state, consts, batches = aot.stage_step_shapes(exp, exp.config.stages["salun"], 8)
  n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state.params["unet"]))
  assert n == 859_520_964
  assert state.params["prompts"]["embeddings"].shape == (50 * 20 + 1, 77, 768)
  assert jax.tree_util.tree_structure(consts["mask"]) == jax.tree_util.tree_structure(state.params)
  assert batches["forget"]["x"].shape == (8, 64, 64, 4)
  assert len(exp.forget_labels) == 6 * 20               # Forget06: six styles x 20 objects


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
