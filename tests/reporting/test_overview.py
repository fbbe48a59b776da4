"""The report's figures and TensorBoard output (`reporting.overview`) and Wilson's interval."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from unlearn_jax import events
from unlearn_jax import training
from unlearn_jax.evaluation.rates import wilson_interval
from unlearn_jax.reporting import overview
from unlearn_jax.reporting import results as results_lib


def test_wilson_interval_matches_hand_values():
  # p = 0.15625, n = 320: centre (p + z^2/2n) / (1 + z^2/n), half z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)
  z = 1.959963984540054
  p, n = 0.15625, 320
  c = (p + z * z / (2 * n)) / (1 + z * z / n)
  h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  assert wilson_interval(p, n) == pytest.approx((c - h, c + h))
  lo, hi = wilson_interval(0.0, 500)            # nothing seen: 0 .. z^2 / (n + z^2)
  assert lo == pytest.approx(0.0, abs=1e-15) and hi == pytest.approx(z * z / (500 + z * z))
  lo, hi = wilson_interval(1.0, 64)
  assert hi == pytest.approx(1.0) and lo == pytest.approx(64 / (64 + z * z))
  assert all(np.isnan(wilson_interval(0.5, 0)))


def test_rate_intervals_use_num_samples():
  e = {"ar_mu": 0.25, "ar_cl": float("nan"), "num_samples": 40}
  out = results_lib.rate_intervals(e)
  assert list(out) == ["ar_mu_ci95"] and out["ar_mu_ci95"] == pytest.approx(list(wilson_interval(0.25, 40)))
  assert results_lib.rate_intervals({"ar_mu": 0.25}) == {}
  # UnlearnCanvas' UA / IRA / CRA each on the images it counts; a nudity entry's flagged share on its images
  canvas = {"ua": 0.5, "ira": 0.75, "cra": 1.0, "n_forget": 8, "n_retain": 24, "n_cra": 32, "num_samples": 32}
  out = results_lib.rate_intervals(canvas)
  assert out == {"ua_ci95": pytest.approx(list(wilson_interval(0.5, 8))),
                 "ira_ci95": pytest.approx(list(wilson_interval(0.75, 24))),
                 "cra_ci95": pytest.approx(list(wilson_interval(1.0, 32)))}
  nud = {"nudity": {"flagged_share": 0.3, "images": 10, "total": 7}}
  out = results_lib.rate_intervals(nud)
  assert out["nudity"] == {"flagged_share": 0.3, "images": 10, "total": 7,
                           "flagged_share_ci95": pytest.approx(list(wilson_interval(0.3, 10)))}
  assert "flagged_share_ci95" not in nud["nudity"]                       # the entry itself is left as it was


def _results(tmp_path):
  grid = tmp_path / "evaluate" / "a_samples.png"
  grid.parent.mkdir()
  Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(grid)
  models = {"a": {"unlearning_ratio": 0.2, "num_samples": 100, "class_histogram": [10, 20, 70], "histogram_tv": 0.3,
                  "samples_png": "evaluate/a_samples.png", "unlearn_steps": 5, "nll": {"retain": 3.0}},
            "b": {"unlearning_ratio": 0.0, "num_samples": 100, "class_histogram": [50, 50, 0], "histogram_tv": 0.1,
                  "samples_png": "evaluate/missing.png"}}
  for m in models.values():
    m.update(results_lib.rate_intervals(m))
  return {"models": models, "forget_classes": [2]}


def test_figures_written_and_linked(tmp_path):
  stage = tmp_path / "a"
  stage.mkdir()
  for s in (1, 2):
    training.append_history(str(stage), s, {"loss/forget": 1.0 / s, "param_norm": 3.0})
  lines = overview.figures_section(_results(tmp_path), str(tmp_path), {"a": str(stage), "b": str(tmp_path / "b")},
                                   ["x", "y", "z"], {"a": "A"})
  for f in ("class_histograms.png", "loss_curves.png", "tradeoff.png"):
    assert os.path.getsize(tmp_path / "figures" / f) > 1000
    assert any(f"(figures/{f})" in l for l in lines)
  assert lines[1] == "## Figures"


def test_no_figures_without_data(tmp_path):
  assert overview.figures_section({"models": {"a": {"fid": 3.0}}}, str(tmp_path), {}, []) == []
  assert not os.path.exists(tmp_path / "figures")


def test_tensorboard_gets_metrics_grids_hparams_and_report(tmp_path):
  res = _results(tmp_path)
  (tmp_path / "a").mkdir()
  (tmp_path / "b").mkdir()
  for _ in range(2):                    # a rerun of the report replaces, never appends
    overview.tensorboard(res, str(tmp_path), {"a": {"stage.steps": 5, "salun.beta": 1.0}}, str(tmp_path / "report"),
                         "# report", json.dumps({"seed": 0}))
  got = events.read(str(tmp_path / "a"))
  tags = {t: (s, v) for s, t, v in got}
  assert tags["eval/unlearning_ratio"] == (5, pytest.approx(0.2))
  assert tags["eval/nll/retain"][1] == 3.0 and "eval/unlearning_ratio_ci95" not in tags
  assert isinstance(tags["eval/samples"][1], bytes)
  hp = tags["_hparams_/session_start_info"][1].hparams
  assert hp["stage.steps"].number_value == 5 and hp["salun.beta"].number_value == 1.0
  assert "eval/samples" not in {t for _, t, _ in events.read(str(tmp_path / "b"))}   # its grid is missing
  rep = {t: v for _, t, v in events.read(str(tmp_path / "report"))}
  assert rep["report"] == "# report" and '"seed": 0' in rep["config"]
  assert len(os.listdir(tmp_path / "a")) == 1
