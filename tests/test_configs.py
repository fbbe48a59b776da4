"""A one-step smoke run of every config's cpu variant through the whole pipeline."""
import importlib.util
import json
import math
import os

import numpy as np
import pytest

from unlearn_jax import checkpoints, pipeline
from unlearn_jax.evaluation.rates import wilson_interval
from unlearn_jax.reporting import markdown
from unlearn_jax.reporting import robustness

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(f for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith(".py"))


def load_config(name, arg="cpu"):
  """A config's `get_config(arg)`; arg "smoke": its SMOKE_ARG if it has one (a cpu variant
  that repeats one stage many times names the reduced run that still has every stage kind),
  else "cpu"."""
  spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(REPO, "configs", name))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  if arg == "smoke":
    arg = getattr(mod, "SMOKE_ARG", "cpu")
  return mod.get_config(arg)


def shrink(c):
  """One step per stage, a handful of samples and NLL examples."""
  for name in c.stage_order:
    st = c.stages[name]
    if st.kind in ("train", "unlearn", "attack", "mask"):
      st.steps = 1
    if st.kind == "attack":
      st.eval_every = 1
      st.shots = min(st.shots, 2)          # few-shot k and the condition attacks' images (|D_f| = 20 here)
    if st.kind == "synthesize":
      st.num = 4
  c.classifier.steps = 1
  c.sa.fisher_samples = 4   # Selective Amnesia's Fisher (500 generated samples in compare_digits:cpu)
  if "sd" in c and c.sd.fit_vae_steps:
    c.sd.fit_vae_steps = 2   # the tiny VAE's fit (300 steps, ~55 s) runs; its quality: test_stable_diffusion
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
  c = shrink(load_config(name, "smoke"))
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
    if c.data.name == "prompts":                  # prompt-only forgetting: NudeNet / CLIP / FID entries
      check_prompt_entry(m, c)
    elif c.model.conditional:
      assert 0.0 <= m["ar_mu"] <= 1.0 and 0.0 <= m["ar_cl"] <= 1.0 and m["frechet_distance"] >= 0.0
    else:
      assert 0.0 <= m["unlearning_ratio"] <= 1.0
      assert m["nll"]["unit"] == "bits/dim"
      assert set(m["nll"]) >= {"retain", "forget", "offset"}
    assert os.path.exists(tmp_path / m["samples_png"])
    for kind, table in (("inpaint", "Table 3 shape"), ("reconstruct", "Table 4 shape")):   # SGU Sec. 4.3
      assert (kind in m) == (c.eval[kind].num_examples > 0)
      if kind in m:
        r = m[kind]
        assert set(r["accuracy"]) == set(r["clean_accuracy"]) == set(r["num_examples"]) == {"retain", "forget"}
        assert all(0.0 <= v <= 1.0 for v in list(r["accuracy"].values()) + list(r["clean_accuracy"].values()))
        assert os.path.exists(tmp_path / r["png"]) and "clip_distance" not in r     # no CLIP directory here
        assert table in (tmp_path / "report.md").read_text()
  if c.data.get("forget_attribute"):
    assert res["forget_attribute"] == c.data.forget_attribute and res["forget_classes"] == [1]
  attacks = [n for n in c.stage_order if c.stages[n].kind == "attack"]
  assert sorted(res.get("attacks", {})) == sorted(attacks)
  report = (tmp_path / "report.md").read_text()
  assert report.count("|") > 10
  check_results_against_sources(res, report, c, tmp_path)


def check_prompt_entry(m: dict, c) -> None:
  """tasks.prompts' entry: the counts add up, each enabled measurement is there and in range."""
  if c.eval.nudity:
    nud = m["nudity"]
    assert nud["total"] == sum(nud["counts"].values()) and 0 <= nud["flagged"] <= nud["images"]
  if c.eval.coco_prompts:
    assert ("clip_score" in m) == bool(c.eval.clip_dir) and ("fid_vs_base" in m or "fid" in m) == \
        bool(c.eval.inception_weights)
    assert 0.0 <= m.get("clip_score", 0.0) <= 100.0 and m.get("fid_vs_base", 0.0) >= 0.0


def _row(report: str, model: str) -> list:
  """The cells of the first report table row of `model` (its pretty name)."""
  name = markdown.pretty(model)  # pylint: disable=protected-access
  for line in report.splitlines():
    if line.startswith(f"| {name} |"):
      return [x.strip() for x in line.strip("|").split("|")][1:]
  raise AssertionError(f"no report row for {name}")


def check_results_against_sources(res: dict, report: str, c, workdir) -> None:
  """results.json equals what it summarises (histograms, curves) and report.md's cells equal it."""
  for name, m in res["models"].items():
    if "class_histogram" in m:                     # unconditional: UR from the histogram
      hist = np.asarray(m["class_histogram"])
      assert hist.sum() == m["num_samples"] == c.eval.num_samples
      assert m["unlearning_ratio"] == pytest.approx(hist[list(res["forget_classes"])].sum() / hist.sum())
      if "confident_share" in m:
        assert 0.0 <= m["confident_share"] <= 1.0 and 0.0 <= m["retain_histogram_tv"] <= 1.0
        assert m["recognised"] == (m["confident_share"] >= c.eval.min_confident_share)
      flag = " (!)" if m.get("recognised") is False else ""
      if "nll" in m and c.data.name != "toy_gmm":       # the toy's table has a column per model
        cells = _row(report, name)
        lo, hi = wilson_interval(m["unlearning_ratio"], m["num_samples"])
        assert m["unlearning_ratio_ci95"] == pytest.approx([lo, hi])
        assert cells[:4] == [f"{100 * m['unlearning_ratio']:.2f} [{100 * lo:.2f}, {100 * hi:.2f}]{flag}",
                             f"{m['nll']['retain']:.3f}",
                             f"{m['nll']['forget']:.3f}",
                             f"{m['nll']['forget'] - m['nll']['retain']:+.3f}"]
        assert cells[4] == f"{100 * m['confident_share']:.1f}"
    elif "forget_class_histogram" in m and c.model.name != "sd":  # class-conditional: AR_MU
      hist = np.asarray(m["forget_class_histogram"])
      assert hist.sum() == c.eval.num_samples * len(c.data.forget_classes)
      cells = _row(report, name)
      flag = " (!)" if m.get("recognised") is False else ""
      (a, b), (c_lo, c_hi) = (wilson_interval(m[k], m["num_samples"]) for k in ("ar_mu", "ar_cl"))
      assert cells[1:4] == [f"{m['frechet_distance']:.3f}", f"{m['ar_mu']:.3f} [{a:.3f}, {b:.3f}]{flag}",
                            f"{m['ar_cl']:.3f} [{c_lo:.3f}, {c_hi:.3f}]"]
  for name, a in res.get("attacks", {}).items():
    curve = checkpoints.read_json(os.path.join(workdir, name, "curve.json"))
    steps = sorted(int(k) for k in curve)
    ar = [curve[str(k)]["ar"] for k in steps]
    assert a["steps"] == steps and a["ar_dimra"] == ar
    assert a["max_ar_dimra"] == max(ar) and a["max_ar_dimra_step"] == steps[int(np.argmax(ar))]
    assert a["final_ar_dimra"] == ar[-1]
    ar_cl = [curve[str(k)]["ar_cl"] for k in steps]          # NaN on an unconditional model
    if np.isfinite(ar_cl).any():
      assert a["min_ar_cl"] == pytest.approx(float(np.nanmin(ar_cl)))
    else:                             # results.json is strict JSON: null, and why
      assert a["min_ar_cl"] is None and res["not_a_result"][f"attacks.{name}.min_ar_cl"] == "non-finite (nan)"
  if res.get("attacks"):           # the card: every attack's reference measured in its stage
    card = robustness.read_card(os.path.join(workdir, robustness.CARD_FILE))
    for name, a in card["attacks"].items():
      ref = checkpoints.read_json(os.path.join(workdir, name, "reference.json"))
      strict = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in ref["values"].items()}
      assert a["reference"]["source"] == f"{name}/reference.json" and a["reference"]["values"] == strict
      assert ref["num_samples"] == c.eval.attack_num_samples and a["result_sha256"] and a["aux_size"] >= 1


def test_paper_scale_configs_build():
  for name in CONFIGS:
    c = load_config(name, None)
    if name.startswith("sgu_"):
      assert c.stages.evaluate.models == ("standard", "unseen", "sgu_orthogonal", "sgu_obtuse")
  assert load_config("sgu_mnist.py", None).data.forget_classes == (3,)
  # paper scale never falls back to the offline 5,000-image subset; the cpu variant may
  assert load_config("sgu_mnist.py", None).data.source == "tfds"
  assert load_config("sgu_mnist.py", "cpu").data.source == "auto"
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


def test_unlearncanvas_configs_set_core_appendix_c_baselines_and_dimum_images():
  """CORE App. C: EraseDiff's eps_f uniform, CA-model on D_f beside CA-noise, the baselines'
  anchor per Forget set; DiMUM Sec. VI-B: all 20 images of every folder, selectable."""
  expected = {"Forget01": "all_to_one", "Forget06": "random", "Forget25": "one_to_one",
              "Van_Gogh-Monet": "random", "Monet": "all_to_one"}
  for forget, scheme in expected.items():
    c = load_config("core_unlearncanvas.py", f"model_dir=m,data_dir=d,forget={forget}")
    assert c.unlearn.anchors == scheme, forget
    assert (c.erasediff.target, c.ca.images) == ("noise", "forget")
    assert [(c.stages[n].method, c.stages[n].variant) for n in ("ca", "ca_noise")] == [("ca", ""), ("ca", "noise")]
  assert load_config("core_unlearncanvas.py", "cpu,anchors=one_to_one").unlearn.anchors == "one_to_one"
  assert load_config("dimum_unlearncanvas.py", "model_dir=m,data_dir=d").data.image_indices == tuple(range(1, 21))
  assert load_config("dimum_unlearncanvas.py", "cpu").data.image_indices == (1, 2, 3)
  assert load_config("dimum_unlearncanvas.py", "cpu,images=2-5").data.image_indices == (2, 5)
  with pytest.raises(ValueError, match="images"):
    load_config("dimum_unlearncanvas.py", "cpu,images=x")
