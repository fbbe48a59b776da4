"""TensorBoard events without TensorFlow: what is written reads back (ours and TensorBoard's
own reader), a fixed file name is replaced whole, and nothing imports TensorFlow."""
import io
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from unlearn_jax import events

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_scalars_images_text_hparams_round_trip(tmp_path):
  w = events.EventWriter(str(tmp_path))
  img = (np.arange(4 * 6 * 3).reshape(4, 6, 3) * 3).astype(np.uint8)
  w.scalars(7, {"loss": 0.25, "lr": 1e-3})
  w.images(7, {"samples": img})
  w.text(0, "config", "# hi")
  w.hparams({"method": "salun", "lr": 1e-4, "masked": True, "steps": 300})
  w.close()
  got = events.read(str(tmp_path))
  assert [(s, t) for s, t, _ in got] == [(7, "loss"), (7, "lr"), (7, "samples"), (0, "config"),
                                         (0, "_hparams_/session_start_info")]
  assert got[0][2] == 0.25 and abs(got[1][2] - 1e-3) < 1e-9
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(got[2][2]))), img)
  assert got[3][2] == "# hi"
  hp = got[4][2].hparams
  assert hp["method"].string_value == "salun" and hp["lr"].number_value == 1e-4
  assert hp["masked"].bool_value is True and hp["steps"].number_value == 300


def test_tensorboard_reads_the_file(tmp_path):
  from tensorboard.backend.event_processing import event_accumulator
  w = events.EventWriter(str(tmp_path))
  for step in (1, 2, 3):
    w.scalars(step, {"loss": 1.0 / step})
  w.images(3, {"grid": np.zeros((5, 5), np.uint8)})
  w.close()
  acc = event_accumulator.EventAccumulator(str(tmp_path))
  acc.Reload()
  assert [e.value for e in acc.Scalars("loss")] == [1.0, 0.5, np.float32(1 / 3)]
  assert acc.Tags()["images"] == ["grid"]


def test_fixed_name_is_rewritten_and_disabled_writes_nothing(tmp_path):
  for v in (1.0, 2.0):
    w = events.EventWriter(str(tmp_path), filename="events.out.tfevents.report")
    w.scalars(0, {"x": v})
    w.close()
  assert os.listdir(tmp_path) == ["events.out.tfevents.report"]
  assert events.read(str(tmp_path)) == [(0, "x", 2.0)]
  off = events.EventWriter(str(tmp_path / "off"), enabled=False)
  off.scalars(0, {"x": 1.0})
  off.close()
  assert not os.path.exists(tmp_path / "off")


BLOCK_TF = """
import sys
class Block:
  def find_spec(self, name, path=None, target=None):
    if name == "tensorflow" or name.startswith("tensorflow."):
      raise ImportError("tensorflow is blocked in this test")
sys.meta_path.insert(0, Block())
"""


def test_core_paths_need_no_tensorflow(tmp_path):
  """With `import tensorflow` failing: the driver imports, a stage's events are written and the
  bundled MNIST subset loads (the core install has no TensorFlow)."""
  code = BLOCK_TF + f"""
import numpy as np
from unlearn_jax import main, pipeline, training, events, data
w = events.EventWriter({str(tmp_path)!r})
w.scalars(1, {{"loss": 1.0}})
w.close()
assert events.read({str(tmp_path)!r}) == [(1, "loss", 1.0)]
assert "tensorflow" not in sys.modules
print("ok")
"""
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
