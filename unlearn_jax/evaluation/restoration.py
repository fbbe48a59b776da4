"""Scores of restored images: SGU's inpainting (Table 3) and reconstruction (Table 4).

SGU Sec. 4.3 transfers the unlearned score model zero-shot to two restorations of real
images (the samplers are `sampling.inpaint` / `sampling.reconstruct`, run on an
experiment's model by `generation.restore`):

  * inpainting: the upper half of each image is masked (`upper_half_mask`: rows
    0 .. H//2 - 1 unknown, the paper's 64x32 mask on 64x64 CelebA) and the model fills it
    in from the known lower half;
  * reconstruction: each image is noised to t = 0.02 and sampled back.

Each is scored on D_g (the retained data) and D_f (the forgotten data) separately:

  accuracy         share of restored images whose predicted class equals their original's
                   target: its label (`target="label"`, the default) or the classifier's
                   class of the original (`target="prediction"`); the paper's "the predicted
                   class of the restored image matches that of the corresponding original"
                   reads either way.  A model that forgot D_f restores its images as
                   something else: low accuracy on D_f, unchanged on D_g.
  clean_accuracy   the classifier's accuracy on the originals themselves (Table 3's "Clean").
  clip_distance    the CLIP embedding distance, the mean of 1 - cos(E(restored_i),
                   E(original_i)) (`clip_score.clip_embedding_distance`), where a CLIP is
                   given: on D_g for inpainting (Table 3's "CLIP of D_g"), on D_g and D_f for
                   reconstruction (Table 4).  Grey images are repeated to RGB.  The paper
                   does not state its scale (its values are ~7-8); this is 1 - cos in [0, 2].

Host-side orchestration of given callables (restore, classify, embed); pure apart from them.
"""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from unlearn_jax.errors import check_choice
from unlearn_jax.evaluation import clip_score

#: what a restored image's predicted class is compared with (`settings.Restoration.target`).
TARGETS = ("label", "prediction")
#: the data a restoration is scored on (`settings.Restoration.split`).
SPLITS = ("test", "train")
#: the sets whose CLIP distance each restoration reports (SGU Tables 3 and 4).
CLIP_SETS = {"inpaint": ("retain",), "reconstruct": ("retain", "forget")}

ImageSet = Tuple[np.ndarray, np.ndarray]          # (images in [0, 1] NHWC, labels (N,))


def upper_half_mask(height: int, width: int) -> np.ndarray:
  """float32 (H, W, 1): 1 where a pixel is known (the lower half, rows >= H // 2), 0 where it
  is masked and inpainted (the upper half); `sampling.inpaint` keeps the pixels where it is 1."""
  known = np.zeros((height, width, 1), np.float32)
  known[height // 2:] = 1.0
  return known


def accuracy(predicted: np.ndarray, targets: np.ndarray) -> float:
  """Share of positions where `predicted` equals `targets` (NaN for none)."""
  predicted, targets = np.asarray(predicted), np.asarray(targets)
  if predicted.shape != targets.shape:
    raise ValueError(f"predicted {predicted.shape} and targets {targets.shape} differ in shape")
  return float(np.mean(predicted == targets)) if predicted.size else float("nan")


def to_rgb(images01: np.ndarray) -> np.ndarray:
  """NHWC images with 1 channel repeated to 3 (RGB images unchanged): what CLIP takes."""
  images01 = np.asarray(images01, np.float32)
  return np.repeat(images01, 3, axis=-1) if images01.shape[-1] == 1 else images01


def clip_distance(comp: clip_score.CLIPComponents, restored01: np.ndarray, original01: np.ndarray,
                  batch_size: int = 32) -> float:
  """Mean 1 - cos of the CLIP image embeddings of paired restored / original images."""
  return clip_score.clip_embedding_distance(comp, to_rgb(restored01), to_rgb(original01),
                                            batch_size=batch_size)


def restoration_scores(restore: Callable[[str, np.ndarray], np.ndarray],
                       classify: Callable[[np.ndarray], np.ndarray],
                       sets: Mapping[str, ImageSet], *, target: str = "label",
                       clip_fn: Optional[Callable[[np.ndarray, np.ndarray], float]] = None,
                       clip_sets: Sequence[str] = ()) -> Tuple[dict, Dict[str, np.ndarray]]:
  """One restoration's results.json entry and the restored images of each set.

  Args:
    restore: restore(set name, originals01) -> restored images in [0, 1], same shape.
    classify: classify(images01) -> int (N,) predicted classes.
    sets: set name ("retain" = D_g, "forget" = D_f) -> (originals01, labels).
    target: "label" or "prediction" (see the module docstring).
    clip_fn: clip_fn(restored01, originals01) -> distance; None: no CLIP distance.
    clip_sets: the sets whose CLIP distance is reported (with `clip_fn`).

  Returns:
    ({"accuracy": {set: float}, "clean_accuracy": {set: float}, "num_examples": {set: int},
      "target": target[, "clip_distance": {set: float}]}, {set: restored images}).
  """
  check_choice("config.eval.<restoration>.target", target, TARGETS)
  entry = {"accuracy": {}, "clean_accuracy": {}, "num_examples": {}, "target": target}
  restored_sets = {}
  for name, (x01, labels) in sets.items():
    labels = np.asarray(labels)
    original_pred = np.asarray(classify(x01))
    restored = restore(name, x01)
    restored_sets[name] = restored
    targets = labels if target == "label" else original_pred
    entry["accuracy"][name] = accuracy(np.asarray(classify(restored)), targets)
    entry["clean_accuracy"][name] = accuracy(original_pred, labels)
    entry["num_examples"][name] = int(len(x01))
    if clip_fn is not None and name in clip_sets:
      entry.setdefault("clip_distance", {})[name] = float(clip_fn(restored, x01))
  return entry, restored_sets
