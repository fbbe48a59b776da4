"""EraseDiff (Wu et al., "Erasing undesirable influence in diffusion models"), Algorithm 1.

Unlearning is the constrained problem of Eq. (5)-(6): keep the remaining loss
L_r low while the value-function gap

    g(theta) = L_f(theta; D_f) - min_phi L_f(phi; D_f)

goes to zero, with min_phi approximated by K steps of gradient descent from
phi^0 = theta at rate xi (phi^{k+1} = phi^k - xi grad L_f(phi^k), Sec. 3.2), so that
Algorithm 1 line 4 reads g(theta_t) = L_f(theta_t) - L_f(phi^K(theta_t)).
Theorem 3.1 gives the update direction in closed form,

    delta_t = grad L_r + lambda_t grad g,
    lambda_t = max(0, (a_t - grad g . grad L_r) / ||grad g||^2),  a_t = eta ||grad g||^2,

so lambda_t = max(0, eta - grad g . grad L_r / ||grad g||^2) (Sec. 3.3), and the model
moves by theta_{t+1} = theta_t - eta delta_t (Sec. 3.2, Algorithm 1 line 5): the
paper's eta is both the outer step size and the constraint's a_t / eta ||grad g||^2.

In unlearn_jax the two pieces are:

* `value_gap(K, xi, grad_form)`: the forget objective's `Objective.value_fn`. It runs
  the inner loop inside the jitted step (`lax.scan`, gradients averaged across
  devices) on the step's forget batch with the regression target fixed at theta,
  and returns (g, grad g).  How phi^K enters grad g (`grad_form`):

  - `"first_order"` (the default): grad g = grad L_f(theta) - grad L_f(phi^K), the
    derivative of g(theta) = L_f(theta) - L_f(phi^K(theta)) with phi^K a function of
    theta (phi^0 = theta) and its Jacobian d phi^K / d theta = prod_k (I - xi H(phi^k))
    taken as the identity (first-order MAML's approximation; the paper cites
    first-order meta-learning and calls the solution first-order).  K and xi shape the
    update: on a quadratic L_f with Hessian A, grad g = (I - (I - xi A)^K) grad L_f(theta),
    zero at K = 0 (no erasure), growing with K towards grad L_f(theta) - the paper's
    Fig. 5a finding that a larger K erases more.
  - `"unrolled"`: the exact derivative, back-propagating through the K inner steps
    (Hessian-vector products; holds K passes' activations): on the quadratic,
    (I - (I - xi A)^{2K}) grad L_f(theta).
  - `"fixed"`: phi^K held constant, as Algorithm 1 line 5 writes grad g(theta_t; phi^K)
    and the public code's stop-gradient does: grad g = grad L_f(theta), so the inner
    loop changes only the logged value of g and the update is the same for every K and
    xi (K extra passes per step buy nothing; the public code's K still acts, through
    the Adam moments its inner loop shares with the outer one and never restores).
    Kept as an option for comparison.

* `erasediff(eta, rule)`: the optax transform combining grad L_r (`updates`) and
  grad g (`forget_grads`) into delta_t.  `rule="paper"` is Theorem 3.1 with
  a_t = eta ||grad g||^2; `"constant"` uses lambda_t = `lam`; `"cosine"` is the
  public code's max(eta - cos(grad L_r, grad g), 0).  It logs lambda_t and the
  cosine similarity of delta_t with grad L_r and with grad g (the paper's Fig. 2)
  in its state's `log` (`training.method_metrics`).  The transform returns delta_t;
  the optimizer after it (`training.make_optimizer`, `config.optim.name`) takes the
  step: "sgd" is Algorithm 1's theta - lr delta_t, "adam" (the default, the public
  code's) rescales it per parameter.  `config.erasediff.couple_lr=True` makes the
  stage's step size eta as well (`methods.Options.lr`), the paper's single eta; by
  default the step size is the stage's `lr` (or `config.optim.lr`) and eta only sets
  a_t, as the public code's separate lr 1e-4 and eta do.

The forget target eps_f of L_f (Eq. 2) is chosen by `build` (`config.erasediff.target`):
"rl" (eps_theta(x_t | c_m), c_m != c the alternative class, stop-gradient),
"noise" (eps_f ~ U(0, I), EraseDiff_noise), or "core" (the frozen pre-trained
model at an anchor class, with CORE's retain loss: EraseDiff's projection on
CORE's losses).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from unlearn_jax.errors import check_choice, check_range
from unlearn_jax.unlearning import core as core_lib
from unlearn_jax.unlearning import salun as salun_lib
from unlearn_jax.unlearning import spec


@dataclasses.dataclass(frozen=True)
class Config:
  """`config.erasediff` (Algorithm 1): the lambda rule ("paper" | "constant" | "cosine"),
  a_t = eta ||grad g||^2, K inner steps (inner_steps) at rate xi (inner_lr), the forget target
  eps_f (`target`: "rl" | "noise" | "core"), and how phi^K enters grad g (`grad_form`):
  "first_order" (grad L_f(theta) - grad L_f(phi^K), phi^K(theta)'s Jacobian taken as I, so K and
  xi change the update; K = 0 erases nothing), "unrolled" (exact, through the K steps) or
  "fixed" (grad L_f(theta): Algorithm 1's literal phi^K, K and xi then change only the logged g).
  couple_lr: the step size is eta too (the paper's theta - eta delta_t); False: the stage's lr.
  unroll: the K inner steps as straight-line code (default: the fastest on XLA:CPU) or as one
  rolled `lax.scan` body (False: the step's program holds one inner pass instead of K, so it
  compiles in less time and host memory, as for the SD v1.5 UNet; the numbers are the same)."""
  eta: float = 0.1
  rule: str = "paper"
  lam: float = 0.1
  inner_steps: int = 2
  inner_lr: float = 1e-3
  grad_form: str = "first_order"
  target: str = "rl"
  couple_lr: bool = False
  unroll: bool = True


RULES = ("paper", "constant", "cosine")
GRAD_FORMS = ("first_order", "unrolled", "fixed")
DEFAULT_GRAD_FORM = "first_order"
TARGETS = ("rl", "noise", "core")


def _vdot(a, b) -> jax.Array:
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _cos(a, b) -> jax.Array:
  na, nb = jnp.sqrt(_vdot(a, a)), jnp.sqrt(_vdot(b, b))
  return _vdot(a, b) / jnp.maximum(na * nb, 1e-30)


def inner_descent(loss_fn: Callable[[Any], jax.Array], params, steps: int, lr: float,
                  unroll: bool = True):
  """phi^K: K steps of plain gradient descent on loss_fn from phi^0 = params (lax.scan).

  `loss_fn` is the loss of the global batch (the step is jitted over the mesh), so every
  device follows the same phi^k as one device would on the whole batch.  The scan is
  unrolled by default (K is small): on XLA:CPU a rolled loop whose body holds the
  UNet's backward pass ran 18x slower (3.18 s vs 0.17 s per EraseDiff step, digits
  cpu model, batch 64), compile time grows with K instead.
  """
  def body(phi, _):
    g = jax.grad(loss_fn)(phi)
    return jax.tree_util.tree_map(lambda p, d: p - lr * d, phi, g), None

  phi, _ = jax.lax.scan(body, params, None, length=steps, unroll=unroll if steps else 1)
  return phi


def value_gap(inner_steps: int = 2, inner_lr: float = 1e-4, grad_form: str = DEFAULT_GRAD_FORM,
              unroll: bool = True):
  """`Objective.value_fn` returning (g(theta), grad g) of Algorithm 1 lines 2-5.

  g = L_f(theta) - L_f(phi^K) with phi^K = `inner_descent`(theta, K, xi); grad g per
  `grad_form` (module docstring): "first_order" grad L_f(theta) - grad L_f(phi^K),
  "unrolled" the exact gradient through the inner loop, "fixed" grad L_f(theta).
  """
  check_choice("config.erasediff.grad_form", grad_form, GRAD_FORMS)
  check_range("config.erasediff.inner_steps", inner_steps, 0, 10 ** 6)
  check_range("config.erasediff.inner_lr", inner_lr, 0.0, 1e6)
  descend = lambda loss_fn, p: inner_descent(loss_fn, p, inner_steps, inner_lr, unroll)

  def value_fn(loss_fn, params):
    if grad_form == "unrolled":
      return jax.value_and_grad(lambda p: loss_fn(p) - loss_fn(descend(loss_fn, p)))(params)
    phi = jax.lax.stop_gradient(descend(loss_fn, params))
    l_theta, g_theta = jax.value_and_grad(loss_fn)(params)
    if grad_form == "fixed":
      return l_theta - loss_fn(phi), g_theta
    l_phi, g_phi = jax.value_and_grad(loss_fn)(phi)
    return l_theta - l_phi, jax.tree_util.tree_map(jnp.subtract, g_theta, g_phi)

  return value_fn


class EraseDiffState(NamedTuple):
  """The last step's lambda_t and cosines (logged as `method/<name>`)."""
  log: dict


def lambda_t(retain_grads, forget_grads, eta: float, rule: str = "paper", lam: float = 0.1) -> jax.Array:
  """lambda_t of Theorem 3.1 ("paper"), constant `lam`, or the public code's cosine form."""
  check_choice("config.erasediff.rule", rule, RULES)
  if rule == "constant":
    return jnp.asarray(lam, jnp.float32)
  dot = _vdot(forget_grads, retain_grads)
  gg = _vdot(forget_grads, forget_grads)
  if rule == "paper":
    a_t = eta * gg
    return jnp.where(gg > 0, jnp.maximum(0.0, (a_t - dot) / jnp.maximum(gg, 1e-30)), 0.0)
  return jnp.maximum(eta - _cos(retain_grads, forget_grads), 0.0)


def erasediff(eta: float = 0.1, rule: str = "paper", lam: float = 0.1) -> optax.GradientTransformationExtraArgs:
  """delta_t = grad L_r + lambda_t grad g (Theorem 3.1).

  Args:
    eta: a_t = eta ||grad g||^2 ("paper"); the cosine threshold ("cosine").  The paper's
      eta is also the step size of theta - eta delta_t; the optimizer after this transform
      takes that step (`config.erasediff.couple_lr` sets its lr to eta).
    rule: "paper" | "constant" | "cosine" (see `lambda_t`).
    lam: lambda_t for rule="constant" (the public code's default 0.1).

  Returns:
    A transform whose `update(retain_grads, state, params=None, *, forget_grads)`
    returns delta_t; the retain objective comes first, grad g as `forget_grads`.
  """
  check_choice("config.erasediff.rule", rule, RULES)
  check_range("config.erasediff.eta", eta, 0.0, 1e6)

  def init_fn(params):
    del params
    z = jnp.zeros((), jnp.float32)
    return EraseDiffState({"lambda_t": z, "cos_update_retain": z, "cos_update_forget": z,
                           "cos_retain_forget": z})

  def update_fn(updates, state, params=None, *, forget_grads, **extra):
    del params, extra, state
    lam_t = lambda_t(updates, forget_grads, eta, rule, lam)
    delta = jax.tree_util.tree_map(lambda r, f: r + lam_t * f, updates, forget_grads)
    log = {"lambda_t": lam_t, "cos_update_retain": _cos(delta, updates),
           "cos_update_forget": _cos(delta, forget_grads), "cos_retain_forget": _cos(updates, forget_grads)}
    return delta, EraseDiffState(log)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def uniform_target(inputs) -> jax.Array:
  """EraseDiff_noise's eps_f ~ U(0, I), one draw per example (Objective.target)."""
  shape = inputs.noised.x_t.shape[1:]
  return jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 31), shape))(inputs.keys)


def build(config, ctx):
  """{"retain": L_r, "forget": L_f with `value_gap`'s g} and `erasediff(eta, rule, lam)` (Theorem 3.1).

  The forget target per `config.erasediff.target` (module docstring); "core" takes CORE's two
  losses (`core.forget_objective`, `core.retain_objective`: the frozen model, so
  Options.frozen).  `couple_lr`: the paper's one eta is the step size of theta - eta delta_t as
  well as a_t's (Options.lr).
  """
  alt = ctx.alternatives(config)
  check_range("config.core.alpha", config.core.alpha, 0.0, 1e6)
  e = config.erasediff
  check_choice("config.erasediff.target", e.target, TARGETS)
  check_choice("config.erasediff.couple_lr", e.couple_lr, (False, True))
  check_choice("config.erasediff.unroll", e.unroll, (False, True))
  value_fn = value_gap(e.inner_steps, e.inner_lr, e.grad_form, unroll=e.unroll)
  tx = erasediff(e.eta, e.rule, e.lam)
  lr = float(e.eta) if e.couple_lr else None
  if e.target == "core":
    forget = core_lib.forget_objective(config, ctx, value_fn=value_fn)
    return {"retain": core_lib.retain_objective(ctx), "forget": forget}, tx, SPEC.options(frozen=True, lr=lr)
  target = salun_lib.random_label_target(alt) if e.target == "rl" else uniform_target
  forget = ctx.objective("forget", target=target, value_fn=value_fn)
  return {"retain": ctx.objective("retain"), "forget": forget}, tx, SPEC.options(lr=lr)


def passes(config, objectives, options, backend):
  """The default count plus the K inner forward+backward passes and L_f(phi^K): with its
  gradient ("first_order", "unrolled") or forward only ("fixed")."""
  fwd_bwd, fwd_only = spec.default_passes(config, objectives, options, backend)
  fwd_bwd += config.erasediff.inner_steps
  if config.erasediff.grad_form == "fixed":
    fwd_only += 1
  else:
    fwd_bwd += 1
  return fwd_bwd, fwd_only


SPEC = spec.MethodSpec(section="erasediff", config=Config, name="erasediff", display="EraseDiff", build=build, conditional=True,
                       variant_field="erasediff.target", passes=passes)
