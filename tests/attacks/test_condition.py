"""The condition attacks (`attacks.condition`, `stages.attack.run_condition`) on a tiny
class-conditional DDPM: the UNet's cond_embedding input is backward compatible, the loss is
the ordinary DDPM loss with the label's row replaced, the embedding attack changes only its
new row (its checkpoint holds the rows only; every network leaf stays bit-identical), the condition attack stays in its budget after
every step, a killed attack resumes to the uninterrupted result, and bad settings are
refused before anything is written."""
import dataclasses
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
from unlearn_jax.reporting import results
from unlearn_jax.reporting import robustness
from unlearn_jax.stages import attack as attack_stage
from unlearn_jax.stages import train as train_stage
from unlearn_jax.stages.hooks import Hooks

from test_dimum_pipeline import tiny_config

EPS = 0.02


def attack_config(steps=4):
  """classifier, pretrained (the attacked model: an unlearn stage would only cost compile
  time here), the embedding and condition attacks on it, report."""
  c = tiny_config()
  c.model.ch_mult = (1,)                # one level: half the UNet to compile
  c.training.ckpt_every = 2
  stages = {n: c.stages[n] for n in ("classifier", "pretrained")}
  # the condition attack's model: an unlearned stage whose weights differ from the pretrained ones
  stages["unlearned"] = config_lib.stage("unlearn", method="ga", init="pretrained", steps=1)
  stages["emb"] = config_lib.stage("attack", attack="embedding", init="pretrained", data="forget", steps=steps,
                                   eval_every=2, shots=3, lr=0.05)
  stages["cond"] = config_lib.stage("attack", attack="condition", init="unlearned", data="forget", steps=steps,
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


def _random_params(module, seed, *inputs):
  """`module`'s parameter tree (its shapes by `jax.eval_shape`: nothing to compile) filled with
  random values: kernels N(0, 1/fan_in), GroupNorm scales 1 + N(0, 0.1^2), the rest N(0, 0.3^2)."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), *inputs)["params"]
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = jax.tree_util.keystr(path)
    if "kernel" in name:
      return jnp.asarray(rng.normal(0, 1 / np.sqrt(np.prod(s.shape[:-1])), s.shape), jnp.float32)
    return jnp.asarray((1.0 if "scale" in name else 0.0) + rng.normal(0, 0.1 if "scale" in name else 0.3, s.shape),
                       jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
  """A workdir whose classifier and pretrained stages hold random weights (written as
  `stages.train` writes them: no training or init to compile), the experiment and the
  pretrained weights."""
  d = str(tmp_path_factory.mktemp("prefix"))
  exp = pipeline.build_experiment(attack_config())
  x = jnp.zeros((1,) + exp.example_shape)
  unet = _random_params(exp.module, 0, x, jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
  clf = _random_params(exp.classifier, 1, x)
  _write_stage(exp, os.path.join(d, "classifier"), clf, {"stage": "classifier"})
  _write_stage(exp, os.path.join(d, "pretrained"), unet,
               train_stage.meta(exp, "pretrained", exp.config.stages["pretrained"]))
  _write_stage(exp, os.path.join(d, "unlearned"), _random_params(exp.module, 2, x, jnp.zeros((1,)),
                                                                 jnp.zeros((1,), jnp.int32)),
               train_stage.meta(exp, "unlearned", exp.config.stages["unlearned"]))
  return d, exp, exp_lib.load_params(exp, os.path.join(d, "pretrained"))


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_cond_embedding_is_backward_compatible(prefix):
  _, exp, params = prefix
  k = exp.train.num_classes
  table = models.class_table(params)
  assert table.shape == (k + 1, exp.model_cfg.ch * exp.model_cfg.embed_dim_mult)
  x = jax.random.normal(jax.random.key(1), (3,) + exp.example_shape)
  t = jnp.array([0.1, 0.5, 0.9])
  labels = jnp.array([3, 0, k], jnp.int32)

  @jax.jit
  def outputs(p):
    apply = functools.partial(exp.apply, {"params": p}, x, t)
    return apply(labels), apply(cond_embedding=models.class_table(p)[labels]), apply(None)

  by_label, by_row, null = outputs(params)
  np.testing.assert_allclose(np.asarray(by_row), np.asarray(by_label), rtol=0, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(null[2]), np.asarray(by_label[2]))
  assert not np.allclose(np.asarray(by_label[0]), np.asarray(by_label[1]), atol=1e-3)   # conditions matter
  with pytest.raises(ValueError):
    exp.apply({"params": params}, x, t, labels, cond_embedding=table[labels])


def test_samples_conditioned_on_table_rows_are_those_of_the_labels(prefix):
  _, exp, params = prefix
  n = exp.config.eval.attack_num_samples              # the shape the attacks' samplers compile for
  table = np.asarray(models.class_table(params))
  labels = np.resize(np.array([3, 1, 0], np.int32), n)
  key = jax.random.key(4)
  a = generation.generate(exp, params, n, key, labels=labels)
  b = generation.generate(exp, params, n, key, cond=table[labels])
  np.testing.assert_allclose(b, a, atol=1e-5)
  assert not np.allclose(a[0], a[1], atol=1e-3)          # the conditions matter


def _spec(exp, eps=0.0):
  cfg = exp.config
  return condition.AttackSpec(apply_fn=exp.apply, process=exp.process, output_type=cfg.model.output,
                              forget_labels=tuple(exp.forget_labels), weighting=cfg.training.weighting,
                              reduce=cfg.training.reduce, centered=cfg.data.centered, eps=eps)


def test_the_loss_is_the_ddpm_loss_with_the_labels_rows(prefix):
  _, exp, params = prefix
  ds = exp.streams["forget"]
  batch = {"x": jnp.asarray(ds.images[:4], jnp.float32) / 255.0, "labels": jnp.asarray(ds.labels[:4])}
  keys = training.example_keys(jax.random.key(5), 4)
  spec = training.StepSpec(apply_fn=exp.apply, process=exp.process, output_type="eps",
                           objectives={}, weighting=exp.config.training.weighting, conditional=True,
                           null_label=exp.null_label, centered=exp.config.data.centered)
  objective = training.Objective("forget", functools.partial(losses.denoising_loss,
                                                              reduce=exp.config.training.reduce))

  @jax.jit
  def both(p):
    table = models.class_table(p)
    loss = lambda init: condition.condition_loss(condition.initial_rows(table, exp.forget_labels, init), p,
                                                 batch, keys, _spec(exp))
    return training.objective_loss(p, batch, keys, jax.random.key(0), spec, objective), loss("class"), loss("null")

  want, got, null = both(params)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
  assert float(null) != pytest.approx(float(want))


def _rows(stage_dir):
  return np.asarray(checkpoints.load_raw(stage_dir)["params"]["rows"])


def _check_net(stage_dir, exp, workdir, params, init="pretrained"):
  """The attack's checkpoint holds its rows only, and the attacked stage's weights, which the
  attack read, are still the ones it started from, bit for bit."""
  raw = checkpoints.load_raw(stage_dir)["params"]
  assert set(raw) == {"rows"}
  net = exp_lib.source_params(exp, workdir, init)
  for x, y in zip(_leaves(net), _leaves(params), strict=True):     # every network leaf
    np.testing.assert_array_equal(x, y)


class Killed(Exception):
  pass


def _run(exp, workdir, name, step_hook=None):
  attack_stage.run(exp, name, exp.config.stages[name], workdir, Hooks(step=step_hook))   # dispatches on attack


def test_the_embedding_attack_changes_only_its_new_row_and_resumes(prefix, tmp_path):
  src, exp, params = prefix
  ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
  shutil.copytree(src, ref)
  shutil.copytree(src, run)
  _run(exp, ref, "emb")                               # uninterrupted
  seen = {"n": 0}

  def kill_after_third_step(step):
    seen["n"] += 1
    if seen["n"] == 3:
      raise Killed()

  with pytest.raises(Killed):
    _run(exp, run, "emb", kill_after_third_step)
  stage = os.path.join(run, "emb")
  assert checkpoints.latest_step(stage) == 2 and not checkpoints.is_done(stage)   # ckpt_every=2
  _run(exp, run, "emb")                               # resumes at step 2
  a, b = (json.load(open(os.path.join(d, "emb", "curve.json"))) for d in (ref, run))
  assert a == b and sorted(map(int, b)) == [0, 2, 4]
  np.testing.assert_array_equal(_rows(stage), _rows(os.path.join(ref, "emb")))
  _check_net(stage, exp, run, params)
  table = np.asarray(models.class_table(params))
  emb = _rows(stage)
  assert emb.shape == (len(exp.forget_labels), table.shape[1]) and not np.allclose(emb, table[-1])
  assert checkpoints.is_done(stage) and os.path.exists(os.path.join(stage, "curve.csv"))
  info = json.load(open(os.path.join(stage, "attack.json")))
  assert info["attack"] == "embedding" and info["init"] == "pretrained" and info["data"] == "forget"
  assert info["budget"] == {"steps": 4, "lr": 0.05, "batch_size": 4, "shots": 3, "eps": 0.0, "classes": [], "tokens": 0}
  res = results.collect(exp, run)
  assert res["attacks"]["emb"]["steps"] == [0, 2, 4] and res["attacks"]["emb"]["model"] == "pretrained"


def test_the_condition_attack_keeps_its_budget_after_every_step(prefix, tmp_path):
  src, exp, params = prefix
  run = str(tmp_path / "run")
  shutil.copytree(src, run)
  _run(exp, run, "cond")
  stage = os.path.join(run, "cond")
  unlearned = exp_lib.load_params(exp, os.path.join(src, "unlearned"))
  _check_net(stage, exp, run, unlearned, init="unlearned")
  # centred on the attacked (unlearned) model's rows, not the pretrained model's
  rows0 = np.asarray(models.class_table(unlearned))[list(exp.forget_labels)]
  assert np.max(np.abs(_rows(stage) - rows0)) <= EPS + 1e-6
  pre_rows = np.asarray(models.class_table(params))[list(exp.forget_labels)]
  assert np.max(np.abs(_rows(stage) - pre_rows)) > 10 * EPS
  logged = training.read_history(stage)                # log_every=1: each step's distance
  assert [r["step"] for r in logged] == [1, 2, 3, 4]
  assert all(r["dist_inf"] <= EPS + 1e-6 for r in logged)
  assert logged[0]["dist_inf"] == pytest.approx(EPS, rel=1e-5)   # lr 0.05 > eps: the projection binds
  assert json.load(open(os.path.join(stage, "attack.json")))["budget"]["shots"] == condition.DEFAULT_SHOTS
  # step 0 samples the forgotten class's own row: the attacked model's own AR on the same keys,
  # and reference.json the pretrained model's, on those keys too
  curve = json.load(open(os.path.join(stage, "curve.json")))
  clf, n = exp.task.classifier_params(exp, run), exp.config.eval.attack_num_samples
  key = jax.random.fold_in(jax.random.key(exp_lib.attack_seed(
      exp.config, attack_stage.condition_stage(exp, exp.config.stages["cond"]))), 0)
  r = exp.task.forget_rates(exp, unlearned, clf, n, key)
  assert curve["0"]["ar"] == r["ar"] and curve["0"]["ar_cl"] == r["ar_cl"]
  ref = json.load(open(os.path.join(stage, attack_stage.REFERENCE_FILE)))
  p = exp.task.forget_rates(exp, params, clf, n, key)
  assert ref["pretrained"] == "pretrained" and ref["values"] == {"ar": p["ar"], "ar_cl": p["ar_cl"]}
  assert robustness.result_sha256(stage) == robustness.params_sha256(checkpoints.load_raw(stage)["params"])
  assert robustness.result_sha256(stage) != robustness.result_sha256(os.path.join(src, "unlearned"))
  assert (ref["seed"], ref["num_samples"]) == (json.load(open(os.path.join(stage, "attack.json")))["seed"], n)


def test_condition_attacks_start_at_their_rows_for_each_forgotten_class(prefix):
  # the embedding attack at the null row, the condition attack at each forgotten class's own row,
  # in the order of the forget labels (two classes, not sorted: a row / label mix-up shows)
  _, exp, params = prefix
  exp = dataclasses.replace(exp, forget_labels=(5, 2))
  table = np.asarray(models.class_table(params))
  for name, want in (("emb", table[[-1, -1]]), ("cond", table[[5, 2]])):
    st = attack_stage.condition_stage(exp, exp.config.stages[name])
    _, spec, init = attack_stage.condition_parts(exp, st)
    state, consts = init(params)
    np.testing.assert_array_equal(np.asarray(consts["rows0"]), want)
    np.testing.assert_array_equal(np.asarray(state.params["rows"]), want)
    assert spec.forget_labels == (5, 2)
  labels = jnp.asarray([2, 5, 5, 2])
  np.testing.assert_array_equal(np.asarray(condition.row_index(labels, (5, 2))), [1, 0, 0, 1])


@pytest.mark.parametrize("mutate,field", [
    (lambda c: c.stages.emb.update(attack="textual"), "config.stages.emb.attack"),
    (lambda c: c.stages.emb.update(attack="textual_inversion"), "config.stages.emb.attack"),   # no text encoder
    (lambda c: c.stages.emb.update(attack="prompt_tokens"), "config.stages.emb.attack"),       # no text encoder
    (lambda c: c.stages.emb.update(tokens=3), "config.stages.emb.tokens"),        # only prompt_tokens prepends
    (lambda c: c.stages.cond.update(tokens=-1), "config.stages.cond.tokens"),
    (lambda c: c.stages.cond.update(eps=-0.1), "config.stages.cond.eps"),
    (lambda c: c.stages.emb.update(eps=0.1), "config.stages.emb.eps"),
    (lambda c: c.stages.emb.update(data="retain"), "config.stages.emb.data"),
    (lambda c: c.stages.emb.update(shots=-1), "config.stages.emb.shots"),
    (lambda c: c.stages.emb.update(shots=10 ** 6), "config.stages.emb.shots"),
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

