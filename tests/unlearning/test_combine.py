"""combine: weighted sums of per-objective gradients and masks, by hand."""
import numpy as np
import optax
import pytest

from unlearn_jax.unlearning import combine
from method_fixtures import F, M, MASK, U, close, combo, update


def test_weighted_sum_hand_values_and_missing_extra():
  tx = combine.weighted_sum(0.5, forget=-1.0, memorize=2.0)
  out = update(tx, U, forget_grads=F, memorize_grads=M)
  close(out, combo(lambda u, f, m: 0.5 * u - f + 2.0 * m, U, F, M))
  np.testing.assert_allclose(out["a"], [0.5 - 2.0 - 2.0, -1.0 - 1.0 + 1.0])
  with pytest.raises(TypeError, match="memorize_grads"):
    update(tx, U, forget_grads=F)


def test_masked_multiplies_by_mask_or_passes_through():
  close(update(combine.masked(), U, mask=MASK), combo(lambda u, m: u * m, U, MASK))
  close(update(combine.masked(), U), U)


def test_chain_passes_extras_to_weighted_sum_and_masked():
  tx = optax.chain(combine.weighted_sum(0.5, forget=-1.0), combine.masked(), optax.sgd(1.0))
  out = update(tx, U, forget_grads=F, mask=MASK)
  close(out, combo(lambda u, f, m: -(0.5 * u - f) * m, U, F, MASK))
