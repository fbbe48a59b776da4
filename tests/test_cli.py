"""Every user mistake ends with one `error:` line naming the field, exit status 2, and an untouched workdir."""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from unlearn_jax import experiment as exp_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _snapshot(d):
  out = {}
  for root, _, files in os.walk(d):
    for f in files:
      p = os.path.join(root, f)
      out[os.path.relpath(p, d)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
  return out


# Through the real command line (a subprocess each): the flag parser's mistakes, and a few of
# the pipeline's checks to show the whole path (one `error:` line, exit status 2, no write).
CASES = [
    ("sgu_toy.py", ["--config.data.name=imagenet"], "config.data.name='imagenet'"),
    ("sgu_toy.py", ["--config.stages.sgu_obtuse.init=/nonexistent/standard"],
     "config.stages.sgu_obtuse.init='/nonexistent/standard'"),
    ("sgu_mnist.py:cpu", ["--config.data.image_size=15"], "config.data.image_size=(15, 15, 1)"),
    # flag-parsing mistakes (absl / ml_collections): one line, not a traceback
    ("sgu_toy.py", ["--config.sgu.alpah=0.5"], "config.sgu.alpah='0.5' is not valid: expected a field of "
     "config.sgu: alpha"),
    ("sgu_mnist.py:gpu", [], "--config='configs/sgu_mnist.py:gpu' is not valid: unknown config argument 'gpu'"),
    ("sgu_toy.py", ["--config.sgu.alpha=abc"], "config.sgu.alpha='abc' is not valid: expected a value of type float"),
    ("nope.py", [], "--config='configs/nope.py' is not valid: expected a config file"),
]
# The same checks in process (what main prints is str(UserError)): (config, arg, overrides, message).
CASES_IN_PROCESS = [
    ("sgu_toy.py", None, {"model.name": "transformer"}, "config.model.name='transformer'"),
    ("sgu_toy.py", None, {"stages.sgu_obtuse.method": "erase"}, "config.stages.sgu_obtuse.method='erase'"),
    ("sgu_toy.py", None, {"stages.sgu_obtuse.variant": "acute"}, "config.stages.sgu_obtuse.variant='acute'"),
    ("sgu_toy.py", None, {"sde.name": "vxsde"}, "config.sde.name='vxsde'"),
    ("sgu_mnist.py", "cpu", {"data.forget_classes": (12,)}, "config.data.forget_classes=(12,)"),
    ("sgu_toy.py", None, {"sgu.alpha": 1.5}, "config.sgu.alpha=1.5"),
    ("sgu_toy.py", None, {"sgu.alpha": -0.2}, "config.sgu.alpha=-0.2"),
    ("sgu_mnist.py", "cpu", {"data.num_channels": 3}, "config.data.num_channels=3"),
    ("sgu_toy.py", None, {"training.batch_size": 0}, "config.training.batch_size=0"),
    ("sgu_toy.py", None, {"stages.sgu_obtuse.decay": "linear"}, "config.stages.sgu_obtuse.decay='linear'"),
    ("sgu_toy.py", None, {"sgu.max_std": -1.0}, "config.sgu.max_std=-1.0"),
    ("sgu_toy.py", None, {"training.weighting": "vlb"}, "config.training.weighting='vlb'"),
    ("sgu_toy.py", None, {"sgu.orthogonal_form": "dot"}, "config.sgu.orthogonal_form='dot'"),
    # a stage's batch size: 0 is config.training's, a negative one is named before any write
    ("sgu_toy.py", None, {"stages.sgu_obtuse.batch_size": -2}, "config.stages.sgu_obtuse.batch_size=-2"),
]


@pytest.mark.parametrize("config,args,expected", CASES, ids=[(c[1] or [c[0]])[0].lstrip("-")[:40] for c in CASES])
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
  # every checkpoint of the pretrained stage truncated on disk: one error line, exit 2, and no
  # traceback (orbax's async threads once printed "Event loop is closed" ones at exit)
  os.remove(os.path.join(pre, "standard", "DONE.json"))
  for step in os.listdir(pre / "standard" / "checkpoints"):
    with open(_largest_file(os.path.join(pre, "standard", "checkpoints", step)), "r+b") as f:
      f.truncate(100)
  bad = subprocess.run([sys.executable, "-m", "unlearn_jax.main", "--config=configs/sgu_toy.py", f"--workdir={pre}",
                        "--config.stage_order=('standard',)", "--config.stages.standard.steps=2"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2, bad.stderr[-2000:]
  lines = bad.stderr.strip().splitlines()
  assert lines[-1].startswith("error: checkpoint=") and "does not restore" in lines[-1], lines[-1]
  assert "Traceback" not in bad.stderr and "Event loop is closed" not in bad.stderr, bad.stderr[-3000:]
  assert sum(l.startswith("error") for l in lines) == 1


@pytest.mark.parametrize("config,arg,overrides,expected", CASES_IN_PROCESS,
                         ids=[next(iter(c[2])) for c in CASES_IN_PROCESS])
def test_user_error_cases_in_process(tmp_path, config, arg, overrides, expected):
  from unlearn_jax import pipeline
  from unlearn_jax.errors import UserError
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "results.json").write_text('{"keep": true}')
  (workdir / "standard").mkdir()
  (workdir / "standard" / "DONE.json").write_text("{}")
  before = _snapshot(workdir)
  with pytest.raises(UserError) as e:
    pipeline.run(_config(config, arg, **overrides), str(workdir))
  line = str(e.value)
  assert expected in line and ("expected" in line or "must" in line), line
  assert "\n" not in line
  assert _snapshot(workdir) == before


# ----------------------------------------------------------------------------
# The pipeline's own checks, in process (no subprocess per case): pipeline.run raises the
# UserError that main prints as its one line, before anything in the workdir changes.
# ----------------------------------------------------------------------------
def _config(name, arg=None, **overrides):
  import importlib.util
  spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(REPO, "configs", name))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(arg)
  for path, value in overrides.items():
    *parents, leaf = path.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def _tiny_toy(**overrides):
  return _config("sgu_toy.py", **{"stage_order": ("standard",), "stages.standard.steps": 3,
                                  "training.ckpt_every": 1, "training.max_to_keep": 5, "training.batch_size": 32,
                                  "training.log_every": 1, "data.toy_num_samples": 400, **overrides})


INPROCESS = [
    ({"eval.num_samples": -5}, "config.eval.num_samples"),
    ({"optim.lr": -0.1}, "config.optim.lr"),
    ({"shs.sparsity": 1.5}, "config.shs.sparsity"),
    ({"sa.fisher_t": 1}, "config.sa.fisher_t"),
    ({"sa.fisher_samples": 0}, "config.sa.fisher_samples"),
    ({"training.batch_size": -4}, "config.training.batch_size"),
    ({"stages.sgu_obtuse.batch_size": -2}, "config.stages.sgu_obtuse.batch_size"),
    ({"stages.sgu_obtuse.ema_rate": 1.0}, "config.stages.sgu_obtuse.ema_rate"),
    ({"stages.sgu_obtuse.lr": 0.0}, "config.stages.sgu_obtuse.lr"),
    ({"model.ema_rate": -0.5}, "config.model.ema_rate"),
    ({"eval.nll.rtol": 0.0}, "config.eval.nll.rtol"),
    ({"eval.sampler.n_steps": 0}, "config.eval.sampler.n_steps"),
    ({"model.ch_mult": (1, 0)}, "config.model.ch_mult"),
    ({"sde.sigma_max": 0.001}, "config.sde.sigma_max"),
    ({"seed": -1}, "config.seed"),
]


@pytest.mark.parametrize("overrides,field", INPROCESS, ids=[next(iter(o)) for o, _ in INPROCESS])
def test_user_error_in_process(tmp_path, overrides, field):
  from unlearn_jax import pipeline
  from unlearn_jax.errors import UserError
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "results.json").write_text('{"keep": true}')
  before = _snapshot(workdir)
  with pytest.raises(UserError) as e:
    pipeline.run(_config("sgu_toy.py", **overrides), str(workdir))
  assert e.value.field == field, str(e.value)
  assert str(e.value).startswith(f"{field}=") and "expected" in str(e.value), str(e.value)
  assert _snapshot(workdir) == before


@pytest.mark.parametrize("value", [5000, 0])
def test_esd_ddim_steps_beyond_the_process_levels_is_a_user_error_before_any_write(tmp_path, value):
  from unlearn_jax import pipeline
  from unlearn_jax.errors import UserError
  workdir = tmp_path / "w"
  workdir.mkdir()
  before = _snapshot(workdir)
  with pytest.raises(UserError) as e:
    pipeline.run(_config("compare_digits.py", **{"esd.ddim_steps": value}), str(workdir))
  assert e.value.field == "config.esd.ddim_steps", str(e.value)
  assert _snapshot(workdir) == before


def test_stage_batch_size_zero_is_config_trainings():
  from unlearn_jax import pipeline
  pipeline.build_experiment(_config("sgu_toy.py", **{"stages.sgu_obtuse.batch_size": 0}))


def _largest_file(d):
  files = [os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs]
  return max(files, key=os.path.getsize)


def _leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_rerun_with_another_config_and_truncated_checkpoints(tmp_path):
  """A rerun with another config is refused naming the fields and stages, before anything
  changes; a truncated latest checkpoint is skipped (resume from the one before, to the
  same result); with no readable one left, one UserError naming the checkpoint."""
  import shutil
  from unlearn_jax import checkpoints, pipeline
  from unlearn_jax.errors import UserError
  workdir = str(tmp_path / "w")
  pipeline.run(_tiny_toy(), workdir)
  exp = pipeline.build_experiment(_tiny_toy())
  std = os.path.join(workdir, "standard")
  done = exp_lib.load_params(exp, std)

  before = _snapshot(workdir)
  with pytest.raises(UserError) as e:
    pipeline.run(_tiny_toy(**{"model.hidden": 64}), workdir)
  assert e.value.field == "--workdir" and "config.model.hidden is 128 there, 64 now" in str(e.value), str(e.value)
  assert "stages concerned: standard" in str(e.value) and "another --workdir" in str(e.value)
  with pytest.raises(UserError) as e:
    pipeline.run(_tiny_toy(**{"stages.standard.steps": 4}), workdir)
  assert "config.stages.standard.steps is 3 there, 4 now" in str(e.value), str(e.value)
  assert _snapshot(workdir) == before
  pipeline.run(_tiny_toy(**{"training.log_every": 2}), workdir)       # cadence may differ

  # a finished stage's final checkpoint truncated: named, no silent fallback to step 2
  os.remove(os.path.join(std, checkpoints.DONE))
  shutil.copytree(std, std + "_copy")
  with open(_largest_file(os.path.join(std, "checkpoints", "3")), "r+b") as f:
    f.truncate(1000)
  with pytest.raises(UserError) as e:
    exp_lib.load_params(exp, std)
  assert e.value.field == "checkpoint" and e.value.value.endswith(os.path.join("standard", "checkpoints", "3"))
  # resuming: falls back to step 2 (moving step 3 aside), retrains step 3 to the same weights
  pipeline.run(_tiny_toy(), workdir)
  assert os.path.isdir(os.path.join(std, checkpoints.CORRUPT_DIR, "3"))
  for x, y in zip(_leaves(done), _leaves(exp_lib.load_params(exp, std)), strict=True):
    np.testing.assert_array_equal(x, y)

  # every checkpoint unreadable: one error naming the latest, nothing moved
  shutil.rmtree(std)
  shutil.copytree(std + "_copy", std)
  for step in ("1", "2", "3"):
    with open(_largest_file(os.path.join(std, "checkpoints", step)), "r+b") as f:
      f.truncate(1000)
  before = _snapshot(std)
  with pytest.raises(UserError) as e:
    pipeline.run(_tiny_toy(), workdir)
  assert e.value.field == "checkpoint" and e.value.value.endswith(os.path.join("checkpoints", "3")), str(e.value)
  assert len(str(e.value).splitlines()) == 1 and _snapshot(std) == before
