"""The evaluate stage: each listed model's results.json entry (`task.evaluate`), one
<stage>/<model>.json per model, so a killed evaluation resumes with the next model."""
from __future__ import annotations

import os

import jax

from unlearn_jax import checkpoints
from unlearn_jax.experiment import Experiment, source_params, stage_seed, weights_info
from unlearn_jax.stages.hooks import Hooks


def run(exp: Experiment, name: str, st, workdir: str, hooks: Hooks = Hooks()) -> None:
  del hooks
  out_dir = os.path.join(workdir, name)
  os.makedirs(out_dir, exist_ok=True)
  clf = exp.task.classifier_params(exp, workdir)
  for model in st.models:
    path = os.path.join(out_dir, f"{model}.json")
    if os.path.exists(path):
      continue
    rng = jax.random.key(stage_seed(exp.config, name))
    res = exp.task.evaluate(exp, workdir, model, source_params(exp, workdir, model), clf, rng, out_dir)
    res.update(weights_info(exp, workdir, model))
    checkpoints.write_json(path, res)
  checkpoints.write_json(os.path.join(out_dir, checkpoints.DONE), {"models": list(st.models)})
