"""checkpoints' atomic writes: one helper (`atomic_write`) behind JSON, text and numpy files."""
import json
import math
import os

import numpy as np
import pytest

from unlearn_jax import checkpoints


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
  path = str(tmp_path / "a.json")
  checkpoints.write_json(path, {"x": 1})

  def half(tmp):
    with open(tmp, "w") as f:
      f.write("{\"x\": ")
    raise KeyboardInterrupt          # killed mid-write

  with pytest.raises(KeyboardInterrupt):
    checkpoints.atomic_write(path, half)
  assert checkpoints.read_json(path) == {"x": 1} and os.listdir(tmp_path) == ["a.json"]


def test_numpy_and_text_writers_round_trip(tmp_path):
  a = np.arange(6, dtype=np.float32).reshape(2, 3)
  np.testing.assert_array_equal(np.load(checkpoints.save_npy(str(tmp_path / "a.npy"), a)), a)
  with np.load(checkpoints.save_npz(str(tmp_path / "b.npz"), a=a, b=a + 1)) as z:
    np.testing.assert_array_equal(z["b"], a + 1)
  assert open(checkpoints.write_text(str(tmp_path / "c.md"), "# t\n")).read() == "# t\n"
  assert sorted(os.listdir(tmp_path)) == ["a.npy", "b.npz", "c.md"]       # no temporary left


def test_strict_json_refuses_nan_and_default_json_keeps_it(tmp_path):
  with pytest.raises(ValueError):
    checkpoints.write_json(str(tmp_path / "s.json"), {"v": math.nan}, strict=True)
  assert not os.path.exists(tmp_path / "s.json") and os.listdir(tmp_path) == []
  checkpoints.write_json(str(tmp_path / "l.json"), {"v": math.nan})
  assert math.isnan(json.load(open(tmp_path / "l.json"))["v"])
