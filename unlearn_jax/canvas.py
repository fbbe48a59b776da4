"""UnlearnCanvas: the style x object data set of the style-unlearning experiments.

UnlearnCanvas (Zhang et al. 2024c) holds 512x512 images of 50 artistic styles
(plus the photographs they were stylised from, folder `Seed_Images`) x 20
objects, 20 images per (style, object), laid out as

    <root>/<style>/<object>/<idx>.jpg        idx = 1 .. 20

Each image is captioned `"A {object} image in {style} style."` (style
underscores become spaces; the photographs are style "Photo").  The style
classifier has 51 labels (`ALL_STYLES`), the object classifier 20 (`OBJECTS`).

Uses in this library:
  * CORE (CORE paper Sec. 4.1, App. B): style unlearning on Forget01 / Forget06 /
    Forget25 (1, 6, 25 forgotten styles), training on images 1-3 of each
    style/object folder; anchor styles p_a of Eq. 2 paired by the schemes of
    Table 4 (`anchor_styles`, `anchor_prompt_table`).
  * DiMUM (DiMUM paper Sec. VI-B): Van Gogh forgotten; D_u' pairs Abstractionism
    images with the Van Gogh prompts (`alternative_prompts`); prompts follow the
    template `"An image of {object} in {style} style."` (`TEMPLATES["dimum"]`).

A *prompt* is one (style, object) pair of the loaded styles and objects; its id
is `style_index * len(objects) + object_index`, so every pair has a prompt even
where no image was loaded.  `write_fake_tree` writes a tiny synthetic tree with
the same layout (style = colour palette + texture, object = shape) for tests
and CPU runs.
"""
from __future__ import annotations

import colorsys
import concurrent.futures
import dataclasses
import os
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from unlearn_jax.errors import UserError, check_choice
from unlearn_jax.unlearning import core as core_lib

# --------------------------------------------------------------------------- #
# Constants.
# --------------------------------------------------------------------------- #
#: the 50 styles, in the order of the UnlearnCanvas code (folder names).
STYLES: Tuple[str, ...] = (
    "Abstractionism", "Artist_Sketch", "Blossom_Season", "Bricks", "Byzantine", "Cartoon",
    "Cold_Warm", "Color_Fantasy", "Comic_Etch", "Crayon", "Cubism", "Dadaism", "Dapple",
    "Defoliation", "Early_Autumn", "Expressionism", "Fauvism", "French", "Glowing_Sunset",
    "Gorgeous_Love", "Greenfield", "Impressionism", "Ink_Art", "Joy", "Liquid_Dreams",
    "Magic_Cube", "Meta_Physics", "Meteor_Shower", "Monet", "Mosaic", "Neon_Lines", "On_Fire",
    "Pastel", "Pencil_Drawing", "Picasso", "Pop_Art", "Red_Blue_Ink", "Rust", "Sketch",
    "Sponge_Dabbed", "Structuralism", "Superstring", "Surrealism", "Ukiyoe", "Van_Gogh",
    "Vibrant_Flow", "Warm_Love", "Warm_Smear", "Watercolor", "Winter")
#: the photographs the styles were made from; their prompt style word is "Photo".
SEED_STYLE = "Seed_Images"
SEED_PROMPT_STYLE = "Photo"
#: the 51 labels of the style classifier.
ALL_STYLES: Tuple[str, ...] = STYLES + (SEED_STYLE,)
#: the 20 objects (folder names, used verbatim in the prompts).
OBJECTS: Tuple[str, ...] = (
    "Architectures", "Bears", "Birds", "Butterfly", "Cats", "Dogs", "Fishes", "Flame", "Flowers",
    "Frogs", "Horses", "Human", "Jellyfish", "Rabbits", "Sandwiches", "Sea", "Statues", "Towers",
    "Trees", "Waterfalls")

#: caption templates: the UnlearnCanvas code's, and the DiMUM paper's (Sec. VI-B).
TEMPLATES: Dict[str, str] = {
    "unlearncanvas": "A {object} image in {style} style.",
    "dimum": "An image of {object} in {style} style.",
}
#: image indices used for unlearning (CORE App. B, after Zhang et al. 2024c).
TRAIN_IMAGE_INDICES = (1, 2, 3)
#: DiMUM's forgotten style and its alternative style (DiMUM Sec. VI-B).
DIMUM_FORGET_STYLE = "Van_Gogh"
DIMUM_ALT_STYLE = "Abstractionism"
#: the anchor schemes of CORE Table 4.
SCHEMES = core_lib.SCHEMES

_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_FAKE_MARKER = "FAKE_UNLEARNCANVAS.txt"


def _forget_order(stride: int = 9) -> Tuple[str, ...]:
  """STYLES visited cyclically from Van_Gogh with step `stride` (see `FORGET_SETS`)."""
  start = STYLES.index(DIMUM_FORGET_STYLE)
  return tuple(STYLES[(start + stride * j) % len(STYLES)] for j in range(len(STYLES)))


_FORGET_ORDER = _forget_order()

#: The forget sets of CORE Sec. 4.1.  The paper gives only their sizes (1, 6, 25
#: styles), not the styles, so the choice here is THIS LIBRARY'S, not the paper's:
#: ForgetNN is the first NN styles of the order that starts at Van_Gogh (the style
#: DiMUM forgets) and steps cyclically through STYLES by 9 positions, i.e.
#: STYLES[(44 + 9 j) mod 50], j = 0 .. NN-1.  The sets are nested (Forget01 <
#: Forget06 < Forget25), spread over the whole list, never contain Seed_Images, and
#: keep Abstractionism (DiMUM's alternative style) retained: 9 is the smallest step
#: coprime with 50 whose first 25 visits miss Abstractionism.
#:   Forget01 = Van_Gogh
#:   Forget06 = Van_Gogh Bricks Dapple Impressionism Neon_Lines Sponge_Dabbed
#:   Forget25 = Forget06 + Watercolor Color_Fantasy Fauvism Magic_Cube Picasso Ukiyoe
#:              Blossom_Season Dadaism Greenfield Mosaic Sketch Warm_Smear Cold_Warm
#:              Expressionism Liquid_Dreams Pencil_Drawing Surrealism Artist_Sketch Cubism
FORGET_SETS: Dict[str, Tuple[str, ...]] = {
    "Forget01": _FORGET_ORDER[:1],
    "Forget06": _FORGET_ORDER[:6],
    "Forget25": _FORGET_ORDER[:25],
}


# --------------------------------------------------------------------------- #
# Names and prompts.
# --------------------------------------------------------------------------- #
def _norm(name: str) -> str:
  return re.sub(r"[\s_]+", "_", str(name).strip()).lower()


def _tokens(spec) -> List[str]:
  """A comma string, or a list/tuple of names (each may itself be a comma string)."""
  if spec is None:
    return []
  if isinstance(spec, str):
    items = [spec]
  else:
    try:
      items = list(spec)
    except TypeError:
      items = [spec]
  out = []
  for item in items:
    out.extend(t.strip() for t in str(item).split(",") if t.strip())
  return out


def _resolve(spec, field: str, allowed: Sequence[str], source: str,
             sets: Optional[Mapping[str, Tuple[str, ...]]] = None) -> Tuple[str, ...]:
  """Canonical names for `spec` (case, spaces and underscores ignored), deduplicated in order."""
  lookup = {_norm(n): n for n in allowed}
  set_lookup = {_norm(k): v for k, v in (sets or {}).items()}
  allowed_text = f"expected a list or comma string of names from {source}"
  if sets:
    allowed_text += " or one of " + ", ".join(sets)
  tokens = _tokens(spec)
  if not tokens:
    raise UserError(field, spec, allowed_text + " (at least one)")
  out: List[str] = []
  for t in tokens:
    key = _norm(t)
    if key in set_lookup:
      names = set_lookup[key]
    elif key in lookup:
      names = (lookup[key],)
    else:
      raise UserError(field, spec, f"unknown name {t!r}; " + allowed_text)
    out.extend(n for n in names if n not in out)
  return tuple(out)


def resolve_styles(spec, *, field: str = "config.data.forget_styles",
                   allowed: Sequence[str] = STYLES) -> Tuple[str, ...]:
  """Style names from a forget-set name ("Forget06"), a list/tuple, or a comma string.

  Names match case-insensitively, with spaces for underscores ("van gogh"); set
  names expand to `FORGET_SETS[name]`.  The result is canonical folder names,
  deduplicated, in the order given.  `allowed` is STYLES (default: Seed_Images is
  not a style one forgets) or ALL_STYLES.

  Raises:
    UserError(field, ...): an unknown name, or nothing given.
  """
  source = "canvas.ALL_STYLES" if tuple(allowed) == ALL_STYLES else "canvas.STYLES"
  return _resolve(spec, field, allowed, source, FORGET_SETS)


def resolve_objects(spec, *, field: str = "config.data.objects") -> Tuple[str, ...]:
  """Object names (canonical folder names) from a list/tuple or a comma string."""
  return _resolve(spec, field, OBJECTS, "canvas.OBJECTS")


def prompt(style: str, obj: str, template: str = "unlearncanvas") -> str:
  """The caption of (style, object): `TEMPLATES[template]` or a format string with
  `{style}` and `{object}`; style underscores become spaces, Seed_Images is "Photo"."""
  fmt = TEMPLATES.get(template, template)
  if "{style}" not in fmt or "{object}" not in fmt:
    raise UserError("config.data.template", template,
                    "expected one of " + ", ".join(TEMPLATES)
                    + " or a format string with {style} and {object}")
  style_word = SEED_PROMPT_STYLE if style == SEED_STYLE else style.replace("_", " ")
  try:
    return fmt.format(style=style_word, object=obj)
  except (KeyError, IndexError, ValueError) as e:
    raise UserError("config.data.template", template,
                    "a format string may use only {style} and {object}") from e


# --------------------------------------------------------------------------- #
# Reading the tree.
# --------------------------------------------------------------------------- #
def _check_indices(image_indices) -> Optional[Tuple[int, ...]]:
  if image_indices is None:
    return None
  try:
    idx = tuple(int(i) for i in _tokens(image_indices))
  except ValueError:
    idx = ()
  if not idx or any(i < 1 for i in idx):
    raise UserError("config.data.image_indices", image_indices,
                    "expected positive 1-based image numbers, e.g. (1, 2, 3), or None for all")
  return tuple(dict.fromkeys(idx))


def _numbered_images(folder: str) -> Dict[int, str]:
  """{idx: path} of the files `<idx>.<jpg|jpeg|png>` in `folder`."""
  out: Dict[int, str] = {}
  for name in os.listdir(folder):
    stem, ext = os.path.splitext(name)
    if ext.lower() in _IMAGE_EXTENSIONS and stem.isdigit():
      out.setdefault(int(stem), os.path.join(folder, name))
  return out


def _select_styles(root: str, styles) -> Tuple[str, ...]:
  if styles is not None:
    names = resolve_styles(styles, field="config.data.styles", allowed=ALL_STYLES)
    for s in names:
      if not os.path.isdir(os.path.join(root, s)):
        raise UserError("config.data.styles", styles, f"no folder {os.path.join(root, s)!r}")
    return names
  names = tuple(s for s in ALL_STYLES if os.path.isdir(os.path.join(root, s)))
  if not names:
    raise UserError("config.data.data_dir", root,
                    "expected UnlearnCanvas style folders (canvas.ALL_STYLES) under it")
  return names


def _select_objects(root: str, styles: Sequence[str], objects) -> Tuple[str, ...]:
  if objects is not None:
    names = resolve_objects(objects)
  else:
    names = tuple(o for o in OBJECTS
                  if any(os.path.isdir(os.path.join(root, s, o)) for s in styles))
    if not names:
      raise UserError("config.data.objects", objects,
                      f"no object folders (canvas.OBJECTS) under the styles {styles} in {root!r}")
  for s in styles:
    for o in names:
      folder = os.path.join(root, s, o)
      if not os.path.isdir(folder):
        raise UserError("config.data.objects", objects, f"no folder {folder!r}")
  return names


def scan(root: str, *, styles=None, objects=None,
         image_indices=TRAIN_IMAGE_INDICES) -> List[Tuple[str, str, str, int]]:
  """The images `root/<style>/<object>/<idx>.jpg`, as (path, style, object, idx).

  Args:
    root: the UnlearnCanvas folder.
    styles: names (list, comma string or a forget-set name) from ALL_STYLES;
      None: every style folder found, in ALL_STYLES order.
    objects: names from OBJECTS; None: every object folder found, in OBJECTS order.
    image_indices: 1-based image numbers to take from each folder (the paper's
      unlearning uses 1-3); missing numbers are skipped; None takes all.

  Raises:
    UserError: `root` missing (config.data.data_dir); an unknown or missing style
      or object folder (config.data.styles / config.data.objects); a folder with
      none of the requested images (config.data.image_indices).
  """
  if not root or not os.path.isdir(root):
    raise UserError("config.data.data_dir", root,
                    "expected an existing folder laid out as <style>/<object>/<idx>.jpg")
  indices = _check_indices(image_indices)
  style_names = _select_styles(root, styles)
  object_names = _select_objects(root, style_names, objects)
  out = []
  for s in style_names:
    for o in object_names:
      folder = os.path.join(root, s, o)
      found = _numbered_images(folder)
      take = sorted(found) if indices is None else [i for i in indices if i in found]
      if not take:
        raise UserError("config.data.image_indices", image_indices,
                        f"folder {folder!r} has none of these images (<idx>.jpg)")
      out.extend((found[i], s, o, i) for i in take)
  return out


@dataclasses.dataclass
class CanvasData:
  """Loaded UnlearnCanvas images with style, object and prompt labels.

  images:        uint8 (N, H, W, 3).
  style_ids:     int32 (N,), index into `styles`.
  object_ids:    int32 (N,), index into `objects`.
  prompt_ids:    int32 (N,), index into `prompts`.
  styles:        the loaded styles (folder names).
  objects:       the loaded objects.
  prompts:       one caption per (style, object) pair; prompt id
                 p = style_index * len(objects) + object_index.
  prompt_style:  int32 (P,), the style index of each prompt.
  prompt_object: int32 (P,), the object index of each prompt.
  source:        "unlearncanvas" or "unlearncanvas-fake" (a `write_fake_tree` tree).
  image_index:   int32 (N,), the 1-based file number of each image (None if unknown).
  """
  images: np.ndarray
  style_ids: np.ndarray
  object_ids: np.ndarray
  prompt_ids: np.ndarray
  styles: Tuple[str, ...]
  objects: Tuple[str, ...]
  prompts: Tuple[str, ...]
  prompt_style: np.ndarray
  prompt_object: np.ndarray
  source: str
  image_index: Optional[np.ndarray] = None

  def __len__(self) -> int:
    return int(self.images.shape[0])

  @property
  def num_prompts(self) -> int:
    return len(self.prompts)

  def prompt_id(self, style: str, obj: str) -> int:
    """The prompt id of (style, object); both must be loaded."""
    if style not in self.styles:
      raise UserError("config.data.styles", style, f"not loaded; loaded styles: {self.styles}")
    if obj not in self.objects:
      raise UserError("config.data.objects", obj, f"not loaded; loaded objects: {self.objects}")
    return self.styles.index(style) * len(self.objects) + self.objects.index(obj)

  def take(self, indices) -> "CanvasData":
    """The images at `indices` (an index array or a boolean mask); prompts unchanged."""
    idx = np.asarray(indices)
    if idx.dtype == bool:
      idx = np.flatnonzero(idx)
    return dataclasses.replace(
        self, images=self.images[idx], style_ids=self.style_ids[idx],
        object_ids=self.object_ids[idx], prompt_ids=self.prompt_ids[idx],
        image_index=None if self.image_index is None else self.image_index[idx])


def _read_image(path: str, image_size: int) -> np.ndarray:
  """RGB uint8 (image_size, image_size, 3): center square crop, then bicubic resize."""
  with Image.open(path) as img:
    if img.format == "JPEG":
      img.draft("RGB", (image_size, image_size))  # DCT-domain downscale, >= the target size
    img = img.convert("RGB")
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if side != image_size:
      # PIL's bicubic filter widens its support when downscaling (area-like antialiasing).
      img = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def load(root: str, *, image_size: int, styles=None, objects=None,
         image_indices=TRAIN_IMAGE_INDICES, template: str = "unlearncanvas",
         num_threads: int = 8) -> CanvasData:
  """Reads the images of `scan(root, ...)` into a `CanvasData`.

  Each image is center-cropped to a square and resized (bicubic, antialiased) to
  `image_size`.  `template` is a key of TEMPLATES or a format string.
  """
  if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) \
      or image_size < 1:
    raise UserError("config.data.image_size", image_size, "expected a positive integer")
  prompt("Van_Gogh", "Dogs", template)  # validates the template before any reading
  entries = scan(root, styles=styles, objects=objects, image_indices=image_indices)
  style_names = tuple(dict.fromkeys(e[1] for e in entries))
  object_names = tuple(dict.fromkeys(e[2] for e in entries))
  # scan keeps the requested order; recover it exactly (every pair has >= 1 image).
  paths = [e[0] for e in entries]
  with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
    images = list(pool.map(lambda p: _read_image(p, image_size), paths))
  s_id = {s: i for i, s in enumerate(style_names)}
  o_id = {o: i for i, o in enumerate(object_names)}
  style_ids = np.array([s_id[e[1]] for e in entries], np.int32)
  object_ids = np.array([o_id[e[2]] for e in entries], np.int32)
  n_obj = len(object_names)
  prompt_style = np.repeat(np.arange(len(style_names), dtype=np.int32), n_obj)
  prompt_object = np.tile(np.arange(n_obj, dtype=np.int32), len(style_names))
  prompts = tuple(prompt(style_names[s], object_names[o], template)
                  for s, o in zip(prompt_style, prompt_object))
  fake = os.path.exists(os.path.join(root, _FAKE_MARKER))
  return CanvasData(
      images=np.stack(images).astype(np.uint8),
      style_ids=style_ids, object_ids=object_ids,
      prompt_ids=(style_ids * n_obj + object_ids).astype(np.int32),
      styles=style_names, objects=object_names, prompts=prompts,
      prompt_style=prompt_style, prompt_object=prompt_object,
      source="unlearncanvas-fake" if fake else "unlearncanvas",
      image_index=np.array([e[3] for e in entries], np.int32))


# --------------------------------------------------------------------------- #
# A synthetic tree for tests and CPU runs.
# --------------------------------------------------------------------------- #
def _shape_mask(o: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Object `o`'s shape in coordinates where the shape spans about [-1, 1]^2.

  5 base shapes (disc, square, triangle, plus, diamond) x 4 variants (filled,
  outline, a pair of small copies, top half only) = 20 distinct shapes.
  """
  base, variant = o % 5, (o // 5) % 4

  def inside(u, v):
    if base == 0:
      return u * u + v * v <= 1.0
    if base == 1:
      return np.maximum(np.abs(u), np.abs(v)) <= 0.85
    if base == 2:
      return (v <= 0.75) & (np.abs(u) <= (v + 0.95) * 0.6)
    if base == 3:
      return ((np.abs(u) <= 0.33) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.33) & (np.abs(u) <= 1.0))
    return np.abs(u) + np.abs(v) <= 1.05

  if variant == 0:
    return inside(x, y)
  if variant == 1:
    return inside(x, y) & ~inside(x / 0.55, y / 0.55)
  if variant == 2:
    return inside((x + 0.55) / 0.45, y / 0.45) | inside((x - 0.55) / 0.45, y / 0.45)
  return inside(x, y) & (y <= 0.0)


def _fake_image(s: int, o: int, size: int, rng: np.random.Generator) -> np.ndarray:
  """Style `s` (index in ALL_STYLES): a palette, a texture type and period; object `o`: a shape."""
  # Palette: the light colour's hue takes 9 levels, the dark colour's 6, so the
  # 51 styles have 51 distinct (light, dark) pairs.
  hue, dark_hue = (s % 9) / 9.0, ((s // 9) / 6.0 + 1.0 / 12.0) % 1.0
  texture, period = s % 5, 3 + (s // 5) % 4
  period = max(2.0, period * size / 32.0)
  light = np.array(colorsys.hsv_to_rgb(hue, 0.75, 0.95))
  dark = np.array(colorsys.hsv_to_rgb(dark_hue, 0.9, 0.35))
  fg = np.array(colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.35, 0.98))
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
  phase = rng.uniform(0, period)
  if texture == 0:
    t = ((yy + phase) // (period / 2)) % 2
  elif texture == 1:
    t = ((xx + phase) // (period / 2)) % 2
  elif texture == 2:
    t = ((xx + yy + phase) // (period / 2)) % 2
  elif texture == 3:
    t = (((xx + phase) // period) + ((yy + phase) // period)) % 2
  else:
    u = (xx + phase) % period - period / 2
    v = (yy + phase) % period - period / 2
    t = (u * u + v * v <= (period / 3) ** 2).astype(np.float64)
  bg = dark[None, None] + t[..., None] * (light - dark)[None, None]
  scale = rng.uniform(0.30, 0.38) * size
  cx = size / 2 + rng.uniform(-0.06, 0.06) * size
  cy = size / 2 + rng.uniform(-0.06, 0.06) * size
  mask = _shape_mask(o, (xx + 0.5 - cx) / scale, (yy + 0.5 - cy) / scale)
  # The object keeps a faint copy of the style's texture, as a stylised object would.
  obj = fg[None, None] * (0.85 + 0.15 * t[..., None])
  img = np.where(mask[..., None], obj, bg) * 255.0
  img += rng.normal(0.0, 4.0, img.shape)
  return np.clip(np.round(img), 0, 255).astype(np.uint8)


def write_fake_tree(root: str, styles=STYLES[:4], objects=OBJECTS[:3], *, n_images: int = 3,
                    size: int = 32, seed: int = 0) -> str:
  """Writes a tiny synthetic UnlearnCanvas tree `root/<style>/<object>/{1..n}.jpg`.

  Each style is a colour palette and texture (stripes in one of 3 directions,
  checks or dots, with its own period), each object a shape (`_shape_mask`), so
  a small classifier can learn both; a style and an object always look the same
  whichever subset is written (they are drawn from their index in ALL_STYLES /
  OBJECTS).  Images vary by texture phase, shape position and scale, and pixel
  noise, seeded by (seed, style, object, idx).  Returns `root`.
  """
  style_names = resolve_styles(styles, field="styles", allowed=ALL_STYLES)
  object_names = resolve_objects(objects, field="objects")
  if n_images < 1 or size < 8:
    raise ValueError(f"need n_images >= 1 and size >= 8, got {n_images}, {size}")
  os.makedirs(root, exist_ok=True)
  for s in style_names:
    si = ALL_STYLES.index(s)
    for o in object_names:
      oi = OBJECTS.index(o)
      folder = os.path.join(root, s, o)
      os.makedirs(folder, exist_ok=True)
      for i in range(1, n_images + 1):
        rng = np.random.default_rng([seed, si, oi, i])
        Image.fromarray(_fake_image(si, oi, size, rng)).save(
            os.path.join(folder, f"{i}.jpg"), quality=95)
  with open(os.path.join(root, _FAKE_MARKER), "w") as f:
    f.write("synthetic UnlearnCanvas tree written by unlearn_jax.canvas.write_fake_tree\n")
  return root


# --------------------------------------------------------------------------- #
# Forget / retain prompts, alternatives and anchors.
# --------------------------------------------------------------------------- #
def _loaded_forget(data: CanvasData, forget_styles) -> Tuple[str, ...]:
  forget = resolve_styles(forget_styles)
  missing = [s for s in forget if s not in data.styles]
  if missing:
    raise UserError("config.data.forget_styles", forget_styles,
                    f"styles {tuple(missing)} are not loaded; loaded styles: {data.styles}")
  if len(forget) == len(data.styles):
    raise UserError("config.data.forget_styles", forget_styles, "leaves no style to retain")
  return forget


def alternative_prompts(data: CanvasData, forget_styles, alt_style: str = DIMUM_ALT_STYLE
                        ) -> np.ndarray:
  """int32 (P,): for each prompt, the prompt of the same object in `alt_style` if its
  style is forgotten, else itself.

  DiMUM's D_u' (DiMUM Sec. VI-B): images of the alternative style (Abstractionism)
  paired with the forgotten style's (Van Gogh's) prompts; so the alternative image
  of a forget prompt p is any image whose prompt id is `alt[p]`.
  """
  forget = _loaded_forget(data, forget_styles)
  alt = resolve_styles(alt_style, field="config.data.alt_style", allowed=ALL_STYLES)
  if len(alt) != 1 or alt[0] not in data.styles or alt[0] in forget:
    raise UserError("config.data.alt_style", alt_style,
                    f"expected one loaded, retained style from {tuple(s for s in data.styles if s not in forget)}")
  n_obj = len(data.objects)
  a = data.styles.index(alt[0])
  out = np.arange(data.num_prompts, dtype=np.int32)
  for s in forget:
    si = data.styles.index(s)
    out[si * n_obj:(si + 1) * n_obj] = a * n_obj + np.arange(n_obj)
  return out


def _style_rank(s: str) -> Tuple[int, str]:
  return (ALL_STYLES.index(s) if s in ALL_STYLES else len(ALL_STYLES), s)


def anchor_styles(forget_styles, retain_styles, scheme: str = "one_to_one", *, base=None,
                  seed: int = 0, k: int = 5, group_size: int = 5) -> Dict[str, Tuple[str, ...]]:
  """Anchor (alternative) styles p_a of CORE Eq. 2 for each forget style, CORE Table 4.

  Returns {forget style: tuple of anchor styles}; with more than one anchor, one is drawn
  at every gradient step.  The schemes are `unlearning.core.anchor_candidates`'s (one
  implementation for classes and styles), on the styles of `forget_styles` + `retain_styles`
  indexed in ALL_STYLES order: one_to_one walks that order (each forget style to the next
  free retained style after it, cyclically); all_to_one maps to `base` (a retained style's
  name, or its index in ALL_STYLES; None or -1: retain_styles[0]); groups_to_one, random
  and random_k take the retained styles in the order given.

  The baselines' pairings in CORE App. C are all_to_one (Forget01), random (Forget06) and
  one_to_one (Forget25).
  """
  check_choice("config.core.scheme", scheme, SCHEMES)
  forget = resolve_styles(forget_styles)
  retain = resolve_styles(retain_styles, field="config.data.styles", allowed=ALL_STYLES) \
      if _tokens(retain_styles) else ()
  overlap = [s for s in forget if s in retain]
  if overlap:
    raise UserError("config.data.forget_styles", forget_styles,
                    f"styles {tuple(overlap)} are also retained")
  if not retain:
    raise UserError("config.data.forget_styles", forget_styles, "leaves no style to retain")
  order = sorted(forget + retain, key=_style_rank)
  b = -1
  if scheme == "all_to_one" and base is not None and not (isinstance(base, (int, np.integer)) and base < 0):
    name = ALL_STYLES[base] if isinstance(base, (int, np.integer)) and base < len(ALL_STYLES) else base
    if name not in retain:
      raise UserError("config.core.base", base,
                      f"expected a retained style {retain}, its index in ALL_STYLES, or -1")
    b = order.index(name)
  try:
    table = core_lib.anchor_candidates(len(order), [order.index(f) for f in forget], scheme,
                                       group_size=group_size, k=k, base=b, seed=seed,
                                       retained=[order.index(r) for r in retain])
  except UserError as e:
    if e.field == "config.core.k":
      raise UserError("config.core.k", k, f"expected 1..{len(retain)} anchor styles per forget style") from None
    raise
  return {f: tuple(order[j] for j in table[order.index(f)]) for f in forget}


def anchor_prompt_table(data: CanvasData, style_map: Mapping[str, Sequence[str]]) -> np.ndarray:
  """int32 (P, K): row p lists the anchor prompts of prompt p.

  A prompt of a forget style f (a key of `style_map`) gets the prompts of the
  *same object* in each anchor style of f; every other prompt is its own anchor.
  K is the most anchors of any forget style; shorter rows repeat their anchors
  cyclically (a uniform column draw is then uniform over a row's anchors whenever
  K is a multiple of its length, which holds for every scheme of `anchor_styles`).
  """
  n_obj = len(data.objects)
  for f, anchors in style_map.items():
    for s in (f, *anchors):
      if s not in data.styles:
        raise UserError("config.data.styles", s,
                        f"anchor pairing uses a style that is not loaded; loaded: {data.styles}")
    if not anchors:
      raise UserError("config.core.scheme", f, "forget style has no anchor style")
  width = max([len(a) for a in style_map.values()] + [1])
  table = np.repeat(np.arange(data.num_prompts, dtype=np.int32)[:, None], width, axis=1)
  objs = np.arange(n_obj, dtype=np.int32)
  for f, anchors in style_map.items():
    fi = data.styles.index(f)
    cols = np.resize(np.array([data.styles.index(a) for a in anchors], np.int32), width)
    table[fi * n_obj:(fi + 1) * n_obj] = cols[None, :] * n_obj + objs[:, None]
  return table
