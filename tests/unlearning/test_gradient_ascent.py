"""gradient_ascent: GA (DiMUM paper Eq. 5) and NegGrad, by hand."""
import jax
import jax.numpy as jnp

from unlearn_jax.unlearning import gradient_ascent
from method_fixtures import F, G, U, close, combo, update


def test_gradient_ascent_is_beta_retain_minus_forget():
  # Eq. 5: beta L_r - L_u.
  close(update(gradient_ascent.gradient_ascent(0.3), U, forget_grads=F),
        combo(lambda r, f: 0.3 * r - f, U, F))


def test_neggrad_combination():
  tx = gradient_ascent.neggrad()
  out, _ = tx.update(G, tx.init(G), None)
  close(out, jax.tree_util.tree_map(jnp.negative, G))
