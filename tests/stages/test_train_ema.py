"""Each stage kind's EMA (config.stages.<s>.ema_rate): what is evaluated, what an attack
starts from and what its curve measures, and what results.json records."""
import json
import os

import jax
import numpy as np

from unlearn_jax import checkpoints, models, pipeline
from unlearn_jax.errors import UserError
from unlearn_jax import experiment as exp_lib
from unlearn_jax import tasks

from test_dimum_pipeline import tiny_config


def _raw(stage_dir, step=None):
  mngr = checkpoints.manager(stage_dir)
  try:
    return checkpoints.restore_raw(mngr, step)
  finally:
    mngr.close()


def _leaves(tree):
  return [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(tree)]


def _close(a, b):
  for x, y in zip(_leaves(a), _leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def _fingerprint(tree):
  return float(sum(np.sum(x * (i + 1)) for i, x in enumerate(_leaves(tree))))


def test_stage_ema_defaults_attack_init_curve_and_results(tmp_path, monkeypatch):
  c = tiny_config(attack_steps=2)
  c.training.max_to_keep = 5                       # keep every step's checkpoint (ckpt_every=1)
  c.stages.attack_dimum.ema_rate = 0.5             # an explicit rate: the EMA recursion
  seen = []                                        # the weights every AR evaluation samples from
  real = tasks.classes.forget_rates
  monkeypatch.setattr(tasks.classes, "forget_rates",
                      lambda exp, params, *a, **k: seen.append(_fingerprint(params)) or real(exp, params, *a, **k))
  workdir = str(tmp_path)
  pipeline.run(c, workdir)
  exp = pipeline.build_experiment(c)
  d = lambda n: os.path.join(workdir, n)

  # train stage: config.model.ema_rate (0.9) from its random init, evaluated on the EMA.
  p0 = models.init_params(exp.module, jax.random.key(exp_lib.stage_seed(c, "pretrained")), exp.example_shape,
                          conditional=True)
  p1, p2 = _raw(d("pretrained"), 1)["params"], _raw(d("pretrained"), 2)["params"]
  ema = jax.tree_util.tree_map(lambda a, b, e: 0.9 * (0.9 * a + 0.1 * b) + 0.1 * e, p0, p1, p2)
  _close(_raw(d("pretrained"), 2)["ema_params"], ema)
  _close(exp_lib.load_params(exp, d("pretrained")), ema)

  # unlearn stage, ema_rate None: no EMA; its evaluated weights are the trained parameters.
  raw = _raw(d("dimum"))
  for x, y in zip(_leaves(raw["ema_params"]), _leaves(raw["params"])):
    np.testing.assert_array_equal(x, y)
  unlearned = exp_lib.load_params(exp, d("dimum"))
  _close(unlearned, raw["params"])

  # attack (rate 0.5): starts from the unlearned stage's evaluated weights (ema_1 = (p_0 + p_1) / 2).
  a1, a2 = _raw(d("attack_dimum"), 1), _raw(d("attack_dimum"), 2)
  _close(jax.tree_util.tree_map(lambda e, p: 2 * e - p, a1["ema_params"], a1["params"]), unlearned)
  _close(a2["ema_params"], jax.tree_util.tree_map(lambda e, p: 0.5 * e + 0.5 * p, a1["ema_params"], a2["params"]))
  # its curve: step 0 on the unlearned weights, step 2 on the attack's own evaluated weights (EMA).
  assert json.load(open(os.path.join(d("attack_dimum"), "curve.json"))).keys() == {"0", "2"}
  np.testing.assert_allclose(seen[-2:], [_fingerprint(unlearned), _fingerprint(a2["ema_params"])], rtol=1e-5)

  res = json.load(open(os.path.join(workdir, "results.json")))["models"]
  assert (res["pretrained"]["weights"], res["pretrained"]["ema_rate"]) == ("ema", 0.9)
  assert (res["dimum"]["weights"], res["dimum"]["ema_rate"]) == ("params", 0.0)


def test_stage_ema_rate_is_validated():
  c = tiny_config()
  for bad in (1.0, -0.1):
    c.stages.dimum.ema_rate = bad
    try:
      pipeline.build_experiment(c)
    except UserError as e:
      assert e.field == "config.stages.dimum.ema_rate", e
    else:
      raise AssertionError(f"ema_rate={bad} accepted")
  c.stages.dimum.ema_rate = 0.99
  assert exp_lib.stage_ema_rate(c, c.stages.dimum) == 0.99
  c.stages.dimum.ema_rate = None
  assert exp_lib.stage_ema_rate(c, c.stages.dimum) == 0.0
  assert exp_lib.stage_ema_rate(c, c.stages.pretrained) == c.model.ema_rate
