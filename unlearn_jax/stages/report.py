"""The report stage: <workdir>/results.json (`reporting.results.collect`) and report.md
(`reporting.markdown.render` with the task's tables), each replaced whole; it always reruns.
A config with attack stages also gets <workdir>/robustness.json (`reporting.robustness`) and
its section in report.md after the task's tables."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Tuple

import jax

from unlearn_jax import checkpoints
from unlearn_jax.evaluation import nudity
from unlearn_jax.experiment import Experiment, source_params
from unlearn_jax.reporting import markdown
from unlearn_jax.reporting import overview
from unlearn_jax.reporting import results as results_lib
from unlearn_jax.reporting import robustness
from unlearn_jax.stages.hooks import Hooks


def write(exp: Experiment, workdir: str, name: str = "report") -> dict:
  """Writes results.json, robustness.json (with attack stages), the figures and report.md, and
  the results to TensorBoard (`reporting.overview`); returns the results."""
  cfg = exp.config
  results = results_lib.collect(exp, workdir)
  stored, not_results = results_lib.strict(results)
  checkpoints.write_json(os.path.join(workdir, "results.json"), stored, strict=True)
  card = write_card(exp, workdir, results)
  attack_lines = robustness.report_lines(card, workdir) if card is not None and card["attacks"] else []
  trained = {n: os.path.join(workdir, n) for n in cfg.stage_order
             if cfg.stages[n].kind in ("train", "unlearn", "attack") and os.path.isdir(os.path.join(workdir, n))}
  titles = {n: markdown.pretty(n) for n in list(results["models"]) + list(trained)}
  figure_lines = overview.figures_section(results, workdir, trained, list(exp.train.class_names), titles)
  tables = lambda r, w: exp.task.report_tables(r, w) + attack_lines + figure_lines  # noqa: E731
  text = markdown.mark_not_results(markdown.render(results, workdir, tables), not_results)
  checkpoints.write_text(os.path.join(workdir, "report.md"), text)
  if jax.process_index() == 0:
    overview.tensorboard(results, workdir, {m: hparams(cfg, m) for m in results["models"]},
                         os.path.join(workdir, name), text,
                         json.dumps(dataclasses.asdict(cfg), default=str))
  return results


def hparams(cfg, model: str) -> dict:
  """A model's hyperparameters for TensorBoard: its stage's settings and its method's section."""
  st = cfg.stages.get(model)
  if st is None:
    return {"model": model}
  out = {"model": model, **{f"stage.{k}": v if isinstance(v, (bool, int, float, str)) else str(v)
                            for k, v in dataclasses.asdict(st).items() if v not in (None, "", ())}}
  section = getattr(cfg, st.method, None) if st.method else None
  if dataclasses.is_dataclass(section):
    out.update({f"{st.method}.{k}": v if isinstance(v, (bool, int, float, str)) else str(v)
                for k, v in dataclasses.asdict(section).items() if v is not None})
  return out


def write_card(exp: Experiment, workdir: str, results: dict):
  """robustness.json from the workdir's attack stages (None, nothing written, without any)."""
  cfg = exp.config
  if not any(cfg.stages[n].kind == "attack" for n in cfg.stage_order):
    return None
  card = robustness.build_card(cfg, workdir, results, lambda m: source_params(exp, workdir, m),
                               classifier_params=exp.task.classifier_params(exp, workdir),
                               splits=robustness.split_sizes(exp), data_hash=robustness.data_sha256(exp.train),
                               nudenet_hash=nudity.model_sha256() if cfg.eval.nudity else None)
  robustness.write_card(os.path.join(workdir, robustness.CARD_FILE), card)
  return card


def work(exp: Experiment, st) -> Tuple[int, str]:
  """The stage's amount of work for the run's progress line: (none)."""
  del exp, st
  return 0, ""


def run(exp: Experiment, name: str, st, workdir: str, hooks: Hooks = Hooks()) -> None:
  del st, hooks
  write(exp, workdir, name)
