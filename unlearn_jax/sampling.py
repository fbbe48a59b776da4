"""Samplers for score-based and DDPM models: PC, probability-flow ODE, DDPM ancestral,
DDIM, classifier-free guidance, inpainting and reconstruction.

Every sampler is a pure function of an rng key and a model closure (`score_fn(x, t)`
with t of shape (B,), or `eps_fn(x, i)` with integer steps i of shape (B,)); loops
over time are `lax.scan` / `lax.fori_loop`, so the caller can `jax.jit` (or
`shard_map`) the whole call with the SDE, closures, shape and names static.

PC sampling (Song et al. 2021, Sec. 4.2; score_sde conventions).  On the time grid
t_0 = T > t_1 > ... > t_{n-1} = eps (`linspace(T, eps, n)`), each step runs the
corrector at t_k then the predictor from t_k to t_{k+1} (t_n = 0):
  * euler_maruyama: x <- x + [f - g^2 s] dt + g sqrt(-dt) z,  dt = -t_0 / n
    (score_sde's -1/N for a full run with T = 1).
  * reverse_diffusion (App. E): with the forward discretization
    x_{k} = x_{k+1} + f + G z (time runs down the grid), x <- x - f + G^2 s + G z.
    When n == sde.N this is `sde.reverse(score_fn).discretize` exactly as score_sde
    (VE: SMLD's G = sqrt(sigma_i^2 - sigma_{i-1}^2); VP: DDPM's betas), at level
    i = floor(t_k (N-1)/T) (`sde.timestep`, truncated as score_sde: level N-1-k at
    step k for eps < T/(N-1), level 0, G = sigma_0, at the last step).  Those
    discretizations index the SDE's own N noise levels, so on any other grid
    (n != N, e.g. a coarse CPU grid, or `reconstruct` starting at t_start) we use the
    exact forward Gaussian kernel between grid points instead:
        x_t = a x_s + G z,  a = m(t)/m(s),  G^2 = std(t)^2 - a^2 std(s)^2,
    with (m, std) from `sde.marginal_prob` (all three SDEs have affine drift), and
    std(t_n = 0) taken as 0 (score_sde's "adjacent sigma = 0" at the last level).
    The reverse step is the Tweedie mean of that kernel plus G noise:
        x <- (x + G^2 s(x, t)) / a + G z,
    which is score_sde's reverse diffusion for VE (a = 1) and its ancestral
    predictor for VP (a = sqrt(1 - beta)), with G and a computed for the grid
    spacing, so a coarse grid stays correct to first order.
    (Measured with Gaussian data: the sample std is ~2% high at n = 100 and ~1% at
    300, for VP and VE; swapping G for the posterior std G std(s)/std(t), score_sde's
    "ancestral" variant, is as far off in the other direction, so it is not offered.)
  * langevin corrector (Alg. 4-5): step = 2 alpha (snr ||z|| / ||s||)^2 with the norms
    averaged over the batch, alpha = 1 - beta_i for VP/sub-VP, 1 otherwise;
    x <- x + step s + sqrt(2 step) z.
  With `denoise`, the final step returns the predictor's mean (no noise added).

Probability-flow ODE (Sec. 4.3): dx/dt = f - 1/2 g^2 s, solved from T to eps with
diffrax Tsit5 + PIDController; `denoise` then applies one Tweedie step at eps,
x <- (x + std(eps)^2 s(x, eps)) / m(eps).

DDPM (Ho et al. 2020, Alg. 2): x_{i-1} = mu~(x_i, x0_hat) + sigma_i z, where
x0_hat = (x_i - sqrt(1 - abar_i) eps) / sqrt(abar_i) (optionally clipped) and mu~ is
the posterior mean of q(x_{i-1} | x_i, x_0) (Eq. 7).  Unclipped, this equals
Alg. 2's 1/sqrt(alpha_i) (x_i - beta_i / sqrt(1 - abar_i) eps).  sigma_i^2 = beta_i
("beta", the default) or the posterior variance
beta~_i ("posterior"); no noise is added at i = 0.

DDIM (Song, Meng & Ermon 2021, Eq. 12 and 16) on the strided subsequence
tau = round(linspace(0, N-1, n_steps)) (so it starts at the prior level N-1):
  x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma z,
  sigma = eta sqrt((1 - abar_prev) / (1 - abar)) sqrt(1 - abar / abar_prev),
with abar_prev = 1 after the last step; eta = 0 is deterministic given x_T.

Classifier-free guidance (Ho & Salimans 2022): eps = (1 + w) eps(x, c) - w eps(x, null).

Inpainting and reconstruction (SGU Sec. 4.3; score_sde `controllable_generation`):
inpainting runs PC sampling and, after every corrector and predictor update, replaces
the known pixels (mask == 1) by the forward-noised data at the time x is now at
(after the last predictor step that is the clean data, so known pixels are returned
exactly); the unknown pixels of the denoised output use the predictor mean (score_sde
used the noisy x there).  Reconstruction noises the data to t_start with the forward
kernel and runs the reverse sampler from t_start to eps.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple, Optional

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import sde as sde_lib
from unlearn_jax.errors import UserError, check_choice, check_range
from unlearn_jax.score import eps_to_x0

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]
EpsFn = Callable[[jax.Array, jax.Array], jax.Array]


_bmul = sde_lib.bmul


def _batch_mean_norm(x: jax.Array) -> jax.Array:
  return jnp.mean(jnp.linalg.norm(x.reshape(x.shape[0], -1), axis=-1))


def _kernel_coeffs(sde, t: jax.Array):
  """(m(t), std(t)) of p_0t(x_t | x_0) = N(m x_0, std^2 I), each (B,); std(0) := 0."""
  mean, std = sde.marginal_prob(jnp.ones((t.shape[0], 1)), t)
  return mean[:, 0], jnp.where(t > 0, std, 0.0)


# ----------------------------------------------------------------------------- PC steps


class _Step(NamedTuple):
  """One PC step: current time t (B,), the time t_next (B,) the predictor moves to
  (0 after the last step), and the Euler-Maruyama dt (< 0)."""
  t: jax.Array
  t_next: jax.Array
  dt: jax.Array


def _no_update(rng, sde, score_fn, x, step, **unused):
  del rng, sde, score_fn, step, unused
  return x, x


def euler_maruyama_predictor(rng, sde, score_fn, x, step: _Step, **unused):
  """Reverse-SDE Euler-Maruyama: x + [f - g^2 s] dt + g sqrt(|dt|) z."""
  del unused
  drift, diffusion = sde.reverse(score_fn).sde(x, step.t)
  x_mean = x + drift * step.dt
  z = jax.random.normal(rng, x.shape, x.dtype)
  return x_mean + _bmul(diffusion * jnp.sqrt(-step.dt), z), x_mean


def _grid_kernel(sde, step: _Step):
  """a = m(t)/m(s) and G^2 = std(t)^2 - a^2 std(s)^2 of x_t = a x_s + G z, s = t_next."""
  m_t, std_t = _kernel_coeffs(sde, step.t)
  m_s, std_s = _kernel_coeffs(sde, step.t_next)
  a = m_t / m_s
  return a, jnp.maximum(std_t ** 2 - (a * std_s) ** 2, 0.0)


def reverse_diffusion_predictor(rng, sde, score_fn, x, step: _Step, *, native: bool, **unused):
  """Reverse diffusion; see the module docstring for `native` (n == N) vs the grid kernel."""
  del unused
  z = jax.random.normal(rng, x.shape, x.dtype)
  if native:
    f, G = sde.reverse(score_fn).discretize(x, step.t)
    x_mean = x - f
  else:
    a, G2 = _grid_kernel(sde, step)
    G = jnp.sqrt(G2)
    x_mean = _bmul(1.0 / a, x + _bmul(G2, score_fn(x, step.t)))
  return x_mean + _bmul(G, z), x_mean


def _langevin_alpha(sde, t: jax.Array) -> jax.Array:
  if isinstance(sde, sde_lib.VPSDE):  # also sub-VP
    alphas = 1.0 - jnp.asarray(sde.discrete_betas)
    return alphas[sde.timestep(t)]
  return jnp.ones_like(t)


def langevin_corrector(rng, sde, score_fn, x, step: _Step, *, snr: float,
                       n_corrector_steps: int, **unused):
  """Langevin MCMC at fixed t with score_sde's snr step size (Alg. 4-5)."""
  del unused
  alpha = _langevin_alpha(sde, step.t)

  def body(_, carry):
    rng, x, _ = carry
    rng, key = jax.random.split(rng)
    grad = score_fn(x, step.t)
    z = jax.random.normal(key, x.shape, x.dtype)
    step_size = 2.0 * alpha * (snr * _batch_mean_norm(z) / _batch_mean_norm(grad)) ** 2
    x_mean = x + _bmul(step_size, grad)
    return rng, x_mean + _bmul(jnp.sqrt(2.0 * step_size), z), x_mean

  _, x, x_mean = jax.lax.fori_loop(0, n_corrector_steps, body, (rng, x, x))
  return x, x_mean


PREDICTORS = {
    "reverse_diffusion": reverse_diffusion_predictor,
    "euler_maruyama": euler_maruyama_predictor,
    "none": _no_update,
}
CORRECTORS = {
    "langevin": langevin_corrector,
    "none": _no_update,
}


def _pc_loop(rng, sde, score_fn, x, timesteps, *, predictor: str, corrector: str,
             native: bool, snr: float, n_corrector_steps: int, denoise: bool,
             project: Optional[Callable] = None):
  """Corrector then predictor at each t in `timesteps`; `project(rng, x, x_mean, t)`
  (inpainting) runs after each update with the time x is then at."""
  check_choice("config.sampling.predictor", predictor, sorted(PREDICTORS))
  check_choice("config.sampling.corrector", corrector, sorted(CORRECTORS))
  predictor_fn = functools.partial(PREDICTORS[predictor], native=native)
  corrector_fn = functools.partial(CORRECTORS[corrector], snr=snr,
                                   n_corrector_steps=n_corrector_steps)
  if project is None:
    project = lambda rng, x, x_mean, t: (x, x_mean)
  batch = x.shape[0]
  n = timesteps.shape[0]
  t_next = jnp.concatenate([timesteps[1:], jnp.zeros((1,), timesteps.dtype)])
  dt = -timesteps[0] / n

  def body(carry, inputs):
    x, _ = carry
    key, t, tn = inputs
    k_c, k_pc, k_p, k_pp = jax.random.split(key, 4)
    step = _Step(jnp.full((batch,), t), jnp.full((batch,), tn), dt)
    x, x_mean = corrector_fn(k_c, sde, score_fn, x, step)
    x, x_mean = project(k_pc, x, x_mean, step.t)
    x, x_mean = predictor_fn(k_p, sde, score_fn, x, step)
    x, x_mean = project(k_pp, x, x_mean, step.t_next)
    return (x, x_mean), None

  keys = jax.random.split(rng, n)
  (x, x_mean), _ = jax.lax.scan(body, (x, x), (keys, timesteps, t_next))
  return x_mean if denoise else x


def time_grid(t_start: float, eps: float, n_steps: int) -> jax.Array:
  """The PC time grid linspace(t_start, eps, n_steps) (float32, score_sde's); with
  n_steps == sde.N the native predictors index level `sde.timestep(t)` of it."""
  return jnp.linspace(t_start, eps, n_steps)


def _resolve_n_steps(n_steps, default: int) -> int:
  n_steps = default if n_steps is None else n_steps
  if not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
    raise UserError("config.sampling.n_steps", n_steps, "expected a positive integer")
  return int(n_steps)


def pc_sample(rng, sde, score_fn: ScoreFn, shape, *, predictor: str = "reverse_diffusion",
              corrector: str = "langevin", snr: float = 0.16, n_corrector_steps: int = 1,
              n_steps: Optional[int] = None, eps: float = 1e-3, denoise: bool = True) -> jax.Array:
  """Predictor-corrector sampling from the prior at T down to `eps`.

  Args:
    rng: PRNG key.
    sde: a `VESDE`, `VPSDE` or `SubVPSDE`.
    score_fn: `score_fn(x, t)` with t of shape (B,).
    shape: sample shape (B, ...).
    predictor: "reverse_diffusion", "euler_maruyama" or "none".
    corrector: "langevin" or "none".
    snr, n_corrector_steps: Langevin signal-to-noise ratio and steps per level.
    n_steps: grid size (default `sde.N`); n != sde.N uses the grid-kernel
      reverse diffusion described in the module docstring.
    eps: last time of the grid.
    denoise: return the final predictor mean instead of the noisy sample.

  Returns:
    Samples of `shape`.
  """
  n_steps = _resolve_n_steps(n_steps, sde.N)
  rng_prior, rng_loop = jax.random.split(rng)
  x = sde.prior_sampling(rng_prior, shape)
  timesteps = time_grid(sde.T, eps, n_steps)
  return _pc_loop(rng_loop, sde, score_fn, x, timesteps, predictor=predictor,
                  corrector=corrector, native=n_steps == sde.N, snr=snr,
                  n_corrector_steps=n_corrector_steps, denoise=denoise)


# ----------------------------------------------------------------------------- ODE


def tweedie_denoise(sde, score_fn: ScoreFn, x: jax.Array, t: float) -> jax.Array:
  """E[x_0 | x_t] = (x_t + std(t)^2 s(x_t, t)) / m(t) for the Gaussian kernel."""
  t_vec = jnp.full((x.shape[0],), t)
  m, std = _kernel_coeffs(sde, t_vec)
  return _bmul(1.0 / m, x + _bmul(std ** 2, score_fn(x, t_vec)))


def ode_sample(rng, sde, score_fn: ScoreFn, shape, *, rtol: float = 1e-5, atol: float = 1e-5,
               eps: float = 1e-3, denoise: bool = True, x_init: Optional[jax.Array] = None,
               max_steps: int = 4096):
  """Probability-flow ODE sampling with diffrax (Tsit5, PID step control), T -> eps.

  `x_init` replaces the prior draw (e.g. to decode given latents).  Returns
  (samples, nfe) with nfe the number of score evaluations: 1 initial + 6 per
  attempted Tsit5 step (first-same-as-last), + 1 for `denoise`.
  """
  x = sde.prior_sampling(rng, shape) if x_init is None else x_init
  flow = sde.reverse(score_fn, probability_flow=True)

  def vector_field(t, y, args):
    del args
    return flow.sde(y, jnp.full((y.shape[0],), t, y.dtype))[0]

  sol = diffrax.diffeqsolve(
      diffrax.ODETerm(vector_field), diffrax.Tsit5(), t0=sde.T, t1=eps, dt0=None, y0=x,
      stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol), max_steps=max_steps)
  x = sol.ys[-1]
  nfe = 6 * sol.stats["num_steps"] + 1
  if denoise:
    x = tweedie_denoise(sde, score_fn, x, eps)
    nfe = nfe + 1
  return x, nfe


# ----------------------------------------------------------------------------- DDPM / DDIM

VARIANCES = ("beta", "posterior")


def _x0_hat(schedule, x, eps, i, clip_x0, clip_range):
  a, s = schedule.marginal_coeffs(i)
  x0 = eps_to_x0(x, eps, a, s)
  return jnp.clip(x0, *clip_range) if clip_x0 else x0


def ddpm_ancestral_sample(rng, schedule: sde_lib.DDPMSchedule, eps_fn: EpsFn, shape, *,
                          clip_x0: bool = False, clip_range=(-1.0, 1.0),
                          variance: str = "beta", x_init: Optional[jax.Array] = None) -> jax.Array:
  """Ho et al. Alg. 2 over all N steps (see the module docstring for the variance).

  `clip_x0` clips Tweedie's x0 to `clip_range` (the data range, [-1, 1] for images)
  before forming the posterior mean, as in Ho et al.'s released sampler.
  """
  check_choice("config.sampling.variance", variance, VARIANCES)
  abar = schedule.alphas_cumprod
  abar_prev = np.append(1.0, abar[:-1])
  sigma2 = schedule.betas if variance == "beta" else schedule.betas * (1 - abar_prev) / (1 - abar)
  sigma = jnp.asarray(np.sqrt(sigma2), jnp.float32)
  rng_init, rng_loop = jax.random.split(rng)
  x = jax.random.normal(rng_init, shape) if x_init is None else x_init
  batch = shape[0]

  def body(x, inputs):
    key, i = inputs
    i_vec = jnp.full((batch,), i, jnp.int32)
    x0 = _x0_hat(schedule, x, eps_fn(x, i_vec), i_vec, clip_x0, clip_range)
    mean, _ = schedule.posterior(x, x0, i_vec)
    z = jax.random.normal(key, x.shape, x.dtype)
    return mean + jnp.where(i > 0, sigma[i], 0.0) * z, None

  steps = jnp.arange(schedule.N - 1, -1, -1, dtype=jnp.int32)
  x, _ = jax.lax.scan(body, x, (jax.random.split(rng_loop, schedule.N), steps))
  return x


def ddim_timesteps(N: int, n_steps: int) -> np.ndarray:
  """Strided subsequence round(linspace(0, N-1, n_steps)), descending."""
  check_range("config.sampling.n_steps", n_steps, 1, N)
  return np.round(np.linspace(0, N - 1, n_steps)).astype(np.int32)[::-1].copy()


def ddim_sample(rng, schedule: sde_lib.DDPMSchedule, eps_fn: EpsFn, shape, *, n_steps: int = 50,
                eta: float = 0.0, clip_x0: bool = False, clip_range=(-1.0, 1.0),
                x_init: Optional[jax.Array] = None, run_steps: Optional[jax.Array] = None) -> jax.Array:
  """DDIM (Song et al. 2021, Eq. 12) over `ddim_timesteps(N, n_steps)`; eta=1 is DDPM-like.

  `run_steps` (B,) stops example b after run_steps[b] updates, leaving it at step
  `ddim_timesteps(N, n_steps)[run_steps[b]]` (partial sampling from noise, as ESD builds
  its x_t); None runs every step and returns x_0.
  """
  seq = ddim_timesteps(schedule.N, n_steps)
  abar = schedule.alphas_cumprod
  a_t = jnp.asarray(abar[seq], jnp.float32)
  a_prev = jnp.asarray(np.append(abar[seq[1:]], 1.0), jnp.float32)
  rng_init, rng_loop = jax.random.split(rng)
  x = jax.random.normal(rng_init, shape) if x_init is None else x_init
  batch = shape[0]

  def body(x, inputs):
    key, k, i, a, ap = inputs
    i_vec = jnp.full((batch,), i, jnp.int32)
    eps = eps_fn(x, i_vec)
    x0 = _x0_hat(schedule, x, eps, i_vec, clip_x0, clip_range)
    if clip_x0:  # keep eps consistent with the clipped x0
      eps = (x - jnp.sqrt(a) * x0) / jnp.sqrt(1.0 - a)
    sigma = eta * jnp.sqrt((1.0 - ap) / (1.0 - a) * (1.0 - a / ap))
    z = jax.random.normal(key, x.shape, x.dtype)
    x_new = jnp.sqrt(ap) * x0 + jnp.sqrt(jnp.maximum(1.0 - ap - sigma ** 2, 0.0)) * eps + sigma * z
    if run_steps is not None:
      x_new = jnp.where((k < run_steps).reshape((-1,) + (1,) * (x.ndim - 1)), x_new, x)
    return x_new, None

  keys = jax.random.split(rng_loop, len(seq))
  x, _ = jax.lax.scan(body, x, (keys, jnp.arange(len(seq)), jnp.asarray(seq), a_t, a_prev))
  return x


# ----------------------------------------------------------------------------- guidance


def guided_eps_fn(eps_apply: Callable, labels: jax.Array, null_label, w) -> EpsFn:
  """Classifier-free guidance: eps(x, t) = (1 + w) eps(x, t, c) - w eps(x, t, null).

  `eps_apply(x, t, labels)` is called once on the stacked batch of size 2B
  (conditional first).  `null_label` is broadcast to `labels`' shape, so it may be
  the null class index or a null text embedding.  A Python `w == 0` skips the
  unconditional half.
  """
  null = jnp.broadcast_to(jnp.asarray(null_label, jnp.asarray(labels).dtype), jnp.shape(labels))

  def eps_fn(x, t):
    if isinstance(w, (int, float)) and w == 0:
      return eps_apply(x, t, labels)
    batch = x.shape[0]
    out = eps_apply(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                    jnp.concatenate([labels, null]))
    eps_c, eps_u = out[:batch], out[batch:]
    return (1.0 + w) * eps_c - w * eps_u

  return eps_fn


# ----------------------------------------------------------------------------- inpainting


def inpaint(rng, sde, score_fn: ScoreFn, x_known: jax.Array, mask: jax.Array, *,
            n_steps: Optional[int] = None, snr: float = 0.16,
            predictor: str = "reverse_diffusion", corrector: str = "langevin",
            n_corrector_steps: int = 1, eps: float = 1e-3, denoise: bool = True) -> jax.Array:
  """PC inpainting: fills the pixels where `mask == 0`, keeps those where `mask == 1`.

  `mask` broadcasts against `x_known` (e.g. (B, H, W, 1) or (H, W, C)).  After each
  corrector/predictor update the known pixels are replaced by
  m(t) x_known + std(t) z at the time t the sample is at (clean data at the end).
  """
  n_steps = _resolve_n_steps(n_steps, sde.N)
  mask = jnp.broadcast_to(mask, x_known.shape).astype(x_known.dtype)

  def project(rng, x, x_mean, t):
    m, std = _kernel_coeffs(sde, t)
    known_mean = _bmul(m, x_known)
    known = known_mean + _bmul(std, jax.random.normal(rng, x.shape, x.dtype))
    return (x * (1 - mask) + known * mask, x_mean * (1 - mask) + known_mean * mask)

  rng_prior, rng_proj, rng_loop = jax.random.split(rng, 3)
  x = sde.prior_sampling(rng_prior, x_known.shape)
  x, _ = project(rng_proj, x, x, jnp.full((x.shape[0],), sde.T))
  timesteps = time_grid(sde.T, eps, n_steps)
  return _pc_loop(rng_loop, sde, score_fn, x, timesteps, predictor=predictor,
                  corrector=corrector, native=n_steps == sde.N, snr=snr,
                  n_corrector_steps=n_corrector_steps, denoise=denoise, project=project)


def reconstruct(rng, sde, score_fn: ScoreFn, x0: jax.Array, t_start: float = 0.02, *,
                n_steps: Optional[int] = None, predictor: str = "reverse_diffusion",
                corrector: str = "none", snr: float = 0.16, n_corrector_steps: int = 1,
                eps: float = 1e-3, denoise: bool = True) -> jax.Array:
  """Noises x0 to t_start with p_0t and samples back to eps (SGU Sec. 4.3, t = 0.02).

  The grid is linspace(t_start, eps, n_steps), by default ceil(t_start / T * N)
  steps (the SDE's own level spacing); reverse diffusion uses the grid kernel.
  The corrector defaults to "none": the reverse SDE alone samples p(x_0 | x_t),
  whereas Langevin steps target the marginal p_t and so wash out the link to x0
  (each step by about 2 snr^2 of the way).
  """
  check_range("config.sampling.t_start", t_start, eps, sde.T)
  n_steps = _resolve_n_steps(n_steps, max(1, math.ceil(t_start / sde.T * sde.N)))
  rng_noise, rng_loop = jax.random.split(rng)
  t_vec = jnp.full((x0.shape[0],), t_start)
  mean, std = sde.marginal_prob(x0, t_vec)
  x = mean + _bmul(std, jax.random.normal(rng_noise, x0.shape, x0.dtype))
  timesteps = time_grid(t_start, eps, n_steps)
  return _pc_loop(rng_loop, sde, score_fn, x, timesteps, predictor=predictor,
                  corrector=corrector, native=False, snr=snr,
                  n_corrector_steps=n_corrector_steps, denoise=denoise)
