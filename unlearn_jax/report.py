"""results.json, report.md and PNG sample grids.

results.json schema (documented in the README):
  {
    "experiment": "sgu", "data_source": "...", "dataset": "mnist",
    "forget_classes": [3], "forget_class_names": ["3"],
    "classifier": {"test_accuracy": 0.98} | null,
    "models": {
      "<stage>": {"unlearning_ratio": float, "num_samples": int, "class_histogram": [...],
                  "nll": {"retain": float, "forget": float, "unit": "bits/dim",
                          "offset": float, "convention": "score_sde" | "density",
                          "num_examples": int},
                  "samples_png": "evaluate/<stage>_samples.png", "wall_time_s": float,
                  "train_wall_time_s": float}
    },
    "wall_time_s": {"<stage>": float}
  }
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from unlearn_jax import checkpoints

PRETTY = {"standard": "Standard", "unseen": "Unseen", "sgu_orthogonal": "SGU-Orthogonal",
          "sgu_obtuse": "SGU-Obtuse"}


def save_samples(path: str, x: np.ndarray, is_image: bool, labels: Optional[np.ndarray] = None) -> None:
  """A square grid of images in [0, 1] (NHWC), or a scatter plot of 2-D points."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if is_image:
    from PIL import Image
    x = np.asarray(x)
    n = len(x)
    cols = int(np.ceil(np.sqrt(n)))
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
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
  ax.scatter(x[:, 0], x[:, 1], s=1, c=labels if labels is not None else "k", cmap="viridis", alpha=0.5)
  ax.set_xlim(-6, 6)
  ax.set_ylim(-6, 6)
  ax.set_aspect("equal")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def collect(exp, workdir: str) -> dict:
  """Gathers every stage's outputs into the results.json structure."""
  cfg = exp.config
  results = {"experiment": cfg.experiment, "dataset": cfg.data.name, "data_source": exp.train.source,
             "forget_classes": list(exp.forget_labels),
             "forget_class_names": [exp.train.class_names[i] for i in exp.forget_labels],
             "classifier": None, "models": {}, "wall_time_s": {}}
  for name in cfg.stage_order:
    st = cfg.stages[name]
    done_path = os.path.join(workdir, name, checkpoints.DONE)
    done = checkpoints.read_json(done_path) if os.path.exists(done_path) else {}
    if "wall_time_s" in done:
      results["wall_time_s"][name] = done["wall_time_s"]
    if st.kind == "classifier" and done:
      results["classifier"] = {"test_accuracy": done["test_accuracy"]}
    if st.kind == "evaluate":
      for model in st.models:                      # the config's order: Standard, Unseen, SGU...
        path = os.path.join(workdir, name, f"{model}.json")
        if not os.path.exists(path):
          continue
        entry = checkpoints.read_json(path)
        results["wall_time_s"][f"{name}/{model}"] = entry.get("wall_time_s")
        train_done = os.path.join(workdir, model, checkpoints.DONE)
        if os.path.exists(train_done):
          entry["train_wall_time_s"] = checkpoints.read_json(train_done).get("wall_time_s")
        results["models"][model] = entry
  return results


def markdown(results: dict) -> str:
  """report.md: the paper's Table 1 (toy) or Table 2 (images) shape, plus sample grids."""
  models = results["models"]
  names = list(models)
  lines = [f"# {results['experiment'].upper()} on {results['dataset']}", "",
           f"- data: `{results['data_source']}`",
           f"- forgotten: {', '.join(results['forget_class_names'])} (labels {results['forget_classes']})"]
  if results.get("classifier"):
    lines.append(f"- evaluation classifier test accuracy: {results['classifier']['test_accuracy']:.4f}")
  unit = next((m["nll"]["unit"] for m in models.values()), "bits/dim")
  conv = next((m["nll"].get("convention") for m in models.values()), "")
  offset = next((m["nll"].get("offset") for m in models.values()), 0.0)
  lines.append(f"- NLL in {unit} ({conv} convention, offset {offset:+g}); unlearning ratio from "
               f"{next((m['num_samples'] for m in models.values()), 0)} samples per model")
  lines.append("")
  if results["dataset"] == "toy_gmm":
    lines += ["## NLL of the test data (SGU paper, Table 1 shape)", "",
              "| Test | " + " | ".join(PRETTY.get(n, n) for n in names) + " |",
              "|---|" + "---|" * len(names)]
    lines.append("| D_g | " + " | ".join(f"{models[n]['nll']['retain']:.2f}" for n in names) + " |")
    lines.append("| D_f | " + " | ".join(f"{models[n]['nll']['forget']:.2f}" for n in names) + " |")
    lines.append("| D_f / D_g | " + " | ".join(
        f"{models[n]['nll']['forget'] / models[n]['nll']['retain']:.2f}" for n in names) + " |")
    lines.append("| unlearning ratio | " + " | ".join(
        f"{100 * models[n]['unlearning_ratio']:.2f}%" for n in names) + " |")
  else:
    lines += ["## Unlearning ratio and NLL (SGU paper, Table 2 shape)", "",
              "| Method | UR (%) | NLL D_g | NLL D_f | D_f - D_g |", "|---|---|---|---|---|"]
    for n in names:
      m = models[n]
      lines.append(f"| {PRETTY.get(n, n)} | {100 * m['unlearning_ratio']:.2f} | {m['nll']['retain']:.3f} | "
                   f"{m['nll']['forget']:.3f} | {m['nll']['forget'] - m['nll']['retain']:+.3f} |")
  lines += ["", "## Samples", ""]
  for n in names:
    lines.append(f"**{PRETTY.get(n, n)}**: ![{n}]({models[n]['samples_png']})")
    lines.append("")
  if results["wall_time_s"]:
    lines += ["## Wall time (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in results["wall_time_s"].items() if v is not None]
  return "\n".join(lines) + "\n"


def write_results(exp, workdir: str) -> dict:
  results = collect(exp, workdir)
  checkpoints.write_json(os.path.join(workdir, "results.json"), results)
  tmp = os.path.join(workdir, "report.md.tmp")
  with open(tmp, "w") as f:
    f.write(markdown(results))
  os.replace(tmp, os.path.join(workdir, "report.md"))
  return results
