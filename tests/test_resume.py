"""`pipeline.resume_config`: which differences between the stored config of a workdir and a
rerun's config are refused."""
import pytest

from unlearn_jax import pipeline
from unlearn_jax.errors import UserError


def _cfg(**kw):
  c = {"seed": 0, "model": {"hidden": 128}, "training": {"log_every": 10},
       "stages": {"standard": {"kind": "train", "steps": 3}, "sgu": {"kind": "unlearn", "steps": 2}},
       "stage_order": ["standard", "sgu"]}
  for k, v in kw.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node.setdefault(p, {})
    node[last] = v
  return c


def test_a_started_run_refuses_other_values_and_removed_fields(tmp_path):
  (tmp_path / "standard").mkdir()
  with pytest.raises(UserError, match="config.model.hidden is 128 there, 64 now"):
    pipeline.resume_config(str(tmp_path), _cfg(), _cfg(**{"model.hidden": 64}))
  stored = _cfg(**{"model.width": 3})
  with pytest.raises(UserError, match="config.model.width is 3 there, <absent> now"):
    pipeline.resume_config(str(tmp_path), stored, _cfg())


def test_fields_the_stored_config_lacks_and_cadence_may_differ(tmp_path):
  (tmp_path / "standard").mkdir()
  new = _cfg(**{"neggrad_plus.beta": 0.9, "stages.standard.ema_rate": None, "training.log_every": 1})
  assert pipeline.resume_config(str(tmp_path), _cfg(), new) == new
  # a stage not started yet may change; the started one may not
  assert pipeline.resume_config(str(tmp_path), _cfg(), _cfg(**{"stages.sgu.steps": 5}))["stages"]["sgu"]["steps"] == 5
  with pytest.raises(UserError, match="stages concerned: standard"):
    pipeline.resume_config(str(tmp_path), _cfg(), _cfg(**{"stages.standard.steps": 4}))


def test_nothing_started_accepts_any_config(tmp_path):
  assert pipeline.resume_config(str(tmp_path), _cfg(), _cfg(**{"model.hidden": 64}))["model"]["hidden"] == 64
  assert pipeline.resume_config(str(tmp_path), None, _cfg()) == _cfg()
