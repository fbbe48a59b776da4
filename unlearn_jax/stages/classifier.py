"""The classifier stage: the evaluation classifier(s) of the task (`task.train_classifiers`)."""
from __future__ import annotations

import functools
import logging
import os
import time
from typing import Tuple

import jax
import numpy as np

from unlearn_jax import checkpoints
from unlearn_jax import data as data_lib
from unlearn_jax import evaluation
from unlearn_jax import models
from unlearn_jax import train_state as ts
from unlearn_jax import training
from unlearn_jax.experiment import Experiment, stage_seed
from unlearn_jax.stages.hooks import Hooks


def work(exp: Experiment, st) -> Tuple[int, str]:
  """The stage's amount of work for the run's progress line: (config.classifier.steps per classifier)."""
  del st
  return exp.config.classifier.steps, "steps"


def run(exp: Experiment, name: str, st, workdir: str, hooks: Hooks = Hooks()) -> None:
  """Trains (or resumes) the task's classifiers; DONE.json holds their test accuracies.
  A task without a classifier (toy data) writes nothing."""
  del st
  cfg = exp.config
  t0 = time.time()
  seed = stage_seed(cfg, name)
  fit = lambda stage_dir, module, train, test, offset, log_name: train_classifier(
      exp, stage_dir, module, train, test, seed + offset, log_name, hooks.step)
  info = exp.task.train_classifiers(exp, name, workdir, fit)
  if info is None:
    return
  stage_dir = os.path.join(workdir, name)
  os.makedirs(stage_dir, exist_ok=True)
  checkpoints.write_json(os.path.join(stage_dir, checkpoints.DONE),
                         {**info, "steps": cfg.classifier.steps, "wall_time_s": time.time() - t0})


def train_classifier(exp: Experiment, stage_dir: str, module, train: data_lib.Dataset, test: data_lib.Dataset,
                     seed: int, name: str, step_hook=None) -> float:
  """Trains (or resumes) an evaluation classifier into `stage_dir`; its test accuracy."""
  cfg = exp.config
  tx = training.make_optimizer(cfg.classifier.lr, grad_clip=0.0)
  params = models.init_params(module, jax.random.key(seed), train.example_shape)
  state = ts.create(params, tx)
  get_batches = lambda step: {"all": data_lib.batch_at_step(train, step, cfg.classifier.batch_size, seed)}
  loop = training.LoopConfig(num_steps=cfg.classifier.steps, batch_size=cfg.classifier.batch_size, seed=seed,
                             log_every=min(cfg.training.log_every, cfg.classifier.steps),
                             ckpt_every=cfg.training.ckpt_every)
  final = training.train_loop(stage_dir, state, functools.partial(
      evaluation.classifier_step, apply_fn=module.apply, tx=tx), loop, get_batches,
      step_hook=step_hook, stage_name=name)
  acc = float(np.mean(evaluation.predict(module.apply, final.params, data_lib.to_float(test.images))
                      == test.labels))
  logging.info("[%s] test accuracy %.4f", name, acc)
  return acc
