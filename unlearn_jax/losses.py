"""Per-example diffusion losses, written in eps units.

For a continuous SDE with perturbation x_t = mean(t) x_0 + std(t) z, denoising
score matching with lambda(t) = std(t)^2 (score_sde's default) is
    std^2 || s(x_t, t) + z / std ||^2 = || z - eps_hat ||^2,   eps_hat = -std s,
and with likelihood weighting lambda(t) = g(t)^2 it is (g^2 / std^2) || z - eps_hat ||^2
(SGU paper Eq. 5/8).  For DDPM the same residual is Ho et al.'s eps-MSE, optionally
with the variational-bound weight of SGU Eq. 12.  So every loss here takes the
predicted noise, the true noise and a per-example weight; `Noised` carries them.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from unlearn_jax import sde as sde_lib
from unlearn_jax.errors import check_choice

WEIGHTINGS = ("sigma", "likelihood", "simple", "vlb")


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


def loss_weight(process, t, weighting: str) -> jax.Array:
  """Per-example weight multiplying the eps-unit residual (see the module docstring)."""
  check_choice("config.training.weighting", weighting, WEIGHTINGS)
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


def denoising_loss(eps_pred, noise, weight=None, reduce: str = "sum") -> jax.Array:
  """w(t) * reduce_d (z - eps_hat)^2, per example: DSM (SGU Eq. 8) / DDPM eps-MSE (Eq. 12)."""
  check_choice("config.training.reduce", reduce, ("sum", "mean"))
  sq = _flat(noise - eps_pred) ** 2
  per = jnp.sum(sq, -1) if reduce == "sum" else jnp.mean(sq, -1)
  return per if weight is None else weight * per


def orthogonal_loss(eps_pred, noise, weight=None) -> jax.Array:
  """SGU-Orthogonal, per example: w(t) || eps_hat (.) z ||^2 (SGU Eq. 9 / DDPM Eq. 13).

  Eq. 9 is lambda(t) || s (.) grad log p_0t ||^2 with grad log p_0t = -z / std; in
  eps units (eps_hat = -std s) with each score scaled by std this is
  sum_d (eps_hat_d z_d)^2 (the public code's "square" loss, (s std z)^2).
  """
  per = jnp.sum(_flat(eps_pred * noise) ** 2, -1)
  return per if weight is None else weight * per


def obtuse_loss(eps_pred, noise, weight=None) -> jax.Array:
  """SGU-Obtuse, per example: w(t) <eps_hat, z> (SGU Eq. 10 / DDPM Eq. 14).

  Eq. 10 minimises lambda(t) <s, grad log p_0t> = lambda(t) <s, -z/std>; with
  lambda = std^2 and eps_hat = -std s this is <eps_hat, z>, which drives the
  score to point away from the forgotten data (<s, grad log p_0t> < 0), and is
  exactly DDPM Eq. 14's <eps, eps_theta>.  (The public PyTorch code minimises
  sum(s * std * z) = -<eps_hat, z>, the opposite sign; we follow the paper.)
  """
  per = jnp.sum(_flat(eps_pred * noise), -1)
  return per if weight is None else weight * per
