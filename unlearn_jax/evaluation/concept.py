"""Style-unlearning metrics of UnlearnCanvas (CORE paper Sec. 4.1, App. B; DiMUM Sec. VI-B).

Host-side numpy on the outputs of the style and object classifiers, applied to
images generated from the prompts "A {object} image in {style} style.".  Every
generated image carries the style and object of its prompt (`style_true`,
`object_true`) and the classifiers' predictions (`style_pred`, `object_pred`).

  UA   unlearning accuracy: the share of images generated from forget-style
       prompts whose predicted style is NOT the prompt's style.
  IRA  in-domain retain accuracy: the share of images generated from
       retained-style prompts whose predicted style IS the prompt's style.
  CRA  cross-domain retain accuracy: the share of images generated from
       retained-style prompts whose predicted object IS the prompt's object
       (objects are the other domain; no object is forgotten).
  SFID scaled FID, min(100 FID_0 / FID_M, 100)  (CORE App. B, Eq. 7).

UA / IRA / CRA follow CORE's wording ("images ... conditioned on the forget
concepts, which are incorrectly classified"; IRA / CRA are the accuracies "of
generated images prompted with retain concepts") after Zhang et al. (2024c).
They are fractions in [0, 1] (the papers print percentages); CORE's "Total" is
100 (UA + IRA + CRA) + SFID, on a 0-400 scale.

DiMUM's attack rates on the style classifier's logits (AR_MU top-3, AR_CL) are in
`evaluation.rates`.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence, Union

import numpy as np

from unlearn_jax.errors import check_choice

Labels = Union[int, Sequence[int], np.ndarray]


def _mean(x: np.ndarray) -> float:
  return float(np.mean(x)) if x.size else float("nan")


def _labels(name: str, x, n: int = -1) -> np.ndarray:
  a = np.asarray(x)
  if a.ndim != 1:
    raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
  if n >= 0 and a.shape[0] != n:
    raise ValueError(f"{name} has {a.shape[0]} entries, expected {n}")
  return a.astype(np.int64)


def ua_ira_cra(style_pred, object_pred, style_true, object_true, forget_styles: Labels, *,
               cra_images: str = "retain") -> Dict[str, float]:
  """UA, IRA and CRA of style unlearning (see the module docstring), as fractions.

  Args:
    style_pred, object_pred: (N,) predicted style / object labels of the generated images.
    style_true, object_true: (N,) the style / object of the prompt each image was
      generated from, in the same label spaces.
    forget_styles: the forgotten style labels (an int or a sequence).
    cra_images: "retain" (default, CORE's definition): CRA on the images of
      retained-style prompts; "all": on every image.

  Returns:
    {"UA", "IRA", "CRA": floats in [0, 1], NaN where their image set is empty;
     "n_forget", "n_retain": the numbers of forget- and retained-style images (UA's and
     IRA's denominators), "n_cra": CRA's}.
  """
  check_choice("cra_images", cra_images, ("retain", "all"))
  style_true = _labels("style_true", style_true)
  n = style_true.shape[0]
  style_pred = _labels("style_pred", style_pred, n)
  object_pred = _labels("object_pred", object_pred, n)
  object_true = _labels("object_true", object_true, n)
  forget = np.atleast_1d(np.asarray(forget_styles, dtype=np.int64))
  is_f = np.isin(style_true, forget)
  style_ok = style_pred == style_true
  object_ok = object_pred == object_true
  cra_set = ~is_f if cra_images == "retain" else np.ones_like(is_f)
  return {
      "UA": _mean(~style_ok[is_f]),
      "IRA": _mean(style_ok[~is_f]),
      "CRA": _mean(object_ok[cra_set]),
      "n_forget": int(is_f.sum()),
      "n_retain": int((~is_f).sum()),
      "n_cra": int(cra_set.sum()),
  }


def sfid(fid_base: float, fid_model: float) -> float:
  """Scaled FID, SFID_M = min(100 FID_0 / FID_M, 100)  (CORE App. B, Eq. 7).

  FID_0 is the base (pre-unlearning) model's FID, FID_M the unlearned model's,
  both on the retain set.  FID_M <= 0 (a perfect, or rounding-negative, FID)
  gives 100; NaN propagates.
  """
  f0, fm = float(fid_base), float(fid_model)
  if math.isnan(f0) or math.isnan(fm):
    return float("nan")
  if fm <= 0.0:
    return 100.0
  return float(min(100.0 * max(f0, 0.0) / fm, 100.0))
