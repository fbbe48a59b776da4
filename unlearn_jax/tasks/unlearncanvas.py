"""Forgetting styles of text-to-image Stable Diffusion on UnlearnCanvas (`config.data.name =
"unlearncanvas"`): the task the pipeline's stages run on.

The Stable Diffusion stack enters the class-conditional engine unchanged:
  * the data are VAE latents (NHWC, already multiplied by the VAE's scaling factor),
    encoded once and cached in `<workdir>/sd_cache/`;
  * a condition ("class") is a prompt id: prompt p = "A {object} image in {style} style."
    for every (style, object) pair of the loaded data; the CLIP text encoder's hidden
    states of every prompt (+ the empty prompt, the null condition of classifier-free
    guidance) are encoded once and stored as a frozen table inside the model's
    parameters (`models.stable_diffusion.SDUNet`);
  * forgetting a style forgets all its prompts; CORE's anchors, DiMUM's / SalUn's
    alternatives are the same object's prompt in another style (`canvas`);
  * which parameters train (`config.sd.trainable`: cross-attention only for CORE / ESD-x,
    everything but cross-attention for ESD-u / EraseDiff's nudity setting, cross-attention
    k/v for CA, or all) is a static mask: gradients are taken w.r.t. those leaves only
    (`training.StepSpec.trainable`);
  * the stage init "base" is the model directory's UNet (the pre-trained model theta*);
  * evaluation decodes generated latents with the VAE and classifies style and object
    with two classifiers (trained by the `classifier` stage on the data set's images, or
    loaded from `config.eval.classifier_dir`): UA / IRA / CRA (UnlearnCanvas), AR_MU /
    AR_DiMRA with top-3 matching and AR_CL (DiMUM paper Sec. VI-B), a Fréchet distance on
    the style classifier's features, and SFID against the base model (CORE App. B Eq. 7).

`config.sd.model_dir = "tiny"` and `config.data.data_dir = "synthetic"` (the `cpu`
variants, tests) build a tiny random-initialized model in diffusers layout and a tiny
synthetic UnlearnCanvas tree inside the workdir, and run everything on them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import mesh as mesh_lib
from unlearn_jax import canvas
from unlearn_jax import checkpoints
from unlearn_jax import data as data_lib
from unlearn_jax import evaluation
from unlearn_jax import generation
from unlearn_jax import models
from unlearn_jax.attacks import condition
from unlearn_jax.config_lib import UNLEARNCANVAS as DATA_NAME
from unlearn_jax.errors import UserError, check_choice, check_range
from unlearn_jax.experiment import Experiment, first_stage, load_params
from unlearn_jax.models import stable_diffusion as sd
from unlearn_jax.reporting import figures
from unlearn_jax.reporting import markdown
from unlearn_jax.tasks import sd_common
from unlearn_jax.tasks.sd_common import (BASE, CACHE_DIR, DTYPES, NAMED_MODELS, SUBSET_MASKS, TINY,
                                         SDModelConfig, decode, named_params, trainable, trainable_mask)
from unlearn_jax.unlearning import dimum as dimum_lib

NAME = "unlearncanvas"
SYNTHETIC = "synthetic"
__all__ = ["BASE", "CACHE_DIR", "DTYPES", "NAMED_MODELS", "SUBSET_MASKS", "SDModelConfig", "TINY",
           "decode", "named_params", "trainable", "trainable_mask"]   # from sd_common, shared with tasks.prompts


@dataclasses.dataclass
class SDContext:
  """The Stable Diffusion parts of an experiment (see the module docstring)."""
  comp: Any                      # models.stable_diffusion.SDComponents
  data: Any                      # canvas.CanvasData (pixels at config.data.image_size)
  forget_styles: Tuple[str, ...]
  forget_style_ids: Tuple[int, ...]
  alt_style_id: int
  table: np.ndarray              # (P + 1, L, D) prompt embeddings, last row = ""
  base_params: Any
  classifiers: Dict[str, Any]    # "style" / "object" -> models.Classifier
  clf_size: int
  cache_path: Optional[str] = None
  cache_arrays: Optional[Dict[str, np.ndarray]] = None
  compiled: Dict[str, Callable] = dataclasses.field(default_factory=dict)

  def save_cache(self) -> None:
    """Writes the encoded latents / prompt table (after validation; never overwrites)."""
    if self.cache_path and self.cache_arrays is not None and not os.path.exists(self.cache_path):
      os.makedirs(os.path.dirname(self.cache_path), exist_ok=True)
      checkpoints.save_npz(self.cache_path, **self.cache_arrays)
    self.cache_arrays = None


# ----------------------------------------------------------------------------
# Inputs: placeholders for the tiny model / synthetic data, validation, encoding.
# ----------------------------------------------------------------------------
def _styles_objects(config) -> Tuple[Optional[tuple], Optional[tuple]]:
  styles = tuple(config.data.styles) or None
  objects = tuple(config.data.objects) or None
  return styles, objects


def _check_names(config) -> Tuple[Tuple[str, ...], Optional[tuple], Optional[tuple]]:
  """(forget styles, styles, objects) after the checks of the names alone: the template, the
  forget styles, config.data.styles / objects, the forget styles among config.data.styles."""
  check_choice("config.data.template", config.data.template, tuple(canvas.TEMPLATES))
  forget_styles = canvas.resolve_styles(config.data.forget_styles)
  styles, objects = _styles_objects(config)
  for field, names, allowed in (("config.data.styles", styles, canvas.ALL_STYLES),
                                ("config.data.objects", objects, canvas.OBJECTS)):
    bad = [n for n in names or () if n not in allowed]
    if bad:
      raise UserError(field, bad[0], "expected names from " + ", ".join(allowed))
  if styles is not None:
    missing = [s for s in forget_styles if s not in styles]
    if missing:
      raise UserError("config.data.forget_styles", missing[0], f"not among config.data.styles {styles}")
  return forget_styles, styles, objects


def _check_styles_of(data_styles, forget_styles, alt_style: str, where: str) -> None:
  """The forget styles and the alternative style against the styles a data tree holds (the
  loaded data's, or the synthetic tree's before `prepare` writes it)."""
  if any(s not in data_styles for s in forget_styles):
    raise UserError("config.data.forget_styles", forget_styles, f"the data at {where} has no images of some of them")
  if alt_style not in data_styles or alt_style in forget_styles:
    raise UserError("config.data.alt_style", alt_style,
                    "expected a retained style of the data: " + ", ".join(
                        s for s in data_styles if s not in forget_styles))


def check_vae_fit_fields(config) -> None:
  """Range checks of the `config.sd.fit_vae_*` fields (full names in the message)."""
  sdc = config.sd
  check_range("config.sd.fit_vae_steps", sdc.fit_vae_steps, 0, 10 ** 7, integer=True)
  check_range("config.sd.fit_vae_lr", sdc.fit_vae_lr, 0.0, 1e3, lo_open=True)
  check_range("config.sd.fit_vae_batch_size", sdc.fit_vae_batch_size, 1, 1 << 16, integer=True)
  check_range("config.sd.fit_vae_kl_weight", sdc.fit_vae_kl_weight, 0.0, 1e6)


def _fit_settings(config) -> dict:
  """The settings `sd.fit_tiny_vae` records (compared on a rerun)."""
  sdc = config.sd
  return {"steps": int(sdc.fit_vae_steps), "lr": float(sdc.fit_vae_lr),
          "batch_size": int(sdc.fit_vae_batch_size), "kl_weight": float(sdc.fit_vae_kl_weight),
          "seed": int(config.seed)}


def _check_tiny_vae(path: str, want: dict) -> None:
  """Raises UserError (before anything is written) if the workdir's existing tiny model at
  `path` is not the one `want` describes: fitted with other settings (or fitted while the
  config asks for no fit), or written with a random VAE while the config asks for a fit."""
  record = sd.vae_fit_record(path)
  started = os.path.isdir(os.path.join(path, sd.VAE_INIT))
  if record is None:
    if want["steps"] and not started:
      raise UserError("config.sd.fit_vae_steps", want["steps"],
                      f"the workdir's tiny model {path} was written with a random, unfitted VAE; "
                      "expected 0 to resume there, or use another --workdir")
    if not want["steps"] and started:
      raise UserError("config.sd.fit_vae_steps", 0,
                      f"a VAE fit was started on the workdir's tiny model {path}; expected it "
                      "to finish (the same config.sd.fit_vae_* as then), or use another --workdir")
    return
  have = record.get("settings", {})
  if not want["steps"]:
    bad = ("steps", 0)
  else:
    bad = next(((k, v) for k, v in want.items() if have.get(k) != v), None)
  if bad is not None:
    field = "config.seed" if bad[0] == "seed" else f"config.sd.fit_vae_{bad[0]}"
    raise UserError(field, bad[1], f"the workdir's tiny model {path} has a VAE fitted with "
                    f"{', '.join(f'{k}={v}' for k, v in have.items())}; expected the same settings "
                    "to resume there, or use another --workdir")


def prepare(config, workdir: str):
  """`config` with "tiny" / "synthetic" replaced by directories built in `<workdir>/inputs/`
  (written once; a rerun reuses them).

  With `config.sd.fit_vae_steps` > 0 the tiny model's VAE is trained on the data's images
  (`models.stable_diffusion.fit_tiny_vae`, after the synthetic tree is written) so that it
  reconstructs them; only the tiny model in `<workdir>/inputs/` is ever fitted (a user's
  `model_dir` is read, never written: the fields are then unused).  The tiny model is
  written to a temporary directory and renamed, so it exists whole or not at all.
  """
  sdc = config.sd
  check_vae_fit_fields(config)
  if sdc.model_dir != TINY and config.data.data_dir != SYNTHETIC:
    return config
  # every check `build` makes that does not need the data or the model, before writing anything
  forget_styles, styles, _ = _check_names(config)
  if config.data.data_dir == SYNTHETIC:
    _check_styles_of(styles or canvas.STYLES[:4], forget_styles, config.data.alt_style, SYNTHETIC)
  if sdc.model_dir == TINY:
    tiny = {k: tuple(v) for k, v in dict(sdc.tiny).items() if k in ("block_out_channels", "vae_block_out_channels")}
    sd.check_tiny_image_size(config.data.image_size, **tiny, field="config.data.image_size")
  fit = _fit_settings(config)
  model_path = sd_common.tiny_model_path(workdir)
  tiny_exists = sd_common.tiny_exists(model_path)
  if sdc.model_dir == TINY and tiny_exists:
    _check_tiny_vae(model_path, fit)
  c = config.copy_and_resolve_references()
  c.unlock()
  inputs = os.path.join(workdir, "inputs")
  if sdc.model_dir == TINY:
    # keep_vae_init marks the model as one to fit (see `_check_tiny_vae`)
    sd_common.write_tiny_model(model_path, config, keep_vae_init=bool(fit["steps"]))
    c.sd.model_dir = model_path
  if config.data.data_dir == SYNTHETIC:
    path = os.path.join(inputs, "canvas")
    styles, objects = _styles_objects(config)
    if not os.path.isdir(path):
      tmp = checkpoints.tmp_path(path)
      canvas.write_fake_tree(tmp, styles or canvas.STYLES[:4], objects or canvas.OBJECTS[:3],
                             n_images=max(config.data.image_indices), size=config.data.image_size,
                             seed=config.seed)
      checkpoints.publish_dir(tmp, path)
    c.data.data_dir = path
  if sdc.model_dir == TINY and fit["steps"] and sd.vae_fit_record(model_path) is None:
    styles, objects = _styles_objects(config)
    data = canvas.load(c.data.data_dir, image_size=c.data.image_size, styles=styles, objects=objects,
                       image_indices=tuple(c.data.image_indices))
    record = sd.fit_tiny_vae(model_path, data_lib.to_float(data.images), **fit)
    logging.info("fitted the tiny VAE on %d images in %.1f s: per-pixel MSE %.4f (random init %.4f), "
                 "scaling_factor %.4f", record["num_images"], record["wall_time_s"], record["mse"],
                 record["mse_random"], record["scaling_factor"])
  c.lock()
  return c


def _cache_key(config, comp) -> str:
  key = {"model_dir": os.path.abspath(config.sd.model_dir), "data_dir": os.path.abspath(config.data.data_dir),
         "image_size": int(config.data.image_size), "styles": list(config.data.styles),
         "objects": list(config.data.objects), "indices": list(config.data.image_indices),
         "template": config.data.template, "scaling": float(comp.scaling_factor)}
  record = sd.vae_fit_record(config.sd.model_dir)
  if record is not None:                     # a (re)fitted tiny VAE encodes differently
    key["vae_fit"] = record
  return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _encode(config, comp, data, workdir: Optional[str]):
  """(latents, table, cache path, arrays to write): from the cache when it exists."""
  path = None
  if workdir:
    path = os.path.join(workdir, CACHE_DIR, _cache_key(config, comp) + ".npz")
    if os.path.exists(path):
      with np.load(path) as f:
        return f["latents"], f["table"], path, None
  t0 = time.time()
  latents = sd.encode_images(comp, data_lib.to_float(data.images), batch_size=config.sd.encode_batch_size)
  table = sd.prompt_table(comp, list(data.prompts))
  logging.info("encoded %d images and %d prompts in %.1f s", len(latents), len(table), time.time() - t0)
  return latents, table, path, {"latents": latents, "table": table}


def build(config, workdir: Optional[str] = None) -> Experiment:
  """The experiment's data, model and evaluation parts (no writes; see `SDContext.save_cache`)."""
  dcfg, sdc = config.data, config.sd
  sd_common.check_sd_fields(config)
  check_vae_fit_fields(config)
  forget_styles, styles, objects = _check_names(config)
  comp = sd.load(sdc.model_dir)
  if dcfg.image_size % comp.vae_factor:
    raise UserError("config.data.image_size", dcfg.image_size,
                    f"expected a multiple of the VAE's down-sampling factor {comp.vae_factor}")
  data = canvas.load(dcfg.data_dir, image_size=dcfg.image_size, styles=styles, objects=objects,
                     image_indices=tuple(dcfg.image_indices), template=dcfg.template)
  _check_styles_of(data.styles, forget_styles, dcfg.alt_style, dcfg.data_dir)
  forget_ids = tuple(data.styles.index(s) for s in forget_styles)
  alt_style_id = data.styles.index(dcfg.alt_style)
  latents, table, cache_path, arrays = _encode(config, comp, data, workdir)

  num_prompts = len(data.prompts)
  train = data_lib.Dataset(name=DATA_NAME, images=np.asarray(latents, np.float32),
                           labels=np.asarray(data.prompt_ids, np.int32), num_classes=num_prompts,
                           class_names=tuple(data.prompts),
                           source=f"{data.source}; latents of {sdc.model_dir}", is_image=False)
  forget_prompts = np.flatnonzero(np.isin(data.prompt_style, forget_ids)).astype(np.int32)
  forget_mask = np.isin(train.labels, forget_prompts)
  streams = {"all": train, "retain": data_lib.subset(train, ~forget_mask),
             "forget": data_lib.subset(train, forget_mask)}
  alt = np.asarray(canvas.alternative_prompts(data, forget_styles, dcfg.alt_style), np.int32)
  streams["alternative"] = dimum_lib.memorization_set(streams["forget"], streams["retain"], alt, "map",
                                                      seed=config.seed)
  streams["test_retain"] = streams["retain"]

  dtype = DTYPES[sdc.dtype]
  module = sd.build_module(comp, num_prompts, dtype=dtype, remat=bool(sdc.remat))
  base_params = sd_common.plain(sd.model_params(comp, table))
  latent_shape = tuple(int(v) for v in train.example_shape)
  model_cfg = sd_common.model_config(config, num_prompts, latent_shape)
  process = sd_common.ddpm_process(comp)
  clf_size = int(config.classifier.image_size)
  classifiers = {
      "style": models.build_classifier(config.classifier, (clf_size, clf_size, 3), len(data.styles))[0],
      "object": models.build_classifier(config.classifier, (clf_size, clf_size, 3), len(data.objects))[0]}
  inception = evaluation.load_fid_inception(config.eval.inception_weights) if config.eval.inception_weights else None
  ctx = SDContext(comp=comp, data=data, forget_styles=forget_styles, forget_style_ids=forget_ids,
                  alt_style_id=alt_style_id, table=np.asarray(table), base_params=base_params,
                  classifiers=classifiers, clf_size=clf_size, cache_path=cache_path, cache_arrays=arrays)

  def anchor_fn(cfg):
    style_map = canvas.anchor_styles(forget_styles, [s for s in data.styles if s not in forget_styles],
                                     cfg.core.scheme, base=cfg.data.alt_style if cfg.core.base < 0 else
                                     data.styles[cfg.core.base], seed=cfg.seed, k=cfg.core.k)
    return canvas.anchor_prompt_table(data, style_map)

  return Experiment(
      config=config, train=train, test=train, streams=streams,
      test_forget=streams["forget"], test_retain=streams["retain"],
      forget_labels=tuple(int(p) for p in forget_prompts), alt=alt, conditional=True, process=process,
      module=module, model_cfg=model_cfg, example_shape=latent_shape, classifier=None,
      context=ctx, anchor_fn=anchor_fn, inception=inception)


# ----------------------------------------------------------------------------
# Decoding and classifying generated latents.
# ----------------------------------------------------------------------------
def _resize(ctx: SDContext, x01: np.ndarray) -> np.ndarray:
  s = ctx.clf_size
  if x01.shape[1:3] == (s, s):
    return np.asarray(x01, np.float32)
  return np.asarray(jax.image.resize(jnp.asarray(x01, jnp.float32), (len(x01), s, s, x01.shape[-1]),
                                     "linear", antialias=True))


def classify(ctx: SDContext, which: str, params, x01: np.ndarray, batch_size: int = 256):
  """(logits (N, K), penultimate features (N, F)) of the `which` classifier on [0, 1] images."""
  key = f"classify_{which}"
  if key not in ctx.compiled:
    module = ctx.classifiers[which]
    def logits_and_features(p, x):
      feats = module.apply({"params": p}, x, method="features")
      return module.apply({"params": p}, feats, method=lambda m, f: m.head(f)), feats
    ctx.compiled[key] = jax.jit(logits_and_features)
  out = mesh_lib.map_batches(ctx.compiled[key], params, _resize(ctx, x01), batch_size,
                             label=f"{which} classifier")
  if out is None:
    return np.zeros((0, ctx.classifiers[which].config.num_classes)), np.zeros((0, 0))
  return out


def classifier_datasets(exp, which: str):
  """(train, test) pixel data sets labelled by style or object: every 5th image is held out."""
  ctx = exp.context
  data = ctx.data
  labels = np.asarray(data.style_ids if which == "style" else data.object_ids, np.int32)
  names = data.styles if which == "style" else data.objects
  images = (np.round(_resize(ctx, data_lib.to_float(data.images)) * 255).astype(np.uint8)
            if data.images.shape[1] != ctx.clf_size else data.images)
  test = np.arange(len(labels)) % 5 == 4
  make = lambda m: data_lib.Dataset(name=f"{DATA_NAME}_{which}", images=images[m], labels=labels[m],
                                    num_classes=len(names), class_names=tuple(names), source=data.source,
                                    is_image=True)
  return make(~test), make(test if test.any() else ~test)


def load_classifiers(exp, workdir: str, stage: str) -> Dict[str, Any]:
  """{"style": params, "object": params} from `config.eval.classifier_dir` or the stage."""
  root = exp.config.eval.classifier_dir or os.path.join(workdir, stage)
  out = {}
  for which in ("style", "object"):
    path = os.path.join(root, which)
    if not os.path.isdir(path):
      raise UserError("config.eval.classifier_dir", root,
                      f"expected a directory with style/ and object/ classifier checkpoints (no {path})")
    out[which] = load_params(exp, path, ema=False)
  return out


# ----------------------------------------------------------------------------
# Metrics of a model.
# ----------------------------------------------------------------------------
def _prompt_labels(ids: np.ndarray, n: int, seed: int) -> np.ndarray:
  """n prompt ids cycling through `ids` in a seeded order."""
  order = np.random.default_rng(seed).permutation(np.asarray(ids, np.int32))
  return np.resize(order, n).astype(np.int32)


def forget_rates(exp, params, clf, n: int, rng: jax.Array, keep_samples: bool = False, cond_rows=None) -> dict:
  """AR (the forgotten style in the style classifier's top 3, DiMUM paper Sec. VI-B) and
  AR_CL (top-1 = the alternative style) of n samples under the forget prompts.

  `cond_rows` (F, L, D): the samples are conditioned on these prompt embeddings in place of
  the prompt table's, row j standing for forget prompt forget_labels[j] (`attacks.condition`)."""
  ctx = exp.context
  labels = _prompt_labels(np.asarray(exp.forget_labels), n, exp.config.seed)
  kw = {}
  if cond_rows is not None:
    row_of = {int(p): j for j, p in enumerate(exp.forget_labels)}
    kw["cond"] = np.asarray(cond_rows)[[row_of[int(p)] for p in labels]]
  x = decode(ctx, generation.generate(exp, params, n, rng, labels=labels, **kw))
  logits, _ = classify(ctx, "style", clf["style"], x)
  style_true = ctx.data.prompt_style[labels]
  out = {"ar": evaluation.topk_match_rate(logits, style_true, k=3),
         "ar_top1": evaluation.topk_match_rate(logits, style_true, k=1),
         # UA (UnlearnCanvas): the share whose top-1 style is none of the forgotten ones
         "ua": float(np.mean(~np.isin(np.argmax(logits, -1), ctx.forget_style_ids))),
         "ar_cl": evaluation.ar_cl(logits, np.full(len(labels), ctx.alt_style_id)),
         "class_histogram": np.bincount(np.argmax(logits, -1), minlength=len(ctx.data.styles)).tolist()}
  if keep_samples:
    out.update(samples=x, labels=labels, style_logits=logits)
  return out


def _real_retained(exp, n: int) -> np.ndarray:
  """n real images of the retained styles (a seeded draw): the FD's reference."""
  ctx = exp.context
  real = ctx.data.images[np.isin(ctx.data.style_ids, ctx.forget_style_ids, invert=True)]
  return real[np.random.default_rng(exp.config.seed).permutation(len(real))[:n]]


def attack_measures(exp, params, clf, n: int, rng: jax.Array, rates=None, cache=None) -> dict:
  """An attack curve point's utility (with `config.eval.attack_fd`, as `tasks.classes`): "fd",
  the Fréchet distance on the style classifier's penultimate features between n samples under
  the retained prompts and n real images of the retained styles (`evaluate_model`'s FD on n
  samples; the real images' features kept in `cache` from point to point); {} otherwise."""
  del rates
  cfg, ctx = exp.config, exp.context
  if not cfg.eval.attack_fd or n < 2:
    return {}
  cache = {} if cache is None else cache
  labels = _prompt_labels(np.asarray(exp.retained_classes, np.int32), n, cfg.seed + 1)
  x = decode(ctx, generation.generate(exp, params, n, jax.random.fold_in(rng, 0), labels=labels))
  _, feats = classify(ctx, "style", clf["style"], x)
  if ("fd_reference", n) not in cache:
    cache[("fd_reference", n)] = classify(ctx, "style", clf["style"], data_lib.to_float(_real_retained(exp, n)))[1]
  return {"fd": float(evaluation.frechet_distance_from_features(feats, cache[("fd_reference", n)]))}


def evaluate_model(exp, params, clf, rng: jax.Array, out_png: str, workdir: Optional[str] = None) -> dict:
  """UA / IRA / CRA, AR_MU (top-3), AR_CL and the Fréchet distance of one model; with
  `config.eval.inception_weights`, Inception FID / sFID / IS of the generated retained-style
  images against as many real ones (`evaluation.fid_entries`, statistics cached in `workdir`)."""
  cfg, ctx = exp.config, exp.context
  t0 = time.time()
  fr = forget_rates(exp, params, clf, cfg.eval.num_samples, jax.random.fold_in(rng, 0), keep_samples=True)
  retained = np.asarray(exp.retained_classes, np.int32)
  n = cfg.eval.fd_num_samples
  r_labels = _prompt_labels(retained, n, cfg.seed + 1)
  x_r = decode(ctx, generation.generate(exp, params, n, jax.random.fold_in(rng, 1), labels=r_labels))
  labels = np.concatenate([fr["labels"], r_labels])
  x = np.concatenate([fr["samples"], x_r])
  r_logits, feats = classify(ctx, "style", clf["style"], x_r)
  s_logits = np.concatenate([fr["style_logits"], r_logits])
  o_logits, _ = classify(ctx, "object", clf["object"], x)
  style_true, object_true = ctx.data.prompt_style[labels], ctx.data.prompt_object[labels]
  result = evaluation.ua_ira_cra(np.argmax(s_logits, -1), np.argmax(o_logits, -1), style_true,
                                 object_true, ctx.forget_style_ids)
  real = _real_retained(exp, n)
  _, ref = classify(ctx, "style", clf["style"], data_lib.to_float(real))
  grid_n = min(cfg.eval.grid_size, len(fr["samples"]), len(x_r))
  figures.save_samples(out_png, np.concatenate([fr["samples"][:grid_n], x_r[:grid_n]]), True,
                          cols=max(grid_n, 1))
  result = {k.lower(): float(v) for k, v in result.items()}
  result.update(sample_quality(cfg, s_logits, o_logits, style_true, exp.context.data.styles, ctx.forget_style_ids))
  result.update({
      "ar_mu": fr["ar"], "ar_mu_top1": fr["ar_top1"], "ar_cl": fr["ar_cl"],
      "num_samples": int(cfg.eval.num_samples), "fd_num_samples": int(n),
      "forget_class_histogram": fr["class_histogram"],
      "frechet_distance": evaluation.frechet_distance_from_features(feats, ref),
      "frechet_features": "style classifier (penultimate layer), generated retained-style vs real images",
      "retain_accuracy": result.get("ira", float("nan")),
      "forget_styles": list(ctx.forget_styles), "alt_style": ctx.data.styles[ctx.alt_style_id]})
  if exp.inception is not None and workdir:
    result.update(evaluation.fid_entries(exp.inception, x_r, real, cfg.eval, source=exp.train.source,
                                         stats_dir=os.path.join(workdir, "fid_stats"),
                                         reference_name="real retained-style images"))
  result["wall_time_s"] = time.time() - t0
  return result


def sample_quality(cfg, s_logits, o_logits, style_true, styles, forget_style_ids) -> dict:
  """`evaluation.sample_quality` of generated images with the style classifier (the classifier
  UA / IRA read): confident share at `config.eval.confidence_threshold`, TV distance of the
  predicted style histogram from the prompted one (all / retained styles), `recognised`;
  plus the object classifier's confident share (`object_confident_share`)."""
  s_conf = np.max(jax.nn.softmax(np.asarray(s_logits, np.float32), -1), -1)
  o_conf = np.max(jax.nn.softmax(np.asarray(o_logits, np.float32), -1), -1)
  retained = [i for i in range(len(styles)) if i not in set(int(f) for f in forget_style_ids)]
  e = cfg.eval
  out = evaluation.sample_quality(np.argmax(s_logits, -1), s_conf, style_true, len(styles), retained,
                                  threshold=e.confidence_threshold, min_confident_share=e.min_confident_share)
  out["object_confident_share"] = float(np.mean(o_conf >= e.confidence_threshold)) if len(o_conf) else 0.0
  return out


def add_sfid(results: dict, base: str) -> None:
  """SFID_M = min(100 FD_0 / FD_M, 100) against `base`, the model the methods start from
  (CORE App. B Eq. 7; FD on the style classifier's features here, not Inception)."""
  models_ = results.get("models", {})
  if base not in models_:
    return
  results["sfid_reference"] = base
  fd0 = models_[base].get("frechet_distance")
  for entry in models_.values():
    if fd0 is not None and entry.get("frechet_distance") is not None:
      entry["sfid"] = evaluation.sfid(fd0, entry["frechet_distance"])


#: at most this many of the data's images are reconstructed for `autoencoder_summary`.
AUTOENCODER_CHECK_IMAGES = 64


def _classifier_root(exp, workdir: str) -> Optional[str]:
  """The directory with style/ and object/ classifier checkpoints, once there is one."""
  cfg = exp.config
  if cfg.eval.classifier_dir:
    return cfg.eval.classifier_dir
  stage = first_stage(cfg, "classifier")
  if stage and checkpoints.is_done(os.path.join(workdir, stage)):
    return os.path.join(workdir, stage)
  return None


def _reconstruction_check(exp, workdir: str, root: Optional[str]) -> dict:
  """Per-pixel MSE of decode(encode(x)) through the experiment's own path (`sd.encode_images`
  then `decode`) on up to AUTOENCODER_CHECK_IMAGES evenly spaced images of the data, the
  std of the cached latents, and (with classifiers) the style / object accuracy on the
  reconstructions and on the originals."""
  ctx = exp.context
  n_all = len(ctx.data.images)
  idx = np.unique(np.linspace(0, n_all - 1, min(n_all, AUTOENCODER_CHECK_IMAGES)).round().astype(int))
  x01 = data_lib.to_float(ctx.data.images[idx])
  z = sd.encode_images(ctx.comp, x01, batch_size=exp.config.sd.encode_batch_size)
  rec = decode(ctx, z)
  out = {"check_images": int(len(idx)), "reconstruction_mse": float(np.mean(np.square(rec - x01))),
         "latent_std": float(np.std(exp.train.images))}
  if root is not None:
    clf = load_classifiers(exp, workdir, root)   # an absolute root: join(workdir, root) = root
    for which, truth in (("style", ctx.data.style_ids[idx]), ("object", ctx.data.object_ids[idx])):
      for kind, images in (("reconstructed", rec), ("original", x01)):
        logits, _ = classify(ctx, which, clf[which], images)
        out[f"{which}_accuracy_{kind}"] = float(np.mean(np.argmax(logits, -1) == truth))
  return out


def autoencoder_summary(exp, workdir: str) -> dict:
  """results.json's "autoencoder": the VAE's fit record (`sd.fit_tiny_vae`; None for a
  model directory's own VAE), its scaling_factor, `_reconstruction_check` and a one-line
  "summary" (report.md).  The check is cached in `<workdir>/sd_cache/` per (latent cache
  key, classifier checkpoints)."""
  comp = exp.context.comp
  record = sd.vae_fit_record(comp.model_dir)
  root = _classifier_root(exp, workdir)
  stamp = [] if root is None else sorted(
      (w, e.name, e.stat().st_mtime_ns) for w in ("style", "object") if os.path.isdir(os.path.join(root, w))
      for e in os.scandir(os.path.join(root, w)))
  key = hashlib.sha1(json.dumps([_cache_key(exp.config, comp), os.path.abspath(root or ""), stamp])
                     .encode()).hexdigest()[:16]
  path = os.path.join(workdir, CACHE_DIR, f"autoencoder_{key}.json")
  if os.path.exists(path):
    check = checkpoints.read_json(path)
  else:
    check = _reconstruction_check(exp, workdir, os.path.abspath(root) if root else None)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    checkpoints.write_json(path, check)
  out = {"fitted": record is not None, "scaling_factor": float(comp.scaling_factor), **check,
         "fit": None if record is None else {k: v for k, v in record.items() if k != "history"}}
  if record is not None:
    what = (f"tiny VAE fitted in the workdir ({record['settings']['steps']} Adam steps on "
            f"{record['num_images']} images): per-pixel MSE {check['reconstruction_mse']:.4f} "
            f"(random init {record['mse_random']:.4f}; the images' variance {record['data_variance']:.4f})")
  else:
    what = f"VAE of {comp.model_dir}: per-pixel MSE {check['reconstruction_mse']:.4f}"
  what += (f", scaling_factor {comp.scaling_factor:.4g} (cached latents' std "
           f"{check['latent_std']:.3f})")
  if "style_accuracy_reconstructed" in check:
    what += (f"; style / object classifier accuracy on reconstructions "
             f"{check['style_accuracy_reconstructed']:.2f} / {check['object_accuracy_reconstructed']:.2f}"
             f" (originals {check['style_accuracy_original']:.2f} / {check['object_accuracy_original']:.2f})")
  out["summary"] = what + f" on {check['check_images']} of the data's images"
  return out


# ----------------------------------------------------------------------------
# The task's hooks (`unlearn_jax.tasks`).
# ----------------------------------------------------------------------------
def condition_attack_error(config, attack: str) -> str:
  """"": the condition attacks optimise rows of the SD UNet's prompt table (the forget prompts'
  text-encoder outputs), textual inversion one token embedding (`textual_inversion`)."""
  del config, attack
  return ""


#: the word standing for the forgotten styles in textual inversion's prompts (one CLIP token).
PLACEHOLDER = "*"


def textual_inversion(exp) -> condition.ConditionSpace:
  """Textual inversion's token space (Gal et al. 2023; `attacks.condition`): forget prompt j is
  re-captioned with `PLACEHOLDER` in place of its style ("An image of Dogs in * style."), and its
  condition is the frozen text encoder's output of that caption with the placeholder token's
  input embedding set to the attack's vector v (rows (1, D_token), one for every forgotten
  style, starting at the placeholder's own embedding; consts {"text": the encoder's params})."""
  ctx = exp.context
  comp, data = ctx.comp, ctx.data
  captions = [canvas.prompt(PLACEHOLDER, data.objects[data.prompt_object[p]], exp.config.data.template)
              for p in exp.forget_labels]
  ids = sd.token_ids(comp, captions)
  token_id = int(comp.tokenizer.convert_tokens_to_ids(PLACEHOLDER + "</w>"))
  if not np.all((ids == token_id).sum(axis=1) == 1):
    raise UserError("config.data.template", exp.config.data.template,
                    f"textual inversion needs the placeholder {PLACEHOLDER!r} as one token in every forget caption")
  ids = jnp.asarray(ids)

  def to_condition(rows, idx_B, consts):
    return sd.encode_with_token(comp.text_encoder, consts["text"], ids[idx_B], token_id, rows[0])

  v0 = np.asarray(sd.token_embedding(comp.text_params))[token_id][None]
  return condition.ConditionSpace(rows0=jnp.asarray(v0, jnp.float32), to_condition=to_condition,
                                  consts={"text": comp.text_params})


def prefixed_ids(comp, captions: Sequence[str], slot_ids: Sequence[int]) -> np.ndarray:
  """(P, L) token ids of each caption with the K tokens `slot_ids` inserted after the start
  token (the caption's tail cut where the K tokens would push it past the tokenizer's length;
  the end token kept)."""
  ids = sd.token_ids(comp, captions)
  eos = int(comp.tokenizer.eos_token_id)
  out = np.array(ids)
  for i, row in enumerate(ids):
    end = int(np.nonzero(row[1:] == eos)[0][0]) + 1          # the end token (after the start token)
    body = list(row[1:end])[:max(len(row) - 2 - len(slot_ids), 0)]
    new = [int(row[0])] + [int(t) for t in slot_ids] + body + [eos]
    out[i, :len(new)] = new
    out[i, len(new):] = row[end + 1] if end + 1 < len(row) else eos   # the padding token
  return out


def prompt_tokens(exp, k: int) -> condition.ConditionSpace:
  """UnlearnDiffAtk's token space (`attacks.condition` "prompt_tokens"): K token embeddings
  prepended to every forget prompt ("<t1> ... <tK> An image of Dogs in Van Gogh style."),
  their input embeddings the attack's rows (K, D_token), shared by the forgotten styles.  While
  optimised, K vocabulary tokens (the first ids not special and in no forget prompt) stand in
  as slots whose embeddings are replaced by the rows (`sd.encode_with_tokens`); the curve is
  measured on the real prompt, each row projected to its nearest vocabulary token
  (`sd.nearest_tokens`, special tokens excluded), which `describe` writes out.  The rows start
  at the slot tokens' own embeddings."""
  ctx = exp.context
  comp = ctx.comp
  captions = [ctx.data.prompts[p] for p in exp.forget_labels]
  tok = comp.tokenizer
  special = sorted({int(t) for t in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) if t is not None})
  used = set(np.unique(sd.token_ids(comp, captions)).tolist()) | set(special)
  slots = [t for t in range(len(tok)) if t not in used][:k]
  ids = jnp.asarray(prefixed_ids(comp, captions, slots))
  slot_ids = jnp.asarray(slots, jnp.int32)
  table = np.asarray(sd.token_embedding(comp.text_params), np.float32)     # one host copy for the projection

  def to_condition(rows, idx_B, consts):
    return sd.encode_with_tokens(comp.text_encoder, consts["text"], ids[idx_B], slot_ids, rows)

  def discrete_ids(rows):
    return np.asarray(prefixed_ids(comp, captions, sd.nearest_tokens(table, rows, exclude=special)))

  def eval_condition(rows, idx_B, consts):
    return comp.text_encoder(jnp.asarray(discrete_ids(rows))[idx_B], params=consts["text"], train=False)[0]

  def describe(rows):
    return [tok.decode(r, skip_special_tokens=True) for r in discrete_ids(rows)]

  rows0 = table[slots]
  return condition.ConditionSpace(rows0=jnp.asarray(rows0, jnp.float32), to_condition=to_condition,
                                  consts={"text": comp.text_params}, eval_condition=eval_condition,
                                  describe=describe)


def validate(config) -> None:
  """The `config.sd` checks that need no inputs (before `prepare` writes any)."""
  sd_common.check_sd_extra(config)
  check_vae_fit_fields(config)


def check(exp: Experiment) -> None:
  """Stage settings this task rules out, checked on the built experiment: the trainable
  subset names, mask kinds that need every leaf, and re-training from scratch
  (`sd_common.check_stages`)."""
  sd_common.check_stages(exp)


def save(exp: Experiment) -> None:
  """Writes the latent / prompt-table cache `build` computed (after validation)."""
  exp.context.save_cache()


def train_classifiers(exp: Experiment, name: str, workdir: str, fit: Callable) -> dict:
  """A style and an object classifier on the data set's images, in <stage>/style and
  <stage>/object, with `fit(stage_dir, module, train, test, seed_offset, log_name)`; none
  (only a check that they load) with `config.eval.classifier_dir`."""
  if exp.config.eval.classifier_dir:
    load_classifiers(exp, workdir, name)          # checks it loads
    return {"loaded_from": exp.config.eval.classifier_dir}
  info = {}
  for i, which in enumerate(("style", "object")):
    train, test = classifier_datasets(exp, which)
    info[f"{which}_test_accuracy"] = fit(os.path.join(workdir, name, which), exp.context.classifiers[which],
                                         train, test, i, f"{name}/{which}")
  return info


def classifier_params(exp: Experiment, workdir: str) -> Dict[str, Any]:
  """{"style": params, "object": params} (`load_classifiers`)."""
  return load_classifiers(exp, workdir, first_stage(exp.config, "classifier"))


def evaluate(exp: Experiment, workdir: str, model: str, params, clf, rng: jax.Array, out_dir: str) -> dict:
  """One model's results.json entry (`evaluate_model`)."""
  png = os.path.join(out_dir, f"{model}_samples.png")
  res = evaluate_model(exp, params, clf, rng, png, workdir)
  res["samples_png"] = os.path.relpath(png, workdir)
  logging.info("[%s] %s: UA %.3f IRA %.3f CRA %.3f AR_MU(top-3) %.3f FD %.3f", os.path.basename(out_dir), model,
               res["ua"], res["ira"], res["cra"], res["ar_mu"], res["frechet_distance"])
  return res


def finalize(exp: Experiment, results: dict, workdir: str) -> None:
  """results.json's style entries: the styles and objects, the model, the autoencoder's
  check (`autoencoder_summary`), forget prompts in place of class labels, and SFID
  against the first evaluated model (`add_sfid`)."""
  cfg, ctx = exp.config, exp.context
  results.update(forget_styles=list(ctx.forget_styles), alt_style=ctx.data.styles[ctx.alt_style_id],
                 styles=list(ctx.data.styles), objects=list(ctx.data.objects),
                 model_dir=exp.model_cfg.model_dir, trainable=exp.model_cfg.trainable)
  results["autoencoder"] = autoencoder_summary(exp, workdir)
  results["forget_class_names"] = [f"{len(exp.forget_labels)} prompts of " + ", ".join(ctx.forget_styles)]
  results["forget_classes"] = results["forget_classes"][:0]
  results.pop("alternative_classes", None)
  first = [cfg.stages[n].models[0] for n in cfg.stage_order
           if cfg.stages[n].kind == "evaluate" and cfg.stages[n].models]
  if first:
    add_sfid(results, first[0])


def report_tables(results: dict, workdir: str) -> list:
  """report.md's body: the model and autoencoder lines, the CORE paper's Table 1 shape
  (`concept_lines`), then the DiMUM paper's tables (`reporting.markdown.conditional_lines`)."""
  lines = [f"- Stable Diffusion `{results['model_dir']}`, trainable: {results['trainable']}; "
           f"alternative style: {results['alt_style']}"]
  lines += [f"- autoencoder: {results['autoencoder']['summary']}"] if "autoencoder" in results else []
  lines.append("")
  lines += concept_lines(results)
  return lines + markdown.conditional_lines(results, workdir)


def concept_lines(results: dict) -> list:
  """UnlearnCanvas metrics shaped like the CORE paper's Table 1 (UA / IRA / CRA / SFID, in %)."""
  models_, attacks = results["models"], results.get("attacks", {})
  lines = ["## Style unlearning (CORE paper, Table 1 shape; %)", "",
           "UA: forget-style prompts whose images are not classified as that style; IRA: retained-style "
           "prompts classified as their style; CRA: images classified as their prompt's object; SFID: "
           "min(100 FD_base / FD, 100) with FD on the style classifier's features (not Inception). "
           "AR_MU: forget-style prompts whose style is in the classifier's top 3 (DiMUM paper Sec. VI-B). "
           "confident: images the style classifier assigns a style with probability >= "
           "`config.eval.confidence_threshold`; (!) below `config.eval.min_confident_share`.", "",
           "| Method | UA | IRA | CRA | SFID | Total | AR_MU (top-3) | AR_CL | max AR_DiMRA | confident (%) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for n, m in models_.items():
    cells = [100 * m.get(k, float("nan")) for k in ("ua", "ira", "cra")] + [m.get("sfid", float("nan"))]
    worst = [a["max_ar_dimra"] for a in attacks.values() if a["model"] == n]
    conf = m.get("confident_share")
    lines.append(f"| {markdown.pretty(n)} | " + " | ".join(f"{v:.1f}" for v in cells) + f" | {sum(cells):.1f} | "
                 f"{m['ar_mu']:.3f} | {m['ar_cl']:.3f} | {max(worst) if worst else float('nan'):.3f} | "
                 f"{'–' if conf is None else f'{100 * conf:.1f}'}{markdown.flag(m)} |")
  return lines + [""]
