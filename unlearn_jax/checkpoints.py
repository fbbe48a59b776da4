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

A checkpoint that does not restore (a file truncated or lost on disk): resuming falls
back to the latest one that does, with a warning, and moves the unreadable ones to
`<stage>/corrupt_checkpoints/` (`restore_latest`); with none left, or when a finished
stage's final weights are read (`load_raw`), a `UserError` names the checkpoint.

Several processes (one stage directory on a shared file system): every process calls
`save` and `restore_latest` alike (orbax's managers synchronise them; process 0 writes the
one checkpoint) and every process writes the same JSON files (tests/test_multiprocess.py).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any, Callable, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from unlearn_jax.errors import UserError

CKPT_DIR = "checkpoints"
CORRUPT_DIR = "corrupt_checkpoints"
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


def _steps(stage_dir: str) -> list:
  path = os.path.join(stage_dir, CKPT_DIR)
  return sorted((int(d) for d in os.listdir(path) if d.isdigit()), reverse=True) if os.path.isdir(path) else []


def _reason(e: BaseException) -> str:
  """The first line of a restore error's root cause (orbax / TensorStore messages run to hundreds)."""
  while (e.__cause__ or e.__context__) is not None:
    e = e.__cause__ or e.__context__
  line = next((l.strip() for l in str(e).splitlines() if l.strip()), type(e).__name__)
  return f"{type(e).__name__}: {line[:200]}"


def _try_restore(stage_dir: str, step: int, like: Any, max_to_keep: int) -> Any:
  # A fresh manager per attempt: a failed restore can leave a manager's event loop closed.
  mngr = manager(stage_dir, max_to_keep)
  try:
    return restore_raw(mngr, step) if like is None else restore(mngr, like, step)
  finally:
    mngr.close()


def unreadable(stage_dir: str, step: int, e: BaseException) -> UserError:
  path = os.path.join(stage_dir, CKPT_DIR, str(step))
  return UserError("checkpoint", path, f"does not restore ({_reason(e)}): expected a complete orbax checkpoint; "
                   f"delete {path} (and {os.path.join(stage_dir, DONE)}) to recompute the stage from an "
                   "earlier checkpoint or its start")


def _barrier(name: str) -> None:
  """Waits for every process (nothing to wait for in a single-process run)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def restore_latest(stage_dir: str, like: Any, max_to_keep: int = 2) -> Tuple[Any, Optional[int]]:
  """(state, step) of the latest checkpoint of `stage_dir` that restores into `like`'s
  structure; (None, None) if there is no checkpoint.  Unreadable later checkpoints are
  moved to <stage>/corrupt_checkpoints/ with a warning; if none restores, UserError
  naming the latest (nothing is moved)."""
  failed = []
  for step in _steps(stage_dir):
    try:
      state = _try_restore(stage_dir, step, like, max_to_keep)
    except Exception as e:  # noqa: BLE001 -- orbax / TensorStore raise ValueError, RuntimeError, Exception
      failed.append((step, e))
      continue
    # Several processes (one stage directory, shared): each has read the same files, so each
    # gets here with the same `failed`; process 0 alone moves them (a second os.replace would
    # raise), between barriers: no process lists the steps while they move, and none opens its
    # CheckpointManager (train_loop's next call) before they are gone.
    if failed:
      _barrier(f"restore_latest:{stage_dir}:{step}:listed")
    for bad, e in failed:
      dest = os.path.join(stage_dir, CORRUPT_DIR, str(bad))
      if jax.process_index() == 0:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.replace(os.path.join(stage_dir, CKPT_DIR, str(bad)), dest)
      logging.warning("checkpoint %s does not restore (%s): moved to %s; resuming from step %d",
                      os.path.join(stage_dir, CKPT_DIR, str(bad)), _reason(e), dest, step)
    if failed:
      _barrier(f"restore_latest:{stage_dir}:{step}:moved")
    return state, step
  if failed:
    raise unreadable(stage_dir, *failed[0])
  return None, None


def load_raw(stage_dir: str) -> Any:
  """A finished stage's latest checkpoint as saved (nested dicts).  No fallback: an earlier
  checkpoint is not the stage's result, so an unreadable one is a UserError naming it."""
  steps = _steps(stage_dir)
  if not steps:
    raise UserError("checkpoint", os.path.join(stage_dir, CKPT_DIR), "expected a checkpoint there; none found")
  try:
    return _try_restore(stage_dir, steps[0], None, 2)
  except Exception as e:  # noqa: BLE001
    raise unreadable(stage_dir, steps[0], e) from e


def tmp_path(path: str, ext: str = "") -> str:
  """The temporary name an atomic write of `path` goes through (write it, then `os.replace`):
  one per process, since every process of a multi-process run writes the same files with the
  same content and, with one shared name, a second rename found it gone.  `ext`: a suffix the
  writer appends itself (numpy's ".npy" / ".npz")."""
  return f"{path}.tmp{jax.process_index()}{ext}"


def atomic_write(path: str, write: Callable[[str], Any], ext: str = "") -> str:
  """`write(tmp)` to this process's temporary name of `path` (`tmp_path`), then one rename: a
  kill never leaves half a file at `path` (and a write that raises leaves no temporary file).  `ext`: the suffix `write` appends itself (numpy's
  ".npy" / ".npz").  Returns `path`."""
  tmp = tmp_path(path, ext)
  try:
    write(tmp)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def save_npy(path: str, array) -> str:
  """`np.save` through `atomic_write`."""
  return atomic_write(path, lambda tmp: np.save(tmp, array), ".npy")


def save_npz(path: str, **arrays) -> str:
  """`np.savez` through `atomic_write`."""
  return atomic_write(path, lambda tmp: np.savez(tmp, **arrays), ".npz")


def write_text(path: str, text: str) -> str:
  """A text file through `atomic_write`."""
  def write(tmp):
    with open(tmp, "w") as f:
      f.write(text)
  return atomic_write(path, write)


def publish_dir(tmp: str, path: str) -> None:
  """Renames the finished directory `tmp` to `path`; where another process published `path`
  first (a non-empty directory cannot be replaced), drops `tmp` and keeps that one."""
  try:
    os.replace(tmp, path)
  except OSError:
    if not os.path.isdir(path):
      raise
    shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str, obj: Any, strict: bool = False) -> None:
  """Atomic JSON write (tmp file + rename), so a kill never leaves half a file.  `strict`:
  ValueError on NaN / inf (strict JSON) instead of writing a bare NaN."""
  write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable, allow_nan=not strict))


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
