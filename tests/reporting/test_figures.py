"""`reporting.figures`: curve CSV round trip and plots."""
from __future__ import annotations

import os

import numpy as np
import pytest

from unlearn_jax.reporting import figures


def test_curve_csv_round_trip(tmp_path):
  path = str(tmp_path / "curves" / "ar_dimra.csv")
  steps = np.array([0, 10, 20, 30])
  columns = {"sgu": [0.1, 0.2, 0.35, 1 / 3], "esd": [0.0, float("nan"), 0.5, 0.9]}
  figures.write_curve_csv(path, steps, columns)
  assert sorted(os.listdir(os.path.dirname(path))) == ["ar_dimra.csv"]
  with open(path) as f:
    assert f.readline().strip() == "step,sgu,esd"
  got_steps, got = figures.read_curve_csv(path)
  np.testing.assert_array_equal(got_steps, steps)
  assert list(got) == ["sgu", "esd"]
  for name, values in columns.items():
    np.testing.assert_array_equal(got[name], np.asarray(values))


def test_curve_csv_rejects_bad_input(tmp_path):
  path = str(tmp_path / "c.csv")
  with pytest.raises(ValueError):
    figures.write_curve_csv(path, [0, 1], {"a": [1.0]})
  with pytest.raises(ValueError):
    figures.write_curve_csv(path, [0, 1], {"a,b": [1.0, 2.0]})
  assert not os.path.exists(path) and not os.path.exists(path + ".tmp")


def test_plot_curves_writes_png(tmp_path):
  path = str(tmp_path / "ar_dimra.png")
  curves = {"sgu": ([0, 10, 20], [0.0, 0.3, 0.8]), "esd": ([0, 10, 20], [0.0, 0.6, 0.95])}
  figures.plot_curves(path, curves, title="AR_DiMRA", xlabel="attack step", ylabel="AR",
                      ylim=(0.0, 1.0))
  with open(path, "rb") as f:
    data = f.read()
  assert len(data) > 100
  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  assert os.listdir(tmp_path) == ["ar_dimra.png"]
