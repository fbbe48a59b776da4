"""results.json: every stage's outputs gathered into one file (the schema is in the README).

    results = collect(exp, workdir)   # the report stage writes it (`stages.report`)

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
                  "train_wall_time_s": float,
                  "inpaint" | "reconstruct": {                 (config.eval.<kind>.num_examples > 0)
                      "accuracy": {"retain": float, "forget": float}, "clean_accuracy": {...},
                      "num_examples": {...}, "target": "label" | "prediction", "split": "test" | "train",
                      "clip_distance": {"retain"[, "forget"]: float},   (config.eval.clip_dir only)
                      "mask": "upper half" | "t_start": float, "n_steps": int, "png": "evaluate/<stage>_<kind>.png"}}
    },
    "forget_attribute": "Bangs",                             (CelebA attribute forgetting only)
    "wall_time_s": {"<stage>": float},
    "compile_s": {"<stage>": float},         (training stages: the train step's XLA compile, last run)
    "not_a_result": {"<dotted path>": "non-finite (nan)"}   (only where a number is null for that reason)
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
Every rate of a model's samples (`RATES`: unlearning_ratio, ar_mu, ar_cl on num_samples;
UnlearnCanvas' ua / ira / cra on n_forget / n_retain / n_cra) has beside it "<rate>_ci95":
[low, high], Wilson's 95 % interval on the samples it counts; so does a "nudity" entry's
flagged_share (on its images).
results.json is strict JSON (`strict`): a number that is not one (a diverged NLL solve, a rate or
distance of nothing: NaN or infinite) is written as null, and "not_a_result" names each with
its reason; report.md prints "not a result" in its cell (`markdown.mark_not_results`).
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, Tuple

import numpy as np

from unlearn_jax import checkpoints
from unlearn_jax import training
from unlearn_jax.evaluation.rates import wilson_interval

#: the rates of a model entry and the entry key of the number of samples each counts (each
#: gets a "<rate>_ci95").
RATES = {"unlearning_ratio": "num_samples", "ar_mu": "num_samples", "ar_cl": "num_samples",
         "ua": "n_forget", "ira": "n_retain", "cra": "n_cra"}

#: logged metrics a report keeps per unlearning stage (EraseDiff's Fig. 2 diagnostics and the losses).
LOGGED = ("loss/forget", "loss/retain", "method/lambda_t", "method/cos_update_retain",
          "method/cos_update_forget", "method/cos_retain_forget")


def collect(exp, workdir: str) -> dict:
  """Gathers every stage's outputs into the results.json structure."""
  cfg = exp.config
  results = {"experiment": cfg.experiment, "dataset": cfg.data.name, "data_source": exp.train.source,
             "forget_classes": list(exp.forget_labels),
             "forget_class_names": [exp.train.class_names[i] for i in exp.forget_labels],
             "classifier": None, "models": {}, "wall_time_s": {}, "compile_s": {}}
  if exp.conditional:
    results["alternative_classes"] = [int(exp.alt[c]) for c in exp.forget_labels]
    results["attacks"], results["masks"] = {}, {}
  for name in cfg.stage_order:
    st = cfg.stages[name]
    done_path = os.path.join(workdir, name, checkpoints.DONE)
    done = checkpoints.read_json(done_path) if os.path.exists(done_path) else {}
    if "wall_time_s" in done:
      results["wall_time_s"][name] = done["wall_time_s"]
    compile_path = os.path.join(workdir, name, training.COMPILE_FILE)
    if os.path.exists(compile_path):
      results["compile_s"][name] = checkpoints.read_json(compile_path)["compile_s"]
    if st.kind == "classifier" and done:
      results["classifier"] = {k: v for k, v in done.items() if "accuracy" in k or k == "loaded_from"}
    if st.kind == "mask" and done:
      results["masks"][name] = {k: done[k] for k in ("method", "kept_fraction", "fisher_mean") if k in done}
    if st.kind == "attack":
      curve_path = os.path.join(workdir, name, "curve.json")
      if os.path.exists(curve_path):
        results.setdefault("attacks", {})[name] = _attack_summary(name, st, checkpoints.read_json(curve_path))
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
        mst = cfg.stages.get(model)                  # None: a task's named model ("base")
        entry["method"] = model if mst is None else (mst.method if mst.kind == "unlearn" else mst.kind)
        entry["unlearn_steps"] = int(mst.steps) if mst is not None and mst.kind == "unlearn" else 0
        log = training_log(os.path.join(workdir, model))
        if mst is not None and mst.kind == "unlearn" and \
           any(k.startswith("method/") for k in log.get("summary", {})):
          entry["training_log"] = log
        entry.update(rate_intervals(entry))
        results["models"][model] = entry
  exp.task.finalize(exp, results, workdir)
  return results


def rate_intervals(entry: dict) -> dict:
  """{"<rate>_ci95": [low, high]} for each finite rate of `RATES` in a model entry that has its
  sample count; and a "nudity" entry's copy with its flagged_share's, on its images."""
  out = {}
  for k, count in RATES.items():
    v, n = entry.get(k), entry.get(count)
    if n and isinstance(v, (int, float)) and np.isfinite(v):
      out[f"{k}_ci95"] = list(wilson_interval(v, n))
  nud = entry.get("nudity")
  if isinstance(nud, dict) and nud.get("images") and isinstance(nud.get("flagged_share"), (int, float)):
    out["nudity"] = {**nud, "flagged_share_ci95": list(wilson_interval(nud["flagged_share"], nud["images"]))}
  return out


def training_log(stage_dir: str) -> dict:
  """The stage's logged LOGGED metrics over steps, with first / last / mean of each."""
  rows = training.read_history(stage_dir)
  keys = [k for k in LOGGED if rows and all(k in r for r in rows)]
  if not keys:
    return {}
  out = {"steps": [r["step"] for r in rows], **{k: [r[k] for r in rows] for k in keys}}
  out["summary"] = {k: {"first": out[k][0], "last": out[k][-1], "mean": float(np.mean(out[k]))} for k in keys}
  return out


def attack_label(st) -> str:
  """An attack stage's column in the report: its data stream for a DiMRA / benign fine-tuning
  attack, "fewshot<k>" for few-shot relearning, the attack's name for the condition attacks."""
  if st.attack != "finetune":
    return st.attack
  return f"fewshot{st.shots}" if st.data == "fewshot" else st.data


def _attack_summary(name: str, st, curve: dict) -> dict:
  steps = sorted(int(k) for k in curve)
  ar = [curve[str(k)]["ar"] for k in steps]
  ar_cl = [curve[str(k)]["ar_cl"] for k in steps]
  i = int(np.nanargmax(ar)) if ar else 0
  return {"model": st.init, "data": st.data, "attack": attack_label(st), "steps": steps, "ar_dimra": ar,
          "ar_cl": ar_cl,
          "max_ar_dimra": ar[i] if ar else float("nan"), "max_ar_dimra_step": steps[i] if ar else 0,
          "final_ar_dimra": ar[-1] if ar else float("nan"),
          "min_ar_cl": float(np.nanmin(ar_cl)) if np.isfinite(ar_cl).any() else float("nan"),
          "csv": os.path.join(name, "curve.csv")}


def strict(results: dict) -> Tuple[dict, Dict[str, str]]:
  """(`results` with every non-finite number as None, {dotted path: reason} of each one), so
  results.json is strict JSON and says which of its nulls are numbers that are not results; the
  reasons are also stored under results["not_a_result"]."""
  reasons: Dict[str, str] = {}

  def walk(x: Any, path: str):
    if isinstance(x, dict):
      return {k: walk(v, f"{path}.{k}" if path else str(k)) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
      return [walk(v, f"{path}.{i}") for i, v in enumerate(x)]
    if isinstance(x, np.generic):
      x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
      reasons[path] = f"non-finite ({x})"
      return None
    return x

  out = walk({k: v for k, v in results.items() if k != "not_a_result"}, "")
  if reasons:
    out["not_a_result"] = dict(reasons)
  return out, reasons
