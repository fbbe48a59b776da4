"""evaluation.restoration (SGU Tables 3-4): the mask, the accuracy counts on a stub
classifier with known answers, and the CLIP distance wiring with the tiny random CLIP of
test_clip_score.py."""
import importlib.util
import os

import numpy as np
import pytest

from unlearn_jax import evaluation
from unlearn_jax.errors import UserError
from unlearn_jax.evaluation import clip_score
from unlearn_jax.evaluation import restoration

_spec = importlib.util.spec_from_file_location(
    "clip_score_helpers", os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_clip_score.py"))
clip_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(clip_helpers)


def test_upper_half_mask_marks_the_lower_half_known():
  m = evaluation.upper_half_mask(6, 4)
  assert m.shape == (6, 4, 1) and m.dtype == np.float32
  np.testing.assert_array_equal(m[:3], 0.0)     # rows 0..2 masked (inpainted)
  np.testing.assert_array_equal(m[3:], 1.0)     # rows 3..5 known
  odd = evaluation.upper_half_mask(5, 2)
  assert odd[:, 0, 0].tolist() == [0, 0, 1, 1, 1]


def _constant_images(values):
  """(N, 4, 4, 1) images, image i constant values[i]."""
  return np.broadcast_to(np.asarray(values, np.float32)[:, None, None, None], (len(values), 4, 4, 1)).copy()


def stub_classify(x01):
  """Class = round(3 * mean brightness): 0..3."""
  return np.rint(3 * np.asarray(x01).mean(axis=(1, 2, 3))).astype(np.int32)


def test_accuracy_counts_against_the_originals_on_a_stub_classifier():
  # retain: 4 images of classes 0, 1, 2, 3 (all classified right); forget: 4 images of class 3,
  # one misclassified as 2 (brightness 0.6 -> 2)
  retain = (_constant_images([0.0, 1 / 3, 2 / 3, 1.0]), np.array([0, 1, 2, 3]))
  forget = (_constant_images([1.0, 1.0, 0.6, 1.0]), np.array([3, 3, 3, 3]))
  calls = []

  def restore(name, x01):           # D_g restored unchanged; D_f darkened to class 0, but its
    calls.append((name, len(x01)))  # first two images kept
    out = np.zeros_like(x01)
    if name == "retain":
      return x01.copy()
    out[:2] = x01[:2]
    return out

  entry, restored = evaluation.restoration_scores(restore, stub_classify, {"retain": retain, "forget": forget})
  assert calls == [("retain", 4), ("forget", 4)]
  assert entry["accuracy"] == {"retain": 1.0, "forget": 0.5}
  assert entry["clean_accuracy"] == {"retain": 1.0, "forget": 0.75}
  assert entry["num_examples"] == {"retain": 4, "forget": 4} and entry["target"] == "label"
  assert "clip_distance" not in entry
  np.testing.assert_array_equal(restored["forget"][2:], 0.0)
  # target "prediction": the restored image's class against the classifier's class of its original
  by_pred, _ = evaluation.restoration_scores(restore, stub_classify, {"forget": forget}, target="prediction")
  assert by_pred["accuracy"] == {"forget": 0.5} and by_pred["clean_accuracy"] == {"forget": 0.75}
  keep_third = lambda name, x: np.concatenate([np.zeros_like(x[:2]), x[2:3], np.zeros_like(x[3:])])
  by_label, _ = evaluation.restoration_scores(keep_third, stub_classify, {"forget": forget})
  by_pred, _ = evaluation.restoration_scores(keep_third, stub_classify, {"forget": forget}, target="prediction")
  assert by_label["accuracy"]["forget"] == 0.0      # class 2 != label 3
  assert by_pred["accuracy"]["forget"] == 0.25      # class 2 == the original's predicted 2
  with pytest.raises(UserError, match="target"):
    evaluation.restoration_scores(restore, stub_classify, {"forget": forget}, target="original")


def test_accuracy_helper():
  assert restoration.accuracy(np.array([1, 2, 3]), np.array([1, 0, 3])) == pytest.approx(2 / 3)
  assert np.isnan(restoration.accuracy(np.array([], int), np.array([], int)))
  with pytest.raises(ValueError):
    restoration.accuracy(np.array([1, 2]), np.array([1]))


@pytest.fixture(scope="module")
def comp(tmp_path_factory):
  return clip_score.load_clip(clip_helpers._write_tiny_clip(str(tmp_path_factory.mktemp("tiny_clip"))))


def test_clip_distance_on_the_chosen_sets_grey_repeated_to_rgb(comp):
  rng = np.random.default_rng(0)
  grey = rng.uniform(0, 1, (3, 32, 32, 1)).astype(np.float32)
  sets = {"retain": (grey, np.zeros(3, int)), "forget": (grey[::-1].copy(), np.zeros(3, int))}
  flip = lambda name, x: x[:, ::-1].copy()                    # restored = upside down
  clip_fn = lambda a, b: restoration.clip_distance(comp, a, b)
  entry, restored = evaluation.restoration_scores(flip, stub_classify, sets, clip_fn=clip_fn,
                                                  clip_sets=restoration.CLIP_SETS["inpaint"])
  assert set(entry["clip_distance"]) == {"retain"}            # Table 3: CLIP of D_g only
  rgb = lambda x: np.repeat(x, 3, axis=-1)
  expected = clip_score.clip_embedding_distance(comp, rgb(restored["retain"]), rgb(grey))
  assert entry["clip_distance"]["retain"] == pytest.approx(expected, abs=1e-6)
  assert expected > 1e-3
  both, _ = evaluation.restoration_scores(lambda name, x: x, stub_classify, sets, clip_fn=clip_fn,
                                          clip_sets=restoration.CLIP_SETS["reconstruct"])
  assert set(both["clip_distance"]) == {"retain", "forget"}   # Table 4: D_g and D_f
  assert both["clip_distance"]["retain"] == pytest.approx(0.0, abs=1e-5)
  assert both["clip_distance"]["forget"] == pytest.approx(0.0, abs=1e-5)
  assert restoration.to_rgb(rgb(grey)).shape == (3, 32, 32, 3)
