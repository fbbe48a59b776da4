"""The condition attacks (`attacks.condition`, `stages.attack.run_condition`) on a tiny
class-conditional DDPM: the UNet's cond_embedding input is backward compatible, the loss is
the ordinary DDPM loss with the label's row replaced, the embedding attack changes only its
new row (every network leaf bit-identical), the condition attack stays in its budget after
every step, a killed attack resumes to the uninterrupted result, and bad settings are
refused before anything is written."""
import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax import checkpoints, config_lib, generation, losses, models, pipeline, training
from unlearn_jax import experiment as exp_lib
from unlearn_jax.attacks import condition
from unlearn_jax.errors import UserError
from unlearn_jax.stages import train as train_stage

from test_dimum_pipeline import tiny_config

EPS = 0.02


def attack_config(steps=4):
  """classifier, pretrained (the attacked model: an unlearn stage would only cost compile
  time here), the embedding and condition attacks on it, report."""
  c = tiny_config()
  stages = {n: c.stages[n] for n in ("classifier", "pretrained")}
  stages["emb"] = config_lib.stage("attack", attack="embedding", init="pretrained", data="forget", steps=steps,
                                   eval_every=2, shots=3, lr=0.05)
  stages["cond"] = config_lib.stage("attack", attack="condition", init="pretrained", data="forget", steps=steps,
                                    eval_every=2, eps=EPS, lr=0.05)
  stages["report"] = config_lib.stage("report")
  c.stages = stages
  c.stage_order = tuple(stages)
  return c


def _write_stage(exp, stage_dir, params, meta):
  """A finished stage directory holding `params` (as `stages.train` writes one)."""
  mngr = checkpoints.manager(stage_dir)
  try:
    checkpoints.save(mngr, 1, train_stage.edited_state(params))
  finally:
    mngr.close()
  checkpoints.write_json(os.path.join(stage_dir, checkpoints.META), meta)
  checkpoints.write_json(os.path.join(stage_dir, checkpoints.DONE), {"steps": 1, "wall_time_s": 0.0})


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
  """A workdir whose classifier and pretrained stages are written (random weights, the UNet's
  perturbed so that its output depends on the condition: no training to compile), the
  experiment and the pretrained weights."""
  d = str(tmp_path_factory.mktemp("prefix"))
  exp = pipeline.build_experiment(attack_config())
  unet = models.init_params(exp.module, jax.random.key(0), exp.example_shape, conditional=True)
  leaves, tree = jax.tree_util.tree_flatten(unet)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  unet = jax.tree_util.tree_unflatten(tree, [l + 0.3 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])
  clf = models.init_params(exp.classifier, jax.random.key(2), exp.example_shape)
  _write_stage(exp, os.path.join(d, "classifier"), clf, {"stage": "classifier"})
  _write_stage(exp, os.path.join(d, "pretrained"), unet,
               train_stage.meta(exp, "pretrained", exp.config.stages["pretrained"]))
  return d, exp, exp_lib.load_params(exp, os.path.join(d, "pretrained"))


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_cond_embedding_is_backward_compatible(prefix):
  _, exp, params = prefix
  k = exp.train.num_classes
  table = models.class_table(params)
  assert table.shape == (k + 1, exp.model_cfg.ch * exp.model_cfg.embed_dim_mult)
  fresh = models.init_params(exp.module, jax.random.key(0), exp.example_shape, conditional=True)
  assert jax.tree_util.tree_structure(fresh) == jax.tree_util.tree_structure(params)
  x = jax.random.normal(jax.random.key(1), (3,) + exp.example_shape)
  t = jnp.array([0.1, 0.5, 0.9])
  labels = jnp.array([3, 0, k], jnp.int32)
  apply = jax.jit(lambda p, lab, emb: exp.apply({"params": p}, x, t, lab, cond_embedding=emb))
  by_label = apply(params, labels, None)
  by_row = apply(params, None, table[labels])
  np.testing.assert_allclose(np.asarray(by_row), np.asarray(by_label), rtol=0, atol=1e-6)
  null = apply(params, None, None)
  np.testing.assert_array_equal(np.asarray(null[2]), np.asarray(by_label[2]))
  assert not np.allclose(np.asarray(by_label[0]), np.asarray(by_label[1]), atol=1e-3)   # conditions matter
  with pytest.raises(ValueError):
    apply(params, labels, table[labels])


def test_samples_conditioned_on_table_rows_are_those_of_the_labels(prefix):
  _, exp, params = prefix
  table = np.asarray(models.class_table(params))
  labels = np.array([3, 3, 1, 0, 3], np.int32)
  key = jax.random.key(4)
  a = generation.generate(exp, params, 5, key, labels=labels)
  b = generation.generate(exp, params, 5, key, cond=table[labels])
  np.testing.assert_allclose(b, a, atol=1e-5)
  assert not np.allclose(a[0], a[2], atol=1e-3)          # the conditions matter


def _spec(exp, eps=0.0):
  cfg = exp.config
  return condition.AttackSpec(apply_fn=exp.apply, process=exp.process, output_type=cfg.model.output,
                              forget_labels=tuple(exp.forget_labels), weighting=cfg.training.weighting,
                              reduce=cfg.training.reduce, centered=cfg.data.centered, eps=eps)


def _forget_batch(exp, n=4):
  ds = exp.streams["forget"]
  return {"x": jnp.asarray(ds.images[:n], jnp.float32) / 255.0, "labels": jnp.asarray(ds.labels[:n])}


def test_the_loss_is_the_ddpm_loss_with_the_labels_rows(prefix):
  _, exp, params = prefix
  batch = _forget_batch(exp)
  keys = training.example_keys(jax.random.key(5), 4, None)
  spec = training.StepSpec(apply_fn=exp.apply, process=exp.process, output_type="eps",
                           objectives={}, weighting=exp.config.training.weighting, conditional=True,
                           null_label=exp.null_label, centered=exp.config.data.centered)
  objective = training.Objective("forget", functools.partial(losses.denoising_loss,
                                                              reduce=exp.config.training.reduce))
  want = jax.jit(lambda p: training.objective_loss(p, batch, keys, jax.random.key(0), spec, objective))(params)
  loss = jax.jit(lambda rows, p: condition.condition_loss(rows, p, batch, keys, _spec(exp)))
  table = models.class_table(params)
  got = loss(condition.initial_rows(table, exp.forget_labels, "class"), params)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
  null = condition.initial_rows(table, exp.forget_labels, "null")
  assert float(loss(null, params)) != pytest.approx(float(want))


def test_projected_steps_respect_the_budget_and_freeze_the_network(prefix):
  _, exp, params = prefix
  table = models.class_table(params)
  rows0 = condition.initial_rows(table, exp.forget_labels, "class")
  tx = training.make_optimizer(0.05, grad_clip=0.0)
  spec = _spec(exp, eps=EPS)
  step = jax.jit(functools.partial(condition.attack_step, spec=spec, tx=tx, axis_name=None))
  state = condition.init_state(params, rows0, tx)
  batches = {"forget": _forget_batch(exp)}
  for _ in range(3):
    state, m = step(state, batches, jax.random.key(6), {"rows0": rows0})
    dist = np.max(np.abs(np.asarray(state.params["rows"]) - np.asarray(rows0)))
    assert dist <= EPS + 1e-6 and float(m["dist_inf"]) == pytest.approx(dist)
  assert dist == pytest.approx(EPS, rel=1e-5)              # lr 0.05 > eps: the projection binds
  for a, b in zip(_leaves(state.params["net"]), _leaves(params), strict=True):
    np.testing.assert_array_equal(a, b)
  assert int(state.step) == 3


def _rows(stage_dir):
  return np.asarray(checkpoints.load_raw(stage_dir)["params"]["rows"])


class Killed(Exception):
  pass


def test_attacks_through_the_pipeline_resume_and_keep_the_weights(prefix, tmp_path):
  src, exp, params = prefix
  ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
  shutil.copytree(src, ref)
  shutil.copytree(src, run)
  c = attack_config()
  pipeline.run(c, ref)                                 # uninterrupted

  seen = {"n": 0}

  def kill_after_third_step(step):
    if os.path.exists(os.path.join(run, "emb", "curve.json")):
      seen["n"] += 1
      if seen["n"] == 3:
        raise Killed()

  with pytest.raises(Killed):
    pipeline.run(c, run, step_hook=kill_after_third_step)
  assert checkpoints.latest_step(os.path.join(run, "emb")) == 3 and not checkpoints.is_done(os.path.join(run, "emb"))
  pipeline.run(c, run)                                 # resumes emb at step 3, then cond
  for name in ("emb", "cond"):
    a, b = (json.load(open(os.path.join(d, name, "curve.json"))) for d in (ref, run))
    assert a == b and sorted(map(int, b)) == [0, 2, 4]
    np.testing.assert_array_equal(_rows(os.path.join(run, name)), _rows(os.path.join(ref, name)))
    net = checkpoints.load_raw(os.path.join(run, name))["params"]["net"]
    for x, y in zip(_leaves(net), _leaves(params), strict=True):     # every network leaf
      np.testing.assert_array_equal(x, y)

  table = np.asarray(models.class_table(params))
  forget = list(exp.forget_labels)
  emb, cond = _rows(os.path.join(run, "emb")), _rows(os.path.join(run, "cond"))
  assert emb.shape == (len(forget), table.shape[1]) and not np.allclose(emb, table[-1])   # only the new row moved
  assert np.max(np.abs(cond - table[forget])) <= EPS + 1e-6
  info = json.load(open(os.path.join(run, "emb", "attack.json")))
  assert info["attack"] == "embedding" and info["init"] == "pretrained" and info["data"] == "forget"
  assert info["budget"] == {"steps": 4, "lr": 0.05, "batch_size": 4, "shots": 3, "eps": 0.0, "classes": []}
  assert json.load(open(os.path.join(run, "cond", "attack.json")))["budget"]["shots"] == condition.DEFAULT_SHOTS
  res = json.load(open(os.path.join(run, "results.json")))
  assert res["attacks"]["emb"]["steps"] == [0, 2, 4] and res["attacks"]["cond"]["model"] == "pretrained"
  # step 0 of the condition attack samples the forgotten class's own row: the model's own AR
  r = exp.task.forget_rates(exp, params, exp.task.classifier_params(exp, run), exp.config.eval.attack_num_samples,
                            jax.random.fold_in(jax.random.key(exp_lib.stage_seed(exp.config, "cond")), 0))
  assert res["attacks"]["cond"]["ar_dimra"][0] == r["ar"]


@pytest.mark.parametrize("mutate,field", [
    (lambda c: c.stages.emb.update(attack="textual"), "config.stages.emb.attack"),
    (lambda c: c.stages.cond.update(eps=-0.1), "config.stages.cond.eps"),
    (lambda c: c.stages.emb.update(eps=0.1), "config.stages.emb.eps"),
    (lambda c: c.stages.emb.update(data="retain"), "config.stages.emb.data"),
    (lambda c: c.stages.emb.update(shots=-1), "config.stages.emb.shots"),
    (lambda c: c.model.update(conditional=False), "config.stages.emb.kind|config.stages.emb.attack"),
    (lambda c: c.stages.report.update(kind="evaluate", models=("cond",)), "config.stages.report.models"),
    (lambda c: c.stages.cond.update(init="emb"), "config.stages.cond.init"),
])
def test_bad_settings_are_refused_before_any_write(mutate, field, tmp_path):
  c = attack_config()
  mutate(c)
  with pytest.raises(UserError) as e:
    pipeline.run(c, str(tmp_path / "w"))
  assert e.value.field in field.split("|"), str(e.value)
  assert not os.path.exists(tmp_path / "w")

