"""The fine-tuning attacks of issue 15 (`stages.attack`): benign fine-tuning never sees a forget
example, few-shot relearning uses exactly k forget examples, an unconditional VE SDE model is
attacked with AR and the likelihood probe along the curve, attack.json's schema, a killed
attack resumes without recomputing its curve, and their inputs are validated.

The experiments are the tiny 8x8 digits ones of test_dimum_pipeline (class-conditional DDPM)
and an unconditional VE SDE twin, with the linear stub model of test_wiring (nothing trained
before the attack; the classifier has random weights): every batch the attack trains on is
recorded at `data.batch_at_step`."""
import dataclasses
import json
import math
import os

import jax
import numpy as np
import pytest

from unlearn_jax import config_lib, data as data_lib, evaluation, generation, models, pipeline, settings, tasks
from unlearn_jax import sde as sde_lib
from unlearn_jax import validation
from unlearn_jax import experiment as exp_lib
from unlearn_jax.errors import UserError
from unlearn_jax.reporting import robustness
from unlearn_jax.stages import attack as attack_stage
from unlearn_jax.stages import train as train_stage
from unlearn_jax.stages.hooks import Hooks
from test_dimum_pipeline import tiny_config
from test_wiring import LinearModule, linear_params, stub_exp

ATTACKS = ("retain", "test_retain", "benign", "fewshot3")


def conditional_config():
  c = tiny_config()
  c.stages, c.stage_order = config_lib.dimum_stages(
      pretrain_steps=2, unlearn_steps=2, attack_steps=2, eval_every=2, methods=("dimum",), attack_data=ATTACKS)
  c.eval.attack_fd = True
  return c


def unconditional_config():
  """SGU's setting on the digits: an unconditional VE SDE model, PC sampling, tiny NLL settings."""
  c = config_lib.base()
  c.data.update(dict(name="digits", image_size=8, num_channels=1, forget_classes=(3,)))
  c.model.update(dict(ch=8, ch_mult=(1, 2), ema_rate=0.9))
  c.training.update(dict(batch_size=4, log_every=1, ckpt_every=1))
  c.optim.update(dict(lr=1e-3, warmup=0))
  c.classifier.update(dict(features=(8,), dense=16, steps=2, batch_size=8))
  c.eval.update(dict(num_samples=4, fd_num_samples=4, attack_num_samples=4, sample_batch_size=4, grid_size=4))
  c.eval.sampler.update(dict(n_steps=2, corrector="none"))
  c.eval.nll.update(dict(num_examples=2, batch_size=2, rtol=1e-2, atol=1e-2))
  c.stages = dict(classifier=config_lib.stage("classifier"), standard=config_lib.stage("train", steps=2),
                  attack_standard=config_lib.stage("attack", init="standard", data="retain", steps=1, eval_every=1))
  c.stage_order = ("classifier", "standard", "attack_standard")
  return c


@pytest.fixture(scope="module")
def cond_exp():
  return stub_exp(pipeline.build_experiment(conditional_config()), LinearModule())


class Killed(Exception):
  pass


def run_attack(exp, name, workdir, monkeypatch, hooks=Hooks(), scale=1.0, **fields):
  """Runs attack stage `name` of `exp` (with `fields` replaced) on the linear stub model from
  fixed weights (times `scale`) and a random classifier; returns the batches it trained on."""
  st = dataclasses.replace(exp.config.stages[name], **fields)
  params = jax.tree_util.tree_map(lambda p: scale * p, linear_params(exp.train.num_classes))
  clf = models.init_params(exp.classifier, jax.random.key(0), exp.example_shape)
  monkeypatch.setattr(attack_stage, "source_params", lambda *a: params)
  monkeypatch.setattr(train_stage, "source_params", lambda *a: params)
  monkeypatch.setattr(tasks.classes, "classifier_params", lambda *a: clf)
  seen, real = [], data_lib.batch_at_step
  monkeypatch.setattr(data_lib, "batch_at_step", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
  attack_stage.run(exp, name, st, workdir, hooks)
  return seen


def _rows(images):
  return {np.asarray(x, np.float32).tobytes() for x in images}


def _info(workdir, name):
  return json.load(open(os.path.join(workdir, name, attack_stage.INFO_FILE)))


def _curve(workdir, name):
  return json.load(open(os.path.join(workdir, name, attack_stage.CURVE_FILE)))


def test_dimum_stages_names_the_new_attacks():
  c = conditional_config()
  attacks = [n for n in c.stage_order if c.stages[n].kind == "attack"]
  assert attacks == ["attack_dimum", "attack_dimum_test", "attack_dimum_benign", "attack_dimum_fewshot3"]
  assert [(c.stages[n].data, c.stages[n].shots) for n in attacks] == [
      ("retain", 0), ("test_retain", 0), ("benign", 0), ("fewshot", 3)]


def test_benign_finetuning_never_sees_a_forget_example(cond_exp, tmp_path, monkeypatch):
  exp, name = cond_exp, "attack_dimum_benign"
  # the default: the retained classes but the forgotten class's alternative (alt[3] = 4)
  assert int(exp.alt[3]) == 4 and exp_lib.benign_classes(exp) == (0, 1, 2, 5, 6, 7, 8, 9)
  seen = run_attack(exp, name, str(tmp_path), monkeypatch)
  assert len(seen) >= 2
  forget = _rows(data_lib.to_float(np.concatenate([exp.streams["forget"].images, exp.test_forget.images])))
  labels = np.concatenate([b["labels"] for b in seen])
  assert np.isin(labels, (0, 1, 2, 5, 6, 7, 8, 9)).all()
  assert not _rows(np.concatenate([b["x"] for b in seen])) & forget
  assert _info(str(tmp_path), name)["budget"]["classes"] == [0, 1, 2, 5, 6, 7, 8, 9]
  assert _info(str(tmp_path), name)["aux_size"] == int(np.isin(exp.streams["retain"].labels,
                                                               (0, 1, 2, 5, 6, 7, 8, 9)).sum())
  # given classes: the stream holds D_r's examples of those, and attack.json says so
  st = dataclasses.replace(exp.config.stages[name], classes=(0, 7))
  ds = exp_lib.attack_stream(exp, st, str(tmp_path))
  retain = exp.streams["retain"]
  assert len(ds) == int(np.isin(retain.labels, (0, 7)).sum()) and set(ds.labels.tolist()) == {0, 7}
  assert attack_stage.attack_info(exp, name, st)["budget"]["classes"] == [0, 7]


def test_fewshot_uses_exactly_k_forget_examples_and_attack_json(cond_exp, tmp_path, monkeypatch):
  exp, name, k = cond_exp, "attack_dimum_fewshot3", 3
  gens, real_gen = [], generation.generate
  monkeypatch.setattr(generation, "generate", lambda e, p, n, rng, **kw: gens.append(
      (kw.get("labels"), real_gen(e, p, n, rng, **kw))) or gens[-1][1])
  refs, real_ref = [], tasks.classes._retain_reference
  monkeypatch.setattr(tasks.classes, "_retain_reference", lambda *a: refs.append(real_ref(*a)) or refs[-1])
  seen = run_attack(exp, name, str(tmp_path), monkeypatch, steps=3, lr=3e-3, batch_size=2)   # 6 draws: 2 epochs
  seed = exp_lib.forget_draw_seed(exp.config)
  idx = exp_lib.fewshot_indices(len(exp.streams["forget"]), k, seed)
  assert len(set(idx.tolist())) == k
  chosen = _rows(data_lib.to_float(exp.streams["forget"].images[idx]))
  got = _rows(np.concatenate([b["x"] for b in seen]))
  assert got == chosen and len(got) == k                       # exactly these k, nothing else
  np.testing.assert_array_equal(np.concatenate([b["labels"] for b in seen]), 3)   # with their label
  assert _info(str(tmp_path), name)["fewshot_indices"] == idx.tolist()
  # the choice is a function of the draw seed
  np.testing.assert_array_equal(exp_lib.fewshot_indices(len(exp.streams["forget"]), k, seed), idx)
  assert exp_lib.fewshot_indices(len(exp.streams["forget"]), k, seed + 1).tolist() != idx.tolist()
  # attack.json (shared15.md) and the curve's fields
  info = _info(str(tmp_path), name)
  assert set(info) == {"attack", "data", "budget", "seed", "init", "fewshot_indices", "aux_size", "optim"}
  assert info["aux_size"] == k and info["optim"] == {
      "name": exp.config.optim.name, "warmup": exp.config.optim.warmup, "decay": exp.config.optim.decay,
      "grad_clip": exp.config.optim.grad_clip, "cond_drop": exp.config.training.cond_drop, "ema_rate": 0.0}
  assert (info["attack"], info["data"], info["init"]) == ("finetune", "fewshot", "dimum")
  assert info["seed"] == exp_lib.attack_seed(exp.config, dataclasses.replace(exp.config.stages[name], steps=3))
  assert info["budget"] == {"steps": 3, "lr": 3e-3, "batch_size": 2, "shots": 3, "eps": 0.0, "classes": [],
                            "tokens": 0}
  curve = _curve(str(tmp_path), name)
  assert sorted(curve, key=int) == ["0", "2", "3"]
  for p in curve.values():
    assert set(p) == {"ar", "ar_cl", "fd"}            # no likelihood for the discrete DDPM schedule
    assert 0 <= p["ar"] <= 1 and 0 <= p["ar_cl"] <= 1 and p["fd"] >= 0
  # fd: retain-conditioned samples against D_r's n images (their statistics computed once)
  clf, n = tasks.classes.classifier_params(exp, ""), exp.config.eval.attack_num_samples
  # first the pretrained reference (here the same stub weights), then the curve's points
  assert len(refs) == 1 and len(gens) == 2 * (len(curve) + 1)
  reference = json.load(open(os.path.join(tmp_path, name, attack_stage.REFERENCE_FILE)))
  assert reference["values"] == curve["0"]        # same weights, same n and keys: the same numbers
  ref = evaluation.embed(exp.classifier.apply, clf, data_lib.to_float(refs[0]))
  for step, (labels, x) in zip(sorted(curve, key=int), gens[3::2], strict=True):
    assert np.isin(labels, exp.retained_classes).all() and len(x) == n
    fd = evaluation.frechet_distance_from_features(evaluation.embed(exp.classifier.apply, clf, x), ref)
    assert curve[step]["fd"] == pytest.approx(fd, rel=1e-6)
  header = open(os.path.join(tmp_path, name, "curve.csv")).readline().strip()
  assert header == "step,ar_dimra,ar_cl,fd"


def test_attack_images_and_keys_do_not_depend_on_the_attacked_method(cond_exp):
  c = tiny_config()
  c.stages, c.stage_order = config_lib.dimum_stages(
      pretrain_steps=2, unlearn_steps=2, attack_steps=2, eval_every=2, methods=("dimum", "ga"),
      attack_data=("fewshot1", "fewshot3", "condition", "retain"), condition_shots=3, condition_eps=0.1)
  exp = dataclasses.replace(cond_exp, config=settings.of(c))
  info = {n: attack_stage.attack_info(exp, n, exp.config.stages[n]) for n in c.stage_order if n.startswith("attack")}
  for entry in ("_fewshot1", "_fewshot3", "_condition", ""):
    a, b = info[f"attack_dimum{entry}"], info[f"attack_ga{entry}"]
    assert a["seed"] == b["seed"] and a.get("fewshot_indices") == b.get("fewshot_indices")
  k1, k3 = info["attack_dimum_fewshot1"]["fewshot_indices"], info["attack_dimum_fewshot3"]["fewshot_indices"]
  assert len(k1) == 1 and len(k3) == 3 and set(k1) <= set(k3)             # nested
  assert info["attack_ga_condition"]["fewshot_indices"] == k3              # the same 3 forget images
  assert len({info[f"attack_dimum{e}"]["seed"] for e in ("_fewshot1", "_fewshot3", "_condition", "")}) == 4
  # another config seed draws other images
  c.seed += 1
  other = attack_stage.attack_info(dataclasses.replace(exp, config=settings.of(c)), "attack_ga_fewshot3",
                                   exp.config.stages["attack_ga_fewshot3"])
  assert other["fewshot_indices"] != k3 and other["seed"] != info["attack_ga_fewshot3"]["seed"]


def test_the_reference_is_measured_in_the_attack_stage_for_a_pretrained_directory(cond_exp, tmp_path, monkeypatch):
  c = tiny_config()
  pre = str(tmp_path / "elsewhere" / "pretrained")
  c.stages, c.stage_order = config_lib.dimum_stages(pretrain_steps=2, unlearn_steps=2, attack_steps=2, eval_every=2,
                                                    methods=("dimum", "ga"), pretrained=pre)
  exp = dataclasses.replace(cond_exp, config=settings.of(c), compiled={})
  unlearned = linear_params(exp.train.num_classes)
  pretrained = jax.tree_util.tree_map(lambda p: 1.5 * p + 0.1, unlearned)
  loads = []
  weights = lambda e, w, init: loads.append(init) or (pretrained if init == pre else unlearned)
  clf = models.init_params(exp.classifier, jax.random.key(0), exp.example_shape)
  monkeypatch.setattr(attack_stage, "source_params", weights)
  monkeypatch.setattr(train_stage, "source_params", weights)
  monkeypatch.setattr(tasks.classes, "classifier_params", lambda *a: clf)
  rates, real_rates = [], tasks.classes.forget_rates
  monkeypatch.setattr(tasks.classes, "forget_rates", lambda *a: rates.append(a) or real_rates(*a))
  w = str(tmp_path / "w")
  attack_stage.run(exp, "attack_dimum", exp.config.stages["attack_dimum"], w)
  ref = json.load(open(os.path.join(w, "attack_dimum", attack_stage.REFERENCE_FILE)))
  st = exp.config.stages["attack_dimum"]
  seed, n = exp_lib.attack_seed(exp.config, st), exp.config.eval.attack_num_samples
  assert (ref["pretrained"], ref["seed"], ref["num_samples"]) == (pre, seed, n) and loads[0] == pre
  # the pretrained weights, at the keys and n of the curve's step 0
  want = real_rates(exp, pretrained, clf, n, jax.random.fold_in(jax.random.key(seed), 0))
  assert (ref["values"]["ar"], ref["values"]["ar_cl"]) == (want["ar"], want["ar_cl"])
  start = real_rates(exp, unlearned, clf, n, jax.random.fold_in(jax.random.key(seed), 0))
  curve = _curve(w, "attack_dimum")
  assert (curve["0"]["ar"], curve["0"]["ar_cl"]) == (start["ar"], start["ar_cl"])
  keys = [jax.random.key_data(r[4]).tolist() for r in rates[:2]]
  assert keys[0] == keys[1] and rates[0][3] == rates[1][3] == n   # same key and n
  # another method's attack with the same pretrained model, seed and n reuses the measurement
  del rates[:]
  attack_stage.run(exp, "attack_ga", exp.config.stages["attack_ga"], w)
  other = json.load(open(os.path.join(w, "attack_ga", attack_stage.REFERENCE_FILE)))
  assert other["values"] == ref["values"] and other["shared_with"] == "attack_dimum"
  assert len(rates) == len(_curve(w, "attack_ga"))            # the curve's points only
  # and the card compares with it, though results.json knows no pretrained model
  card = robustness.build_card(exp.config, w, {"models": {}}, lambda m: unlearned)
  assert card["attacks"]["attack_dimum"]["summary"]["ar"]["reference"] == ref["values"]["ar"]


def test_unconditional_sde_attack_records_ar_and_forget_nll(cond_exp, tmp_path, monkeypatch):
  c = unconditional_config()
  validation.check_config(c)                # a fine-tuning attack on an unconditional model is valid
  cfg = settings.of(c)                      # its experiment: the same digits data (not loaded again)
  exp = dataclasses.replace(cond_exp, config=cfg, conditional=False, compiled={},
                            process=sde_lib.get_sde(cfg.sde.name, **dataclasses.asdict(cfg.sde)))
  assert tasks.classes.has_likelihood(exp)
  nlls, real_nll = [], tasks.classes.set_nll
  monkeypatch.setattr(tasks.classes, "set_nll",
                      lambda e, p, ds, rng: nlls.append((ds, real_nll(e, p, ds, rng))) or nlls[-1][1])
  rates, real_rates = [], tasks.classes.forget_rates
  monkeypatch.setattr(tasks.classes, "forget_rates", lambda *a: rates.append(real_rates(*a)) or rates[-1])
  run_attack(exp, "attack_standard", str(tmp_path), monkeypatch, scale=0.1)   # a finite NLL from the stub
  curve = _curve(str(tmp_path), "attack_standard")
  assert sorted(curve, key=int) == ["0", "1"]
  # first the reference: "standard" is its own pretrained model, measured at step 0's keys
  reference = json.load(open(os.path.join(tmp_path, "attack_standard", attack_stage.REFERENCE_FILE)))
  assert reference["pretrained"] == "standard" and reference["values"]["nll_forget"] == curve["0"]["nll_forget"]
  assert nlls[0][1] == curve["0"]["nll_forget"] and rates[0]["ar"] == curve["0"]["ar"]
  for step, r, (ds, nll) in zip(("0", "1"), rates[1:], nlls[1:], strict=True):
    p = curve[step]
    # ar: the share of (unconditioned) samples classified as a forgotten class, the unlearning ratio
    pred = evaluation.predict(exp.classifier.apply, tasks.classes.classifier_params(exp, ""), r["samples"])
    assert p["ar"] == evaluation.unlearning_ratio(pred, exp.forget_labels)
    assert math.isnan(p["ar_cl"])
    assert ds is exp.test_forget and p["nll_forget"] == nll and math.isfinite(nll)
    assert p["fd"] >= 0


def test_killed_attack_resumes_without_recomputing_its_curve(cond_exp, tmp_path, monkeypatch):
  exp, name = cond_exp, "attack_dimum_benign"
  calls = []
  real = tasks.classes.forget_rates
  monkeypatch.setattr(tasks.classes, "forget_rates", lambda *a: calls.append(1) or real(*a))
  ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
  run_attack(exp, name, ref, monkeypatch, steps=4)

  def kill_at_3(step):
    if step == 3:
      raise Killed()

  with pytest.raises(Killed):
    run_attack(exp, name, run, monkeypatch, hooks=Hooks(step=kill_at_3), steps=4)
  assert sorted(_curve(run, name), key=int) == ["0", "2"]
  info = open(os.path.join(run, name, attack_stage.INFO_FILE)).read()
  del calls[:]
  run_attack(exp, name, run, monkeypatch, steps=4)
  assert len(calls) == 1                                  # only step 4 is new
  assert _curve(run, name) == _curve(ref, name) and sorted(_curve(run, name), key=int) == ["0", "2", "4"]
  assert open(os.path.join(run, name, attack_stage.INFO_FILE)).read() == info
  a, b = exp_lib.load_params(exp, os.path.join(ref, name)), exp_lib.load_params(exp, os.path.join(run, name))
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _error(c, tmp_path):
  with pytest.raises(UserError) as e:
    pipeline.run(c, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()
  return e.value.field


@pytest.mark.parametrize("name,field,value,bad", [
    ("attack_dimum_benign", "classes", (0, 3), "classes"),          # a forgotten class
    ("attack_dimum_benign", "classes", (10,), "classes"),           # not a class of the data
    ("attack_dimum", "classes", (0,), "classes"),                   # classes only for benign data
    ("attack_dimum_fewshot3", "shots", 0, "shots"),
    ("attack_dimum_fewshot3", "shots", 10 ** 6, "shots"),           # more than |D_f|
    ("attack_dimum", "data", "fewshot5", "data"),
])
def test_attack_inputs_are_validated_before_any_write(name, field, value, bad, tmp_path):
  c = conditional_config()
  c.stages[name][field] = value
  assert _error(c, tmp_path) == f"config.stages.{name}.{bad}"


def test_condition_attacks_need_a_conditional_model(tmp_path):
  c = unconditional_config()
  c.stages.attack_standard.attack = "embedding"
  assert _error(c, tmp_path) == "config.stages.attack_standard.attack"


def test_an_unconditional_run_with_attacks_keeps_its_sgu_report():
  from unlearn_jax.reporting import markdown
  model = {"unlearning_ratio": 0.1, "num_samples": 4, "class_histogram": [1] * 10, "confident_share": 0.8,
           "confidence_threshold": 0.9, "recognised": True, "samples_png": "evaluate/x.png", "histogram_tv": 0.1,
           "retain_histogram_tv": 0.1,
           "nll": {"retain": 3.0, "forget": 3.1, "unit": "bits/dim", "offset": 8.0, "convention": "score_sde"}}
  results = {"experiment": "sgu", "dataset": "digits", "data_source": "test", "forget_classes": [3],
             "forget_class_names": ["3"], "classifier": None, "models": {"standard": model}, "wall_time_s": {},
             "attacks": {"attack_standard": {"model": "standard", "data": "fewshot", "steps": [0, 1],
                                             "ar_dimra": [0.0, 0.25], "ar_cl": [float("nan")] * 2}}}
  md = markdown.render(results, ".", tasks.classes.report_tables)
  assert "SGU paper, Table 2 shape" in md and "DiMUM" not in md


def test_an_attack_on_images_needs_a_classifier_stage_and_one_on_points_does_not(tmp_path):
  c = conditional_config()
  c.stage_order = tuple(n for n in c.stage_order if n != "classifier")
  assert _error(c, tmp_path) == "config.stages.attack_dimum.kind"
  toy = config_lib.base()
  toy.data.update(dict(name="toy_gmm", source="synthetic", image_size=0, num_channels=0, forget_classes=(1,)))
  toy.model.update(dict(name="mlp", hidden=8, num_layers=1))
  toy.stages = dict(standard=config_lib.stage("train", steps=1),
                    attack_standard=config_lib.stage("attack", init="standard", data="fewshot", shots=1, steps=1))
  toy.stage_order = ("standard", "attack_standard")
  validation.check_config(toy)
