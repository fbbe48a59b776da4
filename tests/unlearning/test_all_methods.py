"""Every method of `methods.SPECS`, one table (optax's test style): built from the config, one
jitted `training.train_step` is finite and a second step does not recompile, the Options agree
with the spec, and the transform's update on fixed gradient trees is the method's combination
computed by hand (`HAND`: a new method needs its row; a closed-form method's row is its edit of
a fixed Stable-Diffusion-shaped parameter tree, `SD_PARAMS`).  Plus the spec's facts against the
names the config builders and the report derive from it (`config_lib.MASK_OF`, `markdown.PRETTY`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax import config_lib, training
from unlearn_jax import train_state as ts
from unlearn_jax.unlearning import dimum, methods, spec as spec_lib
from unlearn_jax.reporting import markdown
from unlearn_jax.stages import train as train_stage
from unlearn_jax import settings
from method_fixtures import FROZEN, K, PARAMS, close, make_spec

FORGET = (1,)
ALT = dimum.alternative_classes(K, FORGET, "next")                 # 1 -> 2
MASK = {"w": jnp.array([1.0, 0.0, 1.0, 1.0, 0.0]), "b": jnp.array([0.0, 1.0, 1.0, 0.0, 1.0])}
FISHER = {"w": jnp.array([0.5, 2.0, 1.0, 3.0, 0.2]), "b": jnp.array([1.0, 0.1, 2.0, 0.4, 1.5])}
#: a fixed gradient per objective name, all different (a swapped argument shows).
GRADS = {
    "retain": {"w": jnp.array([1.0, -2.0, 0.5, 3.0, -1.0]), "b": jnp.array([4.0, 0.25, -0.5, 2.0, 1.5])},
    "forget": {"w": jnp.array([2.0, 1.0, -1.0, 0.0, 3.0]), "b": jnp.array([-2.0, 0.5, 1.0, -1.5, 0.75])},
    "memorize": {"w": jnp.array([-1.0, 0.5, 2.0, 1.0, -3.0]), "b": jnp.array([0.3, -0.7, 1.1, 0.9, -0.2])},
    "replay": {"w": jnp.array([0.6, -0.4, 1.2, -2.2, 0.1]), "b": jnp.array([1.3, 0.2, -0.9, 0.4, -1.1])},
}


def config():
  """ddpm_base() shrunk for the tiny model, every coefficient away from 1 and from its default."""
  c = config_lib.ddpm_base()
  c.training.reduce = "mean"
  c.sgu.alpha = 0.3
  c.ga.beta = 0.3
  c.dimum.beta = 0.7
  c.salun.beta = 0.2
  c.sfron.alpha_max = 6.0
  c.erasediff.update(dict(eta=0.8, inner_steps=1, inner_lr=0.1))
  c.core.alpha = 0.4
  c.esd.ddim_steps = 2
  c.ca.prior_weight = 0.6
  c.sa.update(dict(gamma=0.5, lam=3.0))
  c.shs.gamma = 0.2
  c.uce.update(dict(erase_scale=0.8, preserve_scale=0.3, lamb=0.2))
  return c


def _tree(fn, *names):
  return jax.tree_util.tree_map(fn, *[GRADS[n] for n in names])


def _erasediff(c):
  """Theorem 3.1: g_r + lambda_t g_f, lambda_t = max(0, (eta |g_f|^2 - g_f . g_r) / |g_f|^2)."""
  dot = lambda a, b: sum(float(jnp.vdot(x, y)) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                                jax.tree_util.tree_leaves(b)))
  r, f = GRADS["retain"], GRADS["forget"]
  lam = max(0.0, (c.erasediff.eta * dot(f, f) - dot(f, r)) / dot(f, f))
  assert lam > 0.0 and abs(lam - 1.0) > 0.1               # the constraint acts, and not as a plain sum
  return _tree(lambda r, f: r + lam * f, "retain", "forget")


def _sa(c):
  """g_f + gamma g_rep + 2 lam F (theta - theta*)."""
  return jax.tree_util.tree_map(lambda f, rep, fi, p, p0: f + c.sa.gamma * rep + 2 * c.sa.lam * fi * (p - p0),
                                GRADS["forget"], GRADS["replay"], FISHER, PARAMS, FROZEN)


def _sd_params():
  """A tree shaped like SDUNet's params: a (K + 1, L=4, D=3) prompt table (row K: the empty
  prompt; prompts 1 and 2 share their first two tokens), two attn2 key / value kernels and
  leaves UCE must not touch (attn2's query, attn1's key)."""
  r = np.random.default_rng(5)
  table = r.normal(size=(K + 1, 4, 3)).astype(np.float32)
  table[2, :2] = table[1, :2]
  kern = lambda *shape: jnp.asarray(r.normal(size=shape), jnp.float32)
  return {"prompts": {"embeddings": jnp.asarray(table)},
          "unet": {"block": {"attn2": {"to_k": {"kernel": kern(3, 2)}, "to_v": {"kernel": kern(3, 2)},
                                       "to_q": {"kernel": kern(2, 2)}},
                             "attn1": {"to_k": {"kernel": kern(2, 2)}}}}}


SD_PARAMS = _sd_params()


def _uce(c):
  """UCE Eq. 4, W = K^T: (e sum W c* c^T + p sum W c_j c_j^T + lambda W)(e sum c c^T + p sum c_j c_j^T
  + lambda I)^-1 on the edited tokens 2..3 of prompt 1 (its first two equal its alternative 2's)
  against the empty prompt's, preserving every token of the retained prompts 0, 2, 3 and of ""
  (the defaults; `config.uce.target` "alt": prompt 2's tokens, `tokens` "all": tokens 0..3,
  `preserve` "null": only "", "none": nothing)."""
  u = c.uce
  table = np.asarray(SD_PARAMS["prompts"]["embeddings"], np.float64)
  target = K if u.target == "empty" else int(ALT[1])
  first = 2 if u.tokens == "concept" else 0                     # tokens="all": every position
  ci, cs = table[1, first:], table[target, first:]
  keep = {"retained": [0, 2, 3, K], "null": [K], "none": []}[u.preserve]
  cj = table[keep].reshape(-1, 3)
  den = u.erase_scale * ci.T @ ci + u.preserve_scale * cj.T @ cj + u.lamb * np.eye(3)

  def new(k):
    w = np.asarray(k, np.float64).T
    num = u.erase_scale * w @ cs.T @ ci + u.preserve_scale * w @ cj.T @ cj + u.lamb * w
    return (num @ np.linalg.inv(den)).T

  out = jax.tree_util.tree_map(np.asarray, SD_PARAMS)
  for which in ("to_k", "to_v"):
    out["unet"]["block"]["attn2"][which]["kernel"] = new(out["unet"]["block"]["attn2"][which]["kernel"])
  return out


#: method -> the update by hand (a list: one per step of an alternating method; a closed-form
#: method: its edit of SD_PARAMS).
HAND = {
    "finetune": lambda c: GRADS["retain"],
    "sgu": lambda c: _tree(lambda r, f: c.sgu.alpha * r + (1 - c.sgu.alpha) * f, "retain", "forget"),
    "ga": lambda c: _tree(lambda r, f: c.ga.beta * r - f, "retain", "forget"),
    "neggrad": lambda c: _tree(lambda f: -f, "forget"),
    "dimum": lambda c: _tree(lambda r, u: r + c.dimum.beta * u, "retain", "memorize"),
    "salun": lambda c: jax.tree_util.tree_map(lambda f, r, m: (f + c.salun.beta * r) * m,
                                              GRADS["forget"], GRADS["retain"], MASK),
    # k = 0: alpha_0 = alpha_max on the masked forget step, then the plain remain step
    "sfron": lambda c: [jax.tree_util.tree_map(lambda f, m: c.sfron.alpha_max * f * m, GRADS["forget"], MASK),
                        GRADS["retain"]],
    "erasediff": _erasediff,
    "core": lambda c: _tree(lambda f, r: f + c.core.alpha * r, "forget", "retain"),
    "esd": lambda c: GRADS["forget"],
    "ca": lambda c: _tree(lambda f, r: f + c.ca.prior_weight * r, "forget", "retain"),
    "sa": _sa,
    "shs": lambda c: _tree(lambda r, f: r - c.shs.gamma * f, "retain", "forget"),
    "neggrad_plus": lambda c: _tree(lambda r, f: c.neggrad_plus.beta * r - (1 - c.neggrad_plus.beta) * f,
                                    "retain", "forget"),
    "uce": _uce,
}
ALL_CASES = [(n, v) for n, s in methods.SPECS.items()
             for v in (s.variant_field if isinstance(s.variant_field, tuple) else ("",))]
#: the trained methods' cases; the closed-form ones (UCE) have no step.
CASES = [(n, v) for n, v in ALL_CASES if n not in methods.CLOSED_FORM]
CLOSED_CASES = [(n, v) for n, v in ALL_CASES if n in methods.CLOSED_FORM]


def _images(seed, n=4):
  return np.random.default_rng(seed).uniform(0, 1, (n, 2, 2, 1)).astype(np.float32)


BATCHES = {  # every stream a method reads by default, each distinct
    "forget": {"x": _images(1), "labels": np.array([1, 1, 1, 1], np.int32)},
    "retain": {"x": _images(2), "labels": np.array([0, 3, 2, 0], np.int32)},
    "alternative": {"x": _images(3), "labels": np.array([1, 1, 1, 1], np.int32)},
}


def _consts(s):
  """The consts `train_stage.run` gives a method with this spec (`train_stage.method_consts`
  of the mask its kind reads: FISHER for Selective Amnesia, MASK for SalUn / SFR-on)."""
  mask = FISHER if s.mask == "fisher" else MASK if s.mask in ("salun", "sfron") else None
  return train_stage.method_consts(s.options(), mask, FROZEN)[0]


def _build(name, variant, cfg=None):
  return methods.build(name, variant, settings.of(cfg or config()), alt=ALT, steps=4, forget=FORGET, num_classes=K)


def test_every_spec_has_a_hand_row():
  assert set(HAND) == set(methods.SPECS)
  assert tuple(methods.SPECS) == methods.METHODS


@pytest.mark.parametrize("name,variant", CASES)
def test_method_builds_trains_and_combines_by_hand(name, variant):
  s = methods.spec(name)
  assert s.name == name and methods.SPECS[name] is s
  objectives, tx, options = _build(name, variant)
  # the Options agree with the spec
  assert (options.mask, options.alternate, options.reset, options.frozen) == (s.mask, s.alternate, s.reset, s.frozen)
  assert (name in methods.CONDITIONAL) == s.conditional and methods.MASKS.get(name) == s.mask
  fb, f = s.passes(config(), objectives, options, jax.default_backend())
  assert isinstance(fb, int) and isinstance(f, int) and fb >= 1 and f >= 0

  # one jitted train step, finite; the second does not trace again
  consts = _consts(s)
  spec = make_spec(alternate=options.alternate, **objectives)
  opt = training.make_optimizer(1e-2, warmup=0, grad_clip=1.0, method=tx)
  traces = []

  def step_fn(state, batches, rng, consts):
    traces.append(1)
    return training.train_step(state, batches, rng, consts, spec=spec, tx=opt)

  step = jax.jit(step_fn)
  batches = {o.stream: BATCHES[o.stream] for o in objectives.values()}
  state = ts.create(PARAMS, opt)
  for i in range(2):
    state, metrics = step(state, batches, jax.random.fold_in(jax.random.key(0), i), consts)
    for k, v in metrics.items():
      assert np.all(np.isfinite(np.asarray(v))), (name, k, v)
    assert all(np.all(np.isfinite(np.asarray(p))) for p in jax.tree_util.tree_leaves(state.params))
  assert int(state.step) == 2 and len(traces) == 1, f"{name}: {len(traces)} traces for 2 steps"
  assert not all(np.allclose(a, b) for a, b in zip(jax.tree_util.tree_leaves(state.params),
                                                    jax.tree_util.tree_leaves(PARAMS)))

  # the transform on fixed gradient trees (as train_step calls it) is the hand combination
  _check_combination(name, variant, config())


@pytest.mark.parametrize("name,variant", CLOSED_CASES)
def test_closed_form_method_builds_nothing_and_edits_by_hand(name, variant):
  s = methods.spec(name)
  objectives, tx, options = _build(name, variant)
  assert objectives == {} and tx is None and options == s.options() == methods.Options()
  assert s.passes(config(), objectives, options, jax.default_backend()) == (0, 0)
  _check_combination(name, variant, config())
  for field, other in (("target", "alt"), ("tokens", "all"), ("preserve", "null"), ("preserve", "none")):
    c = config()                                    # UCE's other choices, each by hand
    c[s.section][field] = other
    _check_combination(name, variant, c)


def _check_combination(name, variant, cfg):
  """The built transform's update on the fixed gradient trees equals HAND[name](cfg) (a
  closed-form method: its edit of SD_PARAMS)."""
  if name in methods.CLOSED_FORM:
    out = methods.edit(name, variant, settings.of(cfg), SD_PARAMS, alt=ALT, forget=FORGET, num_classes=K)
    close(out, HAND[name](cfg), rtol=1e-4, atol=1e-5)
    return
  objectives, tx, options = _build(name, variant, cfg)
  consts = _consts(methods.spec(name))
  names = list(objectives)
  expected = HAND[name](cfg)
  if tx is None:
    assert not options.alternate
    close(GRADS[names[0]], expected)
    return
  tx_state = tx.init(PARAMS)
  if options.alternate:
    for phase, want in enumerate(expected):
      out, tx_state = tx.update(GRADS[names[phase]], tx_state, PARAMS, phase=jnp.int32(phase), **consts)
      close(out, want)
    return
  extras = {f"{n}_grads": GRADS[n] for n in names[1:]}
  out, _ = tx.update(GRADS[names[0]], tx_state, PARAMS, **extras, **consts)
  close(out, expected)


def _perturbed(name, field):
  """config() with config.<name>.<field> moved to another valid value (ints + 1)."""
  c = config()
  v = c[name][field]
  c[name][field] = v + 1 if isinstance(v, int) else (0.5 * v + 0.05 if v <= 1.0 else 0.5 * v)
  return c


def _differs(a, b):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  return any(not np.allclose(x, y) for x, y in zip(la, lb))


def hand_covered_fields():
  """The numeric options config.<method>.<field> whose value changes HAND[method]'s combination:
  `test_a_hand_option_reaches_the_transform` checks the built transform follows each of them
  (tests/test_wiring.py counts them as wired)."""
  out = []
  for name in HAND:
    section = config().get(name)
    for field, v in (section.items() if section is not None else ()):
      if isinstance(v, bool) or not isinstance(v, (int, float)):
        continue
      try:
        moved = HAND[name](_perturbed(name, field))
      except AssertionError:          # a HAND row that checks its own regime (EraseDiff's lambda_t)
        continue
      if _differs(moved, HAND[name](config())):
        out.append((name, field))
  return out


@pytest.mark.parametrize("name,field", hand_covered_fields())
def test_a_hand_option_reaches_the_transform(name, field):
  variant = next(v for n, v in ALL_CASES if n == name)
  _check_combination(name, variant, _perturbed(name, field))


def test_config_builders_give_each_method_its_specs_mask_stage():
  """config_lib's stage chains (`MASK_OF` is the specs' masks) put a mask stage of the spec's
  kind before every method that requires one, and none before the others."""
  assert set(methods.MASKS.values()) <= set(methods.MASK_KINDS) == set(spec_lib.MASK_KINDS)
  stages, order = config_lib.dimum_stages(pretrain_steps=1, unlearn_steps=1, attack_steps=1, eval_every=1,
                                          methods=tuple(methods.SPECS))
  for name, s in methods.SPECS.items():
    st = stages[name]
    if s.mask:
      assert st.mask and stages[st.mask].kind == "mask" and stages[st.mask].method == s.mask, name
      assert order.index(st.mask) < order.index(name)
    else:
      assert not st.mask, name


def test_report_shows_each_method_by_its_display_name():
  for name, s in methods.SPECS.items():
    assert markdown.pretty(name) == s.display, name
    for variant, shown in s.stage_display.items():
      assert markdown.pretty(f"{name}_{variant}") == shown, (name, variant)
    assert markdown.pretty(f"{name}_myvariant") == f"{s.display} (myvariant)"
  assert methods.spec("sgu").display == "SGU" and markdown.pretty("sgu_obtuse") == "SGU-Obtuse"
  assert markdown.pretty("ga") == "Gradient ascent" and markdown.pretty("sfron") == "SFR-on (Sfront)"


def test_derived_names_keep_their_content():
  """The names the pipeline imports are derived from the specs (a new method appends to them)."""
  assert methods.METHODS[:13] == ("finetune", "sgu", "ga", "neggrad", "dimum", "salun", "sfron", "erasediff",
                                  "core", "esd", "ca", "sa", "shs")            # the order before the redesign
  assert methods.METHODS == tuple(methods.SPECS)
  assert methods.CONDITIONAL == tuple(n for n, s in methods.SPECS.items() if s.conditional)
  assert methods.MASKS == {n: s.mask for n, s in methods.SPECS.items() if s.mask}
  assert {"salun": "salun", "sfron": "sfron", "shs": "shs", "sa": "fisher"}.items() <= methods.MASKS.items()
  assert methods.MASK_KINDS == ("salun", "sfron", "shs", "fisher")
  assert {"sgu": "the forget loss (orthogonal | obtuse)", "erasediff": "config.erasediff.target",
          "core": "config.core.scheme", "ca": "config.ca.variant"}.items() <= methods.VARIANTS.items()
  assert list(methods.VARIANTS) == [n for n, s in methods.SPECS.items() if s.variant_field is not None]
  assert methods.Options is spec_lib.Options


@pytest.mark.parametrize("name", ["erasediff", "esd"])
def test_passes_count_the_extra_model_passes(name):
  """EraseDiff: K inner passes and L_f(phi^K) (with its gradient but under "fixed"); ESD: the
  second frozen target and the 2-batch guided partial DDIM."""
  c = config()
  objectives, _, options = _build(name, "")
  base = spec_lib.default_passes(c, objectives, options, "cpu")
  got = methods.spec(name).passes(c, objectives, options, "cpu")
  if name == "esd":
    assert got == (base[0], base[1] + 1 + 2 * c.esd.ddim_steps)
  else:
    assert got == (base[0] + c.erasediff.inner_steps + 1, base[1])
    c.erasediff.grad_form = "fixed"
    assert methods.spec(name).passes(c, objectives, options, "cpu") == (base[0] + c.erasediff.inner_steps,
                                                                         base[1] + 1)


def test_spec_rejects_unknown_mask_kinds_and_bad_variant_fields():
  build = lambda config, ctx: None
  with pytest.raises(ValueError, match="mask"):
    spec_lib.MethodSpec(name="x", display="X", build=build, mask="bogus")
  with pytest.raises(ValueError, match="variant_field"):
    spec_lib.MethodSpec(name="x", display="X", build=build, variant_field="nosection")
  s = spec_lib.MethodSpec(name="x", display="X", build=build, mask="salun", frozen=True)
  assert s.options() == methods.Options(mask="salun", frozen=True)
  assert s.options(lr=0.5, frozen=False) == methods.Options(mask="salun", lr=0.5)
