"""ESD (Gandikota et al. 2023, "Erasing concepts from diffusion models") for a
class-conditional DDPM, as CORE's Appendix C writes it (Eq. 8):

    L_ESD = E || eps_theta(x_t, p_f) - [eps_theta*(x_t, p_0) - eta (eps_theta*(x_t, p_f) - eps_theta*(x_t, p_0))] ||^2

theta* is the frozen pre-trained model (`consts["frozen"]`), p_0 the null class
(the empty prompt) or a base class.  x_t is not noised data: as in the public
code, it is produced by running DDIM from pure noise under the concept p_f
(with classifier-free guidance) for a random number of the `n_steps` DDIM steps,
so t is the DDIM step reached (`partial_ddim_noiser`).  The default samples
with the current model, stop-gradient (the public code's `model`); "frozen"
uses theta*.
"""
from __future__ import annotations

import dataclasses
import jax
import jax.numpy as jnp

from unlearn_jax import losses
from unlearn_jax import sampling
from unlearn_jax import score as score_lib
from unlearn_jax.errors import UserError, check_choice, check_range
from unlearn_jax.unlearning import spec


@dataclasses.dataclass(frozen=True)
class Config:
  """`config.esd` (CORE App. C Eq. 8): eta, p_0 (`base`; -1: the null class), and the
  partial-DDIM x_t (steps, guidance, which model samples it: "current" | "frozen")."""
  eta: float = 1.0
  base: int = -1
  ddim_steps: int = 50
  guidance: float = 3.0
  source: str = "current"


SOURCES = ("current", "frozen")


def esd_target(eta: float, base_label: int):
  """Objective.target: eps*(x_t, p_0) - eta (eps*(x_t, p_f) - eps*(x_t, p_0)), p_0 = `base_label`
  (the model's null class for the empty prompt, or a base class)."""
  check_range("config.esd.eta", eta, 0.0, 1e6)

  def target(inputs):
    frozen = inputs.consts["frozen"]
    e_f = inputs.eps(frozen, inputs.labels)
    e_0 = inputs.eps(frozen, jnp.full_like(inputs.labels, base_label))
    return e_0 - eta * (e_f - e_0)

  return target


def partial_ddim_noiser(n_steps: int = 50, guidance: float = 2.0, source: str = "current"):
  """Objective.noiser: x_t from guided DDIM (eta 0) run from N(0, I) under each example's
  label for a uniform number r in 0..n_steps-1 of its steps; t = the r-th DDIM timestep."""
  check_choice("config.esd.source", source, SOURCES)
  check_range("config.esd.ddim_steps", n_steps, 1, 10 ** 5)

  def noiser(inp):
    spec, process = inp.spec, inp.spec.process
    params = inp.params if source == "current" else inp.consts["frozen"]
    seq = jnp.asarray(sampling.ddim_timesteps(process.N, n_steps))
    run = jax.vmap(lambda k: jax.random.randint(jax.random.fold_in(k, 51), (), 0, len(seq)))(inp.keys)
    x_T = jax.vmap(lambda k, x: jax.random.normal(jax.random.fold_in(k, 52), x.shape))(inp.keys, inp.x0)

    def eps_apply(x, i, labels):
      out = spec.apply_fn({"params": params}, x, process.time_input(i), labels)
      return score_lib.to_eps(out, process.marginal_coeffs(i)[1], spec.output_type)

    eps_fn = sampling.guided_eps_fn(eps_apply, inp.labels, spec.null_label, guidance)
    x_t = sampling.ddim_sample(jax.random.fold_in(inp.keys[0], 53), process, eps_fn, inp.x0.shape,
                               n_steps=len(seq), x_init=x_T, run_steps=run, clip_x0=spec.centered)
    i = seq[run]
    std = process.marginal_coeffs(i)[1]
    ones = jnp.ones(i.shape, jnp.float32)
    return losses.Noised(x_t, jnp.zeros_like(x_t), i, process.time_input(i), std, ones)

  return noiser


def build(config, ctx):
  """{"forget": Eq. 8 on partial-DDIM x_t}, no transform; p_0 = `config.esd.base` (-1: the null
  class, index num_classes)."""
  e = config.esd
  if e.base >= ctx.num_classes or e.base in tuple(ctx.forget):
    raise UserError("config.esd.base", e.base, f"expected -1 (the null class) or a retained class "
                    f"in 0..{ctx.num_classes - 1}")
  base = ctx.num_classes if e.base < 0 else e.base
  objective = ctx.objective("forget", target=esd_target(e.eta, base),
                            noiser=partial_ddim_noiser(e.ddim_steps, e.guidance, e.source))
  return {"forget": objective}, None, SPEC.options()


def passes(config, objectives, options, backend):
  """The default count plus the second frozen target and the guided (2B) partial DDIM."""
  fwd_bwd, fwd_only = spec.default_passes(config, objectives, options, backend)
  return fwd_bwd, fwd_only + 1 + 2 * config.esd.ddim_steps


SPEC = spec.MethodSpec(section="esd", config=Config, name="esd", display="ESD", build=build, conditional=True, frozen=True, passes=passes)
