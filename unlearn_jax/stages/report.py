"""The report stage: <workdir>/results.json (`reporting.results.collect`) and report.md
(`reporting.markdown.render` with the task's tables), each replaced whole; it always reruns."""
from __future__ import annotations

import os

from unlearn_jax import checkpoints
from unlearn_jax.experiment import Experiment
from unlearn_jax.reporting import markdown
from unlearn_jax.reporting import results as results_lib
from unlearn_jax.stages.hooks import Hooks


def write(exp: Experiment, workdir: str) -> dict:
  """Writes results.json and report.md; returns the results."""
  results = results_lib.collect(exp, workdir)
  checkpoints.write_json(os.path.join(workdir, "results.json"), results)
  tmp = os.path.join(workdir, "report.md.tmp")
  with open(tmp, "w") as f:
    f.write(markdown.render(results, workdir, exp.task.report_tables))
  os.replace(tmp, os.path.join(workdir, "report.md"))
  return results


def run(exp: Experiment, name: str, st, workdir: str, hooks: Hooks = Hooks()) -> None:
  del name, st, hooks
  write(exp, workdir)
