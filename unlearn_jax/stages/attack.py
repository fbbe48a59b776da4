"""The attack stage: DiMRA (DiMUM paper Eq. 7), the relearning attack on an unlearned model."""
from __future__ import annotations

import logging
import os

import jax

from unlearn_jax import checkpoints
from unlearn_jax.reporting import figures
from unlearn_jax import train_state as ts
from unlearn_jax.experiment import Experiment, source_params, stage_ema_rate, stage_seed, state_weights
from unlearn_jax.stages import train as train_stage
from unlearn_jax.stages.hooks import Hooks

CURVE_FILE = "curve.json"


def run(exp: Experiment, name: str, st, workdir: str, hooks: Hooks = Hooks()) -> None:
  """DiMRA (Eq. 7): the ordinary loss on the auxiliary stream, AR_DiMRA and AR_CL every
  `eval_every` steps (and at 0 and the end) into <stage>/curve.json and curve.csv."""
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
