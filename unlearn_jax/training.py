"""The training engine: a pure train step over one or more objectives, jitted over the mesh.

A *method* is a set of objectives (each: a data stream and a per-example loss)
plus an optax transform that combines their gradients:

  * standard training / Unseen re-training: one objective, `denoising_loss`;
  * SGU: `retain` (denoising loss on D_g) and `forget` (orthogonal or obtuse on
    D_f), combined by `unlearning.sgu(alpha)`;
  * DiMUM, SalUn, gradient ascent, SFR-on (`unlearning.methods`) add objectives
    (memorize, random-label targets, weighted ascent) the same way.

An objective's regression target is the noise by default; `Objective.target`
replaces it by a (stop-gradient) model prediction, e.g. SalUn's
eps_theta(x_t, c') or a frozen pre-trained model's output (`TargetInputs`).
Constants that every step needs (a frozen copy of the parameters, a saliency
mask) travel as `consts`, placed on the mesh once, and reach the transform as extra
keyword arguments.

The step sees the *global* batch: `train_loop` jits it over the run's mesh (`mesh`: the
batch split over every device, parameters, optimizer state and consts replicated or split
along `fsdp`), so a loss's mean is over the whole batch and XLA does the cross-device
reduction of its gradient -- data parallelism as pmap did it (one program per device,
gradients averaged), with no axis names in the step.  The gradient of each objective is
computed separately and handed to the transform: the first objective's gradient as
`updates`, the others as keyword extras `<name>_grads`.

Randomness is per *example*: example k of the global batch at step s draws its
(t, z) from fold_in(fold_in(fold_in(seed_key, s), objective), k), and dropout masks are
draws of the global batch's shape, so the same global batch gives the same update on any
mesh (up to float summation order).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from clu import parameter_overview

from unlearn_jax import checkpoints
from unlearn_jax import console
from unlearn_jax import data as data_lib
from unlearn_jax import events
from unlearn_jax import losses
from unlearn_jax import mesh as mesh_lib
from unlearn_jax import score as score_lib
from unlearn_jax import train_state as ts
from unlearn_jax.errors import check_choice, check_range

class TrainingDiverged(RuntimeError):
  """Raised when a loss or the parameters become NaN/Inf."""


class TargetInputs(NamedTuple):
  """What an `Objective.target` may use to build its regression target.

  `eps(params, labels)` evaluates the model (train=False, no dropout) at this
  objective's x_t and t with other parameters or labels; `labels` are the
  batch's conditions (None for an unconditional model); `consts` is the step's
  constants (e.g. {"frozen": pretrained params}); `keys` one PRNG key per
  example (for targets that draw, e.g. a random anchor class per step).
  """
  eps: Callable[[Any, Optional[jax.Array]], jax.Array]
  params: Any
  noised: losses.Noised
  labels: Optional[jax.Array]
  consts: Mapping[str, Any]
  keys: jax.Array


class NoiserInputs(NamedTuple):
  """What an `Objective.noiser` may use to build x_t in place of q(x_t | x_0).

  `x0` is the preprocessed batch, `keys` one key per example, `labels` the
  (possibly dropped) conditions, `params` the current parameters, `consts` the
  step's constants; `spec` the step's StepSpec (apply_fn, process, output type).
  """
  x0: jax.Array
  keys: jax.Array
  labels: Optional[jax.Array]
  params: Any
  consts: Mapping[str, Any]
  spec: Any


@dataclasses.dataclass(frozen=True)
class Objective:
  """One term of a method.

  Attributes:
    stream: which data stream feeds it ("all", "retain", "forget", "alternative", ...).
    loss: per-example loss `loss(eps_pred, target, weight) -> (B,)` in eps units.
    std_power: the weight is further multiplied by std(t)^(-std_power): 0 keeps the
      stage's weighting; p > 0 shifts the objective towards small t (see `sgu`).
    max_std: > 0 zeroes the weight of examples whose noise std(t) exceeds it (an
      objective confined to small t); 0 keeps every t.
    target: `target(TargetInputs) -> (B, ...)`, the regression target in place of
      the noise (wrapped in stop_gradient); None: the noise.
    cond_drop: probability of replacing an example's condition by the null class
      (classifier-free guidance training, Ho & Salimans 2022; 0.1 in pretraining).
    reduce: `reduce(per_example_losses) -> scalar` over the (global) batch, e.g. SFR-on's
      weighted ascent; None: the mean.
    noiser: `noiser(NoiserInputs) -> losses.Noised`, the noisy inputs in place of
      x_t ~ q(x_t | x_0) (e.g. ESD's partial DDIM from noise, Selective Amnesia's
      uniform surrogate images); None: `perturb_examples`.
    value_fn: `value_fn(loss_of_params, params) -> (value, grads)` in place
      of `jax.value_and_grad(loss_of_params)(params)`; the regression target is
      fixed before, so `loss_of_params` can be evaluated at other parameters
      (EraseDiff's value-function gap L_f(theta) - L_f(phi^K), `unlearning.erasediff`).
  """
  stream: str
  loss: Callable[..., jax.Array]
  std_power: float = 0.0
  max_std: float = 0.0
  target: Optional[Callable[[TargetInputs], jax.Array]] = None
  cond_drop: float = 0.0
  reduce: Optional[Callable[[jax.Array], jax.Array]] = None
  noiser: Optional[Callable[[NoiserInputs], losses.Noised]] = None
  value_fn: Optional[Callable[..., Any]] = None


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """The static parts of a train step (closed over, never traced)."""
  apply_fn: Callable            # apply_fn(variables, x, time, labels, train=..., rngs=...)
  process: Any                  # an SDE or the DDPM schedule
  output_type: str              # "eps" or "score"
  objectives: Mapping[str, Objective]
  weighting: str = "sigma"
  #: ema <- ema_rate ema + (1 - ema_rate) params after each step; 0: no EMA (ema = params).
  ema_rate: float = 0.999
  centered: bool = False        # data scaler: [-1, 1] if True, else [0, 1]
  random_flip: bool = False
  conditional: bool = False
  #: the null class of a conditional model (its last embedding row).
  null_label: int = 0
  #: run one objective per step in turn (step % n), e.g. SFR-on's forget/remain
  #: steps; the transform receives the active gradient and `phase`.
  alternate: bool = False
  #: a tree of Python bools shaped like the params (e.g. Stable Diffusion's
  #: cross-attention only, `models.stable_diffusion.trainable_mask`); None: all
  #: train.  Gradients are taken w.r.t. the trainable leaves only (the frozen ones
  #: get exact zeros, and their weight gradients are never computed); EraseDiff's
  #: inner loop moves only the trainable leaves too.
  trainable: Any = None


DECAYS = ("constant", "cosine")


def lr_schedule(lr: float, warmup: int = 0, decay: str = "constant", total_steps: int = 0):
  """Linear warmup to `lr` over `warmup` steps, then constant (score_sde) or a cosine
  decay to 0 at `total_steps` (a stage's length)."""
  check_choice("config.optim.decay", decay, DECAYS)
  if decay == "constant":
    return optax.linear_schedule(0.0, lr, warmup) if warmup > 0 else lr
  return optax.warmup_cosine_decay_schedule(0.0 if warmup > 0 else lr, lr, warmup,
                                            max(total_steps, warmup + 1), end_value=0.0)


OPTIMIZERS = ("adam", "sgd")


def make_optimizer(lr: float, warmup: int = 0, grad_clip: float = 1.0, b1: float = 0.9,
                   eps: float = 1e-8, method: Optional[optax.GradientTransformation] = None,
                   trainable: Any = None, decay: str = "constant",
                   total_steps: int = 0, name: str = "adam") -> optax.GradientTransformationExtraArgs:
  """optax.chain(method, clip_by_global_norm, adam with linear warmup) (score_sde's optimizer).

  `name="sgd"` (`config.optim.name`) takes the plain step params - lr * update
  (EraseDiff Algorithm 1 line 5) in place of Adam; `b1`, `eps` are Adam's only.
  `decay="cosine"` decays the rate to 0 at `total_steps` (`lr_schedule`).
  `trainable` (a bool tree, `StepSpec.trainable`): Adam keeps moments for those leaves
  only (`optax.masked`); the frozen leaves' gradients are zeros and pass through as such.
  """
  check_choice("config.optim.name", name, OPTIMIZERS)
  schedule = lr_schedule(lr, warmup, decay, total_steps)
  parts = [] if method is None else [method]
  if grad_clip and grad_clip > 0:
    parts.append(optax.clip_by_global_norm(grad_clip))
  step = optax.adam(schedule, b1=b1, eps=eps) if name == "adam" else optax.sgd(schedule)
  parts.append(step if trainable is None else optax.masked(step, trainable))
  return optax.chain(*parts)


def example_keys(rng: jax.Array, batch_size: int) -> jax.Array:
  """One key per example of the (global) batch, indexed by its position in it."""
  return jax.vmap(jax.random.fold_in, (None, 0))(rng, jnp.arange(batch_size))


def perturb_examples(process, x0: jax.Array, keys: jax.Array, weighting: str) -> losses.Noised:
  """`losses.perturb` with an independent key per example."""
  noised = jax.vmap(lambda k, x: losses.perturb(process, x[None], k, weighting))(keys, x0)
  return jax.tree_util.tree_map(lambda a: a.reshape((x0.shape[0],) + a.shape[2:]), noised)


def preprocess(x01: jax.Array, keys: jax.Array, centered: bool, random_flip: bool) -> jax.Array:
  """Scaler ([0,1] -> [-1,1] when centered) and per-example random horizontal flips (NHWC)."""
  x = data_lib.scaler(x01, centered)
  if random_flip and x.ndim == 4:
    flip = jax.vmap(lambda k: jax.random.bernoulli(jax.random.fold_in(k, 7)))(keys)
    x = jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)
  return x


def _model_eps(spec: StepSpec, noised: losses.Noised):
  """eps(params, labels, train, rngs) of the model at the noised batch (eps units)."""
  def eps(p, lab, train=False, rngs=None):
    out = spec.apply_fn({"params": p}, noised.x_t, noised.time_input, lab, train=train, rngs=rngs)
    return score_lib.to_eps(out, noised.std, spec.output_type)
  return eps


def objective_inputs(params, batch: Mapping[str, jax.Array], keys: jax.Array, spec: StepSpec,
                     objective: Objective, consts: Optional[Mapping[str, Any]] = None):
  """(noised, labels, target, weight) of one objective on its batch, with the target
  evaluated at `params` (stop-gradient) and fixed from here on."""
  consts = consts or {}
  x0 = preprocess(batch["x"], keys, spec.centered, spec.random_flip)
  labels = batch.get("labels") if spec.conditional else None
  if labels is not None and objective.cond_drop > 0:
    drop = jax.vmap(lambda k: jax.random.bernoulli(jax.random.fold_in(k, 11), objective.cond_drop))(keys)
    labels = jnp.where(drop, spec.null_label, labels)
  if objective.noiser is None:
    noised = perturb_examples(spec.process, x0, keys, spec.weighting)
  else:
    noised = jax.lax.stop_gradient(objective.noiser(NoiserInputs(x0, keys, labels, params, consts, spec)))
  if objective.target is None:
    target = noised.noise
  else:
    target = jax.lax.stop_gradient(objective.target(
        TargetInputs(_model_eps(spec, noised), params, noised, labels, consts, keys)))
  weight = noised.weight
  if objective.std_power:
    weight = weight * noised.std ** (-objective.std_power)
  if objective.max_std:
    weight = jnp.where(noised.std <= objective.max_std, weight, 0.0)
  return noised, labels, target, weight


def loss_given_inputs(params, inputs, dropout_rng, spec: StepSpec, objective: Objective) -> jax.Array:
  """The reduced loss at `params` for inputs fixed by `objective_inputs`."""
  noised, labels, target, weight = inputs
  eps_pred = _model_eps(spec, noised)(params, labels, True, {"dropout": dropout_rng})
  per = objective.loss(eps_pred, target, weight)
  return jnp.mean(per) if objective.reduce is None else objective.reduce(per)


def objective_loss(params, batch: Mapping[str, jax.Array], keys: jax.Array, dropout_rng,
                   spec: StepSpec, objective: Objective, consts: Optional[Mapping[str, Any]] = None
                   ) -> jax.Array:
  """Reduced per-example loss of one objective on its batch."""
  inputs = objective_inputs(params, batch, keys, spec, objective, consts)
  return loss_given_inputs(params, inputs, dropout_rng, spec, objective)


def all_finite(tree) -> jax.Array:
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(l)) for l in leaves]))


@jax.jit
def param_diagnostics(params) -> Dict[str, jax.Array]:
  """{"param_norm": ||params||_2, "finite": 1.0 if every parameter is finite else 0.0}: what
  `train_loop` logs and checks at each log step.  Computed here, on the state at that step,
  rather than in the train step: there, with the update's norm, these per-leaf reductions
  made up ~30% of the step's XLA compile time (the sgu_mnist:cpu UNet at O0: 17.5 s -> 13.3 s
  measured without them) for values read once per log step."""
  return {"param_norm": optax.tree.norm(params), "finite": all_finite(params).astype(jnp.float32)}


_is_none = lambda x: x is None


def split_trainable(params, trainable):
  """The trainable leaves of `params` (None in place of the frozen ones)."""
  return jax.tree_util.tree_map(lambda p, m: p if m else None, params, trainable)


def merge_trainable(sub, params, trainable):
  """`params` with its trainable leaves replaced by those of `sub` (from `split_trainable`)."""
  return jax.tree_util.tree_map(lambda m, p, s: s if m else p, trainable, params, sub, is_leaf=_is_none)


def fill_frozen(sub_grads, params, trainable):
  """Gradients of the trainable leaves -> a full tree, zeros on the frozen leaves."""
  return jax.tree_util.tree_map(lambda m, p, g: g if m else jnp.zeros_like(p), trainable, params, sub_grads,
                                is_leaf=_is_none)


def _objective_grad(state, batches, step_rng, dropout_rng, i, name, spec, consts):
  objective = spec.objectives[name]
  batch = batches[objective.stream]
  keys = example_keys(jax.random.fold_in(step_rng, i), batch["x"].shape[0])
  params, mask = state.params, spec.trainable
  inputs = objective_inputs(params, batch, keys, spec, objective, consts)
  loss_of = functools.partial(loss_given_inputs, inputs=inputs, dropout_rng=jax.random.fold_in(dropout_rng, i),
                              spec=spec, objective=objective)
  if mask is None:
    value_fn = objective.value_fn or (lambda f, p: jax.value_and_grad(f)(p))
    return value_fn(loss_of, params)
  sub_loss = lambda sub: loss_of(merge_trainable(sub, params, mask))
  if objective.value_fn is None:
    value, sub_grads = jax.value_and_grad(sub_loss)(split_trainable(params, mask))
  else:
    value, sub_grads = objective.value_fn(sub_loss, split_trainable(params, mask))
  return value, fill_frozen(sub_grads, params, mask)


def method_metrics(opt_state) -> Dict[str, jax.Array]:
  """The scalars a method's transform logs: every `log` dict field of a state in the chain
  (e.g. EraseDiff's lambda_t and cosines), keyed `method/<name>`."""
  is_logged = lambda x: isinstance(x, tuple) and hasattr(x, "_fields") and "log" in x._fields
  out = {}
  for leaf in jax.tree_util.tree_leaves(opt_state, is_leaf=is_logged):
    if is_logged(leaf):
      out.update({f"method/{k}": v for k, v in leaf.log.items()})
  return out


def train_step(state: ts.TrainState, batches: Mapping[str, Mapping[str, jax.Array]], rng: jax.Array,
               consts: Optional[Mapping[str, Any]] = None, *, spec: StepSpec,
               tx: optax.GradientTransformationExtraArgs):
  """One optimisation step on the global batch.  Pure; `train_loop` jits it over the mesh.

  `consts` (e.g. {"mask": ..., "frozen": ...}) are handed to the objectives'
  targets and to `tx.update` as keyword extras.
  """
  consts = dict(consts or {})
  step_rng = jax.random.fold_in(rng, state.step)
  dropout_rng = jax.random.fold_in(step_rng, 10_000)
  names = list(spec.objectives)
  grad = functools.partial(_objective_grad, state, batches, step_rng, dropout_rng, spec=spec, consts=consts)
  metrics = {}
  if spec.alternate:
    phase = state.step % len(names)
    branches = [functools.partial(grad, i, n) for i, n in enumerate(names)]
    if jax.default_backend() == "cpu":
      # XLA:CPU runs a conditional whose branches hold the UNet's backward pass ~30x
      # slower than straight-line code (SFR-on step 2.85 s vs fine-tune 0.083 s, digits
      # cpu model); computing every branch and selecting costs n passes instead.
      outs = [b() for b in branches]
      loss, g = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs)[phase], *outs)
    else:
      loss, g = jax.lax.switch(phase, branches)
    metrics["loss/active"] = loss
    metrics["grad_norm/active"] = optax.tree.norm(g)
    updates, opt_state = tx.update(g, state.opt_state, state.params, phase=phase, **consts)
  else:
    grads = {}
    for i, name in enumerate(names):
      loss, grads[name] = grad(i, name)
      metrics[f"loss/{name}"] = loss
      metrics[f"grad_norm/{name}"] = optax.tree.norm(grads[name])
    extras = {f"{n}_grads": grads[n] for n in names[1:]}
    updates, opt_state = tx.update(grads[names[0]], state.opt_state, state.params, **extras, **consts)
  metrics.update(method_metrics(opt_state))
  params = optax.apply_updates(state.params, updates)
  # rate 0 (no EMA, e.g. an unlearning stage by default): the EMA is the parameters, exactly.
  ema = params if spec.ema_rate == 0 else ts.ema_update(state.ema_params, params, spec.ema_rate)
  new_state = state.replace(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)
  return new_state, metrics


@dataclasses.dataclass
class LoopConfig:
  num_steps: int
  batch_size: int
  seed: int
  log_every: int = 100
  ckpt_every: int = 1000
  sample_every: int = 0
  max_to_keep: int = 2


def check_batch_size(batch_size: int, field: str = "config.training.batch_size") -> None:
  """A positive multiple of the number of devices of the mesh (a stage's 0, "config.training's",
  is resolved before this is called)."""
  check_range(field, batch_size, 1, 1 << 24, integer=True)
  mesh_lib.check_batch(batch_size, field)


HISTORY = "metrics.jsonl"


def append_history(stage_dir: str, step: int, scalars: Mapping[str, Any]) -> None:
  """One JSON line {"step": ..., <metric>: ...} per logged step (besides TensorBoard), so
  reports can read a stage's curves without TensorFlow.  A resumed run may log a step
  twice; `read_history` keeps the last."""
  with open(os.path.join(stage_dir, HISTORY), "a") as f:
    f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")


def read_history(stage_dir: str) -> list:
  """The logged scalars of a stage, one dict per step, in step order."""
  path = os.path.join(stage_dir, HISTORY)
  if not os.path.exists(path):
    return []
  rows = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        row = json.loads(line)
        rows[row["step"]] = row
  return [rows[k] for k in sorted(rows)]


def jit_step(step_fn: Callable, state, consts, m: Optional[jax.sharding.Mesh] = None):
  """(jitted step, state shardings, consts shardings): `step_fn(state, batches, rng, consts)`
  under `jax.jit` over mesh `m` (default `mesh.current()`), as `train_loop` runs it: the
  batches split over every device (`mesh.batch`), the state and consts placed by
  `mesh.tree_shardings` (replicated, or split along fsdp), rng and metrics replicated, the
  state donated.  `state` and `consts` may be arrays or ShapeDtypeStructs (`unlearn_jax.aot`
  lowers the same jit for a TPU topology)."""
  m = m or mesh_lib.current()
  state_sh, consts_sh = mesh_lib.tree_shardings(state, m), mesh_lib.tree_shardings(consts, m)
  mesh_lib.check_even(state, state_sh)
  mesh_lib.check_even(consts, consts_sh)
  rep = mesh_lib.replicated(m)
  jitted = jax.jit(step_fn, in_shardings=(state_sh, mesh_lib.batch(m), rep, consts_sh),
                   out_shardings=(state_sh, rep), donate_argnums=(0,))
  return jitted, state_sh, consts_sh


#: <stage_dir>/compile.json: the train step's lower / compile seconds (`compile_step`).
COMPILE_FILE = "compile.json"


def compile_step(stage_dir: str, stage_name: str, jitted, *args):
  """`jitted` lowered and compiled ahead of time for `args` (`jax.jit(...).lower(*args).compile()`);
  the seconds of each phase are logged and written to <stage_dir>/compile.json (the last
  compile of a resumed stage: {"lower_s", "compile_s"}; a persistent compilation cache hit
  shows as a short compile).  Returns the compiled step, called like `jitted`."""
  t0 = time.perf_counter()
  lowered = jitted.lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  logging.info("[%s] train step lowered in %.1fs, compiled in %.1fs", stage_name, t1 - t0, t2 - t1)
  if jax.process_index() == 0:
    checkpoints.write_json(os.path.join(stage_dir, COMPILE_FILE), {"lower_s": t1 - t0, "compile_s": t2 - t1})
  return compiled


def train_loop(stage_dir: str, state: ts.TrainState, step_fn: Callable, loop: LoopConfig,
               get_batches: Callable[[int], Dict[str, Dict[str, np.ndarray]]],
               *, sample_hook: Optional[Callable[[int, Any], None]] = None,
               step_hook: Optional[Callable[[int], None]] = None,
               stage_name: str = "train", consts: Optional[Mapping[str, Any]] = None) -> ts.TrainState:
  """Runs (or resumes) a training stage and returns its final (host) state.

  `step_fn(state, batches, rng, consts)` is a pure step on the global batch such as
  `functools.partial(train_step, spec=spec, tx=tx)`; it is jitted here over the run's mesh
  (`mesh.current()`): the batch split over every device, the state and `consts` (a pytree
  or None) placed once by `mesh.tree_shardings` (replicated, or split along `fsdp`), the
  state donated.  `get_batches(step)` returns this process's slice of the global batch of
  every stream for `step` (a pure function of the step, so a resumed run sees the same data).
  Checkpoints every `ckpt_every` steps and at the end; a NaN/Inf loss or
  parameter raises `TrainingDiverged` and the last good checkpoint is kept.  Logged
  scalars (TensorBoard, <stage_dir>/metrics.jsonl) are the step's metrics averaged over the
  steps since the previous log, and `param_norm` of the parameters at the log step
  (`param_diagnostics`, which also checks that they are finite).
  """
  os.makedirs(stage_dir, exist_ok=True)
  restored, start = checkpoints.restore_latest(stage_dir, state, loop.max_to_keep)   # skips unreadable ones
  if start is not None:
    state = restored
    logging.info("[%s] resumed from step %d", stage_name, start)
  mngr = checkpoints.manager(stage_dir, loop.max_to_keep)
  start = int(state.step)
  if start == 0:
    logging.info("[%s] %s parameters, %d steps of batch %d", stage_name,
                 f"{parameter_overview.count_parameters(state.params):,}", loop.num_steps, loop.batch_size)
  writer = events.EventWriter(stage_dir, enabled=jax.process_index() == 0)
  progress = console.Progress(f"[{stage_name}]", loop.num_steps, "steps", every_s=60.0, start=start)
  check_batch_size(loop.batch_size)
  consts = dict(consts or {})
  j_step, state_sh, consts_sh = jit_step(step_fn, state, consts)
  dconsts = mesh_lib.put(consts, consts_sh)
  rng = mesh_lib.put(jax.random.key(loop.seed), mesh_lib.replicated())
  dstate = mesh_lib.put(state, state_sh)
  if start < loop.num_steps:
    j_step = compile_step(stage_dir, stage_name, j_step, dstate, mesh_lib.put_batch(get_batches(start)), rng,
                          dconsts)
  last_good = start
  step = start
  acc, count = None, 0
  try:
    for step in range(start, loop.num_steps):
      dstate, metrics = j_step(dstate, mesh_lib.put_batch(get_batches(step)), rng, dconsts)
      # Logged values are means over the steps since the last log (summed on device).
      acc = metrics if acc is None else jax.tree_util.tree_map(jnp.add, acc, metrics)
      count += 1
      done = step + 1
      if done % loop.log_every == 0 or done == loop.num_steps or done % loop.ckpt_every == 0:
        m = mesh_lib.to_host(jax.tree_util.tree_map(lambda a: a / count, acc))
        acc, count = None, 0
        diag = mesh_lib.to_host(param_diagnostics(dstate.params))
        finite = m.pop("finite", 1.0) == 1.0 and diag.pop("finite") == 1.0
        m.update(diag)
        bad = [k for k, v in m.items() if not np.isfinite(v)] + ([] if finite else ["params"])
        if bad:
          raise TrainingDiverged(
              f"stage {stage_name!r} diverged at step {done}: non-finite {', '.join(bad)}; "
              f"last good checkpoint (step {last_good}) kept in {os.path.join(stage_dir, checkpoints.CKPT_DIR)}")
        writer.scalars(done, m)
        if jax.process_index() == 0:
          append_history(stage_dir, done, m)
        if done % loop.log_every == 0 or done == loop.num_steps:
          progress.update(done, " ".join(f"{k}={v:.4g}" for k, v in sorted(m.items())), force=True)
        if done % loop.ckpt_every == 0 or done == loop.num_steps:
          checkpoints.save(mngr, done, mesh_lib.to_host(dstate))
          last_good = done
      progress.update(done)
      if sample_hook is not None and loop.sample_every and done % loop.sample_every == 0:
        sample_hook(done, mesh_lib.to_host(dstate))
      if step_hook is not None:
        step_hook(done)
  finally:
    writer.close()
    mngr.close()
  return mesh_lib.to_host(dstate)
