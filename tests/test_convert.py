"""`unlearn_jax.convert`: PyTorch Stable Diffusion weights -> a Flax directory `stable_diffusion.load` reads.

Tiny random PyTorch models are built with diffusers' and transformers' own PyTorch classes
(UNet2DConditionModel, AutoencoderKL, CLIPTextModel; the sizes of `write_tiny`), every
parameter perturbed so that no norm is the identity and no bias zero, and saved as diffusers
saves them (`save_pretrained`: safetensors, and .bin pickles).  The original-SD (LDM)
single-file layout is written from the same tensors by `_ldm_state`, whose names are checked
against diffusers' own LDM -> diffusers converters (`diffusers.loaders.single_file_utils`,
torch needed), so the file is what the CompVis code saves.  The converted Flax model must
compute what the PyTorch model computes, to 1e-4: the UNet's noise prediction, the VAE's
posterior mean and decoding, the text encoder's last hidden state.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization, traverse_util

torch = pytest.importorskip("torch", reason="building the PyTorch models to convert needs the [convert] extra "
                                            "(pip install -e \".[convert]\": torch)")
import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers.loaders import single_file_utils  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from unlearn_jax import convert  # noqa: E402
from unlearn_jax import lazy  # noqa: E402
from unlearn_jax.errors import UserError  # noqa: E402
from unlearn_jax.models import stable_diffusion as sd  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_TORCH = lazy.load("unlearn_jax_test_no_torch", extra="convert")   # torch as if not installed
LENGTH = 16                                                             # tokens per prompt
UNET_FILE = "diffusion_pytorch_model.safetensors"


def _perturb(model, seed):
  """`model` in eval mode with N(0, 0.05) added to every parameter (norms no longer 1 / 0)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn(p.shape, generator=gen))
  return model.eval()


def _unet(layers_per_block=1, block_out_channels=(32, 64)):
  n = len(block_out_channels)
  return diffusers.UNet2DConditionModel(
      sample_size=8, in_channels=4, out_channels=4,
      down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
      up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
      block_out_channels=block_out_channels, layers_per_block=layers_per_block, attention_head_dim=2,
      cross_attention_dim=32)


def _vae(layers_per_block=1, block_out_channels=(16, 32)):
  n = len(block_out_channels)
  return diffusers.AutoencoderKL(
      in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * n,
      up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=block_out_channels,
      layers_per_block=layers_per_block, norm_num_groups=8, sample_size=16)


def _state(model):
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def pt(tmp_path_factory):
  """The PyTorch models and their diffusers-layout directory (safetensors, as save_pretrained writes)."""
  torch.manual_seed(0)
  root = str(tmp_path_factory.mktemp("pt") / "sd")
  tokenizer = sd._write_tiny_tokenizer(os.path.join(root, "tokenizer"), LENGTH)
  text_config = transformers.CLIPTextConfig(
      vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, projection_dim=32,
      num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=LENGTH,
      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
      pad_token_id=tokenizer.pad_token_id)
  models = types.SimpleNamespace(unet=_perturb(_unet(), 1), vae=_perturb(_vae(), 2),
                                 text=_perturb(transformers.CLIPTextModel(text_config), 3),
                                 tokenizer=tokenizer, dir=root)
  models.unet.save_pretrained(os.path.join(root, "unet"), safe_serialization=True)
  models.vae.save_pretrained(os.path.join(root, "vae"), safe_serialization=True)
  models.text.save_pretrained(os.path.join(root, "text_encoder"), safe_serialization=True)
  diffusers.PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1,
                          set_alpha_to_one=False).save_pretrained(os.path.join(root, "scheduler"))
  return models


@pytest.fixture(scope="module")
def converted(pt, tmp_path_factory):
  """`pt.dir` converted (torch made unavailable to the converter: safetensors need none) and loaded."""
  out = str(tmp_path_factory.mktemp("flax") / "sd")
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(convert, "torch", NO_TORCH)
    assert convert.convert(pt.dir, out) == out
  return sd.load(out)


def _flat(params):
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(params)).items()}


def _assert_same_params(a, b, shift=0.0):
  fa, fb = _flat(a), _flat(b)
  assert sorted(fa) == sorted(fb)
  for key in fa:
    np.testing.assert_array_equal(fa[key], fb[key] + shift, err_msg=str(key))


# --------------------------------------------------------------------------- outputs equal PyTorch's

def test_the_layout_is_what_load_reads(pt, converted):
  out = converted.model_dir
  assert sorted(os.listdir(out)) == ["model_index.json", "scheduler", "text_encoder", "tokenizer", "unet", "vae"]
  assert sorted(os.listdir(os.path.join(out, "unet"))) == ["config.json", "diffusion_flax_model.msgpack"]
  assert sorted(os.listdir(os.path.join(out, "text_encoder"))) == ["config.json", "flax_model.msgpack"]
  assert tuple(converted.unet.config.block_out_channels) == (32, 64)
  assert converted.schedule == sd.SD_V1_SCHEDULE and converted.image_size == 16
  assert converted.scaling_factor == pt.vae.config.scaling_factor
  assert converted.tokenizer("a van gogh").input_ids == pt.tokenizer("a van gogh").input_ids
  assert not [p for p in os.listdir(os.path.dirname(out)) if ".tmp" in p]


def _tanh_geglu(unet):
  """`unet` with its feed-forward GEGLUs on the tanh GELU, as diffusers' Flax GEGLU computes
  (flax's `nn.gelu` default); the PyTorch GEGLU uses the exact (erf) GELU."""
  for module in unet.modules():
    if isinstance(module, diffusers.models.activations.GEGLU):
      module.gelu = lambda gate: torch.nn.functional.gelu(gate, approximate="tanh")
  return unet


def test_unet_predicts_the_same_noise(pt, converted):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
  t = np.array([10, 700], np.int32)
  context = rng.standard_normal((2, LENGTH, 32)).astype(np.float32)
  inputs = (torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(context))
  with torch.no_grad():
    exact = pt.unet(*inputs).sample.numpy()
    want = _tanh_geglu(copy.deepcopy(pt.unet))(*inputs).sample.numpy()
  got = np.asarray(jax.jit(lambda p, x, t, c: converted.unet.apply({"params": p}, x, t, c).sample)(
      converted.unet_params, x, t, context))
  assert np.abs(want).mean() > 0.1
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  # Flax diffusers' own model differs from PyTorch's by the GELU approximation alone (~1e-4 here).
  np.testing.assert_allclose(got, exact, atol=1e-3, rtol=0)
  assert np.abs(got - exact).max() > np.abs(got - want).max()


def test_vae_encodes_and_decodes_the_same(pt, converted):
  rng = np.random.default_rng(1)
  images = rng.uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
  latents = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
  with torch.no_grad():
    mean = pt.vae.encode(torch.from_numpy(images)).latent_dist.mean.numpy()
    decoded = pt.vae.decode(torch.from_numpy(latents)).sample.numpy()
  vae = converted.vae
  got_mean = jax.jit(lambda p, x: vae.apply({"params": p}, x, method=vae.encode).latent_dist.mean)(
      converted.vae_params, images)                                     # NHWC
  got_decoded = jax.jit(lambda p, z: vae.apply({"params": p}, z, method=vae.decode).sample)(
      converted.vae_params, latents.transpose(0, 2, 3, 1))              # NHWC in, NCHW out
  np.testing.assert_allclose(np.asarray(got_mean).transpose(0, 3, 1, 2), mean, atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(got_decoded), decoded, atol=1e-4, rtol=0)


def test_text_encoder_gives_the_same_hidden_states(pt, converted):
  ids = sd.token_ids(converted, ["a photo of dogs in van gogh style", "", "monet"])
  with torch.no_grad():
    want = pt.text(torch.from_numpy(ids.astype(np.int64))).last_hidden_state.numpy()
  got = sd.encode_prompts(converted, ["a photo of dogs in van gogh style", "", "monet"])
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_bin_pickles_convert_through_torch(pt, converted, tmp_path):
  src = tmp_path / "bin"
  shutil.copytree(pt.dir, src)
  for part, model, name in (("vae", pt.vae, UNET_FILE), ("text_encoder", pt.text, "model.safetensors")):
    os.remove(src / part / name)
    model.save_pretrained(str(src / part), safe_serialization=False)
  assert os.path.isfile(src / "text_encoder" / "pytorch_model.bin")
  comp = sd.load(convert.convert(str(src), str(tmp_path / "out")))
  _assert_same_params(comp.vae_params, converted.vae_params)
  _assert_same_params(comp.text_params, converted.text_params)


def test_bin_without_torch_is_one_line(pt, tmp_path, monkeypatch):
  src = tmp_path / "bin"
  shutil.copytree(pt.dir, src)
  os.remove(src / "text_encoder" / "model.safetensors")
  pt.text.save_pretrained(str(src / "text_encoder"), safe_serialization=False)
  monkeypatch.setattr(convert, "torch", NO_TORCH)
  with pytest.raises(UserError, match=r"^--src='.*/text_encoder/pytorch_model\.bin' is not valid: a PyTorch "
                                      r"pickle: reading it needs torch, pip install -e \"\.\[convert\]\"") as e:
    convert.convert(str(src), str(tmp_path / "out"))
  assert "\n" not in str(e.value) and not os.path.exists(tmp_path / "out")


def test_bfloat16_output(pt, tmp_path):
  out = convert.convert(pt.dir, str(tmp_path / "out"), dtype="bfloat16")
  with open(os.path.join(out, "unet", "diffusion_flax_model.msgpack"), "rb") as f:
    leaves = _flat(serialization.msgpack_restore(f.read()))
  assert {v.dtype for v in leaves.values()} == {np.dtype(jnp.bfloat16)}
  comp = sd.load(out)
  assert comp.unet_params["conv_in"]["kernel"].dtype == jnp.float32     # load's param_dtype


# --------------------------------------------------------------------------- the single-file LDM layout

_UNET_TO_LDM = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
_RESNET_TO_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                  "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_ATTN_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _ldm_unet_name(name, layers, attention_up_blocks):
  """The CompVis name of a diffusers UNet tensor (written from the LDM code's module layout)."""
  per = layers + 1
  head, leaf = name.rsplit(".", 1)
  if head in _UNET_TO_LDM:
    return f"{_UNET_TO_LDM[head]}.{leaf}"
  resnet = lambda sub: f"{_RESNET_TO_LDM[sub.rsplit('.', 1)[0]]}.{sub.rsplit('.', 1)[1]}"  # noqa: E731
  m = re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name)
  if m:
    i = 1 + int(m[1]) * per + int(m[3])
    return f"input_blocks.{i}.0.{resnet(m[4])}" if m[2] == "resnets" else f"input_blocks.{i}.1.{m[4]}"
  m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", name)
  if m:
    return f"input_blocks.{1 + int(m[1]) * per + layers}.0.op.{m[2]}"
  m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d)\.(.+)", name)
  if m:
    return f"middle_block.1.{m[3]}" if m[1] == "attentions" else f"middle_block.{2 * int(m[2])}.{resnet(m[3])}"
  m = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name)
  if m:
    i = int(m[1]) * per + int(m[3])
    return f"output_blocks.{i}.0.{resnet(m[4])}" if m[2] == "resnets" else f"output_blocks.{i}.1.{m[4]}"
  m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", name)
  index = 2 if int(m[1]) in attention_up_blocks else 1
  return f"output_blocks.{int(m[1]) * per + layers}.{index}.conv.{m[2]}"


def _ldm_vae_name_and_value(name, value, num_blocks):
  m = re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", name)
  if m:
    return f"{m[1]}.norm_out.{m[2]}", value
  m = re.fullmatch(r"(encoder\.down|decoder\.up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)", name)
  if m:
    i = int(m[2]) if m[1] == "encoder.down" else num_blocks - 1 - int(m[2])
    if m[3] == "resnets":
      return f"{m[1]}.{i}.block.{m[4]}.{m[5].replace('conv_shortcut', 'nin_shortcut')}", value
    return f"{m[1]}.{i}.{m[3][:-2]}.{m[5]}", value
  m = re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)", name)
  if m:
    return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}", value
  m = re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.+)", name)
  if m:                                   # LDM's attention projections are 1x1 convolutions
    return f"{m[1]}.mid.attn_1.{_VAE_ATTN_TO_LDM[m[2]]}.{m[3]}", value[:, :, None, None] if value.ndim == 2 else value
  return name, value


def _ldm_state(unet, vae, text, old_clip_names=False):
  """name -> array of the CompVis single file holding `unet`, `vae` and `text`, with the DDPM
  buffers, the EMA bookkeeping and CLIP's position ids a real file carries."""
  layers = unet.config.layers_per_block
  attention_up = {i for i, t in enumerate(unet.config.up_block_types) if "CrossAttn" in t}
  state = {"model.diffusion_model." + _ldm_unet_name(k, layers, attention_up): v for k, v in _state(unet).items()}
  for k, v in _state(vae).items():
    name, value = _ldm_vae_name_and_value(k, v, len(vae.config.block_out_channels))
    state["first_stage_model." + name] = value
  clip = "cond_stage_model.transformer." + ("" if old_clip_names else "text_model.")
  state.update({clip + k[len("text_model."):]: v for k, v in _state(text).items()})
  state[clip + "embeddings.position_ids"] = np.arange(LENGTH, dtype=np.int64)[None]
  betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float32) ** 2
  state.update(betas=betas, alphas_cumprod=np.cumprod(1 - betas), posterior_mean_coef1=betas,
               **{"model_ema.decay": np.float32(0.9999), "model_ema.num_updates": np.int64(3)})
  return state


def _with_ema(state, shift):
  """`state` plus LitEma's copy of every UNet tensor (name without dots), shifted by `shift`."""
  ema = {"model_ema.diffusion_model" + k[len("model.diffusion_model."):].replace(".", ""): v + shift
         for k, v in state.items() if k.startswith("model.diffusion_model.")}
  return {**state, **ema}


def _check_against_diffusers(state, unet, vae, text):
  """diffusers' own LDM -> diffusers converters give back exactly the PyTorch state dicts."""
  for got, model in ((single_file_utils.convert_ldm_unet_checkpoint(state, unet.config), unet),
                     (single_file_utils.convert_ldm_vae_checkpoint(state, vae.config), vae),
                     (single_file_utils.convert_ldm_clip_checkpoint(state), text)):
    want = _state(model)
    got = {k: v for k, v in got.items() if not k.endswith("position_ids")}
    assert sorted(got) == sorted(want), type(model).__name__
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_ldm_names_against_diffusers_two_layers_three_blocks():
  """A deeper layout (2 layers per block, 3 blocks) than the output tests: the inverse names are
  diffusers', and `convert.ldm_to_diffusers` maps them back to every PyTorch name and tensor."""
  torch.manual_seed(0)
  unet, vae = _unet(2, (32, 32, 64)), _vae(2, (16, 16, 32))
  text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
      vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
      max_position_embeddings=LENGTH))
  state = _ldm_state(unet, vae, text)
  _check_against_diffusers(state, unet, vae, text)
  parts, origin = convert.ldm_to_diffusers(state, 2, 3, "file")
  for part, model in (("unet", unet), ("vae", vae), ("text_encoder", text)):
    want = _state(model)
    assert sorted(parts[part]) == sorted(want), part
    for k in want:
      np.testing.assert_array_equal(parts[part][k], want[k], err_msg=k)
  assert origin["unet"]["up_blocks.0.upsamplers.0.conv.weight"] == "model.diffusion_model.output_blocks.2.1.conv.weight"
  assert origin["unet"]["up_blocks.1.upsamplers.0.conv.weight"] == "model.diffusion_model.output_blocks.5.2.conv.weight"
  assert origin["vae"]["decoder.up_blocks.0.resnets.2.conv1.weight"] == \
      "first_stage_model.decoder.up.2.block.2.conv1.weight"


@pytest.fixture(scope="module")
def single_file(pt, tmp_path_factory):
  """The tiny model as one CompVis-layout .safetensors (with EMA weights = raw + 1)."""
  state = _ldm_state(pt.unet, pt.vae, pt.text)
  _check_against_diffusers(state, pt.unet, pt.vae, pt.text)
  path = str(tmp_path_factory.mktemp("ldm") / "v1-5-tiny.safetensors")
  save_file({k: np.ascontiguousarray(v) for k, v in _with_ema(state, 1.0).items()}, path)
  return path


def test_single_file_converts_to_the_same_params(pt, converted, single_file, tmp_path):
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(convert, "torch", NO_TORCH)                        # a .safetensors needs no torch
    comp = sd.load(convert.convert(single_file, str(tmp_path / "raw"), config_dir=pt.dir))
  _assert_same_params(comp.unet_params, converted.unet_params)
  _assert_same_params(comp.vae_params, converted.vae_params)
  _assert_same_params(comp.text_params, converted.text_params)
  assert os.listdir(os.path.join(comp.model_dir, "tokenizer")) == os.listdir(os.path.join(pt.dir, "tokenizer"))
  ema = sd.load(convert.convert(single_file, str(tmp_path / "ema"), config_dir=pt.dir, ema=True))
  _assert_same_params(ema.unet_params, converted.unet_params, shift=1.0)
  _assert_same_params(ema.vae_params, converted.vae_params)


class _Callback:
  """A pickled object that is not a tensor (as Lightning's callbacks in some .ckpt files)."""


def test_ckpt_through_torch_weights_only(pt, converted, tmp_path):
  state = _ldm_state(pt.unet, pt.vae, pt.text, old_clip_names=True)    # SD v1.4's CLIP names
  tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
  path = str(tmp_path / "model.ckpt")
  torch.save({"state_dict": tensors, "global_step": 10}, path)
  comp = sd.load(convert.convert(path, str(tmp_path / "out"), config_dir=pt.dir))
  _assert_same_params(comp.unet_params, converted.unet_params)
  _assert_same_params(comp.text_params, converted.text_params)
  torch.save({"state_dict": tensors, "callbacks": _Callback()}, path)
  with pytest.raises(UserError, match=r"model\.ckpt' is not valid: holds pickled objects besides tensors, "
                                      r"which are never unpickled here .*_Callback"):
    convert.convert(path, str(tmp_path / "out2"), config_dir=pt.dir)
  assert not os.path.exists(tmp_path / "out2")


# --------------------------------------------------------------------------- strictness

def _edited_dir(pt, tmp_path, part, edit, name=UNET_FILE):
  src = tmp_path / f"edited_{len(os.listdir(tmp_path))}"
  shutil.copytree(pt.dir, src)
  path = src / part / name
  save_file(edit(load_file(str(path))), str(path))
  return str(src)


def test_an_extra_a_missing_or_a_misshaped_tensor_is_an_error(pt, tmp_path):
  extra = _edited_dir(pt, tmp_path, "unet",
                      lambda s: {**s, "down_blocks.9.resnets.0.conv1.weight": s["conv_in.weight"]})
  with pytest.raises(UserError, match=r"^--src='.*/unet/diffusion_pytorch_model\.safetensors' is not valid: "
                                      r"tensor 'down_blocks\.9\.resnets\.0\.conv1\.weight' maps to no parameter"):
    convert.convert(extra, str(tmp_path / "out"))
  missing = _edited_dir(pt, tmp_path, "vae", lambda s: {k: v for k, v in s.items() if k != "encoder.conv_in.bias"})
  with pytest.raises(UserError, match=r"vae/diffusion_pytorch_model\.safetensors' is not valid: no tensor for "
                                      r"the parameter\(s\) encoder/conv_in/bias$"):
    convert.convert(missing, str(tmp_path / "out"))
  twice = _edited_dir(pt, tmp_path, "unet", lambda s: {**s, "down_blocks_0.resnets_0.conv1.weight":
                                                      s["down_blocks.0.resnets.0.conv1.weight"]})
  with pytest.raises(UserError, match=r"tensors '.*' and '.*' map to the same parameter "
                                      r"down_blocks_0/resnets_0/conv1/kernel"):
    convert.convert(twice, str(tmp_path / "out"))
  name = "text_model.encoder.layers.1.mlp.fc1.weight"
  wrong = _edited_dir(pt, tmp_path, "text_encoder", lambda s: {**s, name: s[name][:, :16].copy()},
                      name="model.safetensors")
  with pytest.raises(UserError, match=r"model\.safetensors' is not valid: tensor 'text_model\.encoder\.layers\.1"
                                      r"\.mlp\.fc1\.weight' has shape \(16, 64\) as text_model/encoder/layers/1/"
                                      r"mlp/fc1/kernel, the config needs \(32, 64\)"):
    convert.convert(wrong, str(tmp_path / "out"))
  attention = _edited_dir(pt, tmp_path, "vae", lambda s: {**s, "encoder.mid_block.attentions.0.to_q.weight":
                                                          s["encoder.mid_block.attentions.0.to_q.weight"][:8].copy()})
  with pytest.raises(UserError, match=r"tensor 'encoder\.mid_block\.attentions\.0\.to_q\.weight' has shape \(8, 32\)"):
    convert.convert(attention, str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out")


def test_single_file_names_outside_the_layout_are_errors(pt, tmp_path):
  state = _ldm_state(pt.unet, pt.vae, pt.text)
  for extra, message in (("cond_stage_model.model.ln_final.weight", r"belongs to none of the UNet"),
                         ("model.diffusion_model.input_blocks.1.2.weight", r"has no counterpart in diffusers' SD v1"),
                         ("model.diffusion_model.output_blocks.0.1.conv.weight", r"has no counterpart")):
    path = str(tmp_path / f"bad{len(os.listdir(tmp_path))}.safetensors")
    save_file({**{k: np.ascontiguousarray(v) for k, v in state.items()}, extra: np.zeros(3, np.float32)}, path)
    with pytest.raises(UserError,
                       match=rf"bad\d\.safetensors' is not valid: tensor {re.escape(repr(extra))} {message}"):
      convert.convert(path, str(tmp_path / "out"), config_dir=pt.dir)
  missing = str(tmp_path / "missing.safetensors")
  save_file({k: np.ascontiguousarray(v) for k, v in state.items()
             if k != "model.diffusion_model.middle_block.2.out_layers.3.bias"}, missing)
  with pytest.raises(UserError, match=r"missing\.safetensors' is not valid: no tensor for the parameter\(s\) "
                                      r"mid_block/resnets_1/conv2/bias$"):
    convert.convert(missing, str(tmp_path / "out"), config_dir=pt.dir)
  with pytest.raises(UserError, match=r"^--ema=True is not valid: .*missing\.safetensors has no EMA weights"):
    convert.convert(missing, str(tmp_path / "out"), config_dir=pt.dir, ema=True)


def test_a_config_the_flax_classes_cannot_compute_is_refused(pt, tmp_path):
  src = tmp_path / "gelu"
  shutil.copytree(pt.dir, src)
  with open(src / "unet" / "config.json") as f:
    config = json.load(f)
  with open(src / "unet" / "config.json", "w") as f:
    json.dump({**config, "act_fn": "gelu"}, f)
  with pytest.raises(UserError, match=r"unet/config\.json sets act_fn='gelu'; diffusers' Flax classes only "
                                      r"compute with act_fn='silu'"):
    convert.convert(str(src), str(tmp_path / "out"))


# --------------------------------------------------------------------------- the command line and the output dir

def _main_error(capsys, *argv):
  with pytest.raises(SystemExit) as e:
    convert.main(list(argv))
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
  return err


def test_cli_bad_input_is_one_line_and_status_2(pt, tmp_path, capsys):
  out = str(tmp_path / "out")
  assert "error: --src=None is not valid: expected a diffusers-layout" in _main_error(capsys, f"--out={out}")
  err = _main_error(capsys, f"--src={tmp_path / 'nowhere'}", f"--out={out}")
  assert re.match(r"error: --src='.*/nowhere' is not valid: expected .*; no such file or directory$", err)
  assert "--dtype='float16' is not valid: expected one of float32, bfloat16" in _main_error(
      capsys, f"--src={pt.dir}", f"--out={out}", "--dtype=float16")
  assert "--config_dir=None is not valid: a single-file checkpoint needs" in _main_error(
      capsys, f"--src={pt.dir}/unet/{UNET_FILE}", f"--out={out}")
  assert "unrecognized arguments: --bogus" in _main_error(capsys, f"--src={pt.dir}", "--bogus")
  os.makedirs(out)
  with open(os.path.join(out, "keep.txt"), "w") as f:
    f.write("mine")
  err = _main_error(capsys, f"--src={pt.dir}", f"--out={out}")
  assert re.match(r"error: --out='.*/out' is not valid: expected a new or empty directory \(nothing is "
                  r"overwritten\); it exists and is not empty$", err)
  assert os.listdir(out) == ["keep.txt"] and os.listdir(tmp_path) == ["out"]


def test_cli_runs_as_a_module(pt, tmp_path):
  out = str(tmp_path / "out")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
  ok = subprocess.run([sys.executable, "-m", "unlearn_jax.convert", f"--src={pt.dir}", f"--out={out}"],
                      env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=600)
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert ok.stdout.splitlines()[-1] == f"wrote {out}" and "unet: 208 parameters from" in ok.stdout


def test_a_failure_midway_leaves_no_output(pt, tmp_path, monkeypatch):
  def fail(*args):
    raise OSError("disk full")
  monkeypatch.setattr(convert, "_transformers_key", fail)   # after unet/ and vae/ are written
  with pytest.raises(OSError, match="disk full"):
    convert.convert(pt.dir, str(tmp_path / "out"), progress=print)
  assert os.listdir(tmp_path) == []
  os.makedirs(tmp_path / "empty")                           # an empty directory is filled
  monkeypatch.undo()
  assert os.path.isfile(os.path.join(convert.convert(pt.dir, str(tmp_path / "empty")), "vae", "config.json"))
