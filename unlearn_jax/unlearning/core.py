"""CORE: concept reconditioning with a frozen pre-trained target (CORE paper Sec. 3).

    L_f = E_{(p_f, x_0) ~ D_f, t} || eps_theta(x_t, p_f) - eps_theta*(x_t, p_a) ||^2   (Eq. 2)
    L_r = E_{(p_r, x_0) ~ D_r, t} || eps_theta(x_t, p_r) - eps_theta*(x_t, p_r) ||^2   (Eq. 3)
    L   = L_f + alpha L_r                                                            (Eq. 4)

theta* is the frozen pre-trained model (`consts["frozen"]`, a second parameter tree
that never trains); both targets are its predictions, under stop-gradient.  For a
class-conditional model a concept is a class label.

Anchor (alternative) concepts p_a, the schemes of the paper's Table 4
(`anchor_candidates`):
  one_to_one     (default) each forget class to its own retained class; when fewer
                 classes are retained than forgotten, a cyclic one-to-one map among
                 the forget classes themselves (Sec. 3, "Alternative concepts")
  all_to_one     every forget class to one base class
  groups_to_one  consecutive groups of `group_size` forget classes, one base class each
  random         a random class != p_f at every step (drawn per example)
  random_k       each forget class paired with `k` classes, one drawn at every step
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import training
from unlearn_jax.errors import UserError, check_choice, check_range
from unlearn_jax.unlearning import combine
from unlearn_jax.unlearning import spec


@dataclasses.dataclass(frozen=True)
class Config:
  """`config.core` (Eq. 2-4): alpha, the anchor scheme of Table 4 (`SCHEMES`), its group size
  and k, and its base class (-1: the first retained one)."""
  alpha: float = 1.0
  scheme: str = "one_to_one"
  group_size: int = 5
  k: int = 5
  base: int = -1


SCHEMES = ("one_to_one", "all_to_one", "groups_to_one", "random", "random_k")


def _next_free(start: int, num_classes: int, allowed, used) -> int:
  for k in range(1, num_classes + 1):
    c = (start + k) % num_classes
    if c in allowed and c not in used:
      return c
  return -1


def anchor_candidates(num_classes: int, forget: Sequence[int], scheme: str = "one_to_one", *,
                      group_size: int = 5, k: int = 5, base: int = -1, seed: int = 0,
                      retained: Optional[Sequence[int]] = None) -> np.ndarray:
  """(num_classes, K) int32: row c lists the anchor concepts a forget concept c may be mapped
  to (one is drawn per example and step when K > 1); a retained concept's row is itself.
  CORE Table 4 / App. C; the one implementation of the schemes, for class labels and for
  UnlearnCanvas styles (`canvas.anchor_styles` indexes styles in ALL_STYLES order).

    one_to_one     a bijection: each forget concept (in the order given) to the next free
                   retained one after it, cyclically in index order; with fewer retained
                   than forgotten, a cycle among the forget concepts themselves (CORE Sec. 3.1)
    all_to_one     every forget concept to `base` (-1: the first retained one)
    groups_to_one  consecutive groups of `group_size` forget concepts, group g to retained[g mod R]
    random         every retained concept is a candidate (CORE App. C: "we randomly sample one
                   alternative concept from the retain set" at every step)
    random_k       `k` distinct retained concepts per forget concept, drawn once with `seed`

  `forget` keeps its order (callers on class labels pass it sorted); `retained`: the retained
  concepts in the order groups and candidates use (None: every other index, ascending).
  """
  field = "config.core.scheme"
  check_choice(field, scheme, SCHEMES)
  forget = [int(c) for c in dict.fromkeys(int(c) for c in forget)]
  if retained is None:
    retained = [c for c in range(num_classes) if c not in forget]
  retained = [int(c) for c in retained]
  if not retained:
    raise UserError("config.data.forget_classes", tuple(forget), "leaves no class to retain")
  identity = np.arange(num_classes, dtype=np.int32)[:, None]
  if scheme in ("one_to_one", "all_to_one", "groups_to_one"):
    out = identity.copy()
    if scheme == "one_to_one":
      if len(forget) <= len(retained):
        used = set()
        for c in forget:
          out[c, 0] = _next_free(c, num_classes, set(retained), used)
          used.add(int(out[c, 0]))
      elif len(forget) >= 2:
        for i, c in enumerate(forget):
          out[c, 0] = forget[(i + 1) % len(forget)]
    elif scheme == "all_to_one":
      if base >= 0 and base not in retained:
        raise UserError("config.core.base", base, f"expected a retained class {tuple(retained)} or -1")
      b = retained[0] if base < 0 else base
      for c in forget:
        out[c, 0] = b
    else:
      if group_size < 1:
        raise UserError("config.core.group_size", group_size, "expected a positive integer")
      for g in range(0, len(forget), group_size):
        b = retained[(g // group_size) % len(retained)]
        for c in forget[g:g + group_size]:
          out[c, 0] = b
    return out
  if scheme == "random":
    out = np.repeat(identity, len(retained), axis=1)
    out[forget] = np.asarray(retained, np.int32)[None, :]
    return out
  if not 1 <= k <= len(retained):
    raise UserError("config.core.k", k, f"expected 1..{len(retained)} alternatives per forget class")
  rng = np.random.default_rng([seed, 29])
  out = np.repeat(identity, k, axis=1)
  for c in forget:
    out[c] = rng.choice(np.asarray(retained, np.int32), size=k, replace=False)
  return out


def draw_anchor(candidates, labels: jax.Array, keys: jax.Array) -> jax.Array:
  """p_a for each example: candidates[c] itself when it has one column, else a uniform draw."""
  cand = jnp.asarray(candidates, jnp.int32)
  if cand.shape[1] == 1:
    return cand[labels, 0]
  j = jax.vmap(lambda key: jax.random.randint(jax.random.fold_in(key, 41), (), 0, cand.shape[1]))(keys)
  return cand[labels, j]


def anchor_target(candidates):
  """Objective.target of Eq. 2: eps_theta*(x_t, p_a) from the frozen model (`consts["frozen"]`)."""
  def target(inputs):
    return inputs.eps(inputs.consts["frozen"], draw_anchor(candidates, inputs.labels, inputs.keys))
  return target


def frozen_target(inputs) -> jax.Array:
  """Objective.target of Eq. 3: eps_theta*(x_t, p_r), the frozen model under the example's own label."""
  return inputs.eps(inputs.consts["frozen"], inputs.labels)


def core(alpha: float = 1.0):
  """grad L_f + alpha grad L_r (Eq. 4): forget objective first, `retain_grads` extra."""
  return combine.weighted_sum(1.0, retain=alpha)


def forget_objective(config, ctx, **kw) -> training.Objective:
  """L_f (Eq. 2) on D_f, its anchors from `ctx.anchors(config)` (`config.core`'s scheme);
  `kw` to `training.Objective` (EraseDiff's `value_fn`)."""
  return ctx.objective("forget", target=anchor_target(ctx.anchors(config)), **kw)


def retain_objective(ctx) -> training.Objective:
  """L_r (Eq. 3) on D_r: the frozen model under the example's own label."""
  return ctx.objective("retain", target=frozen_target)


def build(config, ctx):
  """{"forget": L_f, "retain": L_r} and `core(config.core.alpha)` (Eq. 4)."""
  check_range("config.core.alpha", config.core.alpha, 0.0, 1e6)
  return ({"forget": forget_objective(config, ctx), "retain": retain_objective(ctx)}, core(config.core.alpha),
          SPEC.options())


SPEC = spec.MethodSpec(section="core", config=Config, name="core", display="CORE", build=build, conditional=True, frozen=True,
                       variant_field="core.scheme")
