"""Each unlearning method as objectives + one optax transform: the table of methods.

    objectives, tx, options = methods.build("dimum", "", config, alt=alt, steps=n,
                                            forget=(3,), num_classes=10)

`config` is a `settings.Settings` (`settings.of(config_dict)`).  `objectives` is the ordered {name: training.Objective} of the method (the first
one's gradient is the transform's `updates`, the others arrive as
`<name>_grads`); `tx` combines them; `options` says which mask stage the method
consumes, whether it needs the frozen pre-trained parameters (`consts["frozen"]`),
whether it resets weights at the start, and whether it alternates objectives.

A method is one module of `unlearn_jax.unlearning`: its maths (with the paper's equation
numbers) in the module's docstring, its optax transform, its config block (a frozen
`Config` dataclass: `config.<section>`'s fields and defaults), a builder
`build(config, ctx)` on the typed `settings.Settings`, and a `SPEC = spec.MethodSpec(...)`
(name, report name, config section, what it needs, pass count).  This module lists the
specs (`SPECS`, in `METHODS` order; `SECTIONS`: their config dataclasses) and `build` looks
one up and calls its builder with a `BuildContext`.  Adding a method: its module with
`Config` and `SPEC`, one entry in `_TABLE` below and its row in
tests/unlearning/test_all_methods.py (`HAND`); `config_lib.base()` takes the block's
defaults from `Config`.  The report's names
(`reporting.markdown.PRETTY`), the config builders' mask stages (`config_lib.MASK_OF`), the
stage validation (`validation`) and the benchmarks' pass counts read the spec.

Every method builds from the same three pieces: a data stream, a regression target
(the noise; the current model under another label, stop-gradient; the frozen
model), and a weighted combination of gradients; they differ only in which.  Each method's
module is its name, except ga and neggrad (`gradient_ascent`), ca (`concept_ablation`),
sa (`selective_amnesia`) and shs (`scissorhands`).

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
| uce       | none: one closed-form edit of attn2 to_k / to_v (`edit`) | UCE Eq. 4 (SD only)                  |

Any method without a mask of its own accepts a SalUn saliency mask (the pipeline
appends `combine.masked()`), so e.g. SalUn's mask composes with CORE or EraseDiff;
EraseDiff's projection composes with CORE's losses via `config.erasediff.target="core"`.

The baselines' alternative c' (SalUn's, EraseDiff "rl"'s target, CA-model's anchor) is by
default one fixed condition per forgotten one, `alt` (`config.unlearn.alternative`).
`config.unlearn.anchors` names a CORE anchor scheme instead (`core.SCHEMES`, CORE App. C:
"all_to_one" for Forget01, "random" - a retained concept drawn at every step - for
Forget06, "one_to_one" for Forget25): c' is then drawn per example from that scheme's
candidates (`anchor_fn`, or `core.anchor_candidates` for class labels), as CORE's own
anchors are (`BuildContext.alternatives`, `BuildContext.anchors`).  DiMUM's D_u' and CA's
anchor images keep the fixed `alt`.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import optax

from unlearn_jax import losses
from unlearn_jax import training
from unlearn_jax.errors import check_choice
from unlearn_jax.unlearning import concept_ablation as ca_lib
from unlearn_jax.unlearning import core as core_lib
from unlearn_jax.unlearning import dimum as dimum_lib
from unlearn_jax.unlearning import erasediff as erasediff_lib
from unlearn_jax.unlearning import esd as esd_lib
from unlearn_jax.unlearning import finetune as finetune_lib
from unlearn_jax.unlearning import gradient_ascent as ga_lib
from unlearn_jax.unlearning import salun as salun_lib
from unlearn_jax.unlearning import scissorhands as shs_lib
from unlearn_jax.unlearning import selective_amnesia as sa_lib
from unlearn_jax.unlearning import sfron as sfron_lib
from unlearn_jax.unlearning import neggrad_plus
from unlearn_jax.unlearning import sgu as sgu_lib
from unlearn_jax.unlearning import spec as spec_lib
from unlearn_jax.unlearning import uce as uce_lib

Options = spec_lib.Options
MethodSpec = spec_lib.MethodSpec

#: every method's spec, in the order the configs and reports list them.
_TABLE = (finetune_lib.SPEC, sgu_lib.SPEC, ga_lib.GA, ga_lib.NEGGRAD, dimum_lib.SPEC, salun_lib.SPEC,
          sfron_lib.SPEC, erasediff_lib.SPEC, core_lib.SPEC, esd_lib.SPEC, ca_lib.SPEC, sa_lib.SPEC,
          shs_lib.SPEC, neggrad_plus.SPEC, uce_lib.SPEC)
#: name -> MethodSpec.
SPECS = collections.OrderedDict((s.name, s) for s in _TABLE)
assert len(SPECS) == len(_TABLE), "two specs share a name"

METHODS = tuple(SPECS)
#: methods that need a class-conditional model.
CONDITIONAL = tuple(n for n, s in SPECS.items() if s.conditional)
#: the mask stage kind a method requires; every other method optionally takes a "salun" mask.
MASKS = {n: s.mask for n, s in SPECS.items() if s.mask is not None}
MASK_KINDS = spec_lib.MASK_KINDS
#: config section -> the frozen dataclass of its fields (`MethodSpec.config`), in table order.
SECTIONS = collections.OrderedDict((s.section, s.config) for s in _TABLE if s.section is not None)
assert len(SECTIONS) == sum(s.section is not None for s in _TABLE), "two specs share a config section"
#: what a stage's `variant` selects, per method (empty: the config's value).
VARIANTS = {n: s.variants for n, s in SPECS.items() if s.variant_field is not None}
#: methods that are one closed-form edit of the weights (`MethodSpec.closed_form`), not trained.
CLOSED_FORM = tuple(n for n, s in SPECS.items() if s.closed_form is not None)


def spec(name: str) -> MethodSpec:
  """The `MethodSpec` of method `name` (a UserError naming the choices if there is none)."""
  check_choice("config.stages.<unlearn>.method", name, METHODS)
  return SPECS[name]


@dataclasses.dataclass(frozen=True, eq=False)
class BuildContext:
  """What a method's `build(config, ctx)` gets besides the config: the stage's `variant`,
  the alternative classes `alt` (`config.unlearn.alternative`), the stage's `steps`, the
  forgotten classes, the class count, the experiment's `anchor_fn` (or None) and `denoise`,
  the denoising loss with the config's reduction over dimensions."""
  variant: str
  alt: Optional[np.ndarray]
  steps: int
  forget: Sequence[int]
  num_classes: int
  anchor_fn: Optional[Callable]
  denoise: Callable

  def objective(self, stream: str, **kw) -> training.Objective:
    """`training.Objective(stream, denoise, **kw)`: the denoising loss on `stream`."""
    return training.Objective(stream, self.denoise, **kw)

  def alternatives(self, config):
    """The baselines' c' table (`baseline_alternatives`): `alt`, or a CORE scheme's candidates."""
    return baseline_alternatives(config, self.alt, self.forget, self.num_classes, self.anchor_fn)

  def anchors(self, config) -> np.ndarray:
    """CORE's (P, K) anchor candidates under `config.core` (`_anchor_table`)."""
    return _anchor_table(config, self.forget, self.num_classes, self.anchor_fn)


def build(method: str, variant: str, config, *, alt: Optional[np.ndarray], steps: int,
          forget: Sequence[int] = (), num_classes: int = 0, anchor_fn: Optional[Callable] = None
          ) -> Tuple[Dict[str, training.Objective], Optional[optax.GradientTransformation], Options]:
  """(objectives, transform, options) of `method` under `config` (see the module table).

  A non-empty `variant` overrides, for this stage, the option named in `VARIANTS`
  (`MethodSpec.variant_field`: a config field, or the variants the builder reads).
  `anchor_fn(config) -> (num_classes, K)` replaces `core.anchor_candidates` for CORE's
  anchors (UnlearnCanvas: a forget prompt's anchors are the same object in other styles).
  """
  s, config, ctx = _context(method, variant, config, alt=alt, steps=steps, forget=forget,
                            num_classes=num_classes, anchor_fn=anchor_fn)
  return s.build(config, ctx)


def edit(method: str, variant: str, config, params, *, alt: Optional[np.ndarray], forget: Sequence[int] = (),
         num_classes: int = 0, anchor_fn: Optional[Callable] = None):
  """The edited parameters of a closed-form method (`MethodSpec.closed_form`, `CLOSED_FORM`:
  UCE) from `params`, under `config` with the stage's `variant` (as `build`)."""
  s, config, ctx = _context(method, variant, config, alt=alt, steps=0, forget=forget,
                            num_classes=num_classes, anchor_fn=anchor_fn)
  if s.closed_form is None:
    raise ValueError(f"method {method!r} is trained, not a closed-form edit: use methods.build")
  return s.closed_form(config, ctx, params)


def _context(method: str, variant: str, config, **kw) -> Tuple[MethodSpec, object, BuildContext]:
  """(spec, config with the variant applied, BuildContext) of a stage of `method`."""
  if not dataclasses.is_dataclass(config):
    raise TypeError("methods.build takes a settings.Settings: settings.of(config_dict)")
  s = spec(method)
  if isinstance(s.variant_field, tuple):
    check_choice("config.stages.<unlearn>.variant", variant, s.variant_field)
  elif variant and s.variant_field:
    config = _with_field(config, *s.variant_field.split("."), variant)
  denoise = functools.partial(losses.denoising_loss, reduce=config.training.reduce)
  return s, config, BuildContext(variant=variant, denoise=denoise, **kw)


def baseline_alternatives(config, alt, forget, num_classes: int, anchor_fn: Optional[Callable] = None):
  """The baselines' c' table: `alt` (P,) when `config.unlearn.anchors` is "", else the
  (P, K) candidates of that CORE scheme (one column drawn per example and step)."""
  scheme = config.unlearn.anchors
  check_choice("config.unlearn.anchors", scheme, ("",) + tuple(core_lib.SCHEMES))
  if not scheme:
    return np.asarray(alt)
  cfg = _with_field(config, "core", "scheme", scheme)
  return np.asarray(_anchor_table(cfg, forget, num_classes, anchor_fn), np.int32)


def _with_field(config, section: str, key: str, value):
  """`config` (a `settings.Settings`) with `config.<section>.<key>` = value."""
  return dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **{key: value})})


def _anchor_table(config, forget, num_classes: int, anchor_fn: Optional[Callable] = None) -> np.ndarray:
  """(P, K) anchor candidates of `config.core`'s scheme: `anchor_fn(config)` where the
  experiment defines its concepts (UnlearnCanvas), else `core.anchor_candidates` on class labels."""
  if anchor_fn is not None:
    return anchor_fn(config)
  c = config.core
  return core_lib.anchor_candidates(num_classes, sorted(set(forget)), c.scheme, group_size=c.group_size, k=c.k,
                                    base=c.base, seed=config.seed)
