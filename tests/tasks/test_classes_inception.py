"""tasks.classes' Inception FID: the weights file, the cached reference statistics, the report."""
import importlib
import os
import types

import numpy as np
import pytest

from unlearn_jax import config_lib
from unlearn_jax import evaluation
from unlearn_jax import pipeline
from unlearn_jax import settings
from unlearn_jax.errors import UserError
from unlearn_jax.evaluation import inception_weights
from unlearn_jax.reporting import markdown
from unlearn_jax.tasks import classes
from unlearn_jax.tasks import prompts

fid_lib = importlib.import_module("unlearn_jax.evaluation.fid")   # `evaluation.fid` is the function
SIZE = 75            # the smallest input the network takes: a fast compile (299 is the standard)


#: the FID network's variables with activation-preserving random values (numpy: no compile)
random_variables = prompts.random_inception_variables


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("inception") / "fid_inception.npz")
  inception_weights.save_npz(random_variables(), path)
  return path


def _exp(weights_path):
  c = config_lib.base()
  c.eval.update(dict(inception_weights=weights_path, inception_size=SIZE, inception_batch_size=4))
  return types.SimpleNamespace(config=settings.of(c), inception=evaluation.load_fid_inception(weights_path),
                               train=types.SimpleNamespace(source="test images"))


def test_fid_sfid_is_match_the_features_and_the_reference_statistics_are_cached(weights, tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  samples = rng.random((6, 8, 8, 1)).astype(np.float32)
  reference = rng.integers(0, 256, (7, 8, 8, 1), dtype=np.uint8)
  exp = _exp(weights)
  got = classes.inception_entries(exp, str(tmp_path), samples, reference, "D_r (train)")
  gen = evaluation.inception_features(exp.inception, samples, 4, size=SIZE)
  real = evaluation.inception_features(exp.inception, reference, 4, size=SIZE)
  assert got["fid"] == pytest.approx(evaluation.fid(real.pool3, gen.pool3), rel=1e-5)
  assert got["fid_spatial"] == pytest.approx(evaluation.fid(real.spatial, gen.spatial), rel=1e-5)
  assert got["fid"] > 0 and got["fid_spatial"] > 0 and got["fid"] != got["fid_spatial"]
  assert got["inception_score"] == pytest.approx(evaluation.inception_score(gen.logits_unbiased, splits=6)[0])
  assert got["fid_num_samples"] == 6 and got["fid_input_size"] == SIZE and "7 images" in got["fid_reference"]
  assert (got["precision"], got["recall"]) == pytest.approx(evaluation.precision_recall(real.pool3, gen.pool3, 3))
  assert got["precision_recall_k"] == 3 and 0.0 <= got["precision"] <= 1.0 and 0.0 <= got["recall"] <= 1.0
  assert len(os.listdir(tmp_path / "fid_stats")) == 3           # mu/sigma of pool3 and spatial, pool3 features
  # a second model: the reference statistics come from the cache, only the samples are embedded
  calls = []
  real_fn = evaluation.inception_features
  monkeypatch.setattr(fid_lib, "inception_features", lambda v, x, *a, **kw: calls.append(len(x)) or real_fn(v, x, *a, **kw))
  again = classes.inception_entries(exp, str(tmp_path), samples, reference, "D_r (train)")
  assert calls == [6] and again["fid"] == pytest.approx(got["fid"], rel=1e-6)
  assert (again["precision"], again["recall"]) == pytest.approx((got["precision"], got["recall"]))
  # another reference set (or input size) gets its own statistics, never another set's
  other_ref = classes.inception_entries(exp, str(tmp_path), samples, reference[:6], "D_r (train)")
  assert len(os.listdir(tmp_path / "fid_stats")) == 6 and calls[-2:] == [6, 6]
  assert other_ref["fid"] != pytest.approx(got["fid"], rel=1e-6)
  # a set against itself: 0
  same = classes.inception_entries(exp, str(tmp_path / "other"), reference, reference, "itself")
  assert abs(same["fid"]) < 1e-3 and same["precision"] == same["recall"] == 1.0


def test_no_weights_no_entries():
  exp = types.SimpleNamespace(inception=None)
  assert classes.inception_entries(exp, "/nonexistent", None, None, "x") == {}


def test_weights_file_errors_name_the_field(tmp_path):
  with pytest.raises(UserError, match=r"config\.eval\.inception_weights"):
    evaluation.load_fid_inception(str(tmp_path / "missing.npz"))
  bad = tmp_path / "weights.bin"
  bad.write_bytes(b"\0" * 16)
  with pytest.raises(UserError, match=r"config\.eval\.inception_weights"):
    evaluation.load_fid_inception(str(bad))
  c = config_lib.digits_ddpm(cpu=True)
  c.stages, c.stage_order = config_lib.dimum_stages(pretrain_steps=1, unlearn_steps=1, attack_steps=1, eval_every=1)
  c.eval.inception_weights = str(tmp_path / "missing.npz")
  with pytest.raises(UserError, match=r"config\.eval\.inception_weights"):
    pipeline.build_experiment(c)


def test_report_table_only_with_fid():
  base = {"fid_num_samples": 6, "fid_reference": "D_r (train) (6 images)", "fid_input_size": 299}
  models = {"pretrained": {"fid": 12.345, "fid_spatial": 3.21, "inception_score": 1.5, "inception_score_std": 0.1,
                           **base},
            "ga": {"frechet_distance": 1.0}}
  lines = markdown.inception_lines(models)
  assert "| Pretrained | 12.35 | 3.21 | 1.50 ± 0.10 | – | – |" in lines
  models["pretrained"].update(precision=0.5, recall=0.25, precision_recall_k=3)
  assert "| Pretrained | 12.35 | 3.21 | 1.50 ± 0.10 | 0.500 | 0.250 |" in markdown.inception_lines(models)
  assert not any(line.startswith("| Gradient ascent") for line in lines)
  assert not any("not comparable" in line for line in lines)
  assert markdown.inception_lines({"ga": {"frechet_distance": 1.0}}) == []
  models["pretrained"]["fid_input_size"] = 75
  assert any("not comparable" in line for line in markdown.inception_lines(models))

