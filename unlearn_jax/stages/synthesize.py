"""The synthesize stage: DiMRA's synthetic auxiliary data set (DiMUM paper Sec. V)."""
from __future__ import annotations

import os
import time
from typing import Tuple

import jax
import numpy as np

from unlearn_jax import checkpoints
from unlearn_jax import generation
from unlearn_jax.experiment import SYNTH_FILE, Experiment, source_params, stage_seed
from unlearn_jax.stages.hooks import Hooks


def work(exp: Experiment, st) -> Tuple[int, str]:
  """The stage's amount of work for the run's progress line: (samples)."""
  return (st.num or len(exp.streams["retain"])), "samples"


def run(exp: Experiment, name: str, st, workdir: str, hooks: Hooks = Hooks()) -> None:
  """DiMRA's synthetic auxiliary data: the model's samples under D_r's conditions
  (as many as D_r unless `num`), written in chunks so a killed run resumes."""
  cfg = exp.config
  t0 = time.time()
  stage_dir = os.path.join(workdir, name)
  os.makedirs(stage_dir, exist_ok=True)
  params = source_params(exp, workdir, st.init)
  retain = exp.streams["retain"]
  n = st.num or len(retain)
  labels = np.resize(retain.labels, n)
  chunk = cfg.eval.sample_batch_size
  parts = []
  for i, start in enumerate(range(0, n, chunk)):
    path = os.path.join(stage_dir, f"chunk_{i:05d}.npy")
    if not os.path.exists(path):
      x = generation.generate(exp, params, len(labels[start:start + chunk]),
                   jax.random.fold_in(jax.random.key(stage_seed(cfg, name)), i), labels=labels[start:start + chunk])
      if exp.is_image:
        img = np.round(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8)
      else:                                   # toy points, Stable Diffusion latents
        img = np.asarray(x, np.float32)
      checkpoints.save_npy(path, img)
    parts.append(np.load(path))
    if hooks.step is not None:
      hooks.step(i + 1)
  checkpoints.save_npz(os.path.join(stage_dir, SYNTH_FILE), images=np.concatenate(parts),
                       labels=labels.astype(np.int32))
  checkpoints.write_json(os.path.join(stage_dir, checkpoints.DONE),
                         {"num": int(n), "source_model": st.init, "wall_time_s": time.time() - t0})
