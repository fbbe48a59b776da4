"""Stable Diffusion (Flax, diffusers layout) behind the library's model call signature.

    comp = load("/data/sd-v1-4-flax")                 # SDComponents
    table = prompt_table(comp, prompts)                # (P + 1, L, D), row P = ""
    module = build_module(comp, num_prompts=len(prompts))
    params = model_params(comp, table)                 # {"unet": ..., "prompts": ...}
    eps = module.apply({"params": params}, z, time, labels, train=False)

The latent diffusion model of Rombach et al. (2022): images x in [0, 1] are
encoded by the VAE to z = scaling_factor * E(2x - 1) (NHWC, `encode_images`),
and the UNet predicts eps(z_t, t, c) with c the CLIP text encoder's last hidden
state of the prompt, attended to by every transformer block's cross-attention
(`attn2`).  `SDUNet` adapts the diffusers UNet to the library's DDPM call
`apply(variables, x, time, labels, train=..., rngs=...)`:

  * x is NHWC latents; the diffusers Flax UNet takes and returns NCHW, so the
    transposition happens here and only here;
  * time = i / num_train_timesteps (the library's DDPM time input), so the
    UNet's timestep is time * num_train_timesteps (i, possibly fractional);
  * labels are prompt ids in [0, P]; id P (and labels=None) is the null prompt
    "" of classifier-free guidance.  The prompt embeddings are a cached
    (P + 1, L, D) table in the params (`"prompts"/"embeddings"`), looked up by
    label under `stop_gradient`: the text encoder never trains, and the table
    never gets a gradient (`trainable_mask` also marks it frozen).

`trainable_mask` picks the UNet leaves that the erasing methods train:
"cross_attn" (every `attn2`: CORE, ESD-x), "cross_attn_kv" (attn2's to_k /
to_v: Concept Ablation), "non_cross_attn" (ESD-u, EraseDiff) or "all".

Weights.  `load` reads a local diffusers-format directory (`unet/`, `vae/`,
`text_encoder/`, `tokenizer/`, `scheduler/`) through the libraries' own
`from_pretrained(model_dir, subfolder=...)`; nothing is downloaded.  Flax
weights of SD v1.4 exist on the Hugging Face hub in the `flax` (float32) and `bf16`
revisions of `CompVis/stable-diffusion-v1-4` (e.g. `huggingface-cli download
CompVis/stable-diffusion-v1-4 --revision flax --local-dir sd-v1-4-flax`; the former
`runwayml/stable-diffusion-v1-5` repository is gone from the hub).  PyTorch weights (a
diffusers directory, or one original-layout `.safetensors` / `.ckpt` such as SD v1.5's or
UnlearnCanvas' fine-tuned model) are converted once to such a directory by
`python -m unlearn_jax.convert` (`.safetensors` without torch); `load(..., from_pt=True)`
(diffusers' own conversion) also works with torch installed.  Parameters are cast to `param_dtype` (float32
by default, so a bf16 checkpoint trains with float32 master weights); `dtype`
is the compute dtype of the modules.

`write_tiny` writes a tiny random Stable Diffusion in the same layout (with a
real `CLIPTokenizer` on a tiny BPE vocabulary) for tests and CPU demos;
`fit_tiny_vae` then trains its VAE on a set of images (reconstruction MSE + a
small KL, Adam) and saves it over vae/ with scaling_factor = 1 / the latents'
std, so that decoded samples are images, not noise.

Layouts in diffusers 0.39 (checked against its source):
  * `FlaxUNet2DConditionModel.__call__(sample NCHW, timesteps (B,),
    encoder_hidden_states (B, L, D), ..., train=False)` -> `.sample` NCHW.
  * `FlaxAutoencoderKL.encode(images NCHW in [-1, 1])` -> `.latent_dist`
    whose mean / sample are **NHWC**; `decode(latents)` takes NHWC (it only
    transposes when the last axis is not `latent_channels`) and returns NCHW.
  * The Flax transformer blocks' GroupNorm has 32 groups, so every UNet
    `block_out_channels` entry must be a multiple of 32.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Any, Dict, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from unlearn_jax import checkpoints
from unlearn_jax import console
from unlearn_jax import lazy
from unlearn_jax import mesh as mesh_lib
from unlearn_jax.errors import UserError, check_choice

diffusers = lazy.load("diffusers", extra="sd")            # ~10 s with transformers: imported on first use
transformers = lazy.load("transformers", extra="sd")
tokenization_clip = lazy.load("transformers.models.clip.tokenization_clip", extra="sd")

__all__ = [
    "SDComponents", "SDUNet", "TRAINABLE", "build_module", "decode_latents", "encode_images",
    "encode_prompts", "fit_tiny_vae", "keep_vae_init", "load", "model_params", "prompt_table",
    "trainable_mask", "unet_config_of", "vae_fit_record", "vae_loss", "vae_reconstruct", "write_tiny",
]

#: SD v1.x noise schedule (scheduler/scheduler_config.json of v1.4 / v1.5).
SD_V1_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                  "num_train_timesteps": 1000}
#: the parts `load` needs, each a sub-folder of the model directory.
_PARTS = ("unet", "vae", "text_encoder", "tokenizer")
_EXPECTED = ("a diffusers-format Stable Diffusion directory with unet/, vae/, text_encoder/ and "
             "tokenizer/ holding Flax weights (the hub's 'flax' or 'bf16' revision; convert PyTorch "
             "weights once with python -m unlearn_jax.convert)")


def _quiet():
  """Silences diffusers' per-module Flax deprecation warning and transformers' notices."""
  diffusers.utils.logging.set_verbosity_error()
  transformers.utils.logging.set_verbosity_error()


def _random_params(init_fn, seed: int):
  """Random params shaped like `init_fn`'s output, drawn with numpy (no XLA compile).

  Compiling a module's `init` costs 5-15 s on CPU even for a tiny SD (XLA
  unrolls every parameter's threefry), so `write_tiny` takes only the shapes
  (`jax.eval_shape`) and draws initialisers like flax's defaults itself: LeCun-style
  normal kernels (std 1/sqrt(fan_in), fan_in = prod(shape[:-1])), zero biases, unit
  norm scales, N(0, 0.02) embeddings.
  """
  shapes = jax.eval_shape(init_fn)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = _key_names(path)[-1]
    shape = tuple(leaf.shape)
    if name == "bias":
      value = np.zeros(shape)
    elif name == "scale":
      value = np.ones(shape)
    elif name == "kernel":
      value = rng.standard_normal(shape) / np.sqrt(max(1, int(np.prod(shape[:-1]))))
    else:
      value = 0.02 * rng.standard_normal(shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, flax.core.unfreeze(shapes))


# --------------------------------------------------------------------------- tiny model

_TINY_WORDS = ("a", "an", "the", "of", "in", "image", "photo", "style", "painting", "dogs",
               "cats", "van", "gogh", "monet", "picasso", "nudity", "nude", "church",
               "garbage", "truck", "parachute", "airplane", "tench", "golf", "ball")


def _write_tiny_tokenizer(path: str, max_length: int):
  """A real transformers.CLIPTokenizer on a tiny byte-level BPE vocabulary, saved to `path`.

  CLIP's vocabulary is the 256 byte-unicode symbols, the same with "</w>"
  (end of word), the merge results, then <|startoftext|>, <|endoftext|>.  The
  merges here build each of `_TINY_WORDS` letter by letter, so those words are
  single tokens and every other word falls back to (valid) byte symbols.
  """

  symbols = list(tokenization_clip.bytes_to_unicode().values())
  vocab = symbols + [s + "</w>" for s in symbols]
  merges = []
  # longest words first, so that a short word's merge (e.g. "a n</w>") does not
  # pre-empt a longer word's chain ("v a", "va n</w>").
  for word in sorted(_TINY_WORDS, key=len, reverse=True):
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    while len(pieces) > 1:
      merges.append((pieces[0], pieces[1]))
      pieces = [pieces[0] + pieces[1]] + pieces[2:]
  merges = list(dict.fromkeys(merges))
  for a, b in merges:
    if a + b not in vocab:
      vocab.append(a + b)
  vocab += ["<|startoftext|>", "<|endoftext|>"]
  tmp = os.path.join(path, "_src")
  os.makedirs(tmp, exist_ok=True)
  vocab_file, merges_file = os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt")
  with open(vocab_file, "w", encoding="utf-8") as f:
    json.dump({tok: i for i, tok in enumerate(vocab)}, f, ensure_ascii=False)
  with open(merges_file, "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
  tokenizer = transformers.CLIPTokenizer(vocab_file, merges_file, model_max_length=max_length,
                            pad_token="<|endoftext|>")
  tokenizer.save_pretrained(path)
  for name in (vocab_file, merges_file):
    os.remove(name)
  os.rmdir(tmp)
  return tokenizer


def check_tiny_image_size(image_size: int, block_out_channels: Sequence[int] = (32, 64),
                          vae_block_out_channels: Sequence[int] = (16, 32), field: str = "image_size") -> None:
  """UserError(field) unless `write_tiny`'s model of these widths takes `image_size` pixels: a
  multiple of the VAE factor 2**(len(vae_block_out_channels) - 1) times the UNet's down-sampling."""
  factor = 2 ** (len(tuple(vae_block_out_channels)) - 1)
  unet = 2 ** (len(tuple(block_out_channels)) - 1)
  if image_size % (factor * unet):
    raise UserError(field, image_size, f"expected a multiple of the VAE factor {factor} times the UNet's {unet}")


def write_tiny(model_dir: str, *, seed: int = 0, image_size: int = 32,
               block_out_channels: Sequence[int] = (32, 64), cross_attention_dim: int = 32,
               text_layers: int = 2, max_length: int = 16,
               vae_block_out_channels: Sequence[int] = (16, 32)) -> str:
  """Writes a tiny random-init Stable Diffusion in diffusers layout; returns `model_dir`.

  unet/ (diffusers.FlaxUNet2DConditionModel: CrossAttnDownBlock2D + DownBlock2D, one
  layer per block, 2 heads), vae/ (diffusers.FlaxAutoencoderKL, latent_channels 4,
  factor 2**(len(vae_block_out_channels) - 1), sample_size = image_size),
  text_encoder/ (transformers.FlaxCLIPTextModel, hidden size = cross_attention_dim,
  `text_layers` layers, max_position_embeddings = max_length), tokenizer/ (a
  transformers.CLIPTokenizer on a tiny BPE vocabulary, model_max_length = max_length),
  scheduler/ (SD v1.x's schedule) and model_index.json, each written by the
  libraries' own `save_pretrained` where one exists.  Takes seconds on CPU.
  `block_out_channels` entries must be multiples of 32 (the Flax transformer
  blocks' GroupNorm has 32 groups).
  """
  _quiet()

  block_out_channels = tuple(int(c) for c in block_out_channels)
  vae_block_out_channels = tuple(int(c) for c in vae_block_out_channels)
  if any(c % 32 for c in block_out_channels):
    raise UserError("block_out_channels", block_out_channels,
                    "expected multiples of 32 (the Flax UNet's GroupNorm has 32 groups)")
  check_tiny_image_size(image_size, block_out_channels, vae_block_out_channels)
  factor = 2 ** (len(vae_block_out_channels) - 1)
  os.makedirs(model_dir, exist_ok=True)
  rng = jax.random.PRNGKey(0)  # only traced, for the shapes

  tokenizer = _write_tiny_tokenizer(os.path.join(model_dir, "tokenizer"), max_length)

  n = len(block_out_channels)
  unet = diffusers.FlaxUNet2DConditionModel(
      sample_size=image_size // factor, in_channels=4, out_channels=4,
      down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
      up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
      block_out_channels=block_out_channels, layers_per_block=1, attention_head_dim=2,
      cross_attention_dim=cross_attention_dim)
  unet.save_pretrained(os.path.join(model_dir, "unet"),
                       params=_random_params(lambda: unet.init_weights(rng), seed))

  groups = min(8, min(vae_block_out_channels))
  vae = diffusers.FlaxAutoencoderKL(
      in_channels=3, out_channels=3, latent_channels=4,
      down_block_types=("DownEncoderBlock2D",) * len(vae_block_out_channels),
      up_block_types=("UpDecoderBlock2D",) * len(vae_block_out_channels),
      block_out_channels=vae_block_out_channels, layers_per_block=1,
      norm_num_groups=groups, sample_size=image_size)
  vae.save_pretrained(os.path.join(model_dir, "vae"),
                      params=_random_params(lambda: vae.init_weights(rng), seed + 1))

  text_config = transformers.CLIPTextConfig(
      vocab_size=len(tokenizer), hidden_size=cross_attention_dim,
      intermediate_size=2 * cross_attention_dim, projection_dim=cross_attention_dim,
      num_hidden_layers=text_layers, num_attention_heads=2, max_position_embeddings=max_length,
      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
      pad_token_id=tokenizer.pad_token_id)
  text = transformers.FlaxCLIPTextModel(text_config, _do_init=False)
  text_params = _random_params(lambda: text.init_weights(rng, (1, max_length)), seed + 2)
  text.save_pretrained(os.path.join(model_dir, "text_encoder"), params=text_params)

  os.makedirs(os.path.join(model_dir, "scheduler"), exist_ok=True)
  with open(os.path.join(model_dir, "scheduler", "scheduler_config.json"), "w") as f:
    json.dump({"_class_name": "PNDMScheduler", "_diffusers_version": diffusers.__version__,
               **SD_V1_SCHEDULE, "clip_sample": False, "set_alpha_to_one": False,
               "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None}, f, indent=2)
  with open(os.path.join(model_dir, "model_index.json"), "w") as f:
    json.dump({"_class_name": "FlaxStableDiffusionPipeline",
               "_diffusers_version": diffusers.__version__,
               "feature_extractor": [None, None], "safety_checker": [None, None],
               "scheduler": ["diffusers", "FlaxPNDMScheduler"],
               "text_encoder": ["transformers", "FlaxCLIPTextModel"],
               "tokenizer": ["transformers", "CLIPTokenizer"],
               "unet": ["diffusers", "FlaxUNet2DConditionModel"],
               "vae": ["diffusers", "FlaxAutoencoderKL"]}, f, indent=2)
  return model_dir


# --------------------------------------------------------------------------- loading

@dataclasses.dataclass
class SDComponents:
  """The loaded parts of a Stable Diffusion directory (modules + their params)."""
  unet: Any                 # diffusers.FlaxUNet2DConditionModel
  unet_params: Any
  vae: Any                  # diffusers.FlaxAutoencoderKL
  vae_params: Any
  text_encoder: Any         # transformers.FlaxCLIPTextModel (params passed explicitly)
  text_params: Any
  tokenizer: Any            # transformers.CLIPTokenizer
  scaling_factor: float     # vae.config.scaling_factor (0.18215 for SD v1)
  schedule: dict            # beta_start, beta_end, beta_schedule, num_train_timesteps
  image_size: int           # vae.config.sample_size
  model_dir: str
  _jitted: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

  @property
  def vae_factor(self) -> int:
    """The VAE's down-sampling factor, 2**(len(block_out_channels) - 1) (8 for SD)."""
    return 2 ** (len(self.vae.config.block_out_channels) - 1)

  @property
  def latent_channels(self) -> int:
    return int(self.vae.config.latent_channels)

  def latent_shape(self, image_size: Optional[int] = None) -> Tuple[int, int, int]:
    """(h, w, c) of the latents of square `image_size` images (default: the VAE's)."""
    size = int(self.image_size if image_size is None else image_size)
    if size <= 0 or size % self.vae_factor:
      raise UserError("config.data.image_size", size,
                      f"expected a positive multiple of the VAE factor {self.vae_factor}")
    return (size // self.vae_factor, size // self.vae_factor, self.latent_channels)


def _has_weights(path: str, names: Sequence[str]) -> bool:
  return any(os.path.isfile(os.path.join(path, name)) for name in names)


def _check_dir(model_dir: str, from_pt: bool):
  if not os.path.isdir(model_dir):
    raise UserError("config.sd.model_dir", model_dir, _EXPECTED + "; the directory does not exist")
  missing = [p for p in _PARTS if not os.path.isdir(os.path.join(model_dir, p))]
  if missing:
    raise UserError("config.sd.model_dir", model_dir,
                    _EXPECTED + "; missing " + ", ".join(p + "/" for p in missing))
  if from_pt:
    weights = {"unet": ("diffusion_pytorch_model.bin", "diffusion_pytorch_model.safetensors"),
               "vae": ("diffusion_pytorch_model.bin", "diffusion_pytorch_model.safetensors"),
               "text_encoder": ("pytorch_model.bin", "model.safetensors",
                                "pytorch_model.bin.index.json", "model.safetensors.index.json")}
  else:
    weights = {"unet": ("diffusion_flax_model.msgpack",), "vae": ("diffusion_flax_model.msgpack",),
               "text_encoder": ("flax_model.msgpack", "flax_model.msgpack.index.json")}
  weights["tokenizer"] = ("vocab.json",)
  for part, names in weights.items():
    if not _has_weights(os.path.join(model_dir, part), names):
      raise UserError("config.sd.model_dir", model_dir,
                      f"{_EXPECTED}; {part}/ has none of {', '.join(names)}")


def _cast(tree, dtype):
  """Floating leaves of `tree` cast to `dtype` (a plain nested dict)."""
  def cast(a):
    a = jnp.asarray(a)
    return a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a
  return jax.tree_util.tree_map(cast, flax.core.unfreeze(tree))


def _read_schedule(model_dir: str) -> dict:
  path = os.path.join(model_dir, "scheduler", "scheduler_config.json")
  config = {}
  if os.path.isfile(path):
    with open(path) as f:
      config = json.load(f)
  return {key: type(default)(config.get(key, default)) if config.get(key) is not None else default
          for key, default in SD_V1_SCHEDULE.items()}


def load(model_dir: str, *, dtype=jnp.float32, from_pt: bool = False,
         param_dtype=jnp.float32) -> SDComponents:
  """Loads a local diffusers-format Stable Diffusion directory (see the module docstring).

  Args:
    model_dir: the directory with unet/, vae/, text_encoder/, tokenizer/ and
      optionally scheduler/scheduler_config.json (else SD v1's schedule).
    dtype: compute dtype of the three modules (e.g. jnp.bfloat16).
    from_pt: convert PyTorch weights (needs torch installed).
    param_dtype: the floating parameters are cast to this dtype.
  Raises:
    UserError("config.sd.model_dir", ...) when the directory or a part is missing.
  """
  model_dir = os.fspath(model_dir)
  _check_dir(model_dir, from_pt)
  _quiet()

  unet, unet_params = diffusers.FlaxUNet2DConditionModel.from_pretrained(
      model_dir, subfolder="unet", dtype=dtype, from_pt=from_pt)
  vae, vae_params = diffusers.FlaxAutoencoderKL.from_pretrained(
      model_dir, subfolder="vae", dtype=dtype, from_pt=from_pt)
  text_encoder, text_params = transformers.FlaxCLIPTextModel.from_pretrained(
      model_dir, subfolder="text_encoder", dtype=dtype, from_pt=from_pt, _do_init=False,
      local_files_only=True)
  tokenizer = transformers.CLIPTokenizer.from_pretrained(model_dir, subfolder="tokenizer",
                                            local_files_only=True)
  return SDComponents(
      unet=unet, unet_params=_cast(unet_params, param_dtype),
      vae=vae, vae_params=_cast(vae_params, param_dtype),
      text_encoder=text_encoder, text_params=_cast(text_params, param_dtype),
      tokenizer=tokenizer, scaling_factor=float(vae.config.scaling_factor),
      schedule=_read_schedule(model_dir), image_size=int(vae.config.sample_size),
      model_dir=model_dir)


# --------------------------------------------------------------------------- text and images

def encode_prompts(comp: SDComponents, prompts: Sequence[str], batch_size: int = 32) -> np.ndarray:
  """(P, L, D) float32 CLIP last hidden states of `prompts` (L = model_max_length).

  As the SD pipelines: padded to max_length with <|endoftext|>, truncated, no
  attention mask.  Batches of `batch_size`, split over the mesh (`mesh.map_batches`), the
  last one padded so one compile serves all.
  """
  prompts = list(prompts)
  tok = comp.tokenizer
  if not prompts:
    return np.zeros((0, tok.model_max_length, comp.text_encoder.config.hidden_size), np.float32)
  ids = token_ids(comp, prompts)
  if "text" not in comp._jitted:
    comp._jitted["text"] = jax.jit(
        lambda params, ids: comp.text_encoder(ids, params=params, train=False)[0])
  return np.asarray(mesh_lib.map_batches(comp._jitted["text"], comp.text_params, ids, batch_size,
                                         label="prompt encoding", unit="prompts"), np.float32)


def token_ids(comp: SDComponents, prompts: Sequence[str]) -> np.ndarray:
  """(P, L) int32 token ids of `prompts` as `encode_prompts` tokenizes them."""
  tok = comp.tokenizer
  return tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
             return_tensors="np").input_ids.astype(np.int32)


def token_embedding(text_params) -> jax.Array:
  """The (V, D) input token-embedding table of a FlaxCLIPTextModel's params."""
  return text_params["text_model"]["embeddings"]["token_embedding"]["embedding"]


def encode_with_token(text_encoder, text_params, ids_BxL: jax.Array, token_id: int, vector_D: jax.Array) -> jax.Array:
  """(B, L, D) last hidden states of the token ids with token `token_id`'s input embedding
  replaced by `vector_D` (textual inversion's new token; differentiable in the vector)."""
  return encode_with_tokens(text_encoder, text_params, ids_BxL, jnp.asarray([token_id]), vector_D[None])


def encode_with_tokens(text_encoder, text_params, ids_BxL: jax.Array, token_ids_K: jax.Array,
                       vectors_KxD: jax.Array) -> jax.Array:
  """(B, L, D) last hidden states of the token ids with the input embeddings of the K distinct
  tokens `token_ids_K` replaced by `vectors_KxD` (differentiable in the vectors)."""
  table = token_embedding(text_params).at[token_ids_K].set(vectors_KxD.astype(jnp.float32))
  emb = {**text_params["text_model"]["embeddings"], "token_embedding": {"embedding": table}}
  params = {**text_params, "text_model": {**text_params["text_model"], "embeddings": emb}}
  return text_encoder(ids_BxL, params=params, train=False)[0]


def nearest_tokens(table_VxD: np.ndarray, vectors_KxD, exclude: Sequence[int] = ()) -> np.ndarray:
  """(K,) ids of the rows of the input token-embedding table (`token_embedding`, as a host
  array: the caller keeps one copy) nearest (L2) to each vector, never one of `exclude` (the
  special tokens): a continuous prompt projected to a real one."""
  table = np.asarray(table_VxD)
  v = np.asarray(vectors_KxD, table.dtype)
  d2 = (v ** 2).sum(1)[:, None] - 2.0 * v @ table.T + (table ** 2).sum(1)[None, :]
  d2[:, list(exclude)] = np.inf
  return np.argmin(d2, axis=1).astype(np.int32)


def prompt_table(comp: SDComponents, prompts: Sequence[str], batch_size: int = 32) -> np.ndarray:
  """(len(prompts) + 1, L, D) embeddings; the last (null) row is the empty prompt ""."""
  return encode_prompts(comp, list(prompts) + [""], batch_size)


def encode_images(comp: SDComponents, images01: np.ndarray, *, batch_size: int = 8,
                  sample: bool = False, rng: Optional[jax.Array] = None) -> np.ndarray:
  """NHWC float32 latents scaling_factor * E(2x - 1) of NHWC images in [0, 1].

  The mean of the VAE posterior, or a sample of it when `sample` (then `rng`
  is required; batch k uses fold_in(rng, k)).  The encoder is jitted once per
  (batch_size, image shape), its batches split over the mesh: the last one is padded.
  """
  images01 = np.asarray(images01, np.float32)
  if images01.ndim != 4 or images01.shape[-1] != comp.vae.config.in_channels:
    raise ValueError(f"expected NHWC images with {comp.vae.config.in_channels} channels, "
                     f"got shape {images01.shape}")
  if sample and rng is None:
    raise ValueError("encode_images(sample=True) needs an rng")
  vae = comp.vae
  key = ("vae_encode", sample)
  if key not in comp._jitted:
    def encode(params, x01, rng):
      x = jnp.transpose(2.0 * x01 - 1.0, (0, 3, 1, 2))           # NHWC -> NCHW input
      dist = vae.apply({"params": params}, x, method=vae.encode).latent_dist   # NHWC
      z = dist.sample(rng) if sample else dist.mean
      return (z * comp.scaling_factor).astype(jnp.float32)
    comp._jitted[key] = jax.jit(encode)
  rng = jax.random.PRNGKey(0) if rng is None else rng
  return mesh_lib.map_batches(comp._jitted[key], comp.vae_params, images01, batch_size, rng=rng,
                              label="VAE encode")


def decode_latents(vae, vae_params, latents: jax.Array, scaling_factor: float) -> jax.Array:
  """NHWC images in [0, 1] from NHWC latents scaled by `scaling_factor` (pure, jit-able)."""
  z = latents.astype(jnp.float32) / scaling_factor
  images = vae.apply({"params": vae_params}, z, method=vae.decode).sample   # NCHW
  images = jnp.transpose(images, (0, 2, 3, 1)).astype(jnp.float32)
  return jnp.clip((images + 1.0) / 2.0, 0.0, 1.0)


# --------------------------------------------------------------------------- fitting the tiny VAE

#: vae/<this>: the fit's record, written last (the fit's done-marker).
VAE_FIT_RECORD = "fit.json"
#: <model_dir>/<this>/: the random VAE a fit starts from (a killed fit restarts from it).
VAE_INIT = "vae_init"
_FIT_FNS: Dict[Any, Any] = {}


def vae_fit_record(model_dir: str) -> Optional[dict]:
  """The record `fit_tiny_vae` left in `model_dir`/vae/, or None (never fitted / fit unfinished)."""
  path = os.path.join(model_dir, "vae", VAE_FIT_RECORD)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def keep_vae_init(model_dir: str) -> str:
  """Copies vae/ to vae_init/ once (atomically: a copy, then a rename); returns its path.

  Call it before anything replaces a file of vae/: the fit always starts from
  vae_init/, so a fit killed half way through replacing vae/'s files restarts
  from the same random weights and reaches the same result.
  """
  init = os.path.join(model_dir, VAE_INIT)
  if not os.path.isdir(init):
    if vae_fit_record(model_dir) is not None:
      raise ValueError(f"{model_dir}/vae is already fitted; its random init is gone")
    tmp = checkpoints.tmp_path(init)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(os.path.join(model_dir, "vae"), tmp)
    checkpoints.publish_dir(tmp, init)
  return init


def vae_reconstruct(vae, params, images01: jax.Array, key: Optional[jax.Array] = None):
  """(D(z) NHWC in [-1, 1], unclipped; the posterior q(z|x)) of NHWC images in [0, 1].

  z is the posterior mean of E(2x - 1), or a reparametrised sample of it when
  `key` is given (what the fit decodes).  Pure, jit-able (close over `vae`).
  """
  x = jnp.transpose(2.0 * images01 - 1.0, (0, 3, 1, 2))                    # NCHW input
  dist = vae.apply({"params": params}, x, method=vae.encode).latent_dist   # NHWC
  z = dist.mean if key is None else dist.sample(key)
  out = vae.apply({"params": params}, z, method=vae.decode).sample         # NCHW
  return jnp.transpose(out, (0, 2, 3, 1)), dist


def vae_loss(vae, params, images01: jax.Array, key: jax.Array, kl_weight: float):
  """(loss, (rec, kl)) with loss = rec + kl_weight * kl, the Gaussian-likelihood VAE objective
  (Kingma & Welling 2014, Eq. 10; the KL-regularised autoencoder of Rombach et al. 2022, Sec. 3):

    rec = mean over pixels of (D(z) - x)^2, x = 2 x01 - 1, z ~ q(z|x) (reparametrised),
    kl  = KL(q(z|x) || N(0, I)) per latent element, averaged over the batch.

  (SD's own VAE was trained with L1 + LPIPS + a patch GAN and a KL weight of 1e-6 on
  summed terms; plain MSE is enough for the synthetic tree's flat textures.)
  """
  out, dist = vae_reconstruct(vae, params, images01, key)
  rec = jnp.mean(jnp.square(out - (2.0 * images01 - 1.0)))
  kl = jnp.mean(dist.kl()) / float(np.prod(dist.mean.shape[1:]))
  return rec + kl_weight * kl, (rec, kl)


def _fit_fns(vae, lr: float, kl_weight: float, batch_size: int):
  """(optax Adam, jitted train step, jitted per-image stats), cached per (VAE config, settings)."""
  key = (json.dumps(dict(vae.config), sort_keys=True, default=str), float(lr), float(kl_weight),
         int(batch_size))
  if key not in _FIT_FNS:
    opt = optax.adam(lr)

    def step(params, opt_state, images01, rng):
      k_batch, k_z = jax.random.split(rng)
      batch = images01[jax.random.permutation(k_batch, images01.shape[0])[:batch_size]]
      (loss, (rec, kl)), grads = jax.value_and_grad(
          lambda p: vae_loss(vae, p, batch, k_z, kl_weight), has_aux=True)(params)
      updates, opt_state = opt.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, {"loss": loss, "rec": rec, "kl": kl}

    def stats(params, images01):
      out, dist = vae_reconstruct(vae, params, images01)
      rec01 = jnp.clip((out + 1.0) / 2.0, 0.0, 1.0)           # as `decode_latents`
      return jnp.mean(jnp.square(rec01 - images01), axis=(1, 2, 3)), dist.mean

    _FIT_FNS[key] = (opt, jax.jit(step), jax.jit(stats))
  return _FIT_FNS[key]


def _vae_stats(stats, params, images01: np.ndarray, batch_size: int = 16):
  """(per-image MSE in [0, 1] units (N,), posterior means (N, h, w, c)) in padded batches."""
  n = len(images01)
  batch_size = max(1, min(batch_size, n))
  mse, means = [], []
  for start in range(0, n, batch_size):
    chunk = images01[start:start + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
    e, m = stats(params, jnp.asarray(chunk))
    mse.append(np.asarray(e)[:batch_size - pad])
    means.append(np.asarray(m)[:batch_size - pad])
  return np.concatenate(mse), np.concatenate(means)


def fit_tiny_vae(model_dir: str, images01: np.ndarray, *, steps: int, lr: float = 3e-3,
                 batch_size: int = 8, kl_weight: float = 1e-3, seed: int = 0) -> dict:
  """Trains the VAE of `model_dir` (a `write_tiny` model) on `images01`; saves it over vae/.

  `steps` Adam steps (learning rate `lr`) on `vae_loss` with random batches of
  `batch_size` of the NHWC [0, 1] images, from the random weights kept in
  vae_init/ (`keep_vae_init`).  Then the latent scale: SD's convention is that
  `scaling_factor` * E(x) has unit variance (SD v1's 0.18215 = 1 / the std of its
  VAE's latents), so scaling_factor = 1 / std of the posterior means of `images01`
  (the latents `encode_images` caches) over every element; it is written into
  vae/config.json with the weights (`save_pretrained`, so `load` reads them).

  Resumable and never half-written: the fitted VAE is saved to vae.fit.tmp/, its
  files replace vae/'s one by one (each `os.replace` is atomic), and the record
  vae/fit.json is written last; with the record present the fit is skipped
  (returns the record with "skipped": True), without it (a killed fit) it reruns
  from vae_init/ to the same weights.  Returns the record: the settings, the
  per-pixel MSE (in [0, 1] units, on `images01`) of the random and the fitted VAE
  and the images' per-pixel variance (the MSE of predicting their mean), the
  latent mean / std, the new scaling_factor, the loss every steps/10 steps and
  the wall time.  Call it only on a model directory you own (the pipeline: only
  `<workdir>/inputs/tiny_sd`).
  """
  record = vae_fit_record(model_dir)
  if record is not None:
    return dict(record, skipped=True)
  steps, batch_size = int(steps), int(batch_size)
  if steps < 1 or batch_size < 1:
    raise ValueError(f"fit_tiny_vae needs steps >= 1 and batch_size >= 1, got {steps}, {batch_size}")
  _quiet()
  t0 = time.time()
  keep_vae_init(model_dir)
  vae, params = diffusers.FlaxAutoencoderKL.from_pretrained(model_dir, subfolder=VAE_INIT, dtype=jnp.float32)
  params = _cast(params, jnp.float32)
  images01 = np.asarray(images01, np.float32)
  size = int(vae.config.sample_size)
  if images01.ndim != 4 or images01.shape[1:] != (size, size, vae.config.in_channels):
    raise ValueError(f"expected NHWC images of shape (N, {size}, {size}, {vae.config.in_channels}) "
                     f"(the VAE's sample_size), got {images01.shape}")
  opt, step, stats = _fit_fns(vae, lr, kl_weight, min(batch_size, len(images01)))
  mse_random = float(np.mean(_vae_stats(stats, params, images01)[0]))
  opt_state = opt.init(params)
  x_all = jnp.asarray(images01)
  base = jax.random.PRNGKey(seed)
  every = max(1, steps // 10)
  history = []
  progress = console.Progress("tiny VAE fit", steps, "steps")
  for i in range(steps):
    params, opt_state, logs = step(params, opt_state, x_all, jax.random.fold_in(base, i))
    if (i + 1) % every == 0 or i + 1 == steps:
      history.append({"step": i + 1, **{k: float(v) for k, v in logs.items()}})
      progress.update(i + 1, f"loss {history[-1]['loss']:.4g}")
  mse, means = _vae_stats(stats, params, images01)
  std = float(np.std(means))
  if not np.isfinite(std) or std <= 0:
    raise FloatingPointError(f"the fitted VAE's latents have std {std}")
  record = {
      "settings": {"steps": steps, "lr": float(lr), "batch_size": batch_size,
                   "kl_weight": float(kl_weight), "seed": int(seed)},
      "num_images": int(len(images01)), "image_size": size,
      "mse_random": mse_random, "mse": float(np.mean(mse)),
      "data_variance": float(np.mean(np.var(images01, axis=0))),
      "latent_mean": float(np.mean(means)), "latent_std": std,
      "scaling_factor": 1.0 / std, "scaling_factor_before": float(vae.config.scaling_factor),
      "history": history, "wall_time_s": time.time() - t0}
  _save_fitted_vae(model_dir, vae, params, record)
  return record


def _save_fitted_vae(model_dir: str, vae, params, record: dict) -> None:
  """vae/ := the fitted weights, config.json with scaling_factor = record's, then fit.json."""
  tmp = os.path.join(model_dir, "vae.fit.tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  vae.save_pretrained(tmp, params=params)
  config_path = os.path.join(tmp, "config.json")
  with open(config_path) as f:
    config = json.load(f)
  config["scaling_factor"] = record["scaling_factor"]
  with open(config_path, "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  with open(os.path.join(tmp, VAE_FIT_RECORD), "w") as f:
    json.dump(record, f, indent=2)
  target = os.path.join(model_dir, "vae")
  names = sorted(n for n in os.listdir(tmp) if n != VAE_FIT_RECORD) + [VAE_FIT_RECORD]
  for name in names:                                   # the record (done-marker) last
    os.replace(os.path.join(tmp, name), os.path.join(target, name))
  os.rmdir(tmp)


# --------------------------------------------------------------------------- the model

def _hashable(value):
  if isinstance(value, (list, tuple)):
    return tuple(_hashable(v) for v in value)
  if isinstance(value, dict):
    return flax.core.FrozenDict({k: _hashable(v) for k, v in value.items()})
  return value


def _unet_kwargs(unet_config) -> Dict[str, Any]:
  """The constructor fields of diffusers.FlaxUNet2DConditionModel found in `unet_config`."""
  _quiet()
  names = {f.name for f in dataclasses.fields(diffusers.FlaxUNet2DConditionModel)} - {"parent", "name", "dtype"}
  return {k: v for k, v in dict(unet_config).items() if k in names}


def unet_config_of(unet) -> flax.core.FrozenDict:
  """The (hashable) constructor config of a diffusers UNet, for `SDUNet.unet_config`."""
  return _hashable(_unet_kwargs(unet.config))


def unet_config_from(fields: Dict[str, Any]) -> flax.core.FrozenDict:
  """`SDUNet.unet_config` from a dict of FlaxUNet2DConditionModel fields (the others keep the
  class's defaults), e.g. a shape preset with no weights (`unlearn_jax.aot.SD15_UNET`)."""
  return _hashable(_unet_kwargs(fields))


class _PromptTable(nn.Module):
  """The cached (num_prompts + 1, L, D) prompt embeddings (set by `model_params`)."""
  shape: Tuple[int, int, int]

  @nn.compact
  def __call__(self, labels_B: jax.Array) -> jax.Array:
    table = self.param("embeddings", nn.initializers.zeros, self.shape, jnp.float32)
    return jax.lax.stop_gradient(jnp.take(table, labels_B, axis=0))


def _call_unet(unet, sample_BxCxHxW, timesteps_B, context_BxLxD, train):
  return unet(sample_BxCxHxW, timesteps_B, context_BxLxD, return_dict=False, train=train)[0]


class SDUNet(nn.Module):
  """eps(z_t, t, prompt) of a diffusers Flax SD UNet in the library's call signature.

  `apply({"params": params}, x, time, labels=None, train=False, rngs=None, cond_embedding=None)`:
  x NHWC latents (B, h, w, C); time (B,) = i / num_train_timesteps; labels (B,)
  prompt ids in [0, num_prompts], num_prompts (and None) = the null prompt;
  `cond_embedding` (B, L, D), when given, is the text context in place of the table
  rows of `labels` (the condition attacks, `attacks.condition`: a row of the table gives
  the same output as its label).
  Returns the eps prediction, NHWC float32.  `train=True` enables dropout
  (pass rngs={"dropout": key}).  `remat=True` wraps the diffusers UNet in
  `nn.remat` (same outputs and gradients; its activations are recomputed in
  the backward pass instead of being kept from the forward one).
  """
  unet_config: Any            # FrozenDict of diffusers.FlaxUNet2DConditionModel fields (`unet_config_of`)
  num_prompts: int
  text_len: int
  text_dim: int
  num_train_timesteps: int = 1000
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, time_B: jax.Array,
               labels: Optional[jax.Array] = None, train: bool = False,
               cond_embedding: Optional[jax.Array] = None) -> jax.Array:
    B = x_BxHxWxC.shape[0]
    if cond_embedding is not None and labels is not None:
      raise ValueError("cond_embedding replaces the prompt labels: pass one, not both")
    if labels is None:
      labels = jnp.full((B,), self.num_prompts, jnp.int32)
    context_BxLxD = _PromptTable((self.num_prompts + 1, self.text_len, self.text_dim),
                                 name="prompts")(labels.astype(jnp.int32))
    if cond_embedding is not None:
      context_BxLxD = jnp.broadcast_to(cond_embedding, context_BxLxD.shape)
    unet = diffusers.FlaxUNet2DConditionModel(**_unet_kwargs(self.unet_config), dtype=self.dtype,
                                    name="unet")
    sample_BxCxHxW = jnp.transpose(x_BxHxWxC, (0, 3, 1, 2)).astype(self.dtype)
    timesteps_B = jnp.broadcast_to(time_B, (B,)).astype(jnp.float32) * self.num_train_timesteps
    call = _call_unet
    if self.remat:
      # A lifted function rather than nn.remat(diffusers.FlaxUNet2DConditionModel): the
      # lifted subclass's generated __init__ skips diffusers' config registration.
      call = nn.remat(_call_unet, static_argnums=(4,))   # (unet, sample, t, context, train)
    out = call(unet, sample_BxCxHxW, timesteps_B, context_BxLxD.astype(self.dtype), train)
    return jnp.transpose(out, (0, 2, 3, 1)).astype(jnp.float32)


def build_module(comp: SDComponents, num_prompts: int, *, dtype=jnp.float32,
                 remat: bool = False) -> SDUNet:
  """The `SDUNet` of `comp`'s UNet with a table of `num_prompts` + 1 prompts."""
  return SDUNet(unet_config=unet_config_of(comp.unet), num_prompts=int(num_prompts),
                text_len=int(comp.tokenizer.model_max_length),
                text_dim=int(comp.text_encoder.config.hidden_size),
                num_train_timesteps=int(comp.schedule["num_train_timesteps"]),
                dtype=dtype, remat=remat)


def model_params(comp: SDComponents, embeddings: np.ndarray) -> dict:
  """SDUNet params: the loaded UNet params and the (num_prompts + 1, L, D) prompt table."""
  embeddings = np.asarray(embeddings, np.float32)
  if embeddings.ndim != 3:
    raise ValueError(f"expected a (num_prompts + 1, L, D) table, got shape {embeddings.shape}")
  return {"unet": flax.core.unfreeze(comp.unet_params),
          "prompts": {"embeddings": jnp.asarray(embeddings)}}


# --------------------------------------------------------------------------- trainable parts

TRAINABLE = ("all", "cross_attn", "cross_attn_kv", "non_cross_attn")


def _key_names(path) -> Tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _is_trainable(names: Tuple[str, ...], which: str) -> bool:
  if names and names[0] == "prompts":
    return False
  in_attn2 = "attn2" in names
  if which == "all":
    return True
  if which == "cross_attn":
    return in_attn2
  if which == "non_cross_attn":
    return not in_attn2
  # cross_attn_kv: attn2's key / value projections.
  return any(names[i] == "attn2" and names[i + 1] in ("to_k", "to_v")
             for i in range(len(names) - 1))


def trainable_mask(params, which: str):
  """A tree of Python bools shaped like `params` (SDUNet params): True = trains.

  "cross_attn": every UNet leaf under an `attn2` module (the transformer
  blocks' cross-attention; CORE, ESD-x); "cross_attn_kv": only attn2's to_k
  and to_v (Concept Ablation); "non_cross_attn": every UNet leaf outside attn2
  (ESD-u, EraseDiff); "all": every UNet leaf.  The prompt table ("prompts")
  is never trainable.
  """
  check_choice("config.sd.trainable", which, TRAINABLE)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: _is_trainable(_key_names(path), which), params)
