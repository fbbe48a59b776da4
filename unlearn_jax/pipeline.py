"""Runs a config's stages in order, with skip/resume, and aggregates the results.

    exp = build_experiment(config)        # loads data, builds models, validates: writes nothing
    run(config, workdir)                  # build_experiment + every stage + results.json/report.md

Stage kinds (`config.stages.<name>.kind`):
  classifier  trains the evaluation classifier on the full training set
  train       trains a model on "all" (Standard / pretraining) or "retain" (Unseen) data
  unlearn     runs an unlearning method (`unlearning.methods`: sgu, finetune, ga,
              dimum, salun, sfron) from scratch (re-training) or from a stage /
              checkpoint directory (fine-tuning)
  mask        computes a parameter mask once (SalUn saliency, SFR-on Fisher ratio)
  synthesize  generates an auxiliary data set from a model under the retain conditions
  attack      DiMRA (DiMUM paper Eq. 7): fine-tunes an unlearned model with the
              ordinary loss on an auxiliary stream, evaluating AR every k steps
  evaluate    samples each listed model: unconditional models -> unlearning ratio and
              NLL; class-conditional -> AR_MU, AR_CL and the Fréchet distance
  report      writes <workdir>/results.json and <workdir>/report.md

Each stage writes `<workdir>/<stage>/`; a stage with DONE.json is skipped, an
interrupted one resumes from its last checkpoint (see `checkpoints`).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import numbers
import os
import time
import zlib
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

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
from unlearn_jax import sd_experiment as sd_lib
from unlearn_jax import train_state as ts
from unlearn_jax import training
from unlearn_jax.errors import UserError, check_choice, check_range
from unlearn_jax.reporting import figures
from unlearn_jax.unlearning import combine
from unlearn_jax.unlearning import dimum as dimum_lib
from unlearn_jax.unlearning import methods as methods_lib
from unlearn_jax.unlearning import saliency
from unlearn_jax.unlearning import scissorhands as shs_lib
from unlearn_jax.unlearning import selective_amnesia as sa_lib

STAGE_KINDS = ("classifier", "train", "unlearn", "mask", "synthesize", "attack", "evaluate", "report")
MODEL_KINDS = ("train", "unlearn", "attack")
#: data streams every experiment has; synthesize stages add their own (by stage name).
STREAMS = ("all", "retain", "forget", "alternative", "test_retain")
CONDITIONAL_KINDS = ("synthesize", "attack")
#: mask kinds computed over the trainable leaves only (a Stable Diffusion subset).
SUBSET_MASKS = ("salun", "sfron")


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
  #: alt[c]: the alternative class of each class (itself if retained).
  alt: np.ndarray
  conditional: bool
  process: Any
  module: Any
  model_cfg: Any
  example_shape: Tuple[int, ...]
  classifier: Any = None
  #: compiled samplers / NLL functions, keyed by shape: params are arguments, so
  #: every model of the experiment reuses one compilation.
  compiled: Dict[Any, Callable] = dataclasses.field(default_factory=dict)
  #: Stable Diffusion experiments (`sd_experiment.SDContext`); None otherwise.
  sd: Any = None
  #: anchor_fn(config) -> (num_classes, K) CORE anchors in place of `core.anchor_candidates`.
  anchor_fn: Optional[Callable] = None

  @property
  def is_image(self) -> bool:
    return self.train.is_image

  @property
  def null_label(self) -> int:
    return self.train.num_classes if self.conditional else 0

  @property
  def retained_classes(self) -> Tuple[int, ...]:
    return tuple(c for c in range(self.train.num_classes) if c not in self.forget_labels)

  def stream(self, name: str, workdir: str) -> data_lib.Dataset:
    """A base stream, or the data a synthesize stage wrote."""
    if name in self.streams:
      return self.streams[name]
    return load_synthetic(self, os.path.join(workdir, name))

  def apply(self, variables, x, time, labels=None, train=False, rngs=None):
    return self.module.apply(variables, x, time, labels, train=train, rngs=rngs)


def stage_seed(config, name: str) -> int:
  """A stable per-stage seed derived from the global seed and the stage name (mod 2^32)."""
  return int((config.seed * 1_000_003 + zlib.crc32(name.encode())) % (1 << 32))


# ----------------------------------------------------------------------------
# Validation + construction (no writes).
# ----------------------------------------------------------------------------
def _check_source(config, field: str, value: str, seen, kinds=MODEL_KINDS) -> None:
  if sd_lib.is_sd(config) and value == sd_lib.BASE:
    return
  """`value` names an earlier stage of one of `kinds`, or a stage directory on disk."""
  if value in seen and config.stages[value].kind in kinds:
    return
  if value in config.stages:
    raise UserError(field, value, f"a stage used here must be a {'/'.join(kinds)} stage that runs "
                    "earlier in config.stage_order")
  if not os.path.isdir(os.path.join(value, checkpoints.CKPT_DIR)) or \
     not os.path.exists(os.path.join(value, checkpoints.META)):
    raise UserError(field, value, "expected 'scratch', an earlier stage name, or a stage directory written by "
                    "unlearn_jax (with checkpoints/ and meta.json); no checkpoint found there")


def _validate_stages(config) -> None:
  order = tuple(config.stage_order)
  for name in order:
    if name not in config.stages:
      raise UserError("config.stage_order", name, "expected stage names defined under config.stages: "
                      + ", ".join(config.stages.keys()))
  conditional = bool(config.model.get("conditional", False))
  seen = []
  for name in order:
    st = config.stages[name]
    field = f"config.stages.{name}"
    check_choice(f"{field}.kind", st.kind, STAGE_KINDS)
    if st.kind in CONDITIONAL_KINDS and not conditional:
      raise UserError(f"{field}.kind", st.kind, "needs a class-conditional model (config.model.conditional=True)")
    if st.kind in MODEL_KINDS:
      synth = tuple(n for n in seen if config.stages[n].kind == "synthesize")
      check_choice(f"{field}.data", st.data, STREAMS + synth)
      check_range(f"{field}.steps", st.steps, 0, 10 ** 9, integer=True)
      check_range(f"{field}.batch_size", st.get("batch_size", 0), 0, 1 << 24, integer=True)   # 0: config.training's
      if st.get("batch_size", 0):
        training.check_batch_size(st.batch_size, f"{field}.batch_size")
      if st.get("lr", None) is not None:
        check_range(f"{field}.lr", st.lr, 0.0, MAX_LR, lo_open=True)
      if st.get("ema_rate", None) is not None:
        check_range(f"{field}.ema_rate", st.ema_rate, 0.0, 1.0, hi_open=True)
      if st.kind == "attack" and st.init == "scratch":
        raise UserError(f"{field}.init", st.init, "an attack starts from an unlearned model: name its stage")
      if st.init != "scratch":
        _check_source(config, f"{field}.init", st.init, seen)
    if st.kind == "attack":
      check_range(f"{field}.eval_every", st.eval_every, 0, 10 ** 9)
      if not any(config.stages[n].kind == "classifier" for n in seen):
        raise UserError(f"{field}.kind", st.kind, "the attack's AR needs a classifier stage earlier in "
                        "config.stage_order")
    if st.kind == "unlearn":
      check_choice(f"{field}.method", st.method, methods_lib.METHODS)
      if st.method == "sgu":
        check_choice(f"{field}.variant", st.variant, ("orthogonal", "obtuse"))
      if st.method in methods_lib.CONDITIONAL and not conditional:
        raise UserError(f"{field}.method", st.method, "needs a class-conditional model (config.model.conditional=True)")
      want = methods_lib.MASKS.get(st.method, "salun")
      if st.method in ("sa", "shs") and not st.mask:
        raise UserError(f"{field}.mask", st.mask, f"method {st.method!r} needs an earlier mask stage with "
                        f"method {want!r}")
      if st.mask:
        if st.mask not in seen or config.stages[st.mask].kind != "mask" or config.stages[st.mask].method != want:
          raise UserError(f"{field}.mask", st.mask, f"expected an earlier mask stage with method {want!r}")
      if st.method == "sa":
        synth = tuple(n for n in seen if config.stages[n].kind == "synthesize")
        check_choice("config.sa.replay", config.sa.replay, ("retain", "all") + synth)
    if st.kind == "mask":
      check_choice(f"{field}.method", st.method, methods_lib.MASK_KINDS)
      _check_source(config, f"{field}.init", st.init, seen)
      check_range(f"{field}.steps", st.steps, 0, 10 ** 9)
    if st.kind == "synthesize":
      _check_source(config, f"{field}.init", st.init, seen)
      check_range(f"{field}.num", st.num, 0, 10 ** 9)
    if st.kind == "evaluate":
      for m in st.models:
        if sd_lib.is_sd(config) and m == sd_lib.BASE:
          continue
        if m not in seen or config.stages[m].kind not in MODEL_KINDS:
          raise UserError(f"{field}.models", m, "expected train/unlearn/attack stages that run earlier")
    seen.append(name)
  check_range("config.sgu.alpha", config.sgu.alpha, 0.0, 1.0)
  check_range("config.sgu.max_std", config.sgu.max_std, 0.0, float("inf"))
  check_choice("config.optim.decay", config.optim.decay, training.DECAYS)
  check_choice("config.optim.name", config.optim.name, training.OPTIMIZERS)
  for name in config.stage_order:
    if config.stages[name].get("decay"):
      check_choice(f"config.stages.{name}.decay", config.stages[name].decay, training.DECAYS)
  check_range("config.salun.fraction", config.salun.fraction, 0.0, 1.0)
  check_range("config.training.cond_drop", config.training.cond_drop, 0.0, 1.0)
  if config.training.batch_size < 1:
    raise UserError("config.training.batch_size", config.training.batch_size, "expected a positive integer")
  training.check_batch_size(config.training.batch_size)
  if any(config.stages[n].kind == "classifier" for n in order):
    training.check_batch_size(config.classifier.batch_size, "config.classifier.batch_size")
  check_choice("config.model.output", config.model.output, score_lib.OUTPUT_TYPES)
  losses.check_weighting(config.sde.name, config.training.weighting)   # vlb: DDPM only; likelihood: SDEs
  check_choice("config.eval.nll.offset", config.eval.nll.offset, ("score_sde", "density"))
  _validate_numbers(config)


INF = float("inf")
MAX_LR = 1e3
#: Every numeric field a run reads (config_lib.base(), ddpm_base(), sd_experiment.config_defaults),
#: checked before anything is written: (path, lo, hi, kind); kind "int" is an integer in
#: [lo, hi], "[]" a number in [lo, hi], "(]" / "[)" / "()" with open ends.  A path absent
#: from a config is skipped; a tuple value has each entry checked.
NUMERIC_FIELDS = (
    ("seed", 0, 2 ** 31 - 1, "int"),
    ("data.max_examples", 0, 10 ** 9, "int"), ("data.toy_num_samples", 1, 10 ** 9, "int"),
    ("data.seed", 0, 2 ** 31 - 1, "int"), ("data.image_indices", 1, 10 ** 6, "int"),
    ("sde.sigma_min", 0.0, INF, "()"), ("sde.sigma_max", 0.0, INF, "()"),
    ("sde.beta_min", 0.0, INF, "[)"), ("sde.beta_max", 0.0, INF, "()"),
    ("sde.beta_start", 0.0, 1.0, "()"), ("sde.beta_end", 0.0, 1.0, "()"),
    ("sde.N", 1, 10 ** 6, "int"), ("sde.eps", 0.0, 1.0, "()"),
    ("model.ch", 1, 1 << 16, "int"), ("model.ch_mult", 1, 1 << 10, "int"),
    ("model.num_res_blocks", 1, 1 << 10, "int"), ("model.attn_resolutions", 1, 1 << 16, "int"),
    ("model.dropout", 0.0, 1.0, "[)"), ("model.hidden", 1, 1 << 20, "int"),
    ("model.num_layers", 1, 1 << 10, "int"), ("model.ema_rate", 0.0, 1.0, "[)"),
    ("optim.lr", 0.0, MAX_LR, "(]"), ("optim.warmup", 0, 10 ** 9, "int"),
    ("optim.grad_clip", 0.0, 1e6, "[]"), ("optim.b1", 0.0, 1.0, "[)"), ("optim.eps", 0.0, 1.0, "(]"),
    ("training.log_every", 1, 10 ** 9, "int"), ("training.ckpt_every", 1, 10 ** 9, "int"),
    ("training.sample_every", 0, 10 ** 9, "int"), ("training.max_to_keep", 1, 10 ** 6, "int"),
    ("training.cond_drop", 0.0, 1.0, "[]"),
    ("sgu.alpha", 0.0, 1.0, "[]"), ("sgu.std_power", -1e3, 1e3, "[]"), ("sgu.max_std", 0.0, INF, "[)"),
    ("dimum.beta", 0.0, 1e6, "[]"), ("ga.beta", 0.0, 1e6, "[]"), ("salun.beta", 0.0, 1e6, "[]"),
    ("salun.fraction", 0.0, 1.0, "[]"), ("sfron.alpha_max", 0.0, 1e6, "[]"),
    ("erasediff.eta", 0.0, 1e6, "[]"), ("erasediff.lam", 0.0, 1e6, "[]"),
    ("erasediff.inner_steps", 0, 10 ** 6, "int"), ("erasediff.inner_lr", 0.0, 1e6, "[]"),
    ("core.alpha", 0.0, 1e6, "[]"), ("core.group_size", 1, 10 ** 6, "int"), ("core.k", 1, 10 ** 6, "int"),
    ("core.base", -1, 10 ** 6, "int"),
    ("esd.eta", 0.0, 1e6, "[]"), ("esd.base", -1, 10 ** 6, "int"), ("esd.ddim_steps", 1, 10 ** 5, "int"),
    ("esd.guidance", 0.0, 1e3, "[]"), ("ca.prior_weight", 0.0, 1e6, "[]"),
    ("sa.gamma", 0.0, 1e6, "[]"), ("sa.lam", 0.0, 1e12, "[]"), ("sa.fisher_samples", 1, 10 ** 7, "int"),
    ("sa.fisher_t", 2, 10 ** 5, "int"), ("shs.sparsity", 0.0, 1.0, "[]"), ("shs.gamma", 0.0, 1e6, "[]"),
    ("classifier.features", 1, 1 << 16, "int"), ("classifier.dense", 1, 1 << 20, "int"),
    ("classifier.dropout", 0.0, 1.0, "[)"), ("classifier.steps", 0, 10 ** 9, "int"),
    ("classifier.lr", 0.0, MAX_LR, "(]"), ("classifier.image_size", 1, 1 << 14, "int"),
    ("eval.num_samples", 1, 10 ** 9, "int"), ("eval.sample_batch_size", 1, 1 << 24, "int"),
    ("eval.fd_num_samples", 2, 10 ** 9, "int"), ("eval.attack_num_samples", 1, 10 ** 9, "int"),
    ("eval.grid_size", 1, 10 ** 5, "int"), ("eval.confidence_threshold", 0.0, 1.0, "[]"),
    ("eval.min_confident_share", 0.0, 1.0, "[]"),
    ("eval.sampler.snr", 0.0, 1e3, "[]"), ("eval.sampler.n_steps", 1, 10 ** 6, "int"),
    ("eval.sampler.eps", 0.0, 1.0, "()"), ("eval.sampler.guidance", 0.0, 1e3, "[]"),
    ("eval.sampler.eta", 0.0, 1.0, "[]"),
    ("eval.nll.num_examples", 1, 10 ** 9, "int"), ("eval.nll.batch_size", 1, 1 << 24, "int"),
    ("eval.nll.passes", 1, 10 ** 4, "int"), ("eval.nll.rtol", 0.0, 1.0, "()"), ("eval.nll.atol", 0.0, 1.0, "()"),
    ("sd.encode_batch_size", 1, 1 << 16, "int"), ("sd.tiny.block_out_channels", 1, 1 << 14, "int"),
    ("sd.tiny.cross_attention_dim", 1, 1 << 14, "int"),
)


def _field(config, path: str):
  """config.<path>, or KeyError if a section or field is absent."""
  node = config
  for part in path.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise KeyError(path)
    node = node[part]
  return node


def _validate_numbers(config) -> None:
  """Range checks of `NUMERIC_FIELDS` and the cross-field orderings, with full field names."""
  for path, lo, hi, kind in NUMERIC_FIELDS:
    try:
      value = _field(config, path)
    except KeyError:
      continue
    field = f"config.{path}"
    kw = dict(integer=True) if kind == "int" else dict(lo_open=kind[0] == "(", hi_open=kind[1] == ")")
    if isinstance(value, (tuple, list)):
      for v in value:
        if not (isinstance(v, numbers.Real) and not isinstance(v, bool) and
                (kind != "int" or isinstance(v, numbers.Integral)) and lo <= v <= hi):
          raise UserError(field, tuple(value), f"expected {'integers' if kind == 'int' else 'numbers'} "
                          f"in [{lo}, {hi}]")
    elif value is not None:
      check_range(field, value, lo, hi, **kw)
  sde = config.get("sde", {})
  if "sigma_min" in sde and "sigma_max" in sde and sde.name == "vesde" and not sde.sigma_min < sde.sigma_max:
    raise UserError("config.sde.sigma_max", sde.sigma_max, f"expected a number > config.sde.sigma_min "
                    f"({sde.sigma_min})")
  if "beta_min" in sde and "beta_max" in sde and sde.name in ("vpsde", "subvpsde") and \
     not sde.beta_min < sde.beta_max:
    raise UserError("config.sde.beta_max", sde.beta_max, f"expected a number > config.sde.beta_min "
                    f"({sde.beta_min})")
  if "beta_start" in sde and "beta_end" in sde and not sde.beta_start <= sde.beta_end:
    raise UserError("config.sde.beta_end", sde.beta_end, f"expected a number >= config.sde.beta_start "
                    f"({sde.beta_start})")
  if "nll" in config.get("eval", {}):
    check_choice("config.eval.nll.hutchinson", config.eval.nll.hutchinson, likelihood.DIVERGENCES)


def build_experiment(config, workdir: Optional[str] = None) -> Experiment:
  """Loads data and builds the model; raises UserError on any bad input.  Writes nothing
  (a Stable Diffusion experiment reads its latent cache from `workdir` if there is one)."""
  _validate_stages(config)
  if sd_lib.is_sd(config):
    exp = sd_lib.build(config, workdir, experiment_cls=Experiment)
  else:
    exp = _build_class_experiment(config)
  return _check_stage_sources(exp)


def _build_class_experiment(config) -> Experiment:
  process = sde_lib.get_sde(config.sde.name, **config.sde.to_dict())
  discrete = isinstance(process, sde_lib.DDPMSchedule)
  check_choice("config.eval.sampler.kind", config.eval.sampler.kind,
               tuple(DDPM_SAMPLERS) if discrete else tuple(SAMPLERS))
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
  conditional = bool(config.model.get("conditional", False))
  alt = dimum_lib.alternative_classes(train.num_classes, forget_labels, config.unlearn.alternative,
                                      seed=config.seed)
  streams["alternative"] = dimum_lib.memorization_set(streams["forget"], streams["retain"], alt,
                                                      config.unlearn.alternative, seed=config.seed)
  streams["test_retain"] = data_lib.subset(test, ~test_forget_mask)
  module, model_cfg = models.build_model(config.model, train.example_shape,
                                         train.num_classes if conditional else 0)
  models.check_image_shape(model_cfg, train.example_shape)
  classifier = None
  if train.is_image and any(config.stages[n].kind == "classifier" for n in config.stage_order):
    classifier = models.build_classifier(config.classifier, train.example_shape, train.num_classes)[0]
  exp = Experiment(config=config, train=train, test=test, streams=streams,
                   test_forget=data_lib.subset(test, test_forget_mask),
                   test_retain=data_lib.subset(test, ~test_forget_mask),
                   forget_labels=forget_labels, alt=alt, conditional=conditional,
                   process=process, module=module,
                   model_cfg=model_cfg, example_shape=train.example_shape, classifier=classifier)
  return exp


def _check_stage_sources(exp: Experiment) -> Experiment:
  config = exp.config
  for name in config.stage_order:
    st = config.stages[name]
    if exp.sd is not None and st.get("trainable", ""):
      check_choice(f"config.stages.{name}.trainable", st.trainable, sd_lib.sd.TRAINABLE)
    if exp.sd is not None and st.kind == "mask" and st.method not in SUBSET_MASKS:
      raise UserError(f"config.stages.{name}.method", st.method, "is not available when only some parameters "
                      "train (config.sd.trainable); expected one of " + ", ".join(SUBSET_MASKS))
    if st.kind in MODEL_KINDS + ("mask", "synthesize") and st.init not in ("scratch", sd_lib.BASE) \
       and st.init not in config.stages:
      _check_meta(exp, f"config.stages.{name}.init", st.init)
    if st.kind == "unlearn":   # every method option is checked here, before anything is written
      if st.variant and st.method not in methods_lib.VARIANTS:
        raise UserError(f"config.stages.{name}.variant", st.variant, f"method {st.method!r} has no variants; "
                        "methods with variants: " + ", ".join(methods_lib.VARIANTS))
      _, _, options = _objectives(exp, st)
      n_levels = getattr(exp.process, "N", None)
      if st.method == "esd" and n_levels and not 1 <= config.esd.ddim_steps <= n_levels:
        raise UserError("config.esd.ddim_steps", config.esd.ddim_steps,
                        f"expected 1..{n_levels} (the process's discrete levels, config.sde.N)")
      if exp.sd is not None and st.init == "scratch":
        raise UserError(f"config.stages.{name}.init", st.init, "a Stable Diffusion experiment starts from "
                        f"{sd_lib.BASE!r} (the model directory) or an earlier stage")
      if (options.frozen or options.reset) and st.init == "scratch":
        raise UserError(f"config.stages.{name}.init", st.init, f"method {st.method!r} starts from a pretrained "
                        "model (its frozen targets / weights to reset): name an earlier stage or a stage directory")
  return exp


def _meta(exp: Experiment, name: str, st=None) -> dict:
  ema = {} if st is None else {"ema_rate": stage_ema_rate(exp.config, st),
                               "weights": evaluated_weights(stage_ema_rate(exp.config, st))}
  return {"stage": name, "model": dataclasses.asdict(exp.model_cfg), **ema,
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
def _objectives(exp: Experiment, st) -> Tuple[Dict[str, training.Objective], Any, methods_lib.Options]:
  """(objectives, gradient transform, options) of a train, attack or unlearn stage.

  Pretraining (train) and the DiMRA attack (Eq. 7) use the ordinary loss on their
  stream, with condition dropout for classifier-free guidance; an unlearn stage's
  objectives come from `unlearning.methods` (no condition dropout: the
  conditions are what is being unlearned).
  """
  cfg = exp.config
  if st.kind in ("train", "attack"):
    denoise = functools.partial(losses.denoising_loss, reduce=cfg.training.reduce)
    drop = cfg.training.cond_drop if exp.conditional else 0.0
    name = "retain" if st.kind == "train" else "attack"
    return {name: training.Objective(st.data, denoise, cond_drop=drop)}, None, methods_lib.Options()
  return methods_lib.build(st.method, st.variant, cfg, alt=exp.alt, steps=st.steps,
                           forget=exp.forget_labels, num_classes=exp.train.num_classes,
                           anchor_fn=exp.anchor_fn)


def _source_dir(exp: Experiment, workdir: str, init: str) -> str:
  return os.path.join(workdir, init) if init in exp.config.stages else init


def source_params(exp: Experiment, workdir: str, init: str):
  """The evaluated weights (`stage_ema_rate`) a stage starts from: an earlier stage, a stage
  directory, or (Stable Diffusion) "base", the model directory's weights."""
  if exp.sd is not None and init == sd_lib.BASE:
    return exp.sd.base_params
  return load_params(exp, _source_dir(exp, workdir, init))


def init_state(exp: Experiment, name: str, st, tx, workdir: str, reset_mask=None) -> ts.TrainState:
  """Random init (re-training) or the evaluated weights of a stage / directory (fine-tuning);
  the stage's EMA starts from the same weights.

  With `reset_mask` (Scissorhands), the masked weights are replaced by a fresh init.
  """
  cfg = exp.config
  fresh = lambda: models.init_params(exp.module, jax.random.key(stage_seed(cfg, name)), exp.example_shape,
                                     conditional=exp.conditional)
  if st.init == "scratch":
    params = fresh()
  else:
    params = source_params(exp, workdir, st.init)
    if reset_mask is not None:
      params = shs_lib.reset(params, fresh(), reset_mask)
  return ts.create(params, tx)


def stage_ema_rate(cfg, st) -> float:
  """The EMA rate of a train / unlearn / attack stage: its `ema_rate`, else
  config.model.ema_rate for train stages and unlearn stages from scratch (re-training),
  and 0 (no EMA: the evaluated weights are the trained ones) for unlearn stages that
  fine-tune a model and for attacks (`config_lib.stage`)."""
  rate = st.get("ema_rate", None)
  if rate is not None:
    return float(rate)
  if st.kind == "train" or (st.kind == "unlearn" and st.init == "scratch"):
    return float(cfg.model.ema_rate)
  return 0.0


def evaluated_weights(rate: float) -> str:
  """Which weights of a TrainState a stage with EMA rate `rate` is evaluated on."""
  return "ema" if rate > 0 else "params"


def state_weights(state: ts.TrainState, rate: float):
  """The evaluated weights of a live TrainState (`evaluated_weights`)."""
  return state.ema_params if evaluated_weights(rate) == "ema" else state.params


def weights_info(exp: Experiment, workdir: str, model: str) -> dict:
  """What results.json records of a model's evaluated weights: {"weights", "ema_rate"}."""
  if exp.sd is not None and model == sd_lib.BASE:
    return {"weights": "base", "ema_rate": None}
  meta_path = os.path.join(_source_dir(exp, workdir, model), checkpoints.META)
  meta = checkpoints.read_json(meta_path) if os.path.exists(meta_path) else {}
  return {"weights": meta.get("weights", "ema"), "ema_rate": meta.get("ema_rate")}


def load_params(exp: Experiment, stage_dir: str, ema: Optional[bool] = None):
  """The parameters of a stage's latest checkpoint (restored as saved: nested dicts):
  ema=None its evaluated weights (meta.json's "weights"; the EMA in directories written
  before stages recorded it), True the EMA, False the trained parameters."""
  del exp  # the checkpoint's own tree is the model's parameter tree
  if ema is None:
    meta_path = os.path.join(stage_dir, checkpoints.META)
    meta = checkpoints.read_json(meta_path) if os.path.exists(meta_path) else {}
    ema = meta.get("weights", "ema") == "ema"
  raw = checkpoints.load_raw(stage_dir)     # UserError naming an unreadable checkpoint
  return jax.tree_util.tree_map(jnp.asarray, raw["ema_params" if ema else "params"])


def stage_decay(cfg, st) -> str:
  """The learning-rate decay of a train/unlearn/attack stage (its own, else config.optim's)."""
  return st.get("decay") or cfg.optim.decay


def stage_trainable(exp: Experiment, st=None):
  """The trainable-leaf mask of a stage (Stable Diffusion only; None: every leaf trains)."""
  if exp.sd is None:
    return None
  which = (st.get("trainable", "") if st is not None else "") or \
      ("all" if st is not None and st.kind == "train" else exp.config.sd.trainable)
  return sd_lib.trainable_mask(exp, which)


def step_spec(exp: Experiment, objectives, alternate: bool = False, trainable=None,
              ema_rate: Optional[float] = None) -> training.StepSpec:
  cfg = exp.config
  return training.StepSpec(apply_fn=exp.apply, process=exp.process, output_type=cfg.model.output,
                           objectives=objectives, weighting=cfg.training.weighting,
                           ema_rate=cfg.model.ema_rate if ema_rate is None else ema_rate,
                           centered=cfg.data.centered,
                           random_flip=cfg.data.random_flip, conditional=exp.conditional,
                           null_label=exp.null_label, alternate=alternate, trainable=trainable)


def with_mask(method, options: methods_lib.Options, consts: dict):
  """A SalUn saliency mask on a method that has no mask of its own: `combine.masked()`
  after the method's combination (e.g. SalUn's mask on CORE or EraseDiff)."""
  if "mask" not in consts or options.mask is not None:
    return method
  return combine.masked() if method is None else optax.chain(method, combine.masked())


def run_model_stage(exp: Experiment, name: str, st, workdir: str, step_hook=None,
                    eval_hook: Optional[Callable[[int, Any], None]] = None, eval_every: int = 0) -> None:
  """train / unlearn / attack: runs (or resumes) the stage's optimisation."""
  cfg = exp.config
  stage_dir = os.path.join(workdir, name)
  objectives, method, options = _objectives(exp, st)
  lr = options.lr if options.lr is not None else st.lr if st.lr is not None else cfg.optim.lr
  ema_rate = stage_ema_rate(cfg, st)
  spec = step_spec(exp, objectives, options.alternate, stage_trainable(exp, st), ema_rate=ema_rate)
  consts, reset_mask = {}, None
  if st.kind == "unlearn" and st.mask:
    mask = saliency.load_mask(os.path.join(workdir, st.mask, MASK_FILE))
    if options.mask == "fisher":
      consts["fisher"] = mask
    elif options.mask == "shs":
      reset_mask = mask
    else:
      consts["mask"] = mask
  if options.frozen:
    consts["frozen"] = source_params(exp, workdir, st.init)
  tx = training.make_optimizer(lr, warmup=cfg.optim.warmup, grad_clip=cfg.optim.grad_clip,
                               b1=cfg.optim.b1, eps=cfg.optim.eps, method=with_mask(method, options, consts),
                               trainable=spec.trainable, decay=stage_decay(cfg, st), total_steps=st.steps,
                               name=cfg.optim.name)
  os.makedirs(stage_dir, exist_ok=True)
  if not os.path.exists(os.path.join(stage_dir, checkpoints.META)):
    checkpoints.write_json(os.path.join(stage_dir, checkpoints.META), _meta(exp, name, st))
  state = init_state(exp, name, st, tx, workdir, reset_mask)
  seed = stage_seed(cfg, name)
  streams = {o.stream: exp.stream(o.stream, workdir) for o in objectives.values()}
  batch = st.get("batch_size", 0) or cfg.training.batch_size

  def get_batches(step):
    return {k: data_lib.batch_at_step(ds, step, batch, seed + i,
                                      process_index=jax.process_index(),
                                      process_count=jax.process_count())
            for i, (k, ds) in enumerate(sorted(streams.items()))}

  def sample_hook(step, state):
    if eval_hook is not None and eval_every and step % eval_every == 0:
      eval_hook(step, state)
    if cfg.training.sample_every and step % cfg.training.sample_every == 0:
      lab = grid_labels(exp, cfg.eval.grid_size)
      x = generate(exp, state_weights(state, ema_rate), cfg.eval.grid_size if lab is None else len(lab),
                   jax.random.key(step), labels=lab)
      report_lib.save_samples(os.path.join(stage_dir, "samples", f"step_{step:07d}.png"), x, exp.is_image,
                              cols=len(x) // exp.train.num_classes if exp.conditional else None)

  every = [e for e in (cfg.training.sample_every, eval_every if eval_hook else 0) if e]
  loop = training.LoopConfig(num_steps=st.steps, batch_size=batch, seed=seed,
                             log_every=cfg.training.log_every, ckpt_every=cfg.training.ckpt_every,
                             sample_every=int(np.gcd.reduce(every)) if every else 0,
                             max_to_keep=cfg.training.max_to_keep)
  t0 = time.time()
  final = training.train_loop(stage_dir, state, functools.partial(training.train_step, spec=spec, tx=tx),
                              loop, get_batches, sample_hook=sample_hook, step_hook=step_hook,
                              stage_name=name, consts=consts)
  if eval_hook is not None:
    eval_hook(st.steps, final)
  checkpoints.write_json(os.path.join(stage_dir, checkpoints.DONE),
                         {"steps": st.steps, "wall_time_s": time.time() - t0})


# ----------------------------------------------------------------------------
# Masks (SalUn, SFR-on), synthetic auxiliary data, the DiMRA attack.
# ----------------------------------------------------------------------------
MASK_FILE = "mask.msgpack"
SYNTH_FILE = "data.npz"
CURVE_FILE = "curve.json"


def _pass_batches(ds: data_lib.Dataset, batch: int, max_batches: int, seed: int):
  """One pass over `ds` in `batch`-sized batches (the last one wraps), at most max_batches (0: all)."""
  n = -(-len(ds) // batch)
  n = min(n, max_batches) if max_batches else n
  return [data_lib.batch_at_step(ds, s, batch, seed) for s in range(n)]


def run_mask_stage(exp: Experiment, name: str, st, workdir: str, step_hook=None) -> None:
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
  trainable = stage_trainable(exp)
  spec = step_spec(exp, {"forget": objective}, trainable=trainable)
  seed = stage_seed(cfg, name)

  @jax.jit
  def grad_fn(p, batch, key):
    keys = training.example_keys(key, batch["x"].shape[0], None)
    if trainable is None:
      return jax.grad(training.objective_loss)(p, batch, keys, key, spec, objective)
    sub = lambda q: training.objective_loss(training.merge_trainable(q, p, trainable), batch, keys, key, spec,
                                            objective)
    return jax.grad(sub)(training.split_trainable(p, trainable))

  params_all = params

  def grads(ds, **kw):
    batches = _pass_batches(ds, cfg.training.batch_size, st.steps, seed)
    keyed = [(b, jax.random.fold_in(jax.random.key(seed), i)) for i, b in enumerate(batches)]
    return saliency.accumulate(lambda p, bk: grad_fn(p, *bk), params_all, keyed, **kw)

  if trainable is not None:            # masks over the trainable leaves only (zeros elsewhere)
    params = training.split_trainable(params, trainable)
  dtype, info = np.uint8, {}
  if st.method == "salun":
    scores = jax.tree_util.tree_map(jnp.abs, grads(exp.streams["forget"]))
    mask = saliency.top_fraction_mask(scores, cfg.salun.fraction)
  elif st.method == "sfron":
    f_forget = grads(exp.streams["forget"], square=True, clip_norm=1.0)
    f_retain = grads(exp.streams["retain"], square=True, clip_norm=1.0)
    mask = saliency.ratio_mask(f_forget, f_retain)
  elif st.method == "shs":
    check_range("config.shs.sparsity", cfg.shs.sparsity, 0.0, 1.0)
    scores = shs_lib.snip_scores(grads(exp.streams["forget"], absolute=True), params)
    mask = saliency.top_fraction_mask(scores, 1.0 - cfg.shs.sparsity, field="config.shs.sparsity")
  else:
    mask, dtype = fisher_information(exp, params, spec, objective, seed), np.float32
    leaves = jax.tree_util.tree_leaves(mask)
    info = {"fisher_mean": float(sum(np.sum(l) for l in leaves) / sum(np.size(l) for l in leaves))}
  if trainable is not None:
    mask = training.fill_frozen(mask, params_all, trainable)
  os.makedirs(stage_dir, exist_ok=True)
  saliency.save_mask(os.path.join(stage_dir, MASK_FILE), mask, dtype)
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
  check_range("config.sa.fisher_samples", n, 1, 10 ** 7)
  check_range("config.sa.fisher_t", n_t, 2, 10 ** 5)
  labels = np.resize(np.arange(exp.train.num_classes, dtype=np.int32), n)
  x = generate(exp, params, n, jax.random.key(seed), labels=labels)
  chunk = max(1, cfg.training.batch_size // n_t)     # chunk * fisher_t per-draw gradients in memory
  key = jax.random.fold_in(jax.random.key(seed), 1)
  return sa_lib.sample_fisher(params, jnp.asarray(x), jnp.asarray(labels), key,
                              spec=spec, objective=objective, draws=n_t, chunk=chunk,
                              scale=getattr(exp.process, "N", 1))


def run_synthesize_stage(exp: Experiment, name: str, st, workdir: str, step_hook=None) -> None:
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
      x = generate(exp, params, len(labels[start:start + chunk]),
                   jax.random.fold_in(jax.random.key(stage_seed(cfg, name)), i), labels=labels[start:start + chunk])
      if exp.is_image:
        img = np.round(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8)
      else:                                   # toy points, Stable Diffusion latents
        img = np.asarray(x, np.float32)
      np.save(path + ".tmp.npy", img)
      os.replace(path + ".tmp.npy", path)
    parts.append(np.load(path))
    if step_hook is not None:
      step_hook(i + 1)
  tmp = os.path.join(stage_dir, SYNTH_FILE + ".tmp.npz")
  np.savez(tmp, images=np.concatenate(parts), labels=labels.astype(np.int32))
  os.replace(tmp, os.path.join(stage_dir, SYNTH_FILE))
  checkpoints.write_json(os.path.join(stage_dir, checkpoints.DONE),
                         {"num": int(n), "source_model": st.init, "wall_time_s": time.time() - t0})


def load_synthetic(exp: Experiment, stage_dir: str) -> data_lib.Dataset:
  with np.load(os.path.join(stage_dir, SYNTH_FILE)) as f:
    images, labels = f["images"], f["labels"]
  return data_lib.Dataset(name=exp.train.name, images=images, labels=labels,
                          num_classes=exp.train.num_classes, class_names=exp.train.class_names,
                          source=f"synthetic:{os.path.basename(stage_dir)}", is_image=exp.is_image)


def forget_rates(exp: Experiment, params, clf_params, n: int, rng: jax.Array) -> dict:
  """AR (share of forget-conditioned samples classified as a forgotten class) and
  AR_CL (share classified as the alternative class of their condition)."""
  if exp.sd is not None:
    return sd_lib.forget_rates(exp, params, clf_params, n, rng)
  labels = np.resize(np.asarray(exp.forget_labels, np.int32), n)
  x = generate(exp, params, n, rng, labels=labels)
  pred = evaluation.predict(exp.classifier.apply, clf_params, x)
  return {"ar": evaluation.attack_rate(pred, exp.forget_labels),
          "ar_cl": float(np.mean(pred == exp.alt[labels])) if n else float("nan"),
          "class_histogram": np.bincount(pred, minlength=exp.train.num_classes).tolist(),
          "samples": x}


def run_attack_stage(exp: Experiment, name: str, st, workdir: str, step_hook=None) -> None:
  """DiMRA (Eq. 7): the ordinary loss on the auxiliary stream, AR_DiMRA and AR_CL every
  `eval_every` steps (and at 0 and the end) into <stage>/curve.json and curve.csv."""
  cfg = exp.config
  stage_dir = os.path.join(workdir, name)
  os.makedirs(stage_dir, exist_ok=True)
  clf = classifier_params(exp, workdir)
  curve_path = os.path.join(stage_dir, CURVE_FILE)
  curve = checkpoints.read_json(curve_path) if os.path.exists(curve_path) else {}
  key = jax.random.key(stage_seed(cfg, name))
  rate = stage_ema_rate(cfg, st)

  def record(step, state_or_params):
    # step 0: the unlearned stage's evaluated weights, which the attack starts from;
    # later: the attack's own evaluated weights (its parameters unless st.ema_rate > 0).
    if str(step) in curve:
      return
    params = state_weights(state_or_params, rate) if isinstance(state_or_params, ts.TrainState) \
        else state_or_params
    r = forget_rates(exp, params, clf, cfg.eval.attack_num_samples, jax.random.fold_in(key, step))
    curve[str(step)] = {"ar": r["ar"], "ar_cl": r["ar_cl"]}
    checkpoints.write_json(curve_path, curve)
    logging.info("[%s] step %d AR_DiMRA %.3f AR_CL %.3f", name, step, r["ar"], r["ar_cl"])

  record(0, source_params(exp, workdir, st.init))
  run_model_stage(exp, name, st, workdir, step_hook=step_hook, eval_hook=record,
                  eval_every=st.eval_every)
  steps = sorted(int(k) for k in curve)
  figures.write_curve_csv(os.path.join(stage_dir, "curve.csv"), steps,
                          {"ar_dimra": [curve[str(k)]["ar"] for k in steps],
                           "ar_cl": [curve[str(k)]["ar_cl"] for k in steps]})


# ----------------------------------------------------------------------------
# The evaluation classifier.
# ----------------------------------------------------------------------------
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


def run_classifier_stage(exp: Experiment, name: str, st, workdir: str, step_hook=None) -> None:
  """The evaluation classifier (Stable Diffusion: a style and an object classifier on the
  data set's images, in <stage>/style and <stage>/object; none if config.eval.classifier_dir)."""
  cfg = exp.config
  stage_dir = os.path.join(workdir, name)
  t0 = time.time()
  if exp.sd is not None:
    info = {}
    if cfg.eval.classifier_dir:
      sd_lib.classifier_params(exp, workdir, name)          # checks it loads
      info["loaded_from"] = cfg.eval.classifier_dir
    else:
      for i, which in enumerate(("style", "object")):
        train, test = sd_lib.classifier_datasets(exp, which)
        info[f"{which}_test_accuracy"] = train_classifier(
            exp, os.path.join(stage_dir, which), exp.sd.classifiers[which], train, test,
            stage_seed(cfg, name) + i, f"{name}/{which}", step_hook)
    os.makedirs(stage_dir, exist_ok=True)
    checkpoints.write_json(os.path.join(stage_dir, checkpoints.DONE),
                           {**info, "steps": cfg.classifier.steps, "wall_time_s": time.time() - t0})
    return
  if exp.classifier is None:
    return
  acc = train_classifier(exp, stage_dir, exp.classifier, exp.train, exp.test, stage_seed(cfg, name), name,
                         step_hook)
  checkpoints.write_json(os.path.join(stage_dir, checkpoints.DONE),
                         {"test_accuracy": acc, "steps": cfg.classifier.steps, "wall_time_s": time.time() - t0})


def classifier_params(exp: Experiment, workdir: str):
  name = next(n for n in exp.config.stage_order if exp.config.stages[n].kind == "classifier")
  if exp.sd is not None:
    return sd_lib.classifier_params(exp, workdir, name)
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


def _ddim(exp, eps_fn, shape, rng):
  s = exp.config.eval.sampler
  return sampling.ddim_sample(rng, exp.process, eps_fn, shape, n_steps=s.n_steps, eta=s.eta,
                              clip_x0=exp.config.data.centered)


def _ancestral(exp, eps_fn, shape, rng):
  return sampling.ddpm_ancestral_sample(rng, exp.process, eps_fn, shape, clip_x0=exp.config.data.centered)


#: continuous SDEs: samplers of score_fn(x, t); DDPM: samplers of eps_fn(x, i) (guided
#: by `config.eval.sampler.guidance` for conditional models, DiMUM paper Eq. 2-3).
SAMPLERS = {"pc": _pc, "ode": _ode}
DDPM_SAMPLERS = {"ddim": _ddim, "ancestral": _ancestral}


def model_score_apply(exp: Experiment) -> Callable:
  """score_apply(params, x, t) of the experiment's model."""
  def score_apply(params, x, t):
    out = exp.apply({"params": params}, x, score_lib.time_input(exp.process, t))
    return score_lib.to_score(out, score_lib.marginal_std(exp.process, t), exp.config.model.output)
  return score_apply


def model_eps_apply(exp: Experiment, params) -> Callable:
  """eps_apply(x, i, labels) of a DDPM model (i: integer steps)."""
  def eps_apply(x, i, labels):
    out = exp.apply({"params": params}, x, exp.process.time_input(i), labels)
    return score_lib.to_eps(out, exp.process.marginal_coeffs(i)[1], exp.config.model.output)
  return eps_apply


def _sampler(exp: Experiment, per_dev: int) -> Callable:
  """pmap(params broadcast, one key and label row per device) -> samples in data space;
  built once per shape."""
  key = ("sample", per_dev)
  if key not in exp.compiled:
    cfg = exp.config
    shape = (per_dev,) + exp.example_shape
    discrete = isinstance(exp.process, sde_lib.DDPMSchedule)

    @functools.partial(jax.pmap, in_axes=(None, 0, 0))
    def sample(params, rng, labels):
      if discrete:
        eps_apply = model_eps_apply(exp, params)
        if exp.conditional:
          eps_fn = sampling.guided_eps_fn(eps_apply, labels, exp.null_label, cfg.eval.sampler.guidance)
        else:
          eps_fn = lambda x, i: eps_apply(x, i, None)
        x = DDPM_SAMPLERS[cfg.eval.sampler.kind](exp, eps_fn, shape, rng)
      else:
        score_apply = model_score_apply(exp)
        x = SAMPLERS[cfg.eval.sampler.kind](exp, lambda x, t: score_apply(params, x, t), shape, rng)
      if exp.is_image:
        x = jnp.clip(data_lib.inverse_scaler(x, cfg.data.centered), 0.0, 1.0)
      return x

    exp.compiled[key] = sample
  return exp.compiled[key]


def generate(exp: Experiment, params, n: int, rng: jax.Array, batch_size: Optional[int] = None,
             labels: Optional[np.ndarray] = None) -> np.ndarray:
  """n samples in data space ([0, 1] images, raw toy points), batched and pmapped over devices.

  `labels` (n,) are the conditions of a class-conditional model (required there).
  """
  if exp.conditional and labels is None:
    raise ValueError("a class-conditional model needs one label per sample")
  n_dev = jax.local_device_count()
  batch_size = min(batch_size or exp.config.eval.sample_batch_size, max(n, 1))
  per_dev = -(-batch_size // n_dev)
  sample = _sampler(exp, per_dev)
  step = per_dev * n_dev
  labels = np.zeros(n, np.int32) if labels is None else np.asarray(labels, np.int32)
  out, i = [], 0
  while sum(len(o) for o in out) < n:
    keys = jax.random.split(jax.random.fold_in(rng, i), n_dev)
    lab = np.resize(labels[i * step:(i + 1) * step], step) if n else np.zeros(step, np.int32)
    out.append(np.asarray(sample(params, keys, lab.reshape(n_dev, per_dev))).reshape((-1,) + exp.example_shape))
    i += 1
  return np.concatenate(out)[:n]


def grid_labels(exp: Experiment, n: int) -> Optional[np.ndarray]:
  """Conditions of a sample grid: each class in turn, one row per class."""
  if not exp.conditional:
    return None
  k = exp.train.num_classes
  per = max(n // k, 1)
  return np.repeat(np.arange(k, dtype=np.int32), per)


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


def sample_quality(exp: Experiment, pred: np.ndarray, conf: np.ndarray) -> dict:
  """`evaluation.sample_quality` of classified samples against the training data, from config.eval."""
  e = exp.config.eval
  return evaluation.sample_quality(pred, conf, exp.train.labels, exp.train.num_classes, exp.retained_classes,
                                   threshold=e.confidence_threshold, min_confident_share=e.min_confident_share)


def evaluate_model(exp: Experiment, workdir: str, model: str, rng: jax.Array, clf_params=None) -> dict:
  cfg = exp.config
  t0 = time.time()
  params = load_params(exp, os.path.join(workdir, model))
  samples = generate(exp, params, cfg.eval.num_samples, jax.random.fold_in(rng, 0))
  quality = {}
  if exp.is_image:
    pred, conf = evaluation.classify(exp.classifier.apply, clf_params, samples)
    quality = sample_quality(exp, pred, conf)
  else:
    pred = np.asarray(data_lib.nearest_component(samples))
  result = {"unlearning_ratio": evaluation.unlearning_ratio(pred, exp.forget_labels),
            "num_samples": int(len(samples)),
            "class_histogram": np.bincount(pred, minlength=exp.train.num_classes).tolist(),
            **quality}
  ncfg = cfg.eval.nll
  if isinstance(exp.process, sde_lib.DDPMSchedule):
    ncfg = None                           # no probability-flow NLL for the discrete schedule
  offset = nll_offset(exp)
  nll = {}
  for i, (key, ds) in enumerate((("retain", exp.test_retain), ("forget", exp.test_forget)) if ncfg else ()):
    nll_fn = _nll_fn(exp)
    x = ds.images[:ncfg.num_examples]
    x = data_lib.to_float(x) if exp.is_image else np.asarray(x, np.float32)
    nll[key] = evaluation.dataset_nll(nll_fn, params, x, jax.random.fold_in(rng, 10 + i),
                                      batch_size=min(ncfg.batch_size, len(x)), passes=ncfg.passes,
                                      is_image=exp.is_image, centered=cfg.data.centered)
  if ncfg:
    nll.update(unit="bits/dim", offset=offset, num_examples=min(ncfg.num_examples, len(exp.test_forget)),
               convention=cfg.eval.nll.offset)
    result["nll"] = nll
  grid = os.path.join(workdir, "evaluate", f"{model}_samples.png")
  report_lib.save_samples(grid, samples[:cfg.eval.grid_size] if exp.is_image else samples,
                          exp.is_image, labels=None if exp.is_image else pred)
  result["samples_png"] = os.path.relpath(grid, workdir)
  result["wall_time_s"] = time.time() - t0
  return result


def evaluate_conditional(exp: Experiment, workdir: str, model: str, rng: jax.Array, clf_params,
                         out_dir: str) -> dict:
  """A class-conditional model: AR_MU and AR_CL from `num_samples` samples conditioned on the
  forgotten classes; the Fréchet distance, on the evaluation classifier's features, between
  `fd_num_samples` samples conditioned on the retained classes and as many D_r images (not
  Inception FID); the share of those samples classified as their own condition."""
  cfg = exp.config
  t0 = time.time()
  params = load_params(exp, os.path.join(workdir, model))
  fr = forget_rates(exp, params, clf_params, cfg.eval.num_samples, jax.random.fold_in(rng, 0))
  n = cfg.eval.fd_num_samples
  retain_labels = np.resize(np.asarray(exp.retained_classes, np.int32), n)
  x = generate(exp, params, n, jax.random.fold_in(rng, 1), labels=retain_labels)
  feats = evaluation.embed(exp.classifier.apply, clf_params, x)
  pred, conf = evaluation.classify(exp.classifier.apply, clf_params, x)
  quality = sample_quality(exp, pred, conf)
  ref = exp.streams["retain"]
  ref_idx = np.random.default_rng(cfg.seed).permutation(len(ref))[:n]
  ref_feats = evaluation.embed(exp.classifier.apply, clf_params, data_lib.to_float(ref.images[ref_idx]))
  grid_lab = grid_labels(exp, cfg.eval.grid_size)
  grid_x = generate(exp, params, len(grid_lab), jax.random.fold_in(rng, 2), labels=grid_lab)
  grid = os.path.join(out_dir, f"{model}_samples.png")
  report_lib.save_samples(grid, grid_x, exp.is_image, cols=len(grid_lab) // exp.train.num_classes)
  return {"ar_mu": fr["ar"], "ar_cl": fr["ar_cl"], "num_samples": int(cfg.eval.num_samples),
          "forget_class_histogram": fr["class_histogram"],
          "frechet_distance": evaluation.frechet_distance_from_features(feats, ref_feats),
          "frechet_features": "evaluation classifier (penultimate layer)",
          "fd_num_samples": int(n), "retain_accuracy": float(np.mean(pred == retain_labels)),
          "confident_share": quality["confident_share"], "confidence_threshold": quality["confidence_threshold"],
          "recognised": quality["recognised"],
          "samples_png": os.path.relpath(grid, workdir), "wall_time_s": time.time() - t0}


def run_evaluate_stage(exp: Experiment, name: str, st, workdir: str, step_hook=None) -> None:
  out_dir = os.path.join(workdir, name)
  os.makedirs(out_dir, exist_ok=True)
  clf = classifier_params(exp, workdir) if (exp.is_image or exp.sd is not None) else None
  for model in st.models:
    path = os.path.join(out_dir, f"{model}.json")
    if os.path.exists(path):
      continue
    rng = jax.random.key(stage_seed(exp.config, name))
    if exp.sd is not None:
      res = sd_lib.evaluate(exp, source_params(exp, workdir, model), clf, rng,
                            os.path.join(out_dir, f"{model}_samples.png"))
      res["samples_png"] = os.path.relpath(os.path.join(out_dir, f"{model}_samples.png"), workdir)
      logging.info("[%s] %s: UA %.3f IRA %.3f CRA %.3f AR_MU(top-3) %.3f FD %.3f", name, model, res["ua"],
                   res["ira"], res["cra"], res["ar_mu"], res["frechet_distance"])
    elif exp.conditional:
      res = evaluate_conditional(exp, workdir, model, rng, clf, out_dir)
      logging.info("[%s] %s: AR_MU %.3f AR_CL %.3f FD %.3f", name, model, res["ar_mu"], res["ar_cl"],
                   res["frechet_distance"])
    else:
      res = evaluate_model(exp, workdir, model, rng, clf)
      logging.info("[%s] %s: %s", name, model, {k: res[k] for k in ("unlearning_ratio", "nll")})
    res.update(weights_info(exp, workdir, model))
    checkpoints.write_json(path, res)
  checkpoints.write_json(os.path.join(out_dir, checkpoints.DONE), {"models": list(st.models)})


def run_report_stage(exp: Experiment, name: str, st, workdir: str, step_hook=None) -> None:
  report_lib.write_results(exp, workdir)


#: config fields that may differ between the run that wrote a workdir and a rerun there:
#: they change no stage's output (logging, checkpoint and sample-grid cadence; resuming is
#: exact from any step).  Stages may be added to or dropped from stage_order, and a stage
#: with no directory in the workdir yet may change; a started or finished stage must be
#: unchanged, and so must every other field once any stage has started.
RESUME_MAY_DIFFER = ("stage_order", "training.log_every", "training.ckpt_every", "training.max_to_keep",
                     "training.sample_every")
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
  and the stages they concern.
  """
  if stored is None:
    return new
  a, b = _flatten(stored), _flatten(new)
  ran = [n for n in stored.get("stages", {}) if os.path.isdir(os.path.join(workdir, n))]
  def allowed(k):
    if k in RESUME_MAY_DIFFER or not ran:
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


RUNNERS = {"classifier": run_classifier_stage, "train": run_model_stage, "unlearn": run_model_stage,
           "mask": run_mask_stage, "synthesize": run_synthesize_stage, "attack": run_attack_stage,
           "evaluate": run_evaluate_stage, "report": run_report_stage}


def run(config: ml_collections.ConfigDict, workdir: str, step_hook=None) -> Experiment:
  """Validates, then runs every stage of `config.stage_order` not yet done."""
  _validate_stages(config)        # the config's own fields, before inputs/ is written
  if sd_lib.is_sd(config):
    config = sd_lib.resolve_inputs(config, workdir)   # "tiny" / "synthetic" -> <workdir>/inputs/
  exp = build_experiment(config, workdir)  # raises UserError before anything is written
  cfg_path = os.path.join(workdir, "config.json")
  stored = checkpoints.read_json(cfg_path) if os.path.exists(cfg_path) else None
  merged = resume_config(workdir, stored, json.loads(config.to_json_best_effort()))   # raises UserError
  os.makedirs(workdir, exist_ok=True)
  if exp.sd is not None:
    exp.sd.save_cache()
  if merged != stored:
    checkpoints.write_json(cfg_path, merged)
  for name in config.stage_order:
    st = config.stages[name]
    stage_dir = os.path.join(workdir, name)
    if checkpoints.is_done(stage_dir) and st.kind != "report":
      logging.info("[%s] done, skipping", name)
      continue
    logging.info("[%s] running (%s)", name, st.kind)
    RUNNERS[st.kind](exp, name, st, workdir, step_hook=step_hook)
  return exp
