"""The attack stage: fine-tuning attacks on an unlearned model (issue 15).

DiMRA (DiMUM paper Eq. 7) fine-tunes the unlearned model (`init`) with the ordinary loss on
an auxiliary stream (data="retain": assumption (i); "test_retain": (ii); a synthesize
stage); benign fine-tuning (data="benign") does the same on D_r's examples of unrelated
classes (`experiment.benign_classes`: concept resurgence); few-shot relearning
(data="fewshot") on `shots` forget examples (`experiment.fewshot_indices`).  Every
`eval_every` steps (and at 0, the unlearned model, and at the end) a curve point goes to
<stage>/curve.json: {"<step>": {"ar", "ar_cl", "fd"[, "nll_forget"]}} (`exp.task.forget_rates`
and `attack_measures`; for an unconditional model "ar" is the share of samples classified as
a forgotten class, "ar_cl" NaN) and curve.csv; <stage>/attack.json records the attack and its
budget (`write_attack_info`).  A killed attack resumes: the training from its checkpoint,
the curve from the points already written (not recomputed).
"""
from __future__ import annotations

import logging
import os

import jax

from unlearn_jax import checkpoints
from unlearn_jax.reporting import figures
from unlearn_jax import train_state as ts
from unlearn_jax.experiment import (Experiment, attack_stream, benign_classes, fewshot_indices, source_params,
                                    stage_ema_rate, stage_seed, state_weights)
from unlearn_jax.stages import train as train_stage
from unlearn_jax.stages.hooks import Hooks

CURVE_FILE = "curve.json"
INFO_FILE = "attack.json"
#: curve.json point key -> curve.csv column (a column only when every point has the key).
CSV_COLUMNS = {"ar": "ar_dimra", "ar_cl": "ar_cl", "fd": "fd", "nll_forget": "nll_forget"}


def attack_info(exp: Experiment, name: str, st) -> dict:
  """attack.json's content (shared15.md): the attack, its data, its budget (steps, the
  effective lr and batch size, shots, eps, the classes benign fine-tuning uses), the stage
  seed and the model attacked; a few-shot attack also lists its D_f indices."""
  cfg = exp.config
  seed = stage_seed(cfg, name)
  classes = benign_classes(exp, st.classes) if st.data == "benign" else tuple(st.classes)
  info = {"attack": getattr(st, "attack", "finetune"), "data": st.data, "init": st.init, "seed": seed,
          "budget": {"steps": st.steps, "lr": st.lr if st.lr is not None else cfg.optim.lr,
                     "batch_size": st.batch_size or cfg.training.batch_size, "shots": st.shots,
                     "eps": getattr(st, "eps", 0.0), "classes": [int(c) for c in classes]}}
  if st.data == "fewshot":
    info["fewshot_indices"] = fewshot_indices(len(exp.streams["forget"]), st.shots, seed).tolist()
  return info


def write_attack_info(exp: Experiment, name: str, st, stage_dir: str) -> dict:
  """Writes <stage_dir>/attack.json once (a resumed attack keeps the first one) and returns it."""
  path = os.path.join(stage_dir, INFO_FILE)
  if os.path.exists(path):
    return checkpoints.read_json(path)
  info = attack_info(exp, name, st)
  os.makedirs(stage_dir, exist_ok=True)
  checkpoints.write_json(path, info)
  return info


def write_curve_csv(stage_dir: str, curve: dict) -> None:
  """curve.csv: one row per point, the `CSV_COLUMNS` every point has."""
  steps = sorted(int(k) for k in curve)
  points = [curve[str(k)] for k in steps]
  figures.write_curve_csv(os.path.join(stage_dir, "curve.csv"), steps,
                          {col: [p[key] for p in points] for key, col in CSV_COLUMNS.items()
                           if all(key in p for p in points)})


def run(exp: Experiment, name: str, st, workdir: str, hooks: Hooks = Hooks()) -> None:
  """A fine-tuning attack: the ordinary loss on `attack_stream(exp, st)`, a curve point every
  `eval_every` steps (and at 0 and the end) into <stage>/curve.json and curve.csv."""
  cfg = exp.config
  stage_dir = os.path.join(workdir, name)
  os.makedirs(stage_dir, exist_ok=True)
  write_attack_info(exp, name, st, stage_dir)
  clf = exp.task.classifier_params(exp, workdir)
  curve_path = os.path.join(stage_dir, CURVE_FILE)
  curve = checkpoints.read_json(curve_path) if os.path.exists(curve_path) else {}
  seed = stage_seed(cfg, name)
  key = jax.random.key(seed)
  rate = stage_ema_rate(cfg, st)
  n = cfg.eval.attack_num_samples
  cache = {}                       # the task's reference statistics, computed once per stage

  def record(step, state_or_params):
    # step 0: the unlearned stage's evaluated weights, which the attack starts from;
    # later: the attack's own evaluated weights (its parameters unless st.ema_rate > 0).
    if str(step) in curve:
      return
    params = state_weights(state_or_params, rate) if isinstance(state_or_params, ts.TrainState) \
        else state_or_params
    rng = jax.random.fold_in(key, step)
    r = exp.task.forget_rates(exp, params, clf, n, rng)
    extra = exp.task.attack_measures(exp, params, clf, n, jax.random.fold_in(rng, 1), rates=r, cache=cache)
    curve[str(step)] = {"ar": r["ar"], "ar_cl": r["ar_cl"], **{k: float(v) for k, v in extra.items()}}
    checkpoints.write_json(curve_path, curve)
    logging.info("[%s] step %d AR %.3f AR_CL %.3f %s", name, step, r["ar"], r["ar_cl"],
                 " ".join(f"{k} {v:.3f}" for k, v in extra.items()))

  record(0, source_params(exp, workdir, st.init))
  train_stage.run(exp, name, st, workdir, hooks, eval_hook=record, eval_every=st.eval_every,
                  given_streams={st.data: attack_stream(exp, st, seed, workdir)})
  write_curve_csv(stage_dir, curve)
