"""DiMUM: Diffusion Model Unlearning by Memorization (Algorithm 1 of "Towards
Irreversible Machine Unlearning for Diffusion Models").

Instead of pushing the model away from the forgotten data, DiMUM makes it
*memorize alternative data* under the forgotten conditions:

  D_u' = {(x_i, c_i)}, x_i from the retain set D_r, c_i the conditions of D_u   (Eq. 9)
  L_u  = E || eps - eps_theta(x_t | c) ||^2 over D_u'                           (Eq. 10)
  L_r  = E || eps - eps_theta(x_t | c) ||^2 over D_r                            (Eq. 8)
  L_DiMUM = L_r + beta L_u                                                      (Eq. 11, Alg. 1 l.16)

(Eq. 11 as printed reads beta L_u + L_u; Algorithm 1 line 16 gives the intended
L_r + beta L_u.)  Both terms are the ordinary, convergent diffusion loss, which
is why a relearning attack (DiMRA, Eq. 7) finds the unlearned model already at
a local optimum of its own loss.

The alternative images follow the paper's CIFAR-10 choice by default: images of
the *next* class that is not itself forgotten ("next"); or random retain images
("random"); or an explicit class mapping ("map:3=5,7=1").
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Sequence

import numpy as np

from unlearn_jax import data as data_lib
from unlearn_jax.errors import UserError, check_range
from unlearn_jax.unlearning import combine
from unlearn_jax.unlearning import spec


@dataclasses.dataclass(frozen=True)
class Config:
  """`config.dimum`: the memorization weight beta of g_r + beta g_u (DiMUM Eq. 11)."""
  beta: float = 1.0


SCHEMES = ("next", "random", "map:<forget>=<alternative>,...")


def dimum(beta: float = 1.0):
  """The DiMUM gradient, grad L_r + beta grad L_u (Eq. 11): retain first, `memorize_grads` extra."""
  return combine.weighted_sum(1.0, memorize=beta)


def _parse_map(scheme: str, num_classes: int, forget: Sequence[int]) -> Dict[int, int]:
  field = "config.unlearn.alternative"
  out = {}
  for item in scheme[len("map:"):].split(","):
    try:
      src, dst = (int(v) for v in item.split("="))
    except ValueError:
      raise UserError(field, scheme, "expected 'next', 'random' or 'map:3=5,7=1' (forget=alternative class)")
    if not (0 <= src < num_classes and 0 <= dst < num_classes) or dst in forget or src not in forget:
      raise UserError(field, scheme, f"each entry maps a forgotten class {tuple(forget)} to a retained "
                      f"class in 0..{num_classes - 1}")
    out[src] = dst
  missing = sorted(set(forget) - set(out))
  if missing:
    raise UserError(field, scheme, f"maps no alternative for forgotten class(es) {missing}")
  return out


def alternative_classes(num_classes: int, forget: Sequence[int], scheme: str = "next",
                        seed: int = 0) -> np.ndarray:
  """alt[c] for every class c: c itself if retained, else its alternative class.

  "next": the next class (cyclically) that is not forgotten (the paper's choice);
  "random": a seeded random retained class per forgotten class (DiMUM then draws
  its images from all of D_r; SalUn's target and AR_CL use this class);
  "map:a=b,...": explicit.
  """
  forget = sorted(set(int(c) for c in forget))
  retained = [c for c in range(num_classes) if c not in forget]
  if not retained:
    raise UserError("config.data.forget_classes", tuple(forget), "leaves no class to retain")
  alt = np.arange(num_classes, dtype=np.int32)
  if scheme == "next":
    for c in forget:
      alt[c] = next((c + k) % num_classes for k in range(1, num_classes + 1)
                    if (c + k) % num_classes not in forget)
  elif scheme == "random":
    rng = np.random.default_rng([seed, 17])
    for c in forget:
      alt[c] = rng.choice(retained)
  elif isinstance(scheme, str) and scheme.startswith("map:"):
    for c, d in _parse_map(scheme, num_classes, forget).items():
      alt[c] = d
  else:
    raise UserError("config.unlearn.alternative", scheme, "expected one of " + ", ".join(SCHEMES))
  return alt


def memorization_set(forget: data_lib.Dataset, retain: data_lib.Dataset, alt: np.ndarray,
                     scheme: str = "next", seed: int = 0) -> data_lib.Dataset:
  """D_u' (Eq. 9): one (x, c) per forget example, c its condition, x a retain image.

  x is drawn (without replacement while possible, seeded) from the retain images
  of class alt[c] ("next"/"map") or from all retain images ("random").
  """
  rng = np.random.default_rng([seed, 23])
  idx = np.empty(len(forget), np.int64)
  # One shuffled stream per pool (forget classes sharing an alternative share it).
  streams: Dict[int, list] = {}
  for c in np.unique(forget.labels):
    rows = np.flatnonzero(forget.labels == c)
    key = -1 if scheme == "random" else int(alt[int(c)])
    pool = np.arange(len(retain)) if key < 0 else np.flatnonzero(retain.labels == key)
    if len(pool) == 0:
      raise UserError("config.unlearn.alternative", scheme,
                      f"the alternative class {key} of class {int(c)} has no retain images")
    buf = streams.setdefault(key, [])
    need = len(rows)
    while sum(len(b) for b in buf) < need:
      buf.append(rng.permutation(pool))
    flat = np.concatenate(buf)
    idx[rows] = flat[:need]
    streams[key] = [flat[need:]]
  return data_lib.Dataset(name=forget.name, images=retain.images[idx], labels=forget.labels.copy(),
                          num_classes=forget.num_classes, class_names=forget.class_names,
                          source=f"memorization set: {forget.source} conditions, {retain.source} images",
                          is_image=forget.is_image)


def build(config, ctx):
  """{"retain": L_r (Eq. 8), "memorize": L_u on D_u' (the "alternative" stream, Eq. 10)} and
  `dimum(config.dimum.beta)` (Eq. 11)."""
  check_range("config.dimum.beta", config.dimum.beta, 0.0, 1e6)
  return ({"retain": ctx.objective("retain"), "memorize": ctx.objective("alternative")},
          dimum(config.dimum.beta), SPEC.options())


SPEC = spec.MethodSpec(section="dimum", config=Config, name="dimum", display="DiMUM", build=build, conditional=True)
