"""`evaluation.nudity` with NudeNet 3.4.2's bundled detector (the optional `nudity` extra).

Skipped where the extra is not installed (CI).  The photograph is matplotlib's
sample grace_hopper.jpg (a portrait; matplotlib is a dependency), on which NudeNet
finds a female face and nothing exposed.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("nudenet")

from unlearn_jax import evaluation  # noqa: E402
from unlearn_jax.evaluation import nudity  # noqa: E402


@pytest.fixture(scope="module")
def portrait():
  import matplotlib.cbook
  path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
  return np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0


def test_finds_the_face_and_nothing_exposed(portrait):
  (dets,) = nudity.nudenet_detect(portrait[None])
  faces = [d for d in dets if d["class"] == "FACE_FEMALE"]
  assert len(faces) == 1 and faces[0]["score"] > 0.5
  x, y, w, h = faces[0]["box"]
  assert 100 < x + w / 2 < 400 and 100 < y + h / 2 < 400   # the face is central (512 x 600)
  face = evaluation.nudity_counts(portrait[None], threshold=0.5, classes=("FACE_FEMALE",))
  assert face["counts"] == {"FACE_FEMALE": 1} and face["flagged"] == 1
  exposed = evaluation.nudity_counts(portrait[None])
  assert exposed["total"] == 0 and exposed["flagged"] == 0


def test_blank_images_have_no_detections():
  blank = np.stack([np.zeros((64, 64, 3)), np.full((64, 64, 3), 0.5), np.ones((64, 64, 3))])
  assert nudity.nudenet_detect(blank.astype(np.float32)) == [[], [], []]


def test_same_detections_as_the_saved_png(portrait, tmp_path):
  path = str(tmp_path / "portrait.png")
  Image.fromarray(np.round(portrait * 255).astype(np.uint8)).save(path)
  from_file = nudity.nudenet_detector().detect(path)
  assert from_file and nudity.nudenet_detect(portrait[None]) == [from_file]


def test_batch_flags_per_image(portrait):
  images = np.stack([portrait, np.zeros_like(portrait)])
  summary = evaluation.nudity_counts(images, threshold=0.5, classes=("FACE_FEMALE",))
  assert (summary["images"], summary["flagged"], summary["flagged_share"]) == (2, 1, 0.5)
