"""report.md's contract, whole: hand-written results of each task family rendered by its
`report_tables` equal the reviewed golden files in tests/reporting/golden/ (regenerate one
with UPDATE_GOLDEN=1 and review the diff before committing it)."""
import copy
import os

import pytest

from unlearn_jax.reporting import markdown
from unlearn_jax.reporting import results as results_lib
from unlearn_jax.tasks import classes, unlearncanvas

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")

SGU = {"experiment": "sgu", "dataset": "mnist", "data_source": "tfds mnist", "forget_classes": [3],
       "forget_class_names": ["3"], "classifier": {"test_accuracy": 0.9875},
       "models": {n: {"unlearning_ratio": ur, "num_samples": 320, "class_histogram": [32] * 10,
                      "nll": {"retain": r, "forget": f, "unit": "bits/dim", "offset": 8.0, "convention": "score_sde",
                              "num_examples": 32},
                      "confident_share": cs, "confidence_threshold": 0.9, "histogram_tv": 0.125,
                      "retain_histogram_tv": 0.0625, "recognised": cs >= 0.5,
                      "samples_png": f"evaluate/{n}_samples.png"}
                  for n, ur, r, f, cs in (("standard", 0.15625, 3.157, 2.894, 0.653),
                                          ("sgu_obtuse", 0.028125, 3.056, 7.107, 0.25))},
       "wall_time_s": {"standard": 494.0, "evaluate/standard": 80.5}}
TOY = copy.deepcopy(SGU)
TOY.update(dataset="toy_gmm", classifier=None)
for m in TOY["models"].values():
  for k in ("confident_share", "confidence_threshold", "histogram_tv", "retain_histogram_tv", "recognised"):
    m.pop(k)


def _cond_model(ar, fd, **kw):
  return {"ar_mu": ar, "ar_cl": 0.125, "frechet_distance": fd, "retain_accuracy": 0.75, "confident_share": 0.8,
          "confidence_threshold": 0.9, "recognised": True, "num_samples": 64, "fd_num_samples": 64,
          "samples_png": "evaluate/m.png", "unlearn_steps": 300, "seconds_per_step": 0.25, **kw}


DIMUM = {"experiment": "dimum", "dataset": "digits", "data_source": "sklearn digits", "forget_classes": [3],
         "forget_class_names": ["3"], "classifier": {"test_accuracy": 0.96}, "alternative_classes": [4],
         "masks": {"salun_mask": {"method": "salun", "kept_fraction": 0.5},
                   "sa_mask": {"method": "fisher", "fisher_mean": 0.00123}},
         "models": {"pretrained": _cond_model(1.0, 11.5, unlearn_steps=0),
                    "salun": _cond_model(0.0, 12.75, recognised=False, confident_share=0.3),
                    "erasediff": _cond_model(0.09375, 14.0, training_log={
                        "steps": [1, 2], "summary": {"method/lambda_t": {"first": 0.5, "last": 0.25, "mean": 0.375},
                                                     "loss/forget": {"first": 1.0, "last": 2.0, "mean": 1.5}}})},
         "attacks": {"attack_salun": {"model": "salun", "data": "retain", "steps": [0, 50, 100],
                                      "ar_dimra": [0.0, 0.5, 0.25], "ar_cl": [1.0, 0.5, 0.625],
                                      "max_ar_dimra": 0.5, "max_ar_dimra_step": 50, "final_ar_dimra": 0.25,
                                      "min_ar_cl": 0.5, "csv": "attack_salun/curve.csv"}},
         "wall_time_s": {"pretrained": 100.0}}
CANVAS = copy.deepcopy(DIMUM)
CANVAS.update(experiment="unlearncanvas", dataset="unlearncanvas", forget_classes=[], masks={},
              forget_class_names=["3 prompts of Van_Gogh"], model_dir="/m/tiny_sd", trainable="cross_attn",
              forget_styles=["Van_Gogh"], alt_style="Abstractionism", autoencoder={"summary": "tiny VAE fitted in the workdir"})
CANVAS.pop("alternative_classes")
for n, m in CANVAS["models"].items():
  m.update(ua=0.5, ira=0.875, cra=0.625, sfid=100.0 if n == "pretrained" else 80.0)

for case in (SGU, DIMUM):      # the Wilson intervals results.collect adds (the toy's: none, "UR" alone)
  for m in case["models"].values():
    m.update(results_lib.rate_intervals(m))

CASES = {"sgu_mnist": (SGU, classes), "sgu_toy": (TOY, classes), "dimum_digits": (DIMUM, classes),
         "unlearncanvas": (CANVAS, unlearncanvas)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_report_equals_the_golden_file(case, tmp_path):
  results, task = CASES[case]
  text = markdown.render(copy.deepcopy(results), str(tmp_path), task.report_tables)
  path = os.path.join(GOLDEN, f"{case}.md")
  if os.environ.get("UPDATE_GOLDEN"):
    with open(path, "w") as f:
      f.write(text)
  with open(path) as f:
    assert text == f.read()
