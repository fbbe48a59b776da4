"""The device mesh (`unlearn_jax.mesh`): the FSDP rule, batched evaluation on the mesh, and the
equality table: every method family, sampling and NLL give the same numbers on 1 and 4 (forced
host) devices and on a (data=2, fsdp=2) mesh, and on 2 devices for the plain step, the loop and
DDIM sampling (each mesh is a compile: the suite's time); the tiny Stable Diffusion step, the
costliest to compile, on 1 device and the fsdp mesh only."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from unlearn_jax import mesh
from unlearn_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_leaf_spec_splits_the_largest_dimension_fsdp_divides():
  assert mesh.leaf_spec((3, 3, 64, 128), 2, min_size=1) == P(None, None, None, mesh.FSDP)
  assert mesh.leaf_spec((128, 6), 4, min_size=1) == P(mesh.FSDP)
  assert mesh.leaf_spec((6, 6), 4, min_size=1) == P()            # no dimension divisible by 4
  assert mesh.leaf_spec((10, 9), 3, min_size=1) == P(None, mesh.FSDP)
  assert mesh.leaf_spec((64, 64), 2, min_size=1 << 13) == P()    # too small to split
  assert mesh.leaf_spec((64, 64), 1, min_size=1) == P()          # fsdp 1: replicated
  assert mesh.leaf_spec((), 2, min_size=0) == P()


def test_make_refuses_an_fsdp_that_does_not_divide_the_devices():
  n = len(jax.devices())
  with pytest.raises(UserError, match=r"config\.mesh\.fsdp.*divisor of the number of devices"):
    mesh.make(fsdp=n + 1)
  with pytest.raises(UserError, match=r"config\.mesh\.fsdp"):
    mesh.make(fsdp=0)
  m = mesh.make()
  assert m.shape == {mesh.DATA: n, mesh.FSDP: 1}


def test_map_batches_pads_and_trims_every_chunk():
  calls = []

  @jax.jit
  def f(c, x):
    return {"y": x["a"] * c + x["b"][:, None]}

  def seen(done, total):
    calls.append((done, total))

  xs = {"a": np.arange(14, dtype=np.float32).reshape(7, 2), "b": np.arange(7, dtype=np.float32)}
  out = mesh.map_batches(f, jnp.float32(3.0), xs, 3, on_batch=seen)
  np.testing.assert_allclose(out["y"], xs["a"] * 3.0 + xs["b"][:, None])
  assert calls == [(3, 7), (6, 7), (7, 7)]
  assert mesh.map_batches(f, 1.0, {"a": np.zeros((0, 2)), "b": np.zeros(0)}, 3) is None


def test_map_batches_with_a_label_logs_a_progress_line(monkeypatch):
  made = []

  class Recorder:
    def __init__(self, label, total, unit):
      made.append([label, total, unit])

    def update(self, done):
      made[-1].append(done)

  monkeypatch.setattr(mesh.console, "Progress", Recorder)
  f = jax.jit(lambda c, x: x * c)
  mesh.map_batches(f, 2.0, np.ones((5, 2), np.float32), 2)                      # no label: no line
  assert made == []
  mesh.map_batches(f, 2.0, np.ones((5, 2), np.float32), 2, label="Inception features")
  assert made == [["Inception features", 5, "images", 2, 4, 5]]


def test_put_and_to_host_round_trip_a_tree_with_a_key():
  tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "k": jax.random.key(3), "s": np.int32(4)}
  back = mesh.to_host(mesh.put(tree))
  np.testing.assert_array_equal(back["w"], tree["w"])
  np.testing.assert_array_equal(jax.random.key_data(back["k"]), jax.random.key_data(tree["k"]))
  assert int(back["s"]) == 4


def test_use_restores_the_previous_mesh():
  before = mesh.current()
  inner = mesh.make(devices=jax.devices()[:1])
  with mesh.use(inner):
    assert mesh.current() is inner
  assert mesh.current() is before


# ============================================================================ the equality table

TABLE_SCRIPT = textwrap.dedent("""
    import functools, json, os, sys, tempfile
    sys.path.insert(0, {tests!r})
    import jax, numpy as np
    assert jax.device_count() == 4, jax.devices()
    import test_training as tt
    import test_wiring as tw
    from test_dimum_pipeline import tiny_config
    from unlearn_jax import config_lib, data as data_lib, evaluation, generation, mesh, pipeline, training
    from unlearn_jax.evaluation import nll as nll_lib

    mesh.MIN_SHARD_SIZE = 16          # the test nets are tiny: let fsdp split their kernels
    devs = jax.devices()
    MESHES = {{"1": mesh.make(devices=devs[:1]), "2": mesh.make(devices=devs[:2]), "4": mesh.make(devices=devs),
              "fsdp2": mesh.make(fsdp=2, devices=devs)}}
    out = {{"sharded": {{}}}}

    def steps(state, step_fn, consts, batches, n, m):
      j, state_sh, consts_sh = training.jit_step(step_fn, state, consts, m)
      out["sharded"].setdefault(m.shape[mesh.FSDP], 0)
      out["sharded"][m.shape[mesh.FSDP]] += sum(s.spec != jax.sharding.PartitionSpec()
                                                 for s in jax.tree_util.tree_leaves(state_sh))
      with mesh.use(m):
        s, c = mesh.put(state, state_sh), mesh.put(consts, consts_sh)
        rng = mesh.put(jax.random.key(3), mesh.replicated(m))
        for i in range(n):
          s, _ = j(s, mesh.put_batch(batches(i)), rng, c)
      return mesh.to_host(s.params)

    def compare(name, run, meshes=("2", "4", "fsdp2")):
      ref = run(MESHES["1"])
      out[name] = {{"scale": max(float(np.max(np.abs(a))) for a in jax.tree_util.tree_leaves(ref))}}
      for k in meshes:
        out[name][k] = tw.max_diff(ref, run(MESHES[k]))
      return ref

    # plain, SGU (two objectives), EraseDiff (inner K-step loop) on an MLP whose kernels fsdp splits;
    # 2 devices for the plain step and the loop only (the suite's time: 4 covers the data split)
    for method in ("plain", "sgu", "erasediff"):
      state, spec, tx = tt._setup(False if method == "plain" else method)
      step = functools.partial(training.train_step, spec=spec, tx=tx)
      compare(method, lambda m: steps(state, step, {{}}, lambda i: tt._batches(i), 3, m),
              meshes=("2", "4", "fsdp2") if method == "plain" else ("4", "fsdp2"))
    # masked (SalUn), alternating (SFR-on), frozen target (CORE) on the per-class linear model
    eight = jax.tree_util.tree_map(lambda a: np.resize(a, (8,) + a.shape[1:]), tw.BATCHES)
    for method in ("salun", "sfron", "core"):
      state, spec, opt, consts, _ = tw.method_parts(method)
      step = functools.partial(training.train_step, spec=spec, tx=opt)
      compare(method, lambda m: steps(state, step, consts, lambda i: eight, 3, m), meshes=("4", "fsdp2"))
    # Stable Diffusion: a tiny diffusers UNet behind SDUNet, cross-attention weights only (1 vs fsdp 2)
    from unlearn_jax import losses, sde as sde_lib, train_state as ts
    from unlearn_jax.models import stable_diffusion as sd
    unet = sd.unet_config_from(dict(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                    cross_attention_dim=32, attention_head_dim=2))
    net = sd.SDUNet(unet_config=unet, num_prompts=3, text_len=4, text_dim=32)
    import jax.numpy as jnp
    sdp = net.init(jax.random.key(0), jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))["params"]
    sdp = dict(sdp, prompts={{"embeddings": jax.random.normal(jax.random.key(1), (4, 4, 32))}})
    mask = sd.trainable_mask(sdp, "cross_attn")
    obj = training.Objective("retain", losses.denoising_loss, cond_drop=0.1)
    sdspec = training.StepSpec(apply_fn=net.apply, process=sde_lib.DDPMSchedule(N=50), output_type="eps",
                               objectives={{"retain": obj}}, conditional=True, null_label=3, trainable=mask)
    sdtx = training.make_optimizer(1e-3, warmup=0, trainable=mask)
    sdstate = ts.create(sdp, sdtx)
    r = np.random.default_rng(0)
    sdb = {{"retain": {{"x": r.normal(size=(8, 8, 8, 4)).astype(np.float32), "labels": np.arange(8, dtype=np.int32) % 3}}}}
    step = functools.partial(training.train_step, spec=sdspec, tx=sdtx)
    compare("sd", lambda m: steps(sdstate, step, {{}}, lambda i: sdb, 2, m), meshes=("fsdp2",))
    # the real loop (checkpoints of a sharded state), DDPM sampling and the probability-flow NLL
    state, spec, tx = tt._setup("sgu")
    step = functools.partial(training.train_step, spec=spec, tx=tx)
    def loop(m):
      with mesh.use(m):
        cfg = training.LoopConfig(num_steps=3, batch_size=8, seed=0, log_every=1, ckpt_every=2)
        return training.train_loop(tempfile.mkdtemp(), state, step, cfg, tt._batches).params
    compare("train_loop", loop)
    exp = pipeline.build_experiment(tiny_config())
    from unlearn_jax import models
    params = models.init_params(exp.module, jax.random.key(0), exp.example_shape, conditional=True)
    labels = np.arange(8, dtype=np.int32) % 10
    for kind in ("ddim", "ancestral"):
      e = tw.stub_exp(exp, exp.module, **{{"eval.sampler.kind": kind}})
      def gen(m, e=e):
        with mesh.use(m):
          return generation.generate(e, params, 8, jax.random.key(5), batch_size=4, labels=labels)   # two batches
      ref = compare("generate_" + kind, gen, meshes=("2", "4") if kind == "ddim" else ("4",))
      out["generate_" + kind]["std"] = float(np.std(ref))
    import importlib.util
    spec_ = importlib.util.spec_from_file_location("sgu_toy", os.path.join({repo!r}, "configs", "sgu_toy.py"))
    mod = importlib.util.module_from_spec(spec_); spec_.loader.exec_module(mod)
    tcfg = mod.get_config()
    tcfg.data.toy_num_samples = 64
    texp = pipeline.build_experiment(tcfg)
    tparams = models.init_params(texp.module, jax.random.key(1), texp.example_shape, conditional=False)
    x = np.asarray(texp.train.images[:8], np.float32)
    def nll(m):
      with mesh.use(m):
        return np.asarray([nll_lib.dataset_nll(generation.nll_function(texp), tparams, x, jax.random.key(2),
                                               batch_size=8, is_image=False)])
    ref = compare("nll", nll, meshes=("4", "fsdp2"))
    out["nll"]["value"] = float(ref[0])
    print("RESULT", json.dumps(out))
""")

FAMILIES = ("plain", "sgu", "erasediff", "salun", "sfron", "core", "sd", "train_loop", "generate_ddim",
            "generate_ancestral", "nll")


@pytest.fixture(scope="module")
def table():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip())
  script = TABLE_SCRIPT.format(tests=os.path.join(REPO, "tests"), repo=REPO)
  proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900,
                        cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads([l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][0][len("RESULT "):])


@pytest.mark.parametrize("family", FAMILIES)
def test_same_numbers_on_1_2_4_devices_and_fsdp(table, family):
  """Each row: the result on 2, 4 devices and on (data=2, fsdp=2) against 1 device, to float
  tolerance (relative to the result's largest entry: summation order differs by mesh)."""
  row = table[family]
  # the NLL's adaptive solve (rtol 1e-5) picks its steps from float noise too
  rtol = 1e-4 if family == "nll" else 1e-5
  for m in [k for k in ("2", "4", "fsdp2") if k in row]:
    assert row[m] <= rtol * max(1.0, row["scale"]), f"{family}: mesh {m} differs from 1 device by {row[m]} ({row})"


def test_the_table_is_not_vacuous(table):
  """fsdp 2 really splits parameters (so the fsdp column tests FSDP), the samples are not
  constant, the NLL is finite."""
  assert table["sharded"]["2"] > 0 and table["sharded"]["1"] == 0
  assert table["generate_ddim"]["std"] > 0.05
  assert np.isfinite(table["nll"]["value"])
