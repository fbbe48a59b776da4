"""Every user mistake ends with one `error:` line naming the field, exit status 2, and an untouched workdir."""
import hashlib
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _snapshot(d):
  out = {}
  for root, _, files in os.walk(d):
    for f in files:
      p = os.path.join(root, f)
      out[os.path.relpath(p, d)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
  return out


CASES = [
    ("sgu_toy.py", ["--config.data.name=imagenet"], "config.data.name='imagenet'"),
    ("sgu_toy.py", ["--config.model.name=transformer"], "config.model.name='transformer'"),
    ("sgu_toy.py", ["--config.stages.sgu_obtuse.method=erase"], "config.stages.sgu_obtuse.method='erase'"),
    ("sgu_toy.py", ["--config.stages.sgu_obtuse.variant=acute"], "config.stages.sgu_obtuse.variant='acute'"),
    ("sgu_toy.py", ["--config.sde.name=vxsde"], "config.sde.name='vxsde'"),
    ("sgu_mnist.py:cpu", ["--config.data.forget_classes=(12,)"], "config.data.forget_classes=(12,)"),
    ("sgu_toy.py", ["--config.sgu.alpha=1.5"], "config.sgu.alpha=1.5"),
    ("sgu_toy.py", ["--config.sgu.alpha=-0.2"], "config.sgu.alpha=-0.2"),
    ("sgu_toy.py", ["--config.stages.sgu_obtuse.init=/nonexistent/standard"],
     "config.stages.sgu_obtuse.init='/nonexistent/standard'"),
    ("sgu_mnist.py:cpu", ["--config.data.image_size=30"], "config.data.image_size=(30, 30, 1)"),
    ("sgu_mnist.py:cpu", ["--config.data.num_channels=3"], "config.data.num_channels=3"),
    ("sgu_toy.py", ["--config.training.batch_size=0"], "config.training.batch_size=0"),
    ("sgu_toy.py", ["--config.stages.sgu_obtuse.decay=linear"], "config.stages.sgu_obtuse.decay='linear'"),
    ("sgu_toy.py", ["--config.sgu.max_std=-1.0"], "config.sgu.max_std=-1.0"),
    ("sgu_toy.py", ["--config.training.weighting=vlb"], "config.training.weighting='vlb'"),
    ("sgu_toy.py", ["--config.sgu.orthogonal_form=dot"], "config.sgu.orthogonal_form='dot'"),
]


@pytest.mark.parametrize("config,args,expected", CASES, ids=[c[1][0].lstrip("-")[:40] for c in CASES])
def test_user_error(tmp_path, config, args, expected):
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "results.json").write_text('{"keep": true}')
  (workdir / "standard").mkdir()
  (workdir / "standard" / "DONE.json").write_text("{}")
  before = _snapshot(workdir)
  out = subprocess.run([sys.executable, "-m", "unlearn_jax.main", f"--config=configs/{config}",
                        f"--workdir={workdir}", *args], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, out.stderr[-3000:]
  assert "Traceback" not in out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and expected in last, last
  assert "expected" in last or "must" in last
  assert [l for l in out.stderr.splitlines() if l.startswith("error:")] == [last]
  assert _snapshot(workdir) == before


def test_mismatched_checkpoint_image_shape(tmp_path):
  """A pretrained stage directory built for other data is refused before anything is written."""
  pre = tmp_path / "pre"
  ok = subprocess.run([sys.executable, "-m", "unlearn_jax.main", "--config=configs/sgu_toy.py", f"--workdir={pre}",
                       "--config.stage_order=('standard',)", "--config.stages.standard.steps=2"],
                      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert ok.returncode == 0, ok.stderr[-2000:]
  work = tmp_path / "w"
  out = subprocess.run([sys.executable, "-m", "unlearn_jax.main", "--config=configs/sgu_mnist.py:cpu",
                        f"--workdir={work}", f"--config.stages.sgu_obtuse.init={pre / 'standard'}"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, out.stderr[-2000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: config.data.image_size=") and "trained on 2 data" in last, last
  assert not work.exists()
