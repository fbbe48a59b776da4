"""Each unlearning method as objectives + one optax transform (shared plumbing).

    objectives, tx, options = methods.build("dimum", "", config, alt=alt, steps=n)

`objectives` is the ordered {name: training.Objective} of the method (the first
one's gradient is the transform's `updates`, the others arrive as
`<name>_grads`); `tx` combines them; `options` says whether the method takes a
mask from a mask stage and whether it alternates objectives step by step.

| method   | objectives (stream)                         | combination                         |
|----------|---------------------------------------------|-------------------------------------|
| finetune | retain (D_r)                                | plain fine-tuning on D_r            |
| sgu      | retain (D_r), forget (D_f; orth./obtuse)    | alpha g_r + (1-alpha) g_f (SGU Eq.11)|
| ga       | retain (D_r), forget (D_f)                  | beta g_r - g_f (DiMUM paper Eq. 5)  |
| dimum    | retain (D_r), memorize (D_u')               | g_r + beta g_u (Eq. 11)             |
| salun    | forget (D_f, target eps(x_t, c')), retain   | (g_f + beta g_r) * mask (Eq. 6)     |
| sfron    | forget (D_f, weighted ascent), retain       | alternating steps, forget masked    |
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Dict, Optional, Tuple

import numpy as np
import optax

from unlearn_jax import losses
from unlearn_jax import training
from unlearn_jax.errors import check_choice, check_range
from unlearn_jax.unlearning import dimum as dimum_lib
from unlearn_jax.unlearning import gradient_ascent as ga_lib
from unlearn_jax.unlearning import salun as salun_lib
from unlearn_jax.unlearning import sfron as sfron_lib
from unlearn_jax.unlearning import sgu as sgu_lib

METHODS = ("finetune", "sgu", "ga", "dimum", "salun", "sfron")
#: methods that need a class-conditional model.
CONDITIONAL = ("dimum", "salun")
#: which mask stage (if any) a method can use.
MASKS = {"salun": "salun", "sfron": "sfron"}


@dataclasses.dataclass(frozen=True)
class Options:
  mask: Optional[str] = None       # the mask kind the method uses ("salun" / "sfron")
  alternate: bool = False          # one objective per step, in turn


def build(method: str, variant: str, config, *, alt: Optional[np.ndarray], steps: int
          ) -> Tuple[Dict[str, training.Objective], Optional[optax.GradientTransformation], Options]:
  """(objectives, transform, options) of `method` under `config` (see the module table)."""
  check_choice("config.stages.<unlearn>.method", method, METHODS)
  denoise = functools.partial(losses.denoising_loss, reduce=config.training.reduce)
  retain = training.Objective("retain", denoise)
  if method == "finetune":
    return {"retain": retain}, None, Options()
  if method == "sgu":
    check_choice("config.stages.<unlearn>.variant", variant, tuple(sgu_lib.FORGET_LOSSES))
    return ({"retain": retain,
             "forget": training.Objective("forget", sgu_lib.FORGET_LOSSES[variant],
                                          std_power=config.sgu.std_power)},
            sgu_lib.sgu(config.sgu.alpha), Options())
  if method == "ga":
    check_range("config.ga.beta", config.ga.beta, 0.0, 1e6)
    return ({"retain": retain, "forget": training.Objective("forget", denoise)},
            ga_lib.gradient_ascent(config.ga.beta), Options())
  if method == "dimum":
    check_range("config.dimum.beta", config.dimum.beta, 0.0, 1e6)
    return ({"retain": retain, "memorize": training.Objective("alternative", denoise)},
            dimum_lib.dimum(config.dimum.beta), Options())
  if method == "salun":
    check_range("config.salun.beta", config.salun.beta, 0.0, 1e6)
    forget = training.Objective("forget", denoise, target=salun_lib.random_label_target(alt))
    return {"forget": forget, "retain": retain}, salun_lib.salun(config.salun.beta), Options(mask="salun")
  # sfron
  check_range("config.sfron.alpha_max", config.sfron.alpha_max, 0.0, 1e6)
  forget = training.Objective("forget", denoise, reduce=sfron_lib.weighted_ascent)
  return ({"forget": forget, "retain": retain},
          sfron_lib.sfron(max(steps // 2, 1), config.sfron.alpha_max),
          Options(mask="sfron", alternate=True))
