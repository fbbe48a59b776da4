"""UnlearnCanvas data (`unlearn_jax.canvas`); its concept metrics are in tests/evaluation/test_concept.py."""
from __future__ import annotations

import os

import numpy as np
import pytest

from unlearn_jax import canvas
from unlearn_jax.errors import UserError

STY = ("Abstractionism", "Bricks", "Monet", "Van_Gogh", "Seed_Images")
OBJ = ("Cats", "Dogs", "Trees")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("canvas"))
  return canvas.write_fake_tree(root, STY, OBJ, n_images=4, size=24, seed=1)


@pytest.fixture(scope="module")
def data(tree):
  return canvas.load(tree, image_size=16)


# --------------------------------------------------------------------------- #
# Constants and prompts.
# --------------------------------------------------------------------------- #
def test_constants():
  assert len(canvas.STYLES) == 50 and len(set(canvas.STYLES)) == 50
  assert len(canvas.OBJECTS) == 20 and len(set(canvas.OBJECTS)) == 20
  assert len(canvas.ALL_STYLES) == 51 and canvas.ALL_STYLES[-1] == canvas.SEED_STYLE == "Seed_Images"
  assert "Van_Gogh" in canvas.STYLES and "Abstractionism" == canvas.STYLES[0]
  assert canvas.STYLES[-1] == "Winter" and canvas.OBJECTS[-1] == "Waterfalls"


def test_prompts():
  assert canvas.prompt("Van_Gogh", "Dogs") == "A Dogs image in Van Gogh style."
  assert canvas.prompt("Van_Gogh", "Dogs", "dimum") == "An image of Dogs in Van Gogh style."
  assert canvas.prompt("Seed_Images", "Cats") == "A Cats image in Photo style."
  assert canvas.prompt("Red_Blue_Ink", "Sea") == "A Sea image in Red Blue Ink style."
  with pytest.raises(UserError) as e:
    canvas.prompt("Van_Gogh", "Dogs", "nope")
  assert e.value.field == "config.data.template"


def test_forget_sets():
  f1, f6, f25 = (canvas.FORGET_SETS[k] for k in ("Forget01", "Forget06", "Forget25"))
  assert f1 == ("Van_Gogh",)
  assert (len(f6), len(f25)) == (6, 25)
  assert f6[:1] == f1 and f25[:6] == f6  # nested
  assert len(set(f25)) == 25 and set(f25) <= set(canvas.STYLES)
  assert "Abstractionism" not in f25
  # the documented rule: STYLES[(44 + 9 j) mod 50]
  assert f25 == tuple(canvas.STYLES[(44 + 9 * j) % 50] for j in range(25))


def test_resolve_styles():
  assert canvas.resolve_styles("Forget06") == canvas.FORGET_SETS["Forget06"]
  assert canvas.resolve_styles("Van_Gogh, monet") == ("Van_Gogh", "Monet")
  assert canvas.resolve_styles(["van gogh", "Monet", "Van_Gogh"]) == ("Van_Gogh", "Monet")
  assert canvas.resolve_styles(("Forget01", "Monet")) == ("Van_Gogh", "Monet")
  for bad in ("Vangogh", ["Monet", "Photo"], "", (), "Seed_Images"):
    with pytest.raises(UserError) as e:
      canvas.resolve_styles(bad)
    assert e.value.field == "config.data.forget_styles"
    assert "canvas.STYLES" in str(e.value) and "Forget25" in str(e.value)


# --------------------------------------------------------------------------- #
# The tree.
# --------------------------------------------------------------------------- #
def test_fake_tree_layout(tree):
  for s in STY:
    for o in OBJ:
      assert sorted(os.listdir(os.path.join(tree, s, o))) == ["1.jpg", "2.jpg", "3.jpg", "4.jpg"]


def test_scan(tree):
  entries = canvas.scan(tree, styles=["Monet", "Van_Gogh"], objects="Dogs")
  assert [(s, o, i) for _, s, o, i in entries] == [
      ("Monet", "Dogs", 1), ("Monet", "Dogs", 2), ("Monet", "Dogs", 3),
      ("Van_Gogh", "Dogs", 1), ("Van_Gogh", "Dogs", 2), ("Van_Gogh", "Dogs", 3)]
  assert all(os.path.isfile(p) for p, *_ in entries)
  assert len(canvas.scan(tree, image_indices=None)) == len(STY) * len(OBJ) * 4
  assert [e[3] for e in canvas.scan(tree, styles="Monet", objects="Cats", image_indices=(2, 9))] == [2]


def test_load(data):
  n = len(STY) * len(OBJ) * 3  # only images 1-3 although 4 exist
  assert data.images.shape == (n, 16, 16, 3) and data.images.dtype == np.uint8
  assert data.styles == tuple(s for s in canvas.ALL_STYLES if s in STY)  # discovered, canonical order
  assert data.objects == tuple(o for o in canvas.OBJECTS if o in OBJ)
  assert sorted(set(data.image_index.tolist())) == [1, 2, 3]
  assert data.source == "unlearncanvas-fake"
  for a in (data.style_ids, data.object_ids, data.prompt_ids, data.prompt_style, data.prompt_object):
    assert a.dtype == np.int32
  p = len(STY) * len(OBJ)
  assert data.num_prompts == len(data.prompts) == p
  np.testing.assert_array_equal(data.prompt_style[data.prompt_ids], data.style_ids)
  np.testing.assert_array_equal(data.prompt_object[data.prompt_ids], data.object_ids)
  np.testing.assert_array_equal(data.prompt_style * len(data.objects) + data.prompt_object,
                                np.arange(p))
  pid = data.prompt_id("Van_Gogh", "Dogs")
  assert data.prompts[pid] == "A Dogs image in Van Gogh style."
  assert data.prompts[data.prompt_id("Seed_Images", "Trees")] == "A Trees image in Photo style."
  # images of one (style, object) pair look alike, different styles do not
  vg = data.images[data.style_ids == data.styles.index("Van_Gogh")].astype(float).mean((0, 1, 2))
  mo = data.images[data.style_ids == data.styles.index("Monet")].astype(float).mean((0, 1, 2))
  assert np.abs(vg - mo).max() > 10


def test_load_subset_and_template(tree):
  d = canvas.load(tree, image_size=8, styles="Van_Gogh,Abstractionism", objects=["Dogs"],
                  image_indices=(4,), template="dimum")
  assert d.styles == ("Van_Gogh", "Abstractionism") and d.objects == ("Dogs",)
  assert d.images.shape == (2, 8, 8, 3)
  assert d.prompts == ("An image of Dogs in Van Gogh style.", "An image of Dogs in Abstractionism style.")
  sub = d.take(d.style_ids == 1)
  assert len(sub) == 1 and sub.prompt_ids.tolist() == [1] and sub.prompts == d.prompts


def test_load_center_crop(tmp_path):
  from PIL import Image
  folder = tmp_path / "Monet" / "Cats"
  folder.mkdir(parents=True)
  img = np.zeros((20, 40, 3), np.uint8)
  img[:, 10:30] = 255  # the center square is white, the sides black
  Image.fromarray(img).save(folder / "1.png")
  d = canvas.load(str(tmp_path), image_size=10)
  assert d.images.shape == (1, 10, 10, 3) and d.images.min() >= 250
  assert d.source == "unlearncanvas"


@pytest.mark.parametrize("kwargs, field", [
    (dict(root="/nonexistent/canvas"), "config.data.data_dir"),
    (dict(styles="Winter"), "config.data.styles"),          # folder missing
    (dict(styles="Van Gough"), "config.data.styles"),       # unknown name
    (dict(objects="Horses"), "config.data.objects"),        # folder missing
    (dict(objects="Cat"), "config.data.objects"),           # unknown name
    (dict(image_indices=(7, 8)), "config.data.image_indices"),  # no such images
    (dict(image_indices=(0,)), "config.data.image_indices"),
    (dict(image_size=0), "config.data.image_size"),
    (dict(template="{style} only"), "config.data.template"),
])
def test_load_errors(tree, kwargs, field):
  kwargs = dict(kwargs)
  root = kwargs.pop("root", tree)
  kwargs.setdefault("image_size", 8)
  with pytest.raises(UserError) as e:
    canvas.load(root, **kwargs)
  assert e.value.field == field


def test_scan_errors(tmp_path):
  with pytest.raises(UserError) as e:  # a folder without style folders
    canvas.scan(str(tmp_path))
  assert e.value.field == "config.data.data_dir"
  (tmp_path / "Monet" / "Cats").mkdir(parents=True)
  with pytest.raises(UserError) as e:  # an empty object folder
    canvas.scan(str(tmp_path))
  assert e.value.field == "config.data.image_indices" and "Cats" in str(e.value)
  (tmp_path / "Van_Gogh").mkdir()
  with pytest.raises(UserError) as e:  # Van_Gogh lacks the Cats folder
    canvas.scan(str(tmp_path))
  assert e.value.field == "config.data.objects" and os.path.join("Van_Gogh", "Cats") in str(e.value)


# --------------------------------------------------------------------------- #
# Forget / retain prompts, alternatives, anchors.
# --------------------------------------------------------------------------- #
def test_forget_styles_are_checked_against_the_loaded_data(tree, data):
  for bad in ("Winter", "Forget06", "Seed_Images"):
    with pytest.raises(UserError) as e:
      canvas.alternative_prompts(data, bad, "Abstractionism")
    assert e.value.field == "config.data.forget_styles"
  two = canvas.load(tree, image_size=8, styles="Monet,Van_Gogh", objects="Cats")
  with pytest.raises(UserError) as e:  # nothing left to retain
    canvas.alternative_prompts(two, "Monet,Van_Gogh", "Monet")
  assert e.value.field == "config.data.forget_styles"


def test_alternative_prompts(data):
  alt = canvas.alternative_prompts(data, "Van_Gogh", "Abstractionism")
  for p in range(data.num_prompts):
    s, o = data.styles[data.prompt_style[p]], data.objects[data.prompt_object[p]]
    if s == "Van_Gogh":
      assert data.prompt_style[alt[p]] == data.styles.index("Abstractionism")
      assert data.prompt_object[alt[p]] == data.prompt_object[p]
      assert data.prompts[alt[p]] == f"A {o} image in Abstractionism style."
    else:
      assert alt[p] == p
  for bad in ("Van_Gogh", "Winter", "Monet,Bricks"):
    with pytest.raises(UserError) as e:
      canvas.alternative_prompts(data, "Van_Gogh", bad)
    assert e.value.field == "config.data.alt_style"


def test_anchor_one_to_one():
  f25 = canvas.FORGET_SETS["Forget25"]
  retain = tuple(s for s in canvas.STYLES if s not in f25)
  m = canvas.anchor_styles(f25, retain)
  assert set(m) == set(f25) and all(len(a) == 1 for a in m.values())
  anchors = [a[0] for a in m.values()]
  assert len(set(anchors)) == 25 and set(anchors) == set(retain)  # a bijection onto the retain set
  assert canvas.anchor_styles("Van_Gogh", retain) == {"Van_Gogh": ("Vibrant_Flow",)}
  # more forget than retain styles: a cycle among the forget styles themselves
  m = canvas.anchor_styles(["Monet", "Van_Gogh", "Bricks"], ["Winter"])
  assert m == {"Monet": ("Van_Gogh",), "Van_Gogh": ("Bricks",), "Bricks": ("Monet",)}


@pytest.mark.parametrize("scheme", canvas.SCHEMES)
def test_anchor_no_forget_style(scheme):
  f6 = canvas.FORGET_SETS["Forget06"]
  retain = tuple(s for s in canvas.ALL_STYLES if s not in f6)
  m = canvas.anchor_styles(f6, retain, scheme, k=4, seed=3)
  assert set(m) == set(f6)
  for anchors in m.values():
    assert anchors and not set(anchors) & set(f6) and set(anchors) <= set(retain)


def test_anchor_schemes():
  f = tuple(canvas.FORGET_SETS["Forget25"][:12])
  retain = ("Monet", "Winter", "Pop_Art")
  assert canvas.anchor_styles(f, retain, "all_to_one") == {s: ("Monet",) for s in f}
  assert canvas.anchor_styles(f, retain, "all_to_one", base="Winter") == {s: ("Winter",) for s in f}
  assert canvas.anchor_styles(f, retain, "all_to_one", base=canvas.STYLES.index("Pop_Art")) \
      == {s: ("Pop_Art",) for s in f}
  g = canvas.anchor_styles(f, retain, "groups_to_one")
  assert [g[s][0] for s in f] == ["Monet"] * 5 + ["Winter"] * 5 + ["Pop_Art"] * 2
  assert all(v == retain for v in canvas.anchor_styles(f, retain, "random").values())
  rk = canvas.anchor_styles(f, retain, "random_k", k=2, seed=0)
  assert all(len(v) == 2 and len(set(v)) == 2 for v in rk.values())
  assert rk == canvas.anchor_styles(f, retain, "random_k", k=2, seed=0)  # deterministic


@pytest.mark.parametrize("kwargs, field", [
    (dict(scheme="one_to_many"), "config.core.scheme"),
    (dict(scheme="random_k", k=4), "config.core.k"),
    (dict(scheme="random_k", k=0), "config.core.k"),
    (dict(scheme="all_to_one", base="Van_Gogh"), "config.core.base"),
    (dict(scheme="groups_to_one", group_size=0), "config.core.group_size"),
    (dict(forget="Monet"), "config.data.forget_styles"),   # also retained
    (dict(retain=()), "config.data.forget_styles"),        # nothing retained
    (dict(forget="Picaso"), "config.data.forget_styles"),
])
def test_anchor_errors(kwargs, field):
  kwargs = dict(kwargs)
  forget = kwargs.pop("forget", "Van_Gogh")
  retain = kwargs.pop("retain", ("Monet", "Winter", "Pop_Art"))
  with pytest.raises(UserError) as e:
    canvas.anchor_styles(forget, retain, **kwargs)
  assert e.value.field == field


def test_anchor_prompt_table(data):
  retain = [s for s in data.styles if s != "Van_Gogh"]
  one = canvas.anchor_prompt_table(data, canvas.anchor_styles("Van_Gogh", retain))
  assert one.shape == (data.num_prompts, 1) and one.dtype == np.int32
  m = canvas.anchor_styles("Van_Gogh", retain, "random_k", k=3)
  table = canvas.anchor_prompt_table(data, m)
  assert table.shape == (data.num_prompts, 3)
  vg = data.styles.index("Van_Gogh")
  for p in range(data.num_prompts):
    if data.prompt_style[p] == vg:
      np.testing.assert_array_equal(data.prompt_object[table[p]], data.prompt_object[p])  # same object
      assert [data.styles[s] for s in data.prompt_style[table[p]]] == list(m["Van_Gogh"])
    else:
      assert table[p].tolist() == [p] * 3
  # rows shorter than K repeat their anchors
  t = canvas.anchor_prompt_table(data, {"Van_Gogh": ("Monet",), "Bricks": ("Monet", "Seed_Images")})
  b = data.prompt_id("Bricks", "Cats")
  assert t.shape[1] == 2 and t[data.prompt_id("Van_Gogh", "Cats")].tolist() == [data.prompt_id("Monet", "Cats")] * 2
  assert t[b].tolist() == [data.prompt_id("Monet", "Cats"), data.prompt_id("Seed_Images", "Cats")]
  with pytest.raises(UserError):
    canvas.anchor_prompt_table(data, {"Van_Gogh": ("Winter",)})
