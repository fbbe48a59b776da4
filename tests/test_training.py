"""The train engine: NaN guard, kill-and-resume (1 vs n devices: tests/test_mesh.py)."""
import functools
import os
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax import checkpoints, losses, training
from unlearn_jax import sde as sde_lib
from unlearn_jax import train_state as ts
from unlearn_jax.errors import UserError
from unlearn_jax.unlearning import erasediff, sgu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TinyNet(nn.Module):
  @nn.compact
  def __call__(self, x, t, labels=None, train=False):
    h = nn.swish(nn.Dense(16)(jnp.concatenate([x, t[:, None]], -1)))
    return nn.Dense(x.shape[-1])(h)


def _setup(method=True):
  """method: True / "sgu" (SGU obtuse), "erasediff" (value gap with its inner loop, first-order
  grad g, so the inner gradients shape the update), or False (plain training)."""
  net = TinyNet()
  params = net.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
  transform = {True: sgu.sgu(0.7), "sgu": sgu.sgu(0.7), "erasediff": erasediff.erasediff(0.5), False: None}
  tx = training.make_optimizer(1e-2, warmup=2, method=transform[method])
  objectives = {"retain": training.Objective("retain", losses.denoising_loss)}
  if method == "erasediff":
    objectives["forget"] = training.Objective("forget", losses.denoising_loss, target=erasediff.uniform_target,
                                              value_fn=erasediff.value_gap(2, 0.05, "first_order"))
  elif method:
    objectives["forget"] = training.Objective("forget", losses.obtuse_loss)
  spec = training.StepSpec(apply_fn=net.apply, process=sde_lib.VESDE(sigma_max=5.0), output_type="eps",
                           objectives=objectives)
  return ts.create(params, tx), spec, tx


def _batches(step, nan_at=None):
  r = np.random.default_rng(step)
  x = r.normal(size=(8, 2)).astype(np.float32)
  if nan_at is not None and step >= nan_at:
    x[0, 0] = np.nan
  return {"retain": {"x": x}, "forget": {"x": x[::-1] + 1.0}}


def test_non_finite_params_with_a_finite_loss_stop_the_loop(tmp_path):
  """The loop's own check of the parameters (`param_diagnostics`), not only of the step's
  metrics: a step that writes an Inf into the weights at step 8 (a log step) while every metric
  it returns stays finite stops there, naming only the parameters, and keeps the last good
  checkpoint."""
  state, spec, tx = _setup(False)
  train = functools.partial(training.train_step, spec=spec, tx=tx)

  def step(state, batches, rng, consts=None, **kw):
    new, metrics = train(state, batches, rng, consts, **kw)
    poison = jnp.where(new.step == 8, jnp.inf, 0.0)
    params = jax.tree_util.tree_map(lambda p: p + poison, new.params)
    return new.replace(params=params), metrics

  loop = training.LoopConfig(num_steps=20, batch_size=8, seed=0, log_every=2, ckpt_every=4)
  with pytest.raises(training.TrainingDiverged, match=r"diverged at step 8: non-finite param_norm, params;"):
    training.train_loop(str(tmp_path), state, step, loop, _batches)
  assert checkpoints.latest_step(str(tmp_path)) == 4


def test_example_keys_do_not_depend_on_sharding():
  rng = jax.random.key(5)
  whole = training.example_keys(rng, 6)
  halves = jax.vmap(lambda i: jax.vmap(jax.random.fold_in, (None, 0))(rng, i * 3 + jnp.arange(3)))(jnp.arange(2))
  np.testing.assert_array_equal(jax.random.key_data(whole), jax.random.key_data(halves.reshape(6)))


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path):
  state, spec, tx = _setup()
  loop = training.LoopConfig(num_steps=30, batch_size=8, seed=0, log_every=1, ckpt_every=5)
  with pytest.raises(training.TrainingDiverged, match=r"diverged at step 13: non-finite .*last good checkpoint \(step 10\)"):
    training.train_loop(str(tmp_path), state, functools.partial(training.train_step, spec=spec, tx=tx), loop,
                        functools.partial(_batches, nan_at=12))
  assert checkpoints.latest_step(str(tmp_path)) == 10
  mngr = checkpoints.manager(str(tmp_path))
  restored = checkpoints.restore(mngr, state)
  mngr.close()
  assert int(restored.step) == 10
  assert all(np.all(np.isfinite(l)) for l in jax.tree_util.tree_leaves(restored))


def test_interrupted_loop_resumes_to_identical_state(tmp_path):
  state, spec, tx = _setup()
  step_fn = functools.partial(training.train_step, spec=spec, tx=tx)
  loop = training.LoopConfig(num_steps=20, batch_size=8, seed=0, log_every=5, ckpt_every=5)
  full = training.train_loop(str(tmp_path / "a"), state, step_fn, loop, _batches)

  class Killed(Exception):
    pass

  def kill_at_12(step):
    if step == 12:
      raise Killed()

  with pytest.raises(Killed):
    training.train_loop(str(tmp_path / "b"), state, step_fn, loop, _batches, step_hook=kill_at_12)
  assert checkpoints.latest_step(str(tmp_path / "b")) == 10
  os.remove(tmp_path / "b" / training.COMPILE_FILE)
  resumed = training.train_loop(str(tmp_path / "b"), state, step_fn, loop, _batches)
  for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  # the step is compiled ahead of time: its seconds in compile.json, written again on resume
  times = checkpoints.read_json(str(tmp_path / "b" / training.COMPILE_FILE))
  assert set(times) == {"lower_s", "compile_s"} and times["compile_s"] > 0 and times["lower_s"] > 0
  os.remove(tmp_path / "b" / training.COMPILE_FILE)
  training.train_loop(str(tmp_path / "b"), state, step_fn, loop, _batches)       # finished: nothing to compile
  assert not os.path.exists(tmp_path / "b" / training.COMPILE_FILE)


def _run_main(workdir, *extra, wait=True):
  cmd = [sys.executable, "-m", "unlearn_jax.main", "--config=configs/sgu_toy.py", f"--workdir={workdir}",
         "--config.stage_order=('standard',)", "--config.stages.standard.steps=600",
         "--config.training.ckpt_every=50", "--config.training.log_every=50", *extra]
  if wait:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_sigkill_mid_stage_then_rerun_matches_uninterrupted(tmp_path):
  """A real SIGKILL of `python -m unlearn_jax.main` mid-stage; the rerun resumes to the same parameters."""
  ref = _run_main(tmp_path / "ref")
  assert ref.returncode == 0, ref.stderr[-2000:]
  proc = _run_main(tmp_path / "killed", wait=False)
  deadline = time.time() + 300
  while time.time() < deadline:
    step = checkpoints.latest_step(str(tmp_path / "killed" / "standard"))
    if step is not None and step >= 100 or proc.poll() is not None:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = checkpoints.latest_step(str(tmp_path / "killed" / "standard"))
  assert killed_at is not None and killed_at < 600, "the run was not killed mid-stage"
  assert not checkpoints.is_done(str(tmp_path / "killed" / "standard"))
  again = _run_main(tmp_path / "killed")
  assert again.returncode == 0, again.stderr[-2000:]
  assert "resumed from step" in again.stderr
  raw = []
  for d in ("ref", "killed"):
    mngr = checkpoints.manager(str(tmp_path / d / "standard"))
    raw.append(checkpoints.restore_raw(mngr))
    assert mngr.latest_step() == 600
    mngr.close()
  for a, b in zip(jax.tree_util.tree_leaves(raw[0]), jax.tree_util.tree_leaves(raw[1])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------- schedules and windows


def test_lr_schedule_constant_and_cosine():
  assert training.lr_schedule(1e-3, 0, "constant", 100) == 1e-3
  warm = training.lr_schedule(1e-3, 10, "constant", 100)
  np.testing.assert_allclose([warm(0), warm(5), warm(10), warm(99)], [0.0, 5e-4, 1e-3, 1e-3], rtol=1e-6)
  cos = training.lr_schedule(1e-3, 0, "cosine", 100)
  np.testing.assert_allclose([cos(0), cos(50), cos(100)], [1e-3, 5e-4, 0.0], atol=1e-9)
  wcos = training.lr_schedule(1e-3, 10, "cosine", 110)   # warmup, then cosine over 100 steps
  np.testing.assert_allclose([wcos(0), wcos(10), wcos(60), wcos(110)], [0.0, 1e-3, 5e-4, 0.0], atol=1e-9)
  with pytest.raises(UserError, match="config.optim.decay"):
    training.lr_schedule(1e-3, 0, "linear", 100)


def test_max_std_zeroes_the_weight_above_the_window():
  state, spec, _ = _setup(False)
  keys = training.example_keys(jax.random.key(1), 64)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(64, 2)), jnp.float32)
  batch = {"x": x}
  full = training.Objective("forget", losses.obtuse_loss)
  window = training.Objective("forget", losses.obtuse_loss, max_std=1.0)
  noised, _, _, w_full = training.objective_inputs(state.params, batch, keys, spec, full)
  _, _, _, w_win = training.objective_inputs(state.params, batch, keys, spec, window)
  inside = np.asarray(noised.std).reshape(-1) <= 1.0
  assert 0 < inside.sum() < 64
  np.testing.assert_array_equal(np.asarray(w_win)[inside], np.asarray(w_full)[inside])
  np.testing.assert_array_equal(np.asarray(w_win)[~inside], 0.0)


def test_param_diagnostics_norm_and_finiteness():
  """train_loop's per-log-step check: the global L2 norm over every leaf, finite 0.0 as soon as
  one entry of one leaf is NaN or Inf."""
  tree = {"a": jnp.array([3.0, 0.0]), "b": {"c": jnp.array([[4.0]])}}
  d = jax.device_get(training.param_diagnostics(tree))
  assert d["param_norm"] == pytest.approx(5.0) and d["finite"] == 1.0
  for bad in (jnp.nan, jnp.inf):
    d = jax.device_get(training.param_diagnostics({"a": tree["a"], "b": {"c": jnp.array([[bad]])}}))
    assert d["finite"] == 0.0
