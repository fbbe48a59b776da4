"""Sampling from an experiment's model, batched and split over the mesh, and its NLL function.

    x = generate(exp, params, n, rng, labels=labels)   # n samples in data space
    y = restore(exp, params, "inpaint", x01, rng, known=mask)   # SGU Sec. 4.3 restorations
    nll_fn = nll_function(exp)                         # jitted probability-flow NLL

The samplers are chosen by `config.eval.sampler.kind` from `SAMPLERS` (continuous SDEs:
score_fn(x, t)) or `DDPM_SAMPLERS` (the discrete schedule: eps_fn(x, i), guided for
class-conditional models, DiMUM paper Eq. 2-3).  `restore` runs `sampling.inpaint` (the
pixels where the mask is 1 kept) or `sampling.reconstruct` (from `config.eval.reconstruct.t_start`)
on given images in [0, 1] of a continuous-SDE model (SGU Sec. 4.3, Tables 3-4).

Every function here is a `jax.jit` over the run's mesh (`mesh.current()`): a batch of
`batch_size` examples, padded to a multiple of the device count, is split over every
device, batch i drawing from fold_in(rng, i) with its global shape.  So the samples do not
depend on the number of devices (JAX's partitionable threefry draws the same values for a
global shape on any mesh, and the padded rows come after the real ones), except where a
sampler couples the examples of a batch (the PC corrector's Langevin step size, score_sde's
batch-mean norms; the NLL's shared adaptive step) and the padding changes the batch: choose
`config.eval.sample_batch_size` a multiple of the device count.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import console
from unlearn_jax import data as data_lib
from unlearn_jax import likelihood
from unlearn_jax import mesh as mesh_lib
from unlearn_jax import models
from unlearn_jax import sampling
from unlearn_jax import score as score_lib
from unlearn_jax import sde as sde_lib
from unlearn_jax.experiment import Experiment


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


def model_eps_apply(exp: Experiment, params, embedded: bool = False) -> Callable:
  """eps_apply(x, i, c) of a DDPM model (i: integer steps): c the labels, or (embedded) rows
  (B, E) of the class-embedding space in their place (`models.ddpm_unet.UNet`'s cond_embedding)."""
  def eps_apply(x, i, c):
    kw = {"cond_embedding": c} if embedded else {"labels": c}
    out = exp.apply({"params": params}, x, exp.process.time_input(i), **kw)
    return score_lib.to_eps(out, exp.process.marginal_coeffs(i)[1], exp.config.model.output)
  return eps_apply


def _sampler(exp: Experiment, embedded: bool = False) -> Callable:
  """jit(params, rng, conditions (B,) or (B, E)) -> B samples in data space, split over the
  mesh; built once per mesh (compiled once per batch shape).  `embedded`: the conditions
  are class-embedding rows (B, E), and guidance's null condition is the table's null row."""
  m = mesh_lib.current()
  key = ("sample_embedded" if embedded else "sample", m)
  if key not in exp.compiled:
    cfg = exp.config
    discrete = isinstance(exp.process, sde_lib.DDPMSchedule)

    def sample(params, rng, labels):
      shape = (labels.shape[0],) + exp.example_shape
      if discrete:
        eps_apply = model_eps_apply(exp, params, embedded)
        if exp.conditional:
          null = models.class_table(params)[exp.null_label] if embedded else exp.null_label
          eps_fn = sampling.guided_eps_fn(eps_apply, labels, null, cfg.eval.sampler.guidance)
        else:
          eps_fn = lambda x, i: eps_apply(x, i, None)
        x = DDPM_SAMPLERS[cfg.eval.sampler.kind](exp, eps_fn, shape, rng)
      else:
        score_apply = model_score_apply(exp)
        x = SAMPLERS[cfg.eval.sampler.kind](exp, lambda x, t: score_apply(params, x, t), shape, rng)
      if exp.is_image:
        x = jnp.clip(data_lib.inverse_scaler(x, cfg.data.centered), 0.0, 1.0)
      return x

    exp.compiled[key] = jax.jit(sample, out_shardings=mesh_lib.batch(m))
  return exp.compiled[key]


def _chunks(n: int, batch_size: int, padded: int):
  """(i, indices of batch i padded to `padded` by cycling, its number of real rows)."""
  for i, start in enumerate(range(0, n, batch_size)):
    real = np.arange(start, min(start + batch_size, n))
    yield i, np.resize(real, padded), len(real)


def generate(exp: Experiment, params, n: int, rng: jax.Array, batch_size: Optional[int] = None,
             labels: Optional[np.ndarray] = None, cond: Optional[np.ndarray] = None) -> np.ndarray:
  """n samples in data space ([0, 1] images, raw toy points), in batches split over the mesh.

  `labels` (n,) are the conditions of a class-conditional model (required there), or `cond`
  (n, E) in their place: rows of its class-embedding space (the condition attacks, a sample
  conditioned on a row of the table equals one conditioned on that row's label).  Batch i
  (of `batch_size`, default config.eval.sample_batch_size) draws from fold_in(rng, i): the
  samples are the same on any number of devices (module docstring).
  """
  if exp.conditional and labels is None and cond is None:
    raise ValueError("a class-conditional model needs one label (or embedding row) per sample")
  if n <= 0:
    return np.zeros((0,) + exp.example_shape, np.float32)
  m = mesh_lib.current()
  batch_size = min(batch_size or exp.config.eval.sample_batch_size, n)
  sample = _sampler(exp, embedded=cond is not None)
  if cond is not None:
    conds = np.asarray(cond, np.float32)
  else:
    conds = np.zeros(n, np.int32) if labels is None else np.asarray(labels, np.int32)
  placed = mesh_lib.put(params)
  out = []
  progress = console.Progress("sampling", n, "samples")
  for i, idx, real in _chunks(n, batch_size, mesh_lib.round_up(batch_size, m)):
    x = sample(placed, mesh_lib.put(jax.random.fold_in(rng, i), mesh_lib.replicated(m)),
               mesh_lib.put(conds[idx], mesh_lib.batch(m)))
    out.append(mesh_lib.to_host(x)[:real])
    progress.update(min(sum(len(o) for o in out), n))
  return np.concatenate(out)


def grid_labels(exp: Experiment, n: int) -> Optional[np.ndarray]:
  """Conditions of a sample grid: each class in turn, one row per class."""
  if not exp.conditional:
    return None
  k = exp.train.num_classes
  per = max(n // k, 1)
  return np.repeat(np.arange(k, dtype=np.int32), per)


def nll_function(exp: Experiment) -> Callable:
  """The jitted probability-flow NLL `nll_fn(params, x_B, rng) -> (bpd_B, z_B, nfe)` of the
  experiment's model, its batch split over the mesh; built once per mesh."""
  m = mesh_lib.current()
  if ("nll", m) not in exp.compiled:
    ncfg = exp.config.eval.nll
    exp.compiled[("nll", m)] = jax.jit(likelihood.get_likelihood_fn(
        exp.process, model_score_apply(exp), rtol=ncfg.rtol, atol=ncfg.atol, eps=exp.config.sde.eps,
        hutchinson="exact" if not exp.is_image else ncfg.hutchinson, offset=nll_offset(exp)),
        out_shardings=(mesh_lib.batch(m), mesh_lib.batch(m), mesh_lib.replicated(m)))
  return exp.compiled[("nll", m)]


def nll_offset(exp: Experiment) -> float:
  """score_sde adds `7 - inverse_scaler(-1)` to every bits/dim (also to the SGU toy's
  continuous data, as the paper's Table 1 magnitudes show); "density" adds only what
  the change of variables and 8-bit dequantization call for."""
  centered = exp.config.data.centered
  if exp.config.eval.nll.offset == "score_sde":
    return 7.0 - (0.0 if centered else -1.0)
  return likelihood.bpd_offset(centered, dequantized=exp.is_image)


# ----------------------------------------------------------------------------
# Restorations (SGU Sec. 4.3): inpainting and reconstruction of given images.
# ----------------------------------------------------------------------------
#: the restorations `restore` runs; each has its `config.eval.<kind>` block (`settings.Restoration`).
RESTORATIONS = ("inpaint", "reconstruct")


def _restorer(exp: Experiment, kind: str) -> Callable:
  """jit(params, rng, images (B, ...), known mask) -> restored images in [0, 1], the batch split
  over the mesh; built once per (kind, mesh), so every model reuses one compilation."""
  m = mesh_lib.current()
  key = (kind, m)
  if key not in exp.compiled:
    cfg = exp.config
    s, r, centered = cfg.eval.sampler, cfg.eval.reconstruct, cfg.data.centered
    score_apply = model_score_apply(exp)

    def run(params, rng, x01, known):
      score_fn = lambda x, t: score_apply(params, x, t)
      x = data_lib.scaler(x01, centered)
      if kind == "inpaint":
        y = sampling.inpaint(rng, exp.process, score_fn, x, known, n_steps=s.n_steps, snr=s.snr,
                             predictor=s.predictor, corrector=s.corrector, eps=s.eps)
      else:
        y = sampling.reconstruct(rng, exp.process, score_fn, x, r.t_start, n_steps=r.n_steps or None,
                                 predictor=s.predictor, corrector="none", eps=s.eps)
      return jnp.clip(data_lib.inverse_scaler(y, centered), 0.0, 1.0)

    exp.compiled[key] = jax.jit(run, out_shardings=mesh_lib.batch(m))
  return exp.compiled[key]


def restore(exp: Experiment, params, kind: str, x01: np.ndarray, rng: jax.Array, *,
            known: Optional[np.ndarray] = None, batch_size: Optional[int] = None) -> np.ndarray:
  """Images x01 (N, H, W, C) in [0, 1] restored by the model, in [0, 1] (SGU Sec. 4.3).

  kind "inpaint": `sampling.inpaint` keeps the pixels where `known` (broadcasting to one
  image, e.g. (H, W, 1)) is 1 and fills the others, with config.eval.sampler's PC settings;
  "reconstruct": `sampling.reconstruct` from config.eval.reconstruct.t_start.  Batches of
  `batch_size` (default config.eval.sample_batch_size; the last one padded by repetition,
  so a run compiles once) are split over the mesh, batch i with fold_in(rng, i).
  """
  if kind not in RESTORATIONS:
    raise ValueError(f"kind must be one of {RESTORATIONS}, got {kind!r}")
  x01 = np.asarray(x01, np.float32)
  n = len(x01)
  if n == 0:
    return np.zeros((0,) + exp.example_shape, np.float32)
  m = mesh_lib.current()
  batch_size = min(batch_size or exp.config.eval.sample_batch_size, n)
  run = _restorer(exp, kind)
  known = np.ones(exp.example_shape, np.float32) if known is None else np.asarray(known, np.float32)
  placed, known = mesh_lib.put(params), mesh_lib.put(known, mesh_lib.replicated(m))
  out = []
  progress = console.Progress(kind, n, "images")
  for i, idx, real in _chunks(n, batch_size, mesh_lib.round_up(batch_size, m)):
    y = run(placed, mesh_lib.put(jax.random.fold_in(rng, i), mesh_lib.replicated(m)),
            mesh_lib.put(x01[idx], mesh_lib.batch(m)), known)
    out.append(mesh_lib.to_host(y)[:real])
    progress.update(int(idx[real - 1]) + 1)
  return np.concatenate(out)
