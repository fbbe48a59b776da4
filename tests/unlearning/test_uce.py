"""UCE (unlearning/uce.py): the closed form against a direct least-squares solve, the edit on a
tiny random Stable Diffusion (the forgotten prompts' keys / values become their targets', the
preserved prompts' barely move, only attn2 to_k / to_v change), and one pipeline run: a UCE
stage (an ordinary checkpoint, resumable) then DiMRA on it, plus the validation errors."""
import dataclasses
import os

import jax
import ml_collections
import numpy as np
import pytest

from unlearn_jax import checkpoints, config_lib, pipeline, settings
from unlearn_jax import experiment as exp_lib
from unlearn_jax.errors import UserError
from unlearn_jax.stages import train as train_stage
from unlearn_jax.unlearning import methods, uce
from test_dimum_pipeline import tiny_config as ddpm_tiny_config


def _rows(seed, n, d):
  return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


# ----------------------------------------------------------------------------- the closed form (Eq. 4)

def _objective_grad(k, k_old, c, c_t, w, c_p, w_p, lamb):
  """d/dK of sum_i w_i ||K^T c_i - K_old^T c_i*||^2 + sum_j v_j ||K^T c_j - K_old^T c_j||^2
  + lambda ||K - K_old||^2, in float64."""
  k, k_old, c, c_t, c_p = (np.asarray(a, np.float64) for a in (k, k_old, c, c_t, c_p))
  r_e = c @ k - c_t @ k_old                  # (N, D_out) residuals
  r_p = c_p @ (k - k_old)
  return 2 * ((c * w[:, None]).T @ r_e + (c_p * w_p[:, None]).T @ r_p + lamb * (k - k_old))


def _lstsq(k_old, c, c_t, w, c_p, w_p, lamb):
  """The same minimiser by np.linalg.lstsq on the stacked rows (float64)."""
  k_old = np.asarray(k_old, np.float64)
  d = k_old.shape[0]
  rows = np.concatenate([np.sqrt(w)[:, None] * c, np.sqrt(w_p)[:, None] * c_p, np.sqrt(lamb) * np.eye(d)])
  rhs = np.concatenate([np.sqrt(w)[:, None] * (c_t @ k_old), np.sqrt(w_p)[:, None] * (c_p @ k_old),
                        np.sqrt(lamb) * k_old])
  return np.linalg.lstsq(rows, rhs, rcond=None)[0]


@pytest.mark.parametrize("n_keep", [0, 9])
def test_closed_form_is_the_least_squares_minimiser(n_keep):
  d, d_out = 6, 5
  k_old = _rows(0, d, d_out)
  c, c_t = _rows(1, 4, d), _rows(2, 4, d)
  w = np.array([1.0, 0.0, 2.5, 0.7])             # one row switched off, as a token mask does
  c_p, w_p = _rows(3, n_keep, d), np.full(n_keep, 0.3)
  lamb = 0.2
  k = np.asarray(uce.closed_form(k_old, c, c_t, w, c_p, w_p, lamb))
  np.testing.assert_allclose(k, _lstsq(k_old, c, c_t, w, c_p, w_p, lamb), rtol=1e-4, atol=1e-4)
  g = _objective_grad(k, k_old, c, c_t, w, c_p, w_p, lamb)
  g0 = _objective_grad(k_old, k_old, c, c_t, w, c_p, w_p, lamb)
  assert np.abs(g).max() < 1e-4 * np.abs(g0).max()
  # Eq. 4 as the paper writes it, W = K^T: (e sum W c* c^T + p sum W c_j c_j^T + lambda W)(...)^-1
  w_old = k_old.T.astype(np.float64)
  num = (w_old @ c_t.T * w) @ c + (w_old @ c_p.T * w_p) @ c_p + lamb * w_old
  den = (c.T * w) @ c + (c_p.T * w_p) @ c_p + lamb * np.eye(d)
  np.testing.assert_allclose(k, (num @ np.linalg.inv(den)).T, rtol=1e-4, atol=1e-4)


def test_targets_equal_to_their_concepts_leave_the_kernel_unchanged():
  k_old, c = _rows(0, 6, 5), _rows(1, 4, 6)
  k = uce.closed_form(k_old, c, c, np.ones(4), _rows(2, 3, 6), np.ones(3), 0.5)
  np.testing.assert_array_equal(np.asarray(k), k_old)


def test_token_weights_start_at_the_first_differing_token():
  emb = np.stack([_rows(i, 5, 3) for i in range(3)])                 # (3, L=5, D=3)
  ref = emb.copy()
  ref[0, 2:] += 1.0                                                   # prompt 0 differs from token 2
  ref[1, 4] -= 1.0                                                    # prompt 1 only at the last
  w = np.asarray(uce.token_weights(emb, ref, "concept"))               # prompt 2 equals its reference
  np.testing.assert_array_equal(w, [[0, 0, 1, 1, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(np.asarray(uce.token_weights(emb, ref, "all")), np.ones((3, 5)))


# ----------------------------------------------------------------------------- a tiny SD through the pipeline

def tiny_config():
  """classifier -> uce (from the tiny model) -> DiMRA on D_r, every count at its smallest."""
  c = config_lib.unlearncanvas_base(cpu=True)
  c.data.forget_styles = "Van_Gogh"
  c.sd.fit_vae_steps = 0
  c.stages = ml_collections.ConfigDict(dict(
      classifier=config_lib.stage("classifier"),
      uce=config_lib.stage("unlearn", method="uce", init="base"),
      attack_uce=config_lib.stage("attack", init="uce", data="retain", steps=1)))
  c.stage_order = ("classifier", "uce", "attack_uce")
  c.classifier.update(dict(steps=1, features=(4,), dense=8))
  c.training.update(dict(batch_size=2, log_every=1, ckpt_every=1))
  c.eval.update(dict(num_samples=2, fd_num_samples=2, attack_num_samples=2, sample_batch_size=2, grid_size=2))
  c.eval.sampler.n_steps = 2
  return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("uce"))
  exp = pipeline.run(tiny_config(), workdir)
  return exp, workdir


def _leaves(tree):
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def _kv(params):
  """{path: kernel} of the attn2 to_k / to_v kernels."""
  return {k: v for k, v in _leaves(params).items() if "attn2" in k and ("to_k" in k or "to_v" in k)
          and k.endswith("['kernel']")}


def _edit(exp, forget, c: uce.Config):
  base = exp.context.base_params
  ids = uce.condition_ids(c, forget, exp.alt, base["prompts"]["embeddings"].shape[0])
  new = uce.uce_edit(base, ids["forget"], ids["target"], ids["reference"], ids["keep"], c.erase_scale,
                     c.preserve_scale, c.lamb, tokens=c.tokens)
  return base, new, ids


def test_the_stage_edits_only_the_cross_attention_keys_and_values(run):
  exp, workdir = run
  base = _leaves(exp.context.base_params)
  after = _leaves(exp_lib.load_params(exp, os.path.join(workdir, "uce")))
  assert after.keys() == base.keys()
  changed = {k for k in base if not np.array_equal(base[k], after[k])}
  assert changed == set(_kv(exp.context.base_params)) and len(changed) >= 2   # every attn2 to_k / to_v kernel
  # the stage's result is Eq. 4 under the config's defaults (uce_edit on the base model)
  _, new, _ = _edit(exp, exp.forget_labels, exp.config.uce)
  for k, v in _kv(new).items():
    np.testing.assert_allclose(after[k], v, rtol=1e-5, atol=1e-6)
  done = checkpoints.read_json(os.path.join(workdir, "uce", checkpoints.DONE))
  assert done["closed_form"] and done["steps"] == 0
  assert checkpoints.read_json(os.path.join(workdir, "uce", checkpoints.META))["weights"] == "params"


@pytest.mark.parametrize("target,tokens", [("empty", "concept"), ("alt", "concept"), ("alt", "all")])
def test_forgotten_tokens_project_as_their_targets(run, target, tokens):
  """No preservation, lambda small: every edited token's key and value are its target's
  (two forgotten prompts: fewer edited tokens than text dimensions, so Eq. 4 fits exactly)."""
  exp, _ = run
  c = uce.Config(target=target, tokens=tokens, preserve="none", lamb=1e-5)
  base, new, ids = _edit(exp, exp.forget_labels[:2], c)
  table = np.asarray(base["prompts"]["embeddings"], np.float64)
  emb, tgt = table[ids["forget"]], table[ids["target"]]
  w = np.asarray(uce.token_weights(emb, table[ids["reference"]], tokens)) > 0
  assert 0 < w.sum() <= table.shape[-1] and (tokens == "all") == w.all()
  if target == "alt":
    assert np.all(np.asarray(exp.alt)[ids["forget"]] == ids["target"])
  old, kv = _kv(base), _kv(new)
  for k in old:
    got, want, before = emb[w] @ kv[k], tgt[w] @ old[k], emb[w] @ old[k]
    assert np.abs(got - want).max() < 1e-2 * np.abs(want - before).max(), k


def _moved(kv, old, rows):
  """max over the edited kernels of ||rows (K - K_old)|| / ||rows K_old||."""
  return max(np.linalg.norm(rows @ (kv[k] - old[k])) / np.linalg.norm(rows @ old[k]) for k in old)


def test_preserved_prompts_barely_move(run):
  """Where the edited and preserved tokens fit in the text dimensions (one forgotten and one
  retained prompt), Eq. 4 keeps the preserved prompt's keys / values while the forgotten
  prompt's move; with every retained prompt preserved (more tokens than dimensions: a
  trade-off) they move less the larger preserve_scale, and much less than without."""
  exp, _ = run
  base = exp.context.base_params
  table = np.asarray(base["prompts"]["embeddings"], np.float64)
  data = exp.context.data
  forget = exp.forget_labels[0]
  kept = next(p for p in exp.retained_classes if data.prompt_object[p] == data.prompt_object[forget])
  c = uce.Config(lamb=1e-5)
  ids = uce.condition_ids(c, [forget], exp.alt, table.shape[0])
  new = uce.uce_edit(base, ids["forget"], ids["target"], ids["reference"], np.array([kept], np.int32), 1.0, 1.0,
                     c.lamb, tokens=c.tokens)
  old, kv = _kv(base), _kv(new)
  assert _moved(kv, old, table[kept]) < 1e-2 and _moved(kv, old, table[forget]) > 0.3

  keep = [i for i in range(table.shape[0]) if i not in exp.forget_labels]   # retained prompts + ""
  moved = {}
  for preserve, scale in (("retained", 0.1), ("retained", 1.0), ("none", 0.1)):
    _, new, _ = _edit(exp, exp.forget_labels, uce.Config(preserve=preserve, preserve_scale=scale))
    moved[preserve, scale] = _moved(_kv(new), old, table[keep].reshape(-1, table.shape[-1]))
  assert moved["retained", 1.0] < moved["retained", 0.1] < 0.5 * moved["none", 0.1], moved


def test_an_interrupted_stage_is_not_edited_again(run, monkeypatch):
  """A checkpoint without DONE.json (killed after the save): the rerun writes DONE.json from it."""
  exp, workdir = run
  stage_dir = os.path.join(workdir, "uce")
  before = _leaves(exp_lib.load_params(exp, stage_dir))
  os.remove(os.path.join(stage_dir, checkpoints.DONE))
  monkeypatch.setattr(methods, "edit", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
  train_stage.run(exp, "uce", exp.config.stages["uce"], workdir)
  assert checkpoints.is_done(stage_dir)
  after = _leaves(exp_lib.load_params(exp, stage_dir))
  assert all(np.array_equal(before[k], after[k]) for k in before)


def test_dimra_runs_on_the_uce_checkpoint(run):
  exp, workdir = run
  curve = checkpoints.read_json(os.path.join(workdir, "attack_uce", "curve.json"))
  assert sorted(int(s) for s in curve) == [0, 1]
  assert all(0.0 <= v["ar"] <= 1.0 for v in curve.values())
  attacked = _leaves(exp_lib.load_params(exp, os.path.join(workdir, "attack_uce")))
  edited = _leaves(exp_lib.load_params(exp, os.path.join(workdir, "uce")))
  moved = {k for k in edited if not np.array_equal(edited[k], attacked[k])}
  assert moved and not any("prompts" in k for k in moved)                 # the attack trained from it
  assert any(k in _kv(exp.context.base_params) for k in moved)


# ----------------------------------------------------------------------------- validation

def test_uce_needs_a_stable_diffusion_model(tmp_path):
  c = ddpm_tiny_config()
  c.stages.uce = config_lib.stage("unlearn", method="uce", init="pretrained")
  c.stage_order = tuple(c.stage_order[:2]) + ("uce",) + tuple(c.stage_order[2:])
  with pytest.raises(UserError, match=r"config\.stages\.uce\.method='uce' .*config\.model\.name='sd'"):
    pipeline.run(c, str(tmp_path))
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("field,value", [("uce.target", "art"), ("uce.tokens", "last"), ("uce.preserve", "all"),
                                         ("uce.lamb", 0.0), ("uce.erase_scale", -1.0),
                                         ("stages.uce.mask", "salun_mask")])
def test_bad_uce_fields_fail_before_anything_is_written(tmp_path, field, value):
  c = tiny_config()
  node = c
  *head, key = field.split(".")
  for part in head:
    node = node[part]
  node[key] = value
  with pytest.raises(UserError, match=rf"config\.{field.replace('.', r'[.]')}="):
    pipeline.run(c, str(tmp_path))
  assert os.listdir(tmp_path) == []


def test_the_spec_declares_a_closed_form_edit():
  s = methods.spec("uce")
  assert s.display == "UCE" and s.closed_form is uce.edit and s.model == "sd" and s.section == "uce"
  assert methods.CLOSED_FORM == ("uce",)
  objectives, tx, options = methods.build("uce", "", settings.of(tiny_config()), alt=np.arange(4), steps=0)
  assert objectives == {} and tx is None and options == methods.Options()
  stages, _ = config_lib.dimum_stages(pretrain_steps=1, unlearn_steps=5, attack_steps=1, eval_every=1,
                                      methods=("uce", "uce:alt"))
  assert stages.uce.steps == 0 and stages.uce_alt.variant == "alt" and not stages.uce.mask
  with pytest.raises(ValueError, match="closed-form"):
    dataclasses.replace(s, mask="salun")
  ids = uce.condition_ids(uce.Config(target="alt", preserve="null"), (2, 1), np.array([0, 3, 2, 3]), 5)
  assert ids["forget"].tolist() == [1, 2] and ids["reference"].tolist() == [3, 4]     # 2 -> itself: ""
  assert ids["target"].tolist() == [3, 4] and ids["keep"].tolist() == [4]
  assert uce.condition_ids(uce.Config(), (1,), None, 5)["keep"].tolist() == [0, 2, 3, 4]
