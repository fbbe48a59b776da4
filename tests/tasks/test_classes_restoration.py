"""tasks.classes' SGU Tables 3-5 measurements: inpainting and reconstruction of test images
(mask semantics, the entries with the tiny random CLIP, the checks), the Bangs D_f / D_r split
on mock CelebA, and the report tables."""
import copy
import importlib.util
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from unlearn_jax import config_lib
from unlearn_jax import data as data_lib
from unlearn_jax import evaluation
from unlearn_jax import generation
from unlearn_jax import models
from unlearn_jax import tasks
from unlearn_jax import validation
from unlearn_jax.errors import UserError
from unlearn_jax.reporting import markdown
from unlearn_jax.tasks import classes

_spec = importlib.util.spec_from_file_location(
    "clip_score_helpers", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                       "evaluation", "test_clip_score.py"))
clip_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(clip_helpers)


def digits_config(**eval_kw):
  """8x8 digits, a one-level ch-8 UNet on the VP SDE, centred data, both restorations on."""
  c = config_lib.base()
  c.data.update(dict(name="digits", source="sklearn", image_size=8, num_channels=1, centered=True,
                     forget_classes=(3,)))
  c.sde.name = "vpsde"
  c.model.update(dict(ch=8, ch_mult=(1,), num_res_blocks=1))
  c.stages, c.stage_order = config_lib.sgu_stages(steps=1, unlearn_steps=1, init="standard")
  c.classifier.update(dict(features=(8,), dense=16))
  c.eval.update(dict(sample_batch_size=4, **eval_kw))
  c.eval.sampler.update(dict(n_steps=4, corrector="langevin"))
  c.eval.inpaint.num_examples = 4
  c.eval.reconstruct.update(dict(num_examples=4, n_steps=3))
  return c


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
  return clip_helpers._write_tiny_clip(str(tmp_path_factory.mktemp("tiny_clip")))


@pytest.fixture(scope="module")
def exp(clip_dir):
  e = tasks.build(digits_config(clip_dir=clip_dir))
  e.params = models.init_params(e.module, jax.random.key(0), e.example_shape)
  e.clf_params = models.init_params(e.classifier, jax.random.key(1), e.example_shape)
  return e


def test_inpainting_keeps_the_known_lower_half_and_fills_the_upper(exp):
  x01 = data_lib.to_float(exp.test_retain.images[:5])
  known = evaluation.upper_half_mask(8, 8)
  out = generation.restore(exp, exp.params, "inpaint", x01, jax.random.key(3), known=known)
  assert out.shape == x01.shape                        # 5 images in batches of 4 (the last padded)
  np.testing.assert_allclose(out[:, 4:], x01[:, 4:], atol=1e-5)     # rows 4..7 known: returned as given
  assert np.abs(out[:, :4] - x01[:, :4]).max() > 0.1                 # rows 0..3 inpainted
  rec = generation.restore(exp, exp.params, "reconstruct", x01, jax.random.key(3))
  assert rec.shape == x01.shape and 0.0 <= rec.min() and rec.max() <= 1.0
  assert np.abs(rec - x01).max() > 1e-3


def test_restoration_entries_with_the_tiny_clip(exp, tmp_path):
  assert exp.clip is not None and exp.clip.model_dir
  out = classes.restoration_entries(exp, str(tmp_path), "standard", exp.params, exp.clf_params,
                                    jax.random.key(5), str(tmp_path / "evaluate"))
  inp, rec = out["inpaint"], out["reconstruct"]
  assert inp["num_examples"] == {"retain": 4, "forget": 4} and rec["num_examples"] == {"retain": 4, "forget": 4}
  assert set(inp["clip_distance"]) == {"retain"} and set(rec["clip_distance"]) == {"retain", "forget"}
  assert all(0.0 <= v <= 2.0 for v in list(inp["clip_distance"].values()) + list(rec["clip_distance"].values()))
  # Clean: the classifier's accuracy on the originals
  x = data_lib.to_float(exp.test_forget.images[:4])
  pred = evaluation.predict(exp.classifier.apply, exp.clf_params, x)
  assert inp["clean_accuracy"]["forget"] == pytest.approx(np.mean(pred == exp.test_forget.labels[:4]))
  assert (inp["mask"], inp["n_steps"], rec["t_start"], rec["n_steps"]) == ("upper half", 4, 0.02, 3)
  for entry in (inp, rec):
    assert os.path.exists(tmp_path / entry["png"]) and entry["split"] == "test" and entry["target"] == "label"
  # no CLIP directory: no distance
  no_clip = copy.copy(exp)
  no_clip.clip = None
  plain = classes.restoration_entries(no_clip, str(tmp_path), "standard", exp.params, exp.clf_params,
                                      jax.random.key(5), str(tmp_path / "evaluate"))
  assert "clip_distance" not in plain["inpaint"] and plain["inpaint"]["accuracy"] == inp["accuracy"]


def test_restorations_are_checked_before_anything_is_written(tmp_path):
  with pytest.raises(UserError, match=r"config\.eval\.clip_dir"):
    tasks.build(digits_config(clip_dir=str(tmp_path / "nowhere")))
  c = digits_config()
  c.eval.inpaint.target = "original"
  with pytest.raises(UserError, match=r"config\.eval\.inpaint\.target"):
    validation.check_config(c)
  c = digits_config()
  c.eval.reconstruct.t_start = 1e-6                    # not above eval.sampler.eps (1e-5)
  with pytest.raises(UserError, match=r"config\.eval\.reconstruct\.t_start"):
    validation.check_config(c)
  c = digits_config()
  c.eval.reconstruct.t_start = 1.5                     # beyond the SDE's T = 1
  with pytest.raises(UserError, match=r"config\.eval\.reconstruct\.t_start"):
    validation.check_experiment(tasks.build(c))
  c = config_lib.digits_ddpm(cpu=True)                 # a class-conditional DDPM has no restorations
  c.stages, c.stage_order = config_lib.dimum_stages(pretrain_steps=1, unlearn_steps=1, attack_steps=1,
                                                    eval_every=1, methods=("ga",))
  c.eval.inpaint.num_examples = 2
  with pytest.raises(UserError, match=r"config\.eval\.inpaint\.num_examples=2 .*unconditional"):
    validation.check_experiment(tasks.build(c))
  assert not os.listdir(tmp_path)


def test_bangs_split_on_mock_celeba():
  c = config_lib.base()
  c.data.update(dict(name="celeb_a", source="tfds", image_size=8, num_channels=3, forget_classes=(),
                     forget_attribute="Bangs"))
  c.stages, c.stage_order = config_lib.sgu_stages(steps=1, unlearn_steps=1)
  with tfds.testing.mock_data(num_examples=30):
    exp = tasks.build(c)
  train, forget, retain = exp.train, exp.streams["forget"], exp.streams["retain"]
  assert train.class_names == ("no_Bangs", "Bangs") and exp.forget_labels == (data_lib.WITH_ATTRIBUTE,) == (1,)
  np.testing.assert_array_equal(train.labels, train.attributes.astype(np.int32))   # labels = the attribute
  assert forget.attributes.all() and (forget.labels == 1).all() and len(forget) > 0
  assert not retain.attributes.any() and (retain.labels == 0).all() and len(retain) > 0
  assert len(forget) + len(retain) == len(train)
  assert exp.test_forget.attributes.all() and not exp.test_retain.attributes.any()
  assert exp.retained_classes == (0,)
  # the classifier stage trains the binary attribute classifier on the labels
  seen = {}
  fit = lambda d, module, tr, te, off, name: seen.update(train=tr, test=te, module=module) or 0.5
  classes.train_classifiers(exp, "classifier", "/unused", fit)
  assert seen["train"] is train and seen["module"] is exp.classifier
  assert exp.classifier.config.num_classes == 2
  # unlearning ratio: the share of samples classified "with Bangs"
  assert evaluation.unlearning_ratio(np.array([0, 1, 1, 0, 0]), exp.forget_labels) == pytest.approx(0.4)
  results = {}
  classes.finalize(exp, results, "/unused")
  assert results == {"forget_attribute": "Bangs"}


def _entry(clean, acc, clip=None):
  e = {"accuracy": acc, "clean_accuracy": clean, "num_examples": {"retain": 8, "forget": 4}, "target": "label",
       "split": "test", "png": "evaluate/m_x.png"}
  if clip:
    e["clip_distance"] = clip
  return e


def test_report_tables_shaped_like_tables_3_and_4():
  clean = {"retain": 0.875, "forget": 0.75}
  models_ = {
      "standard": {"inpaint": dict(_entry(clean, {"retain": 0.75, "forget": 0.5}), mask="upper half", n_steps=20),
                   "reconstruct": dict(_entry(clean, {"retain": 0.625, "forget": 0.25},
                                              {"retain": 0.0125, "forget": 0.03125}), t_start=0.02, n_steps=20)},
      "sgu_obtuse": {"inpaint": dict(_entry(clean, {"retain": 0.875, "forget": 0.0}), mask="upper half", n_steps=20),
                     "reconstruct": dict(_entry(clean, {"retain": 0.5, "forget": 0.125},
                                                {"retain": 0.015625, "forget": 0.5}), t_start=0.02, n_steps=20)}}
  lines = markdown.restoration_lines(models_)
  text = "\n".join(lines)
  inp, rec = text.split("## Reconstruction")
  assert "## Inpainting (SGU paper, Table 3 shape)" in inp
  assert "| Test | Clean | Standard | SGU-Obtuse |" in inp
  assert "| D_g | 87.5 | 75.0 | 87.5 |" in inp and "| D_f | 75.0 | 50.0 | 0.0 |" in inp
  assert "CLIP distance: not measured: `config.eval.clip_dir` is not set" in inp and "CLIP distance D_g" not in inp
  assert "8 of D_g, 4 of D_f" in inp and "(20 steps)" in inp
  assert "| D_g | 87.5 | 62.5 | 50.0 |" in rec and "| D_f | 75.0 | 25.0 | 12.5 |" in rec
  assert "| CLIP distance D_g (↓) | – | 0.0125 | 0.0156 |" in rec
  assert "| CLIP distance D_f (↓) | – | 0.0312 | 0.5000 |" in rec
  assert "t = 0.02" in rec and "not measured" not in rec
  assert markdown.restoration_lines({"standard": {"unlearning_ratio": 0.1}}) == []
  # classes.report_tables appends them to the Table 2 shape
  results = {"dataset": "mnist", "models": {n: {**m, "unlearning_ratio": 0.1, "num_samples": 8,
                                                 "nll": {"retain": 3.0, "forget": 3.5, "unit": "bits/dim",
                                                         "offset": 8.0, "convention": "score_sde"}}
                                             for n, m in models_.items()}}
  body = "\n".join(classes.report_tables(results, "."))
  assert body.index("Table 2 shape") < body.index("Table 3 shape") < body.index("Table 4 shape")
  results["forget_attribute"] = "Bangs"
  assert "## Unlearning the Bangs feature (SGU paper, Tables 2 and 5 shape)" in "\n".join(
      classes.report_tables(results, "."))
