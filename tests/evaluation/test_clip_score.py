"""`evaluation.clip_score`: CLIP score and CLIP embedding distance on a tiny random CLIP.

The tiny random FlaxCLIPModel is saved with `save_pretrained` beside a real CLIPTokenizer
(the tiny BPE vocabulary of `models.stable_diffusion`) and a CLIPImageProcessor
config, and read back through `clip_score.load_clip`, as a real checkpoint would be.
"""
from __future__ import annotations

import os
import shutil

import jax
import numpy as np
import pytest

from unlearn_jax import evaluation
from unlearn_jax.errors import UserError
from unlearn_jax.evaluation import clip_score as cs
from unlearn_jax.models import stable_diffusion as sd

_SIZE = 32
_PROMPTS = ["a photo of dogs", "a painting of cats", "the church in van gogh style"]


def _write_tiny_clip(path: str, seed: int = 0) -> str:
  from transformers import CLIPConfig, CLIPImageProcessor, FlaxCLIPModel
  tok = sd._write_tiny_tokenizer(path, max_length=16)
  text = dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
              num_attention_heads=2, max_position_embeddings=16, bos_token_id=tok.bos_token_id,
              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
  vision = dict(image_size=_SIZE, patch_size=8, hidden_size=16, intermediate_size=32,
                num_hidden_layers=1, num_attention_heads=2)
  config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)
  model = FlaxCLIPModel(config, _do_init=False)
  # LeCun-normal kernels (flax's init gives N(0, 0.02) ones, under which the class
  # token drowns the patches and every image has nearly the same embedding).
  params = sd._random_params(
      lambda: model.init_weights(jax.random.PRNGKey(0), model.input_shape), seed)
  model.save_pretrained(path, params=params)
  CLIPImageProcessor(size={"shortest_edge": _SIZE},
                     crop_size={"height": _SIZE, "width": _SIZE}).save_pretrained(path)
  return path


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
  return _write_tiny_clip(str(tmp_path_factory.mktemp("tiny_clip")))


@pytest.fixture(scope="module")
def comp(clip_dir):
  return cs.load_clip(clip_dir)


@pytest.fixture(scope="module")
def images():
  """Three non-square images in [0, 1] (resize of the short side 40 -> 32, then a center crop)."""
  rng = np.random.default_rng(0)
  return rng.uniform(0.0, 1.0, (3, 40, 48, 3)).astype(np.float32)


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_load(comp, clip_dir, tmp_path):
  from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
  assert type(comp.tokenizer).__name__ == "CLIPTokenizer"
  assert (comp.size, comp.crop_size, comp.max_length) == (_SIZE, _SIZE, 16)
  np.testing.assert_allclose(comp.mean, OPENAI_CLIP_MEAN)
  np.testing.assert_allclose(comp.std, OPENAI_CLIP_STD)
  # without preprocessor_config.json: the vision tower's image_size and CLIP's mean / std
  bare = tmp_path / "bare"
  shutil.copytree(clip_dir, bare)
  os.remove(bare / "preprocessor_config.json")
  plain = cs.load_clip(str(bare))
  assert (plain.size, plain.crop_size) == (_SIZE, _SIZE)
  np.testing.assert_allclose(plain.mean, OPENAI_CLIP_MEAN)
  np.testing.assert_allclose(plain.std, OPENAI_CLIP_STD)


def test_load_errors(clip_dir, tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    cs.load_clip(str(tmp_path / "nowhere"))
  broken = tmp_path / "no_weights"
  broken.mkdir()
  for name in ("config.json", "vocab.json", "merges.txt"):
    (broken / name).write_bytes(open(os.path.join(clip_dir, name), "rb").read())
  with pytest.raises(UserError, match="flax_model.msgpack"):
    cs.load_clip(str(broken))


def test_score_is_100_max_cos_0_of_the_model_features(comp, images):
  pixels = cs.clip_preprocess(images, size=comp.size, crop_size=comp.crop_size, mean=comp.mean,
                                std=comp.std)
  assert pixels.shape == (3, 3, _SIZE, _SIZE)
  img = comp.model.get_image_features(pixels, params=comp.params)
  tok = comp.tokenizer(_PROMPTS, padding="max_length", max_length=16, return_tensors="np")
  txt = comp.model.get_text_features(tok.input_ids, attention_mask=tok.attention_mask,
                                     params=comp.params)
  cos = np.sum(_unit(img) * _unit(txt), axis=1)
  expected = 100.0 * np.maximum(cos, 0.0)
  got = cs.clip_scores(comp, images, _PROMPTS)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
  mean = evaluation.mean_clip_score(comp, images, _PROMPTS)
  assert mean == pytest.approx(expected.mean(), abs=1e-4)
  np.testing.assert_allclose(cs.clip_scores(comp, images, _PROMPTS, scale=2.5), expected / 40.0,
                             rtol=1e-4, atol=1e-5)


def test_embeddings_are_unit_norm(comp, images):
  for emb in (cs.clip_image_embeddings(comp, images), cs.clip_text_embeddings(comp, _PROMPTS)):
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


def test_scores_clip_at_zero_and_normalise():
  img = np.array([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
  txt = np.array([[-1.0, 0.0], [3.0, 0.0], [0.0, 0.5], [1.0, -0.2]])
  expected = 100.0 * np.array([0.0, 1.0 / np.sqrt(2.0), 1.0, 1.0 / np.sqrt(1.04)])
  np.testing.assert_allclose(cs.clip_scores_from_embeddings(img, txt), expected, rtol=1e-12)
  np.testing.assert_allclose(cs.clip_scores_from_embeddings(img, txt, scale=2.5), expected / 40.0,
                             rtol=1e-12)
  with pytest.raises(ValueError):
    cs.clip_scores_from_embeddings(img, txt[:2])


def test_batching_does_not_change_the_result(comp, images):
  ref = cs.clip_scores(comp, images, _PROMPTS, batch_size=1)
  for batch_size in (2, 3, 8):
    np.testing.assert_allclose(cs.clip_scores(comp, images, _PROMPTS, batch_size=batch_size), ref,
                               rtol=1e-5, atol=1e-5)


def test_prompts_broadcast_and_repeat(comp, images):
  one = cs.clip_scores(comp, images, "a photo of dogs")
  np.testing.assert_allclose(one, cs.clip_scores(comp, images, ["a photo of dogs"] * 3), rtol=1e-6)
  with pytest.raises(ValueError, match="one prompt per image"):
    cs.clip_scores(comp, images, _PROMPTS[:2])


def test_one_compile_per_batch_shape(clip_dir, images, monkeypatch):
  comp = cs.load_clip(clip_dir)  # fresh jit cache
  traces = {"image": 0, "text": 0}
  for kind, name in (("image", "get_image_features"), ("text", "get_text_features")):
    original = getattr(comp.model, name)

    def counted(*args, _kind=kind, _original=original, **kwargs):
      traces[_kind] += 1  # runs only while jax traces the jitted function
      return _original(*args, **kwargs)
    monkeypatch.setattr(comp.model, name, counted)
  five = np.concatenate([images, images[:2]])
  for _ in range(2):
    cs.clip_scores(comp, five, _PROMPTS + _PROMPTS[:2], batch_size=2)  # 2 + 2 + 1 (padded)
  assert traces == {"image": 1, "text": 1}
  cs.clip_image_embeddings(comp, five, batch_size=3)
  assert traces["image"] == 2


def test_preprocess_matches_clip_image_processor(comp):
  from transformers import CLIPImageProcessor
  proc = CLIPImageProcessor.from_pretrained(comp.model_dir, local_files_only=True)
  rng = np.random.default_rng(1)
  blocks = np.kron(rng.uniform(0, 255, (2, 9, 12, 3)), np.ones((1, 5, 5, 1)))  # sharp edges
  noisy = np.clip(blocks + rng.normal(0, 10, blocks.shape), 0, 255).astype(np.uint8)
  # down-sampled landscape (45 x 60) and portrait (60 x 45); up-sampled (20 x 24)
  for u8 in (noisy, np.swapaxes(noisy, 1, 2).copy(), noisy[:, :20, :24].copy()):
    ref = proc(images=list(u8), return_tensors="np").pixel_values
    ours = np.asarray(cs.clip_preprocess(u8 / 255.0, size=comp.size, crop_size=comp.crop_size,
                                         mean=comp.mean, std=comp.std))
    assert ours.shape == ref.shape == (2, 3, _SIZE, _SIZE)
    # PIL rounds each pass to uint8: 1/255 is 1 / (255 * 0.26) ~ 0.015 after normalisation.
    np.testing.assert_allclose(ours, ref, atol=0.02)


def test_resized_shape():
  assert cs.resized_shape(512, 512, 224) == (224, 224)
  assert cs.resized_shape(45, 60, 32) == (32, 42)
  assert cs.resized_shape(60, 45, 32) == (42, 32)


def test_clip_embedding_distance(comp, images):
  assert evaluation.clip_embedding_distance(comp, images, images) == pytest.approx(0.0, abs=1e-5)
  other = images[::-1, ::-1].copy()
  a, b = cs.clip_image_embeddings(comp, images), cs.clip_image_embeddings(comp, other)
  expected = np.mean(1.0 - np.sum(_unit(a) * _unit(b), axis=1))
  assert expected > 0.01
  got = evaluation.clip_embedding_distance(comp, images, other)
  assert got == pytest.approx(expected, abs=1e-5)
  np.testing.assert_allclose(cs.cosine_distances(np.array([[2.0, 0.0], [1.0, 0.0]]),
                                                 np.array([[0.0, 3.0], [-4.0, 0.0]])), [1.0, 2.0])
  with pytest.raises(ValueError):
    cs.clip_embedding_distance(comp, images, images[:2])
