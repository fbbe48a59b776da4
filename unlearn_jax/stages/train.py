"""The model stages: train (Standard, Unseen, pretraining), unlearn (a method of
`unlearning.methods`) and the optimisation of attack stages (`stages.attack`).

    run(exp, name, st, workdir, hooks)    # runs or resumes <workdir>/<name>/

A train stage fits the ordinary denoising loss on its stream; an unlearn stage builds its
method's objectives and transform (`objectives`), starting from scratch (re-training) or
from the evaluated weights of an earlier stage / directory (fine-tuning); the masks,
frozen targets and reset weights a method takes come from its mask stage and source.  An
unlearn stage of a closed-form method (UCE, `MethodSpec.closed_form`) is one edit of the
weights it starts from (`run_closed_form`), saved as an ordinary checkpoint (step 1).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import numpy as np
import optax

from unlearn_jax import checkpoints
from unlearn_jax import data as data_lib
from unlearn_jax import generation
from unlearn_jax import losses
from unlearn_jax import models
from unlearn_jax import train_state as ts
from unlearn_jax import training
from unlearn_jax.experiment import (Experiment, source_params, stage_ema_rate, evaluated_weights, stage_seed,
                                    state_weights)
from unlearn_jax.reporting import figures
from unlearn_jax.stages.hooks import Hooks
from unlearn_jax.unlearning import combine
from unlearn_jax.unlearning import methods as methods_lib
from unlearn_jax.unlearning import saliency
from unlearn_jax.unlearning import scissorhands as shs_lib

MASK_FILE = "mask.msgpack"


def objectives(exp: Experiment, st) -> Tuple[Dict[str, training.Objective], Any, methods_lib.Options]:
  """(objectives, gradient transform, options) of a train, attack or unlearn stage.

  Pretraining (train) and the DiMRA attack (Eq. 7) use the ordinary loss on their
  stream, with condition dropout for classifier-free guidance; an unlearn stage's
  objectives come from `unlearning.methods` (no condition dropout: the
  conditions are what is being unlearned).
  """
  cfg = exp.config
  if st.kind in ("train", "attack"):
    denoise = functools.partial(losses.denoising_loss, reduce=cfg.training.reduce)
    drop = cfg.training.cond_drop if exp.conditional else 0.0
    name = "retain" if st.kind == "train" else "attack"
    return {name: training.Objective(st.data, denoise, cond_drop=drop)}, None, methods_lib.Options()
  return methods_lib.build(st.method, st.variant, cfg, alt=exp.alt, steps=st.steps,
                           forget=exp.forget_labels, num_classes=exp.train.num_classes,
                           anchor_fn=exp.anchor_fn)


def meta(exp: Experiment, name: str, st=None) -> dict:
  ema = {} if st is None else {"ema_rate": stage_ema_rate(exp.config, st),
                               "weights": evaluated_weights(stage_ema_rate(exp.config, st))}
  return {"stage": name, "model": dataclasses.asdict(exp.model_cfg), **ema,
          "model_name": exp.config.model.name, "example_shape": list(exp.example_shape),
          "sde": dataclasses.asdict(exp.config.sde), "centered": exp.config.data.centered,
          "output": exp.config.model.output, "data_source": exp.train.source}


def init_state(exp: Experiment, name: str, st, tx, workdir: str, reset_mask=None) -> ts.TrainState:
  """Random init (re-training) or the evaluated weights of a stage / directory (fine-tuning);
  the stage's EMA starts from the same weights.

  With `reset_mask` (Scissorhands), the masked weights are replaced by a fresh init.
  """
  cfg = exp.config
  fresh = lambda: models.init_params(exp.module, jax.random.key(stage_seed(cfg, name)), exp.example_shape,
                                     conditional=exp.conditional)
  if st.init == "scratch":
    params = fresh()
  else:
    params = source_params(exp, workdir, st.init)
    if reset_mask is not None:
      params = shs_lib.reset(params, fresh(), reset_mask)
  return ts.create(params, tx)


def stage_decay(cfg, st) -> str:
  """The learning-rate decay of a train/unlearn/attack stage (its own, else config.optim's)."""
  return st.decay or cfg.optim.decay


def step_spec(exp: Experiment, objectives, alternate: bool = False, trainable=None,
              ema_rate: Optional[float] = None) -> training.StepSpec:
  cfg = exp.config
  return training.StepSpec(apply_fn=exp.apply, process=exp.process, output_type=cfg.model.output,
                           objectives=objectives, weighting=cfg.training.weighting,
                           ema_rate=cfg.model.ema_rate if ema_rate is None else ema_rate,
                           centered=cfg.data.centered,
                           random_flip=cfg.data.random_flip, conditional=exp.conditional,
                           null_label=exp.null_label, alternate=alternate, trainable=trainable)


def method_consts(options: methods_lib.Options, mask=None, frozen=None) -> Tuple[dict, Any]:
  """(consts, reset_mask): what a method's transform and its stage's init take.  `mask` (its
  mask stage's output) goes where the method's mask kind says: Selective Amnesia's Fisher to
  consts["fisher"], Scissorhands' to the weights to reset, any other (SalUn, SFR-on, or a
  SalUn mask on a method without one) to the gradient mask consts["mask"]; `frozen` (the
  weights it starts from) to consts["frozen"] when the method needs them."""
  consts, reset_mask = {}, None
  if mask is not None:
    if options.mask == "fisher":
      consts["fisher"] = mask
    elif options.mask == "shs":
      reset_mask = mask
    else:
      consts["mask"] = mask
  if options.frozen:
    consts["frozen"] = frozen
  return consts, reset_mask


def with_mask(method, options: methods_lib.Options, consts: dict):
  """A SalUn saliency mask on a method that has no mask of its own: `combine.masked()`
  after the method's combination (e.g. SalUn's mask on CORE or EraseDiff)."""
  if "mask" not in consts or options.mask is not None:
    return method
  return combine.masked() if method is None else optax.chain(method, combine.masked())


def is_closed_form(st) -> bool:
  """An unlearn stage whose method is one closed-form edit (`methods.CLOSED_FORM`)."""
  return st.kind == "unlearn" and st.method in methods_lib.CLOSED_FORM


def edited_state(params) -> ts.TrainState:
  """The TrainState a closed-form stage saves: step 1, params = EMA = the edited weights, the
  (empty) state of `optax.identity()`."""
  return ts.TrainState(step=np.ones((), np.int32), params=params, ema_params=params,
                       opt_state=optax.identity().init(params))


def start_stage_dir(stage_dir: str, meta_content: dict) -> None:
  """Creates the stage directory and writes its meta.json once (a resumed stage keeps the first)."""
  os.makedirs(stage_dir, exist_ok=True)
  if not os.path.exists(os.path.join(stage_dir, checkpoints.META)):
    checkpoints.write_json(os.path.join(stage_dir, checkpoints.META), meta_content)


def finish_stage_dir(stage_dir: str, t0: float, **done) -> None:
  """DONE.json: `done` (e.g. steps) and the wall time since t0; the pipeline skips the stage after."""
  checkpoints.write_json(os.path.join(stage_dir, checkpoints.DONE), {**done, "wall_time_s": time.time() - t0})


def run_closed_form(exp: Experiment, name: str, st, workdir: str, hooks: Hooks = Hooks()) -> None:
  """An unlearn stage of a closed-form method: the evaluated weights of `st.init` edited once
  (`methods.edit`), saved as the stage's checkpoint at step 1 (a TrainState whose params and
  EMA are the edited weights, optimizer state empty), then DONE.json ({"steps": 0,
  "closed_form": true}).  Resumable: a stage with a checkpoint that restores is not edited
  again (the pipeline skips one with DONE.json).  `st.steps` is ignored."""
  cfg = exp.config
  stage_dir = os.path.join(workdir, name)
  start_stage_dir(stage_dir, meta(exp, name, st))
  t0 = time.time()
  source = source_params(exp, workdir, st.init)
  restored, step = checkpoints.restore_latest(stage_dir, edited_state(source), cfg.training.max_to_keep)
  if restored is None:
    params = jax.device_get(methods_lib.edit(st.method, st.variant, cfg, source, alt=exp.alt,
                                             forget=exp.forget_labels, num_classes=exp.train.num_classes,
                                             anchor_fn=exp.anchor_fn))
    if not all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(params)):
      raise training.TrainingDiverged(f"stage {name!r}: the closed-form edit of method {st.method!r} is not "
                                      "finite (an ill-conditioned solve?); nothing was saved")
    mngr = checkpoints.manager(stage_dir, cfg.training.max_to_keep)
    try:
      checkpoints.save(mngr, 1, edited_state(params))
    finally:
      mngr.close()
    logging.info("[%s] %s: closed-form edit in %.1fs", name, st.method, time.time() - t0)
  else:
    logging.info("[%s] checkpoint of step %d found: the edit is not recomputed", name, step)
  if hooks.step is not None:
    hooks.step(1)
  finish_stage_dir(stage_dir, t0, steps=0, closed_form=True)


def work(exp: Experiment, st) -> Tuple[int, str]:
  """The stage's amount of work for the run's progress line: (steps; a closed-form edit: none)."""
  del exp
  return (0, "") if is_closed_form(st) else (st.steps, "steps")


@dataclasses.dataclass(frozen=True)
class StepParts:
  """What a train / unlearn / attack stage's loop runs: the pure step, its transform, the
  consts it takes (masks, frozen weights), the weights a Scissorhands reset replaces, and
  the stage's objectives (their streams name the step's batches)."""
  step_fn: Callable
  tx: Any
  spec: training.StepSpec
  consts: dict
  reset_mask: Any
  objectives: Dict[str, training.Objective]


def step_parts(exp: Experiment, st, source=None, mask=None) -> StepParts:
  """The step of a train / unlearn / attack stage, given the weights it fine-tunes from
  (`source`, needed when the method keeps a frozen copy) and its mask stage's mask: arrays,
  or ShapeDtypeStructs for compiling without weights (`unlearn_jax.aot`)."""
  cfg = exp.config
  objs, method, options = objectives(exp, st)
  lr = options.lr if options.lr is not None else st.lr if st.lr is not None else cfg.optim.lr
  spec = step_spec(exp, objs, options.alternate, exp.task.trainable(exp, st), ema_rate=stage_ema_rate(cfg, st))
  consts, reset_mask = method_consts(options, mask, source if options.frozen else None)
  tx = training.make_optimizer(lr, warmup=cfg.optim.warmup, grad_clip=cfg.optim.grad_clip,
                               b1=cfg.optim.b1, eps=cfg.optim.eps, method=with_mask(method, options, consts),
                               trainable=spec.trainable, decay=stage_decay(cfg, st), total_steps=st.steps,
                               name=cfg.optim.name)
  return StepParts(functools.partial(training.train_step, spec=spec, tx=tx), tx, spec, consts, reset_mask, objs)


def needs_source(exp: Experiment, st) -> bool:
  """Whether the stage's method keeps a frozen copy of the weights it starts from."""
  return bool(objectives(exp, st)[2].frozen)


def run(exp: Experiment, name: str, st, workdir: str, hooks: Hooks = Hooks(),
        eval_hook: Optional[Callable[[int, Any], None]] = None, eval_every: int = 0,
        given_streams: Optional[Dict[str, data_lib.Dataset]] = None, seed: Optional[int] = None) -> None:
  """train / unlearn / attack: runs (or resumes) the stage's optimisation (a closed-form
  method's one edit: `run_closed_form`).  `given_streams` (stream name -> data set) replace
  `exp.stream` for those names (an attack's benign / few-shot data, `experiment.attack_stream`);
  `seed` (default `stage_seed`) sets the batches and the steps' keys (`experiment.attack_seed`)."""
  if is_closed_form(st):
    return run_closed_form(exp, name, st, workdir, hooks)
  cfg = exp.config
  stage_dir = os.path.join(workdir, name)
  ema_rate = stage_ema_rate(cfg, st)
  mask = saliency.load_mask(os.path.join(workdir, st.mask, MASK_FILE)) if st.kind == "unlearn" and st.mask \
      else None
  parts = step_parts(exp, st, source_params(exp, workdir, st.init) if needs_source(exp, st) else None, mask)
  objs, consts = parts.objectives, parts.consts
  start_stage_dir(stage_dir, meta(exp, name, st))
  state = init_state(exp, name, st, parts.tx, workdir, parts.reset_mask)
  seed = stage_seed(cfg, name) if seed is None else seed
  given_streams = given_streams or {}
  streams = {o.stream: given_streams[o.stream] if o.stream in given_streams else exp.stream(o.stream, workdir)
             for o in objs.values()}
  batch = st.batch_size or cfg.training.batch_size

  def get_batches(step):
    return {k: data_lib.batch_at_step(ds, step, batch, seed + i,
                                      process_index=jax.process_index(),
                                      process_count=jax.process_count())
            for i, (k, ds) in enumerate(sorted(streams.items()))}

  def sample_hook(step, state):
    if eval_hook is not None and eval_every and step % eval_every == 0:
      eval_hook(step, state)
    if cfg.training.sample_every and step % cfg.training.sample_every == 0:
      lab = generation.grid_labels(exp, cfg.eval.grid_size)
      x = generation.generate(exp, state_weights(state, ema_rate), cfg.eval.grid_size if lab is None else len(lab),
                   jax.random.key(step), labels=lab)
      figures.save_samples(os.path.join(stage_dir, "samples", f"step_{step:07d}.png"), x, exp.is_image,
                              cols=len(x) // exp.train.num_classes if exp.conditional else None)

  every = [e for e in (cfg.training.sample_every, eval_every if eval_hook else 0) if e]
  loop = training.LoopConfig(num_steps=st.steps, batch_size=batch, seed=seed,
                             log_every=cfg.training.log_every, ckpt_every=cfg.training.ckpt_every,
                             sample_every=int(np.gcd.reduce(every)) if every else 0,
                             max_to_keep=cfg.training.max_to_keep)
  t0 = time.time()
  final = training.train_loop(stage_dir, state, parts.step_fn, loop, get_batches, sample_hook=sample_hook,
                              step_hook=hooks.step,
                              stage_name=name, consts=consts)
  if eval_hook is not None:
    eval_hook(st.steps, final)
  finish_stage_dir(stage_dir, t0, steps=st.steps)
