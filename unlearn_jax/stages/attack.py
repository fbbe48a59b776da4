"""The attack stage: fine-tuning attacks on an unlearned model (issue 15).

DiMRA (DiMUM paper Eq. 7) fine-tunes the unlearned model (`init`) with the ordinary loss on
an auxiliary stream (data="retain": assumption (i); "test_retain": (ii); a synthesize
stage); benign fine-tuning (data="benign") does the same on D_r's examples of unrelated
classes (`experiment.benign_classes`: concept resurgence); few-shot relearning
(data="fewshot") on `shots` forget examples (`experiment.fewshot_indices`: nested in k, the
same for every attacked model).  An attack's seed (batches, noise, evaluation keys) comes from
what the attack is, not from the model it attacks (`experiment.attack_seed`).  Every
`eval_every` steps (and at 0, the unlearned model, and at the end) a curve point goes to
<stage>/curve.json: {"<step>": {"ar", "ar_cl", "fd"[, "nll_forget"]}} (`exp.task.forget_rates`
and `attack_measures`; for an unconditional model "ar" is the share of samples classified as
a forgotten class, "ar_cl" NaN) and curve.csv; <stage>/attack.json records the attack and its
budget (`write_attack_info`); <stage>/reference.json the pretrained model's values at step 0,
measured with the same samples, sampler and keys as every curve point (`write_reference`).  st.attack "embedding" / "condition" / "textual_inversion"
optimise a condition of the frozen conditional model instead (`attacks.condition`, `run_condition`).  A killed attack resumes: the training from its checkpoint,
the curve from the points already written (not recomputed).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from typing import Optional, Tuple

import jax
import numpy as np

from unlearn_jax import checkpoints
from unlearn_jax import data as data_lib
from unlearn_jax import generation
from unlearn_jax import models
from unlearn_jax import training
from unlearn_jax.attacks import condition
from unlearn_jax.errors import UserError
from unlearn_jax.reporting import figures
from unlearn_jax import train_state as ts
from unlearn_jax.experiment import (Experiment, attack_seed, attack_stream, benign_classes, fewshot_indices,
                                    forget_draw_seed, pretrained_of, source_params, stage_ema_rate, state_weights)
from unlearn_jax.stages import train as train_stage
from unlearn_jax.stages.hooks import Hooks

CURVE_FILE = "curve.json"
INFO_FILE = "attack.json"
REFERENCE_FILE = "reference.json"
#: prompt_tokens: {"<step>": [the discrete prompt of each forgotten class]} of every curve point.
PROMPTS_FILE = "prompts.json"
#: prompt_tokens: the original model's target images, generated once.
TARGETS_FILE = "targets.npz"
TARGETS_KEY = 1 << 30
#: curve.json point key -> curve.csv column (a column only when every point has the key).
CSV_COLUMNS = {"ar": "ar_dimra", "ar_cl": "ar_cl", "fd": "fd", "nll_forget": "nll_forget", "ar_top1": "ar_top1",
               "ua": "ua", "nudity_total": "nudity_total", "clip_score": "clip_score"}


def attack_info(exp: Experiment, name: str, st, aux_size: Optional[int] = None) -> dict:
  """attack.json's content (shared15.md): the attack, its data, its budget (steps, the
  effective lr and batch size, shots, eps, the classes benign fine-tuning uses), its seed
  (`attack_seed`) and the model attacked; a few-shot or condition attack also lists its D_f
  indices (`fewshot_indices`); "aux_size" the examples it trains on (None: not counted) and
  "optim" what else sets its optimisation (warmup, decay, clipping, the condition dropout of
  a conditional model's fine-tuning, the EMA of its evaluated weights)."""
  del name
  cfg = exp.config
  seed = attack_seed(cfg, st)
  classes = benign_classes(exp, st.classes) if st.data == "benign" else tuple(st.classes)
  info = {"attack": st.attack, "data": st.data, "init": st.init, "seed": seed,
          "budget": {"steps": st.steps, "lr": st.lr if st.lr is not None else cfg.optim.lr,
                     "batch_size": st.batch_size or cfg.training.batch_size, "shots": st.shots,
                     "eps": st.eps, "classes": [int(c) for c in classes], "tokens": int(st.tokens)},
          "aux_size": None if aux_size is None else int(aux_size)}
  if st.attack in condition.ATTACKS:       # `condition_parts`: Adam on the rows, no warmup, no clipping
    info["optim"] = {"name": cfg.optim.name, "warmup": 0, "decay": train_stage.stage_decay(cfg, st),
                     "grad_clip": 0.0, "cond_drop": 0.0, "ema_rate": 0.0}
  else:                                    # `train_stage.step_parts`: the run's optimiser settings
    info["optim"] = {"name": cfg.optim.name, "warmup": int(cfg.optim.warmup),
                     "decay": train_stage.stage_decay(cfg, st), "grad_clip": float(cfg.optim.grad_clip),
                     "cond_drop": float(cfg.training.cond_drop) if exp.conditional else 0.0,
                     "ema_rate": float(stage_ema_rate(cfg, st))}
  if st.data == "fewshot" or st.attack in condition.ATTACKS:
    info["fewshot_indices"] = fewshot_indices(len(exp.streams["forget"]), st.shots,
                                              forget_draw_seed(cfg)).tolist()
  return info


def write_attack_info(exp: Experiment, name: str, st, stage_dir: str, aux_size: Optional[int] = None) -> dict:
  """Writes <stage_dir>/attack.json once (a resumed attack keeps the first one) and returns it."""
  path = os.path.join(stage_dir, INFO_FILE)
  if os.path.exists(path):
    return checkpoints.read_json(path)
  info = attack_info(exp, name, st, aux_size)
  os.makedirs(stage_dir, exist_ok=True)
  checkpoints.write_json(path, info)
  return info


def rate_scalars(rates: dict) -> dict:
  """A curve point's share of the task's `forget_rates`: "ar", "ar_cl" and every other scalar
  it measures (UnlearnCanvas' top-1 AR and UA, the prompts task's nudity counts), as floats."""
  return {k: float(v) for k, v in rates.items()
          if k in ("ar", "ar_cl") or (isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool))}


def write_reference(exp: Experiment, name: str, st, workdir: str, seed: int, num_samples: int,
                    measure) -> dict:
  """<stage>/reference.json: the pretrained model's curve measures (`pretrained_of` the attacked
  model: a stage, a directory or a named model) from `measure(params)`, which must use the
  same n, sampler, guidance and keys as the curve's step-0 point.  An earlier attack stage
  with the same pretrained model, seed and n measured the same thing: its values are reused
  ("shared_with").  A model trained from scratch has no pretrained model: "values" null."""
  cfg = exp.config
  path = os.path.join(workdir, name, REFERENCE_FILE)
  if os.path.exists(path):
    return checkpoints.read_json(path)
  pre = pretrained_of(cfg, st.init)
  ref = {"pretrained": pre, "seed": int(seed), "num_samples": int(num_samples), "step": 0, "values": None}
  for other in cfg.stage_order if pre is not None else ():
    other_path = os.path.join(workdir, other, REFERENCE_FILE)
    if other != name and cfg.stages[other].kind == "attack" and os.path.exists(other_path):
      got = checkpoints.read_json(other_path)
      if all(got.get(k) == ref[k] for k in ("pretrained", "seed", "num_samples")) and got.get("values"):
        ref.update(values=got["values"], shared_with=other)
        break
  if pre is not None and ref["values"] is None:
    ref["values"] = {k: float(v) for k, v in measure(source_params(exp, workdir, pre)).items()}
  checkpoints.write_json(path, ref)
  logging.info("[%s] pretrained %s at the curve's keys: %s", name, pre, ref["values"])
  return ref


def write_curve_csv(stage_dir: str, curve: dict) -> None:
  """curve.csv: one row per point, the `CSV_COLUMNS` every point has."""
  steps = sorted(int(k) for k in curve)
  points = [curve[str(k)] for k in steps]
  figures.write_curve_csv(os.path.join(stage_dir, "curve.csv"), steps,
                          {col: [p[key] for p in points] for key, col in CSV_COLUMNS.items()
                           if all(key in p for p in points)})


def work(exp: Experiment, st) -> Tuple[int, str]:
  """The stage's amount of work for the run's progress line: (its budget of steps)."""
  del exp
  return st.steps, "steps"


def run(exp: Experiment, name: str, st, workdir: str, hooks: Hooks = Hooks()) -> None:
  """A fine-tuning attack: the ordinary loss on `attack_stream(exp, st)`, a curve point every
  `eval_every` steps (and at 0 and the end) into <stage>/curve.json and curve.csv."""
  if st.attack in condition.ATTACKS:
    return run_condition(exp, name, st, workdir, hooks)
  cfg = exp.config
  stage_dir = os.path.join(workdir, name)
  os.makedirs(stage_dir, exist_ok=True)
  stream = attack_stream(exp, st, workdir)
  write_attack_info(exp, name, st, stage_dir, aux_size=len(stream))
  clf = exp.task.classifier_params(exp, workdir)
  curve_path = os.path.join(stage_dir, CURVE_FILE)
  curve = checkpoints.read_json(curve_path) if os.path.exists(curve_path) else {}
  seed = attack_seed(cfg, st)
  key = jax.random.key(seed)
  rate = stage_ema_rate(cfg, st)
  n = cfg.eval.attack_num_samples
  cache = {}                       # the task's reference statistics, computed once per stage

  def measure(params, step):
    rng = jax.random.fold_in(key, step)
    r = exp.task.forget_rates(exp, params, clf, n, rng)
    extra = exp.task.attack_measures(exp, params, clf, n, jax.random.fold_in(rng, 1), rates=r, cache=cache)
    return {**rate_scalars(r), **{k: float(v) for k, v in extra.items()}}

  def record(step, state_or_params):
    # step 0: the unlearned stage's evaluated weights, which the attack starts from;
    # later: the attack's own evaluated weights (its parameters unless st.ema_rate > 0).
    if str(step) in curve:
      return
    params = state_weights(state_or_params, rate) if isinstance(state_or_params, ts.TrainState) \
        else state_or_params
    curve[str(step)] = point = measure(params, step)
    checkpoints.write_json(curve_path, curve)
    logging.info("[%s] step %d %s", name, step, " ".join(f"{k} {v:.3f}" for k, v in point.items()))

  write_reference(exp, name, st, workdir, seed, n, lambda params: measure(params, 0))
  record(0, source_params(exp, workdir, st.init))
  train_stage.run(exp, name, st, workdir, hooks, eval_hook=record, eval_every=st.eval_every,
                  given_streams={st.data: stream}, seed=seed)
  write_curve_csv(stage_dir, curve)


def condition_stage(exp: Experiment, st):
  """The stage entry a condition attack runs with: its shots, lr, batch size and (prompt
  tokens) token count resolved."""
  tokens = (st.tokens or condition.DEFAULT_TOKENS) if st.attack == "prompt_tokens" else st.tokens
  return dataclasses.replace(st, shots=st.shots or condition.DEFAULT_SHOTS,
                             lr=condition.DEFAULT_LR if st.lr is None else st.lr,
                             batch_size=st.batch_size or exp.config.training.batch_size, tokens=tokens)


def original_targets(exp: Experiment, st, workdir: str, stage_dir: str, shots: data_lib.Dataset,
                     rng: jax.Array) -> data_lib.Dataset:
  """`shots` with its examples replaced by what the original model (`pretrained_of` the
  attacked one) generates under the same forget prompts: UnlearnDiffAtk's targets (written to
  <stage>/targets.npz once, read back on resume)."""
  path = os.path.join(stage_dir, TARGETS_FILE)
  if not os.path.exists(path):
    pre = pretrained_of(exp.config, st.init)
    if pre is None:
      raise UserError(f"config.stages.{st.init}.init", "scratch", "prompt_tokens attacks a model fine-tuned from "
                      "a pretrained one: its targets are the pretrained model's images")
    x = np.asarray(generation.generate(exp, source_params(exp, workdir, pre), len(shots), rng,
                                       labels=np.asarray(shots.labels)), np.float32)
    checkpoints.save_npz(path, images=x, labels=np.asarray(shots.labels))
  with np.load(path) as f:
    return dataclasses.replace(shots, images=f["images"], labels=f["labels"],
                               source=f"generated by {pretrained_of(exp.config, st.init)} (prompt_tokens targets)")


def condition_space(exp: Experiment, st) -> Optional[condition.ConditionSpace]:
  """The task's space of a token attack (`condition.INITS` "token": textual inversion, prompt
  tokens); None for the attacks on rows of the condition table."""
  if condition.INITS[st.attack] != "token":
    return None
  if st.attack == "prompt_tokens":
    return exp.task.prompt_tokens(exp, st.tokens)
  return exp.task.textual_inversion(exp)


def condition_parts(exp: Experiment, st):
  """(step_fn, spec, init) of a condition / embedding / textual-inversion attack stage (`st`
  from `condition_stage`): `init(net) -> (state, consts)` on the frozen weights `net` (pure in
  net, so `jax.eval_shape(init, shapes)` gives them without weights: `unlearn_jax.aot`)."""
  cfg = exp.config
  tx = training.make_optimizer(st.lr, grad_clip=0.0, b1=cfg.optim.b1, eps=cfg.optim.eps, name=cfg.optim.name,
                               decay=train_stage.stage_decay(cfg, st), total_steps=st.steps)
  space = condition_space(exp, st)

  def init(net):
    s = space or condition.ConditionSpace(
        rows0=condition.initial_rows(models.class_table(net), exp.forget_labels, condition.INITS[st.attack]),
        to_condition=None, consts={})
    return condition.init_state(s.rows0, tx), {"net": net, "rows0": s.rows0, **s.consts}

  spec = condition.AttackSpec(apply_fn=exp.apply, process=exp.process, output_type=cfg.model.output,
                              forget_labels=tuple(exp.forget_labels), weighting=cfg.training.weighting,
                              reduce=cfg.training.reduce, centered=cfg.data.centered,
                              random_flip=cfg.data.random_flip, eps=st.eps,
                              to_condition=None if space is None else space.to_condition)
  return functools.partial(condition.attack_step, spec=spec, tx=tx), spec, init


def run_condition(exp: Experiment, name: str, st, workdir: str, hooks: Hooks = Hooks()) -> None:
  """The embedding / condition / textual-inversion attack (`attacks.condition`; textual
  inversion's token space from the task, `textual_inversion`) on the frozen weights of `st.init`:
  Adam (config.optim's name, b1, eps; no warmup, no clipping; the stage's decay), projected
  onto the eps-ball for "condition", on the class-embedding rows, fitted to
  `shots` forget images (the first of D_f in the stage seed's permutation, `DEFAULT_SHOTS`
  if 0).  A curve point {"ar", "ar_cl"} of `config.eval.attack_num_samples` samples
  conditioned on the rows every `eval_every` steps (and at 0, the starting rows, and at the
  end) into curve.json / curve.csv ("ar_cl": the share classified as the alternative of the
  class a row stands for; no "fd": with the weights frozen, the retained classes' samples
  do not change); attack.json records the effective budget.  The checkpoint
  holds the rows e only (the init stage's weights stay where they are); a killed attack
  resumes from it."""
  cfg = exp.config
  stage_dir = os.path.join(workdir, name)
  st = condition_stage(exp, st)
  train_stage.start_stage_dir(stage_dir, {**train_stage.meta(exp, name, st), "attack": st.attack, "init": st.init})
  seed = attack_seed(cfg, st)
  key = jax.random.key(seed)
  forget = exp.streams["forget"]
  shots = data_lib.subset(forget, fewshot_indices(len(forget), st.shots, forget_draw_seed(cfg)))
  if st.attack == "prompt_tokens":          # UnlearnDiffAtk's targets: the original model's images
    shots = original_targets(exp, st, workdir, stage_dir, shots, jax.random.fold_in(key, TARGETS_KEY))
  write_attack_info(exp, name, st, stage_dir, aux_size=len(shots))
  net = source_params(exp, workdir, st.init)
  step_fn, spec, init = condition_parts(exp, st)
  state0, consts = init(net)
  rows0 = consts["rows0"]
  forget_idx = np.arange(len(exp.forget_labels))
  space = condition_space(exp, st)
  if space is not None and space.eval_condition is not None:    # a discrete prompt: not jitted
    cond_of = lambda rows, c: space.eval_condition(np.asarray(rows), forget_idx, c)
  else:
    cond_of = jax.jit(lambda rows, c: condition.conditions(rows, forget_idx, c, spec))
  clf = exp.task.classifier_params(exp, workdir)
  curve_path = os.path.join(stage_dir, CURVE_FILE)
  curve = checkpoints.read_json(curve_path) if os.path.exists(curve_path) else {}
  prompts_path = os.path.join(stage_dir, PROMPTS_FILE)
  prompts = checkpoints.read_json(prompts_path) if os.path.exists(prompts_path) else {}
  n = cfg.eval.attack_num_samples

  def record(step, rows):
    if str(step) in curve:
      return
    if space is not None and space.describe is not None:     # the prompt the point is measured on
      prompts[str(step)] = space.describe(np.asarray(rows))
      checkpoints.write_json(prompts_path, prompts)
    r = exp.task.forget_rates(exp, net, clf, n, jax.random.fold_in(key, step),
                              cond_rows=np.asarray(cond_of(rows, consts)))
    curve[str(step)] = rate_scalars(r)
    checkpoints.write_json(curve_path, curve)
    logging.info("[%s] step %d AR %.3f AR_CL %.3f%s", name, step, r["ar"], r["ar_cl"],
                 f" prompt {prompts[str(step)]}" if str(step) in prompts else "")

  def reference(params):       # the pretrained model under its own conditions, the step-0 keys
    return rate_scalars(exp.task.forget_rates(exp, params, clf, n, jax.random.fold_in(key, 0)))

  write_reference(exp, name, st, workdir, seed, n, reference)

  def get_batches(step):
    return {"forget": data_lib.batch_at_step(shots, step, st.batch_size, seed, process_index=jax.process_index(),
                                             process_count=jax.process_count())}

  record(0, rows0)
  loop = training.LoopConfig(num_steps=st.steps, batch_size=st.batch_size, seed=seed,
                             log_every=cfg.training.log_every, ckpt_every=cfg.training.ckpt_every,
                             sample_every=st.eval_every, max_to_keep=cfg.training.max_to_keep)
  t0 = time.time()
  final = training.train_loop(stage_dir, state0, step_fn, loop, get_batches,
                              sample_hook=lambda step, state: record(step, state.params["rows"]),
                              step_hook=hooks.step, stage_name=name, consts=consts)
  record(st.steps, final.params["rows"])
  write_curve_csv(stage_dir, curve)
  train_stage.finish_stage_dir(stage_dir, t0, steps=st.steps)
