"""Behaviour, end to end: a short SGU run on the 2-D mixture must forget, so that a sign
error anywhere between the loss, the transform, the train loop, the evaluation and
results.json fails here (each piece has its own hand-value tests elsewhere)."""
import importlib.util
import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _toy_config():
  spec = importlib.util.spec_from_file_location("sgu_toy", os.path.join(REPO, "configs", "sgu_toy.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.data.toy_num_samples = 4000
  c.stages.standard.steps = 600
  c.stages.sgu_obtuse.steps = 400
  c.stages.sgu_obtuse.batch_size = 256
  c.stages.evaluate.models = ("standard", "sgu_obtuse")
  c.stage_order = ("standard", "sgu_obtuse", "evaluate", "report")
  c.training.ckpt_every = 1000
  c.eval.update(dict(num_samples=2000, sample_batch_size=2000))
  c.eval.sampler.n_steps = 100
  c.eval.nll.update(dict(num_examples=200, batch_size=200, rtol=1e-4, atol=1e-4))
  return c


def test_sgu_obtuse_raises_forget_nll_and_lowers_the_unlearning_ratio(tmp_path):
  from unlearn_jax import pipeline
  pipeline.run(_toy_config(), str(tmp_path))
  res = json.load(open(tmp_path / "results.json"))["models"]
  std, sgu = res["standard"], res["sgu_obtuse"]
  ratio = lambda m: m["nll"]["forget"] / m["nll"]["retain"]
  assert ratio(std) < 1.2, std["nll"]                      # Standard models the forget component
  assert ratio(sgu) > ratio(std) + 0.15, (std["nll"], sgu["nll"])
  assert sgu["nll"]["retain"] < 1.15 * std["nll"]["retain"], (std["nll"], sgu["nll"])
  assert sgu["unlearning_ratio"] < 0.5 * std["unlearning_ratio"], (std, sgu)
