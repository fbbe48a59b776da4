"""Figures: sample grids (PNG), 2-D scatter plots, metric curves (e.g. AR_DiMRA over attack
steps, one curve per method) with their CSV (`step,<name>,...`), each written atomically."""
from __future__ import annotations

import csv
import os
import tempfile
from typing import Dict, Mapping, Optional, Sequence, Tuple

import matplotlib
import numpy as np
from PIL import Image

from unlearn_jax import checkpoints

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


def _format_number(value) -> str:
  """A number as text that parses back to the same value (ints stay ints)."""
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    return str(int(value))
  return repr(float(value))


def _parse_column(texts: Sequence[str]) -> np.ndarray:
  """Parses a column of numbers: int64 if every entry is an integer literal, else float64."""
  try:
    return np.asarray([int(t) for t in texts], dtype=np.int64)
  except ValueError:
    return np.asarray([float(t) for t in texts], dtype=np.float64)


def write_curve_csv(path: str, steps: Sequence, columns: Mapping[str, Sequence[float]]) -> None:
  """Writes `step,<name>,...` rows, one per step, atomically (via `path + '.tmp'`).

  Args:
    path: the CSV file; its directory is created if missing.
    steps: the x values (e.g. attack steps), one per row.
    columns: name -> values, each as long as `steps`.  Names may not be
      'step', repeat, or contain commas, quotes or line breaks.
  """
  steps = list(np.asarray(steps).tolist())
  names = list(columns)
  for name in names:
    if name == "step" or not name or any(c in name for c in ",\"\r\n"):
      raise ValueError(f"bad column name {name!r}")
    if len(columns[name]) != len(steps):
      raise ValueError(f"column {name!r} has {len(columns[name])} values for {len(steps)} steps")
  values = [np.asarray(columns[name]).tolist() for name in names]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = checkpoints.tmp_path(path)
  try:
    with open(tmp, "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(["step"] + names)
      for i, step in enumerate(steps):
        writer.writerow([_format_number(step)] + [_format_number(v[i]) for v in values])
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def read_curve_csv(path: str) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
  """Reads a file from `write_curve_csv`: (steps, {name: values}) in file order."""
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  if not rows or not rows[0] or rows[0][0] != "step":
    raise ValueError(f"{path}: not a curve CSV (the header must start with 'step')")
  header, body = rows[0], rows[1:]
  for line, row in enumerate(body, start=2):
    if len(row) != len(header):
      raise ValueError(f"{path}:{line}: {len(row)} fields, expected {len(header)}")
  steps = _parse_column([row[0] for row in body])
  columns = {name: _parse_column([row[j] for row in body]).astype(np.float64)
             for j, name in enumerate(header[1:], start=1)}
  return steps, columns


def plot_curves(path_png: str, curves: Mapping[str, Tuple[Sequence, Sequence[float]]], *,
                title: str, xlabel: str, ylabel: str,
                ylim: Optional[Tuple[float, float]] = None,
                bands: Optional[Mapping[str, Tuple[Sequence[float], Sequence[float]]]] = None) -> None:
  """Plots one line per curve, with a legend, into a PNG written atomically.

  Args:
    path_png: the PNG file; its directory is created if missing.
    curves: label -> (steps, values), e.g. unlearning method -> AR_DiMRA over
      attack steps.
    title, xlabel, ylabel: the figure's texts.
    ylim: optional y range (e.g. (0, 1) for rates).
    bands: optional label -> (lower, upper) per step, shaded around that curve (e.g. each
      point's 95% Wilson interval).
  """
  for label, (xs, ys) in curves.items():
    if len(xs) != len(ys):
      raise ValueError(f"curve {label!r} has {len(xs)} steps and {len(ys)} values")

  fig, ax = plt.subplots(figsize=(6.0, 4.0))
  try:
    for label, (xs, ys) in curves.items():
      line, = ax.plot(np.asarray(xs), np.asarray(ys, dtype=np.float64), marker="o", markersize=3,
                      label=label)
      if bands and label in bands:
        lo, hi = (np.asarray(b, dtype=np.float64) for b in bands[label])
        ax.fill_between(np.asarray(xs), lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
      ax.set_ylim(*ylim)
    ax.grid(True, alpha=0.3)
    if curves:
      ax.legend()
    fig.tight_layout()
    save_figure(fig, path_png)
  finally:
    plt.close(fig)


def save_figure(fig, path_png: str, dpi: int = 120) -> None:
  """Writes a matplotlib figure as PNG atomically (a temporary file, then a rename); its
  directory is created if missing.  The caller closes the figure."""
  directory = os.path.dirname(os.path.abspath(path_png))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".png", dir=directory)
  os.close(fd)
  try:
    fig.savefig(tmp, format="png", dpi=dpi)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path_png)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
