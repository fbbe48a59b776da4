r"""Train-step throughput and achieved FLOP/s (from XLA's cost analysis) for the MNIST model sizes.

  python benchmarks/train_step.py                 # both sizes, batch 32
  python benchmarks/train_step.py --sizes=cpu --batch=64 --steps=20

For each model size it times the jitted SGU train step (retain + forget
objectives, i.e. two forward/backward passes per step, the unlearning stages'
cost) and the plain denoising step (Standard/Unseen), after compilation.
Prints a table, then one JSON object as the last line.
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
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from unlearn_jax import losses, models, training  # noqa: E402
from unlearn_jax import sde as sde_lib  # noqa: E402
from unlearn_jax import train_state as ts  # noqa: E402
from unlearn_jax.unlearning import sgu  # noqa: E402

SIZES = {
    # configs/sgu_mnist.py:cpu
    "cpu": dict(name="ddpm_unet", ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=()),
    # configs/sgu_mnist.py (paper scale)
    "full": dict(name="ddpm_unet", ch=64, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(7,)),
}


def bench(size: str, batch: int, steps: int, method: bool):
  module, _ = models.build_model(ml_collections.ConfigDict(SIZES[size]), (28, 28, 1), 0)
  params = models.init_params(module, jax.random.key(0), (28, 28, 1))
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
  tx = training.make_optimizer(2e-4, method=sgu.sgu(0.5) if method else None)
  objectives = {"retain": training.Objective("retain", losses.denoising_loss)}
  if method:
    objectives["forget"] = training.Objective("forget", losses.obtuse_loss)
  apply = lambda v, x, t, l=None, train=False, rngs=None: module.apply(v, x, t, l, train=train, rngs=rngs)
  spec = training.StepSpec(apply_fn=apply, process=sde_lib.VESDE(), output_type="eps", objectives=objectives)
  state = ts.create(params, tx)
  step = jax.jit(functools.partial(training.train_step, spec=spec, tx=tx), donate_argnums=(0,))
  rng = np.random.default_rng(0)
  batches = {"retain": {"x": rng.random((batch, 28, 28, 1), np.float32)},
             "forget": {"x": rng.random((batch, 28, 28, 1), np.float32)}}
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
  return {"size": size, "objectives": len(objectives), "params": n_params, "batch": batch,
          "compile_s": round(compile_s, 2), "step_s": round(dt, 4), "images_per_s": round(images / dt, 1),
          "gflop_per_step": round(flops / 1e9, 3), "gflop_per_s": round(flops / dt / 1e9, 2)}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--sizes", default="cpu,full")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--steps", type=int, default=5)
  args = p.parse_args()
  rows = []
  for size in args.sizes.split(","):
    for method in (False, True):
      rows.append(bench(size, args.batch, args.steps, method))
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}")
  head = ("size", "objectives", "params", "batch", "compile_s", "step_s", "images_per_s", "gflop_per_step",
          "gflop_per_s")
  print(" | ".join(f"{h:>14}" for h in head))
  for r in rows:
    print(" | ".join(f"{r[h]!s:>14}" for h in head))
  print(json.dumps({"benchmark": "train_step", "device": jax.devices()[0].device_kind, "rows": rows}))


if __name__ == "__main__":
  main()
