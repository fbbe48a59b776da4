"""results.json's contract: `reporting.results.collect` on a hand-written workdir gives
exactly the hand-written results (every key, every value, the config's model order)."""
import json
import os
import types

import ml_collections
import numpy as np

from unlearn_jax import config_lib
from unlearn_jax.reporting import results as results_lib
from unlearn_jax.tasks import classes


def _write(workdir, rel, obj):
  path = os.path.join(workdir, rel)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f)


def test_collect_gathers_every_stage_output_exactly(tmp_path):
  w = str(tmp_path)
  c = ml_collections.ConfigDict({"experiment": "dimum", "data": {"name": "digits"}})
  c.stages, c.stage_order = config_lib.dimum_stages(pretrain_steps=10, unlearn_steps=4, attack_steps=4,
                                                    eval_every=2, methods=("salun", "dimum"))
  alt = np.arange(10)
  alt[3] = 7
  exp = types.SimpleNamespace(config=c, conditional=True, alt=alt, forget_labels=(3,), task=classes,
                              train=types.SimpleNamespace(source="sklearn digits", class_names=tuple("0123456789")))
  _write(w, "classifier/DONE.json", {"test_accuracy": 0.9, "steps": 5, "wall_time_s": 1.5})
  _write(w, "pretrained/DONE.json", {"steps": 10, "wall_time_s": 20.0})
  _write(w, "salun_mask/DONE.json", {"method": "salun", "kept_fraction": 0.25, "wall_time_s": 0.5})
  _write(w, "salun/DONE.json", {"steps": 4, "wall_time_s": 2.0})
  _write(w, "dimum/DONE.json", {"steps": 4, "wall_time_s": 6.0})
  _write(w, "pretrained/compile.json", {"lower_s": 0.5, "compile_s": 7.5})
  _write(w, "dimum/compile.json", {"lower_s": 0.25, "compile_s": 3.0})
  for m, ar in (("pretrained", 1.0), ("salun", 0.25), ("dimum", 0.0)):
    _write(w, f"evaluate/{m}.json", {"ar_mu": ar, "ar_cl": 0.5, "frechet_distance": 3.0, "wall_time_s": 4.0,
                                     "samples_png": f"evaluate/{m}_samples.png"})
  _write(w, "attack_salun/curve.json", {"0": {"ar": 0.25, "ar_cl": 0.5}, "2": {"ar": 0.75, "ar_cl": 0.125},
                                        "4": {"ar": 0.5, "ar_cl": 0.25}})
  got = results_lib.collect(exp, w)        # no attack_dimum curve yet: that attack is not reported
  entry = lambda m, ar, **kw: {"ar_mu": ar, "ar_cl": 0.5, "frechet_distance": 3.0, "wall_time_s": 4.0,
                               "samples_png": f"evaluate/{m}_samples.png", **kw}
  want = {
      "experiment": "dimum", "dataset": "digits", "data_source": "sklearn digits", "forget_classes": [3],
      "forget_class_names": ["3"], "classifier": {"test_accuracy": 0.9},
      "alternative_classes": [7],
      "attacks": {"attack_salun": {"model": "salun", "data": "retain", "attack": "retain", "steps": [0, 2, 4],
                                   "ar_dimra": [0.25, 0.75, 0.5], "ar_cl": [0.5, 0.125, 0.25],
                                   "max_ar_dimra": 0.75, "max_ar_dimra_step": 2, "final_ar_dimra": 0.5,
                                   "min_ar_cl": 0.125, "csv": "attack_salun/curve.csv"}},
      "masks": {"salun_mask": {"method": "salun", "kept_fraction": 0.25}},
      "models": {
          "pretrained": entry("pretrained", 1.0, train_wall_time_s=20.0, seconds_per_step=2.0, method="train",
                              unlearn_steps=0),
          "salun": entry("salun", 0.25, train_wall_time_s=2.0, seconds_per_step=0.5, method="salun",
                         unlearn_steps=4),
          "dimum": entry("dimum", 0.0, train_wall_time_s=6.0, seconds_per_step=1.5, method="dimum",
                         unlearn_steps=4)},
      "wall_time_s": {"classifier": 1.5, "pretrained": 20.0, "salun_mask": 0.5, "salun": 2.0, "dimum": 6.0,
                      "evaluate/pretrained": 4.0, "evaluate/salun": 4.0, "evaluate/dimum": 4.0},
      "compile_s": {"pretrained": 7.5, "dimum": 3.0},
  }
  assert got == want
  assert list(got["models"]) == ["pretrained", "salun", "dimum"]          # the config's order
  assert list(got["wall_time_s"]) == list(want["wall_time_s"])


def test_attack_label_names_each_attack_column():
  """The report's attack columns: the data stream (DiMRA, benign), fewshot<k> (so two budgets
  get two columns), the condition attacks by name (both train on data="forget")."""
  st = lambda **kw: config_lib.stage("attack", init="m", **kw)
  got = [results_lib.attack_label(types.SimpleNamespace(**st(**kw).to_dict())) for kw in (
      {"data": "retain"}, {"data": "benign"}, {"data": "fewshot", "shots": 5}, {"data": "fewshot", "shots": 50},
      {"attack": "embedding", "data": "forget"}, {"attack": "condition", "data": "forget", "eps": 0.1})]
  assert got == ["retain", "benign", "fewshot5", "fewshot50", "embedding", "condition"]
