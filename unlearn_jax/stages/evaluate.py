"""The evaluate stage: each listed model's results.json entry (`task.evaluate`), one
<stage>/<model>.json per model, so a killed evaluation resumes with the next model."""
from __future__ import annotations

import os
from typing import Tuple

import jax

from unlearn_jax import checkpoints
from unlearn_jax import console
from unlearn_jax.experiment import Experiment, source_params, stage_seed, weights_info
from unlearn_jax.stages.hooks import Hooks


def work(exp: Experiment, st) -> Tuple[int, str]:
  """The stage's amount of work for the run's progress line: (models)."""
  del exp
  return len(st.models), "models"


def run(exp: Experiment, name: str, st, workdir: str, hooks: Hooks = Hooks()) -> None:
  del hooks
  out_dir = os.path.join(workdir, name)
  os.makedirs(out_dir, exist_ok=True)
  clf = exp.task.classifier_params(exp, workdir)
  todo = [m for m in st.models if not os.path.exists(os.path.join(out_dir, f"{m}.json"))]
  progress = console.Progress("evaluated", len(st.models), "models", every_s=0.0,
                              start=len(st.models) - len(todo))
  for i, model in enumerate(todo):
    console.info("evaluating %s (%d of %d)", model, len(st.models) - len(todo) + i + 1, len(st.models))
    rng = jax.random.key(stage_seed(exp.config, name))
    with console.context(model):
      res = exp.task.evaluate(exp, workdir, model, source_params(exp, workdir, model), clf, rng, out_dir)
    res.update(weights_info(exp, workdir, model))
    checkpoints.write_json(os.path.join(out_dir, f"{model}.json"), res)
    progress.update(len(st.models) - len(todo) + i + 1)
  checkpoints.write_json(os.path.join(out_dir, checkpoints.DONE), {"models": list(st.models)})
