"""The DiMUM / DiMRA chain through the pipeline: a DiMRA attack killed mid-way resumes to
the uninterrupted result; mask, synthesize and attack stages validate their inputs."""
import json
import os

import numpy as np
import pytest

from unlearn_jax import checkpoints, config_lib, pipeline
from unlearn_jax.errors import UserError
from unlearn_jax import experiment as exp_lib


def tiny_config(attack_steps=4):
  c = config_lib.ddpm_base()
  c.data.update(dict(name="digits", image_size=8, num_channels=1, forget_classes=(3,)))
  c.model.update(dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0, ema_rate=0.9))
  c.training.update(dict(batch_size=4, log_every=1, ckpt_every=1))
  c.optim.lr = 1e-3
  c.classifier.update(dict(features=(8,), dense=16, steps=2, batch_size=8))
  c.eval.update(dict(num_samples=4, fd_num_samples=6, attack_num_samples=4, sample_batch_size=4, grid_size=10))
  c.eval.sampler.n_steps = 2
  c.stages, c.stage_order = config_lib.dimum_stages(
      pretrain_steps=2, unlearn_steps=2, attack_steps=attack_steps, eval_every=2, methods=("dimum",),
      attack_data=("retain",))
  return c


class Killed(Exception):
  pass


def test_attack_killed_midway_resumes_to_the_same_curve_and_params(tmp_path):
  import shutil

  import jax
  ref_dir, dir_ = str(tmp_path / "ref"), str(tmp_path / "run")
  full = tiny_config()
  prefix = tiny_config()
  prefix.stage_order = ("classifier", "pretrained", "dimum")
  pipeline.run(prefix, ref_dir)
  shutil.copytree(ref_dir, dir_)
  pipeline.run(full, ref_dir)                         # uninterrupted

  steps = {"n": 0}

  def kill_after_third_attack_step(step):
    if os.path.exists(os.path.join(dir_, "attack_dimum", "curve.json")):
      steps["n"] += 1
      if steps["n"] == 3:
        raise Killed()

  with pytest.raises(Killed):
    pipeline.run(full, dir_, step_hook=kill_after_third_attack_step)
  assert not checkpoints.is_done(os.path.join(dir_, "attack_dimum"))
  assert checkpoints.latest_step(os.path.join(dir_, "attack_dimum")) == 3
  pipeline.run(full, dir_)                            # resumes the attack at step 3

  exp = pipeline.build_experiment(full)
  a = exp_lib.load_params(exp, os.path.join(ref_dir, "attack_dimum"))
  b = exp_lib.load_params(exp, os.path.join(dir_, "attack_dimum"))
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  ref = json.load(open(os.path.join(ref_dir, "attack_dimum", "curve.json")))
  got = json.load(open(os.path.join(dir_, "attack_dimum", "curve.json")))
  assert ref == got and sorted(map(int, got)) == [0, 2, 4]
  res = json.load(open(os.path.join(dir_, "results.json")))
  att = res["attacks"]["attack_dimum"]
  assert att["steps"] == [0, 2, 4] and 0.0 <= att["max_ar_dimra"] <= 1.0
  for m in ("pretrained", "dimum"):
    r = res["models"][m]
    assert 0.0 <= r["ar_mu"] <= 1.0 and 0.0 <= r["ar_cl"] <= 1.0 and r["frechet_distance"] >= 0.0
  assert os.path.exists(os.path.join(dir_, "attack_curves_retain.png"))
  assert os.path.exists(os.path.join(dir_, "attack_dimum", "curve.csv"))


def _expect_error(c, field):
  with pytest.raises(UserError) as e:
    pipeline.build_experiment(c)
  assert e.value.field == field, str(e.value)


def test_conditional_stage_inputs_are_validated():
  c = tiny_config()
  c.model.conditional = False
  _expect_error(c, "config.stages.dimum.method")

  c = tiny_config()
  c.stages.attack_dimum.init = "scratch"
  _expect_error(c, "config.stages.attack_dimum.init")

  c = tiny_config()
  c.stages.attack_dimum.data = "nonsense"
  _expect_error(c, "config.stages.attack_dimum.data")

  c = tiny_config()
  c.stage_order = tuple(n for n in c.stage_order if n != "classifier")
  _expect_error(c, "config.stages.attack_dimum.kind")

  c = tiny_config()
  c.unlearn.alternative = "map:3=3"
  _expect_error(c, "config.unlearn.alternative")

  c = tiny_config()
  c.stages.dimum.mask = "nope"
  _expect_error(c, "config.stages.dimum.mask")

  c = tiny_config()
  c.eval.sampler.kind = "pc"
  _expect_error(c, "config.eval.sampler.kind")

  c = tiny_config()
  c.stages.salun_mask = config_lib.stage("mask", method="sfron", init="pretrained")
  c.stages.salun = config_lib.stage("unlearn", method="salun", init="pretrained", steps=1, mask="salun_mask")
  c.stage_order = c.stage_order[:3] + ("salun_mask", "salun") + c.stage_order[3:]
  _expect_error(c, "config.stages.salun.mask")


def erasing_config(methods):
  c = tiny_config()
  c.stages, c.stage_order = config_lib.dimum_stages(
      pretrain_steps=2, unlearn_steps=2, attack_steps=2, eval_every=2, methods=methods, attack_data=("retain",))
  return c


@pytest.mark.parametrize("mutate,field", [
    (lambda c: setattr(c.stages.core, "init", "scratch"), "config.stages.core.init"),
    (lambda c: setattr(c.stages.core, "variant", "bogus"), "config.core.scheme"),
    (lambda c: setattr(c.stages.sa, "mask", ""), "config.stages.sa.mask"),
    (lambda c: setattr(c.stages.shs, "mask", "sa_mask"), "config.stages.shs.mask"),
    (lambda c: setattr(c.sa, "replay", "nonsense"), "config.sa.replay"),
    (lambda c: setattr(c.esd, "base", 3), "config.esd.base"),
    (lambda c: setattr(c.erasediff, "rule", "bogus"), "config.erasediff.rule"),
    (lambda c: setattr(c.erasediff, "grad_form", "bogus"), "config.erasediff.grad_form"),
    (lambda c: setattr(c.ca, "images", "bogus"), "config.ca.images"),
    (lambda c: setattr(c.stages.esd, "variant", "x"), "config.stages.esd.variant"),
])
def test_erasing_method_inputs_are_validated_before_any_write(mutate, field, tmp_path):
  c = erasing_config(("core", "esd", "sa", "shs", "erasediff", "ca"))
  mutate(c)
  with pytest.raises(UserError) as e:
    pipeline.run(c, str(tmp_path / "w"))
  assert e.value.field == field, str(e.value)
  assert not (tmp_path / "w").exists()
