"""`evaluation.concept`: UnlearnCanvas UA / IRA / CRA and SFID."""
from __future__ import annotations

import math

import numpy as np
import pytest

from unlearn_jax import evaluation


def test_ua_ira_cra():
  # styles 0, 1, 2; style 2 forgotten.  Images:      0  1  2  3  4  5  6  7
  style_true = np.array([0, 0, 1, 1, 2, 2, 2, 2])
  style_pred = np.array([0, 1, 1, 1, 2, 0, 1, 0])
  object_true = np.array([0, 1, 2, 0, 1, 2, 0, 1])
  object_pred = np.array([0, 1, 0, 0, 1, 2, 2, 2])
  r = evaluation.ua_ira_cra(style_pred, object_pred, style_true, object_true, [2])
  assert r["UA"] == pytest.approx(3 / 4)     # images 5, 6, 7 not classified as style 2
  assert r["IRA"] == pytest.approx(3 / 4)    # images 0, 2, 3 of 0-3 correct
  assert r["CRA"] == pytest.approx(3 / 4)    # objects of images 0, 1, 3 of 0-3 correct
  assert (r["n_forget"], r["n_retain"]) == (4, 4)
  r_all = evaluation.ua_ira_cra(style_pred, object_pred, style_true, object_true, 2, cra_images="all")
  assert r_all["CRA"] == pytest.approx(5 / 8)
  # the original model: everything right -> UA 0, IRA 1, CRA 1
  r0 = evaluation.ua_ira_cra(style_true, object_true, style_true, object_true, (2,))
  assert (r0["UA"], r0["IRA"], r0["CRA"]) == (0.0, 1.0, 1.0)
  # no forget-style images -> UA is NaN
  rn = evaluation.ua_ira_cra(style_pred[:4], object_pred[:4], style_true[:4], object_true[:4], [2])
  assert math.isnan(rn["UA"]) and rn["IRA"] == pytest.approx(3 / 4)
  with pytest.raises(ValueError):
    evaluation.ua_ira_cra(style_pred[:3], object_pred, style_true, object_true, [2])


def test_sfid():
  assert evaluation.sfid(20.0, 40.0) == pytest.approx(50.0)
  assert evaluation.sfid(20.0, 10.0) == 100.0
  assert evaluation.sfid(20.0, 20.0) == 100.0
  assert evaluation.sfid(20.0, 0.0) == 100.0
  assert math.isnan(evaluation.sfid(float("nan"), 1.0))
