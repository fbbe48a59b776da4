r"""Per-step cost of each unlearning method as a ratio to a plain fine-tuning step.

  python benchmarks/unlearn_step.py                       # configs/dimum_digits.py:cpu model, batch 64
  python benchmarks/unlearn_step.py --config=configs/dimum_cifar10.py --batch=128 --steps=20   # accelerator

Every method's jitted train step (the engine's `training.train_step`, built by
`unlearning.methods.build` exactly as the pipeline builds it) runs on the same
per-objective batch; the table gives seconds per step, the number of
model passes per step ("2+1": two forward+backward passes and one forward-only
target pass), and the ratio to the fine-tuning step
measured in the same run (interleaved rounds, median).  SalUn and SFR-on run
with a mask const; SFR-on alternates one objective per step, so an SFR-on
*iteration* (forget + remain step) costs two of its steps.  The last line is
one JSON object.
"""
import argparse
import functools
import importlib.util
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from unlearn_jax import models, training  # noqa: E402
from unlearn_jax import sde as sde_lib  # noqa: E402
from unlearn_jax import train_state as ts  # noqa: E402
from unlearn_jax.unlearning import dimum as dimum_lib  # noqa: E402
from unlearn_jax.unlearning import methods  # noqa: E402
from unlearn_jax import settings

#: every class-conditional trained method (SGU is for unconditional score models: benchmarks/train_step.py;
#: a closed-form edit, UCE, has no step).
METHODS = tuple(m for m in methods.METHODS if m != "sgu" and m not in methods.CLOSED_FORM)


def load_config(path: str):
  path, _, arg = path.partition(":")
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(REPO, path))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg or None)


def build(config, method: str, batch: int):
  shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
  k = 10
  module, _ = models.build_model(config.model, shape, k)
  params = models.init_params(module, jax.random.key(0), shape, conditional=True)
  alt = dimum_lib.alternative_classes(k, tuple(config.data.forget_classes), "next")
  objectives, method_tx, opts = methods.build(method, "", settings.of(config), alt=alt, steps=1000,
                                              forget=tuple(config.data.forget_classes), num_classes=k)
  tx = training.make_optimizer(1e-4, grad_clip=1.0, method=method_tx)
  apply = lambda v, x, t, l=None, train=False, rngs=None: module.apply(v, x, t, l, train=train, rngs=rngs)
  spec = training.StepSpec(apply_fn=apply, process=sde_lib.DDPMSchedule(), output_type="eps",
                           objectives=objectives, weighting="simple", conditional=True, null_label=k,
                           centered=True, alternate=opts.alternate)
  consts = {}
  half = jax.tree_util.tree_map(lambda p: (np.arange(p.size).reshape(p.shape) % 2).astype(np.float32), params)
  if opts.mask in ("salun", "sfron"):
    consts["mask"] = half
  if opts.mask == "fisher":
    consts["fisher"] = half
  if opts.frozen:
    consts["frozen"] = jax.tree_util.tree_map(lambda p: p + 0.01, params)
  rng = np.random.default_rng(0)
  batches = {o.stream: {"x": rng.random((batch,) + shape, np.float32),
                        "labels": rng.integers(0, k, batch).astype(np.int32)} for o in objectives.values()}
  step = jax.jit(functools.partial(training.train_step, spec=spec, tx=tx), donate_argnums=(0,))
  state = ts.create(params, tx)
  key = jax.random.key(0)
  compiled = step.lower(state, batches, key, consts).compile()
  # the method's own count (unlearning.spec.MethodSpec.passes)
  fwd_bwd, fwd_only = methods.spec(method).passes(config, objectives, opts, jax.default_backend())
  passes = f"{fwd_bwd}+{fwd_only}"
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
  return compiled, [state, batches, key, consts], passes, n_params


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/dimum_digits.py:cpu")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--rounds", type=int, default=5)
  args = p.parse_args()
  config = load_config(args.config)
  built = {m: build(config, m, args.batch) for m in METHODS}
  for m, (fn, a, _, _) in built.items():          # warm up
    a[0], out = fn(*a)
    jax.block_until_ready(out)
  times = {m: [] for m in METHODS}
  for _ in range(args.rounds):                      # interleaved, so drift hits all methods alike
    for m, (fn, a, _, _) in built.items():
      t0 = time.perf_counter()
      for _ in range(args.steps):
        a[0], out = fn(*a)
      jax.block_until_ready(out)
      times[m].append((time.perf_counter() - t0) / args.steps)
  base = float(np.median(times["finetune"]))
  rows = []
  for m in METHODS:
    t = float(np.median(times[m]))
    rows.append({"method": m, "step_s": round(t, 5), "passes": built[m][2], "ratio_to_finetune": round(t / base, 3)})
  print(f"device: {jax.devices()[0].device_kind}; config {args.config}; {built['finetune'][3]:,} params; "
        f"batch {args.batch} per objective; median of {args.rounds} rounds x {args.steps} steps")
  print(f"{'method':>10} | {'step_s':>9} | {'passes (fb+f)':>14} | {'ratio':>6}")
  for r in rows:
    print(f"{r['method']:>10} | {r['step_s']:>9.5f} | {r['passes']:>14} | {r['ratio_to_finetune']:>6.3f}")
  print(json.dumps({"benchmark": "unlearn_step", "device": jax.devices()[0].device_kind, "config": args.config,
                    "batch": args.batch, "params": built["finetune"][3], "rows": rows}))


if __name__ == "__main__":
  main()
