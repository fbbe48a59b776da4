"""The report stage: <workdir>/results.json (`reporting.results.collect`) and report.md
(`reporting.markdown.render` with the task's tables), each replaced whole; it always reruns.
A config with attack stages also gets <workdir>/robustness.json (`reporting.robustness`) and
its section in report.md after the task's tables."""
from __future__ import annotations

import os

from unlearn_jax import checkpoints
from unlearn_jax.experiment import Experiment, source_params
from unlearn_jax.reporting import markdown
from unlearn_jax.reporting import results as results_lib
from unlearn_jax.reporting import robustness
from unlearn_jax.stages.hooks import Hooks


def write(exp: Experiment, workdir: str) -> dict:
  """Writes results.json, robustness.json (with attack stages) and report.md; returns the results."""
  results = results_lib.collect(exp, workdir)
  checkpoints.write_json(os.path.join(workdir, "results.json"), results)
  tables = exp.task.report_tables
  card = write_card(exp, workdir, results)
  if card is not None and card["attacks"]:
    tables = lambda r, w: exp.task.report_tables(r, w) + robustness.report_lines(card, w)  # noqa: E731
  tmp = os.path.join(workdir, "report.md.tmp")
  with open(tmp, "w") as f:
    f.write(markdown.render(results, workdir, tables))
  os.replace(tmp, os.path.join(workdir, "report.md"))
  return results


def write_card(exp: Experiment, workdir: str, results: dict):
  """robustness.json from the workdir's attack stages (None, nothing written, without any)."""
  cfg = exp.config
  if not any(cfg.stages[n].kind == "attack" for n in cfg.stage_order):
    return None
  card = robustness.build_card(cfg, workdir, results, lambda m: source_params(exp, workdir, m),
                               classifier_params=exp.task.classifier_params(exp, workdir),
                               splits=robustness.split_sizes(exp))
  robustness.write_card(os.path.join(workdir, robustness.CARD_FILE), card)
  return card


def run(exp: Experiment, name: str, st, workdir: str, hooks: Hooks = Hooks()) -> None:
  del name, st, hooks
  write(exp, workdir)
