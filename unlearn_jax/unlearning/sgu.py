"""Score-based Generative Unlearning (SGU; "Unlearning Score-based Generative Models").

SGU trains (from scratch: *unlearning re-training*; or from a pretrained
checkpoint: *fine-tuning*) on the objective of Eq. 11,

    min_theta E_t [ alpha L_USGM(g) + (1 - alpha) L_USGM(f) ],

where L_USGM(g) is denoising score matching on the retained data D_g (Eq. 8;
DDPM: Eq. 12) and L_USGM(f) is one of the unlearning losses on D_f:

  * orthogonal (Eq. 9; DDPM Eq. 13): lambda(t) || s_theta(x_t^f, t) (.) grad log p_0t(x_t^f | x_0^f) ||^2
  * obtuse     (Eq. 10; DDPM Eq. 14): lambda(t) < s_theta(x_t^f, t), grad log p_0t(x_t^f | x_0^f) >

The per-example losses are `unlearn_jax.losses.orthogonal_loss` / `obtuse_loss`
(in eps units), built by `forget_loss` with the retain loss's reduction over
dimensions (`config.training.reduce`; "mean" = sum / D for every term, so alpha
weighs like with like) and Eq. 9's reading (`config.sgu.orthogonal_form`).  Under
`weighting="likelihood"` (lambda = g^2) the orthogonal weight is g^2 / std^4 in eps
units (`forget_std_power` adds the std^-2 to `config.sgu.std_power`).  Because the two objectives are computed on different batches,
the gradients of each are taken separately and combined here, as an optax
gradient transformation:

    tx = optax.chain(sgu(alpha=0.99), optax.clip_by_global_norm(1.0), optax.adam(2e-4))
    updates, state = tx.update(retain_grads, state, params, forget_grads=forget_grads)

(`alpha * g_retain + (1 - alpha) * g_forget`, which is the gradient of Eq. 11.)
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import optax

from unlearn_jax import losses
from unlearn_jax import training
from unlearn_jax.errors import check_choice, check_range
from unlearn_jax.unlearning import spec

#: the forget objective of each SGU variant (per example, eps units).


@dataclasses.dataclass(frozen=True)
class Config:
  """`config.sgu`: alpha of Eq. 11 (alpha L_retain + (1 - alpha) L_forget); lambda(t) of Eq. 9/10
  such that the eps-unit weight is std(t)^-std_power (0: lambda = std^2 for obtuse, the DSM
  weighting of the retain loss); max_std > 0: lambda(t) = 0 where std(t) > max_std (the forget
  loss acts at small t only); how Eq. 9's product is read ("elementwise" | "inner")."""
  alpha: float = 0.99
  std_power: float = 0.0
  max_std: float = 0.0
  orthogonal_form: str = "elementwise"


FORGET_LOSSES = {
    "orthogonal": losses.orthogonal_loss,
    "obtuse": losses.obtuse_loss,
}


def forget_loss(variant: str, reduce: str = "sum", orthogonal_form: str = "elementwise") -> Callable:
  """The per-example forget loss of `variant` with the retain loss's reduction over
  dimensions (`config.training.reduce`: one reduction for both terms of Eq. 11, so
  alpha weighs like with like) and, for "orthogonal", `config.sgu.orthogonal_form`."""
  check_choice("config.stages.<unlearn>.variant", variant, tuple(FORGET_LOSSES))
  check_choice("config.training.reduce", reduce, losses.REDUCTIONS)
  check_choice("config.sgu.orthogonal_form", orthogonal_form, losses.ORTHOGONAL_FORMS)
  kwargs = dict(reduce=reduce, form=orthogonal_form) if variant == "orthogonal" else dict(reduce=reduce)
  return functools.partial(FORGET_LOSSES[variant], **kwargs)


def forget_std_power(variant: str, weighting: str, std_power: float = 0.0) -> float:
  """`training.Objective.std_power` of the forget objective: the user's `config.sgu.std_power`
  plus the std^-2 that Eq. 9 under lambda = g^2 has beyond the DSM weight
  (`losses.weight_std_power`)."""
  return std_power + losses.weight_std_power(variant, weighting)


class SGUState(NamedTuple):
  """SGU is stateless."""


def sgu(alpha: float) -> optax.GradientTransformationExtraArgs:
  """Combines retain and forget gradients as in SGU Eq. 11.

  Args:
    alpha: weight of the retain objective, in [0, 1]; the forget objective
      gets 1 - alpha.  (The paper sets it from the ratio M/N of forgotten to
      all examples; the public code used 0.99.)

  Returns:
    An `optax.GradientTransformationExtraArgs` whose `update(retain_grads,
    state, params=None, *, forget_grads)` returns
    `alpha * retain_grads + (1 - alpha) * forget_grads`.
  """
  check_range("config.sgu.alpha", alpha, 0.0, 1.0)

  def init_fn(params):
    del params
    return SGUState()

  def update_fn(updates, state, params=None, *, forget_grads, **extra_args):
    del params, extra_args
    combined = jax.tree_util.tree_map(
        lambda r, f: alpha * r + (1.0 - alpha) * f, updates, forget_grads)
    return combined, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def build(config, ctx):
  """{"retain": L_USGM(g), "forget": the `ctx.variant` loss on D_f} and `sgu(config.sgu.alpha)`."""
  s = config.sgu
  forget = forget_loss(ctx.variant, config.training.reduce, s.orthogonal_form)
  std_power = forget_std_power(ctx.variant, config.training.weighting, s.std_power)
  return ({"retain": ctx.objective("retain"),
           "forget": training.Objective("forget", forget, max_std=s.max_std, std_power=std_power)},
          sgu(s.alpha), SPEC.options())


SPEC = spec.MethodSpec(section="sgu", config=Config, 
    name="sgu", display="SGU", build=build, variant_field=tuple(FORGET_LOSSES),
    variant_doc=f"the forget loss ({' | '.join(FORGET_LOSSES)})",
    stage_display={"orthogonal": "SGU-Orthogonal", "obtuse": "SGU-Obtuse"})
