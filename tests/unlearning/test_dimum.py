"""dimum: the DiMUM combination (Eq. 11), the alternative classes and D_u' (Eq. 9)."""
import numpy as np
import pytest

from unlearn_jax import data as data_lib
from unlearn_jax.errors import UserError
from unlearn_jax.unlearning import dimum
from method_fixtures import M, U, close, combo, update


def test_dimum_is_retain_plus_beta_memorize():
  # Eq. 11 / Algorithm 1 line 16: L_r + beta L_u.
  close(update(dimum.dimum(0.3), U, memorize_grads=M), combo(lambda r, u: r + 0.3 * u, U, M))


def test_alternative_classes_next():
  alt = dimum.alternative_classes(10, (3,), "next")
  np.testing.assert_array_equal(alt, [0, 1, 2, 4, 4, 5, 6, 7, 8, 9])
  alt = dimum.alternative_classes(10, (3, 4), "next")
  assert alt[3] == 5 and alt[4] == 5
  np.testing.assert_array_equal(np.delete(alt, [3, 4]), np.delete(np.arange(10), [3, 4]))
  assert dimum.alternative_classes(10, (9,), "next")[9] == 0
  assert dimum.alternative_classes(10, (8, 9, 0), "next")[8] == 1


def test_alternative_classes_map():
  alt = dimum.alternative_classes(10, (3,), "map:3=5")
  np.testing.assert_array_equal(alt, [0, 1, 2, 5, 4, 5, 6, 7, 8, 9])
  alt = dimum.alternative_classes(10, (3, 7), "map:3=5,7=1")
  assert alt[3] == 5 and alt[7] == 1


@pytest.mark.parametrize("forget,scheme", [
    ((3,), "map:3=3"),
    ((3, 5), "map:3=5,5=1"),
    ((3,), "map:x"),
    ((3,), "map:3"),
    ((3,), "map:3=10"),
    ((3, 7), "map:3=5"),
    ((3,), "bogus"),
    (tuple(range(10)), "next"),
])
def test_alternative_classes_bad_input_raises_user_error(forget, scheme):
  with pytest.raises(UserError):
    dimum.alternative_classes(10, forget, scheme)


def test_alternative_classes_random_is_retained_and_seeded():
  forget = (2, 3, 7)
  a = dimum.alternative_classes(10, forget, "random", seed=4)
  np.testing.assert_array_equal(a, dimum.alternative_classes(10, forget, "random", seed=4))
  for c in range(10):
    assert (a[c] not in forget) if c in forget else a[c] == c
  draws = {tuple(dimum.alternative_classes(10, forget, "random", seed=s)[list(forget)]) for s in range(8)}
  assert len(draws) > 1


def test_alternative_classes_map_leaves_retained_classes():
  with pytest.raises(UserError):   # 7 is not forgotten: the entry is rejected
    dimum.alternative_classes(10, (3,), "map:3=5,7=1")


def dataset(labels, offset, num_classes=6):
  """Image i is filled with offset + i, so every image names its source."""
  labels = np.asarray(labels, np.int32)
  images = (offset + np.arange(len(labels), dtype=np.uint8))[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8)
  return data_lib.Dataset(name="t", images=images, labels=labels, num_classes=num_classes,
                          class_names=tuple(str(c) for c in range(num_classes)), source=f"src{offset}",
                          is_image=True)


# retain: classes 0, 1, 2, 4, 5 (none of class 3); values 0..11
RETAIN = dataset([0, 0, 1, 4, 2, 4, 5, 4, 5, 1, 4, 5], offset=0)


FORGET = dataset([3, 3, 3], offset=200)


def sources(ds):
  assert np.all(ds.images == ds.images[:, :1, :1, :1])
  return ds.images[:, 0, 0, 0].astype(np.int64)


def test_memorization_set_next_draws_alternative_class_without_replacement():
  alt = dimum.alternative_classes(6, (3,), "next")
  assert alt[3] == 4
  mem = dimum.memorization_set(FORGET, RETAIN, alt, "next", seed=1)
  assert len(mem) == len(FORGET)
  np.testing.assert_array_equal(mem.labels, FORGET.labels)  # conditions from D_f (Eq. 9)
  src = sources(mem)
  assert np.all(RETAIN.labels[src] == 4)
  assert len(set(src.tolist())) == len(src)  # pool of 4 >= 3 rows
  again = dimum.memorization_set(FORGET, RETAIN, alt, "next", seed=1)
  np.testing.assert_array_equal(again.images, mem.images)


def test_memorization_set_reuses_a_small_pool_evenly():
  forget = dataset([3] * 6, offset=200)
  mem = dimum.memorization_set(forget, RETAIN, dimum.alternative_classes(6, (3,), "next"), "next")
  counts = np.bincount(sources(mem), minlength=len(RETAIN))
  np.testing.assert_array_equal(np.flatnonzero(counts), np.flatnonzero(RETAIN.labels == 4))
  assert counts.max() == 2  # 6 rows from a pool of 4: every image once, then 2 more


def test_memorization_set_keeps_each_rows_condition():
  forget = dataset([3, 0, 3, 3, 0], offset=200)
  alt = dimum.alternative_classes(6, (0, 3), "map:0=2,3=5")
  mem = dimum.memorization_set(forget, RETAIN, alt, "map:0=2,3=5", seed=2)
  np.testing.assert_array_equal(mem.labels, forget.labels)
  np.testing.assert_array_equal(RETAIN.labels[sources(mem)], np.where(forget.labels == 3, 5, 2))


def test_memorization_set_random_draws_from_all_of_retain():
  forget = dataset([3] * 10, offset=200)
  alt = dimum.alternative_classes(6, (3,), "random", seed=0)
  mem = dimum.memorization_set(forget, RETAIN, alt, "random", seed=0)
  src = sources(mem)
  np.testing.assert_array_equal(mem.labels, forget.labels)
  assert np.all(src < len(RETAIN)) and len(set(src.tolist())) == 10  # pool 12 >= 10 rows
  assert len(set(RETAIN.labels[src].tolist())) > 1
  np.testing.assert_array_equal(dimum.memorization_set(forget, RETAIN, alt, "random", seed=0).images,
                                mem.images)
  assert not np.array_equal(dimum.memorization_set(forget, RETAIN, alt, "random", seed=1).images, mem.images)


def test_memorization_set_no_repeats_across_classes_sharing_a_pool():
  retain = dataset([5, 5, 5, 5, 5, 5, 0, 1], offset=0)
  forget = dataset([3, 4, 3, 4, 3, 4], offset=200)
  alt = dimum.alternative_classes(6, (3, 4), "next")
  src = sources(dimum.memorization_set(forget, retain, alt, "next", seed=0))
  assert len(set(src.tolist())) == 6
