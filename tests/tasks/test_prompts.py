"""tasks.prompts (prompt-only forgetting) and prompt_sets: the I2P / caption readers, the generated
D_f / D_r cache, the prompt table and ids, the nudity / CLIP / FID entries and report tables from
stubbed detectors and features, and validation before any write.  One tiny random SD (8 px) in a
temporary directory, read through the real loading code."""
import dataclasses
import importlib
import os

import jax
import numpy as np
import pytest
from PIL import Image

from unlearn_jax import pipeline, prompt_sets, settings
from unlearn_jax.errors import UserError
from unlearn_jax.evaluation import nudity as nudity_lib
from unlearn_jax.models import stable_diffusion as sd
from unlearn_jax.tasks import prompts as task
from unlearn_jax.tasks import sd_common
from test_configs import load_config

evaluation = importlib.import_module("unlearn_jax.evaluation")

I2P_HEADER = "prompt,categories,hard,sd_seed,sd_guidance_scale\n"


def _write(path, text):
  with open(path, "w") as f:
    f.write(text)
  return str(path)


# --------------------------------------------------------------------------- readers
def test_i2p_reader_filters_by_category_and_reads_seed_and_guidance_columns(tmp_path):
  path = _write(tmp_path / "i2p.csv", I2P_HEADER + 'a nude statue,"sexual, shocking",1,11,7\n'
                'a burning car,violence,0,22,8.5\n"a kiss, erotic",Sexual,0,33,12\n')
  rows = prompt_sets.read_i2p_csv(path, categories=("sexual",))
  assert [(r.prompt, r.seed, r.guidance_scale) for r in rows] == [("a nude statue", 11, 7.0),
                                                                 ("a kiss, erotic", 33, 12.0)]
  assert rows[0].categories == ("sexual", "shocking")
  assert len(prompt_sets.read_i2p_csv(path)) == 3                      # no filter: every row
  assert len(prompt_sets.read_i2p_csv(path, max_prompts=2)) == 2
  # evaluation_seed / evaluation_guidance win when the file has them ("" = auto), or by name
  both = _write(tmp_path / "eval.csv", "prompt,categories,sd_seed,sd_guidance_scale,evaluation_seed,"
                "evaluation_guidance\np,sexual,1,7,5,9\n")
  r = prompt_sets.read_i2p_csv(both)[0]
  assert (r.seed, r.guidance_scale) == (5, 9.0)
  r = prompt_sets.read_i2p_csv(both, seed_column="sd_seed", guidance_column="sd_guidance_scale")[0]
  assert (r.seed, r.guidance_scale) == (1, 7.0)


@pytest.mark.parametrize("text,kw,field,words", [
    ("categories,sd_seed,sd_guidance_scale\nsexual,1,7\n", {}, "config.data.i2p_csv", ("no column 'prompt'",)),
    ("prompt,categories,sd_guidance_scale\np,sexual,7\n", {}, "config.data.i2p_csv", ("no seed column",)),
    ("prompt,categories,sd_seed\np,sexual,3\n", {}, "config.data.i2p_csv", ("no guidance column",)),
    (I2P_HEADER + "p,sexual,0,x1,7\n", {}, "config.data.i2p_csv", ("row 2", "sd_seed", "not an integer")),
    (I2P_HEADER + "p,sexual,0,1,high\n", {}, "config.data.i2p_csv", ("row 2", "not a number")),
    (I2P_HEADER + "p,violence,0,1,7\n", {"categories": ("sexual",)}, "config.data.i2p_categories", ("no row",)),
    (I2P_HEADER + "p,sexual,0,1,7\n", {"seed_column": "evaluation_seed"}, "config.data.i2p_seed_column",
     ("no column 'evaluation_seed'",)),
])
def test_i2p_reader_errors_name_the_file_and_what_is_missing(tmp_path, text, kw, field, words):
  path = _write(tmp_path / "bad.csv", text)
  with pytest.raises(UserError) as e:
    prompt_sets.read_i2p_csv(path, **kw)
  assert e.value.field == field and all(w in str(e.value) for w in words), str(e.value)
  if field == "config.data.i2p_csv":
    assert path in str(e.value)
  with pytest.raises(UserError, match="expected an existing CSV"):
    prompt_sets.read_i2p_csv(str(tmp_path / "missing.csv"))


def test_caption_files(tmp_path):
  assert [c.prompt for c in prompt_sets.read_captions("bundled")] == list(prompt_sets.BUNDLED_CAPTIONS)
  txt = _write(tmp_path / "c.txt", "a cat\n\n a dog \n")
  assert [c.prompt for c in prompt_sets.read_captions(txt)] == ["a cat", "a dog"]
  csv_path = _write(tmp_path / "c.csv", "case_number,prompt,evaluation_seed\n0,a cat,5\n1,a dog,\n")
  assert [(c.prompt, c.seed) for c in prompt_sets.read_captions(csv_path, max_prompts=2)] == \
      [("a cat", 5), ("a dog", None)]
  with pytest.raises(UserError, match="no caption column"):
    prompt_sets.read_captions(_write(tmp_path / "n.csv", "id,x\n1,2\n"))
  with pytest.raises(UserError, match="config.eval.coco_prompts"):
    prompt_sets.read_captions(str(tmp_path / "none.txt"))


# --------------------------------------------------------------------------- the tiny model
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return sd.write_tiny(str(tmp_path_factory.mktemp("sd") / "tiny"), image_size=8, block_out_channels=(32,),
                       cross_attention_dim=32)


def config(model_dir, **data):
  c = load_config("erasediff_nudity.py", "cpu")
  c.sd.model_dir = model_dir
  c.data.update({**dict(image_size=8, forget_images_per_prompt=3, retain_images_per_prompt=2), **data})
  c.eval.update(dict(nudity=False, coco_prompts="", clip_dir="", inception_weights="", num_samples=3,
                     sample_batch_size=4, grid_size=2))
  c.eval.sampler.n_steps = 2
  return c


class Counter:
  def __init__(self, monkeypatch):
    self.calls, real = [], sd_common.sample_from_embeddings
    def counted(ctx, unet, emb, null, seeds, w, **kw):
      self.calls.append(list(seeds))
      return real(ctx, unet, emb, null, seeds, w, **kw)
    monkeypatch.setattr(sd_common, "sample_from_embeddings", counted)


@pytest.fixture(scope="module")
def built(model_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("work"))
  exp = pipeline.build_experiment(config(model_dir), workdir)
  task.save(exp)
  return exp, workdir


def test_the_prompt_table_ids_and_alternatives(built):
  exp, _ = built
  ctx = exp.context
  forget, retain = ("nudity", "naked", "erotic", "sexual"), ("a person wearing clothes",)
  assert ctx.prompts == forget + retain + ("a photo of pokemon",)
  assert [ctx.prompts[i] for i in exp.forget_labels] == list(forget)
  assert [ctx.prompts[i] for i in exp.retained_classes] == list(retain) + ["a photo of pokemon"]
  assert exp.null_label == 6 and ctx.table.shape[0] == 7
  np.testing.assert_allclose(ctx.table, sd.encode_prompts(ctx.comp, list(ctx.prompts) + [""]), atol=1e-6)
  np.testing.assert_array_equal(exp.context.base_params["prompts"]["embeddings"], ctx.table)
  assert list(exp.alt) == [5, 5, 5, 5, 4, 5]           # forget -> c_m; every other prompt -> itself
  # the anchor as a retain prompt (EraseDiff_wc), or none (the empty prompt, the null row)
  assert task.prompt_table(forget, retain, retain[0]) == (forget + retain, 4)
  assert task.prompt_table(forget, retain, "") == (forget + retain, 5)


def test_generated_data_are_the_plan_and_cached_once(built, model_dir, monkeypatch):
  exp, workdir = built
  ctx = exp.context
  assert ctx.complete and len(exp.train) == 4 * 3 + 1 * 2
  np.testing.assert_array_equal(exp.train.labels, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4])
  assert set(exp.streams["forget"].labels) == {0, 1, 2, 3} and set(exp.streams["retain"].labels) == {4}
  assert exp.train.images.shape[1:] == (4, 4, 4) and np.isfinite(exp.train.images).all()
  assert ctx.plan_seeds[0] == task.image_seed(0, "nudity", 0) != ctx.plan_seeds[1]
  chunks = sorted(os.listdir(ctx.cache_dir))
  assert chunks == [f"chunk_{k:05d}.npy" for k in range(4)]                    # 14 latents, batches of 4
  # a second build reads the cache and generates nothing
  count = Counter(monkeypatch)
  again = pipeline.build_experiment(exp.config, workdir)
  task.save(again)
  assert count.calls == [] and again.context.complete
  np.testing.assert_array_equal(again.train.images, exp.train.images)
  # a lost chunk is regenerated alone, to the same latents; the others are not rewritten
  mtimes = {n: os.stat(os.path.join(ctx.cache_dir, n)).st_mtime_ns for n in chunks}
  os.remove(os.path.join(ctx.cache_dir, chunks[1]))
  resumed = pipeline.build_experiment(exp.config, workdir)
  assert not resumed.context.complete and len(resumed.train) == 0
  task.save(resumed)
  assert len(count.calls) == 1 and count.calls[0] == list(ctx.plan_seeds[4:8])
  np.testing.assert_allclose(resumed.train.images, exp.train.images, atol=1e-5)
  assert all(os.stat(os.path.join(ctx.cache_dir, n)).st_mtime_ns == t for n, t in mtimes.items() if n != chunks[1])
  # other prompts or counts: another cache entry, nothing generated at build
  other = pipeline.build_experiment(config(model_dir, retain_prompts=("a photo of a dog",)), workdir)
  more = pipeline.build_experiment(config(model_dir, forget_images_per_prompt=4), workdir)
  assert len({ctx.cache_dir, other.context.cache_dir, more.context.cache_dir}) == 3
  assert not other.context.complete and not more.context.complete and len(count.calls) == 1


def test_an_image_depends_on_its_seed_not_its_batch(built):
  exp, _ = built
  ctx = exp.context
  unet, t = ctx.base_params["unet"], ctx.table
  a = sd_common.sample_from_embeddings(ctx, unet, t[[0, 1, 4]], t[-1], [7, 8, 9], [6.5] * 3, n_steps=2,
                                       batch_size=4)
  b = sd_common.sample_from_embeddings(ctx, unet, t[[1]], t[-1], [8], [6.5], n_steps=2, batch_size=4)
  c = sd_common.sample_from_embeddings(ctx, unet, t[[1]], t[-1], [8], [0.0], n_steps=2, batch_size=4)
  np.testing.assert_allclose(a[1], b[0], atol=5e-4)          # (float rounding differs with the batch)
  assert np.abs(a[0] - a[1]).max() > 1e-3 and np.abs(b - c).max() > 1e-4     # seed and guidance act


# --------------------------------------------------------------------------- entries and tables
def _det(cls, score):
  return {"class": cls, "score": score, "box": [0, 0, 1, 1]}


def test_nudity_entry_counts_stubbed_detections(built):
  exp, _ = built
  ctx = exp.context
  seen = []

  def detect(x):                                  # image i of the call: i breasts at score 0.9, a belly at 0.5
    seen.append(len(x))
    return [[_det("FEMALE_BREAST_EXPOSED", 0.9)] * i + [_det("BELLY_EXPOSED", 0.5), _det("FACE_FEMALE", 0.99)]
            for i in range(len(x))]

  ctx.detect = detect
  try:
    entry, kept = task.nudity_entry(exp, ctx.base_params["unet"], keep=2)
  finally:
    ctx.detect = None
  assert seen == [3] and len(kept) == 2 and kept.shape[1:] == (8, 8, 3)
  assert entry["counts"]["FEMALE_BREAST_EXPOSED"] == 0 + 1 + 2 and entry["counts"]["BELLY_EXPOSED"] == 0
  assert entry["total"] == 3 and entry["flagged"] == 2 and entry["images"] == 3 and entry["threshold"] == 0.6
  assert entry["source"] == "3 images of the 4 forget prompts"
  assert [p.prompt for p in ctx.nudity_prompts] == ["nudity", "naked", "erotic"]
  # an attack's curve point (`forget_rates`): the flagged share and the same counts, per class
  ctx.detect = detect
  try:
    r = task.forget_rates(exp, ctx.base_params, None, 3, jax.random.key(0))
  finally:
    ctx.detect = None
  assert r["ar"] == 2 / 3 and r["nudity_total"] == 3.0 and r["nudity_female_breast_exposed"] == 3.0
  assert r["nudity_belly_exposed"] == 0.0 and len([k for k in r if k.startswith("nudity_")]) == 1 + 9


class Feats:
  def __init__(self, x):
    m = np.asarray(x).reshape(len(x), -1)[:, :6].astype(np.float64)
    self.pool3, self.spatial, self.logits_unbiased = m, m[:, :3], m

  def _asdict(self):
    return {"pool3": self.pool3, "spatial": self.spatial, "logits_unbiased": self.logits_unbiased}


def test_utility_entries_fid_vs_base_and_fid_against_real_images(built, tmp_path, monkeypatch):
  exp, _ = built
  ctx = exp.context
  monkeypatch.setattr(evaluation, "inception_features", lambda v, x, bs, size: Feats(x))
  monkeypatch.setattr(evaluation, "clip_scores", lambda comp, x, p: np.full(len(x), 30.0))
  monkeypatch.setattr(exp, "inception", {"stub": True})
  monkeypatch.setattr(ctx, "clip", type("C", (), {"model_dir": "clip"})())
  monkeypatch.setattr(ctx, "coco", tuple(task.EvalPrompt(p, i, 6.5) for i, p in
                                         enumerate(prompt_sets.BUNDLED_CAPTIONS[:4])))
  monkeypatch.setattr(ctx, "coco_source", "4 captions")
  work = str(tmp_path)
  base, _ = task.utility_entries(exp, work, "base", ctx.base_params["unet"])
  assert base["fid_vs_base"] == 0.0 and base["clip_score"] == 30.0 and "fid" not in base
  moved = jax.tree_util.tree_map(lambda a: a * 1.05, ctx.base_params["unet"])
  other, _ = task.utility_entries(exp, work, "erasediff", moved)
  assert other["fid_vs_base"] > 0.0 and "the base model's images" in other["fid_vs_base_reference"]
  assert len(os.listdir(os.path.join(work, "fid_stats"))) == 2              # base stats cached once
  # real reference images: the key is "fid"
  ref = tmp_path / "real"
  ref.mkdir()
  for i in range(4):
    Image.fromarray(np.full((10, 12, 3), 40 * i, np.uint8)).save(ref / f"{i}.png")
  monkeypatch.setattr(ctx, "fid_reference_dir", str(ref))
  real, _ = task.utility_entries(exp, work, "erasediff", moved)
  assert real["fid"] > 0.0 and "fid_vs_base" not in real and real["fid_reference"].startswith("4 real images")


def test_attack_curve_utility_is_clip_score_and_fd_to_the_base_models_images(built, monkeypatch):
  """`attack_measures` with eval.attack_fd: CLIP score and the pool3 FD between the first n
  captions' images and the base model's images of the same captions and seeds (computed once)."""
  exp, _ = built
  ctx = exp.context
  monkeypatch.setattr(ctx, "coco", tuple(task.EvalPrompt(p, i, 6.5) for i, p in
                                         enumerate(prompt_sets.BUNDLED_CAPTIONS[:5])))
  assert task.attack_measures(exp, ctx.base_params, None, 3, jax.random.key(0)) == {}   # attack_fd off
  cfg = exp.config
  on = dataclasses.replace(exp, config=dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, attack_fd=True)))
  assert task.attack_measures(on, ctx.base_params, None, 3, jax.random.key(0)) == {}    # neither CLIP nor Inception
  seen = []

  def feats(v, x, bs, size):
    seen.append(len(x))
    return Feats(x)

  monkeypatch.setattr(evaluation, "inception_features", feats)
  monkeypatch.setattr(evaluation, "clip_scores", lambda comp, x, p: np.arange(len(x), dtype=np.float64) + 30.0)
  monkeypatch.setattr(on, "inception", {"stub": True})
  monkeypatch.setattr(ctx, "clip", type("C", (), {"model_dir": "clip"})())
  cache = {}
  moved = {**ctx.base_params, "unet": jax.tree_util.tree_map(lambda a: a * 1.05, ctx.base_params["unet"])}
  got = task.attack_measures(on, moved, None, 3, jax.random.key(1), cache=cache)
  own = Feats(task._images(on, moved["unet"], ctx.coco, 0, 3)).pool3
  ref = Feats(task._images(on, ctx.base_params["unet"], ctx.coco, 0, 3)).pool3
  assert got["fd"] == pytest.approx(evaluation.fid(ref, own)) and got["fd"] > 0
  assert got["clip_score"] == 31.0 and sum(seen) == 6                 # the first 3 captions, then the base's
  base = task.attack_measures(on, ctx.base_params, None, 3, jax.random.key(0), cache=cache)
  assert base["fd"] == pytest.approx(0.0, abs=1e-6) and sum(seen) == 9    # the base model's features: cached
  assert np.isnan(task.attack_measures(on, moved, None, 1, jax.random.key(1))["fd"])    # n < 2


def _results(with_fid_real=False):
  def nud(counts):
    full = dict.fromkeys(nudity_lib.EXPOSED_CLASSES, 0)
    full.update(counts)
    return {"counts": full, "total": sum(full.values()), "images": 10, "flagged": 3, "flagged_share": 0.3,
            "threshold": 0.6, "source": "10 images of the 4 forget prompts"}
  fid = "fid" if with_fid_real else "fid_vs_base"
  return {"models": {
      "base": {"nudity": nud({"FEMALE_BREAST_EXPOSED": 10, "BELLY_EXPOSED": 4}), fid: 0.0, "clip_score": 31.0,
               "coco_prompts": "8 captions", f"{fid}_reference": "ref", "fid_input_size": 299},
      "erasediff": {"nudity": nud({"FEMALE_BREAST_EXPOSED": 2, "BELLY_EXPOSED": 4, "ANUS_EXPOSED": 1}),
                    fid: 17.0, "clip_score": 30.5}},
      "enabled": {"nudity": True, "clip_score": True, "fid": with_fid_real, "fid_vs_base": not with_fid_real},
      "coco_prompts": "8 captions"}


def test_report_tables_fig3_and_table2_shapes():
  res = _results()
  task.add_nudity_change(res, "base")
  ch = res["models"]["erasediff"]["nudity"]["change_vs_reference_pct"]
  assert ch["FEMALE_BREAST_EXPOSED"] == -80.0 and ch["BELLY_EXPOSED"] == 0.0 and ch["ANUS_EXPOSED"] is None
  assert ch["total"] == pytest.approx(100 * (7 - 14) / 14)
  lines = task.nudity_lines(res)
  header = next(l for l in lines if l.startswith("| Method"))
  cols = [x.strip() for x in header.strip("|").split("|")]
  assert cols == ["Method"] + [task.SHORT[c] for c in nudity_lib.EXPOSED_CLASSES] + ["Total", "flagged (%)"]
  row = next(l for l in lines if l.startswith("| EraseDiff"))
  cells = dict(zip(cols, [x.strip() for x in row.strip("|").split("|")]))
  assert cells["Female Breast"] == "2 (-80%)" and cells["Anus"] == "1 (n/a)" and cells["Total"] == "7 (-50%)"
  base_row = next(l for l in lines if l.startswith("| Base"))
  assert "%" not in base_row and "| 10 |" in base_row
  util = task.utility_lines(res)
  assert "| Method | FID vs base (not FID) | CLIP score |" in util and "| EraseDiff | 17.00 | 30.50 |" in util
  assert any("NOT the FID against real images" in l for l in util)
  real = _results(with_fid_real=True)
  assert "| Method | FID | CLIP score |" in task.utility_lines(real)
  miss = task.missing_lines({"enabled": {"nudity": False}, "coco_prompts": None})
  assert any("config.eval.nudity" in l for l in miss) and any("config.eval.coco_prompts" in l for l in miss)
  miss = task.missing_lines({"enabled": {"nudity": True, "clip_score": False, "fid": False, "fid_vs_base": False},
                             "coco_prompts": "x"})
  assert any("config.eval.clip_dir" in l for l in miss) and any("inception_weights" in l for l in miss)


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("change,field", [
    (lambda c: c.data.update(dict(retain_prompts=("naked",))), "config.data.retain_prompts"),
    (lambda c: c.data.update(dict(forget_prompts=(), i2p_csv="")), "config.data.forget_prompts"),
    (lambda c: c.data.update(dict(anchor_prompt="nudity")), "config.data.anchor_prompt"),
    (lambda c: c.data.update(dict(i2p_csv="/nonexistent/i2p.csv")), "config.data.i2p_csv"),
    (lambda c: c.data.update(dict(forget_images_per_prompt=0)), "config.data.forget_images_per_prompt"),
    (lambda c: c.eval.update(dict(coco_prompts="/nonexistent/coco.txt")), "config.eval.coco_prompts"),
    (lambda c: c.eval.update(dict(fid_reference_dir="/nonexistent")), "config.eval.fid_reference_dir"),
    (lambda c: c.eval.update(dict(clip_dir="/nonexistent/clip")), "config.eval.clip_dir"),
    (lambda c: c.eval.sampler.update(dict(kind="ancestral")), "config.eval.sampler.kind"),
    (lambda c: c.sd.update(dict(fit_vae_steps=5)), "config.sd.fit_vae_steps"),
    (lambda c: c.sd.update(dict(model_dir="tiny")) or c.eval.update(dict(nudity=True)), "config.eval.nudity"),
])
def test_validation_errors_before_any_write(model_dir, tmp_path, monkeypatch, change, field):
  monkeypatch.setattr(task, "nudity_available", lambda: False)
  c = config(model_dir)
  change(c)
  workdir = tmp_path / "w"
  with pytest.raises(UserError) as e:
    pipeline.run(c, str(workdir))
  assert e.value.field == field, str(e.value)
  assert not workdir.exists()
  if field == "config.eval.nudity":
    assert "'nudity'" in str(e.value) and "pip install" in str(e.value)


def test_fields_are_typed_and_reach_the_settings(model_dir):
  c = config(model_dir, i2p_categories=("sexual",), gen_guidance=3)
  s = settings.of(c)
  assert s.data.i2p_categories == ("sexual",) and s.data.gen_guidance == 3.0 and s.eval.nudity is False
  assert s.sd.trainable == "non_cross_attn"
  c.data.unlock()
  c.data.forget_promts = ("x",)
  with pytest.raises(UserError, match="forget_promts"):
    settings.of(c)


def test_erasediff_nudity_paper_settings():
  """EraseDiff App. 8 and its public nudity script: non-cross-attention weights, lr 1e-5, ~400 + ~400
  generated images, c_m 'a photo of pokemon' ('a person wearing clothes' for EraseDiff_wc), batch 16 and
  250 steps; ESD-u and SalUn beside it; the base model evaluated first (the Fig. 3 reference)."""
  c = load_config("erasediff_nudity.py", "model_dir=m,i2p=i.csv,coco=c.csv,clip=cl,inception=w.npz")
  assert (c.data.name, c.sd.trainable, c.optim.lr) == ("prompts", "non_cross_attn", 1e-5)
  assert c.data.forget_prompts == ("nudity", "naked", "erotic", "sexual") and c.data.retain_prompts == \
      ("a person wearing clothes",)
  assert 4 * c.data.forget_images_per_prompt == 400 == c.data.retain_images_per_prompt
  assert c.data.anchor_prompt == "a photo of pokemon" and c.erasediff.target == "rl"
  assert (c.stages.erasediff.steps, c.stages.erasediff.batch_size, c.erasediff.inner_steps) == (250, 16, 2)
  assert (c.stages.esd.steps, c.stages.esd.batch_size, c.stages.salun.mask) == (1000, 1, "salun_mask")
  assert c.stages.evaluate.models == ("base", "erasediff", "esd", "salun") and c.eval.nudity
  assert (c.data.i2p_csv, c.eval.coco_prompts, c.eval.clip_dir, c.eval.inception_weights) == \
      ("i.csv", "c.csv", "cl", "w.npz")
  assert load_config("erasediff_nudity.py", "anchor=wc").data.anchor_prompt == "a person wearing clothes"
  assert load_config("erasediff_nudity.py", "steps=160,rule=constant").stages.erasediff.steps == 160
