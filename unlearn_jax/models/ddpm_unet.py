"""Ho et al.'s DDPM UNet with DDPM++'s skip rescaling (Ho et al. 2020, Appendix B; Song et al. 2021, Appendix H).

This is score_sde's `ddpm` / DDPM++ architecture, not NCSN++: there is no Gaussian
Fourier embedding of log sigma (VE models see t / T through the sinusoidal embedding
instead of conditioning on log sigma), no BigGAN residual blocks and no FIR
up/down-sampling.  Until release 0.1 the config name was "ncsnpp"; it is still
accepted as an alias of "ddpm_unet".

    out = UNet(x, tau, y),   x (B, H, W, C),  tau in [0, 1] (B,),  y in {0..K} (B,)

Layout (DDPM's UNet with DDPM++'s rescaled residuals, see `layers.py`):
  * emb = MLP(sinusoid(1000 tau)) [+ Embed(y)], width ch * embed_dim_mult;
  * conv3x3 -> for each level l with width ch * ch_mult[l]: num_res_blocks
    ResNet blocks (each followed by self-attention when the level's
    resolution is in `attn_resolutions`), then a down-sampling (strided conv
    or average pool) except at the last level;
  * middle: ResNet block, self-attention (when `attn_resolutions` is not
    empty), ResNet block;
  * up path mirrors the down path with num_res_blocks + 1 ResNet blocks per
    level, each fed the concatenation with the matching down-path activation
    (DDPM skip connections), nearest-neighbour up-sampling + conv between levels;
  * GroupNorm -> swish -> conv3x3 to C channels, initialised at scale
    `init_scale` (0 -> 1e-10, DDPM's choice: the network starts near 0).
The network is agnostic to the output type (eps or score, see `score.py`).

Class conditioning (num_classes = K > 0): `nn.Embed(K + 1, E)` added to the
time embedding; index K is the *null class* of classifier-free guidance (Ho &
Salimans 2022) and `labels=None` means "all null".  An unconditional model
(K = 0) rejects labels.  `cond_embedding` (B, E), when given, replaces the table lookup
Embed(y) by that vector (the condition attacks of `unlearn_jax.attacks.condition`: a learned
or optimised row in the class-embedding space); the parameter tree is the same and, unused,
the outputs are too (`class_table(params)` is the (K + 1, E) table itself).

Resolutions: a level's resolution is image_size / 2^l, so image_size must be
divisible by 2^(len(ch_mult) - 1) (28 -> 14 -> 7 with ch_mult (1, 2, 2)).
Entries of `attn_resolutions` that are none of the levels' resolutions are
ignored (e.g. 16 on 28x28 images).

Measured parameter counts (embed_dim_mult=4; the group count does not change them; K=10 adds (K+1) * 4 ch):

| ch  | ch_mult      | res blocks | attn | image   | K  | params     | use                 |
| --- | ------------ | ---------- | ---- | ------- | -- | ---------- | ------------------- |
| 8   | (1, 2)       | 1          | -    | 8x8x1   | 0  |     40,489 | tests               |
| 16  | (1, 2)       | 1          | -    | 8x8x1   | 10 |    160,401 | digits, CPU         |
| 16  | (1, 2, 2)    | 1          | -    | 28x28x1 | 0  |    263,025 | MNIST, CPU          |
| 16  | (1, 2, 2)    | 1          | -    | 28x28x1 | 10 |    263,729 | MNIST, CPU          |
| 32  | (1, 2, 2)    | 1          | -    | 28x28x1 | 0  |  1,045,729 | defaults            |
| 64  | (1, 2, 2, 2) | 2          | 16   | 32x32x3 | 0  |  8,952,067 |                     |
| 128 | (1, 2, 2, 2) | 2          | 16   | 32x32x3 | 0  | 35,746,307 | DDPM CIFAR-10 size  |
| 128 | (1, 2, 2, 2) | 2          | 16   | 32x32x3 | 10 | 35,751,939 | EraseDiff/SA DDPM   |

On the shared 2-core CPU (jit, batch 64): the 264 K MNIST model takes ~160 ms
per forward pass and ~0.5 s per Adam step (~8 ms per example); the 1.05 M
default ~0.38 s / ~1.7 s; the 35.8 M paper model ~15 s per forward pass.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from unlearn_jax.models import layers


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """Typed configuration of `UNet` (hashable, so it can be a module field)."""
  image_size: int
  channels: int
  ch: int = 32
  ch_mult: tuple = (1, 2, 2)
  num_res_blocks: int = 1
  attn_resolutions: tuple = ()
  dropout: float = 0.0
  #: K > 0 makes the model class-conditional with null class K.
  num_classes: int = 0
  #: GroupNorm groups; 0 = DDPM's min(C // 4, 32) per layer.  Reduced to a divisor
  #: of each channel count.
  groups: int = layers.DDPM_GROUPS
  #: width of the time(+class) embedding is ch * embed_dim_mult.
  embed_dim_mult: int = 4
  #: down-sample with a strided 3x3 conv (True) or 2x2 average pooling (False);
  #: up-sampling adds a 3x3 conv after the nearest-neighbour repeat when True.
  resamp_with_conv: bool = True
  #: initialisation scale of the output conv (0 -> 1e-10, as in DDPM).
  init_scale: float = 0.0


def level_resolutions(cfg: UNetConfig) -> tuple:
  """Spatial size at each level: image_size / 2^l (requires exact division)."""
  return tuple(cfg.image_size // 2 ** l for l in range(len(cfg.ch_mult)))


def downsample_factor(cfg: UNetConfig) -> int:
  return 2 ** (len(cfg.ch_mult) - 1)


def class_table(params) -> jax.Array:
  """The condition table of a conditional model's parameters, row K the null condition: this
  UNet's (K + 1, E) class embeddings, or `models.stable_diffusion.SDUNet`'s (K + 1, L, D)
  prompt embeddings (both models take a batch of its rows as `cond_embedding`)."""
  if "class_embed" in params:
    return params["class_embed"]["embedding"]
  if "prompts" in params:
    return params["prompts"]["embeddings"]
  raise KeyError(f"no condition table (class_embed or prompts) among the parameters {sorted(params)}")


class UNet(nn.Module):
  """Score / noise network for NHWC images; output shaped like x."""
  config: UNetConfig

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, time_B: jax.Array,
               labels_B: Optional[jax.Array] = None, train: bool = False,
               cond_embedding: Optional[jax.Array] = None) -> jax.Array:
    cfg = self.config
    B = x_BxHxWxC.shape[0]
    embed_dim = cfg.ch * cfg.embed_dim_mult
    emb_BxE = layers.TimeEmbedding(cfg.ch, embed_dim, name="time_embed")(time_B)
    if cond_embedding is not None:      # (B, E)
      if cfg.num_classes == 0 or labels_B is not None:
        raise ValueError("cond_embedding replaces the labels of a class-conditional UNet: pass one, not both")
      emb_BxE = emb_BxE + cond_embedding
    elif cfg.num_classes > 0:
      if labels_B is None:
        labels_B = jnp.full((B,), cfg.num_classes, jnp.int32)
      emb_BxE = emb_BxE + nn.Embed(cfg.num_classes + 1, embed_dim,
                                   name="class_embed")(labels_B)
    elif labels_B is not None:
      raise ValueError("labels were given to an unconditional UNet (num_classes=0)")

    def res_block(h, out_ch):
      return layers.ResnetBlock(out_ch, cfg.groups, cfg.dropout)(h, emb_BxE, train)

    attn_at = frozenset(cfg.attn_resolutions)

    # Down path; hs holds every activation the up path concatenates.
    h = layers.conv3x3(cfg.ch)(x_BxHxWxC)
    hs = [h]
    for level, mult in enumerate(cfg.ch_mult):
      for _ in range(cfg.num_res_blocks):
        h = res_block(h, cfg.ch * mult)
        if h.shape[1] in attn_at:
          h = layers.AttnBlock(cfg.groups)(h)
        hs.append(h)
      if level != len(cfg.ch_mult) - 1:
        h = layers.Downsample(cfg.resamp_with_conv)(h)
        hs.append(h)

    # Middle.
    h = res_block(h, h.shape[-1])
    if attn_at:
      h = layers.AttnBlock(cfg.groups)(h)
    h = res_block(h, h.shape[-1])

    # Up path.
    for level in reversed(range(len(cfg.ch_mult))):
      for _ in range(cfg.num_res_blocks + 1):
        h = res_block(jnp.concatenate([h, hs.pop()], axis=-1), cfg.ch * cfg.ch_mult[level])
        if h.shape[1] in attn_at:
          h = layers.AttnBlock(cfg.groups)(h)
      if level != 0:
        h = layers.Upsample(cfg.resamp_with_conv)(h)
    assert not hs, "unbalanced skip connections"

    h = layers.swish(layers.group_norm(h.shape[-1], cfg.groups)(h))
    return layers.conv3x3(x_BxHxWxC.shape[-1], init_scale=cfg.init_scale,
                          name="conv_out")(h)
