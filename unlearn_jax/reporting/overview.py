"""The report's figures, and the run's results in TensorBoard.

    lines = overview.figures(results, workdir, stage_dirs)   # PNGs in <workdir>/figures/, report.md lines
    overview.tensorboard(results, workdir, config, stage_dirs, report_dir)

Figures (each only where its data exists):
  class_histograms.png  per model, the evaluation classifier's classes of its samples (bars;
                        the forgotten classes red), from "class_histogram" /
                        "forget_class_histogram" of results.json;
  loss_curves.png       per trained stage (train / unlearn / attack), its logged losses over
                        steps (<stage>/metrics.jsonl);
  tradeoff.png          forgetting against quality, one point per model: the first rate of
                        `FORGET_MEASURES` and the first distance of `QUALITY_MEASURES` every
                        model has, the rate with its Wilson 95 % interval.
TensorBoard: each evaluated model's stage directory gets its evaluation scalars
("eval/<measure>"), its sample grid and its hyperparameters (the stage's settings and its
method's section); the report directory the figures, the config and report.md as text.
Both event files are rewritten whole by every report (a rerun replaces, never appends).
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Mapping, Optional

import numpy as np
from PIL import Image

from unlearn_jax import events
from unlearn_jax import training
from unlearn_jax.reporting import figures
from unlearn_jax.reporting.figures import plt as matplotlib_plt   # the Agg backend chosen there

#: (results.json key, axis label) of the forgetting rates, first match used.
FORGET_MEASURES = (("unlearning_ratio", "unlearning ratio (samples in a forgotten class)"),
                   ("ar_mu", "AR_MU (forget-conditioned samples classified as forgotten)"))
#: (key, axis label) of the quality distances (lower is better), first match used.
QUALITY_MEASURES = (("fid", "FID (Inception)"), ("frechet_distance", "FD (classifier features)"),
                    ("histogram_tv", "TV distance of the class histogram from the data's"))
FIGURE_DIR = "figures"
EVENTS_NAME = "events.out.tfevents.report"     # one file per directory, rewritten by each report


def _save(fig, path: str) -> None:
  figures.save_figure(fig, path, dpi=110)
  matplotlib_plt.close(fig)


def _panels(n: int, max_cols: int, size: tuple):
  """A figure of n panels, at most max_cols a row, each `size` inches; the spare ones hidden."""
  cols = min(n, max_cols)
  rows = -(-n // cols)
  fig, axes = matplotlib_plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
  for ax in axes.flat[n:]:
    ax.axis("off")
  return fig, axes


def plot_class_histograms(path: str, histograms: Mapping[str, List[int]], class_names: List[str],
                          forget: List[int], titles: Optional[Mapping[str, str]] = None) -> None:
  """One bar chart per model (shares of its samples per class), forgotten classes in red."""
  fig, axes = _panels(len(histograms), 4, (3.2, 2.4))
  for ax, (name, hist) in zip(axes.flat, histograms.items()):
    h = np.asarray(hist, np.float64)
    share = h / max(h.sum(), 1.0)
    colors = ["tab:red" if i in forget else "tab:gray" for i in range(len(h))]
    ax.bar(np.arange(len(h)), share, color=colors)
    ax.set_xticks(np.arange(len(h)))
    ax.set_xticklabels([str(c)[:6] for c in class_names[:len(h)]], fontsize=7, rotation=90 if len(h) > 10 else 0)
    ax.set_ylim(0, 1)
    ax.set_title((titles or {}).get(name, name), fontsize=9)
  axes.flat[0].set_ylabel("share of samples")
  fig.suptitle("classes of the samples (red: forgotten)", fontsize=10)
  fig.tight_layout()
  _save(fig, path)


def plot_loss_curves(path: str, histories: Mapping[str, List[dict]]) -> None:
  """One panel per stage: its `loss/*` (else `loss`) columns over steps."""
  fig, axes = _panels(len(histories), 3, (4.0, 2.8))
  for ax, (name, rows_) in zip(axes.flat, histories.items()):
    keys = sorted({k for r in rows_ for k in r if k.startswith("loss")})
    for k in keys:
      pts = [(r["step"], r[k]) for r in rows_ if k in r]
      ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=2, label=k)
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.grid(True, alpha=0.3)
    if keys:
      ax.legend(fontsize=7)
  fig.tight_layout()
  _save(fig, path)


def plot_tradeoff(path: str, points: Mapping[str, tuple], xlabel: str, ylabel: str) -> None:
  """One point per model: (rate, [low, high] or None, quality); the rate's interval as error bars."""
  fig, ax = matplotlib_plt.subplots(figsize=(5.5, 4.0))
  for name, (x, lohi, y) in points.items():
    err = None if not lohi else [[max(x - lohi[0], 0.0)], [max(lohi[1] - x, 0.0)]]
    ax.errorbar([x], [y], xerr=err, fmt="o", capsize=3, label=name)
    ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
  ax.set_xlabel(xlabel, fontsize=9)
  ax.set_ylabel(ylabel + " (lower is better)", fontsize=9)
  ax.set_title("forgetting vs quality (bars: 95% Wilson interval)", fontsize=10)
  ax.grid(True, alpha=0.3)
  fig.tight_layout()
  _save(fig, path)


def _first_common(models: Mapping[str, dict], measures) -> Optional[tuple]:
  for key, label in measures:
    if models and all(isinstance(m.get(key), (int, float)) and np.isfinite(m[key]) for m in models.values()):
      return key, label
  return None


def figures_section(results: dict, workdir: str, stage_dirs: Mapping[str, str], class_names: List[str],
                    titles: Optional[Mapping[str, str]] = None) -> List[str]:
  """Writes the figures that have data into <workdir>/figures/; report.md's "## Figures" lines.
  `stage_dirs`: trained stage name -> its directory (for the loss curves); `class_names`: the
  data set's, in label order."""
  models = results["models"]
  out_dir = os.path.join(workdir, FIGURE_DIR)
  made = []
  hists = {n: m.get("class_histogram", m.get("forget_class_histogram")) for n, m in models.items()}
  hists = {n: h for n, h in hists.items() if h}
  if hists:
    names = list(class_names)
    width = max(len(h) for h in hists.values())
    names = names if len(names) >= width else [str(i) for i in range(width)]
    plot_class_histograms(os.path.join(out_dir, "class_histograms.png"), hists, names,
                          list(results.get("forget_classes") or []), titles)
    made.append(("Classes of each model's samples (forgotten classes in red)", "class_histograms.png"))
  histories = {n: training.read_history(d) for n, d in stage_dirs.items()}
  histories = {(titles or {}).get(n, n): h for n, h in histories.items()
               if h and any(k.startswith("loss") for r in h for k in r)}
  if histories:
    plot_loss_curves(os.path.join(out_dir, "loss_curves.png"), histories)
    made.append(("Loss curves of each trained stage", "loss_curves.png"))
  forget = _first_common(models, FORGET_MEASURES)
  quality = _first_common(models, QUALITY_MEASURES)
  if forget and quality and len(models) >= 2:
    fk, fl = forget
    qk, ql = quality
    pts = {(titles or {}).get(n, n): (m[fk], m.get(f"{fk}_ci95"), m[qk]) for n, m in models.items()}
    plot_tradeoff(os.path.join(out_dir, "tradeoff.png"), pts, fl, ql)
    made.append((f"Forgetting ({fk}) vs quality ({qk}), one point per model", "tradeoff.png"))
  if not made:
    return []
  lines = ["", "## Figures", ""]
  for title, f in made:
    lines += [f"**{title}**", "", f"![{title}]({FIGURE_DIR}/{f})", ""]
  return lines


def _scalars(entry: dict, prefix: str = "eval/") -> Dict[str, float]:
  out = {}
  for k, v in entry.items():
    if isinstance(v, bool):
      continue
    if isinstance(v, (int, float)) and np.isfinite(v):
      out[prefix + k] = float(v)
    elif isinstance(v, dict) and k not in ("training_log",):
      out.update(_scalars(v, f"{prefix}{k}/"))
  return out


def _png(path: str) -> Optional[np.ndarray]:
  return np.asarray(Image.open(path).convert("RGB")) if os.path.exists(path) else None


def tensorboard(results: dict, workdir: str, hparams_of: Mapping[str, dict], report_dir: str,
                report_text: str, config_json: str) -> None:
  """The run's results in TensorBoard (module docstring); `hparams_of`: model -> its settings."""
  for name, m in results["models"].items():
    stage_dir = os.path.join(workdir, name)
    if not os.path.isdir(stage_dir):
      continue
    w = events.EventWriter(stage_dir, filename=EVENTS_NAME)
    step = int(m.get("unlearn_steps") or 0)
    w.hparams(hparams_of.get(name, {}))
    w.scalars(step, _scalars(m))
    grid = _png(os.path.join(workdir, m["samples_png"])) if m.get("samples_png") else None
    if grid is not None:
      w.images(step, {"eval/samples": grid})
    w.close()
  w = events.EventWriter(report_dir, filename=EVENTS_NAME)
  fig_dir = os.path.join(workdir, FIGURE_DIR)
  pics = {f"figures/{f[:-4]}": _png(os.path.join(fig_dir, f))
          for f in sorted(os.listdir(fig_dir)) if f.endswith(".png")} if os.path.isdir(fig_dir) else {}
  if pics:
    w.images(0, pics)
  w.text(0, "report", report_text)
  w.text(0, "config", "```\n" + json.dumps(json.loads(config_json), indent=1) + "\n```")
  w.close()
