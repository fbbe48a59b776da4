"""A one-step smoke run of every config's cpu variant through the whole pipeline."""
import importlib.util
import json
import os

import pytest

from unlearn_jax import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(f for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith(".py"))


def load_config(name, arg="cpu"):
  spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(REPO, "configs", name))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def shrink(c):
  """One step per stage, a handful of samples and NLL examples."""
  for name in c.stage_order:
    st = c.stages[name]
    if st.kind in ("train", "unlearn", "attack", "mask"):
      st.steps = 1
    if st.kind == "attack":
      st.eval_every = 1
    if st.kind == "synthesize":
      st.num = 4
  c.classifier.steps = 1
  c.training.batch_size = 4
  c.training.log_every = 1
  c.training.ckpt_every = 1
  c.data.max_examples = min(c.data.max_examples or 200, 200)
  c.data.toy_num_samples = 400
  c.eval.num_samples = 4
  c.eval.sample_batch_size = 4
  c.eval.sampler.n_steps = 3
  c.eval.nll.num_examples = 2
  c.eval.nll.batch_size = 2
  c.eval.nll.rtol = c.eval.nll.atol = 1e-2
  c.eval.grid_size = 4
  c.eval.fd_num_samples = 4
  c.eval.attack_num_samples = 4
  return c


@pytest.mark.parametrize("name", CONFIGS)
def test_config_cpu_variant_one_step(name, tmp_path):
  c = shrink(load_config(name))
  if c.data.name in ("cifar10", "stl10", "celeb_a"):
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=40):
      pipeline.run(c, str(tmp_path))
  else:
    pipeline.run(c, str(tmp_path))
  res = json.load(open(tmp_path / "results.json"))
  evaluated = c.stages.evaluate.models
  assert sorted(res["models"]) == sorted(evaluated)
  for m in res["models"].values():
    if c.model.conditional:
      assert 0.0 <= m["ar_mu"] <= 1.0 and 0.0 <= m["ar_cl"] <= 1.0 and m["frechet_distance"] >= 0.0
    else:
      assert 0.0 <= m["unlearning_ratio"] <= 1.0
      assert m["nll"]["unit"] == "bits/dim"
      assert set(m["nll"]) >= {"retain", "forget", "offset"}
    assert os.path.exists(tmp_path / m["samples_png"])
  attacks = [n for n in c.stage_order if c.stages[n].kind == "attack"]
  assert sorted(res.get("attacks", {})) == sorted(attacks)
  assert (tmp_path / "report.md").read_text().count("|") > 10


def test_paper_scale_configs_build():
  for name in CONFIGS:
    c = load_config(name, None)
    if name.startswith("sgu_"):
      assert c.stages.evaluate.models == ("standard", "unseen", "sgu_orthogonal", "sgu_obtuse")
  assert load_config("sgu_mnist.py", None).data.forget_classes == (3,)
  assert load_config("sgu_cifar10.py", None).sde.name == "vpsde"
  c = load_config("dimum_cifar10.py", None)
  assert (c.model.ch, c.model.ch_mult, c.model.num_res_blocks, c.model.attn_resolutions) == \
      (128, (1, 2, 2, 2), 2, (16,))
  assert (c.sde.name, c.sde.N, c.sde.beta_start, c.sde.beta_end) == ("ddpm", 1000, 1e-4, 0.02)
  assert c.training.cond_drop == 0.1 and c.eval.sampler.guidance == 2.0
  assert c.stages.dimum.steps == 20000 and c.stages.attack_dimum.steps == 60000
  assert {c.stages[n].data for n in c.stage_order if c.stages[n].kind == "attack"} == {"retain", "test_retain"}
  c = load_config("dimum_cifar10.py", "forget=2,steps=10000,pretrained=/ckpt,synthetic")
  assert c.data.forget_classes == (2,) and c.stages.salun.steps == 10000 and c.stages.dimum.init == "/ckpt"
  assert "pretrained" not in c.stage_order and "synthetic" in c.stage_order


def test_issue4_paper_scale_configs():
  c = load_config("erasediff_cifar10.py", None)
  assert c.data.forget_classes == (0,) and c.model.ch == 128 and c.training.batch_size == 128
  unlearn = [n for n in c.stage_order if c.stages[n].kind == "unlearn"]
  assert [(c.stages[n].method, c.stages[n].variant) for n in unlearn] == [("erasediff", "rl"), ("erasediff", "noise")]
  assert c.stages.erasediff_rl.steps == 300 and c.stages.erasediff_rl.lr == 1e-4
  assert (c.erasediff.inner_steps, c.erasediff.rule) == (2, "paper")
  c = load_config("core_cifar10.py", "forget=0-1-2-3-4,schemes=all")
  assert c.data.forget_classes == (0, 1, 2, 3, 4)
  assert [c.stages[n].variant for n in c.stage_order if c.stages[n].kind == "unlearn"] == \
      ["one_to_one", "all_to_one", "groups_to_one", "random", "random_k"]
  assert load_config("core_cifar10.py", None).data.forget_classes == (1,)
  c = load_config("compare_digits.py", None)
  methods = [c.stages[n].method for n in c.stage_order if c.stages[n].kind == "unlearn"]
  assert methods == ["erasediff", "core", "esd", "ca", "sa", "shs", "salun", "dimum"]
  assert {c.stages[n].init for n in c.stage_order if c.stages[n].kind == "attack"} == set(methods)
