r"""Per-step cost and memory of each text-to-image unlearning method on the Stable Diffusion UNet.

  python benchmarks/sd_step.py --steps=2 --rounds=2          # CPU: reduced-width UNet, batch 1
  python benchmarks/sd_step.py --shape=full --isolate         # GPU: the SD v1.5 UNet, batch 4 per objective
  python benchmarks/sd_step.py --shape=full --dtype=bfloat16 --remat --methods=finetune,esd
  python benchmarks/sd_step.py --shape=tiny --methods=salun --steps=1 --rounds=1   # does it run

Every method's jitted train step (the engine's `training.train_step`, built by
`unlearning.methods.build` from `config_lib.unlearncanvas_base()` as the
pipeline builds it) runs on the diffusers Flax UNet behind `SDUNet` with random
weights (shapes from `jax.eval_shape`, values drawn with numpy: no compiled
init).  Conditions are prompt ids of a synthetic UnlearnCanvas grid (styles x
objects; the last style is forgotten, style 0 is the alternative / anchor
style, the null prompt is id P), so each objective's stream carries the labels
the pipeline gives it (retain: retained prompts; forget and the memorization /
anchor-image stream "alternative": forget prompts).

Each method trains the parameter subset its paper trains (`PAPER_TRAINABLE`:
CORE and ESD-x the cross-attention, Concept Ablation its k/v projections, the
others the whole UNet; `--trainable` forces one subset for all), as a static
`StepSpec.trainable` mask: gradients are taken w.r.t. those leaves only.
SalUn runs with a mask const over half of the trainable weights; CORE and ESD
with `consts["frozen"]` (a copy of the weights).  The DiMRA attack step is the
plain denoising loss on all weights (cond_drop 0 in this config), i.e. the
`finetune` row.

Timing: after a warm-up step, `--rounds` rounds each run every method for
`--steps` steps (interleaved, so drift hits all alike) from a fresh copy of the
train state, made outside the timed block and donated to the step; only one
method's state is alive at a time (the compiled steps, the weights and the
shared consts stay), so the full model fits one process.

Columns: seconds per step (median of the rounds), the number of UNet
passes per step ("2+1": two forward+backward passes and one forward-only pass,
each at the per-objective batch; ESD's guided partial DDIM counts 2 per DDIM
step), the ratio to the fine-tuning step, the trainable parameter count, and
memory: XLA's compiled `memory_analysis()` (arguments + outputs + temporaries
- donated/aliased bytes: the train state, consts and batches plus the step's
working memory) on every backend, and on an accelerator the allocator's
`peak_bytes_in_use`.  That peak is cumulative in a process, so without
`--isolate` it is the peak so far (monotone down the table, methods run in
table order); with `--isolate` every method runs in its own subprocess and
the peak is its own (timings are then not interleaved across methods).  The
last line is one JSON object.

The train state holds params and their EMA copy for every leaf and Adam's two
moments for the trainable leaves only (`training.make_optimizer(trainable=)`, as
the pipeline builds it): 2x the parameter bytes plus 2x the trainable bytes.

Compile cost: lower_s (tracing + lowering) and compile_s (XLA) are reported per
method.  On a slow CPU the seven steps take ~15 minutes to build even at the
reduced width (XLA:CPU compile time grows with the UNet's depth, not its
width; EraseDiff's unrolled inner loop is the slowest); `--layers-per-block=1`
roughly halves it, `--cache-dir=DIR` keeps the compiled steps for the next run
(a "c" after compile_s marks a cache hit), and `--jobs=N` compiles in N
parallel subprocesses first (only worth it with N free cores).
"""
import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from unlearn_jax import config_lib, training  # noqa: E402
from unlearn_jax import sde as sde_lib  # noqa: E402
from unlearn_jax import train_state as ts  # noqa: E402
from unlearn_jax.models import stable_diffusion as sd  # noqa: E402
from unlearn_jax.unlearning import methods  # noqa: E402
from unlearn_jax import settings  # noqa: E402

#: the text-to-image methods, fine-tuning (the reference) first.
METHODS = ("finetune", "core", "dimum", "erasediff", "esd", "salun", "ca")
#: the parameter subset each paper trains (`sd.trainable_mask` names).
PAPER_TRAINABLE = {"finetune": "all", "core": "cross_attn", "dimum": "all", "erasediff": "all",
                   "esd": "cross_attn", "salun": "all", "ca": "cross_attn_kv"}

#: Stable Diffusion v1.5's UNet (unet/config.json), as FlaxUNet2DConditionModel fields.
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                 block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=8,
                 cross_attention_dim=768, use_linear_projection=False, flip_sin_to_cos=True, freq_shift=0)
#: latents (h = w, 4 channels), CLIP text (L, D) and the UnlearnCanvas grid (styles x objects).
SHAPES = {
    "full": dict(unet=SD15_UNET, latent=64, text_len=77, text_dim=768, styles=50, objects=20),
    # The same blocks at reduced width; the Flax UNet's GroupNorm(32) needs multiples of 32.
    "reduced": dict(unet=dict(SD15_UNET, sample_size=16, block_out_channels=(32, 64, 64, 64),
                              cross_attention_dim=64),
                    latent=16, text_len=77, text_dim=64, styles=4, objects=3),
    # benchmarks/accelerator.sh --smoke: two levels, one layer each (tests/test_mesh.py's tiny UNet)
    "tiny": dict(unet=dict(SD15_UNET, sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                           down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                           cross_attention_dim=32, attention_head_dim=2),
                 latent=8, text_len=4, text_dim=32, styles=2, objects=2),
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
MIB = float(1 << 20)


def quiet():
  """Silences diffusers' per-module Flax deprecation notice."""
  import diffusers
  diffusers.utils.logging.set_verbosity_error()


def random_params(module, example_shape, seed: int = 0):
  """Params of `module` with random values: shapes from `jax.eval_shape` of its init, values
  drawn with numpy (kernels N(0, 1/fan_in), zero biases, unit scales, N(0, 0.02) otherwise)."""
  x = jnp.zeros((1,) + tuple(example_shape), jnp.float32)
  t = jnp.zeros((1,), jnp.float32)
  labels = jnp.zeros((1,), jnp.int32)
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x, t, labels))["params"]
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    shape = tuple(leaf.shape)
    if name == "bias":
      value = np.zeros(shape, np.float32)
    elif name == "scale":
      value = np.ones(shape, np.float32)
    elif name == "kernel":
      value = rng.standard_normal(shape, np.float32) / np.float32(np.sqrt(max(1, int(np.prod(shape[:-1])))))
    else:
      value = 0.02 * rng.standard_normal(shape, np.float32)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, flax.core.unfreeze(shapes))


def n_elements(tree, mask=None) -> int:
  leaves = jax.tree_util.tree_leaves(tree)
  keep = [True] * len(leaves) if mask is None else jax.tree_util.tree_leaves(mask)
  return sum(int(np.prod(p.shape)) for p, m in zip(leaves, keep) if m)


class Setup:
  """The shared parts: model, random weights, prompt grid, config, and lazily built consts."""

  def __init__(self, args):
    self.args = args
    shape = dict(SHAPES[args.shape])
    if args.layers_per_block:
      shape["unet"] = dict(shape["unet"], layers_per_block=args.layers_per_block)
    self.shape = shape
    self.styles = args.styles or shape["styles"]
    self.objects = args.objects or shape["objects"]
    if self.styles < 2 or self.objects < 1:
      raise SystemExit("--styles must be >= 2 (one forgotten, one retained) and --objects >= 1")
    P = self.num_prompts = self.styles * self.objects
    self.example_shape = (shape["latent"], shape["latent"], 4)
    from diffusers import FlaxUNet2DConditionModel
    unet_config = sd.unet_config_of(FlaxUNet2DConditionModel(**shape["unet"]))
    self.module = sd.SDUNet(unet_config=unet_config, num_prompts=P,
                            text_len=shape["text_len"], text_dim=shape["text_dim"],
                            num_train_timesteps=1000, dtype=DTYPES[args.dtype], remat=args.remat)
    t0 = time.perf_counter()
    self.params = random_params(self.module, self.example_shape, seed=0)
    self.init_s = time.perf_counter() - t0
    # Prompt p = (style p // O, object p % O); the last style is forgotten, style 0 is the
    # alternative (DiMUM's D_u', SalUn's and CA's c') and CORE's one-to-one anchor style.
    forget_style, alt_style = self.styles - 1, 0
    ids = np.arange(P, dtype=np.int32)
    self.forget = tuple(int(p) for p in ids[ids // self.objects == forget_style])
    self.retained = ids[ids // self.objects != forget_style]
    self.alt = np.where(ids // self.objects == forget_style, alt_style * self.objects + ids % self.objects,
                        ids).astype(np.int32)
    self.anchors = self.alt[:, None]                         # (P, K = 1): same object, anchor style
    config = config_lib.unlearncanvas_base()
    config.unlock()
    if args.esd_steps:
      config.esd.ddim_steps = args.esd_steps
    config.lock()
    self.config = config
    self.process = sde_lib.DDPMSchedule(N=1000, beta_start=0.00085, beta_end=0.012,
                                        beta_schedule="scaled_linear")
    self._consts = {}

  def batches(self, streams, batch: int, seed: int = 0):
    """One batch per stream: latents ~ N(0, 1) with the stream's prompt labels."""
    rng = np.random.default_rng(seed)
    pools = {"retain": self.retained, "forget": np.asarray(self.forget), "alternative": np.asarray(self.forget)}
    return {s: {"x": rng.standard_normal((batch,) + self.example_shape).astype(np.float32),
                "labels": rng.choice(pools.get(s, np.arange(self.num_prompts)), batch).astype(np.int32)}
            for s in streams}

  def frozen(self):
    """consts["frozen"]: a separate device copy of the weights (theta*)."""
    if "frozen" not in self._consts:
      self._consts["frozen"] = jax.tree_util.tree_map(jnp.copy, self.params)
    return self._consts["frozen"]

  def salun_mask(self, which: str, trainable):
    """A SalUn mask over `which`: every other weight of each trainable leaf, zeros elsewhere
    (as the pipeline's mask stage writes it over a trainable subset)."""
    key = ("mask", which)
    if key not in self._consts:
      half = lambda p, m: jnp.asarray((np.arange(p.size) % 2).reshape(p.shape) if m else np.zeros(p.shape),
                                      jnp.float32)
      self._consts[key] = jax.tree_util.tree_map(half, self.params, trainable)
    return self._consts[key]


def passes(method: str, objectives, opts, config) -> str:
  """'fb+f': forward+backward and forward-only UNet passes per step (per-objective batch), the
  method's own count (`unlearning.spec.MethodSpec.passes`)."""
  fwd_bwd, fwd_only = methods.spec(method).passes(config, objectives, opts, jax.default_backend())
  return f"{fwd_bwd}+{fwd_only}"


def memory(compiled) -> dict:
  """XLA's compiled memory analysis: argument + output + temp - alias bytes."""
  try:
    ma = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - a backend without the analysis
    ma = None
  if ma is None:
    return {}
  out = {k: int(getattr(ma, f"{k}_size_in_bytes", 0) or 0) for k in ("argument", "output", "temp", "alias")}
  out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
  return out


_CACHE_HITS = [0]


def use_cache(cache_dir: str) -> None:
  """JAX's persistent compilation cache in `cache_dir`, for every compile (hits counted)."""
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

  def listen(event, **kwargs):
    del kwargs
    if event == "/jax/compilation_cache/cache_hits":
      _CACHE_HITS[0] += 1

  jax.monitoring.register_event_listener(listen)


def peak_bytes():
  stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


class Runner:
  """One method's compiled step, its fixed inputs, and a fresh donated state per timed block."""

  def __init__(self, setup: Setup, method: str, which: str, batch: int):
    self.method, self.which = method, which
    config = setup.config
    objectives, method_tx, opts = methods.build(
        method, "", settings.of(config), alt=setup.alt, steps=1000, forget=setup.forget,
        num_classes=setup.num_prompts, anchor_fn=lambda cfg: setup.anchors)
    trainable = sd.trainable_mask(setup.params, which)
    consts = {}
    if opts.mask == "salun":
      consts["mask"] = setup.salun_mask(which, trainable)
    elif opts.mask is not None:
      raise ValueError(f"{method}: mask kind {opts.mask!r} is not benchmarked here")
    if opts.frozen:
      consts["frozen"] = setup.frozen()
    o = config.optim
    self.tx = training.make_optimizer(o.lr, warmup=o.warmup, grad_clip=o.grad_clip, b1=o.b1, eps=o.eps,
                                      method=method_tx, trainable=trainable)
    module = setup.module
    apply = lambda v, x, t, l=None, train=False, rngs=None: module.apply(v, x, t, l, train=train, rngs=rngs)
    spec = training.StepSpec(apply_fn=apply, process=setup.process, output_type="eps", objectives=objectives,
                             weighting=config.training.weighting, ema_rate=config.model.ema_rate,
                             centered=config.data.centered, random_flip=False, conditional=True,
                             null_label=setup.num_prompts, alternate=opts.alternate, trainable=trainable)
    self.setup = setup
    self.batches = jax.device_put(setup.batches(sorted({ob.stream for ob in objectives.values()}), batch))
    self.key = jax.random.key(0)
    self.consts = consts
    step = jax.jit(functools.partial(training.train_step, spec=spec, tx=self.tx),
                   donate_argnums=(0,))
    abstract = jax.eval_shape(lambda p: ts.create(p, self.tx), setup.params)
    t0 = time.perf_counter()
    lowered = step.lower(abstract, self.batches, self.key, consts)
    hits, t1 = _CACHE_HITS[0], time.perf_counter()
    self.compiled = lowered.compile()
    self.lower_s, self.compile_s = t1 - t0, time.perf_counter() - t1
    self.cache_hit = _CACHE_HITS[0] > hits
    self.memory = memory(self.compiled)
    self.passes = passes(method, objectives, opts, config)
    self.trainable_params = n_elements(setup.params, trainable)

  def fresh_state(self):
    return ts.create(jax.tree_util.tree_map(jnp.copy, self.setup.params), self.tx)

  def run(self, steps: int) -> float:
    """Seconds per step over `steps` steps from a fresh state (created outside the timing)."""
    state = self.fresh_state()
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(steps):
      state, out = self.compiled(state, self.batches, self.key, self.consts)
    jax.block_until_ready((state, out))
    dt = (time.perf_counter() - t0) / steps
    finite = float(training.param_diagnostics(state.params)["finite"])
    del state, out
    if finite != 1.0:
      raise FloatingPointError(f"{self.method}: non-finite parameters after {steps} steps")
    return dt


def subset_of(method: str, args) -> str:
  return PAPER_TRAINABLE[method] if args.trainable == "paper" else args.trainable


def measure(setup: Setup, names, args, precompiled=None) -> list:
  """Builds, warms up and times `names` in this process (interleaved rounds); one row each.

  `precompiled`: {method: compile seconds} of methods a `precompile` subprocess compiled
  into the persistent cache (this process then loads them from it)."""
  precompiled = precompiled or {}
  runners, rows = {}, {}
  for m in names:
    rows[m] = {"method": m, "trainable": subset_of(m, args)}
    try:
      runners[m] = r = Runner(setup, m, rows[m]["trainable"], args.batch)
      if args.compile_only:
        rows[m].update(lower_s=round(r.lower_s, 2), compile_s=round(r.compile_s, 2), cache_hit=r.cache_hit)
        continue
      r.run(1)                                             # warm up
      compile_s = precompiled.get(m, r.compile_s)
      rows[m].update(trainable_params=r.trainable_params, passes=r.passes, lower_s=round(r.lower_s, 2),
                     compile_s=round(compile_s, 2),
                     cache_hit=r.cache_hit and m not in precompiled, xla_bytes=r.memory,
                     peak_bytes_in_use=peak_bytes())
    except Exception as e:  # noqa: BLE001 - report the failure, time the others
      runners.pop(m, None)
      rows[m]["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
  if args.compile_only:
    return [rows[m] for m in names]
  times = {m: [] for m in runners}
  for _ in range(args.rounds):                             # interleaved, so drift hits all methods alike
    for m, r in list(runners.items()):
      try:
        times[m].append(r.run(args.steps))
      except Exception as e:  # noqa: BLE001
        runners.pop(m)
        rows[m]["error"] = f"{type(e).__name__}: {e}"[:300]
  for m in runners:
    rows[m]["step_s"] = round(float(np.median(times[m])), 5)
  return [rows[m] for m in names]


def child_argv(args, method: str, compile_only: bool = False) -> list:
  """This script's command line for one method in a subprocess (unset defaults left to the child)."""
  argv = [sys.executable, os.path.abspath(__file__), f"--steps={args.steps}", f"--rounds={args.rounds}",
          f"--dtype={args.dtype}", f"--trainable={args.trainable}", f"--methods={method}", "--child"]
  for flag, value in (("shape", args.shape), ("batch", args.batch), ("esd-steps", args.esd_steps),
                      ("styles", args.styles), ("objects", args.objects), ("cache-dir", args.cache_dir),
                      ("layers-per-block", args.layers_per_block)):
    if value:
      argv.append(f"--{flag}={value}")
  return argv + (["--remat"] if args.remat else []) + (["--compile-only"] if compile_only else [])


#: the slowest compiles first, so that parallel precompiles finish together.
COMPILE_ORDER = ("erasediff", "salun", "dimum", "esd", "core", "ca", "finetune")


def precompile(args, names) -> dict:
  """Compiles every method into the persistent cache in `args.jobs` parallel subprocesses
  (XLA compiles one module on one core); returns {method: compile seconds} of those that did."""
  queue = sorted(names, key=COMPILE_ORDER.index)
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
  running, done = [], {}
  while queue or running:
    while queue and len(running) < args.jobs:
      m = queue.pop(0)
      running.append((m, subprocess.Popen(child_argv(args, m, compile_only=True), stdout=subprocess.PIPE,
                                          text=True, env=env)))
    time.sleep(0.5)
    for m, proc in list(running):
      if proc.poll() is None:
        continue
      running.remove((m, proc))
      lines = [l for l in proc.stdout.read().splitlines() if l.startswith("{")]
      row = json.loads(lines[-1])["rows"][0] if (lines and not proc.returncode) else {}
      if "compile_s" in row and not row.get("cache_hit"):
        done[m] = row["compile_s"]
  return done


def isolated(args, names):
  """Each method in a fresh subprocess (its own allocator peak): (rows, the first child's info).

  This process never initializes a JAX backend, so it holds no accelerator memory."""
  rows, info = [], None
  for m in names:
    proc = subprocess.run(child_argv(args, m), stdout=subprocess.PIPE, text=True)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode or not lines:
      rows.append({"method": m, "error": f"subprocess exit {proc.returncode}"})
      continue
    child = json.loads(lines[-1])
    rows.append(child.pop("rows")[0])
    info = info or child
  return rows, info


def describe(setup: Setup, args) -> dict:
  """The run's settings (the JSON line's fields besides the rows)."""
  shape, dev = setup.shape, jax.devices()[0]
  return {"benchmark": "sd_step", "device": dev.device_kind, "backend": jax.default_backend(),
          "shape": args.shape, "block_out_channels": list(shape["unet"]["block_out_channels"]),
          "cross_attention_dim": shape["unet"]["cross_attention_dim"],
          "layers_per_block": shape["unet"]["layers_per_block"], "latent_shape": list(setup.example_shape),
          "text_shape": [shape["text_len"], shape["text_dim"]],
          "num_prompts": setup.num_prompts, "unet_params": n_elements(setup.params["unet"]),
          "prompt_table_params": n_elements(setup.params["prompts"]), "batch": args.batch,
          "dtype": args.dtype, "remat": bool(args.remat), "esd_ddim_steps": int(setup.config.esd.ddim_steps),
          "esd_steps_from": "--esd-steps" if args.esd_steps else "config esd.ddim_steps",
          "trainable": args.trainable, "steps": args.steps, "rounds": args.rounds,
          "random_weights_s": round(setup.init_s, 2)}


def header(info: dict) -> str:
  t = info["text_shape"]
  return (f"device: {info['device']} ({info['backend']}); shape {info['shape']}: UNet block_out_channels "
          f"{tuple(info['block_out_channels'])}, layers_per_block {info['layers_per_block']}, "
          f"cross_attention_dim {info['cross_attention_dim']}, "
          f"{info['unet_params']:,} UNet params + {info['prompt_table_params']:,} prompt-table "
          f"({info['num_prompts'] + 1} x {t[0]} x {t[1]}); latents {'x'.join(map(str, info['latent_shape']))}; "
          f"batch {info['batch']} per objective; dtype {info['dtype']}{', remat' if info['remat'] else ''}; "
          f"ESD partial-DDIM steps {info['esd_ddim_steps']} ({info['esd_steps_from']}); median of "
          f"{info['rounds']} rounds x {info['steps']} steps"
          f"{' (one subprocess per method)' if info['isolate'] else ', interleaved'}; "
          f"random weights in {info['random_weights_s']:.1f}s")


def fmt_mib(n) -> str:
  return "-" if n is None else f"{n / MIB:.1f}"


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--shape", choices=tuple(SHAPES), default=None, help="default: reduced on CPU, else full")
  p.add_argument("--batch", type=int, default=0, help="per objective (default: 1 on CPU, else 4, CORE's)")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--layers-per-block", type=int, default=0,
                 help="UNet layers per block (0: SD's 2; 1 roughly halves the CPU trace and compile time)")
  p.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="compute dtype (params float32)")
  p.add_argument("--remat", action="store_true", help="recompute the UNet's activations in the backward pass")
  p.add_argument("--trainable", choices=("paper",) + sd.TRAINABLE, default="paper",
                 help="'paper': each method's own subset (PAPER_TRAINABLE); else one subset for all")
  p.add_argument("--methods", default=",".join(METHODS), help="comma-separated; finetune is always added")
  p.add_argument("--esd-steps", type=int, default=0, help="ESD's partial-DDIM steps (0: config esd.ddim_steps)")
  p.add_argument("--styles", type=int, default=0, help="prompt grid styles (0: the shape's default)")
  p.add_argument("--objects", type=int, default=0, help="prompt grid objects (0: the shape's default)")
  p.add_argument("--isolate", action="store_true", help="one subprocess per method (own memory peak)")
  p.add_argument("--jobs", type=int, default=1,
                 help="compile the methods in this many parallel subprocesses first, through the compile "
                      "cache (default 1: compile in this process; the main process still traces and "
                      "lowers every method, so this pays off only with several free cores)")
  p.add_argument("--cache-dir", default="",
                 help="JAX persistent compilation cache (kept: a rerun loads the compiled steps); "
                      "default: a temporary one when --jobs > 1, else none")
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--compile-only", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args()
  names = [m.strip() for m in args.methods.split(",") if m.strip()]
  bad = [m for m in names if m not in METHODS]
  if bad:
    p.error(f"unknown methods {bad}; expected some of {', '.join(METHODS)}")
  if not args.child and "finetune" not in names:
    names.insert(0, "finetune")
  tmp_cache = None
  if args.isolate and not args.child:
    if args.cache_dir:
      args.cache_dir = os.path.abspath(args.cache_dir)
    rows, info = isolated(args, names)
    if info is None:
      raise SystemExit("every method's subprocess failed: " + json.dumps(rows))
  else:
    cpu = jax.default_backend() == "cpu"
    args.shape = args.shape or ("reduced" if cpu else "full")
    args.batch = args.batch or (1 if cpu else 4)
    args.jobs = 1 if args.child else max(1, args.jobs)
    if args.jobs > 1 and len(names) > 1 and not args.cache_dir:
      tmp_cache = args.cache_dir = tempfile.mkdtemp(prefix="sd_step_cache_")
    if args.cache_dir:
      args.cache_dir = os.path.abspath(args.cache_dir)
      use_cache(args.cache_dir)
    precompiled = {}
    try:
      if args.jobs > 1 and len(names) > 1:
        t0 = time.perf_counter()
        precompiled = precompile(args, names)
        print(f"compiled {len(precompiled)} of {len(names)} methods in {args.jobs} parallel subprocesses "
              f"in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
      quiet()
      setup = Setup(args)
      rows = measure(setup, names, args, precompiled)
    finally:
      if tmp_cache:
        shutil.rmtree(tmp_cache, ignore_errors=True)
    info = describe(setup, args)
    info["jobs"] = args.jobs
  info["isolate"] = bool(args.isolate or args.child)
  info["peak"] = None if info["backend"] == "cpu" else (
      "per method (own process)" if info["isolate"] else "cumulative in one process (methods in table order)")
  base = next((r.get("step_s") for r in rows if r["method"] == "finetune"), None)
  for r in rows:
    if base and r.get("step_s") is not None:
      r["ratio_to_finetune"] = round(r["step_s"] / base, 3)
  info["rows"] = rows
  if args.child:
    print(json.dumps(info))
    return
  print(header(info))
  peak_note = "-" if info["backend"] == "cpu" else ("own" if info["isolate"] else "cumul.")
  print(f"{'method':>10} | {'trainable':>13} | {'train params':>13} | {'step_s':>9} | {'passes (fb+f)':>14} | "
        f"{'ratio':>6} | {'lower_s':>7} | {'compile_s':>9} | {'XLA MiB':>9} | {'peak MiB (' + peak_note + ')':>16}")
  for r in rows:
    if "error" in r:
      print(f"{r['method']:>10} | {r.get('trainable', '-'):>13} | FAILED: {r['error']}")
      continue
    print(f"{r['method']:>10} | {r['trainable']:>13} | {r['trainable_params']:>13,} | {r['step_s']:>9.5f} | "
          f"{r['passes']:>14} | {r.get('ratio_to_finetune', float('nan')):>6.3f} | "
          f"{r['lower_s']:>7.1f} | {r['compile_s']:>8.1f}{'c' if r.get('cache_hit') else ' '} | "
          f"{fmt_mib(r['xla_bytes'].get('total')):>9} | {fmt_mib(r['peak_bytes_in_use']):>16}")
  print(json.dumps(info))


if __name__ == "__main__":
  main()
