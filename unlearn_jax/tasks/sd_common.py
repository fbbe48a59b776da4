"""What the Stable Diffusion tasks share (`tasks.unlearncanvas`, `tasks.prompts`).

Both put the SD stack into the class-conditional engine the same way (the data are VAE
latents, a condition is a prompt id, the CLIP hidden states of every prompt + the empty
prompt are a frozen table inside the params, `models.stable_diffusion.SDUNet`), so the
pieces here are task-independent:

  * the config checks of `config.sd` and the tiny random model of `model_dir="tiny"`
    (`write_tiny_model`, written once into `<workdir>/inputs/tiny_sd`);
  * the DDPM schedule of the model directory (`ddpm_process`), the checkpoint record
    (`SDModelConfig`), the stage init "base" (`named_params`), the trainable-leaf masks
    (`trainable`, `trainable_mask`) and the stage settings SD rules out (`check_stages`);
  * decoding latents to images (`decode`, the VAE decoder jitted once per batch shape);
  * `sample_from_embeddings`: DDIM (Song et al. 2021, Eq. 12) with classifier-free guidance
    (Ho & Salimans 2022: eps = (1 + w) eps(x, c) - w eps(x, "")) for a batch of prompt
    *embeddings* with one seed and one guidance weight per image, so that prompts outside
    the training table (I2P's, COCO's) and per-prompt seeds / guidance scales (I2P's
    `sd_seed` / `sd_guidance_scale`) are sampled without touching the model's table.  The
    initial noise of image b is N(0, I) drawn from `jax.random.PRNGKey(seed_b)`: the same
    seed gives the same image here on any batch, but not torch's image of that seed.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
from typing import Any, Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import checkpoints
from unlearn_jax import mesh as mesh_lib
from unlearn_jax import sampling
from unlearn_jax import score as score_lib
from unlearn_jax import sde as sde_lib
from unlearn_jax.errors import UserError, check_choice, check_range
from unlearn_jax.models import stable_diffusion as sd

#: the stage init naming the model directory's own weights (the pre-trained theta*).
BASE = "base"
#: models a stage may name besides stages and directories.
NAMED_MODELS = (BASE,)
#: mask kinds computed over the trainable leaves only (the other kinds need every leaf).
SUBSET_MASKS = ("salun", "sfron")
TINY = "tiny"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
CACHE_DIR = "sd_cache"


@dataclasses.dataclass(frozen=True)
class SDModelConfig:
  """What a checkpoint of an SD experiment's model records (`stages.train.meta`)."""
  model_dir: str
  num_prompts: int
  latent_shape: Tuple[int, ...]
  trainable: str
  dtype: str
  remat: bool


#: the optional extra with Stable Diffusion's model code (diffusers' Flax UNet and VAE, the CLIP text encoder).
SD_EXTRA = "sd"
_SD_MODULES = ("diffusers", "transformers")


def check_sd_extra(config) -> None:
  """UserError (before anything is written) when the `sd` extra is not installed."""
  missing = [m for m in _SD_MODULES if importlib.util.find_spec(m) is None]
  if missing:
    raise UserError("config.experiment", config.experiment,
                    f"Stable Diffusion experiments need the optional extra {SD_EXTRA!r} ({', '.join(missing)} "
                    f"not installed): pip install -e \".[{SD_EXTRA}]\"")


def check_sd_fields(config) -> None:
  """The `config.sd` choices every SD task reads (full field names in the message)."""
  sdc = config.sd
  check_choice("config.sd.dtype", sdc.dtype, tuple(DTYPES))
  check_choice("config.sd.trainable", sdc.trainable, sd.TRAINABLE)
  check_range("config.sd.encode_batch_size", sdc.encode_batch_size, 1, 1 << 16)


def tiny_model_path(workdir: str) -> str:
  """Where `model_dir="tiny"` is written: `<workdir>/inputs/tiny_sd`."""
  return os.path.join(workdir, "inputs", "tiny_sd")


def tiny_exists(path: str) -> bool:
  return os.path.exists(os.path.join(path, "model_index.json"))


def write_tiny_model(path: str, config, keep_vae_init: bool = False) -> str:
  """Writes the tiny random SD of `config.sd.tiny` to `path` once (a temporary directory,
  then a rename: it exists whole or not at all); returns `path`.  `keep_vae_init` keeps a
  copy of its random VAE (`sd.keep_vae_init`: a model whose VAE a fit will replace)."""
  if tiny_exists(path):
    return path
  tmp = checkpoints.tmp_path(path)
  shutil.rmtree(tmp, ignore_errors=True)
  sd.write_tiny(tmp, seed=config.seed, image_size=config.data.image_size, **dict(config.sd.tiny))
  if keep_vae_init:
    sd.keep_vae_init(tmp)
  if not tiny_exists(path):                       # a partial write of older code
    shutil.rmtree(path, ignore_errors=True)
  checkpoints.publish_dir(tmp, path)              # or another process's, published first
  return path


def plain(tree):
  """Nested plain dicts (the structure a restored checkpoint has)."""
  if hasattr(tree, "items"):
    return {k: plain(v) for k, v in tree.items()}
  return jnp.asarray(tree)


def ddpm_process(comp) -> sde_lib.DDPMSchedule:
  """The discrete noise schedule of the model directory (scheduler_config.json)."""
  sch = comp.schedule
  return sde_lib.DDPMSchedule(N=int(sch["num_train_timesteps"]), beta_start=float(sch["beta_start"]),
                              beta_end=float(sch["beta_end"]), beta_schedule=sch["beta_schedule"])


def model_config(config, num_prompts: int, latent_shape) -> SDModelConfig:
  sdc = config.sd
  return SDModelConfig(model_dir=os.path.abspath(sdc.model_dir), num_prompts=int(num_prompts),
                       latent_shape=tuple(int(v) for v in latent_shape), trainable=sdc.trainable,
                       dtype=sdc.dtype, remat=bool(sdc.remat))


# ----------------------------------------------------------------------------
# The hooks both SD tasks implement the same way (exp.context has comp, base_params, compiled).
# ----------------------------------------------------------------------------
def check_stages(exp) -> None:
  """Stage settings SD rules out: unknown trainable subsets, mask kinds that need every
  leaf, and re-training from scratch."""
  config = exp.config
  for name in config.stage_order:
    st = config.stages[name]
    if st.trainable:
      check_choice(f"config.stages.{name}.trainable", st.trainable, sd.TRAINABLE)
    if st.kind == "mask" and st.method not in SUBSET_MASKS:
      raise UserError(f"config.stages.{name}.method", st.method, "is not available when only some parameters "
                      "train (config.sd.trainable); expected one of " + ", ".join(SUBSET_MASKS))
    if st.kind == "unlearn" and st.init == "scratch":
      raise UserError(f"config.stages.{name}.init", st.init, "a Stable Diffusion experiment starts from "
                      f"{BASE!r} (the model directory) or an earlier stage")


def named_params(exp, name: str):
  """"base": the model directory's UNet with the prompt table (theta*)."""
  if name != BASE:
    raise KeyError(name)
  return exp.context.base_params


def trainable_mask(exp, which: str):
  """The bool tree of the leaves that train under `which` (`models.stable_diffusion.TRAINABLE`)."""
  key = f"trainable_{which}"
  if key not in exp.context.compiled:
    exp.context.compiled[key] = sd.trainable_mask(exp.context.base_params, which)
  return exp.context.compiled[key]


def trainable(exp, st=None):
  """The trainable-leaf mask of a stage: its `trainable`, else "all" for train stages and
  `config.sd.trainable` for the others (and for mask stages, `st=None`)."""
  which = (st.trainable if st is not None else "") or \
      ("all" if st is not None and st.kind == "train" else exp.config.sd.trainable)
  return trainable_mask(exp, which)


def decode(ctx, latents: np.ndarray, batch_size: int = 16) -> np.ndarray:
  """Generated latents -> [0, 1] NHWC images (the VAE decoder, jitted once per batch shape)."""
  comp = ctx.comp
  if "decode" not in ctx.compiled:
    ctx.compiled["decode"] = jax.jit(lambda p, z: sd.decode_latents(comp.vae, p, z, comp.scaling_factor))
  out = mesh_lib.map_batches(ctx.compiled["decode"], comp.vae_params, np.asarray(latents), batch_size,
                             label="VAE decode")
  if out is not None:
    return out
  side = int(np.shape(latents)[1]) * comp.vae_factor if np.ndim(latents) == 4 else comp.image_size
  return np.zeros((0, side, side, comp.vae.config.out_channels), np.float32)


# ----------------------------------------------------------------------------
# Sampling prompts given as embeddings, one seed and guidance weight per image.
# ----------------------------------------------------------------------------
def _embedding_sampler(ctx, batch: int, n_steps: int, eta: float) -> Callable:
  """jit(unet params, (B, L, D) embeddings, (L, D) null, (B,) seeds, (B,) w) -> (B, h, w, c)
  latents; one compile per (batch, steps, eta), cached in ctx.compiled."""
  key = ("embedding_sampler", batch, int(n_steps), float(eta))
  if key not in ctx.compiled:
    comp, process, latent_shape = ctx.comp, ctx.process, tuple(ctx.latent_shape)
    module = sd.build_module(comp, batch, dtype=ctx.dtype, remat=False)

    def sample(unet_params, emb_BxLxD, null_LxD, seeds_B, w_B):
      params = {"unet": unet_params,
                "prompts": {"embeddings": jnp.concatenate([emb_BxLxD, null_LxD[None]], 0)}}
      labels = jnp.arange(batch, dtype=jnp.int32)

      def eps_apply(x, i, lab):
        out = module.apply({"params": params}, x, process.time_input(i), lab)
        return score_lib.to_eps(out, process.marginal_coeffs(i)[1], "eps")

      w = w_B.reshape((batch,) + (1,) * len(latent_shape))
      eps_fn = sampling.guided_eps_fn(eps_apply, labels, batch, w)
      x_init = jax.vmap(lambda s: jax.random.normal(jax.random.PRNGKey(s), latent_shape))(seeds_B)
      loop_rng = jax.random.fold_in(jax.random.PRNGKey(seeds_B[0]), 1)
      return sampling.ddim_sample(loop_rng, process, eps_fn, (batch,) + latent_shape, n_steps=n_steps,
                                  eta=eta, x_init=x_init)

    ctx.compiled[key] = jax.jit(sample)
  return ctx.compiled[key]


def sample_from_embeddings(ctx, unet_params, embeddings: np.ndarray, null: np.ndarray, seeds: Sequence[int],
                           guidance: Sequence[float], *, n_steps: int, eta: float = 0.0,
                           batch_size: int = 8, on_batch: Optional[Callable[[int, np.ndarray], Any]] = None
                           ) -> np.ndarray:
  """(N, h, w, c) latents of N images: image i from `embeddings[i]` (L, D), its own seed and
  guidance weight w_i (SD's guidance scale is 1 + w_i), DDIM with `n_steps` steps.

  `ctx` has comp, process, latent_shape, dtype and compiled (a task context).  Batches of
  `batch_size` (a shorter one padded by repeating its first image), one compile for all.
  `on_batch(k, latents)` is called after batch k (a caller writing chunks as they come).
  With eta = 0 an image depends on its seed, embedding and w only, not on the batch.
  """
  embeddings = np.asarray(embeddings, np.float32)
  n = len(embeddings)
  seeds = np.asarray(seeds, np.int64)
  guidance = np.asarray(guidance, np.float32)
  if len(seeds) != n or len(guidance) != n:
    raise ValueError(f"expected one seed and one guidance weight per embedding ({n}), got "
                     f"{len(seeds)} and {len(guidance)}")
  if n == 0:
    return np.zeros((0,) + tuple(ctx.latent_shape), np.float32)
  chunk = max(1, int(batch_size))
  batch = mesh_lib.round_up(chunk)                # fixed: one compile for every call
  fn = _embedding_sampler(ctx, batch, n_steps, eta)
  m = mesh_lib.current()
  null = mesh_lib.put(np.asarray(null, np.float32), mesh_lib.replicated(m))
  placed = mesh_lib.put(unet_params)
  out = []
  for k, start in enumerate(range(0, n, chunk)):
    idx = np.arange(start, min(start + chunk, n))
    pad = np.concatenate([idx, np.full(batch - len(idx), idx[0])])
    args = mesh_lib.put((embeddings[pad], (seeds[pad] % (1 << 31)).astype(np.uint32), guidance[pad]),
                        mesh_lib.batch(m))
    z = mesh_lib.to_host(fn(placed, args[0], null, *args[1:]))[:len(idx)]
    if on_batch is not None:
      on_batch(k, z)
    out.append(z)
  return np.concatenate(out)
