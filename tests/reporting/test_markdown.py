"""report.md from hand-made results: quality columns, the flags on unrecognised samples and
impossible NLLs, and cells equal to the JSON's values."""
from unlearn_jax.reporting import markdown
from unlearn_jax.tasks import classes


def _model(ur, retain, forget, share, recognised):
  return {"unlearning_ratio": ur, "num_samples": 400, "class_histogram": [40] * 10,
          "nll": {"retain": retain, "forget": forget, "unit": "bits/dim", "offset": 8.0, "convention": "score_sde"},
          "confident_share": share, "confidence_threshold": 0.9, "histogram_tv": 0.125,
          "retain_histogram_tv": 0.0625, "recognised": recognised, "samples_png": "evaluate/x.png"}


def _results(**models):
  return {"experiment": "sgu", "dataset": "mnist", "data_source": "test", "forget_classes": [3],
          "forget_class_names": ["3"], "classifier": {"test_accuracy": 0.97}, "models": models,
          "wall_time_s": {}}


def render(results):
  return markdown.render(results, ".", classes.report_tables)


def _row(md, name):
  return next(l for l in md.splitlines() if l.startswith(f"| {name} |"))


def test_report_rows_carry_quality_and_flag_unrecognised_samples():
  md = render(_results(standard=_model(0.1, 3.0, 3.1, 0.8, True),
                                sgu_obtuse=_model(0.02, 3.5, 9.0, 0.25, False)))
  assert _row(md, "Standard") == "| Standard | 10.00 | 3.000 | 3.100 | +0.100 | 80.0 | 0.125 | 0.062 |"
  assert _row(md, "SGU-Obtuse").startswith("| SGU-Obtuse | 2.00 (!) | 3.500 | 9.000 | +5.500 | 25.0 |")
  assert "Not a result" in md and "SGU-Obtuse" in md.split("Not a result")[1].splitlines()[0]
  assert "Standard" not in md.split("Not a result")[1].splitlines()[0]
  assert "below 0 bits/dim" not in md


def test_report_flags_an_impossible_negative_nll():
  md = render(_results(standard=_model(0.1, -0.4, 3.1, 0.8, True)))
  assert "below 0 bits/dim** for Standard" in md
  assert "Not a result" not in md


def test_stage_names_of_method_variants_read_as_method_and_variant():
  assert markdown.pretty("ca_noise") == "Concept Ablation (noise)"
  assert markdown.pretty("erasediff_rl") == "EraseDiff (rl)"
  assert markdown.pretty("sgu_obtuse") == "SGU-Obtuse" and markdown.pretty("ca") == "Concept Ablation"
  assert markdown.pretty("my_stage") == "my_stage"
