"""Task families: what is forgotten and how forgetting is measured.

A task is a module with one interface, which the engine and the stages call and never
branch around:

  NAME, NAMED_MODELS          its name; models a stage may name besides stages ("base")
  validate(config)            its config checks that need no inputs
  prepare(config, workdir)    the config with its inputs in place (may write <workdir>/inputs/)
  build(config, workdir)      -> experiment.Experiment (loads data, builds the model; no writes)
  check(exp)                  stage settings the task rules out, on the built experiment
  save(exp)                   writes what build computed for reuse (after validation)
  named_params(exp, name)     the weights of a NAMED_MODELS entry
  trainable(exp, st)          the stage's trainable-leaf mask (None: every leaf)
  train_classifiers(exp, name, workdir, fit) -> DONE.json info (None: no classifier)
  classifier_params(exp, workdir)
  forget_rates(exp, params, clf, n, rng) -> {"ar", "ar_cl", "class_histogram", ...}
  evaluate(exp, workdir, model, params, clf, rng, out_dir) -> a results.json model entry
  finalize(exp, results, workdir)      the task's own results.json entries
  report_tables(results, workdir)      report.md's body (markdown lines)

`classes`: classes of a labelled data set (unconditional SGU models, the class-conditional
DDPM of DiMUM / DiMRA); `unlearncanvas`: styles of Stable Diffusion on UnlearnCanvas.
"""
from __future__ import annotations

from unlearn_jax import settings
from unlearn_jax.tasks import classes
from unlearn_jax.tasks import unlearncanvas

#: config.data.name -> task module; every other data set is a `classes` task.
BY_DATA = {unlearncanvas.DATA_NAME: unlearncanvas}


def get(config):
  """The task module of a config (chosen by `config.data.name`)."""
  return BY_DATA.get(config.data.name, classes)


def build(config, workdir=None):
  """The experiment of a config (a ConfigDict, typed here by `settings.of`, or a `Settings`),
  built by its task (raises UserError; writes nothing)."""
  config = settings.of(config)
  task = get(config)
  exp = task.build(config, workdir)
  exp.task = task
  return exp
