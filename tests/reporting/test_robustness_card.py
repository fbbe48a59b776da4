"""robustness.json and its report section (`reporting.robustness`), on fixture files: two
attack stages (one with attack.json, one from an older workdir without it), hand-written
results.json entries and tiny parameter trees; the report stage's wiring end to end."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import types

import numpy as np
import pytest

from unlearn_jax import config_lib
from unlearn_jax import settings
from unlearn_jax.errors import UserError
from unlearn_jax.evaluation.rates import wilson_interval
from unlearn_jax.experiment import stage_seed
from unlearn_jax.reporting import robustness
from unlearn_jax.stages import report as report_stage
from unlearn_jax.tasks import classes

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "robustness_section.md")


def _config():
  c = config_lib.digits_ddpm(cpu=True)
  c.stages, c.stage_order = config_lib.dimum_stages(pretrain_steps=10, unlearn_steps=4, attack_steps=200,
                                                    eval_every=50, methods=("salun", "dimum"))
  return settings.of(c)


CFG = _config()
PARAMS = {m: {"dense": {"kernel": np.full((2, 3), v, np.float32), "bias": np.arange(3, dtype=np.float32)}}
          for m, v in (("pretrained", 0.5), ("salun", 0.25), ("dimum", 0.125))}
CLASSIFIER = {"head": np.ones((4,), np.float32)}
RESULTS = {"data_source": "sklearn digits", "forget_classes": [3], "forget_class_names": ["3"],
           "masks": {"salun_mask": {"method": "salun", "kept_fraction": 0.5}},
           "models": {"pretrained": {"ar_mu": 0.8, "frechet_distance": 10.0, "nll": {"forget": 4.0}},
                      "salun": {"ar_mu": 0.0, "frechet_distance": 12.0},
                      "dimum": {"ar_mu": 0.0, "frechet_distance": 11.0}}}
STEPS = [0, 50, 100, 200]
SALUN = {"ar": [0.0, 0.25, 0.75, 0.5], "ar_cl": [1.0, 0.5, 0.25, 0.25], "nll_forget": [8.0, 7.0, 5.0, 6.0],
         "fd": [12.0, 13.0, 15.0, 14.0]}
DIMUM = {"ar": [0.0, 0.0, 0.125, 0.25], "ar_cl": [1.0, 1.0, math.nan, 0.75]}
SALUN_ATTACK = {"attack": "finetune", "data": "retain", "init": "salun", "seed": 7,     # the config's budget
                "budget": {"steps": 200, "lr": CFG.optim.lr, "batch_size": CFG.training.batch_size, "shots": 0,
                           "eps": 0.0, "classes": []}}
#: attack_salun's pretrained reference, measured in the stage (attack_dimum: none, an older workdir)
SALUN_REFERENCE = {"pretrained": "pretrained", "seed": 7, "num_samples": 200, "step": 0,
                   "values": {"ar": 0.6, "ar_cl": 0.0, "fd": 10.0, "nll_forget": 4.5}}
SPLITS = {"train": 1000, "test": 300, "retain": 900, "forget": 100}


def _write(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f)


def _workdir(tmp_path) -> str:
  w = str(tmp_path)
  for name, curve in (("attack_salun", SALUN), ("attack_dimum", DIMUM)):
    _write(os.path.join(w, name, "curve.json"),
           {str(s): {k: v[i] for k, v in curve.items()} for i, s in enumerate(STEPS)})
  _write(os.path.join(w, "attack_salun", "attack.json"), SALUN_ATTACK)     # attack_dimum: none (older)
  _write(os.path.join(w, "attack_salun", "reference.json"), SALUN_REFERENCE)
  return w


def _card(w, **kw):
  return robustness.build_card(CFG, w, RESULTS, PARAMS.__getitem__, classifier_params=CLASSIFIER, splits=SPLITS,
                               **kw)


def test_params_hash_is_sha256_over_leaves_in_tree_order():
  tree = {"b": np.arange(2, dtype=np.float32), "a": np.zeros((1,), np.int32)}
  h = hashlib.sha256()
  for a in (tree["a"], tree["b"]):                        # jax.tree_util: sorted keys
    h.update(f"{a.dtype.str}{a.shape}".encode() + a.tobytes())
  assert robustness.params_sha256(tree) == h.hexdigest()
  assert robustness.params_sha256(copy.deepcopy(tree)) == h.hexdigest()
  changed = {"b": np.array([0.0, 1.5], np.float32), "a": tree["a"]}
  assert robustness.params_sha256(changed) != h.hexdigest()
  assert robustness.params_sha256({"b": tree["b"].astype(np.float64), "a": tree["a"]}) != h.hexdigest()


def test_card_records_identifiers_budgets_curves_and_summaries(tmp_path):
  w = _workdir(tmp_path)
  card = _card(w)
  robustness.check_card(card)
  assert card["version"] == robustness.VERSION and card["experiment"] == CFG.experiment
  assert card["data"] == {"name": "digits", "source": "sklearn digits", "seed": CFG.data.seed,
                          "config_seed": CFG.seed, "forget_classes": [3], "forget_class_names": ["3"],
                          "splits": SPLITS, "sha256": None}
  assert card["pretrained"] == {"pretrained": {
      "params_sha256": robustness.params_sha256(PARAMS["pretrained"]), "success": {"ar": 0.8, "nll_forget": 4.0},
      "reference_source": {"ar": "models.pretrained.ar_mu", "nll_forget": "models.pretrained.nll.forget"}}}
  ev = card["evaluator"]
  assert ev["classifier_stage"] == "classifier" and ev["classifier_sha256"] == robustness.params_sha256(CLASSIFIER)
  assert ev["attack_num_samples"] == CFG.eval.attack_num_samples and "nudity_threshold" not in ev
  assert ev["num_samples"] == CFG.eval.num_samples and ev["sampler"] == dataclasses.asdict(CFG.eval.sampler)

  salun = card["methods"]["salun"]
  assert (salun["method"], salun["pretrained"], salun["params_sha256"]) == \
      ("salun", "pretrained", robustness.params_sha256(PARAMS["salun"]))
  st = CFG.stages["salun"]
  assert salun["unlearn"] == {"steps": 4, "lr": CFG.optim.lr if st.lr is None else st.lr,
                              "batch_size": st.batch_size or CFG.training.batch_size, "mask": "salun_mask",
                              "init": "pretrained", "mask_method": "salun"}
  assert salun["settings"]["salun"] == dataclasses.asdict(CFG.salun)
  assert salun["settings"]["unlearn"] == dataclasses.asdict(CFG.unlearn)
  assert card["methods"]["dimum"]["unlearn"]["mask"] == ""

  a = card["attacks"]["attack_salun"]                     # from attack.json
  assert (a["model"], a["attack"], a["data"], a["seed"], a["source"]) == ("salun", "finetune", "retain", 7,
                                                                          "attack.json")
  assert a["budget"] == SALUN_ATTACK["budget"] and a["complete"] is True
  assert a["curve"] == {"steps": STEPS, **SALUN}
  # the reference measured in the stage (reference.json: AR 0.6), not results.json's evaluation (0.8)
  assert a["reference"] == {"pretrained": "pretrained", "values": SALUN_REFERENCE["values"], "num_samples": 200,
                            "seed": 7, "source": "attack_salun/reference.json"}
  assert a["fewshot_indices"] == [] and (a["aux_size"], a["optim"], a["result_sha256"]) == (None, None, None)
  s = a["summary"]["ar"]                                  # test_robustness's hand computations
  assert (s["max"], s["max_step"], s["final"], s["steps_to_half"], s["reference"]) == (0.75, 100, 0.5, 100, 0.6)
  assert s["auc"] == pytest.approx(93.75 / 200) and s["auc_relative"] == pytest.approx(93.75 / 200 / 0.6)
  assert s["auc_budget"] == 200
  assert s["utility"] == {"start": 12.0, "end": 14.0, "max": 15.0, "max_step": 100}
  n = a["summary"]["nll_forget"]                       # drop 0, 1, 3, 2; pretrained drop 8 - 4.5 = 3.5
  assert (n["direction"], n["max"], n["final"], n["steps_to_half"], n["reference"]) == ("lower", 3.0, 2.0, 100, 3.5)

  d = card["attacks"]["attack_dimum"]                     # no attack.json: DiMRA with the config's budget
  ast = CFG.stages["attack_dimum"]
  assert d["source"].startswith("config") and d["attack"] == "finetune" and d["data"] == "retain"
  assert d["seed"] == stage_seed(CFG, "attack_dimum")
  assert d["budget"] == {"steps": 200, "lr": CFG.optim.lr if ast.lr is None else ast.lr,
                         "batch_size": ast.batch_size or CFG.training.batch_size, "shots": 0, "eps": 0.0,
                         "classes": []}
  assert d["curve"]["ar_cl"] == [1.0, 1.0, None, 0.75]     # NaN -> null
  assert d["reference"] == {"pretrained": "pretrained", "values": {"ar": 0.8, "nll_forget": 4.0}, "num_samples": None,
                            "seed": None, "source": "models.pretrained.ar_mu, models.pretrained.nll.forget"}
  assert d["summary"]["ar"]["reference"] == 0.8
  assert d["summary"]["ar"]["steps_to_half"] is None and d["summary"]["ar"]["max"] == 0.25
  assert "nll_forget" not in d["summary"] and "utility" not in d["summary"]["ar"]
  # 0.3 is crossed between (50, 0.25) and (100, 0.75)
  assert _card(w, interpolate=True)["attacks"]["attack_salun"]["summary"]["ar"]["steps_to_half"] == \
      pytest.approx(55.0)


def test_a_pretrained_directory_gets_its_reference_from_the_attack_stage(tmp_path):
  # pretrained=<dir>: no pretrained stage, so results.json has no entry for it
  c = config_lib.digits_ddpm(cpu=True)
  c.stages, c.stage_order = config_lib.dimum_stages(pretrain_steps=10, unlearn_steps=4, attack_steps=200,
                                                    eval_every=50, methods=("salun",), pretrained="/runs/pre")
  cfg = settings.of(c)
  w = str(tmp_path)
  _write(os.path.join(w, "attack_salun", "curve.json"), {str(s): {"ar": v} for s, v in zip(STEPS, SALUN["ar"])})
  _write(os.path.join(w, "attack_salun", "attack.json"), SALUN_ATTACK)
  results = {k: v for k, v in RESULTS.items() if k != "models"}
  assert robustness.build_card(cfg, w, results, PARAMS.__getitem__)["attacks"]["attack_salun"]["summary"]["ar"][
      "steps_to_half"] is None                           # before: no reference anywhere
  _write(os.path.join(w, "attack_salun", "reference.json"), dict(SALUN_REFERENCE, pretrained="/runs/pre"))
  a = robustness.build_card(cfg, w, results, PARAMS.__getitem__)["attacks"]["attack_salun"]
  assert a["pretrained"] == "/runs/pre" and a["reference"]["values"]["ar"] == 0.6
  assert a["summary"]["ar"]["steps_to_half"] == 100 and a["summary"]["ar"]["auc_relative"] is not None


def test_an_unfinished_curve_has_no_area_and_says_so(tmp_path):
  w = _workdir(tmp_path)
  _write(os.path.join(w, "attack_salun", "curve.json"),          # stopped at 100 of 200 steps
         {str(s): {k: v[i] for k, v in SALUN.items()} for i, s in enumerate(STEPS[:3])})
  _write(os.path.join(w, "attack_salun", "attack.json"), dict(SALUN_ATTACK, fewshot_indices=[4, 9]))
  card = _card(w)
  robustness.check_card(card)
  a = card["attacks"]["attack_salun"]
  assert a["complete"] is False and a["fewshot_indices"] == [4, 9]
  s = a["summary"]["ar"]
  assert s["auc"] is None and s["auc_relative"] is None and s["max"] == 0.75     # not 0.25 * 50 / 100 ...
  assert card["attacks"]["attack_dimum"]["summary"]["ar"]["auc"] == pytest.approx((0.0625 * 50 + 0.1875 * 100) / 200)
  row = [l for l in robustness.report_lines(card, w) if l.startswith("| Salun") or l.startswith("| SalUn")]
  assert "unfinished" in row[1] and "D_f indices [4, 9]" in "\n".join(robustness.report_lines(card, w))


def test_a_card_of_another_version_is_refused_in_one_line(tmp_path):
  card = _card(_workdir(tmp_path))
  path = os.path.join(str(tmp_path), robustness.CARD_FILE)
  robustness.write_card(path, card)
  assert robustness.read_card(path) == json.load(open(path))
  _write(path, dict(card, version=1))                  # written by the previous schema
  with pytest.raises(UserError) as e:
    robustness.read_card(path)
  assert "version=1" in str(e.value) and "\n" not in str(e.value) and str(robustness.VERSION) in str(e.value)


def test_data_hash_names_the_images_and_labels(tmp_path):
  ds = types.SimpleNamespace(images=np.arange(12, dtype=np.uint8).reshape(3, 2, 2, 1), labels=np.array([0, 1, 2]))
  h = robustness.data_sha256(ds)
  assert h == robustness.data_sha256(copy.deepcopy(ds)) and len(h) == 64
  pixel = copy.deepcopy(ds)
  pixel.images[1, 0, 0, 0] += 1
  label = copy.deepcopy(ds)
  label.labels[2] = 1
  assert len({h, robustness.data_sha256(pixel), robustness.data_sha256(label)}) == 3
  assert robustness.data_sha256(types.SimpleNamespace(images=None, labels=None)) is None
  assert _card(str(tmp_path), data_hash=h)["data"]["sha256"] == h


def test_attacks_with_another_budget_get_their_own_column(tmp_path):
  card = _card(_workdir(tmp_path))
  dimra = "DiMRA on D_r (assumption i)"
  assert robustness.columns_of(card) == {dimra: {"salun": "attack_salun", "dimum": "attack_dimum"}}
  card["attacks"]["attack_salun"]["budget"]["lr"] = 0.0005
  b = card["attacks"]["attack_dimum"]["budget"]
  assert robustness.columns_of(card) == {
      f"{dimra}, 200 steps, lr 0.0005, batch {b['batch_size']}": {"salun": "attack_salun"},
      f"{dimra}, 200 steps, lr {b['lr']:g}, batch {b['batch_size']}": {"dimum": "attack_dimum"}}


def test_schema_names_each_problem(tmp_path):
  card = _card(_workdir(tmp_path))
  assert robustness.schema_problems(card) == []
  bad = copy.deepcopy(card)
  del bad["attacks"]["attack_salun"]["budget"]["steps"]
  bad["evaluator"]["attack_num_samples"] = "500"
  bad["attacks"]["attack_dimum"]["summary"]["ar"]["steps_to_half_interpolated"] = 1
  bad["methods"]["salun"]["unlearn"]["steps"] = True
  with pytest.raises(ValueError) as err:
    robustness.check_card(bad)
  for where in ("card.attacks.attack_salun.budget.steps: missing", "card.evaluator.attack_num_samples: str",
                "card.attacks.attack_dimum.summary.ar.steps_to_half_interpolated: int",
                "card.methods.salun.unlearn.steps: bool"):
    assert where in str(err.value)
  with pytest.raises(ValueError, match="version"):
    robustness.check_card(dict(card, version=robustness.VERSION + 1))


def _fake_exp():
  class DS(list):
    source, class_names = "sklearn digits", tuple("0123456789")
  task = types.SimpleNamespace(NAMED_MODELS=tuple(PARAMS), named_params=lambda exp, m: PARAMS[m],
                               classifier_params=lambda exp, w: CLASSIFIER, finalize=classes.finalize,
                               report_tables=classes.report_tables)
  return types.SimpleNamespace(config=CFG, conditional=True, alt=np.array([0, 1, 2, 4, 4, 5, 6, 7, 8, 9]),
                               forget_labels=(3,), task=task, train=DS(range(12)), test=DS(range(5)),
                               test_forget=DS(range(1)), test_retain=DS(range(4)),
                               streams={"all": DS(range(12)), "retain": DS(range(10)), "forget": DS(range(2))})


def _evaluated(w):
  for m, entry in RESULTS["models"].items():
    _write(os.path.join(w, "evaluate", f"{m}.json"),
           dict(entry, ar_cl=0.125, retain_accuracy=0.75, samples_png=f"evaluate/{m}.png"))


def test_report_stage_writes_the_card_and_its_section(tmp_path):
  w = _workdir(tmp_path)
  _evaluated(w)
  exp = _fake_exp()
  results = report_stage.write(exp, w)
  assert set(results["attacks"]) == {"attack_salun", "attack_dimum"}     # results.json as before
  with open(os.path.join(w, robustness.CARD_FILE)) as f:
    card = json.load(f, parse_constant=lambda c: pytest.fail(f"{c} in robustness.json: not strict JSON"))
  robustness.check_card(card)
  assert card["data"]["splits"] == {"train": 12, "test": 5, "test_forget": 1, "test_retain": 4, "all": 12,
                                    "retain": 10, "forget": 2}
  assert card["methods"]["dimum"]["params_sha256"] == robustness.params_sha256(PARAMS["dimum"])
  with open(os.path.join(w, "report.md")) as f:
    report = f.read()
  section = "\n".join(robustness.report_lines(card, w))
  assert section in report and report.index(section) < report.index("## Samples")
  for png in ("robustness_dimra_on_d_r_assumption_i.png", "robustness_dimra_on_d_r_assumption_i_nll.png"):
    assert f"]({png})" in section and os.path.getsize(os.path.join(w, png)) > 0
  # without attack stages: no card, and report.md is the task's tables alone
  plain = dataclasses.replace(CFG, stage_order=tuple(n for n in CFG.stage_order if not n.startswith("attack")))
  exp.config = plain
  os.remove(os.path.join(w, robustness.CARD_FILE))
  assert report_stage.write_card(exp, w, results) is None and not os.path.exists(os.path.join(w, "robustness.json"))


def test_a_number_that_is_not_one_is_null_with_a_reason_and_not_a_result_in_the_report(tmp_path):
  # a diverged NLL (NaN) and an infinite distance, as SGU-Obtuse's on the toy with component 0
  w = _workdir(tmp_path)
  _evaluated(w)
  for m, key, value in (("pretrained", "nll", {"forget": math.nan, "retain": 3.0}),
                        ("salun", "frechet_distance", math.inf)):
    path = os.path.join(w, "evaluate", f"{m}.json")
    with open(path) as f:
      entry = json.load(f)
    entry[key] = value
    _write(path, entry)
  results = report_stage.write(_fake_exp(), w)
  assert math.isinf(results["models"]["salun"]["frechet_distance"])          # in memory: as measured
  with open(os.path.join(w, "results.json")) as f:
    stored = json.load(f, parse_constant=lambda c: pytest.fail(f"{c} in results.json: not strict JSON"))
  assert stored["models"]["pretrained"]["nll"] == {"forget": None, "retain": 3.0}
  assert stored["models"]["salun"]["frechet_distance"] is None
  assert stored["not_a_result"] == {"models.pretrained.nll.forget": "non-finite (nan)",
                                    "models.salun.frechet_distance": "non-finite (inf)",
                                    "attacks.attack_dimum.ar_cl.2": "non-finite (nan)"}   # DIMUM's curve
  with open(os.path.join(w, "report.md")) as f:
    report = f.read()
  table = [l for l in report.splitlines() if l.startswith("|")]
  assert any("not a result" in l for l in table)
  assert not any(tok in l.replace("not a result", "") for l in table for tok in (" nan", " inf", "+nan"))
  assert "`models.salun.frechet_distance` is non-finite (inf)" in report


def test_report_section_equals_the_golden_file(tmp_path):
  card = _card(_workdir(tmp_path))
  few = copy.deepcopy(card["attacks"]["attack_dimum"])
  few.update(label="few-shot k=5", data="fewshot", seed=11)
  few["budget"].update(shots=5, steps=100, lr=0.001)
  card["attacks"]["attack_dimum_fewshot"] = few
  card["order"]["attacks"].append("attack_dimum_fewshot")
  text = "\n".join(robustness.report_lines(card, str(tmp_path))) + "\n"
  if os.environ.get("UPDATE_GOLDEN"):
    with open(GOLDEN, "w") as f:
      f.write(text)
  with open(GOLDEN) as f:
    assert text == f.read()


def test_labels_say_what_each_attack_is():
  b = dict(SALUN_ATTACK["budget"])
  label = lambda attack, data, **kw: robustness.attack_label({"attack": attack, "data": data, "budget": dict(b, **kw)})
  assert label("condition", "forget", eps=0.1) == "soft prompt, embedding space (L-inf eps=0.1)"
  assert label("condition", "forget", eps=0.0) == "soft prompt, embedding space (unconstrained)"
  assert label("finetune", "fewshot", shots=5) == "few-shot k=5"
  assert label("finetune", "benign", classes=[0, 1]) == "benign fine-tuning (classes [0, 1])"


def test_every_curve_point_gets_its_wilson_interval(tmp_path):
  lo, hi = robustness.wilson_bands([0.0, 0.5, math.nan, 1.0], 100)
  for v, a, b in zip((0.0, 0.5, 1.0), (lo[0], lo[1], lo[3]), (hi[0], hi[1], hi[3])):
    assert (a, b) == wilson_interval(v, 100)
  assert math.isnan(lo[2]) and math.isnan(hi[2]) and 0.0 < hi[0] < 0.05 and lo[1] < 0.5 < hi[1]
  card = _card(_workdir(tmp_path))
  row = [l for l in robustness.report_lines(card, str(tmp_path)) if l.startswith("| SalUn")][0]
  a, b = wilson_interval(0.75, card["evaluator"]["attack_num_samples"])
  assert f"0.750 [{a:.2f}, {b:.2f}]" in row


def test_other_curve_measures_get_their_own_table(tmp_path):
  w = _workdir(tmp_path)
  _write(os.path.join(w, "attack_salun", "curve.json"),
         {str(s): {"ar": v, "ua": 1.0 - v, "ar_top1": v / 2} for s, v in zip(STEPS, SALUN["ar"])})
  lines = robustness.report_lines(_card(w), w)
  i = next(i for i, l in enumerate(lines) if l.startswith("UA (UnlearnCanvas"))
  row = next(l for l in lines[i:] if l.startswith("| SalUn"))
  assert "1.000 -> 0.500 (0.250, 1.000)" in row and "| – |" in next(l for l in lines[i:] if l.startswith("| DiMUM"))
  assert any(l.startswith("Top-1 AR") for l in lines) and not any(l.startswith("NudeNet") for l in lines)
