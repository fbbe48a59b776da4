"""Runs a config's stages in order, with skip/resume, and aggregates the results.

    exp = build_experiment(config)        # loads data, builds models, validates: writes nothing
    run(config, workdir)                  # build_experiment + every stage + results.json/report.md

Stage kinds (`config.stages.<name>.kind`):
  classifier  trains the evaluation classifier on the full training set
  train       trains a score model on "all" (Standard) or "retain" (Unseen) data
  unlearn     runs an unlearning method (SGU) from scratch (re-training) or
              from a stage / checkpoint directory (fine-tuning)
  evaluate    samples each listed model, unlearning ratio, NLL of retain/forget test data
  report      writes <workdir>/results.json and <workdir>/report.md

Each stage writes `<workdir>/<stage>/`; a stage with DONE.json is skipped, an
interrupted one resumes from its last checkpoint (see `checkpoints`).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
import zlib
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from unlearn_jax import checkpoints
from unlearn_jax import data as data_lib
from unlearn_jax import evaluation
from unlearn_jax import likelihood
from unlearn_jax import losses
from unlearn_jax import models
from unlearn_jax import report as report_lib
from unlearn_jax import sampling
from unlearn_jax import score as score_lib
from unlearn_jax import sde as sde_lib
from unlearn_jax import train_state as ts
from unlearn_jax import training
from unlearn_jax.errors import UserError, check_choice, check_range
from unlearn_jax.unlearning import sgu

STAGE_KINDS = ("classifier", "train", "unlearn", "evaluate", "report")
MODEL_KINDS = ("train", "unlearn")
METHODS = ("sgu",)
STREAMS = ("all", "retain")


@dataclasses.dataclass
class Experiment:
  """Everything the stages share: data, model, SDE.  Built once, before any write."""
  config: ml_collections.ConfigDict
  train: data_lib.Dataset
  test: data_lib.Dataset
  streams: Dict[str, data_lib.Dataset]        # "all", "retain", "forget" (training split)
  test_forget: data_lib.Dataset
  test_retain: data_lib.Dataset
  forget_labels: Tuple[int, ...]
  process: Any
  module: Any
  model_cfg: Any
  example_shape: Tuple[int, ...]
  classifier: Any = None
  #: compiled samplers / NLL functions, keyed by shape: params are arguments, so
  #: every model of the experiment reuses one compilation.
  compiled: Dict[Any, Callable] = dataclasses.field(default_factory=dict)

  @property
  def is_image(self) -> bool:
    return self.train.is_image

  def apply(self, variables, x, time, labels=None, train=False, rngs=None):
    return self.module.apply(variables, x, time, labels, train=train, rngs=rngs)


def stage_seed(config, name: str) -> int:
  """A stable per-stage seed derived from the global seed and the stage name."""
  return int(np.uint32(config.seed * 1_000_003 + zlib.crc32(name.encode())))


# ----------------------------------------------------------------------------
# Validation + construction (no writes).
# ----------------------------------------------------------------------------
def _validate_stages(config) -> None:
  order = tuple(config.stage_order)
  for name in order:
    if name not in config.stages:
      raise UserError("config.stage_order", name, "expected stage names defined under config.stages: "
                      + ", ".join(config.stages.keys()))
  seen = []
  for name in order:
    st = config.stages[name]
    field = f"config.stages.{name}"
    check_choice(f"{field}.kind", st.kind, STAGE_KINDS)
    if st.kind in MODEL_KINDS:
      check_choice(f"{field}.data", st.data, STREAMS)
      check_range(f"{field}.steps", st.steps, 0, 10 ** 9)
      if st.init != "scratch" and st.init not in seen:
        if st.init in config.stages:
          raise UserError(f"{field}.init", st.init, "a stage used as init must run earlier in config.stage_order")
        if not os.path.isdir(os.path.join(st.init, checkpoints.CKPT_DIR)) or \
           not os.path.exists(os.path.join(st.init, checkpoints.META)):
          raise UserError(f"{field}.init", st.init,
                          "expected 'scratch', an earlier stage name, or a stage directory written by "
                          "unlearn_jax (with checkpoints/ and meta.json); no checkpoint found there")
    if st.kind == "unlearn":
      check_choice(f"{field}.method", st.method, METHODS)
      check_choice(f"{field}.variant", st.variant, tuple(sgu.FORGET_LOSSES))
    if st.kind == "evaluate":
      for m in st.models:
        if m not in seen or config.stages[m].kind not in MODEL_KINDS:
          raise UserError(f"{field}.models", m, "expected train/unlearn stages that run earlier")
    seen.append(name)
  check_range("config.sgu.alpha", config.sgu.alpha, 0.0, 1.0)
  if config.training.batch_size < 1:
    raise UserError("config.training.batch_size", config.training.batch_size, "expected a positive integer")
  training.check_batch_size(config.training.batch_size)
  if any(config.stages[n].kind == "classifier" for n in order):
    training.check_batch_size(config.classifier.batch_size, "config.classifier.batch_size")
  check_choice("config.model.output", config.model.output, score_lib.OUTPUT_TYPES)
  check_choice("config.training.weighting", config.training.weighting, losses.WEIGHTINGS)
  check_choice("config.eval.sampler.kind", config.eval.sampler.kind, tuple(SAMPLERS))
  check_choice("config.eval.nll.offset", config.eval.nll.offset, ("score_sde", "density"))


def build_experiment(config) -> Experiment:
  """Loads data and builds the model; raises UserError on any bad input.  Writes nothing."""
  _validate_stages(config)
  process = sde_lib.get_sde(config.sde.name, **config.sde.to_dict())
  if isinstance(process, sde_lib.DDPMSchedule):
    raise UserError("config.sde.name", config.sde.name,
                    "the SGU pipeline needs a continuous SDE (vesde, vpsde, subvpsde) for NLL")
  train = data_lib.load_dataset(config.data, "train")
  test = data_lib.load_dataset(config.data, "test")
  if train.is_image:
    h, w, ch = train.example_shape
    if ch != config.data.num_channels:
      raise UserError("config.data.num_channels", config.data.num_channels,
                      f"expected {ch}: {config.data.name} images here are {h}x{w}x{ch}")
    if (h, w) != (config.data.image_size,) * 2:
      raise UserError("config.data.image_size", config.data.image_size,
                      f"expected {h}: {config.data.name} images here are {h}x{w}x{ch}")
  forget_mask = data_lib.forget_mask(train, config.data)
  test_forget_mask = data_lib.forget_mask(test, config.data)
  forget_labels = tuple(sorted(set(np.asarray(train.labels)[forget_mask].tolist())))
  streams = {"all": train, "retain": data_lib.subset(train, ~forget_mask),
             "forget": data_lib.subset(train, forget_mask)}
  for k, ds in streams.items():
    if len(ds) == 0:
      raise UserError("config.data.forget_classes", tuple(config.data.forget_classes),
                      f"leaves the {k} set empty")
  module, model_cfg = models.build_model(config.model, train.example_shape, 0)
  models.check_image_shape(model_cfg, train.example_shape)
  classifier = None
  if train.is_image and any(config.stages[n].kind == "classifier" for n in config.stage_order):
    classifier = models.build_classifier(config.classifier, train.example_shape, train.num_classes)[0]
  exp = Experiment(config=config, train=train, test=test, streams=streams,
                   test_forget=data_lib.subset(test, test_forget_mask),
                   test_retain=data_lib.subset(test, ~test_forget_mask),
                   forget_labels=forget_labels, process=process, module=module,
                   model_cfg=model_cfg, example_shape=train.example_shape, classifier=classifier)
  for name in config.stage_order:
    st = config.stages[name]
    if st.kind in MODEL_KINDS and st.init not in ("scratch",) and st.init not in config.stages:
      _check_meta(exp, f"config.stages.{name}.init", st.init)
  return exp


def _meta(exp: Experiment, name: str) -> dict:
  return {"stage": name, "model": dataclasses.asdict(exp.model_cfg),
          "model_name": exp.config.model.name, "example_shape": list(exp.example_shape),
          "sde": exp.config.sde.to_dict(), "centered": exp.config.data.centered,
          "output": exp.config.model.output, "data_source": exp.train.source}


def _check_meta(exp: Experiment, field: str, path: str) -> None:
  meta = checkpoints.read_json(os.path.join(path, checkpoints.META))
  if tuple(meta.get("example_shape", ())) != tuple(exp.example_shape):
    raise UserError("config.data.image_size", "x".join(map(str, exp.example_shape)),
                    f"the checkpoint at {path} ({field}) was trained on "
                    f"{'x'.join(map(str, meta.get('example_shape', [])))} data")
  if meta.get("model") != json.loads(json.dumps(dataclasses.asdict(exp.model_cfg))):
    raise UserError(field, path, "its model config differs from config.model: " + json.dumps(meta.get("model")))


# ----------------------------------------------------------------------------
# Model stages: train (Standard / Unseen) and unlearn (SGU).
# ----------------------------------------------------------------------------
def _objectives(exp: Experiment, st) -> Tuple[Dict[str, training.Objective], Any]:
  """(objectives, gradient transform) of a train or unlearn stage."""
  denoise = functools.partial(losses.denoising_loss, reduce=exp.config.training.reduce)
  if st.kind == "train":
    return {"retain": training.Objective(st.data, denoise)}, None
  # SGU Eq. 11: alpha * L(g) + (1 - alpha) * L(f).
  return ({"retain": training.Objective("retain", denoise),
           "forget": training.Objective("forget", sgu.FORGET_LOSSES[st.variant],
                                        std_power=exp.config.sgu.std_power)},
          sgu.sgu(exp.config.sgu.alpha))


def init_state(exp: Experiment, name: str, st, tx, workdir: str) -> ts.TrainState:
  """Random init (re-training) or the EMA parameters of a stage / directory (fine-tuning)."""
  cfg = exp.config
  if st.init == "scratch":
    params = models.init_params(exp.module, jax.random.key(stage_seed(cfg, name)), exp.example_shape)
  else:
    src = os.path.join(workdir, st.init) if st.init in cfg.stages else st.init
    params = load_params(exp, src)
  return ts.create(params, tx)


def load_params(exp: Experiment, stage_dir: str, ema: bool = True):
  """The (EMA) parameters of a stage's latest checkpoint (restored as saved: nested dicts)."""
  del exp  # the checkpoint's own tree is the model's parameter tree
  mngr = checkpoints.manager(stage_dir)
  try:
    raw = checkpoints.restore_raw(mngr)
  finally:
    mngr.close()
  return jax.tree_util.tree_map(jnp.asarray, raw["ema_params" if ema else "params"])


def run_model_stage(exp: Experiment, name: str, st, workdir: str, step_hook=None) -> None:
  cfg = exp.config
  stage_dir = os.path.join(workdir, name)
  objectives, method = _objectives(exp, st)
  lr = st.lr if st.lr is not None else cfg.optim.lr
  tx = training.make_optimizer(lr, warmup=cfg.optim.warmup, grad_clip=cfg.optim.grad_clip,
                               b1=cfg.optim.b1, eps=cfg.optim.eps, method=method)
  spec = training.StepSpec(apply_fn=exp.apply, process=exp.process, output_type=cfg.model.output,
                           objectives=objectives, weighting=cfg.training.weighting,
                           ema_rate=cfg.model.ema_rate, centered=cfg.data.centered,
                           random_flip=cfg.data.random_flip)
  os.makedirs(stage_dir, exist_ok=True)
  if not os.path.exists(os.path.join(stage_dir, checkpoints.META)):
    checkpoints.write_json(os.path.join(stage_dir, checkpoints.META), _meta(exp, name))
  state = init_state(exp, name, st, tx, workdir)
  seed = stage_seed(cfg, name)
  streams = {o.stream: exp.streams[o.stream] for o in objectives.values()}
  batch = cfg.training.batch_size

  def get_batches(step):
    return {k: data_lib.batch_at_step(ds, step, batch, seed + i,
                                      process_index=jax.process_index(),
                                      process_count=jax.process_count())
            for i, (k, ds) in enumerate(sorted(streams.items()))}

  def sample_hook(step, state):
    x = generate(exp, state.ema_params, cfg.eval.grid_size, jax.random.key(step))
    report_lib.save_samples(os.path.join(stage_dir, "samples", f"step_{step:07d}.png"), x, exp.is_image)

  loop = training.LoopConfig(num_steps=st.steps, batch_size=batch, seed=seed,
                             log_every=cfg.training.log_every, ckpt_every=cfg.training.ckpt_every,
                             sample_every=cfg.training.sample_every, max_to_keep=cfg.training.max_to_keep)
  t0 = time.time()
  training.train_loop(stage_dir, state, functools.partial(training.train_step, spec=spec, tx=tx),
                      loop, get_batches, sample_hook=sample_hook, step_hook=step_hook, stage_name=name)
  checkpoints.write_json(os.path.join(stage_dir, checkpoints.DONE),
                         {"steps": st.steps, "wall_time_s": time.time() - t0})


# ----------------------------------------------------------------------------
# The evaluation classifier.
# ----------------------------------------------------------------------------
def run_classifier_stage(exp: Experiment, name: str, st, workdir: str, step_hook=None) -> None:
  cfg = exp.config
  if exp.classifier is None:
    return
  stage_dir = os.path.join(workdir, name)
  tx = training.make_optimizer(cfg.classifier.lr, grad_clip=0.0)
  params = models.init_params(exp.classifier, jax.random.key(stage_seed(cfg, name)), exp.example_shape)
  state = ts.create(params, tx)
  seed = stage_seed(cfg, name)
  get_batches = lambda step: {"all": data_lib.batch_at_step(exp.train, step, cfg.classifier.batch_size, seed)}
  loop = training.LoopConfig(num_steps=cfg.classifier.steps, batch_size=cfg.classifier.batch_size, seed=seed,
                             log_every=min(cfg.training.log_every, cfg.classifier.steps),
                             ckpt_every=cfg.training.ckpt_every)
  t0 = time.time()
  final = training.train_loop(stage_dir, state, functools.partial(
      evaluation.classifier_step, apply_fn=exp.classifier.apply, tx=tx), loop, get_batches,
      step_hook=step_hook, stage_name=name)
  test_x = data_lib.to_float(exp.test.images)
  acc = float(np.mean(evaluation.predict(exp.classifier.apply, final.params, test_x) == exp.test.labels))
  logging.info("[%s] test accuracy %.4f", name, acc)
  checkpoints.write_json(os.path.join(stage_dir, checkpoints.DONE),
                         {"test_accuracy": acc, "steps": cfg.classifier.steps, "wall_time_s": time.time() - t0})


def classifier_params(exp: Experiment, workdir: str):
  name = next(n for n in exp.config.stage_order if exp.config.stages[n].kind == "classifier")
  return load_params(exp, os.path.join(workdir, name), ema=False)


# ----------------------------------------------------------------------------
# Sampling and evaluation.
# ----------------------------------------------------------------------------
def _pc(exp, score_fn, shape, rng):
  s = exp.config.eval.sampler
  return sampling.pc_sample(rng, exp.process, score_fn, shape, predictor=s.predictor,
                            corrector=s.corrector, snr=s.snr, n_steps=s.n_steps, eps=s.eps)


def _ode(exp, score_fn, shape, rng):
  s = exp.config.eval.sampler
  return sampling.ode_sample(rng, exp.process, score_fn, shape, eps=s.eps)[0]


SAMPLERS = {"pc": _pc, "ode": _ode}


def model_score_apply(exp: Experiment) -> Callable:
  """score_apply(params, x, t) of the experiment's model."""
  def score_apply(params, x, t):
    out = exp.apply({"params": params}, x, score_lib.time_input(exp.process, t))
    return score_lib.to_score(out, score_lib.marginal_std(exp.process, t), exp.config.model.output)
  return score_apply


def _sampler(exp: Experiment, per_dev: int) -> Callable:
  """pmap(params broadcast, one key per device) -> samples in data space; built once per shape."""
  key = ("sample", per_dev)
  if key not in exp.compiled:
    cfg = exp.config
    shape = (per_dev,) + exp.example_shape
    score_apply = model_score_apply(exp)
    sampler = SAMPLERS[cfg.eval.sampler.kind]

    @functools.partial(jax.pmap, in_axes=(None, 0))
    def sample(params, rng):
      x = sampler(exp, lambda x, t: score_apply(params, x, t), shape, rng)
      if exp.is_image:
        x = jnp.clip(data_lib.inverse_scaler(x, cfg.data.centered), 0.0, 1.0)
      return x

    exp.compiled[key] = sample
  return exp.compiled[key]


def generate(exp: Experiment, params, n: int, rng: jax.Array, batch_size: Optional[int] = None) -> np.ndarray:
  """n samples in data space ([0, 1] images, raw toy points), batched and pmapped over devices."""
  n_dev = jax.local_device_count()
  batch_size = min(batch_size or exp.config.eval.sample_batch_size, max(n, 1))
  sample = _sampler(exp, -(-batch_size // n_dev))
  out, i = [], 0
  while sum(len(o) for o in out) < n:
    keys = jax.random.split(jax.random.fold_in(rng, i), n_dev)
    out.append(np.asarray(sample(params, keys)).reshape((-1,) + exp.example_shape))
    i += 1
  return np.concatenate(out)[:n]


def _nll_fn(exp: Experiment) -> Callable:
  """The jitted probability-flow NLL of the experiment's model, built once."""
  if "nll" not in exp.compiled:
    ncfg = exp.config.eval.nll
    exp.compiled["nll"] = jax.jit(likelihood.get_likelihood_fn(
        exp.process, model_score_apply(exp), rtol=ncfg.rtol, atol=ncfg.atol, eps=exp.config.sde.eps,
        hutchinson="exact" if not exp.is_image else ncfg.hutchinson, offset=nll_offset(exp)))
  return exp.compiled["nll"]


def nll_offset(exp: Experiment) -> float:
  """score_sde adds `7 - inverse_scaler(-1)` to every bits/dim (also to the SGU toy's
  continuous data, as the paper's Table 1 magnitudes show); "density" adds only what
  the change of variables and 8-bit dequantization call for."""
  centered = exp.config.data.centered
  if exp.config.eval.nll.offset == "score_sde":
    return 7.0 - (0.0 if centered else -1.0)
  return likelihood.bpd_offset(centered, dequantized=exp.is_image)


def evaluate_model(exp: Experiment, workdir: str, model: str, rng: jax.Array, clf_params=None) -> dict:
  cfg = exp.config
  t0 = time.time()
  params = load_params(exp, os.path.join(workdir, model))
  samples = generate(exp, params, cfg.eval.num_samples, jax.random.fold_in(rng, 0))
  if exp.is_image:
    pred = evaluation.predict(exp.classifier.apply, clf_params, samples)
  else:
    pred = np.asarray(data_lib.nearest_component(samples))
  result = {"unlearning_ratio": evaluation.unlearning_ratio(pred, exp.forget_labels),
            "num_samples": int(len(samples)),
            "class_histogram": np.bincount(pred, minlength=exp.train.num_classes).tolist()}
  ncfg = cfg.eval.nll
  offset = nll_offset(exp)
  nll_fn = _nll_fn(exp)
  nll = {}
  for i, (key, ds) in enumerate((("retain", exp.test_retain), ("forget", exp.test_forget))):
    x = ds.images[:ncfg.num_examples]
    x = data_lib.to_float(x) if exp.is_image else np.asarray(x, np.float32)
    nll[key] = evaluation.dataset_nll(nll_fn, params, x, jax.random.fold_in(rng, 10 + i),
                                      batch_size=min(ncfg.batch_size, len(x)), passes=ncfg.passes,
                                      is_image=exp.is_image, centered=cfg.data.centered)
  nll.update(unit="bits/dim", offset=offset, num_examples=min(ncfg.num_examples, len(exp.test_forget)),
             convention=cfg.eval.nll.offset)
  result["nll"] = nll
  grid = os.path.join(workdir, "evaluate", f"{model}_samples.png")
  report_lib.save_samples(grid, samples[:cfg.eval.grid_size] if exp.is_image else samples,
                          exp.is_image, labels=None if exp.is_image else pred)
  result["samples_png"] = os.path.relpath(grid, workdir)
  result["wall_time_s"] = time.time() - t0
  return result


def run_evaluate_stage(exp: Experiment, name: str, st, workdir: str, step_hook=None) -> None:
  out_dir = os.path.join(workdir, name)
  os.makedirs(out_dir, exist_ok=True)
  clf = classifier_params(exp, workdir) if exp.is_image else None
  for model in st.models:
    path = os.path.join(out_dir, f"{model}.json")
    if os.path.exists(path):
      continue
    res = evaluate_model(exp, workdir, model, jax.random.key(stage_seed(exp.config, name)), clf)
    logging.info("[%s] %s: %s", name, model, {k: res[k] for k in ("unlearning_ratio", "nll")})
    checkpoints.write_json(path, res)
  checkpoints.write_json(os.path.join(out_dir, checkpoints.DONE), {"models": list(st.models)})


def run_report_stage(exp: Experiment, name: str, st, workdir: str, step_hook=None) -> None:
  report_lib.write_results(exp, workdir)


RUNNERS = {"classifier": run_classifier_stage, "train": run_model_stage, "unlearn": run_model_stage,
           "evaluate": run_evaluate_stage, "report": run_report_stage}


def run(config: ml_collections.ConfigDict, workdir: str, step_hook=None) -> Experiment:
  """Validates, then runs every stage of `config.stage_order` not yet done."""
  exp = build_experiment(config)          # raises UserError before anything is written
  os.makedirs(workdir, exist_ok=True)
  cfg_path = os.path.join(workdir, "config.json")
  if not os.path.exists(cfg_path):
    checkpoints.write_json(cfg_path, json.loads(config.to_json_best_effort()))
  for name in config.stage_order:
    st = config.stages[name]
    stage_dir = os.path.join(workdir, name)
    if checkpoints.is_done(stage_dir) and st.kind != "report":
      logging.info("[%s] done, skipping", name)
      continue
    logging.info("[%s] running (%s)", name, st.kind)
    RUNNERS[st.kind](exp, name, st, workdir, step_hook=step_hook)
  return exp
