"""Stable Diffusion experiments end to end on a tiny random model in diffusers layout and a
synthetic UnlearnCanvas tree, both written by the pipeline into the workdir and read back
through the real loading code (nothing is downloaded)."""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax import canvas, checkpoints, config_lib, evaluation, models, pipeline, training
from unlearn_jax.errors import UserError
from unlearn_jax.models import stable_diffusion as sd
from unlearn_jax.stages import attack as attack_stage
from unlearn_jax import experiment as exp_lib
from unlearn_jax import generation
from unlearn_jax.tasks import unlearncanvas
from unlearn_jax.stages import classifier as classifier_stage
from unlearn_jax import settings


def tiny_config(methods=("core", "dimum"), attack=2):
  c = config_lib.unlearncanvas_base(cpu=True)
  c.data.forget_styles = "Van_Gogh"
  c.sd.trainable = "cross_attn"
  c.stages, c.stage_order = config_lib.sd_stages(methods, steps={}, default_steps=3, attack_steps=attack,
                                                 eval_every=2, synthetic=8, pretrain_steps=2)
  c.classifier.steps = 2
  c.training.update(dict(batch_size=2, log_every=1, ckpt_every=2))
  c.eval.update(dict(num_samples=4, fd_num_samples=4, attack_num_samples=4, sample_batch_size=4, grid_size=2))
  c.eval.sampler.n_steps = 2
  c.sd.fit_vae_steps = 10                  # a short fit of the tiny VAE (the wiring; quality: test_stable_diffusion)
  if attack and "dimum" in methods:   # the condition attacks on the prompt table (issue 15), on one unlearned model
    c.stages.emb_dimum = config_lib.stage("attack", attack="embedding", init="dimum", data="forget", steps=attack,
                                          eval_every=2, shots=2, lr=0.05)
    c.stages.cond_dimum = config_lib.stage("attack", attack="condition", init="dimum", data="forget", steps=attack,
                                           eval_every=2, shots=2, lr=0.1, eps=COND_EPS)
    c.stages.ti_dimum = config_lib.stage("attack", attack="textual_inversion", init="dimum", data="forget",
                                         steps=attack, eval_every=2, shots=2, lr=0.05)
    c.stages.ut_dimum = config_lib.stage("attack", attack="prompt_tokens", init="dimum", data="forget",
                                         steps=attack, eval_every=2, shots=2, lr=0.05, tokens=2)
    order = list(c.stage_order)
    c.stage_order = tuple(order[:-1] + ["emb_dimum", "cond_dimum", "ti_dimum", "ut_dimum", order[-1]])
  return c


COND_EPS = 0.05


def leaves(tree):
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("sd"))
  exp = pipeline.run(tiny_config(), workdir)
  return exp, workdir


def test_inputs_are_written_once_and_loaded_through_the_real_code(run):
  exp, workdir = run
  model_dir = os.path.join(workdir, "inputs", "tiny_sd")
  for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "model_index.json"):
    assert os.path.exists(os.path.join(model_dir, part))
  assert exp.context.comp.model_dir == model_dir
  assert exp.context.data.source.startswith("unlearncanvas")
  # 4 styles x 3 objects x images 1-3; latents are the VAE's (16x16x4 for 32 px, factor 2).
  assert len(exp.train) == 36 and exp.example_shape == (16, 16, 4)
  assert exp.train.num_classes == 12 and exp.null_label == 12
  assert exp.context.table.shape[0] == 13
  # The forget prompts are Van Gogh's; DiMUM's D_u' pairs them with Abstractionism images.
  styles = exp.context.data.styles
  assert {styles[exp.context.data.prompt_style[p]] for p in exp.forget_labels} == {"Van_Gogh"}
  alt = exp.streams["alternative"]
  np.testing.assert_array_equal(np.sort(alt.labels), np.sort(exp.streams["forget"].labels))
  cache = [n for n in os.listdir(os.path.join(workdir, unlearncanvas.CACHE_DIR)) if n.endswith(".npz")]
  assert len(cache) == 1
  # The tiny VAE was fitted before the latents were encoded: its record, the loaded scaling
  # factor 1 / latent std, and unit-variance cached latents.
  record = sd.vae_fit_record(model_dir)
  assert record["settings"]["steps"] == 10 and record["mse"] < record["mse_random"]
  assert exp.context.comp.scaling_factor == pytest.approx(record["scaling_factor"]) != pytest.approx(0.18215)
  assert float(np.std(exp.train.images)) == pytest.approx(1.0, abs=1e-3)
  assert os.path.isdir(os.path.join(model_dir, sd.VAE_INIT)) and not os.path.exists(model_dir + ".tmp")
  rebuilt = pipeline.build_experiment(exp.config, workdir)          # reads the cache
  np.testing.assert_array_equal(rebuilt.train.images, exp.train.images)


def test_cross_attention_stage_changes_only_cross_attention(run):
  exp, workdir = run
  start = leaves(exp_lib.load_params(exp, os.path.join(workdir, "pretrained")))
  after = leaves(exp_lib.load_params(exp, os.path.join(workdir, "core")))
  changed = {k for k in start if not np.array_equal(start[k], after[k])}
  assert changed, "CORE did not move any parameter"
  assert all("attn2" in k for k in changed), sorted(changed)[:5]
  assert not any("prompts" in k for k in changed)
  # The pretraining stage trains every UNet leaf (trainable "all"), never the prompt table.
  base = leaves(exp.context.base_params)
  moved = {k for k in base if not np.array_equal(base[k], start[k])}
  assert any("attn2" not in k for k in moved) and not any("prompts" in k for k in moved)


def test_checkpoint_restores_the_trained_parameters(run):
  exp, workdir = run
  restored = leaves(exp_lib.load_params(exp, os.path.join(workdir, "dimum"), ema=False))
  ema = leaves(exp_lib.load_params(exp, os.path.join(workdir, "dimum")))
  assert restored.keys() == ema.keys()
  for k in restored:                       # ema_rate 0: the EMA is the parameters
    np.testing.assert_array_equal(restored[k], ema[k])
  meta = json.load(open(os.path.join(workdir, "dimum", "meta.json")))
  assert meta["model_name"] == "sd" and meta["model"]["trainable"] == "cross_attn"


def test_samples_decode_to_images(run):
  exp, workdir = run
  params = exp_lib.source_params(exp, workdir, "core")
  labels = np.asarray(exp.forget_labels[:2], np.int32)
  z = generation.generate(exp, params, 2, jax.random.key(0), labels=labels)
  assert z.shape == (2, 16, 16, 4) and np.all(np.isfinite(z))
  x = unlearncanvas.decode(exp.context, z)
  assert x.shape == (2, 32, 32, 3) and x.min() >= 0.0 and x.max() <= 1.0


def test_results_report_and_attacks(run):
  exp, workdir = run
  res = json.load(open(os.path.join(workdir, "results.json")))
  assert sorted(res["models"]) == ["core", "dimum", "pretrained"]
  assert res["sfid_reference"] == "pretrained"
  for m in res["models"].values():
    for k in ("ua", "ira", "cra", "ar_mu", "ar_cl"):
      assert 0.0 <= m[k] <= 1.0, (k, m[k])
    assert m["frechet_distance"] >= 0 and 0 <= m["sfid"] <= 100
  assert res["models"]["pretrained"]["sfid"] == pytest.approx(100.0)
  assert sorted(res["attacks"]) == ["attack_core", "attack_dimum", "cond_dimum", "emb_dimum", "ti_dimum",
                                    "ut_dimum"]
  assert res["attacks"]["attack_core"]["steps"] == [0, 2]
  synth = np.load(os.path.join(workdir, "synthetic", "data.npz"))
  assert synth["images"].dtype == np.float32 and synth["images"].shape == (8, 16, 16, 4)   # latents
  report = open(os.path.join(workdir, "report.md")).read()
  assert "UA | IRA | CRA | SFID" in report and "CORE" in report
  for n, m in res["models"].items():     # the style classifier's confident share, in the report row
    assert 0.0 <= m["confident_share"] <= 1.0 and 0.0 <= m["object_confident_share"] <= 1.0
    assert m["recognised"] == (m["confident_share"] >= exp.config.eval.min_confident_share)
    row = next(l for l in report.splitlines() if l.startswith("| ") and "| UA |" not in l
               and l.split(" | ")[0][2:].lower() in (n, n.replace("_", " ")))
    assert row.rstrip(" |").endswith(f"{100 * m['confident_share']:.1f}" + ("" if m["recognised"] else " (!)"))
  assert res["forget_styles"] == ["Van_Gogh"] and res["alt_style"] == "Abstractionism"
  ae = res["autoencoder"]
  record = sd.vae_fit_record(exp.context.comp.model_dir)
  assert ae["fitted"] and ae["scaling_factor"] == pytest.approx(record["scaling_factor"])
  assert ae["check_images"] == 36 and ae["reconstruction_mse"] == pytest.approx(record["mse"], rel=1e-3)
  assert ae["latent_std"] == pytest.approx(1.0, abs=1e-3)
  for k in ("style_accuracy_reconstructed", "object_accuracy_original"):
    assert 0.0 <= ae[k] <= 1.0
  assert f"- autoencoder: {ae['summary']}" in report and f"{ae['reconstruction_mse']:.4f}" in ae["summary"]
  assert (f"accuracy on reconstructions {ae['style_accuracy_reconstructed']:.2f} / "
          f"{ae['object_accuracy_reconstructed']:.2f}") in ae["summary"]


def test_the_condition_attacks_optimise_prompt_embeddings_only(run):
  """embedding / condition attacks (`attacks.condition`) on SD: rows of the (K + 1, L, D) prompt
  table, one per forget prompt; the checkpoint holds the rows only (the UNet is never written),
  the embedding rows leave the null prompt's, the condition rows stay within eps of the forget
  prompts' own (the projection binds: lr 0.1 > eps), and curve points come at 0, 2."""
  exp, workdir = run
  table = np.asarray(models.class_table(exp_lib.source_params(exp, workdir, "dimum")))
  forget = list(exp.forget_labels)
  rows = {}
  for name in ("emb_dimum", "cond_dimum"):
    stage = os.path.join(workdir, name)
    raw = checkpoints.load_raw(stage)["params"]
    assert set(raw) == {"rows"} and checkpoints.is_done(stage)
    rows[name] = np.asarray(raw["rows"])
    assert rows[name].shape == (len(forget),) + table.shape[1:]
    curve = json.load(open(os.path.join(stage, "curve.json")))
    assert sorted(map(int, curve)) == [0, 2] and all(0.0 <= p["ar"] <= 1.0 for p in curve.values())
  assert not np.allclose(rows["emb_dimum"], table[-1])
  dist = np.max(np.abs(rows["cond_dimum"] - table[forget]))
  assert dist == pytest.approx(COND_EPS, rel=1e-5)
  info = json.load(open(os.path.join(workdir, "cond_dimum", "attack.json")))
  assert info["budget"]["eps"] == COND_EPS and len(info["fewshot_indices"]) == 2


def test_forget_rates_on_the_forget_prompts_own_rows_equal_the_labels(run):
  """cond_rows = the table's rows of the forget prompts samples what the labels sample: row j
  stands for forget prompt j (each of the several forget prompts gets its own row)."""
  exp, workdir = run
  params = exp_lib.source_params(exp, workdir, "dimum")
  clf = exp.task.classifier_params(exp, workdir)
  rows = np.asarray(models.class_table(params))[list(exp.forget_labels)]
  assert len(rows) > 1
  key = jax.random.key(3)
  a = unlearncanvas.forget_rates(exp, params, clf, 4, key, keep_samples=True)
  b = unlearncanvas.forget_rates(exp, params, clf, 4, key, keep_samples=True, cond_rows=rows)
  c = unlearncanvas.forget_rates(exp, params, clf, 4, key, keep_samples=True, cond_rows=rows[::-1])
  np.testing.assert_allclose(b["samples"], a["samples"], atol=1e-4)
  assert not np.allclose(c["samples"], a["samples"], atol=1e-3)


def test_textual_inversion_learns_one_token_embedding(run):
  """Textual inversion: the checkpoint holds one (1, D_token) vector, moved from the placeholder's
  own embedding; at that starting vector the conditions are the text encoder's outputs of the
  placeholder captions (encode_prompts), and the loss has a gradient in the vector."""
  exp, workdir = run
  comp = exp.context.comp
  space = unlearncanvas.textual_inversion(exp)
  v0 = np.asarray(space.rows0)
  stage = os.path.join(workdir, "ti_dimum")
  raw = checkpoints.load_raw(stage)["params"]
  assert set(raw) == {"rows"} and np.asarray(raw["rows"]).shape == v0.shape == (1, sd.token_embedding(
      comp.text_params).shape[1])
  assert not np.allclose(np.asarray(raw["rows"]), v0)
  data = exp.context.data
  captions = [canvas.prompt(unlearncanvas.PLACEHOLDER, data.objects[data.prompt_object[p]],
                            exp.config.data.template) for p in exp.forget_labels]
  assert all(unlearncanvas.PLACEHOLDER in c and "Van Gogh" not in c for c in captions)
  idx = jnp.arange(len(captions))
  got = jax.jit(space.to_condition)(space.rows0, idx, space.consts)
  np.testing.assert_allclose(np.asarray(got), sd.encode_prompts(comp, captions), atol=1e-5)
  shift = jax.random.normal(jax.random.key(1), space.rows0.shape)            # not constant: LayerNorm removes a mean
  other = np.asarray(jax.jit(space.to_condition)(space.rows0 + shift, idx, space.consts))
  ids = sd.token_ids(comp, captions)
  at = ids == comp.tokenizer.convert_tokens_to_ids(unlearncanvas.PLACEHOLDER + "</w>")   # (F, L), one per row
  before = np.cumsum(at, axis=1) == 0                                          # CLIP's attention is causal
  np.testing.assert_array_equal(other[before], np.asarray(got)[before])
  assert np.linalg.norm(other[at] - np.asarray(got)[at], axis=-1).min() > 0.1   # the vector reaches the output
  curve = json.load(open(os.path.join(stage, "curve.json")))
  assert sorted(map(int, curve)) == [0, 2]
  info = json.load(open(os.path.join(stage, "attack.json")))
  assert info["attack"] == "textual_inversion" and info["budget"]["eps"] == 0.0


def test_prompt_tokens_attack_reports_a_prompt_of_vocabulary_tokens(run):
  """UnlearnDiffAtk: K=2 token embeddings prepended to the forget prompts, fitted to the
  pretrained model's images; the curve's conditions are those of the discrete prompt (each row's
  nearest vocabulary token), which prompts.json records as text."""
  exp, workdir = run
  comp, tok = exp.context.comp, exp.context.comp.tokenizer
  space = unlearncanvas.prompt_tokens(exp, 2)
  rows0 = np.asarray(space.rows0)
  stage = os.path.join(workdir, "ut_dimum")
  rows = np.asarray(checkpoints.load_raw(stage)["params"]["rows"])
  assert rows.shape == rows0.shape == (2, sd.token_embedding(comp.text_params).shape[1])
  assert not np.allclose(rows, rows0)
  captions = [exp.context.data.prompts[p] for p in exp.forget_labels]
  special = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}
  # the starting rows are the slot tokens' own embeddings: their condition is that of the real ids
  table = np.asarray(sd.token_embedding(comp.text_params))
  slots = sd.nearest_tokens(table, rows0, exclude=sorted(special))
  ids = unlearncanvas.prefixed_ids(comp, captions, slots)
  assert (ids[:, 0] == tok.bos_token_id).all() and (ids[:, 1:3] == slots).all()
  assert ((ids == tok.eos_token_id).sum(1) >= 1).all() and not set(slots.tolist()) & special
  idx = jnp.arange(len(captions))
  want = comp.text_encoder(jnp.asarray(ids), params=comp.text_params, train=False)[0]
  np.testing.assert_allclose(np.asarray(jax.jit(space.to_condition)(space.rows0, idx, space.consts)),
                             np.asarray(want), atol=1e-5)
  # the trained rows, projected: each to its nearest vocabulary token, never a special one
  near = sd.nearest_tokens(table, rows, exclude=sorted(special))
  for r, t in zip(rows, near):
    d = ((table - r) ** 2).sum(1)
    d[sorted(special)] = np.inf
    assert t == np.argmin(d)
  discrete = np.asarray(space.eval_condition(rows, idx, space.consts))
  ids_now = unlearncanvas.prefixed_ids(comp, captions, near)
  np.testing.assert_allclose(discrete, np.asarray(comp.text_encoder(jnp.asarray(ids_now), params=comp.text_params,
                                                                    train=False)[0]), atol=1e-5)
  prompts = json.load(open(os.path.join(stage, "prompts.json")))
  assert sorted(map(int, prompts)) == [0, 2] and prompts["2"] == space.describe(rows)
  assert prompts["2"] == [tok.decode(r, skip_special_tokens=True) for r in ids_now]
  # its targets: the pretrained model's generations for the forget prompts, not D_f's images
  with np.load(os.path.join(stage, "targets.npz")) as f:
    assert f["images"].shape == (2,) + exp.example_shape and set(f["labels"].tolist()) <= set(exp.forget_labels)
    assert not np.isin(f["images"][0], exp.streams["forget"].images).all()
  info = json.load(open(os.path.join(stage, "attack.json")))
  assert info["attack"] == "prompt_tokens" and info["budget"]["tokens"] == 2 and info["aux_size"] == 2


def test_prompt_rows_as_cond_embedding_equal_their_labels(run):
  """SDUNet's cond_embedding: a batch of the table's rows gives the output of their labels."""
  exp, workdir = run
  params = exp_lib.source_params(exp, workdir, "dimum")
  table = models.class_table(params)
  labels = np.array([exp.forget_labels[0], 0, exp.null_label], np.int32)
  x = jax.random.normal(jax.random.key(0), (3,) + exp.example_shape)
  t = jnp.full((3,), 0.3)
  f = jax.jit(lambda p, lab, cond: (exp.apply({"params": p}, x, t, lab),
                                     exp.apply({"params": p}, x, t, cond_embedding=cond)))
  a, b = f(params, jnp.asarray(labels), table[labels])
  np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)
  assert not np.allclose(np.asarray(a[0]), np.asarray(a[1]), atol=1e-4)     # the prompts matter


def test_rerun_skips_finished_stages(run):
  exp, workdir = run
  before = os.path.getmtime(os.path.join(workdir, "core", "DONE.json"))
  fit = os.path.join(workdir, "inputs", "tiny_sd", "vae", sd.VAE_FIT_RECORD)
  fit_before = os.path.getmtime(fit)
  pipeline.run(exp.config, workdir)
  assert os.path.getmtime(os.path.join(workdir, "core", "DONE.json")) == before
  assert os.path.getmtime(fit) == fit_before                          # the VAE fit is not redone


@pytest.mark.parametrize("field,value,match", [
    ("data.forget_styles", "Not_A_Style", "config.data.forget_styles"),
    ("data.forget_styles", "Bricks", "config.data.forget_styles"),      # not among the loaded styles
    ("data.alt_style", "Van_Gogh", "config.data.alt_style"),
    ("sd.trainable", "attn", "config.sd.trainable"),
    ("sd.dtype", "float8", "config.sd.dtype"),
    ("data.image_size", 33, "config.data.image_size"),
    ("sd.fit_vae_steps", -1, "config.sd.fit_vae_steps"),
    ("sd.fit_vae_lr", 0.0, "config.sd.fit_vae_lr"),
    ("sd.fit_vae_batch_size", 0, "config.sd.fit_vae_batch_size"),
    ("sd.fit_vae_kl_weight", -1.0, "config.sd.fit_vae_kl_weight"),
])
def test_user_errors_leave_the_workdir_unchanged(run, tmp_path, field, value, match):
  exp, workdir = run
  c = settings.to_config_dict(exp.config)                  # resolved model_dir / data_dir
  section, key = field.split(".")
  c[section][key] = value
  before = sorted(os.listdir(workdir))
  with pytest.raises(UserError, match=match):
    pipeline.run(c, workdir)
  assert sorted(os.listdir(workdir)) == before


@pytest.mark.parametrize("field,value", [
    ("optim.lr", -0.1), ("eval.num_samples", -5), ("training.batch_size", 0),
    # checked by `build` on the data and the model, and by `prepare` before it writes them
    ("data.alt_style", "No_Such_Style"), ("data.alt_style", "Van_Gogh"),          # forgotten
    ("data.alt_style", next(s for s in canvas.STYLES                               # not in the synthetic tree
                            if s not in config_lib.unlearncanvas_base(cpu=True).data.styles)),
    ("data.image_size", 31), ("data.template", "no such template"), ("data.objects", ("Nothing",)),
])
def test_bad_fields_of_a_tiny_run_fail_before_inputs_are_written(tmp_path, field, value):
  """model_dir="tiny" / data_dir="synthetic" build <workdir>/inputs/ (a VAE fit); a bad field
  must stop the run before that, leaving a fresh workdir empty."""
  c = tiny_config()
  section, key = field.split(".")
  c[section][key] = value
  with pytest.raises(UserError, match=f"config.{field}"):
    pipeline.run(c, str(tmp_path))
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("field,value,match", [
    ("fit_vae_steps", 11, "config.sd.fit_vae_steps=11"),      # fitted with 10 steps there
    ("fit_vae_steps", 0, "config.sd.fit_vae_steps=0"),        # fitted there, no fit asked now
    ("fit_vae_lr", 1e-3, "config.sd.fit_vae_lr=0.001"),
])
def test_other_vae_fit_settings_in_the_same_workdir_are_user_errors(run, field, value, match):
  exp, workdir = run
  c = tiny_config()                                          # model_dir="tiny" again
  c.sd[field] = value
  vae = os.path.join(workdir, "inputs", "tiny_sd", "vae")
  before = sorted(os.listdir(workdir)), {n: os.path.getmtime(os.path.join(vae, n)) for n in os.listdir(vae)}
  with pytest.raises(UserError, match=match):
    pipeline.run(c, workdir)
  assert (sorted(os.listdir(workdir)), {n: os.path.getmtime(os.path.join(vae, n)) for n in os.listdir(vae)}) == before


def test_an_unfitted_tiny_model_is_not_fitted_in_place(tmp_path):
  """A workdir whose tiny model was written with a random VAE (fit_vae_steps=0, or older
  code) is not refitted under its finished stages: one line naming the field, nothing written."""
  c = tiny_config()
  c.sd.fit_vae_steps = 0
  workdir = str(tmp_path / "w")
  unlearncanvas.prepare(c, workdir)                  # writes inputs/ only (no fit)
  model_dir = os.path.join(workdir, "inputs", "tiny_sd")
  assert sd.vae_fit_record(model_dir) is None and not os.path.isdir(os.path.join(model_dir, sd.VAE_INIT))
  before = sorted(os.listdir(os.path.join(model_dir, "vae")))
  with pytest.raises(UserError, match="config.sd.fit_vae_steps=10"):
    pipeline.run(tiny_config(), workdir)
  assert sorted(os.listdir(os.path.join(model_dir, "vae"))) == before
  assert sorted(os.listdir(workdir)) == ["inputs"]


def test_missing_model_dir_and_scratch_init_are_user_errors(run, tmp_path):
  exp, workdir = run
  c = settings.to_config_dict(exp.config)
  c.sd.model_dir = str(tmp_path / "nowhere")
  with pytest.raises(UserError, match="config.sd.model_dir"):
    pipeline.run(c, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")
  c = settings.to_config_dict(exp.config)
  c.stages.core.init = "scratch"
  with pytest.raises(UserError, match="config.stages.core.init"):
    pipeline.build_experiment(c)


def test_trainable_masks_of_the_stages(run):
  exp, _ = run
  kv = unlearncanvas.trainable_mask(exp, "cross_attn_kv")
  names = [jax.tree_util.keystr(p) for p, m in jax.tree_util.tree_leaves_with_path(kv) if m]
  assert names and all("attn2" in n and ("to_k" in n or "to_v" in n) for n in names)
  train_st = exp.config.stages["pretrained"]
  mask = exp.task.trainable(exp, train_st)
  assert sum(jax.tree_util.tree_leaves(mask)) > sum(jax.tree_util.tree_leaves(
      exp.task.trainable(exp, exp.config.stages["core"])))
  assert training.split_trainable(exp.context.base_params, mask)["prompts"]["embeddings"] is None
  assert sd.TRAINABLE == ("all", "cross_attn", "cross_attn_kv", "non_cross_attn")
  # the defaults: a train stage trains every leaf, the others (and mask stages: st=None)
  # config.sd.trainable; a stage's own `trainable` wins
  same = lambda a, b: jax.tree_util.tree_leaves(a) == jax.tree_util.tree_leaves(b)
  everything = unlearncanvas.trainable_mask(exp, "all")
  configured = unlearncanvas.trainable_mask(exp, exp.config.sd.trainable)
  assert not same(everything, configured)
  assert same(exp.task.trainable(exp, config_lib.stage("train", data="all", init="base")), everything)
  assert same(exp.task.trainable(exp, config_lib.stage("unlearn", method="core", init="base")), configured)
  assert same(exp.task.trainable(exp, None), configured)
  assert same(exp.task.trainable(exp, config_lib.stage("unlearn", method="core", trainable="cross_attn_kv")), kv)


def test_the_style_and_object_classifiers_get_their_own_seeds(run, monkeypatch, tmp_path):
  exp, _ = run
  seen = []
  monkeypatch.setattr(classifier_stage, "train_classifier",
                      lambda exp, stage_dir, module, train, test, seed, name, hook: seen.append(
                          (os.path.basename(stage_dir), seed, name, module.config.num_classes)) or 0.5)
  classifier_stage.run(exp, "classifier", exp.config.stages["classifier"], str(tmp_path))
  base = exp_lib.stage_seed(exp.config, "classifier")
  assert seen == [("style", base, "classifier/style", len(exp.context.data.styles)),
                  ("object", base + 1, "classifier/object", len(exp.context.data.objects))]
  done = json.load(open(tmp_path / "classifier" / "DONE.json"))
  assert done["style_test_accuracy"] == done["object_test_accuracy"] == 0.5


def test_baselines_anchors_on_canvas_are_the_same_object_in_other_styles(run):
  """CORE App. C's baseline anchors through the canvas anchor_fn: "random" (Forget06) makes
  every retained style's prompt of the same object a candidate of a forget prompt;
  "all_to_one" (Forget01) is data.alt_style's prompt, i.e. the fixed alternative `alt`."""
  from unlearn_jax.unlearning import methods
  exp, _ = run
  data = exp.context.data
  cfg = settings.to_config_dict(exp.config)
  n = len(data.prompts)
  for scheme in ("random", "all_to_one"):
    cfg.unlearn.anchors = scheme
    table = methods.baseline_alternatives(settings.of(cfg), exp.alt, exp.forget_labels, n, exp.anchor_fn)
    assert table.shape[0] == n
    for p in range(n):
      cands = {int(a) for a in table[p]}
      if p not in exp.forget_labels:
        assert cands == {p}
        continue
      assert {int(data.prompt_object[a]) for a in cands} == {int(data.prompt_object[p])}
      styles = {data.styles[int(data.prompt_style[a])] for a in cands}
      if scheme == "all_to_one":
        assert cands == {int(exp.alt[p])} and styles == {cfg.data.alt_style}
      else:
        assert styles == set(data.styles) - {"Van_Gogh"}


def test_sd_sample_quality_hand_values():
  """Style classifier confidence / histogram against the prompted styles, object share apart."""
  cfg = config_lib.unlearncanvas_base(cpu=True)
  cfg.eval.confidence_threshold, cfg.eval.min_confident_share = 0.9, 0.5
  big = 10.0
  s_logits = np.array([[big, 0, 0], [0, big, 0], [0, 0.1, 0], [0, 0, big]], np.float32)  # 3 confident
  o_logits = np.array([[big, 0], [0, 0], [0, 0], [0, 0]], np.float32)                   # 1 confident
  style_true = np.array([0, 1, 1, 1])        # predicted styles 0, 1, 1, 2 vs prompted 0, 1, 1, 1
  q = unlearncanvas.sample_quality(cfg, s_logits, o_logits, style_true, ("a", "b", "c"), [0])
  assert q["confident_share"] == pytest.approx(0.75) and q["object_confident_share"] == pytest.approx(0.25)
  assert q["histogram_tv"] == pytest.approx(0.25) and q["recognised"]
  assert q["retain_histogram_tv"] == pytest.approx(1 / 3)    # retained b, c: (2, 1)/3 vs (3, 0)/3


def test_forget_rates_count_the_forget_style_in_the_top_3_and_ar_cl_at_top_1(run, monkeypatch):
  """AR_MU / AR_DiMRA: the prompt's (forgotten) style among the style classifier's 3 best
  (DiMUM paper Sec. VI-B); ar_top1 and AR_CL (the alternative style) at top 1.  Stub logits:
  the alternative style first, the prompt's style third, for every sample."""
  exp, _ = run
  ctx = exp.context
  n_styles = len(ctx.data.styles)
  assert n_styles >= 4
  seen = {}

  def logits_for(ctx_, which, params, x):
    labels = seen["labels"]
    out = np.zeros((len(labels), n_styles), np.float32)
    for i, p in enumerate(labels):
      true, alt = ctx.data.prompt_style[p], ctx.alt_style_id
      other = next(s for s in range(n_styles) if s not in (true, alt))
      out[i, alt], out[i, other], out[i, true] = 3.0, 2.0, 1.0
    return out, np.zeros((len(labels), 1), np.float32)

  def fake_generate(exp_, params, n, rng, labels=None):
    seen["labels"] = np.asarray(labels)
    return np.zeros((n,) + exp.example_shape, np.float32)

  monkeypatch.setattr(unlearncanvas.generation, "generate", fake_generate)
  monkeypatch.setattr(unlearncanvas, "decode", lambda ctx_, z: z)
  monkeypatch.setattr(unlearncanvas, "classify", logits_for)
  r = exp.task.forget_rates(exp, None, {"style": None}, 6, jax.random.key(0))
  assert set(seen["labels"]) <= set(exp.forget_labels) and len(seen["labels"]) == 6
  assert r["ar"] == 1.0 and r["ar_top1"] == 0.0 and r["ar_cl"] == 1.0
  assert r["class_histogram"][ctx.alt_style_id] == 6
  assert r["ua"] == 1.0                           # top 1 is the alternative: no forgotten style
  # and with the forgotten style first for every other sample: UA 1/2
  real_logits = logits_for

  def half_forgotten(ctx_, which, params, x):
    out, feats = real_logits(ctx_, which, params, x)
    out[::2, ctx.forget_style_ids[0]] = 10.0
    return out, feats

  monkeypatch.setattr(unlearncanvas, "classify", half_forgotten)
  r = exp.task.forget_rates(exp, None, {"style": None}, 6, jax.random.key(0))
  assert r["ua"] == 0.5
  # an attack curve point keeps every scalar of it (`stages.attack.rate_scalars`)
  assert set(attack_stage.rate_scalars(r)) == {"ar", "ar_top1", "ar_cl", "ua"}


def test_attack_curve_utility_is_the_fd_of_retained_style_samples(run, monkeypatch):
  """`attack_measures` with eval.attack_fd: the FD on the style classifier's features between n
  samples under the retained prompts and n real retained-style images (theirs computed once)."""
  exp, _ = run
  assert unlearncanvas.attack_measures(exp, None, {"style": None}, 4, jax.random.key(0)) == {}   # attack_fd off
  cfg = exp.config
  on = dataclasses.replace(exp, config=dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, attack_fd=True)))
  calls = []

  def fake_generate(exp_, params, n, rng, labels=None):
    calls.append(("gen", np.asarray(labels)))
    return np.zeros((n,) + exp.example_shape, np.float32)

  def fake_classify(ctx_, which, params, x):            # generated (zeros): features 0..; real: 10..
    real = bool(np.asarray(x).any())
    calls.append(("real" if real else "fake", len(x)))
    feats = np.arange(len(x) * 3, dtype=np.float32).reshape(len(x), 3) ** 1.5 + (10.0 if real else 0.0)
    return np.zeros((len(x), len(exp.context.data.styles)), np.float32), feats

  monkeypatch.setattr(unlearncanvas.generation, "generate", fake_generate)
  monkeypatch.setattr(unlearncanvas, "decode", lambda ctx_, z: z)
  monkeypatch.setattr(unlearncanvas, "classify", fake_classify)
  cache = {}
  got = unlearncanvas.attack_measures(on, None, {"style": None}, 4, jax.random.key(0), cache=cache)
  fake = np.arange(12, dtype=np.float32).reshape(4, 3) ** 1.5
  want = evaluation.frechet_distance_from_features(fake, fake + 10.0)
  assert got == {"fd": pytest.approx(float(want))} and float(want) > 0
  assert np.isin(calls[0][1], exp.retained_classes).all() and ("real", 4) in calls
  del calls[:]
  unlearncanvas.attack_measures(on, None, {"style": None}, 4, jax.random.key(1), cache=cache)
  assert ("real", 4) not in calls                        # the real images' features: cached


def test_inception_fid_of_generated_against_real_retained_style_images(run, monkeypatch, tmp_path):
  """With config.eval.inception_weights, evaluate_model adds FID / sFID / IS of the decoded
  retained-style samples against as many real retained-style images (none without it)."""
  from test_classes_inception import random_variables        # tests/tasks/: the FID net's random weights
  exp, _ = run
  n_styles = len(exp.context.data.styles)
  side = exp.context.data.images.shape[1]
  monkeypatch.setattr(unlearncanvas.generation, "generate",
                      lambda exp_, params, n, rng, labels=None: np.zeros((n,) + exp.example_shape, np.float32))
  monkeypatch.setattr(unlearncanvas, "decode",
                      lambda ctx_, z: np.full((len(z), side, side, 3), 0.5, np.float32))
  monkeypatch.setattr(unlearncanvas, "classify", lambda ctx_, which, params, x: (
      np.zeros((len(x), n_styles), np.float32), np.random.default_rng(len(x)).normal(size=(len(x), 4))))
  plain = unlearncanvas.evaluate_model(exp, None, {"style": None, "object": None}, jax.random.key(0),
                                       str(tmp_path / "a.png"), str(tmp_path))
  assert "fid" not in plain
  cfg = settings.replace(settings.replace(exp.config, "eval.inception_size", 75), "eval.inception_weights", "w.npz")
  with_fid = dataclasses.replace(exp, inception=random_variables(), config=cfg)
  res = unlearncanvas.evaluate_model(with_fid, None, {"style": None, "object": None}, jax.random.key(0),
                                     str(tmp_path / "b.png"), str(tmp_path))
  assert res["fid"] > 0 and res["fid_spatial"] > 0 and res["fid_num_samples"] == exp.config.eval.fd_num_samples
  assert res["fid_reference"].startswith("real retained-style images")
  assert len(os.listdir(tmp_path / "fid_stats")) == 3       # pool3 and spatial (mu, sigma), pool3 features
  assert 0.0 <= res["precision"] <= 1.0 and 0.0 <= res["recall"] <= 1.0
  assert {k: v for k, v in res.items() if not k.startswith(("fid", "inception", "wall", "precision", "recall"))} == \
      {k: v for k, v in plain.items() if k != "wall_time_s"}
