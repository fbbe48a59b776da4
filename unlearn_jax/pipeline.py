"""Runs a config's stages in order, with skip/resume: validate -> build -> run the stages.

    exp = build_experiment(config)        # loads data, builds models, validates: writes nothing
    run(config, workdir)                  # build_experiment + every stage + results.json/report.md

The task (`tasks.get(config)`: classes of a data set, or UnlearnCanvas styles on Stable
Diffusion) builds the experiment and measures it; the stages (`stages.KINDS`) run on it
without asking which task it is; `validation` checks everything before the first write.
The config dict is read here and in `validation`; `settings.of` types it once, and the
experiment and everything below it read the typed `Settings` (`exp.config`).
Each stage writes `<workdir>/<stage>/`; a stage with DONE.json is skipped, an interrupted
one resumes from its last checkpoint (see `checkpoints`).
"""
from __future__ import annotations

import json
import os
import time
from typing import Optional

import ml_collections

from unlearn_jax import checkpoints
from unlearn_jax import console
from unlearn_jax import mesh as mesh_lib
from unlearn_jax import settings
from unlearn_jax import stages
from unlearn_jax import tasks
from unlearn_jax import validation
from unlearn_jax import xla_cache
from unlearn_jax.errors import UserError
from unlearn_jax.experiment import Experiment


def build_experiment(config, workdir: Optional[str] = None) -> Experiment:
  """Validates the config dict, types it (`settings.of`) and builds the experiment on the
  `Settings`; raises UserError on any bad input.  Writes nothing (a Stable Diffusion
  experiment reads its latent cache from `workdir` if there is one)."""
  if not isinstance(config, settings.Settings):      # a Settings was typed from a checked dict
    validation.check_config(config)
  exp = tasks.build(settings.of(config), workdir)
  validation.check_experiment(exp)
  return exp


#: config fields that may differ between the run that wrote a workdir and a rerun there:
#: they change no stage's output (logging, checkpoint and sample-grid cadence; resuming is
#: exact from any step; mesh.fsdp changes only float summation order, so a pre-empted run may
#: resume on another slice).  Stages may be added to or dropped from stage_order, and a stage
#: with no directory in the workdir yet may change; a started or finished stage must be
#: unchanged, and so must every other field once any stage has started.
RESUME_MAY_DIFFER = ("stage_order", "training.log_every", "training.ckpt_every", "training.max_to_keep",
                     "training.sample_every", "mesh.fsdp")
_ABSENT = "<absent>"
_PATH_FIELDS = ("sd.model_dir", "data.data_dir", "data.tfds_data_dir")


def _flatten(d, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict) and v:
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = os.path.abspath(v) if f"{prefix}{k}" in _PATH_FIELDS and v else v
  return out


def resume_config(workdir: str, stored: Optional[dict], new: dict) -> dict:
  """The config.json a rerun in `workdir` leaves: `new`, plus the stages only `stored` had.

  Raises UserError (before anything is written) if `stored`, the config of the run that
  wrote the workdir, differs from `new` in a field `RESUME_MAY_DIFFER` does not name, once
  a stage has started there (a stage entry: once that stage has), naming the first fields
  and the stages they concern.  Fields `stored` does not have (added to the configs since
  that run, e.g. a new method's section) may take any value.
  """
  if stored is None:
    return new
  a, b = _flatten(stored), _flatten(new)
  ran = [n for n in stored.get("stages", {}) if os.path.isdir(os.path.join(workdir, n))]
  def allowed(k):
    # a field the stored config lacks was added by a later version of the code with the
    # behaviour of the code before it as its default: the run there did not depend on it.
    if k in RESUME_MAY_DIFFER or not ran or k not in a:
      return True
    return k.startswith("stages.") and k.split(".")[1] not in ran
  diffs = sorted(k for k in a.keys() | b.keys() if a.get(k, _ABSENT) != b.get(k, _ABSENT) and not allowed(k))
  if diffs:
    staged = sorted({k.split(".")[1] for k in diffs if k.startswith("stages.")})
    def short(v):
      j = v if v is _ABSENT else json.dumps(v)
      return j if len(j) <= 40 else j[:37] + "..."
    first = "; ".join(f"config.{k} is {short(a.get(k, _ABSENT))} there, {short(b.get(k, _ABSENT))} now"
                      for k in diffs[:3])
    more = f" (+{len(diffs) - 3} more fields)" if len(diffs) > 3 else ""
    touched = ", ".join(staged) if staged else ", ".join(ran) or "none yet"
    raise UserError("--workdir", workdir, f"it holds a run of another config ({first}{more}; stages concerned: "
                    f"{touched}); expected the same config to resume there (only "
                    f"{', '.join(RESUME_MAY_DIFFER)} and stages not started yet may differ): "
                    "use another --workdir")
  merged = dict(new)
  merged["stages"] = {**stored.get("stages", {}), **new.get("stages", {})}
  return merged


def run(config: ml_collections.ConfigDict, workdir: str, step_hook=None) -> Experiment:
  """Validates, then runs every stage of `config.stage_order` not yet done.

  `step_hook(n)` is called after every step of a stage (`stages.Hooks`).  `config` is a
  ConfigDict, or a `Settings` (an experiment's `exp.config`: `settings.to_config_dict`)."""
  if isinstance(config, settings.Settings):
    config = settings.to_config_dict(config)
  validation.check_config(config)                  # the config's own fields, before inputs/ is written
  validation.check_runnable(config)                # not the compile-only "shapes" data
  xla_cache.enable()                               # before anything is compiled
  mesh_lib.set_current(mesh_lib.make(config.mesh.fsdp))   # UserError unless fsdp divides the devices
  config = tasks.get(config).prepare(config, workdir)   # e.g. "tiny" / "synthetic" -> <workdir>/inputs/
  exp = build_experiment(config, workdir)          # raises UserError before anything is written
  cfg_path = os.path.join(workdir, "config.json")
  stored = checkpoints.read_json(cfg_path) if os.path.exists(cfg_path) else None
  merged = resume_config(workdir, stored, json.loads(config.to_json_best_effort()))   # raises UserError
  os.makedirs(workdir, exist_ok=True)
  exp.task.save(exp)
  if merged != stored:
    checkpoints.write_json(cfg_path, merged)
  hooks = stages.Hooks(step=step_hook)
  order = exp.config.stage_order
  kinds = [exp.config.stages[n].kind for n in order]
  progress = console.RunProgress([(n, k, *stages.KINDS[k].work(exp, exp.config.stages[n]))
                                  for n, k in zip(order, kinds)])
  for i, (name, kind) in enumerate(zip(order, kinds)):
    if checkpoints.is_done(os.path.join(workdir, name)) and kind != "report":
      progress.skip(i)
      continue
    progress.start(i)
    t0 = time.monotonic()
    with console.context(f"[{name}]"):
      stages.KINDS[kind].run(exp, name, exp.config.stages[name], workdir, hooks)
    progress.finish(i, time.monotonic() - t0)
  return exp
