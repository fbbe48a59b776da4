"""core: anchor schemes (Table 4) and the frozen-target losses (Eq. 2-3), by hand."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax import training
from unlearn_jax.errors import UserError
from unlearn_jax.unlearning import core
from method_fixtures import DENOISE, FROZEN, K, LABELS, PARAMS, X_T, apply_fn, close, eps_np, loss_of


def test_core_one_to_one_maps_to_distinct_retained_classes():
  cand = core.anchor_candidates(10, (3, 4), "one_to_one")
  assert cand.shape == (10, 1)
  assert cand[3, 0] == 5 and cand[4, 0] == 6        # next retained, unused
  assert [cand[c, 0] for c in range(10) if c not in (3, 4)] == [c for c in range(10) if c not in (3, 4)]


def test_core_one_to_one_among_forget_classes_when_few_are_retained():
  cand = core.anchor_candidates(5, (0, 1, 2, 3), "one_to_one")
  assert [int(cand[c, 0]) for c in (0, 1, 2, 3)] == [1, 2, 3, 0]
  assert all(cand[c, 0] != c for c in (0, 1, 2, 3))


def test_core_all_to_one_and_groups_to_one():
  cand = core.anchor_candidates(10, (0, 1, 2, 3, 4, 5, 6), "all_to_one")
  assert set(cand[[0, 1, 2, 3, 4, 5, 6], 0]) == {7}
  assert core.anchor_candidates(10, (0, 1), "all_to_one", base=9)[0, 0] == 9
  with pytest.raises(UserError, match="config.core.base"):
    core.anchor_candidates(10, (0, 1), "all_to_one", base=1)
  cand = core.anchor_candidates(12, tuple(range(7)), "groups_to_one", group_size=5)
  assert set(cand[:5, 0]) == {7} and set(cand[5:7, 0]) == {8}


def test_core_random_and_random_k_candidates():
  cand = core.anchor_candidates(6, (2,), "random")
  assert cand.shape == (6, 5) and 2 not in cand[2] and sorted(cand[2]) == [0, 1, 3, 4, 5]
  assert (cand[0] == 0).all()
  ck = core.anchor_candidates(10, (2, 5), "random_k", k=3, seed=1)
  assert ck.shape == (10, 3) and len(set(ck[2])) == 3 and 2 not in ck[2] and 5 not in ck[5]
  np.testing.assert_array_equal(ck, core.anchor_candidates(10, (2, 5), "random_k", k=3, seed=1))
  with pytest.raises(UserError, match="config.core.k"):
    core.anchor_candidates(4, (1,), "random_k", k=4)


def test_random_schemes_draw_from_the_retained_concepts_only():
  """CORE App. C: an anchor is a retained concept, never another forgotten one."""
  forget = (1, 2, 7)
  cand = core.anchor_candidates(10, forget, "random")
  for c in forget:
    assert sorted(cand[c]) == [0, 3, 4, 5, 6, 8, 9]
  ck = core.anchor_candidates(10, forget, "random_k", k=7, seed=2)
  for c in forget:
    assert sorted(ck[c]) == [0, 3, 4, 5, 6, 8, 9]
  with pytest.raises(UserError, match="config.core.k"):
    core.anchor_candidates(10, forget, "random_k", k=8)
  # an explicit retained order: groups and candidates follow it
  g = core.anchor_candidates(6, (0, 1, 2), "groups_to_one", group_size=2, retained=(5, 3))
  assert g[:3, 0].tolist() == [5, 5, 3]
  r = core.anchor_candidates(6, (0,), "random", retained=(5, 3))
  assert r[0].tolist() == [5, 3] and r[4].tolist() == [4, 4]


def test_canvas_styles_and_class_labels_share_one_scheme_implementation(monkeypatch):
  from unlearn_jax import canvas
  seen = []
  real = core.anchor_candidates
  monkeypatch.setattr(core, "anchor_candidates", lambda *a, **kw: seen.append((a, kw)) or real(*a, **kw))
  m = canvas.anchor_styles(("Van_Gogh", "Monet"), ("Winter", "Pop_Art", "Cubism"), "groups_to_one", group_size=1)
  assert seen and m == {"Van_Gogh": ("Winter",), "Monet": ("Pop_Art",)}


def test_core_draws_cover_the_candidates_and_vary_with_the_key():
  cand = core.anchor_candidates(6, (2,), "random")
  labels = jnp.full((600,), 2, jnp.int32)
  keys = training.example_keys(jax.random.key(3), 600)
  drawn = np.asarray(core.draw_anchor(cand, labels, keys))
  assert set(drawn.tolist()) == {0, 1, 3, 4, 5}
  assert np.asarray(core.draw_anchor(core.anchor_candidates(6, (2,), "one_to_one"), labels, keys)).tolist() \
      == [3] * 600


def test_core_losses_use_the_frozen_model_hand_values():
  cand = core.anchor_candidates(K, (1, 2), "one_to_one")      # 1 -> 3, 2 -> 0
  forget = training.Objective("forget", DENOISE, target=core.anchor_target(cand))
  got = loss_of(forget, consts={"frozen": FROZEN})
  want = np.mean((eps_np(PARAMS, X_T, LABELS) - eps_np(FROZEN, X_T, cand[LABELS, 0])) ** 2)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  retain = training.Objective("forget", DENOISE, target=core.frozen_target)
  got = loss_of(retain, consts={"frozen": FROZEN})
  np.testing.assert_allclose(got, np.mean((eps_np(PARAMS, X_T, LABELS) - eps_np(FROZEN, X_T, LABELS)) ** 2),
                             rtol=1e-5)
  # the frozen tree gets no gradient and the target does not move with theta
  grads = jax.grad(lambda p: loss_of(forget, params=p, consts={"frozen": FROZEN}))(PARAMS)
  x_t = np.asarray(X_T)
  hand = jax.grad(lambda p: jnp.mean((apply_fn({"params": p}, x_t, None, LABELS)
                                      - eps_np(FROZEN, x_t, cand[LABELS, 0])) ** 2))(PARAMS)
  close(grads, hand)
