"""Host-side metrics on evaluation-classifier outputs, and metric curves.

Everything here runs in numpy/scipy on the host, after the evaluation
classifier has produced predictions, logits or features; nothing is jitted.

* Attack rate (DiMUM/DiMRA "accuracy rate", AR): the share of samples,
  generated conditioned on the forgotten class, that the evaluation classifier
  assigns to one of `target_classes`.  With the forgotten class as the target
  it is AR_MU (after unlearning) or AR_DiMRA (during a relearning attack); with
  the alternative class as the target it is AR_CL.  `top_k_attack_rate` is the
  UnlearnCanvas variant: a sample counts when any of its top-k classes is a
  target (k = 3 there).
* Fréchet distance between Gaussians fitted to *the evaluation classifier's
  features* of two sample sets.  It is the FID formula, but it is not
  Inception FID: the numbers are only comparable between runs that use the
  same classifier and the same feature layer.
* Metric curves (e.g. AR_DiMRA over attack steps, one curve per unlearning
  method): a small CSV format (`step,<name>,...`) written atomically, and a
  matplotlib plot (Agg backend) saved atomically.
"""
from __future__ import annotations

import csv
import os
import tempfile
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from unlearn_jax.errors import UserError

Classes = Union[int, Sequence[int], np.ndarray]

# A sqrtm result X of P is accepted when ||X X - P||_F <= this * ||P||_F.
_SQRTM_REL_RESIDUAL = 1e-4
# Largest imaginary part of sqrt(S1 S2) tolerated, relative to Tr S1 + Tr S2.
# Negative distances down to -this * max(1, Tr S1 + Tr S2) are rounding; clamped to 0.


# ----------------------------------------------------------------------------
# Attack rate (AR).
# ----------------------------------------------------------------------------
def _target_array(target_classes: Classes) -> np.ndarray:
  """`target_classes` as a non-empty 1-D int array (a bare int is one class)."""
  targets = np.atleast_1d(np.asarray(target_classes))
  if targets.ndim != 1 or targets.size == 0 or not np.issubdtype(targets.dtype, np.integer):
    raise UserError("target_classes", target_classes,
                    "expected a class index or a non-empty sequence of class indices")
  return targets


def attack_rate(predicted: np.ndarray, target_classes: Classes,
                top_k_predictions: Optional[np.ndarray] = None) -> float:
  """Share of samples assigned to one of `target_classes` (the papers' AR).

  Args:
    predicted: int (N,) argmax predictions of the evaluation classifier.
    target_classes: a class index or a sequence of them (the forgotten class
      for AR_MU / AR_DiMRA, the alternative class for AR_CL).
    top_k_predictions: optional int (N, k) top-k class indices per sample; when
      given, a sample counts if any of its k classes is a target (this
      replaces the argmax rule; N must match `predicted`).

  Returns:
    The rate in [0, 1], or NaN for an empty batch.
  """
  targets = _target_array(target_classes)
  predicted = np.asarray(predicted)
  if predicted.ndim != 1:
    raise ValueError(f"predicted must be 1-D (N,), got shape {predicted.shape}")
  if top_k_predictions is None:
    hits = np.isin(predicted, targets)
  else:
    top_k = np.asarray(top_k_predictions)
    if top_k.ndim != 2 or top_k.shape[0] != predicted.shape[0]:
      raise ValueError(f"top_k_predictions must have shape ({predicted.shape[0]}, k), "
                       f"got {top_k.shape}")
    hits = np.isin(top_k, targets).any(axis=1)
  return float(np.mean(hits)) if hits.size else float("nan")


def top_k_classes(logits: np.ndarray, k: int) -> np.ndarray:
  """Int (N, k) indices of the k largest logits per row, best first (ties: lower index first)."""
  logits = np.asarray(logits)
  if logits.ndim != 2:
    raise ValueError(f"logits must be 2-D (N, C), got shape {logits.shape}")
  num_classes = logits.shape[1]
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= num_classes:
    raise UserError("k", k, f"expected an integer in [1, {num_classes}] (the number of classes)")
  return np.argsort(-logits, axis=1, kind="stable")[:, :k]


def top_k_attack_rate(logits: np.ndarray, target_classes: Classes, k: int) -> float:
  """Share of samples whose top-k classes contain a target (UnlearnCanvas uses k = 3).

  Args:
    logits: (N, C) classifier logits (or probabilities; only the order matters).
    target_classes: a class index or a sequence of them.
    k: how many of the best classes to look at; 1 <= k <= C.

  Returns:
    The rate in [0, 1], or NaN for an empty batch.  With k = 1 it equals
    `attack_rate` on the argmax predictions.
  """
  top_k = top_k_classes(logits, k)
  return attack_rate(top_k[:, 0], target_classes, top_k_predictions=top_k)


# ----------------------------------------------------------------------------
# Fréchet distance on the evaluation classifier's features.
# ----------------------------------------------------------------------------
def gaussian_stats(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Mean (D,) and covariance (D, D) of (N, D) features, float64, unbiased (ddof=1).

  Raises:
    ValueError: if `features` is not 2-D or has fewer than 2 rows.
  """
  features = np.asarray(features, dtype=np.float64)
  if features.ndim != 2:
    raise ValueError(f"features must be 2-D (N, D), got shape {features.shape}")
  if features.shape[0] < 2:
    raise ValueError(f"need at least 2 feature vectors for a covariance, got {features.shape[0]}")
  mu = features.mean(axis=0)
  sigma = np.atleast_2d(np.cov(features, rowvar=False, ddof=1))
  return mu, sigma


def _as_stats(mu: np.ndarray, sigma: np.ndarray, name: str) -> Tuple[np.ndarray, np.ndarray]:
  """`mu` as (D,) and `sigma` as (D, D) float64 (scalars allowed for D = 1)."""
  mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
  sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
  d = mu.shape[0]
  if mu.ndim != 1 or sigma.shape != (d, d):
    raise ValueError(f"{name}: expected mu (D,) and sigma (D, D), got {mu.shape} and {sigma.shape}")
  return mu, sigma


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
  """The symmetric PSD square root (eigenvalues below 0 from rounding clamped)."""
  w, v = np.linalg.eigh((sigma + sigma.T) / 2.0)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

  d = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}).  Meant for Gaussians
  fitted to *the evaluation classifier's features* (see `gaussian_stats`):
  the FID formula, but not Inception FID.

  Tr (S1 S2)^{1/2} is computed as Tr (S1^{1/2} S2 S1^{1/2})^{1/2} (the two
  matrices are similar), i.e. from the eigenvalues of a symmetric PSD matrix:
  real and finite also for rank-deficient covariances (fewer samples than
  feature dimensions), where a general matrix square root of S1 S2 is not.

  Args:
    mu1, mu2: (D,) means (scalars allowed for D = 1).
    sigma1, sigma2: (D, D) covariances (scalars allowed for D = 1).

  Returns:
    The distance, >= 0 (rounding below 0 is clamped).
  """
  mu1, sigma1 = _as_stats(mu1, sigma1, "stats 1")
  mu2, sigma2 = _as_stats(mu2, sigma2, "stats 2")
  if mu1.shape != mu2.shape:
    raise ValueError(f"dimension mismatch: {mu1.shape[0]} vs {mu2.shape[0]}")
  r1 = _psd_sqrt(sigma1)
  m = r1 @ sigma2 @ r1
  trace_sqrt = float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2.0), 0.0, None))))
  diff = mu1 - mu2
  distance = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)
  return max(distance, 0.0)


def frechet_distance_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
  """Fréchet distance between Gaussians fitted to two (N, D) sets of classifier features."""
  return frechet_distance(*gaussian_stats(features1), *gaussian_stats(features2))


# ----------------------------------------------------------------------------
# Metric curves: CSV storage and plots.
# ----------------------------------------------------------------------------
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
  tmp = path + ".tmp"
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
                ylim: Optional[Tuple[float, float]] = None) -> None:
  """Plots one line per curve, with a legend, into a PNG written atomically.

  Args:
    path_png: the PNG file; its directory is created if missing.
    curves: label -> (steps, values), e.g. unlearning method -> AR_DiMRA over
      attack steps.
    title, xlabel, ylabel: the figure's texts.
    ylim: optional y range (e.g. (0, 1) for rates).
  """
  for label, (xs, ys) in curves.items():
    if len(xs) != len(ys):
      raise ValueError(f"curve {label!r} has {len(xs)} steps and {len(ys)} values")
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  directory = os.path.dirname(os.path.abspath(path_png))
  os.makedirs(directory, exist_ok=True)
  fig, ax = plt.subplots(figsize=(6.0, 4.0))
  try:
    for label, (xs, ys) in curves.items():
      ax.plot(np.asarray(xs), np.asarray(ys, dtype=np.float64), marker="o", markersize=3,
              label=label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
      ax.set_ylim(*ylim)
    ax.grid(True, alpha=0.3)
    if curves:
      ax.legend()
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=directory)
    os.close(fd)
    try:
      fig.savefig(tmp, format="png", dpi=120)
      os.chmod(tmp, 0o644)
      os.replace(tmp, path_png)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
  finally:
    plt.close(fig)
