"""The rows of the mesh equality table: every method family, the training loop, sampling and the
NLL, each computed on a given mesh.  Shared by tests/test_mesh.py's one-process columns (1, 2, 4
forced host devices and (data=2, fsdp=2)) and its two-process column (two `jax.distributed`
processes of 2 devices each on one (data=2, fsdp=2) mesh: data across the processes, fsdp
within each).  Every process calls `compute` with the same arguments and feeds only its own rows
of each global batch (`put_global_batch`), as `--multihost` runs do.

Not a test file (no `test_` prefix): tests/ must be on sys.path (it is for pytest and for a
script run from tests/).  Nothing here touches a device when imported.
"""
import functools
import os
from typing import Callable, Dict, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import generation, losses, mesh, models, pipeline, sde as sde_lib, train_state as ts, training
from unlearn_jax.evaluation import nll as nll_lib
from unlearn_jax.models import stable_diffusion as sd


FAMILIES = ("plain", "sgu", "erasediff", "salun", "sfron", "core", "sd", "train_loop", "generate_ddim",
            "generate_ancestral", "nll")

#: the one-process meshes each row runs on besides 1 device (each mesh is a compile: the suite's
#: time).  4 devices cover the data split; 2 only for the plain step, the loop and DDIM.  The
#: (data=2, fsdp=2) mesh is the two-process column's (tests/test_mesh.py), the same program
#: with data across two processes; in one process only the plain step runs it too, so a
#: failure there tells FSDP apart from the processes.  The tiny SD step, the costliest to
#: compile, runs on 1 device and in the two processes only.
ONE_PROCESS = {
    "plain": ("2", "4", "fsdp2"), "sgu": ("4",), "erasediff": ("4",), "salun": ("4",), "sfron": ("4",),
    "core": ("4",), "sd": (), "train_loop": ("2", "4"), "generate_ddim": ("2", "4"), "generate_ancestral": ("4",),
    "nll": ("4",),
}


def put_global_batch(tree, m=None):
  """This process's rows of a global batch (every process holds the whole of it here), placed
  as `mesh.put_batch` places a process's slice."""
  pid, nproc = jax.process_index(), jax.process_count()

  def rows(a):
    a = np.asarray(a)
    k = a.shape[0] // nproc
    return a[pid * k:(pid + 1) * k]

  return mesh.put_batch(jax.tree_util.tree_map(rows, tree), m)


def _steps(state, step_fn, consts, batches: Callable[[int], dict], n: int, m, sharded: Dict[int, int]):
  """n jitted steps of step_fn on mesh m (`training.jit_step`, as a run compiles them); the
  final parameters on the host.  Counts the state leaves fsdp splits into `sharded`."""
  j, state_sh, consts_sh = training.jit_step(step_fn, state, consts, m)
  f = m.shape[mesh.FSDP]
  sharded[f] = sharded.get(f, 0) + sum(s.spec != jax.sharding.PartitionSpec()
                                       for s in jax.tree_util.tree_leaves(state_sh))
  with mesh.use(m):
    s, c = mesh.put(state, state_sh), mesh.put(consts, consts_sh)
    rng = mesh.put(jax.random.key(3), mesh.replicated(m))
    for i in range(n):
      s, _ = j(s, put_global_batch(batches(i), m), rng, c)
    return mesh.to_host(s.params)


def _tiny_sd():
  """(state, spec, optimizer, batch) of the tiny diffusers UNet behind SDUNet, cross-attention
  weights trained (as the SD configs' `sd.trainable="cross_attn"`)."""
  unet = sd.unet_config_from(dict(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                  cross_attention_dim=32, attention_head_dim=2))
  net = sd.SDUNet(unet_config=unet, num_prompts=3, text_len=4, text_dim=32)
  p = net.init(jax.random.key(0), jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))["params"]
  p = dict(p, prompts={"embeddings": jax.random.normal(jax.random.key(1), (4, 4, 32))})
  mask = sd.trainable_mask(p, "cross_attn")
  obj = training.Objective("retain", losses.denoising_loss, cond_drop=0.1)
  spec = training.StepSpec(apply_fn=net.apply, process=sde_lib.DDPMSchedule(N=50), output_type="eps",
                           objectives={"retain": obj}, conditional=True, null_label=3, trainable=mask)
  tx = training.make_optimizer(1e-3, warmup=0, trainable=mask)
  r = np.random.default_rng(0)
  b = {"retain": {"x": r.normal(size=(8, 8, 8, 4)).astype(np.float32), "labels": np.arange(8, dtype=np.int32) % 3}}
  return ts.create(p, tx), spec, tx, b


def _sgu_toy_config():
  from test_configs import load_config          # tests/ is on sys.path (see the module doc)
  cfg = load_config("sgu_toy.py", None)
  cfg.data.toy_num_samples = 64
  return cfg


def rows(workdir: str, sharded: Dict[int, int]) -> Dict[str, Callable]:
  """family -> fn(mesh) -> a tree of host arrays.  `workdir`: where the loop row checkpoints
  (the same path in every process)."""
  # here, not at the top: test_wiring makes arrays when imported, and a worker process must join
  # jax.distributed before anything touches a device
  import test_training as tt
  import test_wiring as tw
  from test_dimum_pipeline import tiny_config
  out = {}
  # plain, SGU (two objectives), EraseDiff (inner K-step loop) on an MLP whose kernels fsdp splits
  for method in ("plain", "sgu", "erasediff"):
    state, spec, tx = tt._setup(False if method == "plain" else method)
    step = functools.partial(training.train_step, spec=spec, tx=tx)
    out[method] = functools.partial(_steps, state, step, {}, tt._batches, 3, sharded=sharded)
  # masked (SalUn), alternating (SFR-on), frozen target (CORE) on the per-class linear model
  eight = jax.tree_util.tree_map(lambda a: np.resize(a, (8,) + a.shape[1:]), tw.BATCHES)
  for method in ("salun", "sfron", "core"):
    state, spec, opt, consts, _ = tw.method_parts(method)
    step = functools.partial(training.train_step, spec=spec, tx=opt)
    out[method] = functools.partial(_steps, state, step, consts, lambda i: eight, 3, sharded=sharded)
  sdstate, sdspec, sdtx, sdb = _tiny_sd()
  out["sd"] = functools.partial(_steps, sdstate, functools.partial(training.train_step, spec=sdspec, tx=sdtx), {},
                                lambda i: sdb, 2, sharded=sharded)

  # the real loop (checkpoints of a sharded state; each process feeds its rows)
  def loop(m):
    state, spec, tx = tt._setup("sgu")
    step = functools.partial(training.train_step, spec=spec, tx=tx)
    pid, nproc = jax.process_index(), jax.process_count()
    local = lambda i: jax.tree_util.tree_map(lambda a: a[pid * (8 // nproc):(pid + 1) * (8 // nproc)],
                                             tt._batches(i))
    with mesh.use(m):
      cfg = training.LoopConfig(num_steps=3, batch_size=8, seed=0, log_every=1, ckpt_every=2)
      stage = os.path.join(workdir, f"loop_{m.shape[mesh.DATA]}x{m.shape[mesh.FSDP]}_{len(m.devices.flat)}")
      return training.train_loop(stage, state, step, cfg, local).params
  out["train_loop"] = loop

  # DDPM sampling (DDIM and ancestral), two batches each (a batch key per batch)
  exp = pipeline.build_experiment(tiny_config())
  params = models.init_params(exp.module, jax.random.key(0), exp.example_shape, conditional=True)
  labels = np.arange(8, dtype=np.int32) % 10
  for kind in ("ddim", "ancestral"):
    e = tw.stub_exp(exp, exp.module, **{"eval.sampler.kind": kind})

    def gen(m, e=e):
      with mesh.use(m):
        return generation.generate(e, params, 8, jax.random.key(5), batch_size=4, labels=labels)
    out["generate_" + kind] = gen

  # the probability-flow NLL of SGU's toy score model (adaptive solve)
  texp = pipeline.build_experiment(_sgu_toy_config())
  tparams = models.init_params(texp.module, jax.random.key(1), texp.example_shape, conditional=False)
  x = np.asarray(texp.train.images[:8], np.float32)

  def nll(m):
    with mesh.use(m):
      return np.asarray([nll_lib.dataset_nll(generation.nll_function(texp), tparams, x, jax.random.key(2),
                                             batch_size=8, is_image=False)])
  out["nll"] = nll
  return out


def compute(meshes: Mapping[str, "jax.sharding.Mesh"], plan: Mapping[str, Sequence[str]], workdir: str):
  """{family: {mesh key: [host arrays]}} for each family of `plan` on each of its mesh keys,
  and {fsdp size: how many state leaves it split}."""
  sharded: Dict[int, int] = {}
  fns = rows(workdir, sharded)
  results = {}
  for family, keys in plan.items():
    results[family] = {k: [np.asarray(a) for a in jax.tree_util.tree_leaves(fns[family](meshes[k]))]
                       for k in keys}
  return results, sharded


def save(path: str, results) -> None:
  """`compute`'s results as one .npz (keys "<family>/<mesh key>/<leaf index>")."""
  np.savez(path, **{f"{fam}/{k}/{i}": a for fam, by_mesh in results.items() for k, leaves in by_mesh.items()
                    for i, a in enumerate(leaves)})


def load(path: str):
  """The inverse of `save`."""
  out: Dict[str, Dict[str, list]] = {}
  with np.load(path) as z:
    for key in sorted(z.files, key=lambda s: (s.rsplit("/", 1)[0], int(s.rsplit("/", 1)[1]))):
      fam, k, _ = key.split("/")
      out.setdefault(fam, {}).setdefault(k, []).append(z[key])
  return out


if __name__ == "__main__":
  # One process of the two-process column: python tests/mesh_table.py <out_dir> <workdir>, with
  # JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID set (tests/test_multiprocess.py's
  # `_launch`).  Writes <out_dir>/table.<process>.npz and .json (fsdp's split leaves).
  import json
  import sys
  import traceback
  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from unlearn_jax import main as main_lib
    main_lib.initialize_distributed()
    assert jax.process_count() == 2 and jax.device_count() == 4, (jax.process_count(), jax.devices())
    mesh.MIN_SHARD_SIZE = 16          # the test nets are tiny: let fsdp split their kernels
    res, split = compute({"2proc": mesh.make(fsdp=2)}, {f: ("2proc",) for f in FAMILIES}, sys.argv[2])
    pid = jax.process_index()
    save(os.path.join(sys.argv[1], f"table.{pid}.npz"), res)
    with open(os.path.join(sys.argv[1], f"table.{pid}.json"), "w") as f:
      json.dump({"sharded": split}, f)
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("table written")   # both files exist before either exits
    sys.stdout.flush()
    os._exit(0)      # not jax.distributed's shutdown barrier: the peer may already be gone
  except BaseException:  # pylint: disable=broad-except
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(1)
