"""Tests of the Flax Stable Diffusion stack on a tiny random SD written to a temp dir.

Everything goes through the real loading code (`from_pretrained` of a local
diffusers-format directory); nothing is downloaded.  Every UNet computation is
jitted once (an eager UNet call costs more than its compile on CPU), and the
latents are non-square so that a wrong NHWC <-> NCHW transposition fails.
"""
from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax.errors import UserError
from unlearn_jax.models import stable_diffusion as sd

#: the tiny UNet's compile dominates this file; run-time is negligible at these
#: shapes, so on CPU compile without XLA's backend optimisation (~35% faster).
_FAST_COMPILE = {"cpu": {"xla_backend_optimization_level": 0}}

PROMPTS = ("A Dogs image in Van Gogh style.", "A Cats image in Monet style.")


@pytest.fixture(scope="module")
def comp(tmp_path_factory):
  model_dir = sd.write_tiny(str(tmp_path_factory.mktemp("tiny_sd")), image_size=16)
  return sd.load(model_dir)


@pytest.fixture(scope="module")
def table(comp):
  return sd.prompt_table(comp, PROMPTS)


@pytest.fixture(scope="module")
def inputs(comp):
  h, w, c = comp.latent_shape()
  x = jax.random.normal(jax.random.PRNGKey(1), (3, h, w // 2, c))   # non-square latents
  time = jnp.array([0.5, 0.5, 0.25])
  labels = jnp.array([0, 1, 2])
  return x, time, labels


def _run_compiled(fn, *args):
  """fn(*args), jitted (compiled with `_FAST_COMPILE` options)."""
  compiled = jax.jit(fn).lower(*args).compile(
      compiler_options=_FAST_COMPILE.get(jax.default_backend()))
  return compiled(*args)


def _output_and_grads(module, params, inputs):
  def loss(params, x, time, labels):
    out = module.apply({"params": params}, x, time, labels)
    return jnp.sum(out ** 2), out
  (_, out), grads = _run_compiled(jax.value_and_grad(loss, has_aux=True), params, *inputs)
  return out, grads


@pytest.fixture(scope="module")
def grads(comp, table, inputs):
  """(output, grads) of sum(out**2) for the plain and the remat module."""
  params = sd.model_params(comp, table)
  return {"plain": _output_and_grads(sd.build_module(comp, len(PROMPTS)), params, inputs),
          "remat": _output_and_grads(sd.build_module(comp, len(PROMPTS), remat=True), params,
                                     inputs)}


def test_load_shapes(comp):
  assert comp.image_size == 16 and comp.vae_factor == 2
  assert comp.latent_shape() == (8, 8, 4)
  assert comp.latent_shape(32) == (16, 16, 4)
  assert comp.scaling_factor == pytest.approx(0.18215)
  assert comp.schedule == {"beta_start": 0.00085, "beta_end": 0.012,
                           "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
  assert comp.unet.config.cross_attention_dim == comp.text_encoder.config.hidden_size == 32
  assert comp.tokenizer.model_max_length == 16
  assert comp.unet_params["conv_in"]["kernel"].shape == (3, 3, 4, 32)
  assert comp.unet_params["conv_in"]["kernel"].dtype == jnp.float32
  with pytest.raises(UserError, match="config.data.image_size"):
    comp.latent_shape(15)


def test_tokenizer_is_real_clip_bpe(comp):
  tok = comp.tokenizer
  assert type(tok).__name__ == "CLIPTokenizer"
  ids = tok(PROMPTS[0], padding="max_length", max_length=tok.model_max_length,
            truncation=True).input_ids
  assert len(ids) == 16 and ids[0] == tok.bos_token_id
  assert tok.unk_token_id not in ids[1:ids.index(tok.eos_token_id)]
  words = tok.tokenize(PROMPTS[0])
  assert {"dogs</w>", "image</w>", "van</w>", "gogh</w>", "style</w>"} <= set(words)
  assert tok.decode(ids, skip_special_tokens=True).strip() == PROMPTS[0].lower().replace(".", " .")


def test_prompt_table(comp, table):
  assert table.shape == (len(PROMPTS) + 1, 16, 32) and table.dtype == np.float32
  np.testing.assert_allclose(table[-1], sd.encode_prompts(comp, [""])[0], atol=1e-5)
  np.testing.assert_allclose(table[:2], sd.encode_prompts(comp, PROMPTS, batch_size=1), atol=1e-5)
  assert np.abs(table[0] - table[1]).max() > 1e-3


def test_sdunet_matches_diffusers_unet(comp, table, inputs):
  module = sd.build_module(comp, len(PROMPTS))
  params = sd.model_params(comp, table)
  x, time, labels = inputs

  def run(params, x, time, labels):
    ours = module.apply({"params": params}, x, time, labels)
    null = module.apply({"params": params}, x, time)
    context = params["prompts"]["embeddings"][labels]
    direct = comp.unet.apply({"params": params["unet"]}, jnp.transpose(x, (0, 3, 1, 2)),
                             time * 1000, context).sample
    return ours, null, jnp.transpose(direct, (0, 2, 3, 1))

  ours, null, direct = _run_compiled(run, params, x, time, labels)
  assert ours.shape == x.shape and ours.dtype == jnp.float32
  np.testing.assert_allclose(ours, direct, rtol=1e-5, atol=1e-5)
  # examples 0 and 1 share x and time but not the prompt; example 2 is the null prompt.
  assert float(jnp.abs(ours[0] - ours[1]).max()) > 1e-4
  np.testing.assert_allclose(null[2], ours[2], rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(null[0] - ours[0]).max()) > 1e-4


def test_gradients(grads):
  _, g = grads["plain"]
  assert set(g) == {"unet", "prompts"}
  assert not np.any(np.asarray(g["prompts"]["embeddings"]))
  assert all(np.all(np.isfinite(a)) for a in jax.tree_util.tree_leaves(g["unet"]))
  assert float(jnp.abs(g["unet"]["conv_in"]["kernel"]).max()) > 0
  attn2 = g["unet"]["down_blocks_0"]["attentions_0"]["transformer_blocks_0"]["attn2"]
  assert float(jnp.abs(attn2["to_k"]["kernel"]).max()) > 0


def test_remat_same_output_and_gradients(grads):
  out, g = grads["plain"]
  out_r, g_r = grads["remat"]
  np.testing.assert_allclose(out_r, out, rtol=1e-5, atol=1e-5)
  assert jax.tree_util.tree_structure(g_r) == jax.tree_util.tree_structure(g)
  for a, b in zip(jax.tree_util.tree_leaves(g_r), jax.tree_util.tree_leaves(g)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * (1 + float(jnp.abs(b).max())))


def _flat(mask):
  return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(mask)}


def test_trainable_mask(comp, table):
  params = sd.model_params(comp, table)
  masks = {which: _flat(sd.trainable_mask(params, which)) for which in sd.TRAINABLE}
  struct = jax.tree_util.tree_structure(sd.trainable_mask(params, "all"))
  assert struct == jax.tree_util.tree_structure(params)
  on = {which: {k for k, v in m.items() if v} for which, m in masks.items()}
  assert all(isinstance(v, bool) for m in masks.values() for v in m.values())
  table_key = "['prompts']['embeddings']"
  assert all(table_key not in s for s in on.values())
  assert on["cross_attn"] and all("'attn2'" in k for k in on["cross_attn"])
  assert on["cross_attn_kv"] and on["cross_attn_kv"] < on["cross_attn"]
  assert all("'to_k'" in k or "'to_v'" in k for k in on["cross_attn_kv"])
  assert not on["cross_attn"] & on["non_cross_attn"]
  assert on["cross_attn"] | on["non_cross_attn"] == on["all"]
  assert on["all"] == set(masks["all"]) - {table_key}
  with pytest.raises(UserError, match="config.sd.trainable"):
    sd.trainable_mask(params, "attn1")


def test_encode_decode_images(comp):
  images = np.random.default_rng(0).uniform(size=(3, 16, 16, 3)).astype(np.float32)
  z = sd.encode_images(comp, images, batch_size=2)
  assert z.shape == (3,) + comp.latent_shape() and z.dtype == np.float32
  assert z.shape[1] == comp.image_size // comp.vae_factor
  z_sampled = sd.encode_images(comp, images, batch_size=2, sample=True, rng=jax.random.PRNGKey(0))
  assert z_sampled.shape == z.shape and not np.allclose(z_sampled, z)
  # diffusers' Flax modules are not hashable: close over them, never pass them as static.
  decode = jax.jit(lambda params, z: sd.decode_latents(comp.vae, params, z, comp.scaling_factor))
  out = decode(comp.vae_params, jnp.asarray(z))
  assert out.shape == images.shape and out.dtype == jnp.float32
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_load_errors(comp, tmp_path):
  with pytest.raises(UserError, match="config.sd.model_dir") as e:
    sd.load(str(tmp_path / "nowhere"))
  assert "does not exist" in str(e.value)
  broken = tmp_path / "no_vae"
  shutil.copytree(comp.model_dir, broken)
  shutil.rmtree(broken / "vae")
  with pytest.raises(UserError, match="config.sd.model_dir") as e:
    sd.load(str(broken))
  assert "vae/" in str(e.value)
  (broken / "text_encoder" / "flax_model.msgpack").unlink()
  shutil.copytree(f"{comp.model_dir}/vae", broken / "vae")
  with pytest.raises(UserError, match="python -m unlearn_jax.convert"):
    sd.load(str(broken))


# --------------------------------------------------------------------------- the fitted tiny VAE

FIT = dict(steps=150, lr=3e-3, batch_size=8, kl_weight=1e-3, seed=0)


@pytest.fixture(scope="module")
def fit_images(tmp_path_factory):
  """The 12 images (4 styles x 3 objects, 16 px) of a synthetic UnlearnCanvas tree."""
  from unlearn_jax import canvas, data as data_lib
  root = str(tmp_path_factory.mktemp("canvas"))
  canvas.write_fake_tree(root, size=16, n_images=1)
  return data_lib.to_float(canvas.load(root, image_size=16, image_indices=(1,)).images)


@pytest.fixture(scope="module")
def fitted(comp, fit_images, tmp_path_factory):
  """(model_dir, record) of a copy of the tiny model whose VAE `fit_tiny_vae` fitted."""
  model_dir = str(tmp_path_factory.mktemp("fitted") / "model")
  shutil.copytree(comp.model_dir, model_dir)
  return model_dir, sd.fit_tiny_vae(model_dir, fit_images, **FIT)


def _reconstruction_mse(comp, images):
  """Per-pixel MSE of decode(encode(x)) through the loaded model (the pipeline's path)."""
  z = sd.encode_images(comp, images, batch_size=len(images))
  decode = jax.jit(lambda params, z: sd.decode_latents(comp.vae, params, z, comp.scaling_factor))
  return float(np.mean((np.asarray(decode(comp.vae_params, jnp.asarray(z))) - images) ** 2)), z


def test_fitted_vae_reconstructs_and_loads(comp, fit_images, fitted):
  model_dir, record = fitted
  assert record["settings"] == FIT and record["num_images"] == 12 and "skipped" not in record
  random_mse, _ = _reconstruction_mse(comp, fit_images)                  # the random VAE, as loaded
  assert record["mse_random"] == pytest.approx(random_mse, rel=1e-4)
  loaded = sd.load(model_dir)                                            # the real loading code
  mse, z = _reconstruction_mse(loaded, fit_images)
  assert mse == pytest.approx(record["mse"], rel=1e-4)                   # reproduces the fit's weights
  assert mse < random_mse / 4 and mse < record["data_variance"]          # better than the mean image too
  # scaling_factor = 1 / std of the posterior means: the cached latents have unit variance.
  assert loaded.scaling_factor == pytest.approx(1.0 / record["latent_std"])
  assert loaded.scaling_factor != pytest.approx(comp.scaling_factor)
  assert float(np.std(z)) == pytest.approx(1.0, abs=1e-3)
  with open(os.path.join(model_dir, "vae", "config.json")) as f:
    assert json.load(f)["scaling_factor"] == record["scaling_factor"]
  assert sorted(os.listdir(os.path.join(model_dir, "vae"))) == [
      "config.json", "diffusion_flax_model.msgpack", sd.VAE_FIT_RECORD]
  assert not os.path.exists(os.path.join(model_dir, "vae.fit.tmp"))


def test_fit_is_skipped_on_rerun(fit_images, fitted):
  model_dir, record = fitted
  weights = os.path.join(model_dir, "vae", "diffusion_flax_model.msgpack")
  before = os.stat(weights).st_mtime_ns
  again = sd.fit_tiny_vae(model_dir, fit_images[:3], **dict(FIT, steps=1))
  assert again.pop("skipped") is True and again == record
  assert os.stat(weights).st_mtime_ns == before


def test_killed_fit_leaves_a_loadable_vae_and_resumes_to_the_same_weights(
    comp, fit_images, fitted, tmp_path, monkeypatch):
  model_dir = str(tmp_path / "model")
  shutil.copytree(comp.model_dir, model_dir)
  weights = os.path.join(model_dir, "vae", "diffusion_flax_model.msgpack")
  random_weights = open(weights, "rb").read()
  real_replace = os.replace

  def killed_at_the_weights(src, dst):
    if str(dst).endswith(".msgpack"):
      raise KeyboardInterrupt("killed")
    return real_replace(src, dst)
  monkeypatch.setattr(os, "replace", killed_at_the_weights)
  with pytest.raises(KeyboardInterrupt):
    sd.fit_tiny_vae(model_dir, fit_images, **FIT)
  monkeypatch.setattr(os, "replace", real_replace)
  assert sd.vae_fit_record(model_dir) is None                 # not marked done
  assert open(weights, "rb").read() == random_weights         # the weights are whole (the old ones)
  sd.load(model_dir)
  record = sd.fit_tiny_vae(model_dir, fit_images, **FIT)     # restarts from vae_init/
  assert record["mse"] == pytest.approx(fitted[1]["mse"], rel=1e-5)
  assert record["scaling_factor"] == pytest.approx(fitted[1]["scaling_factor"], rel=1e-5)
