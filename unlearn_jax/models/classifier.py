"""Evaluation classifiers: a small CNN for NHWC images (8x8 to 64x64).

    stage s:  h = max_pool_2x2(relu(GN(conv3x3_{features[s]}(h))))      (SAME padding)
    features: f = relu(Dense_dense(flatten(h)))                         (B, dense)
    logits:   Dense_K(dropout(f))                                        (B, K)

The penultimate embedding f is what `features` returns, for Fréchet distances
between generated and real images (the role Inception's pool_3 plays in FID;
no Inception weights are available offline).  GroupNorm rather than
BatchNorm keeps the classifier stateless (no `batch_stats` collection), so it
evaluates identically on any batch.  Pooling uses SAME padding, so odd sizes
(7x7 after two stages on 28x28) keep working with more stages.

Use:
    logits = module.apply(variables, x)
    feats  = module.apply(variables, x, method="features")
    logits = module.apply(variables, x, train=True, rngs={"dropout": key})   # dropout > 0
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax

from unlearn_jax.models import layers


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  num_classes: int
  features: tuple = (32, 64)
  dense: int = 128
  dropout: float = 0.0
  #: GroupNorm groups, reduced to a divisor of each stage's width.
  groups: int = 8


class Classifier(nn.Module):
  """CNN classifier; `__call__` gives logits (B, K), `features` the (B, dense) embedding."""
  config: ClassifierConfig

  def setup(self):
    cfg = self.config
    self.convs = [nn.Conv(f, (3, 3), padding="SAME") for f in cfg.features]
    self.norms = [layers.group_norm(f, cfg.groups) for f in cfg.features]
    self.dense = nn.Dense(cfg.dense)
    self.drop = nn.Dropout(cfg.dropout)
    self.head = nn.Dense(cfg.num_classes)

  def features(self, x_BxHxWxC: jax.Array, train: bool = False) -> jax.Array:
    del train  # the embedding is deterministic; dropout sits after it.
    h = x_BxHxWxC
    for conv, norm in zip(self.convs, self.norms):
      h = nn.max_pool(nn.relu(norm(conv(h))), (2, 2), strides=(2, 2), padding="SAME")
    return nn.relu(self.dense(h.reshape(h.shape[0], -1)))

  def __call__(self, x_BxHxWxC: jax.Array, train: bool = False) -> jax.Array:
    f_BxF = self.features(x_BxHxWxC)
    return self.head(self.drop(f_BxF, deterministic=not train))
