"""The FID InceptionV3: the 2015-12-05 TensorFlow network behind FID, IS and sFID.

FID (Heusel et al. 2017), the Inception Score (Salimans et al. 2016) and sFID
(Nash et al. 2021) are all defined on one network: the frozen TF graph
`inception-2015-12-05`.  pytorch-fid ports its weights
(`pt_inception-2015-12-05-6726825d.pth`) onto torchvision's InceptionV3 with
the graph's deviations from the paper's net patched in; this module is that
network in Flax linen, with the torch state dict's module names, so that
`unlearn_jax.evaluation.inception_weights` maps a torch name `A.B.conv.weight`
onto the Flax path `A/B/conv/kernel` one to one.

The network (torchvision names; channels at a 299 x 299 input):

  stem      Conv2d_1a_3x3 (32, stride 2), Conv2d_2a_3x3 (32), Conv2d_2b_3x3
            (64, pad 1), max-pool 3/2, Conv2d_3b_1x1 (80), Conv2d_4a_3x3 (192),
            max-pool 3/2                                          -> 35 x 35 x 192
  Mixed_5b-d  InceptionA, pool features 32 / 64 / 64               -> 35 x 35 x 288
  Mixed_6a    InceptionB (grid reduction)                          -> 17 x 17 x 768
  Mixed_6b-e  InceptionC, 7x7 channels 128 / 160 / 160 / 192       -> 17 x 17 x 768
  Mixed_7a    InceptionD (grid reduction)                          ->  8 x  8 x 1280
  Mixed_7b    InceptionE, average pool branch                      ->  8 x  8 x 2048
  Mixed_7c    InceptionE, *max* pool branch                        ->  8 x  8 x 2048
  pool3       spatial mean                                         -> 2048
  fc          2048 -> 1008 logits (the graph's `softmax/logits`)

Every convolution is conv (no bias) -> BatchNorm (eps 1e-3, running
statistics) -> ReLU.  The FID graph differs from torchvision's ImageNet
InceptionV3 in two places, both kept here: the 3 x 3 / stride 1 average pools
of the A, C and E blocks divide by the number of *real* pixels under the window
(TF's SAME pooling; torch `count_include_pad=False`), and Mixed_7c's pool branch
is a 3 x 3 max pool (`max_pool_3x3`), not an average.  The classifier has 1008
outputs (1000 ImageNet classes and 8 unused ones).

Outputs (`InceptionFeatures`):
  pool3            (N, 2048): the FID features (`pool_3:0`).
  spatial          (N, 7 h w): sFID's features, the first 7 channels of
                   `mixed_6/conv:0`, the ReLU output of the 1 x 1 branch of the
                   TF graph's `mixed_6` block (= torch `Mixed_6d.branch1x1`, whose
                   channels come first in Mixed_6d's concatenation), flattened in
                   NHWC order as guided-diffusion's evaluator does; h = w = 17 at
                   299 x 299, so 7 * 17 * 17 = 2023 dimensions.
  logits           (N, 1008): pool3 @ W + b.
  logits_unbiased  (N, 1008): pool3 @ W.  The reference Inception Score code
                   (Salimans et al.; torch-fidelity's `logits_unbiased`) takes
                   its softmax over these: it reads `softmax/logits/MatMul`'s
                   weight and leaves the bias out.

Input conventions (pytorch-fid's):
  * images in [0, 1], NHWC, 3 channels; generated images are quantized to
    uint8 first (`quantize_uint8`), because the reference statistics are
    computed from 8-bit PNG/JPEG files (pytorch-fid reads files with PIL and
    divides by 255);
  * resized to 299 x 299 bilinearly with half-pixel centres and *no*
    antialiasing (`resize_bilinear`): torch's
    `F.interpolate(x, (299, 299), mode='bilinear', align_corners=False)`, which
    is `jax.image.resize(..., 'bilinear', antialias=False)` (jax's antialias,
    on by default, widens the kernel when downsampling; torch's does not);
  * scaled to [-1, 1] by 2 x - 1 (`preprocess` does both steps).
`InceptionV3` itself takes the preprocessed [-1, 1] input of any size >= 75.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

#: the side of the network's input after `preprocess`.
INPUT_SIZE = 299
#: the smallest input side the strides and VALID convolutions allow.
MIN_INPUT_SIZE = 75
#: pool3 feature dimension and number of logits.
POOL3_DIM = 2048
NUM_LOGITS = 1008
#: leading channels of `mixed_6/conv` kept for sFID.
SPATIAL_CHANNELS = 7
#: BatchNorm epsilon of the TF graph.
BN_EPS = 1e-3


class InceptionFeatures(NamedTuple):
  """The network's outputs (see the module docstring)."""
  pool3: Any
  spatial: Any
  logits: Any
  logits_unbiased: Any


# --- input conventions --------------------------------------------------------

def quantize_uint8(images01) -> np.ndarray:
  """Images in [0, 1] -> uint8 as written to an 8-bit PNG: round(255 x), clipped.

  Rounds half up (floor(255 x + 0.5)), as torchvision's `save_image` does.
  """
  x = np.clip(np.asarray(images01, dtype=np.float64), 0.0, 1.0)
  return np.floor(x * 255.0 + 0.5).astype(np.uint8)


def resize_bilinear(images, size: int = INPUT_SIZE):
  """(N, H, W, C) -> (N, size, size, C): torch bilinear, align_corners=False, no antialias."""
  n, _, _, c = images.shape
  return jax.image.resize(images, (n, size, size, c), method="bilinear", antialias=False)


def preprocess(images01, size: Optional[int] = INPUT_SIZE):
  """Images in [0, 1] (N, H, W, 3) -> the network's input: resized to `size` (None: kept), in [-1, 1]."""
  x = jnp.asarray(images01, jnp.float32)
  if size is not None:
    x = resize_bilinear(x, size)
  return 2.0 * x - 1.0


# --- pools --------------------------------------------------------------------

def avg_pool_3x3(x):
  """3 x 3 / stride 1 average over the in-image pixels only (TF SAME; torch count_include_pad=False)."""
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def max_pool_3x3(x):
  """3 x 3 / stride 1 max pool, padding 1 (pads with -inf): Mixed_7c's pool branch."""
  return nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))


def max_pool_3x3_s2(x):
  """3 x 3 / stride 2 VALID max pool: the stem's and grid reductions' pools."""
  return nn.max_pool(x, (3, 3), (2, 2), padding="VALID")


# --- layers -------------------------------------------------------------------

class BasicConv(nn.Module):
  """conv (no bias) -> BatchNorm (running statistics, eps 1e-3) -> ReLU; torch's `BasicConv2d`."""
  features: int
  kernel: Tuple[int, int] = (1, 1)
  strides: Tuple[int, int] = (1, 1)
  padding: Tuple[int, int] = (0, 0)
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    pad = tuple((p, p) for p in self.padding)
    x = nn.Conv(self.features, self.kernel, self.strides, padding=pad, use_bias=False,
                precision=self.precision, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name="bn")(x)
    return nn.relu(x)


class InceptionA(nn.Module):
  """35 x 35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg-pool-1x1 (64 + 64 + 96 + pool_features)."""
  pool_features: int
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv, precision=self.precision)
    b1 = conv(64, name="branch1x1")(x)
    b5 = conv(48, name="branch5x5_1")(x)
    b5 = conv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = conv(64, name="branch3x3dbl_1")(x)
    b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = conv(self.pool_features, name="branch_pool")(avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """35 -> 17 grid reduction: 3x3/2 | 1x1-3x3-3x3/2 | max-pool/2 (384 + 96 + input channels)."""
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv, precision=self.precision)
    b3 = conv(384, (3, 3), (2, 2), name="branch3x3")(x)
    bd = conv(64, name="branch3x3dbl_1")(x)
    bd = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = conv(96, (3, 3), (2, 2), name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """17 x 17 block with factorised 7 x 7 convolutions (192 x 4 channels out)."""
  channels_7x7: int
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv, precision=self.precision)
    c7 = self.channels_7x7
    row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
    b1 = conv(192, name="branch1x1")(x)
    b7 = conv(c7, name="branch7x7_1")(x)
    b7 = conv(c7, **row, name="branch7x7_2")(b7)
    b7 = conv(192, **col, name="branch7x7_3")(b7)
    bd = conv(c7, name="branch7x7dbl_1")(x)
    bd = conv(c7, **col, name="branch7x7dbl_2")(bd)
    bd = conv(c7, **row, name="branch7x7dbl_3")(bd)
    bd = conv(c7, **col, name="branch7x7dbl_4")(bd)
    bd = conv(192, **row, name="branch7x7dbl_5")(bd)
    bp = conv(192, name="branch_pool")(avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """17 -> 8 grid reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max-pool/2 (320 + 192 + input)."""
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv, precision=self.precision)
    b3 = conv(192, name="branch3x3_1")(x)
    b3 = conv(320, (3, 3), (2, 2), name="branch3x3_2")(b3)
    b7 = conv(192, name="branch7x7x3_1")(x)
    b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = conv(192, (3, 3), (2, 2), name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """8 x 8 block with split 1x3 / 3x1 outputs (320 + 768 + 768 + 192 = 2048); `pool` is its pool branch."""
  pool: Callable = avg_pool_3x3
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv, precision=self.precision)
    row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
    b1 = conv(320, name="branch1x1")(x)
    b3 = conv(384, name="branch3x3_1")(x)
    b3 = jnp.concatenate([conv(384, **row, name="branch3x3_2a")(b3),
                          conv(384, **col, name="branch3x3_2b")(b3)], axis=-1)
    bd = conv(448, name="branch3x3dbl_1")(x)
    bd = conv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([conv(384, **row, name="branch3x3dbl_3a")(bd),
                          conv(384, **col, name="branch3x3dbl_3b")(bd)], axis=-1)
    bp = conv(192, name="branch_pool")(self.pool(x))
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class Logits(nn.Module):
  """The 2048 -> 1008 classifier; returns (x W + b, x W)."""
  features: int = NUM_LOGITS
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    unbiased = jnp.dot(x, kernel, precision=self.precision)
    return unbiased + bias, unbiased


class InceptionV3(nn.Module):
  """The FID InceptionV3 on preprocessed (N, H, W, 3) input in [-1, 1], H, W >= 75.

  Returns `InceptionFeatures` (pool3, spatial, logits, logits_unbiased).  The
  variables are {"params", "batch_stats"}; apply with no mutable collections.
  """
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x) -> InceptionFeatures:
    p = dict(precision=self.precision)
    x = BasicConv(32, (3, 3), (2, 2), name="Conv2d_1a_3x3", **p)(x)
    x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3", **p)(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3", **p)(x)
    x = max_pool_3x3_s2(x)
    x = BasicConv(80, name="Conv2d_3b_1x1", **p)(x)
    x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3", **p)(x)
    x = max_pool_3x3_s2(x)
    x = InceptionA(32, name="Mixed_5b", **p)(x)
    x = InceptionA(64, name="Mixed_5c", **p)(x)
    x = InceptionA(64, name="Mixed_5d", **p)(x)
    x = InceptionB(name="Mixed_6a", **p)(x)
    x = InceptionC(128, name="Mixed_6b", **p)(x)
    x = InceptionC(160, name="Mixed_6c", **p)(x)
    x = InceptionC(160, name="Mixed_6d", **p)(x)
    # Mixed_6d's first channels are its branch1x1: the TF graph's mixed_6/conv.
    spatial = x[..., :SPATIAL_CHANNELS].reshape(x.shape[0], -1)
    x = InceptionC(192, name="Mixed_6e", **p)(x)
    x = InceptionD(name="Mixed_7a", **p)(x)
    x = InceptionE(avg_pool_3x3, name="Mixed_7b", **p)(x)
    x = InceptionE(max_pool_3x3, name="Mixed_7c", **p)(x)
    pool3 = jnp.mean(x, axis=(1, 2))
    logits, unbiased = Logits(NUM_LOGITS, name="fc", **p)(pool3)
    return InceptionFeatures(pool3=pool3, spatial=spatial, logits=logits, logits_unbiased=unbiased)


def spatial_dim(size: int = INPUT_SIZE) -> int:
  """Dimension of the sFID features for a square input of side `size` (2023 at 299)."""
  s = (size - 3) // 2 + 1 - 2          # Conv2d_1a (stride 2), Conv2d_2a
  s = (s - 3) // 2 + 1 - 2             # max-pool, Conv2d_4a
  s = (s - 3) // 2 + 1                 # max-pool
  s = (s - 3) // 2 + 1                 # Mixed_6a
  return SPATIAL_CHANNELS * s * s


def init_variables(rng: jax.Array, size: int = MIN_INPUT_SIZE):
  """Randomly initialised {"params", "batch_stats"} (for tests and shapes; real weights come from a file)."""
  return InceptionV3().init(rng, jnp.zeros((1, size, size, 3), jnp.float32))


def variable_shapes():
  """The variables' tree of `jax.ShapeDtypeStruct` (no computation)."""
  return jax.eval_shape(init_variables, jax.random.PRNGKey(0))
