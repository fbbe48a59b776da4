"""UCE, Unified Concept Editing (Gandikota, Orgad, Belinkov, Materzynska & Bau, WACV 2024):
erasing concepts from a text-to-image model by one closed-form edit of its cross-attention
key and value projections, no training.

Every cross-attention layer (`attn2` of the UNet's transformer blocks) maps the text
encoder's hidden state c of each prompt token to a key W_k c and a value W_v c.  For each
such projection W (UCE Sec. 3; equation numbers as in arXiv 2308.14761 - the paper's text is
not among /work/shared/papers, so check them there):

  edit E and preserve P (Eq. 1):
      min_W  sum_{c_i in E} ||W c_i - v_i*||^2  +  sum_{c_j in P} ||W c_j - W_old c_j||^2
  erasing (Eq. 3): v_i* = W_old c_i*, the old projection of the target concept c_i*
  closed form (Eq. 2):
      W = (sum_i v_i* c_i^T + sum_j W_old c_j c_j^T) (sum_i c_i c_i^T + sum_j c_j c_j^T)^-1

The paper's form has unit weights and no regulariser; the public code
(train-scripts/train_erase.py) weights the two sums by `erase_scale` (its CLI default 1) and
`preserve_scale` (0.1) and adds lambda ||W - W_old||^2 (`lamb`, 0.5 as its script calls
`edit_model`), which keeps the inverse defined when the tokens do not span the text space:

  (4)  W = (e sum_i W_old c_i* c_i^T + p sum_j W_old c_j c_j^T + lambda W_old)
           (e sum_i c_i c_i^T + p sum_j c_j c_j^T + lambda I)^-1

the minimiser of e sum_i ||W c_i - W_old c_i*||^2 + p sum_j ||W c_j - W_old c_j||^2 +
lambda ||W - W_old||_F^2.  Those are the defaults here (`Config`).  A Flax Dense kernel K is
(D_in, D_out), K = W^T, so with A = lambda I + e C_E^T C_E + p C_P^T C_P (rows of C = tokens)
Eq. 4 reads K = A^-1 (lambda I + e C_E^T C_E* + p C_P^T C_P) K_old, computed as
K_old + solve(A, e C_E^T (C_E* - C_E) K_old) in float32 (`closed_form`): exactly K_old when
every target equals its concept.  A is the same for every layer (each attn2 reads the same
text states), so one `jnp.linalg.solve` serves all the to_k / to_v kernels (`edit_kernels`).

What c_i, c_i* and c_j are here, from the model's own parameters and condition ids (no
task specifics): the model is `models.stable_diffusion.SDUNet`, whose params hold the
(P + 1, L, D) text-encoder hidden states of its prompts (params["prompts"]["embeddings"],
row P the empty prompt ""); a condition id is a row.
  * edited concepts: every token of each forgotten prompt chosen by `config.uce.tokens`:
      "concept" (default): from the first token at which the prompt's hidden states differ
        from those of its alternative prompt (`ctx.alt`: the same prompt with the concept
        swapped, e.g. the same object in another style) to the end of the sequence, each
        paired with the target's token at the same position.  CLIP's text encoder is causal,
        so the shared prefix ("A Dogs image in") has identical states in both prompts and
        carries nothing of the concept; editing it would, with the empty target, erase the
        object with the style and fight the preservation of the retained prompts that share
        it.  The public code likewise edits from the concept's (last) word token to the end
        (aligning old and new from their last word tokens; its prompts end with the
        concept); here the span starts at the concept's first token and pairs tokens
        position-wise, which needs no tokenizer.
      "all": every one of the L positions, paired position-wise.
  * targets c_i* (`config.uce.target`): "empty" (default: the public code's target when no
    guiding concept is given, the unconditional prompt; the style goes, the object stays)
    or "alt" (the forgotten prompt's alternative prompt, the baselines' c').
  * preserved c_j (`config.uce.preserve`): "retained" (default: every token of every
    retained prompt and of the empty prompt, the null condition of classifier-free
    guidance), "null" (only the empty prompt: what the public code keeps when given no
    preserve list) or "none".

An unlearn stage of this method is one edit (`MethodSpec.closed_form`, run by
`stages.train` in place of the optimisation loop; its `steps` are ignored), saved as an
ordinary checkpoint that evaluation and DiMRA read like any other.  Only the attn2 to_k /
to_v kernels change; `config.sd.trainable` does not apply.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax.errors import UserError, check_choice, check_range
from unlearn_jax.unlearning import spec

TARGETS = ("empty", "alt")
TOKENS = ("concept", "all")
PRESERVE = ("retained", "null", "none")
#: float32 products at full precision (a GPU's default float32 matmul may round to TF32).
_HIGHEST = jax.lax.Precision.HIGHEST
#: two hidden states of a token "differ" (`token_weights`) above this share of its scale.
DIFF_TOL = 1e-4


@dataclasses.dataclass(frozen=True)
class Config:
  """`config.uce` (Eq. 4): the target of each forgotten prompt ("empty" | "alt"), its tokens
  ("concept" | "all"), what is preserved ("retained" | "null" | "none"), the erase weight e,
  the preserve weight p and the regulariser lambda (the public code's 1, 0.1, 0.5)."""
  target: str = "empty"
  tokens: str = "concept"
  preserve: str = "retained"
  erase_scale: float = 1.0
  preserve_scale: float = 0.1
  lamb: float = 0.5


def check(c) -> None:
  """The `config.uce` checks (a Config or the config dict's section; before any write)."""
  check_choice("config.uce.target", c.target, TARGETS)
  check_choice("config.uce.tokens", c.tokens, TOKENS)
  check_choice("config.uce.preserve", c.preserve, PRESERVE)
  check_range("config.uce.erase_scale", c.erase_scale, 0.0, 1e6)
  check_range("config.uce.preserve_scale", c.preserve_scale, 0.0, 1e6)
  check_range("config.uce.lamb", c.lamb, 0.0, 1e6, lo_open=True)


# ----------------------------------------------------------------------------- the closed form

def _gram(a_NxD: jax.Array, b_NxD: jax.Array, w_N: jax.Array) -> jax.Array:
  """sum_n w_n a_n b_n^T, (D, D), float32 at full precision."""
  return jnp.matmul((a_NxD * w_N[:, None]).T, b_NxD, precision=_HIGHEST)


def normal_equations(c_edit: jax.Array, c_target: jax.Array, w_edit: jax.Array, c_keep: jax.Array,
                     w_keep: jax.Array, lamb) -> Tuple[jax.Array, jax.Array]:
  """(A, X) of Eq. 4 in kernel form, K = K_old + A^-1 X K_old:

    A = lambda I + sum_i w_i c_i c_i^T + sum_j v_j c_j c_j^T,   X = sum_i w_i c_i (c_i* - c_i)^T

  for edited rows c_edit (N, D) with targets c_target (N, D) and weights w_edit (N,) (e times a
  0/1 token choice), preserved rows c_keep (M, D) with weights w_keep (M,) (p)."""
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  c_edit, c_target, w_edit, c_keep, w_keep = map(f32, (c_edit, c_target, w_edit, c_keep, w_keep))
  d = c_edit.shape[-1]
  a = lamb * jnp.eye(d, dtype=jnp.float32) + _gram(c_edit, c_edit, w_edit) + _gram(c_keep, c_keep, w_keep)
  x = _gram(c_edit, c_target - c_edit, w_edit)
  return a, x


def edit_kernels(kernels: Sequence[jax.Array], a: jax.Array, x: jax.Array) -> list:
  """K_old + A^-1 X K_old for each (D, D_out_k) kernel, one float32 solve for all of them."""
  if not kernels:
    return []
  stacked = jnp.concatenate([jnp.asarray(k, jnp.float32) for k in kernels], axis=1)
  delta = jnp.linalg.solve(a, jnp.matmul(x, stacked, precision=_HIGHEST))
  out, start = [], 0
  for k in kernels:
    n = k.shape[1]
    out.append((jnp.asarray(k, jnp.float32) + delta[:, start:start + n]).astype(k.dtype))
    start += n
  return out


def closed_form(kernel: jax.Array, c_edit: jax.Array, c_target: jax.Array, w_edit: jax.Array,
                c_keep: jax.Array, w_keep: jax.Array, lamb) -> jax.Array:
  """Eq. 4 for one Flax kernel (D_in, D_out): the minimiser K of
  sum_i w_i ||K^T c_i - K_old^T c_i*||^2 + sum_j v_j ||K^T c_j - K_old^T c_j||^2 + lambda ||K - K_old||^2."""
  return edit_kernels([kernel], *normal_equations(c_edit, c_target, w_edit, c_keep, w_keep, lamb))[0]


# ----------------------------------------------------------------------------- on the SD UNet's params

def _names(path) -> Tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def is_edited(names: Tuple[str, ...]) -> bool:
  """A cross-attention key / value kernel: .../attn2/to_k/kernel or .../attn2/to_v/kernel."""
  return len(names) >= 3 and names[-1] == "kernel" and names[-2] in ("to_k", "to_v") and names[-3] == "attn2"


def edited_paths(params) -> list:
  """The key paths `uce_edit` changes (a UserError if there are none or the prompt table is missing)."""
  paths = [p for p, _ in jax.tree_util.tree_leaves_with_path(params) if is_edited(_names(p))]
  if not paths or "prompts" not in params or "embeddings" not in params["prompts"]:
    raise UserError("config.stages.<unlearn>.method", "uce", "needs Stable Diffusion parameters (the SDUNet's "
                    "prompt table params['prompts']['embeddings'] and attn2 to_k / to_v kernels)")
  return paths


def token_weights(emb_NxLxD: jax.Array, ref_NxLxD: jax.Array, tokens: str) -> jax.Array:
  """(N, L) 0/1: the edited tokens of each prompt.  "all": every position; "concept": from the
  first position whose hidden state differs from the reference prompt's (relative to the
  token's scale, `DIFF_TOL`) to the end, none if the two prompts are equal."""
  n, length, _ = emb_NxLxD.shape
  if tokens == "all":
    return jnp.ones((n, length), jnp.float32)
  diff = jnp.max(jnp.abs(emb_NxLxD - ref_NxLxD), axis=-1)
  scale = jnp.maximum(jnp.max(jnp.abs(emb_NxLxD), axis=-1), jnp.max(jnp.abs(ref_NxLxD), axis=-1))
  differs = diff > DIFF_TOL * (scale + 1e-12)
  start = jnp.where(jnp.any(differs, axis=-1), jnp.argmax(differs, axis=-1), length)
  return (jnp.arange(length)[None, :] >= start[:, None]).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("tokens",))
def uce_edit(params, forget_ids: jax.Array, target_ids: jax.Array, reference_ids: jax.Array,
             keep_ids: jax.Array, erase_scale, preserve_scale, lamb, *, tokens: str = "concept"):
  """`params` (SDUNet's) with every attn2 to_k / to_v kernel replaced by Eq. 4.

  Edited: the tokens (`token_weights` against `reference_ids`) of the prompts `forget_ids`,
  each mapped to the same position of `target_ids`; preserved: every token of `keep_ids`
  (may be empty).  Ids are rows of params["prompts"]["embeddings"].  Pure, jitted."""
  table = jnp.asarray(params["prompts"]["embeddings"], jnp.float32)         # (P + 1, L, D)
  d = table.shape[-1]
  emb = table[forget_ids]
  w = erase_scale * token_weights(emb, table[reference_ids], tokens)
  a, x = normal_equations(emb.reshape(-1, d), table[target_ids].reshape(-1, d), w.reshape(-1),
                          table[keep_ids].reshape(-1, d),
                          jnp.full((keep_ids.shape[0] * table.shape[1],), preserve_scale, jnp.float32), lamb)
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  where = [i for i, (p, _) in enumerate(flat) if is_edited(_names(p))]
  new = edit_kernels([flat[i][1] for i in where], a, x)
  leaves = [leaf for _, leaf in flat]
  for i, k in zip(where, new):
    leaves[i] = k
  return jax.tree_util.tree_unflatten(treedef, leaves)


def condition_ids(c: Config, forget: Sequence[int], alt, num_rows: int) -> dict:
  """The id arrays of `uce_edit` under `c` for a table of `num_rows` rows (the last: the
  empty prompt): forget, target, reference (each prompt's alternative; the empty prompt where
  there is none or it is the prompt itself), keep."""
  null = num_rows - 1
  forget = np.asarray(sorted(set(int(f) for f in forget)), np.int32)
  if forget.size == 0 or forget.min() < 0 or forget.max() >= null:
    raise UserError("config.stages.<unlearn>.method", "uce", f"needs forgotten prompts among the table's "
                    f"{null} prompts (got {forget.tolist()})")
  ref = np.full_like(forget, null) if alt is None else np.asarray(alt, np.int32)[forget]
  ref = np.where(ref == forget, null, ref)            # no alternative of its own: the empty prompt
  target = ref if c.target == "alt" else np.full_like(forget, null)
  retained = [i for i in range(null) if i not in set(forget.tolist())]
  keep = {"retained": retained + [null], "null": [null], "none": []}[c.preserve]
  return {"forget": forget, "target": target, "reference": ref, "keep": np.asarray(keep, np.int32)}


def edit(config, ctx, params):
  """`MethodSpec.closed_form`: `params` edited by Eq. 4 under `config.uce` for the forgotten
  conditions `ctx.forget` (alternatives `ctx.alt`)."""
  c = config.uce
  check(c)
  edited_paths(params)
  ids = condition_ids(c, ctx.forget, ctx.alt, int(params["prompts"]["embeddings"].shape[0]))
  return uce_edit(params, ids["forget"], ids["target"], ids["reference"], ids["keep"],
                  jnp.float32(c.erase_scale), jnp.float32(c.preserve_scale), jnp.float32(c.lamb),
                  tokens=c.tokens)


def build(config, ctx):
  """No objectives and no transform: the stage is one edit (`edit`); checks `config.uce`."""
  del ctx
  check(config.uce)
  return {}, None, SPEC.options()


def _no_passes(config, objectives, options, backend) -> Tuple[int, int]:
  del config, objectives, options, backend
  return 0, 0


SPEC = spec.MethodSpec(section="uce", config=Config, name="uce", display="UCE", build=build, conditional=True,
                       variant_field="uce.target", closed_form=edit, model="sd", check=check, passes=_no_passes)
