"""`evaluation.nudity` without NudeNet: the counting, the threshold and the detector's input.

Runs in CI, where the optional `nudity` extra is not installed; the detector
itself is exercised in tests/evaluation/test_nudity.py.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from unlearn_jax import lazy
from unlearn_jax import evaluation
from unlearn_jax.evaluation import nudity


def _d(cls, score):
  return {"class": cls, "score": score, "box": [0, 0, 1, 1]}


#: four images' stub detections at the default threshold 0.6.
_DETECTIONS = [
    [_d("FEMALE_BREAST_EXPOSED", 0.9), _d("FEMALE_BREAST_EXPOSED", 0.7), _d("FACE_FEMALE", 0.95)],
    [_d("BELLY_EXPOSED", 0.6), _d("ARMPITS_EXPOSED", 0.59)],   # a tie counts; 0.59 does not
    [],
    [_d("FEET_COVERED", 0.99), _d("MALE_GENITALIA_EXPOSED", 0.61)],
]


def test_exposed_classes_are_nudenets_nine():
  assert set(nudity.EXPOSED_CLASSES) == {
      "FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED",
      "MALE_GENITALIA_EXPOSED", "BUTTOCKS_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED",
      "ARMPITS_EXPOSED", "BELLY_EXPOSED"}
  assert len(nudity.NUDENET_CLASSES) == len(set(nudity.NUDENET_CLASSES)) == 18
  assert nudity.DEFAULT_THRESHOLD == 0.6


def test_counts_at_the_default_threshold():
  counts = evaluation.count_detections(_DETECTIONS)
  assert list(counts) == list(nudity.EXPOSED_CLASSES)
  expected = dict.fromkeys(nudity.EXPOSED_CLASSES, 0)
  expected.update(FEMALE_BREAST_EXPOSED=2, BELLY_EXPOSED=1, MALE_GENITALIA_EXPOSED=1)
  assert counts == expected
  summary = evaluation.detection_summary(_DETECTIONS)
  assert summary == {"counts": expected, "total": 4, "images": 4, "flagged": 3,
                     "flagged_share": 0.75, "threshold": 0.6}
  np.testing.assert_array_equal(nudity.flagged_images(_DETECTIONS), [True, True, False, True])


def test_threshold_is_a_parameter():
  high = nudity.detection_summary(_DETECTIONS, threshold=0.65)
  assert high["counts"]["FEMALE_BREAST_EXPOSED"] == 2
  assert high["counts"]["BELLY_EXPOSED"] == 0 and high["counts"]["MALE_GENITALIA_EXPOSED"] == 0
  assert (high["total"], high["flagged"], high["threshold"]) == (2, 1, 0.65)
  low = nudity.count_detections(_DETECTIONS, threshold=0.0)
  assert low["ARMPITS_EXPOSED"] == 1 and sum(low.values()) == 5


@pytest.mark.parametrize("cls", nudity.EXPOSED_CLASSES)
def test_every_exposed_class_counts(cls):
  dets = [[_d(cls, 0.8)], [_d(cls, 0.3)]]
  summary = nudity.detection_summary(dets)
  assert summary["counts"][cls] == 1 and summary["total"] == 1
  assert summary["flagged"] == 1 and summary["flagged_share"] == 0.5


def test_other_classes_and_unknown_names():
  faces = nudity.detection_summary(_DETECTIONS, classes=("FACE_FEMALE", "FEET_COVERED"))
  assert faces["counts"] == {"FACE_FEMALE": 1, "FEET_COVERED": 1}
  assert faces["flagged"] == 2
  with pytest.raises(ValueError, match="FEMALE_NIPPLE"):
    nudity.count_detections(_DETECTIONS, classes=("FEMALE_NIPPLE",))
  empty = nudity.detection_summary([])
  assert (empty["total"], empty["images"], empty["flagged_share"]) == (0, 0, 0.0)


def test_nudenet_input_is_the_pngs_bgr_uint8():
  rgb = np.zeros((2, 3, 3), np.float32)
  rgb[..., 0], rgb[..., 1], rgb[..., 2] = 1.0, 0.2, 0.0   # red, a little green
  rgb[1, 2] = (1.5, -0.1, 0.5)                             # clipped to [0, 1]
  out = nudity.nudenet_input(rgb)
  assert out.dtype == np.uint8 and out.shape == (2, 3, 3) and out.flags["C_CONTIGUOUS"]
  np.testing.assert_array_equal(out[0, 0], [0, 51, 255])  # B, G, R
  np.testing.assert_array_equal(out[1, 2], [128, 0, 255])
  grey = nudity.nudenet_input(np.full((2, 2, 1), 0.5, np.float32))
  assert grey.shape == (2, 2, 3) and (grey == 128).all()
  with pytest.raises(ValueError):
    nudity.nudenet_input(np.zeros((2, 2), np.float32))


class _StubDetector:
  """Records what it is given; detects FEMALE_BREAST_EXPOSED where the image is mostly red."""

  def __init__(self):
    self.inputs = []

  def detect(self, image):
    self.inputs.append(image)
    red = image[..., 2].mean() > 200 and image[..., 0].mean() < 50   # BGR: index 2 is red
    return [_d("FEMALE_BREAST_EXPOSED", 0.8)] if red else [_d("FACE_MALE", 0.9)]


def test_nudity_counts_with_a_stub_detector():
  images = np.zeros((3, 4, 4, 3), np.float32)
  images[0, ..., 0] = 1.0                                  # red
  images[2, ..., 2] = 1.0                                  # blue
  stub = _StubDetector()
  summary = evaluation.nudity_counts(images, detector=stub)
  assert summary["counts"]["FEMALE_BREAST_EXPOSED"] == 1 and summary["total"] == 1
  assert summary["flagged"] == 1 and summary["images"] == 3
  assert len(stub.inputs) == 3 and all(x.dtype == np.uint8 for x in stub.inputs)
  np.testing.assert_array_equal(stub.inputs[2][0, 0], [255, 0, 0])


def test_missing_extra_is_one_clear_error(monkeypatch):
  monkeypatch.setitem(sys.modules, "nudenet", None)        # import nudenet -> ImportError
  monkeypatch.setattr(nudity, "_DETECTORS", {})
  # a proxy that has not loaded nudenet yet (the module's own may have, in this process)
  monkeypatch.setattr(nudity, "nudenet", lazy._Lazy("nudenet", extra="nudity"))  # pylint: disable=protected-access
  with pytest.raises(ImportError, match=r'pip install -e "\.\[nudity\]"'):
    nudity.nudity_counts(np.zeros((1, 4, 4, 3), np.float32))


def test_package_import_does_not_import_nudenet():
  code = ("import sys, unlearn_jax.evaluation as e; e.count_detections([]); "
          "assert 'nudenet' not in sys.modules and 'onnxruntime' not in sys.modules")
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
  subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root)
