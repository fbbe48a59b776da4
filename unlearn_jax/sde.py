"""Forward SDEs and the DDPM discrete schedule (Song et al. 2021, score_sde conventions).

Every SDE is a frozen, hashable dataclass of Python floats, so it can be closed
over or passed as a static argument to `jax.jit`.  Shapes: `x` is (B, ...),
`t` is (B,).  Per-example scalars (`std`, `diffusion`) have shape (B,).

  dx = f(x, t) dt + g(t) dw                                  (forward SDE)
  dx = [f - g^2 score] dt + g dw_bar                          (reverse SDE)
  dx = [f - 1/2 g^2 score] dt                                  (probability flow ODE)

Defaults are score_sde's: VESDE(sigma_min=0.01, sigma_max=50, N=1000),
VPSDE(beta_min=0.1, beta_max=20, N=1000) whose discretization is DDPM's
linear betas 1e-4..0.02.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax.errors import check_choice

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def bmul(a: jax.Array, x: jax.Array) -> jax.Array:
  """Multiplies a per-example (B,) array into x of shape (B, ...)."""
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim)) * x


def _flat_sum(x: jax.Array) -> jax.Array:
  return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


@dataclasses.dataclass(frozen=True)
class SDE:
  """Base class; subclasses define `sde`, `marginal_prob`, the prior and `discretize`."""
  N: int = 1000

  T: float = 1.0
  #: smallest time used for training and sampling.
  eps: float = 1e-5

  def sde(self, x, t):
    raise NotImplementedError

  def marginal_prob(self, x, t):
    raise NotImplementedError

  def prior_sampling(self, rng, shape):
    raise NotImplementedError

  def prior_logp(self, z):
    raise NotImplementedError

  def discretize(self, x, t):
    """Euler-Maruyama discretization x_{i+1} = x_i + f_i + G_i z_i, dt = T/N."""
    dt = self.T / self.N
    drift, diffusion = self.sde(x, t)
    return drift * dt, diffusion * jnp.sqrt(dt)

  def timestep(self, t):
    """Index i = floor(t (N - 1) / T) of the discrete noise level for t in [0, T].

    Truncation, in float32, as score_sde's `discretize` and samplers
    (`(t * (N - 1) / T).astype(int32)`): on the sampler grid linspace(T, eps, N) with
    eps < T / (N - 1) step k gets level N - 1 - k, so every level is used once and
    the last step (t = eps) is level 0, whose SMLD G = sigma_0 (the final denoising
    step).  Rounding would give level N - k for every k with k eps >= 1/2 (half the
    steps at eps = 1e-3) and never reach level 0.
    """
    return (t * (self.N - 1) / self.T).astype(jnp.int32)

  def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
    return ReverseSDE(self, score_fn, probability_flow)


@dataclasses.dataclass(frozen=True)
class VESDE(SDE):
  """Variance exploding SDE: dx = sigma(t) sqrt(2 log(smax/smin)) dw, sigma(t) = smin (smax/smin)^t."""
  sigma_min: float = 0.01
  sigma_max: float = 50.0

  def sigma(self, t):
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

  @functools.cached_property
  def discrete_sigmas(self) -> np.ndarray:
    return np.exp(np.linspace(np.log(self.sigma_min), np.log(self.sigma_max), self.N)).astype(np.float32)

  def sde(self, x, t):
    drift = jnp.zeros_like(x)
    diffusion = self.sigma(t) * np.sqrt(2 * (np.log(self.sigma_max) - np.log(self.sigma_min)))
    return drift, diffusion

  def marginal_prob(self, x, t):
    return x, self.sigma(t)

  def prior_sampling(self, rng, shape):
    return jax.random.normal(rng, shape) * self.sigma_max

  def prior_logp(self, z):
    d = np.prod(z.shape[1:])
    return -d / 2.0 * np.log(2 * np.pi * self.sigma_max ** 2) - _flat_sum(z ** 2) / (2 * self.sigma_max ** 2)

  def discretize(self, x, t):
    """SMLD discretization (score_sde): f = 0, G = sqrt(sigma_i^2 - sigma_{i-1}^2)."""
    i = self.timestep(t)
    sigmas = jnp.asarray(self.discrete_sigmas)
    sigma = sigmas[i]
    adjacent = jnp.where(i == 0, 0.0, sigmas[jnp.maximum(i - 1, 0)])
    return jnp.zeros_like(x), jnp.sqrt(sigma ** 2 - adjacent ** 2)


@dataclasses.dataclass(frozen=True)
class VPSDE(SDE):
  """Variance preserving SDE: dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw, beta linear in t."""
  beta_min: float = 0.1
  beta_max: float = 20.0

  def beta(self, t):
    return self.beta_min + t * (self.beta_max - self.beta_min)

  def log_mean_coeff(self, t):
    return -0.25 * t ** 2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

  @functools.cached_property
  def discrete_betas(self) -> np.ndarray:
    return np.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N, dtype=np.float64).astype(np.float32)

  def sde(self, x, t):
    beta_t = self.beta(t)
    return -0.5 * bmul(beta_t, x), jnp.sqrt(beta_t)

  def marginal_prob(self, x, t):
    lmc = self.log_mean_coeff(t)
    return bmul(jnp.exp(lmc), x), jnp.sqrt(-jnp.expm1(2.0 * lmc))

  def prior_sampling(self, rng, shape):
    return jax.random.normal(rng, shape)

  def prior_logp(self, z):
    d = np.prod(z.shape[1:])
    return -d / 2.0 * np.log(2 * np.pi) - _flat_sum(z ** 2) / 2.0

  def discretize(self, x, t):
    """DDPM discretization (score_sde): x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z."""
    i = self.timestep(t)
    beta = jnp.asarray(self.discrete_betas)[i]
    f = bmul(jnp.sqrt(1.0 - beta), x) - x
    return f, jnp.sqrt(beta)


@dataclasses.dataclass(frozen=True)
class SubVPSDE(VPSDE):
  """sub-VP SDE: the VP drift with diffusion beta(t) (1 - exp(-2 int_0^t beta))."""

  def sde(self, x, t):
    beta_t = self.beta(t)
    discount = -jnp.expm1(-2 * self.beta_min * t - (self.beta_max - self.beta_min) * t ** 2)
    return -0.5 * bmul(beta_t, x), jnp.sqrt(beta_t * discount)

  def marginal_prob(self, x, t):
    lmc = self.log_mean_coeff(t)
    return bmul(jnp.exp(lmc), x), -jnp.expm1(2.0 * lmc)

  def discretize(self, x, t):
    return SDE.discretize(self, x, t)


@dataclasses.dataclass(frozen=True)
class ReverseSDE:
  """Reverse-time SDE (or its probability-flow ODE when `probability_flow`)."""
  forward: SDE
  score_fn: ScoreFn
  probability_flow: bool = False

  def sde(self, x, t):
    drift, diffusion = self.forward.sde(x, t)
    score = self.score_fn(x, t)
    w = 0.5 if self.probability_flow else 1.0
    drift = drift - bmul(diffusion ** 2 * w, score)
    return drift, (jnp.zeros_like(diffusion) if self.probability_flow else diffusion)

  def discretize(self, x, t):
    f, G = self.forward.discretize(x, t)
    w = 0.5 if self.probability_flow else 1.0
    rev_f = f - bmul(G ** 2 * w, self.score_fn(x, t))
    return rev_f, (jnp.zeros_like(G) if self.probability_flow else G)


BETA_SCHEDULES = ("linear", "scaled_linear")


@dataclasses.dataclass(frozen=True)
class DDPMSchedule:
  """DDPM discrete schedule (Ho et al. 2020): integer steps i = 0..N-1.

  `beta_schedule`: "linear" (Ho et al.: betas linear in [beta_start, beta_end]) or
  "scaled_linear" (Stable Diffusion v1: sqrt(beta) linear, then squared; with
  beta_start 0.00085, beta_end 0.012).

  x_i = sqrt(abar_i) x_0 + sqrt(1 - abar_i) eps.  The network's time input is
  i / N (so it lives in [0, 1) like the continuous SDEs' t).
  """
  N: int = 1000
  beta_start: float = 1e-4
  beta_end: float = 0.02
  beta_schedule: str = "linear"

  def __post_init__(self):
    check_choice("config.sde.beta_schedule", self.beta_schedule, BETA_SCHEDULES)

  @functools.cached_property
  def betas(self) -> np.ndarray:
    if self.beta_schedule == "scaled_linear":
      return np.linspace(self.beta_start ** 0.5, self.beta_end ** 0.5, self.N, dtype=np.float64) ** 2
    return np.linspace(self.beta_start, self.beta_end, self.N, dtype=np.float64)

  @functools.cached_property
  def alphas_cumprod(self) -> np.ndarray:
    return np.cumprod(1.0 - self.betas)

  def _take(self, arr, i):
    return jnp.asarray(arr.astype(np.float32))[i]

  def marginal_coeffs(self, i):
    """(sqrt(abar_i), sqrt(1 - abar_i)) for integer steps i of shape (B,)."""
    abar = self._take(self.alphas_cumprod, i)
    return jnp.sqrt(abar), jnp.sqrt(1.0 - abar)

  def q_sample(self, x0, i, noise):
    a, s = self.marginal_coeffs(i)
    return bmul(a, x0) + bmul(s, noise)

  def time_input(self, i):
    return i.astype(jnp.float32) / self.N

  def vlb_weight(self, i):
    """beta_i^2 / (2 sigma_i^2 alpha_i (1 - abar_i)) with sigma_i^2 = beta_i (SGU Eq. 12-14)."""
    betas = self.betas
    w = betas / (2.0 * (1.0 - betas) * (1.0 - self.alphas_cumprod))
    return self._take(w, i)

  def posterior(self, x_i, x0, i):
    """Mean and variance of q(x_{i-1} | x_i, x_0) (Ho et al. Eq. 7)."""
    abar = self.alphas_cumprod
    abar_prev = np.append(1.0, abar[:-1])
    betas = self.betas
    c0 = self._take(betas * np.sqrt(abar_prev) / (1.0 - abar), i)
    ct = self._take((1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar), i)
    var = self._take(betas * (1.0 - abar_prev) / (1.0 - abar), i)
    return bmul(c0, x0) + bmul(ct, x_i), var


def get_sde(sde_name: str, **kwargs):
  """Builds an SDE (or the DDPM schedule) by name: vesde, vpsde, subvpsde, ddpm."""
  classes = {"vesde": VESDE, "vpsde": VPSDE, "subvpsde": SubVPSDE, "ddpm": DDPMSchedule}
  check_choice("config.sde.name", sde_name, sorted(classes))
  cls = classes[sde_name]
  fields = {f.name for f in dataclasses.fields(cls)}
  return cls(**{k: v for k, v in kwargs.items() if k in fields})
