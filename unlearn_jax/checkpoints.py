"""Orbax checkpointing of train states, with one documented resume order.

Layout of a stage directory `<workdir>/<stage>/`:
  checkpoints/<step>/   orbax StandardSave of the TrainState (host arrays)
  meta.json             what a later stage or run must know to load it
                        (model kind and typed config, image shape, scaler)
  DONE.json             written last; a stage with it is finished and skipped

Resume order: if DONE.json exists the stage is skipped; otherwise the latest
step under checkpoints/ is restored and training continues from it; otherwise
the stage starts from its `init` (random, another stage's final state, or a path).
Only states whose parameters are all finite are ever saved.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

CKPT_DIR = "checkpoints"
META = "meta.json"
DONE = "DONE.json"


def manager(stage_dir: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(stage_dir, CKPT_DIR)),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))


def latest_step(stage_dir: str) -> Optional[int]:
  path = os.path.join(stage_dir, CKPT_DIR)
  if not os.path.isdir(path):
    return None
  steps = [int(d) for d in os.listdir(path) if d.isdigit()]
  return max(steps) if steps else None


def save(mngr: ocp.CheckpointManager, step: int, state: Any) -> None:
  mngr.save(int(step), args=ocp.args.StandardSave(jax.device_get(state)))
  mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, like: Any, step: Optional[int] = None) -> Any:
  """Restores `step` (default: latest) into the structure of `like`."""
  step = mngr.latest_step() if step is None else step
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
  return mngr.restore(step, args=ocp.args.StandardRestore(abstract))


def restore_raw(mngr: ocp.CheckpointManager, step: Optional[int] = None) -> Any:
  """Restores a checkpoint as saved (nested dicts), without a target structure."""
  step = mngr.latest_step() if step is None else step
  return mngr.restore(step, args=ocp.args.StandardRestore())


def write_json(path: str, obj: Any) -> None:
  """Atomic JSON write (tmp file + rename), so a kill never leaves half a file."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=_jsonable)
  os.replace(tmp, path)


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def _jsonable(x):
  if isinstance(x, (np.generic,)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, tuple):
    return list(x)
  raise TypeError(f"not JSON serializable: {type(x)}")


def is_done(stage_dir: str) -> bool:
  return os.path.exists(os.path.join(stage_dir, DONE))
