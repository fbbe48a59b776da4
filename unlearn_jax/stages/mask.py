"""The mask stage: a parameter mask (or weights) computed once from a model and D_f / D_r,
read by the unlearn stages that name it (`config.stages.<unlearn>.mask`).

  salun   SalUn's saliency: the top `config.salun.fraction` of |grad L_f| (DiMUM Eq. 6)
  sfron   SFR-on's [F_f >= F_r] of per-batch clipped squared gradients
  shs     Scissorhands' SNIP scores (the weights to reset)
  fisher  Selective Amnesia's diagonal Fisher of the pretrained model
"""
from __future__ import annotations

import functools
import logging
import os
import time
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import checkpoints
from unlearn_jax import console
from unlearn_jax import data as data_lib
from unlearn_jax import generation
from unlearn_jax import losses
from unlearn_jax import mesh as mesh_lib
from unlearn_jax import training
from unlearn_jax.experiment import Experiment, source_params, stage_seed
from unlearn_jax.stages import train as train_stage
from unlearn_jax.stages.hooks import Hooks
from unlearn_jax.unlearning import saliency
from unlearn_jax.unlearning import scissorhands as shs_lib
from unlearn_jax.unlearning import selective_amnesia as sa_lib


def _pass_batches(ds: data_lib.Dataset, batch: int, max_batches: int, seed: int):
  """One pass over `ds` in `batch`-sized batches (the last one wraps), at most max_batches (0: all)."""
  n = -(-len(ds) // batch)
  n = min(n, max_batches) if max_batches else n
  return [data_lib.batch_at_step(ds, s, batch, seed) for s in range(n)]


def work(exp: Experiment, st) -> Tuple[int, str]:
  """The stage's amount of work for the run's progress line: (one pass over the data: no count)."""
  del exp, st
  return 0, ""


def run(exp: Experiment, name: str, st, workdir: str, hooks: Hooks = Hooks()) -> None:
  """SalUn: top `config.salun.fraction` of |sum of forget-loss gradients| over D_f.
  SFR-on: [F_f >= F_r] from per-batch clipped squared gradients over D_f and D_r.
  Scissorhands: the top 1 - `config.shs.sparsity` of SNIP scores |theta| sum_b |grad L_f|
  (the weights to reset).  Selective Amnesia ("fisher"): the diagonal Fisher (float)."""
  cfg = exp.config
  t0 = time.time()
  stage_dir = os.path.join(workdir, name)
  params = source_params(exp, workdir, st.init)
  denoise = functools.partial(losses.denoising_loss, reduce=cfg.training.reduce)
  objective = training.Objective("forget", denoise)
  trainable = exp.task.trainable(exp, None)
  spec = train_stage.step_spec(exp, {"forget": objective}, trainable=trainable)
  seed = stage_seed(cfg, name)

  @jax.jit
  def grad_fn(p, batch, key):
    keys = training.example_keys(key, batch["x"].shape[0])
    if trainable is None:
      return jax.grad(training.objective_loss)(p, batch, keys, key, spec, objective)
    sub = lambda q: training.objective_loss(training.merge_trainable(q, p, trainable), batch, keys, key, spec,
                                            objective)
    return jax.grad(sub)(training.split_trainable(p, trainable))

  params_all = params
  placed = mesh_lib.put(params)          # the passes run on the mesh: batches split over every device

  def grads(what, **kw):
    batches = _pass_batches(exp.streams[what], cfg.training.batch_size, st.steps, seed)
    what_name = {"forget": "D_f", "retain": "D_r"}[what]
    progress = console.Progress(f"[{name}] gradients over {what_name}", len(batches), "batches")

    def keyed():
      for i, b in enumerate(batches):
        yield mesh_lib.put(b, mesh_lib.batch()), jax.random.fold_in(jax.random.key(seed), i)
        progress.update(i + 1)          # batch i has been handed on (its gradient queued)

    return mesh_lib.to_host(saliency.accumulate(lambda p, bk: grad_fn(p, *bk), placed, keyed(), **kw))

  if trainable is not None:            # masks over the trainable leaves only (zeros elsewhere)
    params = training.split_trainable(params, trainable)
  dtype, info = np.uint8, {}
  if st.method == "salun":
    scores = jax.tree_util.tree_map(jnp.abs, grads("forget"))
    mask = saliency.top_fraction_mask(scores, cfg.salun.fraction)
  elif st.method == "sfron":
    f_forget = grads("forget", square=True, clip_norm=1.0)
    f_retain = grads("retain", square=True, clip_norm=1.0)
    mask = saliency.ratio_mask(f_forget, f_retain)
  elif st.method == "shs":
    scores = shs_lib.snip_scores(grads("forget", absolute=True), params)
    mask = saliency.top_fraction_mask(scores, 1.0 - cfg.shs.sparsity, field="config.shs.sparsity")
  else:
    mask, dtype = fisher_information(exp, params, spec, objective, seed), np.float32
    leaves = jax.tree_util.tree_leaves(mask)
    info = {"fisher_mean": float(sum(np.sum(l) for l in leaves) / sum(np.size(l) for l in leaves))}
  if trainable is not None:
    mask = training.fill_frozen(mask, params_all, trainable)
  os.makedirs(stage_dir, exist_ok=True)
  saliency.save_mask(os.path.join(stage_dir, train_stage.MASK_FILE), mask, dtype)
  if dtype == np.uint8:
    info["kept_fraction"] = saliency.kept_fraction(mask)
  logging.info("[%s] %s mask: %s", name, st.method, info)
  checkpoints.write_json(os.path.join(stage_dir, checkpoints.DONE),
                         {"method": st.method, **info, "wall_time_s": time.time() - t0})


def fisher_information(exp: Experiment, params, spec, objective, seed: int):
  """Selective Amnesia's diagonal Fisher of the pretrained model: `config.sa.fisher_samples`
  samples it generates (all classes in turn): the mean over samples of the squared gradient
  of the sample's loss summed over the N diffusion steps, each estimated without bias from
  `config.sa.fisher_t` (>= 2) random (t, z) draws (`selective_amnesia.sample_fisher`)."""
  cfg = exp.config
  n, n_t = cfg.sa.fisher_samples, cfg.sa.fisher_t
  labels = np.resize(np.arange(exp.train.num_classes, dtype=np.int32), n)
  x = generation.generate(exp, params, n, jax.random.key(seed), labels=labels)
  chunk = max(1, cfg.training.batch_size // n_t)     # chunk * fisher_t per-draw gradients in memory
  key = jax.random.fold_in(jax.random.key(seed), 1)
  return sa_lib.sample_fisher(params, jnp.asarray(x), jnp.asarray(labels), key,
                              spec=spec, objective=objective, draws=n_t, chunk=chunk,
                              scale=getattr(exp.process, "N", 1))
