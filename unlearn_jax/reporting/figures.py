"""Figures: sample grids (PNG) and 2-D scatter plots."""
from __future__ import annotations

import os
from typing import Optional

import matplotlib
import numpy as np
from PIL import Image

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)


def save_samples(path: str, x: np.ndarray, is_image: bool, labels: Optional[np.ndarray] = None,
                 cols: Optional[int] = None) -> None:
  """A grid of images in [0, 1] (NHWC; square unless `cols`), or a scatter plot of 2-D points."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if is_image:
    x = np.asarray(x)
    n = len(x)
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    h, w, c = x.shape[1:]
    grid = np.ones((rows * (h + 2) + 2, cols * (w + 2) + 2, c), np.float32)
    for i in range(n):
      r, q = divmod(i, cols)
      grid[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + q * (w + 2):2 + q * (w + 2) + w] = x[i]
    img = (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)
    img = img[..., 0] if c == 1 else img
    scale = max(1, 256 // max(img.shape[:2]))
    Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST).save(path)
    return
  fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
  ax.scatter(x[:, 0], x[:, 1], s=1, c=labels if labels is not None else "k", cmap="viridis", alpha=0.5)
  ax.set_xlim(-6, 6)
  ax.set_ylim(-6, 6)
  ax.set_aspect("equal")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
