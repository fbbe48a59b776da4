"""Per-example diffusion losses, written in eps units.

For a continuous SDE with perturbation x_t = mean(t) x_0 + std(t) z, denoising
score matching with lambda(t) = std(t)^2 (score_sde's default) is
    std^2 || s(x_t, t) + z / std ||^2 = || z - eps_hat ||^2,   eps_hat = -std s,
and with likelihood weighting lambda(t) = g(t)^2 it is (g^2 / std^2) || z - eps_hat ||^2
(SGU paper Eq. 5/8).  For DDPM the same residual is Ho et al.'s eps-MSE, optionally
with the variational-bound weight of SGU Eq. 12.  So every loss here takes the
predicted noise, the true noise and a per-example weight; `Noised` carries them.

Weights per loss kind.  `loss_weight` gives the DSM weight; each loss's eps-unit
weight is lambda(t) / std^k with k the number of 1/std factors its score form has
(s = -eps_hat / std, grad log p_0t = -z / std):
  * DSM (Eq. 8)         lambda || s + z/std ||^2     = lambda / std^2 || eps_hat - z ||^2
  * obtuse (Eq. 10)     lambda < s, -z/std >         = lambda / std^2 < eps_hat, z >
  * orthogonal (Eq. 9)  lambda || s (.) -z/std ||^2  = lambda / std^4 sum_d (eps_hat_d z_d)^2
"sigma" scales every score by std (score_sde's lambda = std^2 per score), so every
weight is 1 (the SGU public code's (s std z)^2 and s std z); "likelihood" is lambda =
g^2 for the whole term, so the orthogonal loss gets the further std^-2 of
`weight_std_power`.  DDPM's "simple" (1) and "vlb" (Eq. 12) weigh Eq. 12-14 alike.

Reduction over dimensions (`reduce`, `config.training.reduce`): "sum", or "mean" =
the sum / D, the same for every loss, so alpha of SGU Eq. 11 weighs like terms.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from unlearn_jax import sde as sde_lib
from unlearn_jax.errors import UserError, check_choice

WEIGHTINGS = ("sigma", "likelihood", "simple", "vlb")
#: the weightings that apply to each kind of process ("simple" and "sigma" are both
#: weight 1 in eps units: lambda = std^2 is Ho et al.'s unweighted eps-MSE).
SDE_WEIGHTINGS = ("sigma", "simple", "likelihood")
DDPM_WEIGHTINGS = ("simple", "sigma", "vlb")
REDUCTIONS = ("sum", "mean")
#: the forms of the orthogonal loss (see `orthogonal_loss`).
ORTHOGONAL_FORMS = ("elementwise", "inner")


def _flat(x):
  return x.reshape(x.shape[0], -1)


class Noised(NamedTuple):
  """A perturbed batch: x_t, the noise z used, time t (continuous or step index),
  the network's time input, std(t), and the per-example loss weight."""
  x_t: jax.Array
  noise: jax.Array
  t: jax.Array
  time_input: jax.Array
  std: jax.Array
  weight: jax.Array


def sample_time(process, rng, batch_size: int) -> jax.Array:
  """t ~ U(eps, T) for SDEs; i ~ U{0..N-1} for DDPM."""
  if isinstance(process, sde_lib.DDPMSchedule):
    return jax.random.randint(rng, (batch_size,), 0, process.N)
  return jax.random.uniform(rng, (batch_size,), minval=process.eps, maxval=process.T)


def check_weighting(process, weighting: str) -> str:
  """Raises `UserError` unless `weighting` applies to `process` (an SDE, the DDPM
  schedule, or a `config.sde.name`): "vlb" is DDPM's, "likelihood" (g^2) a continuous SDE's."""
  check_choice("config.training.weighting", weighting, WEIGHTINGS)
  name = process if isinstance(process, str) else type(process).__name__
  discrete = isinstance(process, sde_lib.DDPMSchedule) or process == "ddpm"
  allowed = DDPM_WEIGHTINGS if discrete else SDE_WEIGHTINGS
  if weighting not in allowed:
    kind = "the DDPM schedule" if discrete else "a continuous SDE"
    raise UserError("config.training.weighting", weighting,
                    f"expected one of {', '.join(allowed)} for {kind} ({name})")
  return weighting


def weight_std_power(loss_kind: str, weighting: str) -> float:
  """p such that `loss_weight(...) * std^-p` is the eps-unit weight of `loss_kind`
  ("denoise", "obtuse", "orthogonal"); 2 for the orthogonal loss under "likelihood"
  (g^2 / std^4, SGU Eq. 9 with lambda = g^2), else 0 (see the module docstring)."""
  return 2.0 if (loss_kind == "orthogonal" and weighting == "likelihood") else 0.0


def loss_weight(process, t, weighting: str) -> jax.Array:
  """Per-example DSM weight multiplying the eps-unit residual (see the module docstring)."""
  check_weighting(process, weighting)
  if isinstance(process, sde_lib.DDPMSchedule):
    if weighting == "vlb":
      return process.vlb_weight(t)
    return jnp.ones(t.shape, jnp.float32)
  if weighting == "likelihood":
    _, g = process.sde(jnp.zeros((t.shape[0], 1)), t)
    std = process.marginal_prob(jnp.zeros((t.shape[0], 1)), t)[1]
    return (g / std) ** 2
  return jnp.ones(t.shape, jnp.float32)


def perturb(process, x0: jax.Array, rng: jax.Array, weighting: str = "sigma",
            t: Optional[jax.Array] = None) -> Noised:
  """Draws t (unless given) and z ~ N(0, I), returns the perturbed batch."""
  rng_t, rng_z = jax.random.split(rng)
  if t is None:
    t = sample_time(process, rng_t, x0.shape[0])
  z = jax.random.normal(rng_z, x0.shape, x0.dtype)
  if isinstance(process, sde_lib.DDPMSchedule):
    mean_coeff, std = process.marginal_coeffs(t)
    x_t = mean_coeff.reshape((-1,) + (1,) * (x0.ndim - 1)) * x0
    time_in = process.time_input(t)
  else:
    x_t, std = process.marginal_prob(x0, t)
    time_in = t / process.T
  x_t = x_t + std.reshape((-1,) + (1,) * (x0.ndim - 1)) * z
  return Noised(x_t, z, t, time_in, std, loss_weight(process, t, weighting))


def _reduce_dims(x_flat, reduce: str) -> jax.Array:
  """sum_d, or the mean over d (the sum / D), of (B, D)."""
  check_choice("config.training.reduce", reduce, REDUCTIONS)
  return jnp.sum(x_flat, -1) if reduce == "sum" else jnp.mean(x_flat, -1)


def _weighted(per, weight):
  return per if weight is None else weight * per


def denoising_loss(eps_pred, noise, weight=None, reduce: str = "sum") -> jax.Array:
  """w(t) * reduce_d (z - eps_hat)^2, per example: DSM (SGU Eq. 8) / DDPM eps-MSE (Eq. 12)."""
  return _weighted(_reduce_dims(_flat(noise - eps_pred) ** 2, reduce), weight)


def orthogonal_loss(eps_pred, noise, weight=None, reduce: str = "sum", form: str = "elementwise") -> jax.Array:
  """SGU-Orthogonal, per example (SGU Eq. 9 / DDPM Eq. 13), in eps units.

  Eq. 9 is lambda(t) || s . grad log p_0t ||_2^2 with grad log p_0t = -z / std and
  s = -eps_hat / std.  The paper's "." admits two readings:
    * "elementwise" (default; the public code's "square" loss, (s std z)^2):
      s (.) grad log p_0t is the Hadamard product, a vector, and its squared norm is
      lambda / std^4 sum_d (eps_hat_d z_d)^2: every coordinate of the score is pushed
      to 0 where z_d != 0, i.e. towards s = 0 itself.
    * "inner": the text's "minimizing the inner product of the two scores" and the
      null space of grad log p_0t it seeks (Sec. 3.2): the dot product is a scalar, so
      the "norm" is its square, lambda / std^4 <eps_hat, z>^2, zero whenever the score
      is orthogonal to z (a (D-1)-dimensional set of scores, not one point).
  `weight` is the eps-unit weight (lambda / std^4: 1 for "sigma" weighting, g^2/std^4
  for "likelihood", `weight_std_power`); `reduce="mean"` divides either form by D.
  """
  check_choice("config.sgu.orthogonal_form", form, ORTHOGONAL_FORMS)
  prod = _flat(eps_pred * noise)
  if form == "elementwise":
    per = _reduce_dims(prod ** 2, reduce)
  else:
    per = jnp.sum(prod, -1) ** 2 / (1 if check_choice("config.training.reduce", reduce, REDUCTIONS) == "sum"
                                    else prod.shape[-1])
  return _weighted(per, weight)


def obtuse_loss(eps_pred, noise, weight=None, reduce: str = "sum") -> jax.Array:
  """SGU-Obtuse, per example: w(t) <eps_hat, z> (SGU Eq. 10 / DDPM Eq. 14).

  Eq. 10 minimises lambda(t) <s, grad log p_0t> = lambda(t) <s, -z/std>; with
  lambda = std^2 and eps_hat = -std s this is <eps_hat, z>, which drives the
  score to point away from the forgotten data (<s, grad log p_0t> < 0), and is
  exactly DDPM Eq. 14's <eps, eps_theta>.  (The public PyTorch code minimises
  sum(s * std * z) = -<eps_hat, z>, the opposite sign; we follow the paper.)
  `reduce="mean"` divides by D.
  """
  return _weighted(_reduce_dims(_flat(eps_pred * noise), reduce), weight)
