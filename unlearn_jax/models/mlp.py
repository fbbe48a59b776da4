"""An MLP score / noise network for low-dimensional (2-D toy) data.

    emb = Dense(swish(Dense(sinusoid(1000 tau, hidden))))  [+ Embed(y)]      (B, hidden)
    h_0 = Dense(x)
    h_l = swish(Dense(h_{l-1}) + Dense(emb)),  l = 1..num_layers
    out = Dense_dim(h_L)

i.e. time enters every hidden layer additively through its own projection of
the DDPM sinusoidal embedding (the same embedding as the UNet's, see
`layers.TimeEmbedding`), rather than by concatenating tau to x: the additive
form lets each layer's pre-activations shift with time, which fits the
rapidly varying small-t scores of 2-D mixtures better than a single input
feature.  Class conditioning (num_classes = K > 0) adds `Embed(K + 1, hidden)`
to the embedding, index K being the null class (`labels=None`).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from unlearn_jax.models import layers


@dataclasses.dataclass(frozen=True)
class MLPConfig:
  dim: int = 2
  hidden: int = 128
  num_layers: int = 3
  #: K > 0 makes the model class-conditional with null class K.
  num_classes: int = 0


class MLP(nn.Module):
  """Score / noise network for x of shape (B, dim); output shaped like x."""
  config: MLPConfig

  @nn.compact
  def __call__(self, x_BxD: jax.Array, time_B: jax.Array,
               labels_B: Optional[jax.Array] = None, train: bool = False) -> jax.Array:
    del train  # no dropout; kept for the common call signature.
    cfg = self.config
    emb_BxH = layers.TimeEmbedding(cfg.hidden, cfg.hidden, name="time_embed")(time_B)
    if cfg.num_classes > 0:
      if labels_B is None:
        labels_B = jnp.full((x_BxD.shape[0],), cfg.num_classes, jnp.int32)
      emb_BxH = emb_BxH + nn.Embed(cfg.num_classes + 1, cfg.hidden,
                                   name="class_embed")(labels_B)
    elif labels_B is not None:
      raise ValueError("labels were given to an unconditional MLP (num_classes=0)")
    h = nn.Dense(cfg.hidden, name="input")(x_BxD)
    for l in range(cfg.num_layers):
      h = nn.Dense(cfg.hidden, name=f"hidden_{l}")(h)
      h = layers.swish(h + nn.Dense(cfg.hidden, name=f"time_proj_{l}")(emb_BxH))
    return nn.Dense(x_BxD.shape[-1], name="output")(h)
