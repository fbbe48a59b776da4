"""Score-based Generative Unlearning (SGU; "Unlearning Score-based Generative Models").

SGU trains (from scratch: *unlearning re-training*; or from a pretrained
checkpoint: *fine-tuning*) on the objective of Eq. 11,

    min_theta E_t [ alpha L_USGM(g) + (1 - alpha) L_USGM(f) ],

where L_USGM(g) is denoising score matching on the retained data D_g (Eq. 8;
DDPM: Eq. 12) and L_USGM(f) is one of the unlearning losses on D_f:

  * orthogonal (Eq. 9; DDPM Eq. 13): lambda(t) || s_theta(x_t^f, t) (.) grad log p_0t(x_t^f | x_0^f) ||^2
  * obtuse     (Eq. 10; DDPM Eq. 14): lambda(t) < s_theta(x_t^f, t), grad log p_0t(x_t^f | x_0^f) >

The per-example losses are `unlearn_jax.losses.orthogonal_loss` / `obtuse_loss`
(in eps units).  Because the two objectives are computed on different batches,
the gradients of each are taken separately and combined here, as an optax
gradient transformation:

    tx = optax.chain(sgu(alpha=0.99), optax.clip_by_global_norm(1.0), optax.adam(2e-4))
    updates, state = tx.update(retain_grads, state, params, forget_grads=forget_grads)

(`alpha * g_retain + (1 - alpha) * g_forget`, which is the gradient of Eq. 11.)
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import optax

from unlearn_jax.errors import check_range
from unlearn_jax import losses

#: the forget objective of each SGU variant (per example, eps units).
FORGET_LOSSES = {
    "orthogonal": losses.orthogonal_loss,
    "obtuse": losses.obtuse_loss,
}


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
