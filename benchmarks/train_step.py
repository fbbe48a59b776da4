r"""Train-step throughput, achieved FLOP/s (from XLA's cost analysis) and MFU for the UNet sizes.

  python benchmarks/train_step.py                 # the MNIST sizes, batch 32, float32
  python benchmarks/train_step.py --sizes=cpu --batch=64 --steps=20
  python benchmarks/train_step.py --sizes=cifar10 --dtypes=float32,bfloat16 --batch=128   # accelerator
  python benchmarks/train_step.py --sizes=tiny --batch=4 --steps=1                        # smoke

For each model size and compute dtype it times the jitted SGU train step (retain + forget
objectives, i.e. two forward/backward passes per step, the unlearning stages' cost) and the
plain denoising step (Standard/Unseen), after compilation.  bfloat16 is mixed precision:
float32 master weights and Adam state, the weights and images cast to bfloat16 for the
network's passes, the loss in float32.  MFU is the achieved FLOP/s over the device's peak
dense FLOP/s for the dtype (`PEAK_TFLOPS`: bf16 tensor cores / MXU; float32 on a GPU counts
against the TF32 peak, JAX's default matmul precision there; null on a CPU or an unknown
device).  Prints a table, then one JSON object as the last line.
"""
import argparse
import functools
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from unlearn_jax import losses, models, training  # noqa: E402
from unlearn_jax import sde as sde_lib  # noqa: E402
from unlearn_jax import train_state as ts  # noqa: E402
from unlearn_jax.unlearning import sgu  # noqa: E402

#: (model config, image shape)
SIZES = {
    # configs/sgu_mnist.py:cpu
    "cpu": (dict(name="ddpm_unet", ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=()), (28, 28, 1)),
    # configs/sgu_mnist.py (paper scale)
    "full": (dict(name="ddpm_unet", ch=64, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(7,)),
             (28, 28, 1)),
    # configs/sgu_cifar10.py (the seed papers' 35.7 M CIFAR-10 UNet)
    "cifar10": (dict(name="ddpm_unet", ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,)),
                (32, 32, 3)),
    # --smoke: compiles in seconds
    "tiny": (dict(name="ddpm_unet", ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=()), (8, 8, 1)),
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
#: peak dense TFLOP/s per device: (device_kind substring, {dtype: peak}); the first match counts.
#: NVIDIA's data sheets (H100/H200 SXM: 989 bf16, 495 TF32; H100 PCIe 756 / 378; A100 312 / 156)
#: and Cloud TPU's (bf16; float32 matmuls run as bf16 passes on the MXU, counted at that peak).
PEAK_TFLOPS = (
    ("H100 PCIe", {"bfloat16": 756.0, "float32": 378.0}),
    ("H100", {"bfloat16": 989.4, "float32": 494.7}),
    ("H200", {"bfloat16": 989.4, "float32": 494.7}),
    ("A100", {"bfloat16": 312.0, "float32": 156.0}),
    ("TPU v4", {"bfloat16": 275.0, "float32": 275.0}),
    ("TPU v5 lite", {"bfloat16": 197.0, "float32": 197.0}),
    ("TPU v5p", {"bfloat16": 459.0, "float32": 459.0}),
    ("TPU v6 lite", {"bfloat16": 918.0, "float32": 918.0}),
)


def peak_tflops(device_kind: str, dtype: str):
  """The device's peak dense TFLOP/s for `dtype`, or None (a CPU, an unknown device)."""
  for sub, peaks in PEAK_TFLOPS:
    if sub.lower() in device_kind.lower():
      return peaks[dtype]
  return None


def mixed_precision(apply, dtype):
  """`apply` with the weights and the image cast to `dtype` and the output back to float32
  (float32: `apply` itself)."""
  if dtype == jnp.float32:
    return apply
  cast = lambda tree: jax.tree_util.tree_map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating)
                                             else a, tree)

  def run(v, x, t, l=None, train=False, rngs=None):
    return apply(cast(v), x.astype(dtype), t, l, train=train, rngs=rngs).astype(jnp.float32)
  return run


def bench(size: str, batch: int, steps: int, method: bool, dtype: str = "float32"):
  model, shape = SIZES[size]
  module, _ = models.build_model(ml_collections.ConfigDict(model), shape, 0)
  params = models.init_params(module, jax.random.key(0), shape)
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
  tx = training.make_optimizer(2e-4, method=sgu.sgu(0.5) if method else None)
  objectives = {"retain": training.Objective("retain", losses.denoising_loss)}
  if method:
    objectives["forget"] = training.Objective("forget", losses.obtuse_loss)
  apply = mixed_precision(lambda v, x, t, l=None, train=False, rngs=None: module.apply(v, x, t, l, train=train,
                                                                                       rngs=rngs),
                          DTYPES[dtype])
  spec = training.StepSpec(apply_fn=apply, process=sde_lib.VESDE(), output_type="eps", objectives=objectives)
  state = ts.create(params, tx)
  step = jax.jit(functools.partial(training.train_step, spec=spec, tx=tx), donate_argnums=(0,))
  rng = np.random.default_rng(0)
  batches = {"retain": {"x": rng.random((batch,) + shape, np.float32)},
             "forget": {"x": rng.random((batch,) + shape, np.float32)}}
  key = jax.random.key(0)
  t0 = time.perf_counter()
  compiled = step.lower(state, batches, key).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  state, m = compiled(state, batches, key)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = compiled(state, batches, key)
  jax.block_until_ready(m)
  dt = (time.perf_counter() - t0) / steps
  images = batch * len(objectives)
  peak = peak_tflops(jax.devices()[0].device_kind, dtype)
  return {"size": size, "dtype": dtype, "objectives": len(objectives), "params": n_params, "batch": batch,
          "compile_s": round(compile_s, 2), "step_s": round(dt, 4), "images_per_s": round(images / dt, 1),
          "gflop_per_step": round(flops / 1e9, 3), "gflop_per_s": round(flops / dt / 1e9, 2),
          "mfu": None if peak is None else round(flops / dt / (peak * 1e12), 4)}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--sizes", default="cpu,full", help=f"comma-separated: {', '.join(SIZES)}")
  p.add_argument("--dtypes", default="float32", help="comma-separated compute dtypes: float32, bfloat16")
  p.add_argument("--objectives", default="1,2",
                 help="comma-separated: 1 the plain denoising step, 2 the SGU step (retain + forget)")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--steps", type=int, default=5)
  args = p.parse_args()
  kinds = [{"1": False, "2": True}.get(k) for k in args.objectives.split(",")]
  if None in kinds:
    p.error(f"--objectives: {args.objectives!r}; expected some of 1, 2")
  sizes, dtypes = args.sizes.split(","), args.dtypes.split(",")
  for what, got, allowed in (("--sizes", sizes, SIZES), ("--dtypes", dtypes, DTYPES)):
    bad = [v for v in got if v not in allowed]
    if bad:
      p.error(f"{what}: unknown {bad}; expected some of {', '.join(allowed)}")
  rows = []
  for size in sizes:
    for dtype in dtypes:
      for method in kinds:
        rows.append(bench(size, args.batch, args.steps, method, dtype))
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}")
  head = ("size", "dtype", "objectives", "params", "batch", "compile_s", "step_s", "images_per_s", "gflop_per_step",
          "gflop_per_s", "mfu")
  print(" | ".join(f"{h:>14}" for h in head))
  for r in rows:
    print(" | ".join(f"{r[h]!s:>14}" for h in head))
  print(json.dumps({"benchmark": "train_step", "device": jax.devices()[0].device_kind, "rows": rows}))


if __name__ == "__main__":
  main()
