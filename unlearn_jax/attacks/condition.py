"""Condition attacks: optimise the condition of a frozen class-conditional model, never its weights.

Both attacks search the condition space of the model (`models.class_table`: the DDPM
UNet's (K + 1, E) class embeddings, or Stable Diffusion's (K + 1, L, D) prompt table, the
text encoder's outputs of the K prompts; the condition reaches the network as
`cond_embedding`) for rows e = (e_1 .. e_F), one per forgotten class (or forget prompt) c_j,
minimising the model's own denoising loss on forget images x_0 of c_j (the CDM loss, DiMUM
paper Eq. 4, with the label's embedding replaced by e_j):

    L(e) = E_{(x_0, c_j), t, z} w(t) || z - eps_theta(x_t, t | e_j) ||^2,   theta frozen.

  embedding  textual inversion's analogue (Gal et al. 2023, Eq. 2: v* = argmin_v of the
             same loss over a new token embedding): e is a NEW row per forgotten class,
             initialised at the null row of the table (`INITS["null"]`: before the attack
             its samples are the guided model's unconditional ones), unconstrained.  On
             Stable Diffusion the row is a whole (L, D) text-encoder output, a superset of
             what one new input token can reach through the frozen text encoder (textual
             inversion proper searches D numbers; this attack L x D).
  textual_inversion  textual inversion proper (Gal et al. 2023, Eq. 2), Stable Diffusion only:
             e is ONE new token embedding v (1, D_token) in the frozen text encoder's input
             space; the condition of forget prompt c_j is the text encoder's output of c_j
             with the forgotten style's words replaced by the placeholder token, whose row of
             the token-embedding table is v (`AttackSpec.to_condition`,
             `models.stable_diffusion.encode_with_token`); v starts at the placeholder's own
             embedding (`INITS["token"]`), unconstrained.
  condition  a soft-prompt attack in embedding space with UnlearnDiffAtk's objective (Zhang et
             al. 2024, Eq. 3-4: the diffusion model as its own classifier, the prompt
             minimising the denoising loss of the target images; here continuous rows, not
             its discrete prepended tokens, and D_f images, not the original model's): e starts at the forgotten class's own row e0 = table[c_j]
             (`INITS["class"]`) and stays in the budget ||e - e0||_inf <= eps after every
             step (projected Adam; eps = 0: unconstrained).
  prompt_tokens  UnlearnDiffAtk's formulation (Zhang et al. 2024), Stable Diffusion only: K
             prepended token embeddings (the stage's `tokens`, default `DEFAULT_TOKENS`) in
             the frozen text encoder's input space, before every forget prompt, fitted with
             the attacked model's denoising loss to images the *original* (pretrained) model
             generated for the forget prompts; the curve is measured on the discrete prompt,
             each vector projected to its nearest vocabulary token
             (`models.stable_diffusion.nearest_tokens`), and that prompt is what the stage
             records (`tasks.unlearncanvas.prompt_tokens`).

The step is pure: `attack_step(state, batches, rng, consts, spec=..., tx=...)` has the shape
`training.train_loop` jits over the mesh; state.params = {"rows": e} (the only leaves with gradients,
optimiser moments, updates and checkpoints), the frozen weights travel in consts["net"] with
the starting rows consts["rows0"].  The network runs as at sampling (train=False: no dropout).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unlearn_jax import losses
from unlearn_jax import score as score_lib
from unlearn_jax import train_state as ts
from unlearn_jax import training

#: attack -> the rows it starts from: "null" (the table's null row, for every forgotten class),
#: "class" (each forgotten class's own row) or "token" (the placeholder token's input embedding,
#: given by the task: `tasks.unlearncanvas.textual_inversion`).
INITS = {"embedding": "null", "condition": "class", "textual_inversion": "token", "prompt_tokens": "token"}
ATTACKS = tuple(INITS)
#: forget images an attack uses when its stage's `shots` is 0 (textual inversion's 3-5 images).
DEFAULT_SHOTS = 5
#: Adam's learning rate when the stage sets none (textual inversion's base rate 5e-3).
DEFAULT_LR = 5e-3
#: prepended tokens of "prompt_tokens" when the stage's `tokens` is 0 (UnlearnDiffAtk's 5).
DEFAULT_TOKENS = 5


@dataclasses.dataclass(frozen=True)
class AttackSpec:
  """The static parts of an attack step (closed over, never traced)."""
  apply_fn: Callable            # apply_fn(variables, x, time, train=..., cond_embedding=...)
  process: Any                  # the DDPM schedule (or an SDE)
  output_type: str              # "eps" or "score"
  forget_labels: Tuple[int, ...]
  weighting: str = "simple"
  reduce: str = "sum"
  centered: bool = False
  random_flip: bool = False
  #: the budget ||e - e0||_inf <= eps; 0: unconstrained.
  eps: float = 0.0
  #: (rows, idx_B, consts) -> the (B, ...) conditions standing for rows idx_B (positions in
  #: forget_labels); None: rows[idx_B] (the rows are conditions of the table's space).
  to_condition: Optional[Callable] = None


@dataclasses.dataclass(frozen=True)
class ConditionSpace:
  """Where an attack's rows live when they are not rows of the condition table (a task's
  textual inversion or prompt tokens): the starting rows, `AttackSpec.to_condition`, and the
  consts it reads.  A discrete attack also gives `eval_condition(rows, idx_B, consts)`, the
  conditions its curve is measured on (the rows projected to real tokens), and
  `describe(rows) -> [the prompt of each forgotten class, as text]`."""
  rows0: Any
  to_condition: Callable
  consts: Any
  eval_condition: Optional[Callable] = None
  describe: Optional[Callable] = None


def conditions(rows: jax.Array, idx_B: jax.Array, consts, spec: AttackSpec) -> jax.Array:
  """The model conditions of forget classes / prompts idx_B under the rows."""
  if spec.to_condition is None:
    return rows[idx_B]
  return spec.to_condition(rows, idx_B, consts)


def initial_rows(table: jax.Array, forget_labels, init: str) -> jax.Array:
  """(F, ...) starting rows of a (K + 1, ...) table: the null row (the table's last) F times
  ("null"), or the forgotten classes' own rows ("class")."""
  forget = np.asarray(forget_labels, np.int32)
  if init == "null":
    return jnp.repeat(table[-1][None], len(forget), axis=0)
  if init == "class":
    return table[forget]
  raise ValueError(f"init must be one of {sorted(set(INITS.values()))}, got {init!r}")


def row_index(labels_B: jax.Array, forget_labels) -> jax.Array:
  """Position j of each label in `forget_labels` (the row e_j conditioning that image)."""
  forget = jnp.asarray(forget_labels, jnp.int32)
  return jnp.argmax(labels_B[:, None] == forget[None, :], axis=1)


def project(rows: jax.Array, rows0: jax.Array, eps: float) -> jax.Array:
  """The projection onto {e : ||e - e0||_inf <= eps} (eps = 0: the identity)."""
  if not eps:
    return rows
  return rows0 + jnp.clip(rows - rows0, -eps, eps)


def condition_loss(rows_F: jax.Array, net, batch, keys: jax.Array, spec: AttackSpec, consts=None) -> jax.Array:
  """L(e) above on one batch {"x": (B, ...) in [0, 1], "labels": (B,) forgotten classes}, the
  noise of example k drawn from keys[k] (`training.perturb_examples`), mean over the batch;
  `consts` reach `spec.to_condition`."""
  x0 = training.preprocess(batch["x"], keys, spec.centered, spec.random_flip)
  noised = training.perturb_examples(spec.process, x0, keys, spec.weighting)
  cond_B = conditions(rows_F, row_index(batch["labels"], spec.forget_labels), consts, spec)
  out = spec.apply_fn({"params": net}, noised.x_t, noised.time_input, train=False, cond_embedding=cond_B)
  eps_pred = score_lib.to_eps(out, noised.std, spec.output_type)
  return jnp.mean(losses.denoising_loss(eps_pred, noised.noise, noised.weight, reduce=spec.reduce))


def init_state(rows0: jax.Array, tx: optax.GradientTransformation) -> ts.TrainState:
  """The attack's TrainState: params {"rows"}, their optimiser state, no EMA (ema_params is
  params); the frozen network is not part of it (consts["net"])."""
  params = {"rows": rows0}
  return ts.TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                       opt_state=tx.init(rows0))


def attack_step(state: ts.TrainState, batches, rng: jax.Array, consts=None, *, spec: AttackSpec,
                tx: optax.GradientTransformation):
  """One projected step on the rows: e <- Pi_eps(e + Adam(grad_e L)); consts {"net": the frozen
  weights, "rows0": e0, and what `spec.to_condition` reads (textual inversion: "text")}.  Pure,
  on the global batch (`training.train_loop` jits it over the mesh)."""
  batch = batches["forget"]
  step_rng = jax.random.fold_in(rng, state.step)
  keys = training.example_keys(step_rng, batch["x"].shape[0])
  net, rows = consts["net"], state.params["rows"]
  loss, grad = jax.value_and_grad(condition_loss)(rows, net, batch, keys, spec, consts)
  updates, opt_state = tx.update(grad, state.opt_state, rows)
  rows = project(optax.apply_updates(rows, updates), consts["rows0"], spec.eps)
  params = {"rows": rows}
  metrics = {"loss/attack": loss, "grad_norm/rows": optax.tree.norm(grad),
             "dist_inf": jnp.max(jnp.abs(rows - consts["rows0"])),
             "finite": training.all_finite(rows).astype(jnp.float32)}
  return state.replace(step=state.step + 1, params=params, ema_params=params, opt_state=opt_state), metrics

