"""Per-example losses and the SGU transform against hand-computed values."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unlearn_jax import losses, score
from unlearn_jax import sde as sde_lib
from unlearn_jax.errors import UserError
from unlearn_jax.unlearning import sgu
from unlearn_jax import settings

EPS = jnp.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
Z = jnp.array([[0.5, 1.0, -2.0], [1.0, -1.0, 2.0]])
W = jnp.array([2.0, 0.5])


def test_denoising_loss_hand_values():
  # (z - eps)^2 rows: [0.25, 9, 6.25] -> 15.5 ; [1, 16, 9] -> 26
  np.testing.assert_allclose(losses.denoising_loss(EPS, Z), [15.5, 26.0])
  np.testing.assert_allclose(losses.denoising_loss(EPS, Z, W), [31.0, 13.0])
  np.testing.assert_allclose(losses.denoising_loss(EPS, Z, reduce="mean"), [15.5 / 3, 26.0 / 3])


def test_orthogonal_loss_hand_values():
  # (eps * z)^2 rows: [0.25, 4, 1] -> 5.25 ; [0, 9, 4] -> 13   (SGU Eq. 9 / 13)
  np.testing.assert_allclose(losses.orthogonal_loss(EPS, Z), [5.25, 13.0])
  np.testing.assert_allclose(losses.orthogonal_loss(EPS, Z, W), [10.5, 6.5])


def test_obtuse_loss_hand_values():
  # <eps, z> rows: 0.5 - 2 - 1 = -2.5 ; 0 - 3 - 2 = -5   (SGU Eq. 10 / 14)
  np.testing.assert_allclose(losses.obtuse_loss(EPS, Z), [-2.5, -5.0])
  np.testing.assert_allclose(losses.obtuse_loss(EPS, Z, W), [-5.0, -2.5])


def test_obtuse_in_score_form_is_eq10():
  """With eps_hat = -std * s, <eps_hat, z> = std^2 <s, grad log p_0t> and grad log p_0t = -z / std."""
  std = jnp.array([0.3, 2.0])
  s = score.to_score(EPS, std, "eps")
  grad_log_p0t = -Z / std[:, None]
  eq10 = std ** 2 * jnp.sum(s * grad_log_p0t, -1)
  np.testing.assert_allclose(losses.obtuse_loss(EPS, Z), eq10, rtol=1e-6)
  eq9 = std ** 4 * jnp.sum((s * grad_log_p0t) ** 2, -1)
  np.testing.assert_allclose(losses.orthogonal_loss(EPS, Z), eq9, rtol=1e-5)


def test_dsm_equals_score_form():
  """sum (z - eps_hat)^2 = std^2 || s + z / std ||^2 (score_sde's DSM, lambda = std^2)."""
  std = jnp.array([0.3, 2.0])
  s = score.to_score(EPS, std, "eps")
  np.testing.assert_allclose(losses.denoising_loss(EPS, Z), std ** 2 * jnp.sum((s + Z / std[:, None]) ** 2, -1),
                             rtol=1e-5)


def test_perturb_marginals_and_weights():
  sde = sde_lib.VPSDE()
  x0 = jnp.full((4, 2), 3.0)
  t = jnp.array([0.1, 0.2, 0.5, 1.0])
  n = losses.perturb(sde, x0, jax.random.key(0), "likelihood", t=t)
  mean, std = sde.marginal_prob(x0, t)
  np.testing.assert_allclose(n.x_t, mean + std[:, None] * n.noise, rtol=1e-6)
  np.testing.assert_allclose(n.time_input, t)
  np.testing.assert_allclose(n.weight, sde.beta(t) / std ** 2, rtol=1e-5)
  ddpm = sde_lib.DDPMSchedule()
  nd = losses.perturb(ddpm, x0, jax.random.key(1), "vlb")
  assert nd.t.dtype == jnp.int32 and np.all((nd.t >= 0) & (nd.t < 1000))
  np.testing.assert_allclose(nd.weight, ddpm.vlb_weight(nd.t))
  np.testing.assert_allclose(nd.time_input, nd.t / 1000.0)


def test_sgu_transform_combines_and_chains():
  retain = {"w": jnp.array([1.0, 2.0])}
  forget = {"w": jnp.array([-4.0, 8.0])}
  tx = sgu.sgu(0.75)
  upd, _ = tx.update(retain, tx.init(retain), forget_grads=forget)
  np.testing.assert_allclose(upd["w"], [0.75 - 1.0, 1.5 + 2.0])
  chained = optax.chain(sgu.sgu(0.5), optax.sgd(1.0))
  upd, _ = chained.update(retain, chained.init(retain), retain, forget_grads=forget)
  np.testing.assert_allclose(upd["w"], [1.5, -5.0])


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_sgu_alpha_out_of_range(alpha):
  with pytest.raises(UserError, match="config.sgu.alpha"):
    sgu.sgu(alpha)


def test_unknown_weighting():
  with pytest.raises(UserError, match="config.training.weighting"):
    losses.loss_weight(sde_lib.VPSDE(), jnp.ones(2), "bogus")


# ----------------------------------------------------------------------------- SGU: reduction, weights, forms


def test_orthogonal_inner_form_hand_values_and_score_form():
  # <eps, z>^2 rows: (-2.5)^2 = 6.25 ; (-5)^2 = 25   (Eq. 9 read as the inner product)
  np.testing.assert_allclose(losses.orthogonal_loss(EPS, Z, form="inner"), [6.25, 25.0])
  np.testing.assert_allclose(losses.orthogonal_loss(EPS, Z, W, form="inner"), [12.5, 12.5])
  std = jnp.array([0.3, 2.0])
  s = score.to_score(EPS, std, "eps")
  eq9_inner = std ** 4 * jnp.sum(s * (-Z / std[:, None]), -1) ** 2
  np.testing.assert_allclose(losses.orthogonal_loss(EPS, Z, form="inner"), eq9_inner, rtol=1e-5)
  with pytest.raises(UserError, match="config.sgu.orthogonal_form='dot'"):
    losses.orthogonal_loss(EPS, Z, form="dot")


@pytest.mark.parametrize("variant,form", [("orthogonal", "elementwise"), ("orthogonal", "inner"),
                                          ("obtuse", "elementwise")])
def test_sgu_forget_loss_mean_is_the_sum_over_d(variant, form):
  d = EPS.shape[1]
  summed = sgu.forget_loss(variant, "sum", form)(EPS, Z, W)
  np.testing.assert_allclose(sgu.forget_loss(variant, "mean", form)(EPS, Z, W), summed / d, rtol=1e-6)
  hand = {"orthogonal": {"elementwise": [10.5, 6.5], "inner": [12.5, 12.5]}, "obtuse": {"elementwise": [-5.0, -2.5]}}
  np.testing.assert_allclose(summed, hand[variant][form])


def _sgu_setup(variant, sde, weighting="sigma", reduce="mean", alpha=0.5, std_power=0.0, max_std=0.0,
               form="elementwise"):
  from unlearn_jax import config_lib, training
  from unlearn_jax.unlearning import methods
  c = config_lib.base()
  c.training.update(dict(reduce=reduce, weighting=weighting))
  c.sgu.update(dict(alpha=alpha, std_power=std_power, max_std=max_std, orthogonal_form=form))
  objectives, tx, _ = methods.build("sgu", variant, settings.of(c), alt=None, steps=4)
  apply_fn = lambda v, x, t, labels, train=False, rngs=None: x * v["params"]["w"] + v["params"]["b"]
  spec = training.StepSpec(apply_fn=apply_fn, process=sde, output_type="eps", objectives=objectives,
                           weighting=weighting)
  return objectives, tx, spec


SGU_X = np.linspace(0.0, 1.0, 6 * 4).reshape(6, 4).astype(np.float32)
SGU_PARAMS = {"w": jnp.array([0.5, 1.5, -0.7, 2.0]), "b": jnp.array([0.1, -0.4, 0.8, 0.2])}


@pytest.mark.parametrize("alpha", [0.5, 0.3])
@pytest.mark.parametrize("variant", ["orthogonal", "obtuse"])
def test_sgu_gradient_with_mean_reduction_is_alpha_mean_retain_plus_rest_mean_forget(variant, alpha):
  # Eq. 11 with reduce="mean" for both terms: alpha grad mean_d(retain) + (1 - alpha) grad mean_d(forget).
  from unlearn_jax import training
  sde = sde_lib.VESDE(sigma_max=5.0)
  objectives, tx, spec = _sgu_setup(variant, sde, alpha=alpha)
  keys = training.example_keys(jax.random.key(3), SGU_X.shape[0])
  batch = {"x": SGU_X}
  grads = {name: jax.grad(training.objective_loss)(SGU_PARAMS, batch, keys, jax.random.key(4), spec, obj)
           for name, obj in objectives.items()}
  noised = training.perturb_examples(sde, jnp.asarray(SGU_X), keys, "sigma")
  x_t, z = noised.x_t, noised.noise

  def hand(p, kind):
    eps = x_t * p["w"] + p["b"]
    per = {"retain": jnp.mean((eps - z) ** 2, -1), "orthogonal": jnp.mean((eps * z) ** 2, -1),
           "obtuse": jnp.mean(eps * z, -1)}[kind]
    return jnp.mean(per)

  g_r, g_f = jax.grad(hand)(SGU_PARAMS, "retain"), jax.grad(hand)(SGU_PARAMS, variant)
  for k in SGU_PARAMS:
    np.testing.assert_allclose(grads["retain"][k], g_r[k], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grads["forget"][k], g_f[k], rtol=1e-5, atol=1e-7)
  combined, _ = tx.update(grads["retain"], tx.init(SGU_PARAMS), forget_grads=grads["forget"])
  for k in SGU_PARAMS:
    np.testing.assert_allclose(combined[k], alpha * g_r[k] + (1 - alpha) * g_f[k], rtol=1e-5, atol=1e-7)


def _g2_std2(sde, t):
  """(g(t)^2, std(t)^2) in closed form."""
  t = np.asarray(t, np.float64)
  if isinstance(sde, sde_lib.VESDE):
    sig2 = (sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t) ** 2
    return sig2 * 2 * np.log(sde.sigma_max / sde.sigma_min), sig2
  beta = sde.beta_min + t * (sde.beta_max - sde.beta_min)
  return beta, 1.0 - np.exp(-(sde.beta_min * t + 0.5 * (sde.beta_max - sde.beta_min) * t ** 2))


@pytest.mark.parametrize("sde", [sde_lib.VESDE(sigma_max=5.0), sde_lib.VPSDE()], ids=["ve", "vp"])
def test_likelihood_weights_per_loss_kind(sde):
  # lambda = g^2: orthogonal (Eq. 9) g^2 / std^4, obtuse (Eq. 10) and retain (Eq. 8) g^2 / std^2;
  # std_power p multiplies each forget weight by std^-p; max_std zeroes std > max_std.
  from unlearn_jax import training
  keys = training.example_keys(jax.random.key(5), SGU_X.shape[0])
  batch = {"x": SGU_X}
  for variant, k in (("orthogonal", 4), ("obtuse", 2)):
    for p, max_std in ((0.0, 0.0), (0.5, 0.0), (0.0, 0.5)):
      objectives, _, spec = _sgu_setup(variant, sde, weighting="likelihood", std_power=p, max_std=max_std)
      for name, kk, pp, ms in (("forget", k, p, max_std), ("retain", 2, 0.0, 0.0)):
        noised, _, _, weight = training.objective_inputs(SGU_PARAMS, batch, keys, spec, objectives[name])
        g2, std2 = _g2_std2(sde, noised.t)
        expected = g2 / std2 ** (kk / 2) * std2 ** (-pp / 2)
        if ms:
          expected = np.where(np.sqrt(std2) <= ms, expected, 0.0)
          assert 0 < np.sum(expected > 0) < len(expected)
        np.testing.assert_allclose(weight, expected, rtol=2e-4, err_msg=f"{variant} {name} p={p}")
  # "sigma" scales every score by std: weight 1 for every loss kind.
  objectives, _, spec = _sgu_setup("orthogonal", sde)
  np.testing.assert_allclose(training.objective_inputs(SGU_PARAMS, batch, keys, spec, objectives["forget"])[3], 1.0)


def test_build_passes_orthogonal_form_and_reduce_and_validates():
  objectives, _, _ = _sgu_setup("orthogonal", sde_lib.VESDE(), reduce="mean", form="inner")
  np.testing.assert_allclose(objectives["forget"].loss(EPS, Z, W), [12.5 / 3, 12.5 / 3])
  objectives, _, _ = _sgu_setup("obtuse", sde_lib.VESDE(), reduce="sum")
  np.testing.assert_allclose(objectives["forget"].loss(EPS, Z, W), [-5.0, -2.5])
  with pytest.raises(UserError, match="config.sgu.orthogonal_form='dot'"):
    _sgu_setup("orthogonal", sde_lib.VESDE(), form="dot")
  with pytest.raises(UserError, match="config.training.reduce='avg'"):
    _sgu_setup("obtuse", sde_lib.VESDE(), reduce="avg")


@pytest.mark.parametrize("process,weighting", [(sde_lib.VESDE(), "vlb"), (sde_lib.VPSDE(), "vlb"),
                                               (sde_lib.DDPMSchedule(), "likelihood"), ("vesde", "vlb"),
                                               ("ddpm", "likelihood")])
def test_loss_weight_rejects_weightings_of_the_other_process(process, weighting):
  with pytest.raises(UserError) as info:
    losses.check_weighting(process, weighting)
  msg = str(info.value)
  assert msg.startswith(f"config.training.weighting={weighting!r} is not valid: expected one of") and "\n" not in msg
  allowed = losses.DDPM_WEIGHTINGS if process in ("ddpm",) or isinstance(process, sde_lib.DDPMSchedule) \
      else losses.SDE_WEIGHTINGS
  assert ", ".join(allowed) in msg
  if not isinstance(process, str):
    with pytest.raises(UserError, match="config.training.weighting"):
      losses.loss_weight(process, jnp.ones(2, jnp.int32) if isinstance(process, sde_lib.DDPMSchedule)
                         else jnp.full((2,), 0.5), weighting)


def test_loss_weight_accepts_the_weightings_that_apply():
  for w in losses.SDE_WEIGHTINGS:
    assert losses.check_weighting(sde_lib.VPSDE(), w) == w
    assert losses.loss_weight(sde_lib.VESDE(), jnp.full((2,), 0.5), w).shape == (2,)
  for w in losses.DDPM_WEIGHTINGS:
    assert losses.check_weighting("ddpm", w) == w
  np.testing.assert_allclose(losses.loss_weight(sde_lib.DDPMSchedule(), jnp.array([3, 7]), "sigma"), 1.0)
