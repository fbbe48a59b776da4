"""Building blocks shared by the score networks (DDPM / DDPM++ conventions).

Time embedding (Ho et al. 2020, Sec. 4 and Appendix B; Vaswani et al. 2017):
the network sees a time input tau in [0, 1] (t/T for SDEs, i/N for DDPM steps)
and embeds s = 1000 tau with
    emb(s)_k     = sin(s w_k),  emb(s)_{k+h} = cos(s w_k),
    w_k          = exp(-log(10000) k / (h - 1)),  k = 0..h-1,  h = dim // 2,
followed by Dense -> swish -> Dense.  The factor 1000 puts continuous time on
the same scale as DDPM's integer steps, so one embedding serves both.

ResNet block (DDPM++ / score_sde `ResnetBlockDDPM` with `skip_rescale=True`,
Song et al. 2021, Appendix H):
    h = conv(swish(GN(x)));  h += Dense(swish(emb));
    h = conv(dropout(swish(GN(h))));  out = (skip(x) + h) / sqrt(2),
skip a 1x1 conv when the channel count changes.  Self-attention is single-head
over the H*W positions with the same 1/sqrt(2) residual rescaling.

Initialisation follows DDPM: variance scaling (fan_avg, uniform) with scale 1,
and scale ~0 (1e-10) for the last conv of each residual branch and the
attention output, so every residual block starts as the (rescaled) identity.
GroupNorm's group count is DDPM's (score_sde `ddpm.py`, Ho et al.'s code):
min(C // 4, 32) for C channels, unless a count is requested; either is then reduced
to the largest divisor of C not above it, so any width works.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

#: x * sigmoid(x), a.k.a. SiLU (Ramachandran et al. 2017).
swish = nn.swish


def default_init(scale: float = 1.0):
  """DDPM's initializer: variance scaling, fan_avg, uniform; scale 0 -> 1e-10."""
  return nn.initializers.variance_scaling(max(scale, 1e-10), "fan_avg", "uniform")


#: `groups` value meaning DDPM's rule min(C // 4, 32).
DDPM_GROUPS = 0


def num_groups(channels: int, groups: int = DDPM_GROUPS) -> int:
  """Largest divisor of `channels` that is <= `groups` (at least 1); groups <= 0:
  DDPM's min(channels // 4, 32)."""
  if groups <= 0:
    groups = min(channels // 4, 32)
  g = max(1, min(groups, channels))
  while channels % g:
    g -= 1
  return g


def group_norm(channels: int, groups: int = DDPM_GROUPS, name=None) -> nn.GroupNorm:
  return nn.GroupNorm(num_groups=num_groups(channels, groups), name=name)


def sinusoidal_embedding(timesteps_B: jax.Array, dim: int,
                         max_positions: float = 10000.0) -> jax.Array:
  """Transformer sinusoidal embedding of (B,) float positions -> (B, dim)."""
  half = dim // 2
  log_scale = math.log(max_positions) / max(half - 1, 1)
  freqs_H = jnp.exp(-log_scale * jnp.arange(half, dtype=jnp.float32))
  args_BxH = timesteps_B.astype(jnp.float32)[:, None] * freqs_H[None, :]
  emb_BxD = jnp.concatenate([jnp.sin(args_BxH), jnp.cos(args_BxH)], axis=-1)
  if dim % 2:
    emb_BxD = jnp.pad(emb_BxD, ((0, 0), (0, 1)))
  return emb_BxD


class TimeEmbedding(nn.Module):
  """tau in [0, 1] -> Dense(swish(Dense(sinusoid(1000 tau, sin_dim)))), (B, embed_dim)."""
  sin_dim: int
  embed_dim: int

  @nn.compact
  def __call__(self, time_B: jax.Array) -> jax.Array:
    emb = sinusoidal_embedding(1000.0 * time_B, self.sin_dim)
    emb = nn.Dense(self.embed_dim, kernel_init=default_init())(emb)
    return nn.Dense(self.embed_dim, kernel_init=default_init())(swish(emb))


def conv3x3(features: int, init_scale: float = 1.0, stride: int = 1, name=None):
  return nn.Conv(features, (3, 3), strides=(stride, stride), padding="SAME",
                 kernel_init=default_init(init_scale), name=name)


def conv1x1(features: int, init_scale: float = 1.0, name=None):
  return nn.Conv(features, (1, 1), kernel_init=default_init(init_scale), name=name)


class ResnetBlock(nn.Module):
  """DDPM++ residual block with a time(+class) embedding projection.

  Input x (B, H, W, C_in), emb (B, E) -> (B, H, W, out_ch).
  """
  out_ch: int
  groups: int = DDPM_GROUPS
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, emb_BxE: jax.Array, train: bool = False) -> jax.Array:
    in_ch = x.shape[-1]
    h = swish(group_norm(in_ch, self.groups)(x))
    h = conv3x3(self.out_ch)(h)
    proj_BxC = nn.Dense(self.out_ch, kernel_init=default_init())(swish(emb_BxE))
    h = h + proj_BxC[:, None, None, :]
    h = swish(group_norm(self.out_ch, self.groups)(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = conv3x3(self.out_ch, init_scale=0.0)(h)
    if in_ch != self.out_ch:
      x = conv1x1(self.out_ch)(x)
    return (x + h) / math.sqrt(2.0)


class AttnBlock(nn.Module):
  """Single-head self-attention over H*W positions, residual scaled by 1/sqrt(2)."""
  groups: int = DDPM_GROUPS

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    B, H, W, C = x.shape
    h = group_norm(C, self.groups)(x).reshape(B, H * W, C)
    q = nn.Dense(C, kernel_init=default_init(), name="q")(h)
    k = nn.Dense(C, kernel_init=default_init(), name="k")(h)
    v = nn.Dense(C, kernel_init=default_init(), name="v")(h)
    logits_BxLxL = jnp.einsum("blc,bmc->blm", q, k) / math.sqrt(C)
    weights = jax.nn.softmax(logits_BxLxL, axis=-1)
    h = jnp.einsum("blm,bmc->blc", weights, v)
    h = nn.Dense(C, kernel_init=default_init(0.0), name="out")(h)
    return (x + h.reshape(B, H, W, C)) / math.sqrt(2.0)


class Downsample(nn.Module):
  """Halves H and W: 3x3 conv with stride 2, or 2x2 average pooling."""
  with_conv: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.with_conv:
      return conv3x3(x.shape[-1], stride=2)(x)
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class Upsample(nn.Module):
  """Doubles H and W by nearest-neighbour repetition, then (optionally) a 3x3 conv."""
  with_conv: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    if self.with_conv:
      x = conv3x3(x.shape[-1])(x)
    return x
