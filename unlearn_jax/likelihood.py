"""Exact likelihood through the probability-flow ODE (Song et al. 2021, Sec. 4.3, App. D.2).

Every SDE dx = f(x, t) dt + g(t) dw has a deterministic probability-flow ODE
with the same marginals p_t (Song et al. Eq. 13):

  dx/dt = f~(x, t) = f(x, t) - 1/2 g(t)^2 score(x, t).

Along a solution x(t), the instantaneous change of variables (Chen et al. 2018)
gives d/dt log p_t(x(t)) = -div f~(x(t), t), so integrating from t = eps to T

  log p_eps(x) = log p_T(z) + int_eps^T div f~(x(t), t) dt,      z = x(T),

with the prior standing in for p_T (Song et al. Eq. 40).  The divergence is
estimated with Hutchinson-Skilling, div f~ = E_v[v^T (d f~/dx) v] with v
Rademacher or Gaussian, drawn ONCE per example and held fixed for the whole
solve (Grathwohl et al. 2019); v^T J v is one Jacobian-vector product (`jax.jvp`)
that also returns f~ itself.  For low-dimensional data `hutchinson="exact"` sums
the Jacobian diagonal, D jvps against the basis vectors (what `jax.jacfwd` does).

Bits per dimension (score_sde's `likelihood.py` conventions):

  bpd = -(log p_T(z) + delta_logp) / ln 2 / D + offset,

D the number of dimensions of one example.  `bpd_offset` gives the offset for
8-bit images uniformly dequantized with `dequantize` and mapped to [0, 1] or
[-1, 1]: offset = 8 + log2(d inverse_scaler / dx), i.e. 8 or 7.

`get_likelihood_fn` integrates the joint ODE for (x, delta_logp) with diffrax
(Tsit5, PID step-size control, rtol = atol = 1e-5 by default) inside `jit`, for
the whole batch in one solve (`solver="dopri5"` gives scipy RK45's method).
With `step_size="shared"` the batch is one ODE state and shares its steps (the
error norm is an RMS over all examples, as in score_sde's single `solve_ivp`
call); with `step_size="per_example"` the solve
is `vmap`ped, each example keeps its own step size, and the batched loop runs
until the slowest example finishes.  `nll_scipy` is score_sde's host-side
procedure (scipy RK45 with a device round trip per evaluation), kept as a
reference and for the benchmark in `benchmarks/nll.py`.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Tuple

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import data as data_lib
from unlearn_jax import lazy
from unlearn_jax import sde as sde_lib
from unlearn_jax.errors import check_choice, check_range

integrate = lazy.load("scipy.integrate")   # host-only dependency

# score_apply(params, x_B..., t_B) -> score_B...
ScoreApply = Callable[[Any, jax.Array, jax.Array], jax.Array]

DIVERGENCES = ("rademacher", "gaussian", "exact")
STEP_SIZES = ("shared", "per_example")
ERROR_NORMS = ("rms", "per_example")
# Explicit Runge-Kutta pairs with 7 stages, first-same-as-last: Tsit5 (default)
# and Dormand-Prince 5(4), the method of scipy's RK45.
SOLVERS = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5}

# Evaluations of the ODE right-hand side made by those solvers from an explicit
# first step: 6 per attempted step plus the first stage of the first step.
# (diffrax 0.7.2's automatic dt0=None picks 0.01 without evaluating the vector
# field, because the term is wrapped inside `diffeqsolve`; we pass that first
# step explicitly.)
_NFE_PER_STEP = 6
_NFE_EXTRA = 1
_FIRST_STEP_FRACTION = 0.01


# --------------------------------------------------------------------------- #
# Data conventions.
# --------------------------------------------------------------------------- #
# Uniform dequantization lives with the other data conventions.
dequantize = data_lib.dequantize


def bpd_offset(centered: bool, dequantized: bool = True) -> float:
  """The constant added to bits/dim computed in model coordinates.

  The model sees x = scaler(u), u in [0, 1]; inverse_scaler is u = x for
  `centered=False` and u = (x + 1) / 2 for `centered=True` (data in [-1, 1]).
  By change of variables, -log2 p_u(u) = -log2 p_x(x) + log2 |d inverse_scaler / dx|
  per dimension, which is 0 or -1.

  * `dequantized=True` (8-bit images dequantized with `dequantize`): the
    discrete likelihood of the 256 levels adds log2 256 = 8 bits per dimension,
    offset = 8 + log2(d inverse_scaler / dx) = 8 for [0, 1] and 7 for [-1, 1]
    (score_sde's `7 - inverse_scaler(-1)`).
  * `dequantized=False` (continuous data): offset = log2(d inverse_scaler / dx),
    i.e. 0 without scaling and -1 for centred data, so the NLL is reported as a
    density on the unscaled [0, 1] data.  Pass 0.0 as `offset` directly to get
    the NLL in model coordinates.
  """
  log2_jacobian = -1.0 if centered else 0.0
  return (8.0 if dequantized else 0.0) + log2_jacobian


# --------------------------------------------------------------------------- #
# The probability-flow drift and its divergence.
# --------------------------------------------------------------------------- #
_bmul = sde_lib.bmul


def _flat_sum(x):
  return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def hutchinson_noise(rng: jax.Array, shape: Tuple[int, ...], hutchinson: str):
  """The probe vectors v (one per example, shaped like x); None for "exact"."""
  check_choice("likelihood.hutchinson", hutchinson, DIVERGENCES)
  draws = {
      "rademacher": lambda: jax.random.rademacher(rng, shape, dtype=jnp.float32),
      "gaussian": lambda: jax.random.normal(rng, shape, dtype=jnp.float32),
      "exact": lambda: None,
  }
  return draws[hutchinson]()


def get_drift_fn(sde, score_apply: ScoreApply) -> Callable:
  """drift(params, x, t) = f(x, t) - 1/2 g(t)^2 score(x, t), with t a scalar."""

  def drift(params, x, t):
    t_B = jnp.full((x.shape[0],), t, dtype=jnp.float32)
    f, g = sde.sde(x, t_B)
    return f - _bmul(0.5 * g ** 2, score_apply(params, x, t_B))

  return drift


def _hutchinson_rhs(drift_fn, params, x, t, noise):
  """(f~, v^T J v) from one forward-mode Jacobian-vector product."""
  dx, jv = jax.jvp(lambda y: drift_fn(params, y, t), (x,), (noise,))
  return dx, _flat_sum(jv * noise)


def _exact_rhs(drift_fn, params, x, t, noise):
  """(f~, tr J) from D Jacobian-vector products against the basis vectors."""
  del noise
  d = math.prod(x.shape[1:])
  basis = jnp.eye(d, dtype=x.dtype).reshape((d, 1) + x.shape[1:])
  basis = jnp.broadcast_to(basis, (d,) + x.shape)
  fn = lambda y: drift_fn(params, y, t)
  dx = fn(x)
  jcols = jax.vmap(lambda e: jax.jvp(fn, (x,), (e,))[1])(basis)  # (d, B, ...)
  diag = jnp.diagonal(jcols.reshape(d, x.shape[0], d), axis1=0, axis2=2)  # (B, d)
  return dx, jnp.sum(diag, axis=-1)


_RHS = {"rademacher": _hutchinson_rhs, "gaussian": _hutchinson_rhs, "exact": _exact_rhs}


def get_ode_rhs(sde, score_apply: ScoreApply, hutchinson: str = "rademacher") -> Callable:
  """rhs(params, x, t, noise) -> (dx/dt, d delta_logp/dt) of the joint ODE."""
  check_choice("likelihood.hutchinson", hutchinson, DIVERGENCES)
  return functools.partial(_RHS[hutchinson], get_drift_fn(sde, score_apply))


def _per_example_norm(err):
  """max over examples of max(RMS of the example's x error, |its delta_logp error|)."""
  err_x, err_logp = err
  rms_x = jnp.sqrt(jnp.mean(err_x.reshape(err_x.shape[0], -1) ** 2, axis=-1))
  return jnp.max(jnp.maximum(rms_x, jnp.abs(err_logp)))


def _rms_norm(err):
  """One RMS over every component of the batch (scipy's and diffrax's default)."""
  leaves = jax.tree.leaves(err)
  total = sum(jnp.sum(leaf ** 2) for leaf in leaves)
  return jnp.sqrt(total / sum(leaf.size for leaf in leaves))


_NORMS = {"rms": _rms_norm, "per_example": _per_example_norm}


def _to_bpd(sde, z, delta_logp, offset):
  d = math.prod(z.shape[1:])
  return -(sde.prior_logp(z) + delta_logp) / np.log(2.0) / d + offset


# --------------------------------------------------------------------------- #
# The jitted diffrax likelihood.
# --------------------------------------------------------------------------- #
def get_likelihood_fn(sde, score_apply: ScoreApply, *, rtol: float = 1e-5,
                      atol: float = 1e-5, eps: float = 1e-5,
                      hutchinson: str = "rademacher", offset: float = 0.0,
                      max_steps: int = 4096, step_size: str = "shared",
                      solver: str = "tsit5", error_norm: str = "rms") -> Callable:
  """Builds `nll_fn(params, x, rng) -> (bpd_B, z_B..., nfe)`, pure and jit-able.

  Args:
    sde: a continuous SDE from `unlearn_jax.sde` (VESDE, VPSDE, SubVPSDE).
    score_apply: `score_apply(params, x, t_B) -> score` shaped like x.
    rtol, atol: tolerances of the PID step-size controller (score_sde: 1e-5).
    eps: the ODE starts at t = eps (score_sde: 1e-5) and ends at sde.T.
    hutchinson: "rademacher" (score_sde's default), "gaussian", or "exact"
      (D jvps per evaluation: for low-dimensional data only).
    offset: added to bits/dim, see `bpd_offset`.
    max_steps: the solver's step budget; an example whose solve fails (e.g.
      runs out of steps) gets bpd = NaN.
    step_size: "shared" (one solve for the batch, RMS error over the batch) or
      "per_example" (a vmapped solve, each example with its own steps).
    solver: "tsit5" or "dopri5" (scipy RK45's tableau).
    error_norm: how the controller reduces the scaled local error
      err / (atol + rtol |y|): "rms" over all components of the batch (score_sde's
      `solve_ivp`), where one example's delta_logp is 1 of B (D + 1) components,
      so its error is barely controlled and depends on the rest of the batch;
      or "per_example", the max over examples of max(RMS of the example's x
      error, |its delta_logp error|), which bounds every example's likelihood
      error (more steps).

  Returns:
    nll_fn(params, x, rng): bpd of shape (B,), z = x(T) shaped like x, and nfe,
    the number of batched right-hand-side evaluations (an int32 scalar; for
    "per_example", that of the slowest example, which the batched loop runs).
    `rng` draws the Hutchinson probes (unused for "exact").
  """
  check_choice("likelihood.hutchinson", hutchinson, DIVERGENCES)
  check_choice("likelihood.step_size", step_size, STEP_SIZES)
  check_choice("likelihood.solver", solver, sorted(SOLVERS))
  check_choice("likelihood.error_norm", error_norm, ERROR_NORMS)
  check_range("likelihood.eps", eps, 0.0, sde.T)
  rhs = get_ode_rhs(sde, score_apply, hutchinson)

  def vector_field(t, y, args):
    params, noise = args
    return rhs(params, y[0], t, noise)

  term = diffrax.ODETerm(vector_field)
  ode_solver = SOLVERS[solver]()
  controller = diffrax.PIDController(rtol=rtol, atol=atol, norm=_NORMS[error_norm])

  def solve(params, x, noise):
    y0 = (x, jnp.zeros((x.shape[0],), jnp.float32))
    sol = diffrax.diffeqsolve(
        term, ode_solver, t0=eps, t1=sde.T, dt0=_FIRST_STEP_FRACTION * (sde.T - eps),
        y0=y0, args=(params, noise),
        stepsize_controller=controller, saveat=diffrax.SaveAt(t1=True),
        max_steps=max_steps, throw=False)
    z, delta_logp = sol.ys[0][-1], sol.ys[1][-1]
    ok = sol.result == diffrax.RESULTS.successful
    bpd = jnp.where(ok, _to_bpd(sde, z, delta_logp, offset), jnp.nan)
    nfe = _NFE_PER_STEP * sol.stats["num_steps"] + _NFE_EXTRA
    return bpd, z, nfe.astype(jnp.int32)

  def solve_each(params, x, noise):
    one = lambda xi, ni: solve(params, xi[None], None if ni is None else ni[None])
    bpd, z, nfe = jax.vmap(one)(x, noise)
    return bpd[:, 0], z[:, 0], jnp.max(nfe)

  solvers = {"shared": solve, "per_example": solve_each}

  def nll_fn(params, x, rng):
    x = jnp.asarray(x, jnp.float32)
    noise = hutchinson_noise(rng, x.shape, hutchinson)
    return solvers[step_size](params, x, noise)

  return nll_fn


# --------------------------------------------------------------------------- #
# score_sde's host-side procedure: scipy RK45, one device round trip per step.
# --------------------------------------------------------------------------- #
@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def jitted_ode_rhs(sde, score_apply, hutchinson, params, x, t, noise):
  """The right-hand side `nll_scipy` calls, compiled once per static arguments and shapes."""
  return get_ode_rhs(sde, score_apply, hutchinson)(params, x, t, noise)


_jitted_bpd = jax.jit(_to_bpd, static_argnums=0)


def nll_scipy(sde, score_apply: ScoreApply, params, x, rng, *, rtol: float = 1e-5,
              atol: float = 1e-5, eps: float = 1e-5, hutchinson: str = "rademacher",
              offset: float = 0.0):
  """The reference: `scipy.integrate.solve_ivp(method="RK45")` on the host.

  Same ODE, same probes (`hutchinson_noise(rng, ...)`) and same bits/dim as
  `get_likelihood_fn`; the state is one float64 vector [x.ravel(), delta_logp]
  for the whole batch, and every evaluation calls the jitted right-hand side
  (compiled once per (sde, score_apply, hutchinson, shapes); the host side
  converts with numpy only, so nothing else dispatches or compiles per call).

  Returns:
    (bpd, z, nfe) as numpy arrays / int; bpd is NaN if the solver failed.
  """
  check_choice("likelihood.hutchinson", hutchinson, DIVERGENCES)
  x = np.asarray(x, np.float32)
  shape, batch = x.shape, x.shape[0]
  noise = hutchinson_noise(rng, shape, hutchinson)

  def fun(t, y):
    xt = y[:-batch].reshape(shape).astype(np.float32)
    dx, div = jitted_ode_rhs(sde, score_apply, hutchinson, params, xt, np.float32(t), noise)
    return np.concatenate([np.asarray(dx, np.float64).ravel(), np.asarray(div, np.float64)])

  y0 = np.concatenate([x.astype(np.float64).ravel(), np.zeros(batch)])
  sol = integrate.solve_ivp(fun, (eps, sde.T), y0, rtol=rtol, atol=atol, method="RK45")
  z = sol.y[:-batch, -1].reshape(shape).astype(np.float32)
  delta_logp = sol.y[-batch:, -1].astype(np.float32)
  bpd = np.asarray(_jitted_bpd(sde, z, delta_logp, np.float32(offset)))
  if not sol.success:
    bpd = np.full_like(bpd, np.nan)
  return bpd, z, int(sol.nfev)
