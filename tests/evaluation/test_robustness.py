"""`evaluation.robustness`: the summaries of one attack curve equal hand computations."""
from __future__ import annotations

import math

import numpy as np
import pytest

from unlearn_jax.evaluation import robustness as rb

STEPS = [0, 50, 100, 200]
AR = [0.0, 0.25, 0.75, 0.5]
# trapezoids: 50 * 0.125 + 50 * 0.5 + 100 * 0.625 = 6.25 + 25 + 62.5 = 93.75 over 200 steps
AUC = 93.75 / 200


def test_max_final_and_area_of_a_rate_curve():
  assert rb.max_success(STEPS, AR) == (0.75, 100)
  assert rb.final_success(AR) == 0.5
  assert rb.area_under_curve(STEPS, AR) == pytest.approx(AUC)
  assert rb.area_under_curve(STEPS, AR, budget=200) == pytest.approx(93.75 / 200)
  assert math.isnan(rb.area_under_curve(STEPS, AR, budget=400))     # stopped at 200 of 400: no area
  assert rb.area_under_curve([0], [0.3]) == 0.3
  assert rb.area_under_curve(STEPS, [0.2] * 4) == pytest.approx(0.2)      # a flat curve: its value


def test_steps_to_half_first_eval_step_or_interpolated():
  # reference 0.8: threshold 0.4, first reached at step 100 (0.75); the line from (50, 0.25)
  # to (100, 0.75) crosses 0.4 at 50 + 0.15 / 0.5 * 50 = 65.
  assert rb.steps_to_half(STEPS, AR, 0.8) == 100
  assert rb.steps_to_half(STEPS, AR, 0.8, interpolate=True) == pytest.approx(65.0)
  assert rb.steps_to_half(STEPS, AR, 0.5) == 50                           # 0.25 >= 0.25: at the point
  assert rb.steps_to_half(STEPS, AR, 0.5, interpolate=True) == 50
  assert rb.steps_to_half(STEPS, [0.5, 0.6, 0.7, 0.8], 0.8, interpolate=True) == 0
  assert rb.steps_to_half(STEPS, AR, 2.0) is None                         # never reaches 1.0
  for undefined in (None, 0.0, -1.0, math.nan):
    assert rb.steps_to_half(STEPS, AR, undefined) is None


def test_summarize_a_rate_curve_with_utility():
  fd = [10.0, 12.0, 15.0, 11.0]
  s = rb.summarize(STEPS, AR, reference=0.8, utility=fd)
  assert s["direction"] == rb.HIGHER
  assert (s["max"], s["max_step"], s["final"], s["steps_to_half"]) == (0.75, 100, 0.5, 100)
  assert s["auc"] == pytest.approx(AUC)
  assert s["auc_relative"] == pytest.approx(AUC / 0.8)
  assert s["reference"] == 0.8 and s["steps_to_half_interpolated"] is False
  assert s["utility"] == {"start": 10.0, "end": 11.0, "max": 15.0, "max_step": 100}
  assert rb.summarize(STEPS, AR, reference=None)["auc_relative"] is None


def test_nll_success_is_the_drop_from_step_zero():
  nll = [8.0, 7.0, 5.0, 6.0]                                 # drops 0, 1, 3, 2 bits/dim
  np.testing.assert_allclose(rb.success(nll, rb.LOWER), [0.0, 1.0, 3.0, 2.0])
  ref = rb.reference_success(4.0, rb.LOWER, start=nll[0])    # the pretrained model: 4 bits/dim
  assert ref == 4.0
  assert rb.reference_success(0.9, rb.HIGHER, start=None) == 0.9
  assert rb.reference_success(None, rb.HIGHER, start=None) is None
  s = rb.summarize(STEPS, nll, reference=ref, direction=rb.DIRECTIONS["nll_forget"], interpolate=True)
  # threshold 2: between (50, 1) and (100, 3): 50 + 1 / 2 * 50 = 75
  assert (s["max"], s["max_step"], s["final"], s["steps_to_half"]) == (3.0, 100, 2.0, 75.0)
  # trapezoids of the drops: 25 + 100 + 250 = 375 over 200 steps
  assert s["auc"] == pytest.approx(375 / 200)


def test_nan_points_are_skipped_except_final():
  ar = [math.nan, 0.25, math.nan, 0.5]
  assert rb.max_success(STEPS, ar) == (0.5, 200)
  assert rb.area_under_curve(STEPS, ar) == pytest.approx(0.375)          # (50, .25)-(200, .5) over 150
  assert rb.steps_to_half(STEPS, ar, 0.8, interpolate=True) == pytest.approx(50 + 0.15 / 0.25 * 150)
  assert math.isnan(rb.final_success([0.1, math.nan]))
  top, at = rb.max_success([0], [math.nan])
  assert math.isnan(top) and at is None


def test_bad_curves_are_refused():
  with pytest.raises(ValueError, match="one value per step"):
    rb.max_success([0, 1], [0.5])
  with pytest.raises(ValueError, match="increase"):
    rb.area_under_curve([0, 100, 50], [0.1, 0.2, 0.3])
  with pytest.raises(ValueError, match="direction"):
    rb.success([1.0], "sideways")
