"""Forgetting classes of a labelled data set: the SGU setting (unconditional score models
on toy 2-D Gaussians, MNIST, CIFAR-10, ...) and the DiMUM / DiMRA setting (a
class-conditional DDPM with classifier-free guidance).

What is forgotten is a set of classes (`config.data.forget_classes`) or, on CelebA, an
attribute (`config.data.forget_attribute`, e.g. "Bangs", SGU Tables 2 and 5): CelebA's labels
are then that attribute (0 without, 1 with it), D_f = the images with it, D_r = those
without, the evaluation classifier is the binary attribute classifier and the forgotten
label is 1 (`data.forget_labels`); every measure below is the same for both.

Forgetting is measured by an evaluation classifier trained on the full training set (the
toy data: the nearest mixture component):
  unconditional      the unlearning ratio (share of samples classified as a forgotten
                     class, SGU Sec. 5) and the probability-flow NLL of D_g / D_f in
                     bits/dim (SGU Tables 1-2); optionally (`config.eval.inpaint` /
                     `reconstruct`) the restorations of SGU Sec. 4.3: test images of D_g and
                     D_f inpainted from their lower half (Table 3) or reconstructed from
                     t = 0.02 (Table 4), scored by the classifier against their originals
                     and by the CLIP embedding distance (`restoration_entries`);
  class-conditional  AR_MU / AR_CL of forget-conditioned samples and the Fréchet distance
                     of retain-conditioned samples to D_r on the classifier's features
                     (DiMUM paper Table I; AR_DiMRA during attacks, Tables II-III).
Both report the samples' quality beside every rate (`evaluation.sample_quality`).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Callable, Optional

import jax
import numpy as np

from unlearn_jax import data as data_lib
from unlearn_jax import evaluation
from unlearn_jax import generation
from unlearn_jax import models
from unlearn_jax import sde as sde_lib
from unlearn_jax import settings
from unlearn_jax.errors import UserError, check_choice, check_range
from unlearn_jax.evaluation import restoration
from unlearn_jax.experiment import Experiment, first_stage, load_params
from unlearn_jax.reporting import figures
from unlearn_jax.reporting import markdown
from unlearn_jax.unlearning import dimum as dimum_lib

NAME = "classes"
#: models a stage may name besides stages and directories (none here).
NAMED_MODELS = ()
#: config.model.name values whose class-embedding table the condition attacks optimise in.
CONDITION_MODELS = ("ddpm_unet", "ncsnpp")


def condition_attack_error(config, attack: str) -> str:
  """Why condition attack `attack` (`attacks.condition`) cannot run on the config's model, ""
  when it can: a class-conditional model with a class-embedding table runs "embedding" and
  "condition"; textual inversion needs a text encoder."""
  if attack in ("textual_inversion", "prompt_tokens"):
    return ("needs a text encoder (Stable Diffusion, the UnlearnCanvas task); a class-conditional model's "
            "analogue is attack='embedding'")
  if config.model.get("conditional", False) and config.model.get("name") in CONDITION_MODELS:
    return ""
  return ("needs a class-conditional model with a class-embedding table (config.model.conditional=True, "
          "config.model.name in " + ", ".join(CONDITION_MODELS) + "): it optimises a class condition; on an "
          "unconditional model only the fine-tuning attacks (attack='finetune': data=retain, test_retain, "
          "benign, fewshot, a synthesize stage) run")


# ----------------------------------------------------------------------------
# Inputs and construction.
# ----------------------------------------------------------------------------
def validate(config) -> None:
  """The restorations' choices (`config.eval.inpaint` / `reconstruct`, SGU Sec. 4.3)."""
  e = settings.of(config).eval
  for kind in generation.RESTORATIONS:
    block = getattr(e, kind)
    check_choice(f"config.eval.{kind}.split", block.split, restoration.SPLITS)
    check_choice(f"config.eval.{kind}.target", block.target, restoration.TARGETS)
  if e.reconstruct.num_examples and not e.reconstruct.t_start > e.sampler.eps:
    raise UserError("config.eval.reconstruct.t_start", e.reconstruct.t_start,
                    f"expected a time above config.eval.sampler.eps ({e.sampler.eps}), at most the SDE's T")


def prepare(config, workdir: str):
  """The config with its inputs in place (nothing to prepare here)."""
  del workdir
  return config


def build(config, workdir: Optional[str] = None) -> Experiment:
  """Loads the data, splits D_f / D_r, builds the model (raises UserError; writes nothing)."""
  del workdir
  process = sde_lib.get_sde(config.sde.name, **dataclasses.asdict(config.sde))
  discrete = isinstance(process, sde_lib.DDPMSchedule)
  check_choice("config.eval.sampler.kind", config.eval.sampler.kind,
               tuple(generation.DDPM_SAMPLERS) if discrete else tuple(generation.SAMPLERS))
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
  forget_labels = data_lib.forget_labels(train, config.data)
  streams = {"all": train, "retain": data_lib.subset(train, ~forget_mask),
             "forget": data_lib.subset(train, forget_mask)}
  for k, ds in streams.items():
    if len(ds) == 0:
      raise UserError(*data_lib.forget_field(config.data), f"leaves the {k} set empty")
  conditional = bool(config.model.conditional)
  alt = dimum_lib.alternative_classes(train.num_classes, forget_labels, config.unlearn.alternative,
                                      seed=config.seed)
  streams["alternative"] = dimum_lib.memorization_set(streams["forget"], streams["retain"], alt,
                                                      config.unlearn.alternative, seed=config.seed)
  streams["test_retain"] = data_lib.subset(test, ~test_forget_mask)
  module, model_cfg = models.build_model(config.model, train.example_shape,
                                         train.num_classes if conditional else 0)
  models.check_image_shape(model_cfg, train.example_shape)
  classifier = None
  if train.is_image and first_stage(config, "classifier"):
    classifier = models.build_classifier(config.classifier, train.example_shape, train.num_classes)[0]
  inception = evaluation.load_fid_inception(config.eval.inception_weights) if config.eval.inception_weights else None
  if inception is not None and not train.is_image:
    raise UserError("config.eval.inception_weights", config.eval.inception_weights,
                    f"Inception FID needs image data; {config.data.name} is not")
  e = config.eval
  clip = load_clip(e.clip_dir) if e.clip_dir and (e.inpaint.num_examples or e.reconstruct.num_examples) else None
  return Experiment(config=config, train=train, test=test, streams=streams,
                    test_forget=data_lib.subset(test, test_forget_mask),
                    test_retain=data_lib.subset(test, ~test_forget_mask),
                    forget_labels=forget_labels, alt=alt, conditional=conditional,
                    process=process, module=module, model_cfg=model_cfg, example_shape=train.example_shape,
                    classifier=classifier, inception=inception, clip=clip)


def load_clip(path: str):
  """`evaluation.load_clip(path)`, a UserError naming config.eval.clip_dir if it does not load."""
  try:
    return evaluation.load_clip(path)
  except UserError as err:
    raise UserError("config.eval.clip_dir", path, err.allowed) from None


def check(exp: Experiment) -> None:
  """The restorations (SGU Sec. 4.3) need an unconditional image model on a continuous SDE
  with the evaluation classifier, and reconstruction a t_start within the SDE's time."""
  for kind in generation.RESTORATIONS:
    n = getattr(exp.config.eval, kind).num_examples
    if n and (exp.conditional or not exp.is_image or exp.classifier is None
              or isinstance(exp.process, sde_lib.DDPMSchedule)):
      raise UserError(f"config.eval.{kind}.num_examples", n,
                      "expected 0 here: the restorations of SGU Sec. 4.3 need an unconditional image model "
                      "on a continuous SDE (vesde, vpsde, subvpsde) and a classifier stage")
  r = exp.config.eval.reconstruct
  if r.num_examples:
    check_range("config.eval.reconstruct.t_start", r.t_start, exp.config.eval.sampler.eps, exp.process.T,
                lo_open=True)


def save(exp: Experiment) -> None:
  """Writes what `build` computed for reuse (nothing here)."""
  del exp


def named_params(exp: Experiment, name: str):
  raise KeyError(name)


def trainable(exp: Experiment, st=None):
  """Every parameter trains (None: no trainable-leaf mask)."""
  del exp, st
  return None


# ----------------------------------------------------------------------------
# The evaluation classifier.
# ----------------------------------------------------------------------------
def train_classifiers(exp: Experiment, name: str, workdir: str, fit: Callable) -> Optional[dict]:
  """Trains the evaluation classifier on the full training set with `fit(stage_dir, module,
  train, test, seed_offset, log_name) -> test accuracy`; None where there is none (toy data)."""
  if exp.classifier is None:
    return None
  return {"test_accuracy": fit(os.path.join(workdir, name), exp.classifier, exp.train, exp.test, 0, name)}


def classifier_params(exp: Experiment, workdir: str):
  """The trained classifier's parameters (None without a classifier: toy data)."""
  if not exp.is_image:
    return None
  return load_params(exp, os.path.join(workdir, first_stage(exp.config, "classifier")), ema=False)


# ----------------------------------------------------------------------------
# Measurements.
# ----------------------------------------------------------------------------
def sample_quality(exp: Experiment, pred: np.ndarray, conf: np.ndarray) -> dict:
  """`evaluation.sample_quality` of classified samples against the training data, from config.eval."""
  e = exp.config.eval
  return evaluation.sample_quality(pred, conf, exp.train.labels, exp.train.num_classes, exp.retained_classes,
                                   threshold=e.confidence_threshold, min_confident_share=e.min_confident_share)


def _predict(exp: Experiment, clf_params, x: np.ndarray) -> np.ndarray:
  """The classifier's class of each sample (toy data: the nearest mixture component)."""
  if exp.is_image:
    return evaluation.predict(exp.classifier.apply, clf_params, x)
  return np.asarray(data_lib.nearest_component(x))


def forget_rates(exp: Experiment, params, clf_params, n: int, rng: jax.Array, cond_rows=None) -> dict:
  """AR (share of forget-conditioned samples classified as a forgotten class) and
  AR_CL (share classified as the alternative class of their condition).  An unconditional
  model's samples have no condition: AR is then the share of its n samples classified as a
  forgotten class, i.e. `evaluate_unconditional`'s unlearning ratio (SGU Sec. 5) on n samples,
  and AR_CL is NaN.

  `cond_rows` (F, E): the samples are conditioned on these rows of the class-embedding space in
  place of the labels, row j standing for forget_labels[j] (`attacks.condition`)."""
  labels = np.resize(np.asarray(exp.forget_labels, np.int32), n)
  cond = None if cond_rows is None else np.asarray(cond_rows)[np.resize(np.arange(len(exp.forget_labels)), n)]
  x = generation.generate(exp, params, n, rng, labels=labels, cond=cond)
  pred = _predict(exp, clf_params, x)
  return {"ar": evaluation.attack_rate(pred, exp.forget_labels),
          "ar_cl": float(np.mean(pred == exp.alt[labels])) if n and exp.conditional else float("nan"),
          "class_histogram": np.bincount(pred, minlength=exp.train.num_classes).tolist(),
          "samples": x}


def _retain_reference(exp: Experiment, n: int) -> np.ndarray:
  """The n D_r training examples (as stored) every Fréchet distance of a run compares with."""
  ref = exp.streams["retain"]
  return ref.images[np.random.default_rng(exp.config.seed).permutation(len(ref))[:n]]


def _features(exp: Experiment, clf_params, x: np.ndarray) -> np.ndarray:
  """The evaluation classifier's features of images in [0, 1] (toy data: the points)."""
  if exp.is_image:
    return evaluation.embed(exp.classifier.apply, clf_params, x)
  return np.asarray(x, np.float64)


def has_likelihood(exp: Experiment) -> bool:
  """A probability-flow NLL exists: an unconditional model on a continuous SDE."""
  return not exp.conditional and not isinstance(exp.process, sde_lib.DDPMSchedule)


def set_nll(exp: Experiment, params, ds: data_lib.Dataset, rng: jax.Array) -> float:
  """Bits/dim (`evaluation.dataset_nll`) of the first `config.eval.nll.num_examples` examples of
  `ds` under the model's probability-flow ODE (the jitted NLL of `generation.nll_function`)."""
  ncfg = exp.config.eval.nll
  x = ds.images[:ncfg.num_examples]
  x = data_lib.to_float(x) if exp.is_image else np.asarray(x, np.float32)
  return evaluation.dataset_nll(generation.nll_function(exp), params, x, rng,
                                batch_size=min(ncfg.batch_size, len(x)), passes=ncfg.passes,
                                is_image=exp.is_image, centered=exp.config.data.centered)


def attack_measures(exp: Experiment, params, clf_params, n: int, rng: jax.Array, rates: Optional[dict] = None,
                    cache: Optional[dict] = None) -> dict:
  """What each attack curve point records beside AR / AR_CL (issue 15).

  "fd": the utility along the curve, the Fréchet distance on the evaluation classifier's
  features (toy data: the points) between n samples and n D_r training images -- a
  class-conditional model's samples conditioned on the retained classes (`evaluate_conditional`'s
  FD on n samples), an unconditional model's AR samples `rates["samples"]` (reused); NaN
  for n < 2.  "nll_forget" (only where `has_likelihood`): bits/dim of the first
  `config.eval.nll.num_examples` test images of D_f (`evaluate_unconditional`'s NLL D_f).
  `cache`, kept by the caller from point to point, holds D_r's feature statistics.
  A class-conditional model's "fd" needs n samples more per point: only with
  `config.eval.attack_fd` (the robustness configs set it).
  """
  cache = {} if cache is None else cache
  out = {}
  if has_likelihood(exp):
    out["nll_forget"] = set_nll(exp, params, exp.test_forget, jax.random.fold_in(rng, 1))
  if exp.conditional and not exp.config.eval.attack_fd:
    return out
  if exp.conditional:
    labels = np.resize(np.asarray(exp.retained_classes, np.int32), n)
    x = generation.generate(exp, params, n, jax.random.fold_in(rng, 0), labels=labels)
  else:
    x = rates["samples"] if rates and "samples" in rates else generation.generate(exp, params, n,
                                                                                  jax.random.fold_in(rng, 0))
  out["fd"] = float("nan")
  if n >= 2:
    if ("fd_reference", n) not in cache:
      ref = _retain_reference(exp, n)
      cache[("fd_reference", n)] = evaluation.gaussian_stats(
          _features(exp, clf_params, data_lib.to_float(ref) if exp.is_image else ref))
    out["fd"] = evaluation.frechet_distance(*evaluation.gaussian_stats(_features(exp, clf_params, x)),
                                            *cache[("fd_reference", n)])
  return out


def evaluate(exp: Experiment, workdir: str, model: str, params, clf_params, rng: jax.Array,
             out_dir: str) -> dict:
  """One model's results.json entry (`evaluate_unconditional` / `evaluate_conditional`)."""
  if exp.conditional:
    res = evaluate_conditional(exp, workdir, model, params, rng, clf_params, out_dir)
    logging.info("[%s] %s: AR_MU %.3f AR_CL %.3f FD %.3f", os.path.basename(out_dir), model, res["ar_mu"],
                 res["ar_cl"], res["frechet_distance"])
  else:
    res = evaluate_unconditional(exp, workdir, model, params, rng, clf_params, out_dir)
    logging.info("[%s] %s: %s", os.path.basename(out_dir), model,
                 {k: res[k] for k in ("unlearning_ratio", "nll") if k in res})
  return res


def evaluate_unconditional(exp: Experiment, workdir: str, model: str, params, rng: jax.Array, clf_params,
                           out_dir: str) -> dict:
  """The unlearning ratio of `config.eval.num_samples` samples with their quality, and the
  probability-flow NLL (bits/dim) of the first `config.eval.nll.num_examples` test images of
  D_g and D_f (none for the discrete DDPM schedule)."""
  cfg = exp.config
  t0 = time.time()
  samples = generation.generate(exp, params, cfg.eval.num_samples, jax.random.fold_in(rng, 0))
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
  if exp.inception is not None:              # FID against as many D_r training images
    result.update(inception_entries(exp, workdir, samples, _retain_reference(exp, len(samples)), "D_r (train)"))
  ncfg = cfg.eval.nll if has_likelihood(exp) else None   # no probability-flow NLL for the discrete schedule
  offset = generation.nll_offset(exp)
  nll = {}
  for i, (key, ds) in enumerate((("retain", exp.test_retain), ("forget", exp.test_forget)) if ncfg else ()):
    nll[key] = set_nll(exp, params, ds, jax.random.fold_in(rng, 10 + i))
  if ncfg:
    nll.update(unit="bits/dim", offset=offset, num_examples=min(ncfg.num_examples, len(exp.test_forget)),
               convention=cfg.eval.nll.offset)
    result["nll"] = nll
  result.update(restoration_entries(exp, workdir, model, params, clf_params, jax.random.fold_in(rng, 20),
                                    out_dir))
  grid = os.path.join(out_dir, f"{model}_samples.png")
  figures.save_samples(grid, samples[:cfg.eval.grid_size] if exp.is_image else samples,
                       exp.is_image, labels=None if exp.is_image else pred)
  result["samples_png"] = os.path.relpath(grid, workdir)
  result["wall_time_s"] = time.time() - t0
  return result


def evaluate_conditional(exp: Experiment, workdir: str, model: str, params, rng: jax.Array, clf_params,
                         out_dir: str) -> dict:
  """A class-conditional model: AR_MU and AR_CL from `num_samples` samples conditioned on the
  forgotten classes; the Fréchet distance, on the evaluation classifier's features, between
  `fd_num_samples` samples conditioned on the retained classes and as many D_r images (not
  Inception FID); the share of those samples classified as their own condition."""
  cfg = exp.config
  t0 = time.time()
  fr = forget_rates(exp, params, clf_params, cfg.eval.num_samples, jax.random.fold_in(rng, 0))
  n = cfg.eval.fd_num_samples
  retain_labels = np.resize(np.asarray(exp.retained_classes, np.int32), n)
  x = generation.generate(exp, params, n, jax.random.fold_in(rng, 1), labels=retain_labels)
  feats = evaluation.embed(exp.classifier.apply, clf_params, x)
  pred, conf = evaluation.classify(exp.classifier.apply, clf_params, x)
  quality = sample_quality(exp, pred, conf)
  ref_images = _retain_reference(exp, n)
  ref_feats = evaluation.embed(exp.classifier.apply, clf_params, data_lib.to_float(ref_images))
  grid_lab = generation.grid_labels(exp, cfg.eval.grid_size)
  grid_x = generation.generate(exp, params, len(grid_lab), jax.random.fold_in(rng, 2), labels=grid_lab)
  grid = os.path.join(out_dir, f"{model}_samples.png")
  figures.save_samples(grid, grid_x, exp.is_image, cols=len(grid_lab) // exp.train.num_classes)
  return {"ar_mu": fr["ar"], "ar_cl": fr["ar_cl"], "num_samples": int(cfg.eval.num_samples),
          "forget_class_histogram": fr["class_histogram"],
          "frechet_distance": evaluation.frechet_distance_from_features(feats, ref_feats),
          "frechet_features": "evaluation classifier (penultimate layer)",
          "fd_num_samples": int(n), "retain_accuracy": float(np.mean(pred == retain_labels)),
          "confident_share": quality["confident_share"], "confidence_threshold": quality["confidence_threshold"],
          "recognised": quality["recognised"],
          **inception_entries(exp, workdir, x, ref_images, "D_r (train)"),
          "samples_png": os.path.relpath(grid, workdir), "wall_time_s": time.time() - t0}


#: the sets a restoration is scored on: D_g (retained data) and D_f (forgotten data).
RESTORATION_SETS = ("retain", "forget")


def restoration_sets(exp: Experiment, split: str, n: int) -> dict:
  """{"retain": (x01, labels), "forget": ...}: the first n images of D_g and D_f of `split`
  ("test": the test set's, "train": D_r and D_f themselves); an empty set is left out."""
  pair = (exp.test_retain, exp.test_forget) if split == "test" else (exp.streams["retain"], exp.streams["forget"])
  return {name: (data_lib.to_float(ds.images[:n]), np.asarray(ds.labels[:n]))
          for name, ds in zip(RESTORATION_SETS, pair) if len(ds)}


def _restorer(exp: Experiment, params, kind: str, rng: jax.Array, known, batch_size: int) -> Callable:
  """restore(set name, x01) of `restoration_scores`: `generation.restore` with one key per set."""
  def restore(name: str, x01: np.ndarray) -> np.ndarray:
    key = jax.random.fold_in(rng, RESTORATION_SETS.index(name))
    return generation.restore(exp, params, kind, x01, key, known=known, batch_size=batch_size)
  return restore


def restoration_entries(exp: Experiment, workdir: str, model: str, params, clf_params, rng: jax.Array,
                        out_dir: str) -> dict:
  """{"inpaint": ..., "reconstruct": ...}: the restorations of SGU Sec. 4.3 switched on by
  `config.eval.<kind>.num_examples` ({} when both are 0), each `evaluation.restoration_scores`
  of the first num_examples images of D_g and D_f (its `split`) with the evaluation
  classifier and, with `config.eval.clip_dir`, the CLIP distance; a grid of originals,
  (masked,) restored images of each set in <out_dir>/<model>_<kind>.png."""
  cfg = exp.config
  out = {}
  classify = lambda x01: evaluation.predict(exp.classifier.apply, clf_params, x01)
  clip_fn = None if exp.clip is None else lambda a, b: restoration.clip_distance(exp.clip, a, b)
  for i, kind in enumerate(generation.RESTORATIONS):
    r = getattr(cfg.eval, kind)
    if not r.num_examples:
      continue
    sets = restoration_sets(exp, r.split, r.num_examples)
    batch = min(cfg.eval.sample_batch_size, max(len(x) for x, _ in sets.values()))
    known = evaluation.upper_half_mask(*exp.example_shape[:2]) if kind == "inpaint" else None
    restore = _restorer(exp, params, kind, jax.random.fold_in(rng, i), known, batch)
    entry, restored = evaluation.restoration_scores(restore, classify, sets, target=r.target, clip_fn=clip_fn,
                                                    clip_sets=restoration.CLIP_SETS[kind])
    entry["split"] = r.split
    if kind == "inpaint":
      entry.update(mask="upper half", n_steps=int(cfg.eval.sampler.n_steps))
    else:
      entry.update(t_start=float(r.t_start),
                   n_steps=int(r.n_steps or max(1, math.ceil(r.t_start / exp.process.T * exp.process.N))))
    k = min(8, *(len(x) for x, _ in sets.values()))
    rows = []
    for name, (x01, _) in sets.items():
      rows += [x01[:k]] + ([x01[:k] * known] if known is not None else []) + [restored[name][:k]]
    png = os.path.join(out_dir, f"{model}_{kind}.png")
    figures.save_samples(png, np.concatenate(rows), True, cols=k)
    entry["png"] = os.path.relpath(png, workdir)
    out[kind] = entry
  return out


def inception_entries(exp: Experiment, workdir: str, samples: np.ndarray, reference: np.ndarray,
                      reference_name: str) -> dict:
  """`evaluation.fid_entries` of `samples` against `reference` ({} without inception weights)."""
  if exp.inception is None:
    return {}
  return evaluation.fid_entries(exp.inception, samples, reference, exp.config.eval, source=exp.train.source,
                                stats_dir=os.path.join(workdir, "fid_stats"), reference_name=reference_name)


# ----------------------------------------------------------------------------
# results.json and report.md.
# ----------------------------------------------------------------------------
def finalize(exp: Experiment, results: dict, workdir: str) -> None:
  """The task's own results.json entries: "forget_attribute" (CelebA) when an attribute is forgotten."""
  del workdir
  field, value = data_lib.forget_field(exp.config.data)
  if field == "config.data.forget_attribute":
    results["forget_attribute"] = value


def report_tables(results: dict, workdir: str) -> list:
  """report.md's body: the DiMUM paper's Tables I-III and curves (class-conditional), or the
  SGU paper's Table 1 (toy data) / Table 2 or 5 (images) and, where measured, its Tables 3-4
  (inpainting, reconstruction).  An unconditional model's attacks are in results.json
  ("attacks"), not in these tables."""
  if "alternative_classes" in results:       # a class-conditional run
    return markdown.conditional_lines(results, workdir)
  return markdown.sgu_lines(results) + markdown.restoration_lines(results["models"])

