"""The attack stage: DiMRA (DiMUM paper Eq. 7), the relearning attack on an unlearned model;
st.attack "embedding" / "condition" optimise a condition of the frozen model instead
(`attacks.condition`, `run_condition`)."""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time

import jax
import numpy as np

from unlearn_jax import checkpoints
from unlearn_jax import data as data_lib
from unlearn_jax import models
from unlearn_jax import training
from unlearn_jax.attacks import condition
from unlearn_jax.reporting import figures
from unlearn_jax import train_state as ts
from unlearn_jax.experiment import Experiment, source_params, stage_ema_rate, stage_seed, state_weights
from unlearn_jax.stages import train as train_stage
from unlearn_jax.stages.hooks import Hooks

CURVE_FILE = "curve.json"
INFO_FILE = "attack.json"


def run(exp: Experiment, name: str, st, workdir: str, hooks: Hooks = Hooks()) -> None:
  """DiMRA (Eq. 7): the ordinary loss on the auxiliary stream, AR_DiMRA and AR_CL every
  `eval_every` steps (and at 0 and the end) into <stage>/curve.json and curve.csv."""
  if st.attack in condition.ATTACKS:
    return run_condition(exp, name, st, workdir, hooks)
  cfg = exp.config
  stage_dir = os.path.join(workdir, name)
  os.makedirs(stage_dir, exist_ok=True)
  clf = exp.task.classifier_params(exp, workdir)
  curve_path = os.path.join(stage_dir, CURVE_FILE)
  curve = checkpoints.read_json(curve_path) if os.path.exists(curve_path) else {}
  key = jax.random.key(stage_seed(cfg, name))
  rate = stage_ema_rate(cfg, st)

  def record(step, state_or_params):
    # step 0: the unlearned stage's evaluated weights, which the attack starts from;
    # later: the attack's own evaluated weights (its parameters unless st.ema_rate > 0).
    if str(step) in curve:
      return
    params = state_weights(state_or_params, rate) if isinstance(state_or_params, ts.TrainState) \
        else state_or_params
    r = exp.task.forget_rates(exp, params, clf, cfg.eval.attack_num_samples, jax.random.fold_in(key, step))
    curve[str(step)] = {"ar": r["ar"], "ar_cl": r["ar_cl"]}
    checkpoints.write_json(curve_path, curve)
    logging.info("[%s] step %d AR_DiMRA %.3f AR_CL %.3f", name, step, r["ar"], r["ar_cl"])

  record(0, source_params(exp, workdir, st.init))
  train_stage.run(exp, name, st, workdir, hooks, eval_hook=record, eval_every=st.eval_every)
  steps = sorted(int(k) for k in curve)
  figures.write_curve_csv(os.path.join(stage_dir, "curve.csv"), steps,
                          {"ar_dimra": [curve[str(k)]["ar"] for k in steps],
                           "ar_cl": [curve[str(k)]["ar_cl"] for k in steps]})


def write_attack_info(exp: Experiment, name: str, st, stage_dir: str) -> dict:
  """<stage_dir>/attack.json, written once (shared15.md's schema): the attack, its data, its
  budget, the stage seed and the model attacked.  (A minimal stand-in for helper A's.)"""
  path = os.path.join(stage_dir, INFO_FILE)
  if os.path.exists(path):
    return checkpoints.read_json(path)
  cfg = exp.config
  info = {"attack": st.attack, "data": st.data, "init": st.init, "seed": stage_seed(cfg, name),
          "budget": {"steps": st.steps, "lr": st.lr if st.lr is not None else cfg.optim.lr,
                     "batch_size": st.batch_size or cfg.training.batch_size, "shots": st.shots,
                     "eps": st.eps, "classes": []}}
  checkpoints.write_json(path, info)
  return info


def run_condition(exp: Experiment, name: str, st, workdir: str, hooks: Hooks = Hooks()) -> None:
  """The embedding / condition attack (`attacks.condition`) on the frozen weights of `st.init`:
  Adam (config.optim's name, b1, eps; no warmup, no clipping; the stage's decay), projected
  onto the eps-ball for "condition", on the class-embedding rows, fitted to
  `shots` forget images (the first of D_f in the stage seed's permutation, `DEFAULT_SHOTS`
  if 0).  A curve point {"ar", "ar_cl"} of `config.eval.attack_num_samples` samples
  conditioned on the rows every `eval_every` steps (and at 0, the starting rows, and at the
  end) into curve.json / curve.csv ("ar_cl": the share classified as the alternative of the
  class a row stands for; no "fd": with the weights frozen, the retained classes' samples
  do not change); attack.json records the effective budget.  The checkpoint
  holds {"net": the init stage's weights, "rows": e}; a killed attack resumes from it."""
  cfg = exp.config
  stage_dir = os.path.join(workdir, name)
  os.makedirs(stage_dir, exist_ok=True)
  st = dataclasses.replace(st, shots=st.shots or condition.DEFAULT_SHOTS,
                           lr=condition.DEFAULT_LR if st.lr is None else st.lr,
                           batch_size=st.batch_size or cfg.training.batch_size)
  write_attack_info(exp, name, st, stage_dir)
  if not os.path.exists(os.path.join(stage_dir, checkpoints.META)):
    checkpoints.write_json(os.path.join(stage_dir, checkpoints.META),
                           {**train_stage.meta(exp, name, st), "attack": st.attack, "init": st.init})
  seed = stage_seed(cfg, name)
  forget = exp.streams["forget"]
  shots = data_lib.subset(forget, np.sort(np.random.default_rng(seed).permutation(len(forget))[:st.shots]))
  net = source_params(exp, workdir, st.init)
  rows0 = condition.initial_rows(models.class_table(net), exp.forget_labels, condition.INITS[st.attack])
  tx = training.make_optimizer(st.lr, grad_clip=0.0, b1=cfg.optim.b1, eps=cfg.optim.eps, name=cfg.optim.name,
                               decay=train_stage.stage_decay(cfg, st), total_steps=st.steps)
  spec = condition.AttackSpec(apply_fn=exp.apply, process=exp.process, output_type=cfg.model.output,
                              forget_labels=tuple(exp.forget_labels), weighting=cfg.training.weighting,
                              reduce=cfg.training.reduce, centered=cfg.data.centered,
                              random_flip=cfg.data.random_flip, eps=st.eps)
  clf = exp.task.classifier_params(exp, workdir)
  curve_path = os.path.join(stage_dir, CURVE_FILE)
  curve = checkpoints.read_json(curve_path) if os.path.exists(curve_path) else {}
  key = jax.random.key(seed)

  def record(step, rows):
    if str(step) in curve:
      return
    r = exp.task.forget_rates(exp, net, clf, cfg.eval.attack_num_samples, jax.random.fold_in(key, step),
                              cond_rows=np.asarray(rows))
    curve[str(step)] = {"ar": r["ar"], "ar_cl": r["ar_cl"]}
    checkpoints.write_json(curve_path, curve)
    logging.info("[%s] step %d AR %.3f AR_CL %.3f", name, step, r["ar"], r["ar_cl"])

  def get_batches(step):
    return {"forget": data_lib.batch_at_step(shots, step, st.batch_size, seed, process_index=jax.process_index(),
                                             process_count=jax.process_count())}

  record(0, rows0)
  loop = training.LoopConfig(num_steps=st.steps, batch_size=st.batch_size, seed=seed,
                             log_every=cfg.training.log_every, ckpt_every=cfg.training.ckpt_every,
                             sample_every=st.eval_every, max_to_keep=cfg.training.max_to_keep)
  t0 = time.time()
  final = training.train_loop(stage_dir, condition.init_state(net, rows0, tx),
                              functools.partial(condition.attack_step, spec=spec, tx=tx), loop, get_batches,
                              sample_hook=lambda step, state: record(step, state.params["rows"]),
                              step_hook=hooks.step, stage_name=name, consts={"rows0": rows0})
  record(st.steps, final.params["rows"])
  steps = sorted(int(k) for k in curve)
  figures.write_curve_csv(os.path.join(stage_dir, "curve.csv"), steps,
                          {"ar_dimra": [curve[str(k)]["ar"] for k in steps],
                           "ar_cl": [curve[str(k)]["ar_cl"] for k in steps]})
  checkpoints.write_json(os.path.join(stage_dir, checkpoints.DONE),
                         {"steps": st.steps, "wall_time_s": time.time() - t0})
