"""TrainState with an exponential moving average of the parameters."""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Everything a train step reads and writes; only arrays, so orbax saves it as is."""
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any


def create(params: Any, tx: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree_util.tree_map(jnp.copy, params),
                    opt_state=tx.init(params))


def ema_update(ema: Any, params: Any, rate: float) -> Any:
  """ema <- rate * ema + (1 - rate) * params (score_sde: 0.999 VE, 0.9999 VP)."""
  return jax.tree_util.tree_map(lambda e, p: rate * e + (1.0 - rate) * p, ema, params)
