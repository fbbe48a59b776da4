"""Network output <-> score / eps / x0, in one place.

A model's config declares its output type:
  * "eps":   the network predicts the noise, eps_hat = -std(t) * score.  For the
             VE SDE this is score_sde's `scale_by_sigma` parametrisation up to
             sign; for VP/DDPM it is Ho et al.'s eps-prediction.
  * "score": the network predicts the score directly.
`std(t)` is the marginal standard deviation of the perturbation kernel
p_0t(x_t | x_0) = N(mean(t) x_0, std(t)^2 I).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from unlearn_jax import sde as sde_lib
from unlearn_jax.errors import check_choice

OUTPUT_TYPES = ("eps", "score")


_bmul = sde_lib.bmul


def to_score(output: jax.Array, std: jax.Array, output_type: str) -> jax.Array:
  check_choice("config.model.output", output_type, OUTPUT_TYPES)
  return output if output_type == "score" else -_bmul(1.0 / std, output)


def to_eps(output: jax.Array, std: jax.Array, output_type: str) -> jax.Array:
  check_choice("config.model.output", output_type, OUTPUT_TYPES)
  return output if output_type == "eps" else -_bmul(std, output)


def eps_to_x0(x_t, eps, mean_coeff, std):
  """x0 = (x_t - std * eps) / mean_coeff (Tweedie's estimate)."""
  return _bmul(1.0 / mean_coeff, x_t - _bmul(std, eps))


def time_input(process, t: jax.Array) -> jax.Array:
  """What the network sees as time: t / T for SDEs, i / N for DDPM steps."""
  if isinstance(process, sde_lib.DDPMSchedule):
    return process.time_input(t)
  return t / process.T


def marginal_std(process, t: jax.Array) -> jax.Array:
  if isinstance(process, sde_lib.DDPMSchedule):
    return process.marginal_coeffs(t)[1]
  return process.marginal_prob(jnp.zeros((t.shape[0], 1)), t)[1]
