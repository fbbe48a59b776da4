"""Each unlearning method as objectives + one optax transform (shared plumbing).

    objectives, tx, options = methods.build("dimum", "", config, alt=alt, steps=n,
                                            forget=(3,), num_classes=10)

`objectives` is the ordered {name: training.Objective} of the method (the first
one's gradient is the transform's `updates`, the others arrive as
`<name>_grads`); `tx` combines them; `options` says which mask stage the method
consumes, whether it needs the frozen pre-trained parameters (`consts["frozen"]`),
whether it resets weights at the start, and whether it alternates objectives.

Every method builds from the same three pieces: a data stream, a regression target
(the noise; the current model under another label, stop-gradient; the frozen
model), and a weighted combination of gradients; they differ only in which.

| method    | objectives (stream: target)                              | combination                          |
|-----------|----------------------------------------------------------|--------------------------------------|
| finetune  | retain (D_r: noise)                                      | plain fine-tuning on D_r             |
| sgu       | retain (D_r), forget (D_f; orth./obtuse)                 | alpha g_r + (1-alpha) g_f (SGU Eq.11)|
| ga        | retain (D_r), forget (D_f)                               | beta g_r - g_f (DiMUM Eq. 5)         |
| neggrad   | forget (D_f)                                             | -g_f                                 |
| dimum     | retain (D_r), memorize (D_u': noise)                     | g_r + beta g_u (DiMUM Eq. 11)        |
| salun     | forget (D_f: eps_theta(x_t, c')), retain                 | (g_f + beta g_r) * mask (DiMUM Eq. 6)|
| sfron     | forget (D_f, weighted ascent), retain                    | alternating steps, forget masked     |
| erasediff | retain (D_r), forget (D_f: rl/noise/core; value gap g)   | g_r + lambda_t grad g (Thm. 3.1)     |
| core      | forget (D_f: eps*(x_t, p_a)), retain (D_r: eps*(x_t,c))  | g_f + alpha g_r (CORE Eq. 2-4)       |
| esd       | forget (partial-DDIM x_t: guidance-shifted eps*)         | g_f (CORE App. C Eq. 8)              |
| ca        | forget (anchor images: sg eps_theta(x_t, c_a) / noise), retain | g_f + lambda g_r (Eq. 11-12)   |
| sa        | forget (uniform surrogate x~), replay (D_r or synthetic) | g_f + gamma g_rep + 2 lam F (th-th*) |
| shs       | retain (D_r), forget (D_f), after a SNIP reset           | g_r - gamma g_f                      |

Any method without a mask of its own accepts a SalUn saliency mask (the pipeline
appends `combine.masked()`), so e.g. SalUn's mask composes with CORE or EraseDiff;
EraseDiff's projection composes with CORE's losses via `config.erasediff.target="core"`.

The baselines' alternative c' (SalUn's, EraseDiff "rl"'s target, CA-model's anchor) is by
default one fixed condition per forgotten one, `alt` (`config.unlearn.alternative`).
`config.unlearn.anchors` names a CORE anchor scheme instead (`core.SCHEMES`, CORE App. C:
"all_to_one" for Forget01, "random" - a retained concept drawn at every step - for
Forget06, "one_to_one" for Forget25): c' is then drawn per example from that scheme's
candidates (`anchor_fn`, or `core.anchor_candidates` for class labels), as CORE's own
anchors are.  DiMUM's D_u' and CA's anchor images keep the fixed `alt`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import optax

from unlearn_jax import losses
from unlearn_jax import training
from unlearn_jax.errors import UserError, check_choice, check_range
from unlearn_jax.unlearning import concept_ablation as ca_lib
from unlearn_jax.unlearning import core as core_lib
from unlearn_jax.unlearning import dimum as dimum_lib
from unlearn_jax.unlearning import erasediff as erasediff_lib
from unlearn_jax.unlearning import esd as esd_lib
from unlearn_jax.unlearning import gradient_ascent as ga_lib
from unlearn_jax.unlearning import salun as salun_lib
from unlearn_jax.unlearning import scissorhands as shs_lib
from unlearn_jax.unlearning import selective_amnesia as sa_lib
from unlearn_jax.unlearning import sfron as sfron_lib
from unlearn_jax.unlearning import sgu as sgu_lib

METHODS = ("finetune", "sgu", "ga", "neggrad", "dimum", "salun", "sfron", "erasediff", "core", "esd",
           "ca", "sa", "shs")
#: methods that need a class-conditional model.
CONDITIONAL = ("dimum", "salun", "erasediff", "core", "esd", "ca", "sa")
#: the mask stage kind a method requires; every other method optionally takes a "salun" mask.
MASKS = {"salun": "salun", "sfron": "sfron", "shs": "shs", "sa": "fisher"}
MASK_KINDS = ("salun", "sfron", "shs", "fisher")


@dataclasses.dataclass(frozen=True)
class Options:
  mask: Optional[str] = None       # the mask kind the method itself uses
  alternate: bool = False          # one objective per step, in turn
  frozen: bool = False             # needs consts["frozen"]: the parameters it starts from
  reset: bool = False              # re-initialises the masked weights before training (SHS)
  lr: Optional[float] = None       # the stage's step size, in place of its lr (EraseDiff's couple_lr)


#: what a stage's `variant` selects, per method (empty: the config's value).
VARIANTS = {"sgu": "the forget loss (orthogonal | obtuse)", "erasediff": "config.erasediff.target",
            "core": "config.core.scheme", "ca": "config.ca.variant"}


def build(method: str, variant: str, config, *, alt: Optional[np.ndarray], steps: int,
          forget: Sequence[int] = (), num_classes: int = 0, anchor_fn: Optional[Callable] = None
          ) -> Tuple[Dict[str, training.Objective], Optional[optax.GradientTransformation], Options]:
  """(objectives, transform, options) of `method` under `config` (see the module table).

  A non-empty `variant` overrides, for this stage, the option named in `VARIANTS`.
  `anchor_fn(config) -> (num_classes, K)` replaces `core.anchor_candidates` for CORE's
  anchors (UnlearnCanvas: a forget prompt's anchors are the same object in other styles).
  """
  check_choice("config.stages.<unlearn>.method", method, METHODS)
  if variant and method in ("erasediff", "core", "ca"):
    config = config.copy_and_resolve_references()
    config.unlock()
    section, key = {"erasediff": ("erasediff", "target"), "core": ("core", "scheme"),
                    "ca": ("ca", "variant")}[method]
    config[section][key] = variant
  denoise = functools.partial(losses.denoising_loss, reduce=config.training.reduce)
  retain = training.Objective("retain", denoise)
  forget_plain = training.Objective("forget", denoise)
  if method == "finetune":
    return {"retain": retain}, None, Options()
  if method == "sgu":
    check_choice("config.stages.<unlearn>.variant", variant, tuple(sgu_lib.FORGET_LOSSES))
    s = config.sgu
    forget_loss = sgu_lib.forget_loss(variant, config.training.reduce, s.orthogonal_form)
    return ({"retain": retain,
             "forget": training.Objective("forget", forget_loss, max_std=s.max_std,
                                          std_power=sgu_lib.forget_std_power(
                                              variant, config.training.weighting, s.std_power))},
            sgu_lib.sgu(config.sgu.alpha), Options())
  if method == "ga":
    check_range("config.ga.beta", config.ga.beta, 0.0, 1e6)
    return {"retain": retain, "forget": forget_plain}, ga_lib.gradient_ascent(config.ga.beta), Options()
  if method == "neggrad":
    return {"forget": forget_plain}, ga_lib.neggrad(), Options()
  if method == "dimum":
    check_range("config.dimum.beta", config.dimum.beta, 0.0, 1e6)
    return ({"retain": retain, "memorize": training.Objective("alternative", denoise)},
            dimum_lib.dimum(config.dimum.beta), Options())
  if method in ("salun", "erasediff", "ca"):
    alt_c = baseline_alternatives(config, alt, forget, num_classes, anchor_fn)
  if method == "salun":
    check_range("config.salun.beta", config.salun.beta, 0.0, 1e6)
    forget = training.Objective("forget", denoise, target=salun_lib.random_label_target(alt_c))
    return {"forget": forget, "retain": retain}, salun_lib.salun(config.salun.beta), Options(mask="salun")
  if method == "sfron":
    check_range("config.sfron.alpha_max", config.sfron.alpha_max, 0.0, 1e6)
    forget = training.Objective("forget", denoise, reduce=sfron_lib.weighted_ascent)
    return ({"forget": forget, "retain": retain},
            sfron_lib.sfron(max(steps // 2, 1), config.sfron.alpha_max),
            Options(mask="sfron", alternate=True))
  if method in ("core", "erasediff"):
    return _core_or_erasediff(method, config, denoise, alt_c if method == "erasediff" else alt, forget,
                              num_classes, anchor_fn)
  if method == "esd":
    e = config.esd
    if e.base >= num_classes or e.base in tuple(forget):
      raise UserError("config.esd.base", e.base, f"expected -1 (the null class) or a retained class "
                      f"in 0..{num_classes - 1}")
    base = num_classes if e.base < 0 else e.base          # the null class is index num_classes
    objective = training.Objective(
        "forget", denoise, target=esd_lib.esd_target(e.eta, base),
        noiser=esd_lib.partial_ddim_noiser(e.ddim_steps, e.guidance, e.source))
    return {"forget": objective}, None, Options(frozen=True)
  if method == "ca":
    c = config.ca
    check_choice("config.ca.variant", c.variant, ca_lib.VARIANTS)
    check_choice("config.ca.images", c.images, tuple(ca_lib.IMAGES))
    check_range("config.ca.prior_weight", c.prior_weight, 0.0, 1e6)
    images = ca_lib.images_of(c.variant, c.images)
    if alt_c.ndim == 2 and c.variant == "model" and images == "anchor":
      raise UserError("config.unlearn.anchors", config.unlearn.anchors,
                      "CA-model on anchor images pairs each forget condition with one alternative's images "
                      "(config.unlearn.alternative); set config.ca.images='forget' (CORE App. C Eq. 11) "
                      "or config.unlearn.anchors=''")
    target = salun_lib.random_label_target(alt_c) if c.variant == "model" else None
    ablate = training.Objective(ca_lib.IMAGES[images], denoise, target=target)
    return {"forget": ablate, "retain": retain}, ca_lib.concept_ablation(c.prior_weight), Options()
  if method == "sa":
    s = config.sa
    check_range("config.sa.gamma", s.gamma, 0.0, 1e6)
    check_range("config.sa.lam", s.lam, 0.0, 1e12)
    forget = training.Objective("forget", denoise, noiser=sa_lib.uniform_surrogate_noiser)
    replay = training.Objective(s.replay, denoise)
    return ({"forget": forget, "replay": replay}, sa_lib.selective_amnesia(s.gamma, s.lam),
            Options(mask="fisher", frozen=True))
  # shs
  check_range("config.shs.gamma", config.shs.gamma, 0.0, 1e6)
  return ({"retain": retain, "forget": forget_plain}, shs_lib.scissorhands(config.shs.gamma),
          Options(mask="shs", reset=True))


def baseline_alternatives(config, alt, forget, num_classes: int, anchor_fn: Optional[Callable] = None):
  """The baselines' c' table: `alt` (P,) when `config.unlearn.anchors` is "", else the
  (P, K) candidates of that CORE scheme (one column drawn per example and step)."""
  scheme = config.unlearn.get("anchors", "")
  check_choice("config.unlearn.anchors", scheme, ("",) + tuple(core_lib.SCHEMES))
  if not scheme:
    return np.asarray(alt)
  cfg = config.copy_and_resolve_references()
  cfg.unlock()
  cfg.core.scheme = scheme
  return np.asarray(_anchor_table(cfg, forget, num_classes, anchor_fn), np.int32)


def _anchor_table(config, forget, num_classes: int, anchor_fn: Optional[Callable] = None) -> np.ndarray:
  """(P, K) anchor candidates of `config.core`'s scheme: `anchor_fn(config)` where the
  experiment defines its concepts (UnlearnCanvas), else `core.anchor_candidates` on class labels."""
  if anchor_fn is not None:
    return anchor_fn(config)
  c = config.core
  return core_lib.anchor_candidates(num_classes, forget, c.scheme, group_size=c.group_size, k=c.k, base=c.base,
                                    seed=config.seed)


def _core_or_erasediff(method, config, denoise, alt, forget, num_classes, anchor_fn=None):
  """CORE (Eq. 2-4) and EraseDiff (Algorithm 1), which share CORE's frozen-target losses
  when `config.erasediff.target == "core"`."""
  c = config.core
  check_range("config.core.alpha", c.alpha, 0.0, 1e6)
  candidates = lambda: _anchor_table(config, forget, num_classes, anchor_fn)
  core_forget = lambda **kw: training.Objective("forget", denoise, target=core_lib.anchor_target(candidates()),
                                                **kw)
  core_retain = training.Objective("retain", denoise, target=core_lib.frozen_target)
  if method == "core":
    return {"forget": core_forget(), "retain": core_retain}, core_lib.core(c.alpha), Options(frozen=True)
  e = config.erasediff
  check_choice("config.erasediff.target", e.target, erasediff_lib.TARGETS)
  check_choice("config.erasediff.couple_lr", e.couple_lr, (False, True))
  value_fn = erasediff_lib.value_gap(e.inner_steps, e.inner_lr, e.grad_form)
  tx = erasediff_lib.erasediff(e.eta, e.rule, e.lam)
  # couple_lr: the paper's one eta is the step size of theta - eta delta_t as well as a_t's.
  lr = float(e.eta) if e.couple_lr else None
  if e.target == "core":
    return ({"retain": core_retain, "forget": core_forget(value_fn=value_fn)}, tx, Options(frozen=True, lr=lr))
  target = salun_lib.random_label_target(alt) if e.target == "rl" else erasediff_lib.uniform_target
  retain = training.Objective("retain", denoise)
  forget_obj = training.Objective("forget", denoise, target=target, value_fn=value_fn)
  return {"retain": retain, "forget": forget_obj}, tx, Options(lr=lr)
