"""results.json, report.md and PNG sample grids.

results.json schema (documented in the README):
  {
    "experiment": "sgu", "data_source": "...", "dataset": "mnist",
    "forget_classes": [3], "forget_class_names": ["3"],
    "classifier": {"test_accuracy": 0.98} | null,
    "models": {
      "<stage>": {"unlearning_ratio": float, "num_samples": int, "class_histogram": [...],
                  "confident_share": float, "confidence_threshold": float, "histogram_tv": float,
                  "retain_histogram_tv": float, "recognised": bool,      (image data)
                  "nll": {"retain": float, "forget": float, "unit": "bits/dim",
                          "offset": float, "convention": "score_sde" | "density",
                          "num_examples": int},
                  "samples_png": "evaluate/<stage>_samples.png", "wall_time_s": float,
                  "train_wall_time_s": float}
    },
    "wall_time_s": {"<stage>": float}
  }
Class-conditional experiments (DiMUM / DiMRA) have instead, per model,
  {"ar_mu": float, "ar_cl": float, "frechet_distance": float, "retain_accuracy": float,
   "confident_share": float, "confidence_threshold": float, "recognised": bool,
   "num_samples": int, "fd_num_samples": int, "forget_class_histogram": [...],
   "samples_png": ..., "method": "dimum", "unlearn_steps": int, "seconds_per_step": float}
and per attack stage "attacks": {"<stage>": {"model": "<unlearn stage>", "data": "<stream>",
   "steps": [...], "ar_dimra": [...], "ar_cl": [...], "max_ar_dimra": float,
   "max_ar_dimra_step": int, "final_ar_dimra": float, "min_ar_cl": float,
   "csv": "<stage>/curve.csv"}}, plus "masks": {"<stage>": {"method", "kept_fraction" | "fisher_mean"}}.
An unlearning model whose method logs diagnostics (EraseDiff: the value gap g = loss/forget,
lambda_t, cosines of the update with grad L_r and grad g) also has
  "training_log": {"steps": [...], "<metric>": [...], "summary": {"<metric>": {"first", "last", "mean"}}}
from <stage>/metrics.jsonl.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from unlearn_jax import checkpoints

PRETTY = {"standard": "Standard", "unseen": "Unseen", "sgu_orthogonal": "SGU-Orthogonal",
          "sgu_obtuse": "SGU-Obtuse", "pretrained": "Pretrained", "ga": "Gradient ascent",
          "salun": "SalUn", "dimum": "DiMUM", "sfron": "SFR-on (Sfront)", "finetune": "Fine-tune",
          "erasediff": "EraseDiff", "core": "CORE", "esd": "ESD", "ca": "Concept Ablation",
          "sa": "Selective Amnesia", "shs": "Scissorhands", "neggrad": "NegGrad", "base": "Base (pre-trained)"}
#: logged metrics a report keeps per unlearning stage (EraseDiff's Fig. 2 diagnostics and the losses).
LOGGED = ("loss/forget", "loss/retain", "method/lambda_t", "method/cos_update_retain",
          "method/cos_update_forget", "method/cos_retain_forget")
STREAM_NAMES = {"retain": "D_r (assumption i)", "test_retain": "test w/o forget (assumption ii)"}


def save_samples(path: str, x: np.ndarray, is_image: bool, labels: Optional[np.ndarray] = None,
                 cols: Optional[int] = None) -> None:
  """A grid of images in [0, 1] (NHWC; square unless `cols`), or a scatter plot of 2-D points."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if is_image:
    from PIL import Image
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
  if exp.conditional:
    results["alternative_classes"] = [int(exp.alt[c]) for c in exp.forget_labels]
    results["attacks"], results["masks"] = {}, {}
  for name in cfg.stage_order:
    st = cfg.stages[name]
    done_path = os.path.join(workdir, name, checkpoints.DONE)
    done = checkpoints.read_json(done_path) if os.path.exists(done_path) else {}
    if "wall_time_s" in done:
      results["wall_time_s"][name] = done["wall_time_s"]
    if st.kind == "classifier" and done:
      results["classifier"] = {k: v for k, v in done.items() if "accuracy" in k or k == "loaded_from"}
    if st.kind == "mask" and done:
      results["masks"][name] = {k: done[k] for k in ("method", "kept_fraction", "fisher_mean") if k in done}
    if st.kind == "attack":
      curve_path = os.path.join(workdir, name, "curve.json")
      if os.path.exists(curve_path):
        results["attacks"][name] = _attack_summary(name, st, checkpoints.read_json(curve_path))
    if st.kind == "evaluate":
      for model in st.models:                      # the config's order: Standard, Unseen, SGU...
        path = os.path.join(workdir, name, f"{model}.json")
        if not os.path.exists(path):
          continue
        entry = checkpoints.read_json(path)
        results["wall_time_s"][f"{name}/{model}"] = entry.get("wall_time_s")
        train_done = os.path.join(workdir, model, checkpoints.DONE)
        if os.path.exists(train_done):
          td = checkpoints.read_json(train_done)
          entry["train_wall_time_s"] = td.get("wall_time_s")
          if td.get("steps"):
            entry["seconds_per_step"] = td["wall_time_s"] / td["steps"]
        mst = cfg.stages.get(model)                  # None: a Stable Diffusion "base" model
        entry["method"] = "base" if mst is None else (mst.method if mst.kind == "unlearn" else mst.kind)
        entry["unlearn_steps"] = int(mst.steps) if mst is not None and mst.kind == "unlearn" else 0
        log = training_log(os.path.join(workdir, model))
        if entry["method"] not in ("base",) and mst.kind == "unlearn" and \
           any(k.startswith("method/") for k in log.get("summary", {})):
          entry["training_log"] = log
        results["models"][model] = entry
  if getattr(exp, "sd", None) is not None:
    from unlearn_jax import sd_experiment
    ctx = exp.sd
    results.update(forget_styles=list(ctx.forget_styles), alt_style=ctx.data.styles[ctx.alt_style_id],
                   styles=list(ctx.data.styles), objects=list(ctx.data.objects),
                   model_dir=exp.model_cfg.model_dir, trainable=exp.model_cfg.trainable)
    results["autoencoder"] = sd_experiment.autoencoder_summary(exp, workdir)
    results["forget_class_names"] = [f"{len(exp.forget_labels)} prompts of " + ", ".join(ctx.forget_styles)]
    results["forget_classes"] = results["forget_classes"][:0]
    results.pop("alternative_classes", None)
    first = [cfg.stages[n].models[0] for n in cfg.stage_order
             if cfg.stages[n].kind == "evaluate" and cfg.stages[n].models]
    if first:
      sd_experiment.add_sfid(results, first[0])
  return results


def training_log(stage_dir: str) -> dict:
  """The stage's logged LOGGED metrics over steps, with first / last / mean of each."""
  from unlearn_jax import training
  rows = training.read_history(stage_dir)
  keys = [k for k in LOGGED if rows and all(k in r for r in rows)]
  if not keys:
    return {}
  out = {"steps": [r["step"] for r in rows], **{k: [r[k] for r in rows] for k in keys}}
  out["summary"] = {k: {"first": out[k][0], "last": out[k][-1], "mean": float(np.mean(out[k]))} for k in keys}
  return out


def _attack_summary(name: str, st, curve: dict) -> dict:
  steps = sorted(int(k) for k in curve)
  ar = [curve[str(k)]["ar"] for k in steps]
  ar_cl = [curve[str(k)]["ar_cl"] for k in steps]
  i = int(np.nanargmax(ar)) if ar else 0
  return {"model": st.init, "data": st.data, "steps": steps, "ar_dimra": ar, "ar_cl": ar_cl,
          "max_ar_dimra": ar[i] if ar else float("nan"), "max_ar_dimra_step": steps[i] if ar else 0,
          "final_ar_dimra": ar[-1] if ar else float("nan"),
          "min_ar_cl": float(np.nanmin(ar_cl)) if ar_cl else float("nan"),
          "csv": os.path.join(name, "curve.csv")}


def _pretty(name: str) -> str:
  """A stage's display name: PRETTY's, or "<method> (<variant>)" for a "method_variant" stage."""
  if name in PRETTY:
    return PRETTY[name]
  for method in sorted(PRETTY, key=len, reverse=True):
    if name.startswith(method + "_"):
      return f"{PRETTY[method]} ({name[len(method) + 1:]})"
  return name


def conditional_markdown(results: dict, workdir: str) -> list:
  """Tables shaped like the DiMUM paper's Table I (FD, AR_MU) and II/III (max AR_DiMRA),
  and AR_DiMRA curves shaped like its Figs. 5-6 (one PNG per auxiliary data set)."""
  from unlearn_jax.reporting import figures
  models, attacks = results["models"], results.get("attacks", {})
  lines = ["## After unlearning (DiMUM paper, Table I shape)", "",
           "FD: Fréchet distance between retain-class samples and D_r on the evaluation classifier's "
           "features (not Inception FID). AR_MU: share of forget-conditioned samples classified as "
           "the forgotten class; AR_CL: as the alternative class.", "",
           "| Method | unlearning steps | FD | AR_MU | AR_CL | retain-class accuracy | confident (%) | s/step |",
           "|---|---|---|---|---|---|---|---|"]
  for n, m in models.items():
    sps = m.get("seconds_per_step")
    conf = m.get("confident_share")
    lines.append(f"| {_pretty(n)} | {m.get('unlearn_steps', 0)} | {m['frechet_distance']:.3f} | "
                 f"{m['ar_mu']:.3f}{_flag(m)} | {m['ar_cl']:.3f} | {m['retain_accuracy']:.3f} | "
                 f"{'–' if conf is None else f'{100 * conf:.1f}'} | {'' if sps is None else f'{sps:.3f}'} |")
  bad = [_pretty(n) for n, m in models.items() if m.get("recognised") is False]
  if bad:
    lines += ["", f"**(!) Not a result:** the classifier recognises too few retain-class samples of "
              f"{', '.join(bad)} (confident share below `config.eval.min_confident_share`): their AR "
              "measures a broken model, not forgetting."]
  if attacks:
    lines += ["", "## Comparison: unlearning and robustness to DiMRA", "",
              "| Method | AR_MU | FD | max AR_DiMRA | s/step |", "|---|---|---|---|---|"]
    for n, m in models.items():
      worst = [a["max_ar_dimra"] for a in attacks.values() if a["model"] == n]
      sps = m.get("seconds_per_step")
      lines.append(f"| {_pretty(n)} | {m['ar_mu']:.3f} | {m['frechet_distance']:.3f} | "
                   f"{max(worst) if worst else float('nan'):.3f} | {'' if sps is None else f'{sps:.3f}'} |")
  logged = {n: m["training_log"] for n, m in models.items() if m.get("training_log")}
  if logged:
    lines += ["", "## Unlearning diagnostics (EraseDiff paper, Fig. 2)", "",
              "g = L_f(theta) - L_f(phi^K) (`loss/forget`); lambda_t of Theorem 3.1; cosine similarity of "
              "the update with grad L_r and with grad g. first -> last logged step (mean).", "",
              "| Method | " + " | ".join(k.split("/")[-1] for k in LOGGED[2:]) + " | g |",
              "|---|" + "---|" * (len(LOGGED) - 1)]
    for n, log in logged.items():
      cells = []
      for k in LOGGED[2:] + ("loss/forget",):
        v = log["summary"].get(k)
        cells.append("" if v is None else f"{v['first']:.3g} -> {v['last']:.3g} ({v['mean']:.3g})")
      lines.append(f"| {_pretty(n)} | " + " | ".join(cells) + " |")
      pngs = []
      for key, label in (("loss/forget", "g"), ("method/lambda_t", "lambda_t"), ("method/cos_update_retain", None)):
        if key not in log:
          continue
        png = f"{n}_{label or 'cosines'}.png"
        if label:
          curves = {label: (log["steps"], log[key])}
        else:
          curves = {k.split("/")[-1]: (log["steps"], log[k]) for k in LOGGED[3:] if k in log}
        figures.plot_curves(os.path.join(workdir, png), curves, title=f"{_pretty(n)}: {label or 'cosines'}",
                            xlabel="unlearning step", ylabel=label or "cosine similarity")
        pngs.append(f"![{n} {label or 'cosines'}]({png})")
      lines.append("\n" + " ".join(pngs) + "\n")
  if attacks:
    datas = list(dict.fromkeys(a["data"] for a in attacks.values()))
    lines += ["", "## DiMRA: largest AR_DiMRA during the attack (DiMUM paper, Tables II-III shape)", "",
              "| Method | unlearning steps | " + " | ".join(STREAM_NAMES.get(d, d) for d in datas) + " |",
              "|---|---|" + "---|" * len(datas)]
    for model in dict.fromkeys(a["model"] for a in attacks.values()):
      cells = []
      for d in datas:
        a = next((a for a in attacks.values() if a["model"] == model and a["data"] == d), None)
        cells.append("" if a is None else f"{a['max_ar_dimra']:.3f} (step {a['max_ar_dimra_step']}, "
                     f"final {a['final_ar_dimra']:.3f}, min AR_CL {a['min_ar_cl']:.3f})")
      steps = models.get(model, {}).get("unlearn_steps", "")
      lines.append(f"| {_pretty(model)} | {steps} | " + " | ".join(cells) + " |")
    lines += ["", "## AR_DiMRA curves (DiMUM paper, Figs. 5-6 shape)", ""]
    for d in datas:
      curves = {_pretty(a["model"]): (a["steps"], a["ar_dimra"]) for a in attacks.values() if a["data"] == d}
      png = f"attack_curves_{d}.png"
      figures.plot_curves(os.path.join(workdir, png), curves, title=f"DiMRA on {STREAM_NAMES.get(d, d)}",
                          xlabel="attack step", ylabel="AR_DiMRA", ylim=(0.0, 1.0))
      lines.append(f"![{d}]({png})  CSV per attack: " +
                   ", ".join(f"`{a['csv']}`" for a in attacks.values() if a["data"] == d))
      lines.append("")
  return lines


def concept_markdown(results: dict) -> list:
  """UnlearnCanvas metrics shaped like the CORE paper's Table 1 (UA / IRA / CRA / SFID, in %)."""
  models, attacks = results["models"], results.get("attacks", {})
  lines = ["## Style unlearning (CORE paper, Table 1 shape; %)", "",
           "UA: forget-style prompts whose images are not classified as that style; IRA: retained-style "
           "prompts classified as their style; CRA: images classified as their prompt's object; SFID: "
           "min(100 FD_base / FD, 100) with FD on the style classifier's features (not Inception). "
           "AR_MU: forget-style prompts whose style is in the classifier's top 3 (DiMUM paper Sec. VI-B). "
           "confident: images the style classifier assigns a style with probability >= "
           "`config.eval.confidence_threshold`; (!) below `config.eval.min_confident_share`.", "",
           "| Method | UA | IRA | CRA | SFID | Total | AR_MU (top-3) | AR_CL | max AR_DiMRA | confident (%) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for n, m in models.items():
    cells = [100 * m.get(k, float("nan")) for k in ("ua", "ira", "cra")] + [m.get("sfid", float("nan"))]
    worst = [a["max_ar_dimra"] for a in attacks.values() if a["model"] == n]
    conf = m.get("confident_share")
    lines.append(f"| {_pretty(n)} | " + " | ".join(f"{v:.1f}" for v in cells) + f" | {sum(cells):.1f} | "
                 f"{m['ar_mu']:.3f} | {m['ar_cl']:.3f} | {max(worst) if worst else float('nan'):.3f} | "
                 f"{'–' if conf is None else f'{100 * conf:.1f}'}{_flag(m)} |")
  return lines + [""]


def markdown(results: dict, workdir: str = ".") -> str:
  """report.md: the SGU paper's Table 1 (toy) / Table 2 (images) shape, or for
  class-conditional experiments the DiMUM paper's Tables I-III and curves; plus sample grids."""
  models = results["models"]
  names = list(models)
  lines = [f"# {results['experiment'].upper()} on {results['dataset']}", "",
           f"- data: `{results['data_source']}`",
           f"- forgotten: {', '.join(results['forget_class_names'])}"
           + (f" (labels {results['forget_classes']})" if results["forget_classes"] else "")]
  for k, v in (results.get("classifier") or {}).items():
    lines.append(f"- evaluation classifier {k.replace('_', ' ')}: " + (f"{v:.4f}" if isinstance(v, float) else v))
  if "forget_styles" in results:
    lines.append(f"- Stable Diffusion `{results['model_dir']}`, trainable: {results['trainable']}; "
                 f"alternative style: {results['alt_style']}")
    lines += [f"- autoencoder: {results['autoencoder']['summary']}"] if "autoencoder" in results else []
    lines.append("")
    lines += concept_markdown(results)
  if "attacks" in results:
    if "alternative_classes" in results:
      lines.append(f"- alternative classes: {results['alternative_classes']}")
    for k, v in results.get("masks", {}).items():
      if "kept_fraction" not in v:
        what = f"mean Fisher {v.get('fisher_mean', float('nan')):.3g}"
      elif v["method"] == "shs":
        what = f"re-initialises {v['kept_fraction']:.3f} of the weights"
      else:
        what = f"keeps {v['kept_fraction']:.3f} of the weights"
      lines.append(f"- mask `{k}` ({v['method']}): {what}")
    lines.append("")
    lines += conditional_markdown(results, workdir)
    return _tail(lines, results, names)
  unit = next((m["nll"]["unit"] for m in models.values()), "bits/dim")
  conv = next((m["nll"].get("convention") for m in models.values()), "")
  offset = next((m["nll"].get("offset") for m in models.values()), 0.0)
  lines.append(f"- NLL in {unit} ({conv} convention, offset {offset:+g}); unlearning ratio from "
               f"{next((m['num_samples'] for m in models.values()), 0)} samples per model")
  lines.append("")
  if results["dataset"] == "toy_gmm":
    lines += ["## NLL of the test data (SGU paper, Table 1 shape)", "",
              "| Test | " + " | ".join(_pretty(n) for n in names) + " |",
              "|---|" + "---|" * len(names)]
    lines.append("| D_g | " + " | ".join(f"{models[n]['nll']['retain']:.2f}" for n in names) + " |")
    lines.append("| D_f | " + " | ".join(f"{models[n]['nll']['forget']:.2f}" for n in names) + " |")
    lines.append("| D_f / D_g | " + " | ".join(
        f"{models[n]['nll']['forget'] / models[n]['nll']['retain']:.2f}" for n in names) + " |")
    lines.append("| unlearning ratio | " + " | ".join(
        f"{100 * models[n]['unlearning_ratio']:.2f}%" for n in names) + " |")
  else:
    thr = next((m.get("confidence_threshold") for m in models.values()), None)
    lines += ["## Unlearning ratio and NLL (SGU paper, Table 2 shape)", "",
              "| Method | UR (%) | NLL D_g | NLL D_f | D_f - D_g | confident (%) | TV(hist, D) | TV(retained) |",
              "|---|---|---|---|---|---|---|---|"]
    for n in names:
      m = models[n]
      lines.append(f"| {_pretty(n)} | {100 * m['unlearning_ratio']:.2f}{_flag(m)} | "
                   f"{m['nll']['retain']:.3f} | {m['nll']['forget']:.3f} | "
                   f"{m['nll']['forget'] - m['nll']['retain']:+.3f} | {_quality_cells(m)} |")
    lines += ["", f"confident: share of samples the classifier assigns a class with probability >= {thr}; "
              "TV: total-variation distance of the samples' class histogram from the training data's "
              "(over all classes; over the retained classes, renormalised)."]
    lines += _unrecognised_note(models, names)
    neg = [_pretty(n) for n in names if min(models[n]["nll"]["retain"], models[n]["nll"]["forget"]) < 0]
    if neg:
      lines += ["", f"**(!) NLL below 0 bits/dim** for {', '.join(neg)}: impossible for uniformly "
                "dequantized 8-bit data, so the probability-flow ODE solve is inaccurate (tighten "
                "`config.eval.nll.rtol` / `atol`, e.g. to score_sde's 1e-5)."]
  return _tail(lines, results, names)


def _flag(m: dict) -> str:
  """' (!)' after a rate computed on samples the classifier does not recognise."""
  return " (!)" if m.get("recognised") is False else ""


def _quality_cells(m: dict) -> str:
  if "confident_share" not in m:
    return "– | – | –"
  return f"{100 * m['confident_share']:.1f} | {m['histogram_tv']:.3f} | {m['retain_histogram_tv']:.3f}"


def _unrecognised_note(models: dict, names) -> list:
  bad = [_pretty(n) for n in names if models[n].get("recognised") is False]
  if not bad:
    return []
  return ["", f"**(!) Not a result:** the classifier recognises too few samples of {', '.join(bad)} "
          "(confident share below `config.eval.min_confident_share`): their rates measure a broken "
          "model, not forgetting."]


def _tail(lines: list, results: dict, names) -> str:
  models = results["models"]
  lines += ["", "## Samples", ""]
  for n in names:
    lines.append(f"**{_pretty(n)}**: ![{n}]({models[n]['samples_png']})")
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
    f.write(markdown(results, workdir))
  os.replace(tmp, os.path.join(workdir, "report.md"))
  return results
