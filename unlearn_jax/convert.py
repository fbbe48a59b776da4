r"""PyTorch Stable Diffusion weights -> a Flax model directory that `stable_diffusion.load` reads.

    python -m unlearn_jax.convert --src=/data/sd15_canvas_diffusers --out=/data/sd15_canvas
    python -m unlearn_jax.convert --src=/data/v1-5-pruned.safetensors --config_dir=/data/sd-v1-5 \
        --out=/data/sd15_canvas [--dtype=bfloat16] [--ema]

`--src` is either
  * a diffusers-layout directory with PyTorch weights: unet/ and vae/
    `diffusion_pytorch_model.safetensors`, text_encoder/ `model.safetensors` (read with
    the `safetensors` package into numpy: no torch), or the `.bin` pickles of the same
    names (`diffusion_pytorch_model.bin`, `pytorch_model.bin`), plus tokenizer/ and
    scheduler/; each part's config.json comes from the same folder;
  * one file in the original CompVis / LDM layout (`v1-5-pruned.safetensors`, the
    UnlearnCanvas "compvis" release, a fine-tuned `.ckpt`): `model.diffusion_model.*`
    (UNet), `first_stage_model.*` (VAE), `cond_stage_model.transformer.*` (CLIP text
    encoder).  Its names are mapped to diffusers' here (`ldm_to_diffusers`, SD v1
    layout); the architecture -- unet/, vae/, text_encoder/ config.json, tokenizer/ and
    scheduler/ -- comes from `--config_dir`, any diffusers SD v1 directory (the hub's
    `stable-diffusion-v1-5`, PyTorch or Flax revision; its weights are not read).  The
    DDPM schedule buffers (`betas`, `alphas_cumprod`, ...) are dropped; of a file with
    both raw and EMA UNet weights (`model_ema.*`) the raw ones are kept, as diffusers
    does, unless `--ema`.

`.bin` / `.ckpt` files are pickles: they are read with torch (the `convert` extra) and
`torch.load(..., weights_only=True)`, which unpickles tensors and plain containers only;
a file that needs any other object is refused with one line.

The diffusers names become the Flax parameter paths as `from_pt=True` would do it
(diffusers' `rename_key` / `rename_key_and_reshape_tensor` for the UNet and VAE:
`down_blocks.0` -> `down_blocks_0`, conv kernels OIHW -> HWIO, linear kernels transposed,
norm weights -> `scale`; transformers' for the text encoder), but strictly: a tensor that
maps to no parameter, a parameter no tensor fills, or a shape other than the config's is a
`UserError` naming the file and the tensor, never a warning and a random leaf.  Config
fields of the PyTorch classes that diffusers' Flax classes do not implement must hold the
value the Flax code computes with (`_FLAX_FIXED`).  The parameter shapes come from
`jax.eval_shape` of the modules' `init_weights` (nothing is initialised or compiled).

The output -- unet/ and vae/ `diffusion_flax_model.msgpack` + config.json, text_encoder/
`flax_model.msgpack` + config.json (each written by the class's own `save_pretrained`),
tokenizer/, scheduler/ and a Flax model_index.json -- is built in `<out>.tmp<process>`
beside `out` and renamed to `out` when complete; an existing non-empty `out` is refused.
A bad argument ends with one line `error: --<flag>=<value> is not valid: ...` and exit
status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import sys
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from unlearn_jax import checkpoints
from unlearn_jax import lazy
from unlearn_jax.errors import UserError, check_choice

diffusers = lazy.load("diffusers", extra="sd")
transformers = lazy.load("transformers", extra="sd")
diffusers_pt = lazy.load("diffusers.models.modeling_flax_pytorch_utils", extra="sd")
transformers_pt = lazy.load("transformers.modeling_flax_pytorch_utils", extra="sd")
safetensors = lazy.load("safetensors", extra="sd")
torch = lazy.load("torch", extra="convert")      # `.bin` / `.ckpt` pickles only

__all__ = ["DTYPES", "convert", "flax_params", "ldm_to_diffusers", "main", "read_state_dict"]

DTYPES = {"float32": np.float32, "bfloat16": jnp.bfloat16}
#: part -> its PyTorch weight files in a diffusers directory, in the order they are looked for.
_PT_FILES = {"unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
             "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
             "text_encoder": ("model.safetensors", "pytorch_model.bin")}
_PICKLES = (".bin", ".ckpt", ".pt", ".pth")
_SRC = ("a diffusers-layout directory (unet/, vae/, text_encoder/, tokenizer/) with PyTorch "
        "weights, or one .safetensors / .ckpt file in the original SD layout")

#: Config fields of diffusers' PyTorch UNet / VAE that the Flax classes lack, with the value the
#: Flax code computes with (diffusers 0.39); a config setting another value is refused.
_FLAX_FIXED = {
    "unet": {"center_input_sample": False, "downsample_padding": 1, "mid_block_scale_factor": 1,
             "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5,
             "reverse_transformer_layers_per_block": None, "encoder_hid_dim": None,
             "encoder_hid_dim_type": None, "dual_cross_attention": False, "class_embed_type": None,
             "num_class_embeds": None, "resnet_time_scale_shift": "default",
             "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0,
             "time_embedding_type": "positional", "time_embedding_dim": None,
             "time_embedding_act_fn": None, "timestep_post_act": None, "time_cond_proj_dim": None,
             "conv_in_kernel": 3, "conv_out_kernel": 3, "attention_type": "default",
             "class_embeddings_concat": False, "mid_block_only_cross_attention": None,
             "cross_attention_norm": None},
    "vae": {"use_quant_conv": True, "use_post_quant_conv": True, "mid_block_add_attention": True,
            "shift_factor": None, "latents_mean": None, "latents_std": None},
}

# --------------------------------------------------------------------------- reading tensors


def _torch_to_numpy(name: str, value, path: str) -> np.ndarray:
  if not isinstance(value, torch.Tensor):
    raise UserError("--src", path, f"entry {name!r} is a {type(value).__name__}, not a tensor")
  value = value.detach().cpu()
  return (value.float() if value.dtype == torch.bfloat16 else value).numpy()


def _read_pickle(path: str) -> Dict[str, np.ndarray]:
  """A torch pickle's state dict (a Lightning `.ckpt`'s "state_dict" entry) as numpy arrays."""
  try:
    lazy.require(torch)
  except ImportError:
    raise UserError("--src", path, "a PyTorch pickle: reading it needs torch, pip install -e "
                    "\".[convert]\" (a .safetensors file needs no torch)") from None
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    why = next((l for l in lines if "Unsupported global" in l), lines[0] if lines else "")
    raise UserError("--src", path, "holds pickled objects besides tensors, which are never unpickled "
                    f"here (torch.load weights_only=True: {why[:200]})") from None
  if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
    state = state["state_dict"]
  if not isinstance(state, Mapping):
    raise UserError("--src", path, f"holds a {type(state).__name__}, expected a state dict of tensors")
  return {k: _torch_to_numpy(k, v, path) for k, v in state.items()}


def _read_safetensors(path: str) -> Dict[str, np.ndarray]:
  try:
    with safetensors.safe_open(path, framework="numpy") as f:
      return {k: f.get_tensor(k) for k in f.keys()}
  except (safetensors.SafetensorError, OSError) as e:
    raise UserError("--src", path, f"expected a .safetensors file ({str(e)[:200]})") from None


def read_state_dict(path: str) -> Dict[str, np.ndarray]:
  """name -> numpy array of every tensor in `path`: `.safetensors` without torch (bfloat16 stays
  bfloat16), `.bin` / `.ckpt` / `.pt` / `.pth` through `torch.load(weights_only=True)`."""
  ext = os.path.splitext(path)[1].lower()
  if ext == ".safetensors":
    return _read_safetensors(path)
  if ext in _PICKLES:
    return _read_pickle(path)
  raise UserError("--src", path, f"expected a .safetensors or one of {', '.join(_PICKLES)} file")


# --------------------------------------------------------------------------- names -> Flax params

Key = Tuple[str, ...]


def _diffusers_key(name: str, value: np.ndarray, expected: Mapping[Key, object]):
  """(Flax key, array) of a diffusers PyTorch tensor, as diffusers' `from_pt=True` renames it."""
  return diffusers_pt.rename_key_and_reshape_tensor(tuple(diffusers_pt.rename_key(name).split(".")), value,
                                                    expected)


def _transformers_key(name: str, value: np.ndarray, expected: Mapping[Key, object]):
  """(Flax key, array) of a transformers CLIPTextModel tensor (layers stay "layers", "0")."""
  return transformers_pt.rename_key_and_reshape_tensor(tuple(name.split(".")), value, expected,
                                                       "text_model")


def flax_params(state: Mapping[str, np.ndarray], expected: Mapping[Key, object],
                to_flax: Callable, source: str, origin: Optional[Mapping[str, str]] = None) -> dict:
  """Nested Flax params from PyTorch-named `state`, every parameter filled exactly once.

  Args:
    state: PyTorch name -> array.
    expected: flattened Flax key -> ShapeDtypeStruct (the module's `init_weights` shapes).
    to_flax: (name, array, expected) -> (Flax key, array): the renaming.
    source: the file, named in errors.
    origin: name -> the name in the file, where `state` was renamed (the LDM layout).
  Raises:
    UserError("--src", source, ...) naming the tensor that maps to no parameter, to an already
    filled one, or has another shape, or the parameters no tensor fills.
  """
  out, filled_by = {}, {}
  for name, value in state.items():
    shown = repr(name) if origin is None else f"{origin[name]!r} (diffusers {name!r})"
    try:
      key, value = to_flax(name, value, expected)
    except AssertionError:       # diffusers' renaming asserts the VAE attention kernels' shape
      raise UserError("--src", source, f"tensor {shown} has shape {tuple(np.shape(value))}, which "
                      "is not its parameter's shape in the config") from None
    if key not in expected:
      raise UserError("--src", source, f"tensor {shown} maps to no parameter of the model "
                      f"({'/'.join(key)}); another model's weights or config?")
    if key in filled_by:
      raise UserError("--src", source, f"tensors {filled_by[key]} and {shown} map to the same "
                      f"parameter {'/'.join(key)}")
    want = tuple(expected[key].shape)
    if tuple(value.shape) != want:
      raise UserError("--src", source, f"tensor {shown} has shape {tuple(value.shape)} as "
                      f"{'/'.join(key)}, the config needs {want}")
    out[key], filled_by[key] = np.ascontiguousarray(value), shown
  missing = sorted("/".join(k) for k in expected if k not in out)
  if missing:
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    raise UserError("--src", source, f"no tensor for the parameter(s) {', '.join(missing[:3])}{more}")
  return traverse_util.unflatten_dict(out)


# --------------------------------------------------------------------------- the LDM layout

_LDM_PREFIX = {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
               "text_encoder": "cond_stage_model.transformer."}
#: tensors of an LDM checkpoint that are no model parameter: the DDPM schedule buffers, the
#: EMA bookkeeping, CLIP's position ids, a VAE training loss (LPIPS, discriminator).
_LDM_DROPPED = re.compile(
    r"(betas|alphas_cumprod(_prev)?|sqrt_(recip(m1)?_)?alphas_cumprod|sqrt_one_minus_alphas_cumprod|"
    r"log_one_minus_alphas_cumprod|posterior_(variance|log_variance_clipped|mean_coef[12])|"
    r"logvar|lvlb_weights|scale_factor|model_ema\.(decay|num_updates)|first_stage_model\.loss\..*|"
    r"cond_stage_model\.transformer\.(text_model\.)?embeddings\.position_ids)")
_EMA_PREFIX = "model_ema.diffusion_model"

_UNET_FIXED = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
               "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out"}
_UNET_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_VAE_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _unet_resnet(sub: str) -> str:
  head, _, leaf = sub.rpartition(".")
  return f"{_UNET_RESNET.get(head, head)}.{leaf}"


def _ldm_unet_name(name: str, layers_per_block: int) -> Optional[str]:
  """The diffusers UNet2DConditionModel name of an LDM UNet tensor (prefix removed), or None.

  input_blocks.0.0 is conv_in; then each down block is `layers_per_block` (resnet .0,
  attention .1) entries and one downsampler (.0.op); middle_block is resnet, attention,
  resnet; each up block is `layers_per_block` + 1 (resnet .0, attention .1) entries, the
  last with the upsampler (.1.conv without attention, .2.conv with).
  """
  per = layers_per_block + 1
  m = re.fullmatch(r"(time_embed\.[02]|input_blocks\.0\.0|out\.[02])\.(weight|bias)", name)
  if m:
    return f"{_UNET_FIXED[m[1]]}.{m[2]}"
  m = re.fullmatch(r"input_blocks\.([1-9]\d*)\.([01])\.(.+)", name)
  if m:
    block, layer = divmod(int(m[1]) - 1, per)
    if layer == layers_per_block:
      op = re.fullmatch(r"op\.(weight|bias)", m[3])
      return f"down_blocks.{block}.downsamplers.0.conv.{op[1]}" if op and m[2] == "0" else None
    if m[2] == "0":
      return f"down_blocks.{block}.resnets.{layer}.{_unet_resnet(m[3])}"
    return f"down_blocks.{block}.attentions.{layer}.{m[3]}"
  m = re.fullmatch(r"middle_block\.([012])\.(.+)", name)
  if m:
    if m[1] == "1":
      return f"mid_block.attentions.0.{m[2]}"
    return f"mid_block.resnets.{int(m[1]) // 2}.{_unet_resnet(m[2])}"
  m = re.fullmatch(r"output_blocks\.(\d+)\.([012])\.(.+)", name)
  if m:
    block, layer = divmod(int(m[1]), per)
    if m[3].startswith("conv.") and m[2] != "0":
      return f"up_blocks.{block}.upsamplers.0.{m[3]}" if layer == layers_per_block else None
    if m[2] == "0":
      return f"up_blocks.{block}.resnets.{layer}.{_unet_resnet(m[3])}"
    return f"up_blocks.{block}.attentions.{layer}.{m[3]}" if m[2] == "1" else None
  return None


def _ldm_vae_name(name: str, num_blocks: int) -> Optional[str]:
  """The diffusers AutoencoderKL name of an LDM VAE tensor (prefix removed), or None.

  The decoder's `up.i` is diffusers' `up_blocks[num_blocks - 1 - i]` (LDM counts from the
  lowest resolution); `nin_shortcut` is `conv_shortcut`; the mid attention's 1x1 convs
  q, k, v, proj_out are the linear to_q, to_k, to_v, to_out.0 (squeezed by `_ldm_vae_value`).
  """
  m = re.fullmatch(r"(encoder|decoder)\.norm_out\.(weight|bias)", name)
  if m:
    return f"{m[1]}.conv_norm_out.{m[2]}"
  if re.fullmatch(r"((encoder|decoder)\.conv_(in|out)|quant_conv|post_quant_conv)\.(weight|bias)", name):
    return name
  m = re.fullmatch(r"(encoder\.down|decoder\.up)\.(\d+)\.(block\.(\d+)|downsample|upsample)\.(.+)", name)
  if m:
    coder, kind = m[1].split(".")
    index = int(m[2]) if kind == "down" else num_blocks - 1 - int(m[2])
    if index < 0:
      return None
    where = f"{coder}.{kind}_blocks.{index}"
    if m[4] is not None:
      return f"{where}.resnets.{m[4]}.{m[5].replace('nin_shortcut.', 'conv_shortcut.')}"
    if m[3] == ("downsample" if kind == "down" else "upsample") and m[5].startswith("conv."):
      return f"{where}.{m[3]}rs.0.{m[5]}"
    return None
  m = re.fullmatch(r"(encoder|decoder)\.mid\.block_([12])\.(.+)", name)
  if m:
    return f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}.{m[3].replace('nin_shortcut.', 'conv_shortcut.')}"
  m = re.fullmatch(r"(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)", name)
  if m:
    return f"{m[1]}.mid_block.attentions.0.{_VAE_ATTENTION[m[2]]}.{m[3]}"
  return None


def _ldm_vae_value(name: str, value: np.ndarray) -> np.ndarray:
  """A mid-attention 1x1 conv weight (C, C, 1, 1) as the linear weight (C, C)."""
  if re.search(r"attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$", name) and \
      value.ndim == 4 and value.shape[2:] == (1, 1):
    return value[:, :, 0, 0]
  return value


def _ldm_text_name(name: str) -> str:
  """transformers' CLIPTextModel name (older checkpoints lack the `text_model.` level)."""
  return name if name.startswith("text_model.") else "text_model." + name


def _ema_name(name: str) -> str:
  """The EMA copy's name of an LDM UNet tensor: LitEma drops the dots."""
  return _EMA_PREFIX + name[len(_LDM_PREFIX["unet"]):].replace(".", "")


def ldm_to_diffusers(state: Mapping[str, np.ndarray], layers_per_block: int, vae_blocks: int,
                     source: str, ema: bool = False):
  """Splits an original-SD (LDM) state dict into the diffusers-named unet / vae / text_encoder.

  Args:
    state: the file's name -> array.
    layers_per_block: the UNet config's (2 for SD v1).
    vae_blocks: len(the VAE config's block_out_channels) (4 for SD v1).
    source: the file, named in errors.
    ema: take the UNet from its EMA copy (`model_ema.*`).
  Returns:
    ({part: {diffusers name: array}}, {part: {diffusers name: the file's name}}).
  Raises:
    UserError("--src", ...) for a tensor of no part, a name with no diffusers counterpart, or
    `ema` without EMA weights.
  """
  has_ema = any(k.startswith(_EMA_PREFIX) for k in state)
  if ema and not has_ema:
    raise UserError("--ema", True, f"{source} has no EMA weights (model_ema.*)")
  rename = {"unet": lambda n: _ldm_unet_name(n, layers_per_block),
            "vae": lambda n: _ldm_vae_name(n, vae_blocks), "text_encoder": _ldm_text_name}
  parts = {p: {} for p in _LDM_PREFIX}
  origin = {p: {} for p in _LDM_PREFIX}
  for name, value in state.items():
    if _LDM_DROPPED.fullmatch(name) or name.startswith(_EMA_PREFIX):
      continue
    part = next((p for p, prefix in _LDM_PREFIX.items() if name.startswith(prefix)), None)
    if part is None:
      raise UserError("--src", source, f"tensor {name!r} belongs to none of the UNet (model.diffusion_model.), "
                      "VAE (first_stage_model.) and CLIP text encoder (cond_stage_model.transformer.) "
                      "of the SD v1 layout")
    new = rename[part](name[len(_LDM_PREFIX[part]):])
    if new is None:
      raise UserError("--src", source, f"tensor {name!r} has no counterpart in diffusers' SD v1 layout")
    if part == "unet" and ema:
      if _ema_name(name) not in state:
        raise UserError("--src", source, f"tensor {name!r} has no EMA copy {_ema_name(name)!r}")
      value = state[_ema_name(name)]
    parts[part][new] = _ldm_vae_value(new, value) if part == "vae" else value
    origin[part][new] = name
  return parts, origin


# --------------------------------------------------------------------------- modules and configs


def _read_json(path: str, field: str, value: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(field, value, f"expected a readable {path} ({type(e).__name__})") from None


def _check_flax_implements(part: str, config: Mapping, path: str, field: str, value: str):
  for key, fixed in _FLAX_FIXED.get(part, {}).items():
    if key in config and config[key] != fixed:
      raise UserError(field, value, f"{path} sets {key}={config[key]!r}; diffusers' Flax classes "
                      f"only compute with {key}={fixed!r}")


def _module(part: str, folder: str, field: str, value: str, dtype):
  """(Flax module, flattened expected shapes) of `part` built from `<folder>/config.json`."""
  path = os.path.join(folder, "config.json")
  config = _read_json(path, field, value)
  _check_flax_implements(part, config, path, field, value)
  rng = jax.random.PRNGKey(0)                     # only traced: shapes, no values
  if part == "text_encoder":
    text_config = transformers.CLIPTextConfig.from_dict(config)
    module = transformers.FlaxCLIPTextModel(text_config, _do_init=False, dtype=dtype)
    shapes = jax.eval_shape(lambda: module.init_weights(rng, (1, text_config.max_position_embeddings)))
  else:
    cls = diffusers.FlaxUNet2DConditionModel if part == "unet" else diffusers.FlaxAutoencoderKL
    module = cls.from_config(config, dtype=dtype)
    shapes = jax.eval_shape(module.init_weights, rng)
  return module, traverse_util.flatten_dict(shapes)


def _cast(params: dict, dtype) -> dict:
  return jax.tree_util.tree_map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                                params)


def _check_folder(folder: str, required: Sequence[str], field: str, value: str):
  missing = [n for n in required if not os.path.isfile(os.path.join(folder, n))]
  if missing:
    raise UserError(field, value, f"{folder} has no {', '.join(missing)}")


def _model_index(out: str):
  """model_index.json of a Flax SD pipeline (what diffusers' FlaxStableDiffusionPipeline reads)."""
  with open(os.path.join(out, "model_index.json"), "w") as f:
    json.dump({"_class_name": "FlaxStableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
               "feature_extractor": [None, None], "safety_checker": [None, None],
               "scheduler": ["diffusers", "FlaxPNDMScheduler"],
               "text_encoder": ["transformers", "FlaxCLIPTextModel"],
               "tokenizer": ["transformers", "CLIPTokenizer"],
               "unet": ["diffusers", "FlaxUNet2DConditionModel"],
               "vae": ["diffusers", "FlaxAutoencoderKL"]}, f, indent=2)


# --------------------------------------------------------------------------- conversion


def _pt_file(src: str, part: str) -> str:
  for name in _PT_FILES[part]:
    path = os.path.join(src, part, name)
    if os.path.isfile(path):
      return path
  raise UserError("--src", src, f"{_SRC}; {part}/ has none of {', '.join(_PT_FILES[part])}")


def _check_args(src: Optional[str], out: Optional[str], config_dir: Optional[str], dtype: str,
                ema: bool):
  check_choice("--dtype", dtype, tuple(DTYPES))
  if not src:
    raise UserError("--src", src, f"expected {_SRC}")
  if not os.path.exists(src):
    raise UserError("--src", src, f"expected {_SRC}; no such file or directory")
  if not out:
    raise UserError("--out", out, "expected the directory to write the Flax model to")
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise UserError("--out", out, "expected a new or empty directory (nothing is overwritten); it exists "
                    + ("and is not empty" if os.path.isdir(out) else "as a file"))
  if os.path.isfile(src):
    if not config_dir:
      raise UserError("--config_dir", config_dir, "a single-file checkpoint needs the configs of a "
                      "diffusers SD v1 directory (unet/, vae/, text_encoder/ config.json, tokenizer/)")
  else:
    if config_dir:
      raise UserError("--config_dir", config_dir, "only for a single-file --src; a diffusers directory "
                      "brings its own configs")
    if ema:
      raise UserError("--ema", ema, "only for a single-file --src with EMA weights (model_ema.*)")
  if config_dir and not os.path.isdir(config_dir):
    raise UserError("--config_dir", config_dir, "expected a diffusers SD v1 directory; no such directory")


def _convert_into(tmp: str, src: str, config_dir: Optional[str], dtype, ema: bool,
                  progress: Callable[[str], None]):
  """Writes the converted model into the fresh directory `tmp` (every input checked first)."""
  single = os.path.isfile(src)
  root, field = (config_dir, "--config_dir") if single else (src, "--src")
  _check_folder(os.path.join(root, "tokenizer"), ("vocab.json", "merges.txt"), field, root)
  sources = dict.fromkeys(_PT_FILES, src) if single else {p: _pt_file(src, p) for p in _PT_FILES}
  modules = {p: _module(p, os.path.join(root, p), field, root, dtype) for p in _PT_FILES}
  if single:
    progress(f"reading {src}")
    states, origins = ldm_to_diffusers(read_state_dict(src), int(modules["unet"][0].layers_per_block),
                                       len(modules["vae"][0].block_out_channels), src, ema=ema)
  for part, (module, expected) in modules.items():
    state, origin = (states.pop(part), origins[part]) if single else (read_state_dict(sources[part]), None)
    to_flax = _transformers_key if part == "text_encoder" else _diffusers_key
    params = _cast(flax_params(state, expected, to_flax, sources[part], origin), dtype)
    del state
    module.save_pretrained(os.path.join(tmp, part), params=params)
    progress(f"{part}: {len(traverse_util.flatten_dict(params))} parameters from {sources[part]}")
    del params
  shutil.copytree(os.path.join(root, "tokenizer"), os.path.join(tmp, "tokenizer"))
  if os.path.isdir(os.path.join(root, "scheduler")):
    shutil.copytree(os.path.join(root, "scheduler"), os.path.join(tmp, "scheduler"))
  _model_index(tmp)


def convert(src: str, out: str, *, config_dir: Optional[str] = None, dtype: str = "float32",
            ema: bool = False, progress: Callable[[str], None] = lambda line: None) -> str:
  """Converts PyTorch SD weights at `src` to a Flax model directory `out`; returns `out`.

  Args:
    src: a diffusers-layout directory with PyTorch weights, or one original-layout file.
    out: the directory to create (absent or empty).
    config_dir: a diffusers SD v1 directory whose configs, tokenizer and scheduler describe a
      single-file `src` (required then, refused otherwise).
    dtype: "float32" or "bfloat16": the stored parameters' dtype.
    ema: a single file's UNet from its EMA weights.
    progress: called with one line per step.
  Raises:
    UserError naming the argument (--src, --out, --config_dir, --dtype, --ema) on bad input;
    nothing is left at `out` then.
  """
  _check_args(src, out, config_dir, dtype, ema)
  diffusers.utils.logging.set_verbosity_error()     # the Flax deprecation notice, per module
  transformers.utils.logging.set_verbosity_error()
  out = os.path.abspath(out)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  tmp = checkpoints.tmp_path(out)
  shutil.rmtree(tmp, ignore_errors=True)             # a killed earlier attempt
  os.makedirs(tmp)
  try:
    _convert_into(tmp, src, config_dir, DTYPES[dtype], ema, progress)
    checkpoints.publish_dir(tmp, out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return out


class _Parser(argparse.ArgumentParser):
  """argparse whose mistakes (an unknown flag) are one `error:` line and exit status 2."""

  def error(self, message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = _Parser(prog="python -m unlearn_jax.convert",
                   description="Convert PyTorch Stable Diffusion weights to a Flax model directory.")
  parser.add_argument("--src", help="diffusers directory with PyTorch weights, or one original-layout "
                      ".safetensors / .ckpt file")
  parser.add_argument("--out", help="the Flax model directory to write (new or empty)")
  parser.add_argument("--config_dir", help="single-file --src: a diffusers SD v1 directory for the configs, "
                      "tokenizer and scheduler")
  parser.add_argument("--dtype", default="float32", help="float32 (default) or bfloat16")
  parser.add_argument("--ema", action="store_true", help="single-file --src: the UNet's EMA weights")
  args = parser.parse_args(argv)
  try:
    out = convert(args.src, args.out, config_dir=args.config_dir, dtype=args.dtype, ema=args.ema,
                  progress=lambda line: print(line, flush=True))
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
