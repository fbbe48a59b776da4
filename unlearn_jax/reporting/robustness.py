"""The robustness card, <workdir>/robustness.json, and its report section (issue 15).

    card = build_card(cfg, workdir, results, params_of, classifier_params, splits)
    check_card(card)                          # SCHEMA; raises ValueError naming each problem
    lines = report_lines(card, workdir)       # the method x attack table and one PNG per attack

The report stage (`stages.report`) writes it when the config has attack stages.  It records
what a reader needs to compare one run with another paper's:
  data       data.name, its source, data seed, forget classes, the split sizes, the sha256 of
             the training images and labels (`data_sha256`);
  pretrained per pretrained model (the `init` of the attacked model's stage; an attacked train
             stage is its own): its parameter hash and its success as results.json evaluated it;
  methods    per attacked model: its method, variant, the method's config section and
             config.unlearn, the unlearn stage's steps / lr (the stage's, else config.optim.lr;
             a method that sets its own, e.g. EraseDiff's couple_lr, says so in its section) /
             batch_size / mask / init, its parameter hash, its results.json numbers ("evaluated");
  attacks    per attack stage: kind, data, budget, seed and the D_f indices of few-shot and
             condition attacks from <stage>/attack.json (absent in workdirs written before
             attack.json: a DiMRA finetune with the stage's budget from the config, "source"
             says which), its curve (every curve.json key over steps), its "reference" (below)
             and the summaries of `evaluation.robustness` per success measure (ar; nll_forget as
             the drop in NLL), with the utility (fd) along the curve where recorded and the area
             over the whole step budget (null for an unfinished curve: "complete" false);
  evaluator  the classifier stage and its parameter hash, eval.attack_num_samples and
             eval.num_samples, the sampler's settings (steps, guidance), NudeNet's threshold and
             model hash where used (config.eval.nudity).
Each attack also records the size of the data it trained on ("aux_size"), the optimiser
settings beside its budget ("optim": warmup, decay, clipping, condition dropout, EMA) and the
sha256 of what it trained ("result_sha256": its weights, or a condition attack's rows).
Parameter hashes (`params_sha256`): sha256 over every leaf's dtype, shape and bytes in
`jax.tree_util` order.  An attack's reference (what "steps to half" and the relative area
compare with) is the pretrained model measured inside the attack stage at step 0, with the
curve's n, sampler and keys (<stage>/reference.json, `stages.attack.write_reference`), so it
exists whether the pretrained model is a stage, a directory or a named model.  Workdirs
written before it fall back to results.json (`REFERENCE_SOURCES`): AR_MU
(class-conditional, UnlearnCanvas's top-3), the unlearning ratio (unconditional: the share of
samples of a forgotten class, which is what an attack's "ar" measures there), NudeNet's flagged
share (prompts); for nll_forget its NLL of D_f (results.json's models.<pretrained>.nll.forget).
Neither gives no reference (steps to half: None).  NaN is written as
null (strict JSON).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
from typing import Any, Callable, Dict, Optional

import jax
import numpy as np

from unlearn_jax import checkpoints
from unlearn_jax.errors import UserError
from unlearn_jax.evaluation import robustness as rb
from unlearn_jax.evaluation.rates import wilson_interval
from unlearn_jax.experiment import first_stage, pretrained_of, stage_seed
from unlearn_jax.reporting import figures
from unlearn_jax.reporting.markdown import STREAM_NAMES, pretty
from unlearn_jax.unlearning import methods as methods_lib

#: 2: per attack its own pretrained reference (<stage>/reference.json), its D_f indices, the
#: area over the budget (null for an unfinished curve).
VERSION = 2
CARD_FILE = "robustness.json"
ATTACK_FILE = "attack.json"
CURVE_FILE = "curve.json"
REFERENCE_FILE = "reference.json"
PROMPTS_FILE = "prompts.json"
#: curve measures beside AR / FD / NLL that the report tabulates where recorded.
EXTRA_MEASURES = {"ar_top1": "Top-1 AR (UnlearnCanvas)", "ua": "UA (UnlearnCanvas: share not classified as a "
                  "forgotten style)", "nudity_total": "NudeNet detections (total, forget prompts)",
                  "clip_score": "CLIP score (COCO captions; utility, higher is better)"}
#: where a pretrained model's success is read from: (measure, results.json path), first found.
REFERENCE_SOURCES = {"ar": (("ar_mu",), ("unlearning_ratio",), ("nudity", "flagged_share")),
                     "nll_forget": (("nll", "forget"),)}
NUM = (int, float)
OPT_NUM = (int, float, type(None))
OPT_STR = (str, type(None))
#: the card's required keys and their types; "*" applies its schema to every entry of a dict.
SUMMARY_SCHEMA = {"direction": str, "max": OPT_NUM, "max_step": OPT_NUM, "final": OPT_NUM,
                  "steps_to_half": OPT_NUM, "steps_to_half_interpolated": bool, "reference": OPT_NUM,
                  "auc": OPT_NUM, "auc_relative": OPT_NUM, "auc_budget": OPT_NUM}
SCHEMA = {
    "version": int, "experiment": str, "order": {"methods": list, "attacks": list},
    "data": {"name": str, "source": str, "seed": int, "config_seed": int, "forget_classes": list,
             "forget_class_names": list, "splits": dict, "sha256": OPT_STR},
    "pretrained": {"*": {"params_sha256": OPT_STR, "success": dict, "reference_source": dict}},
    "evaluator": {"classifier_stage": OPT_STR, "classifier_sha256": OPT_STR, "attack_num_samples": int,
                  "num_samples": int, "sampler": dict, "measure": dict},
    "methods": {"*": {"stage": str, "method": str, "variant": str, "settings": dict,
                      "unlearn": {"steps": int, "lr": OPT_NUM, "batch_size": int, "mask": str, "init": str},
                      "pretrained": OPT_STR, "params_sha256": OPT_STR}},
    "attacks": {"*": {"model": str, "attack": str, "data": str, "label": str, "seed": int, "source": str,
                      "budget": {"steps": int, "lr": OPT_NUM, "batch_size": int, "shots": int, "eps": NUM,
                                 "classes": list},
                      "pretrained": OPT_STR, "complete": bool, "curve": {"steps": list},
                      "fewshot_indices": list, "aux_size": OPT_NUM, "optim": (dict, type(None)),
                      "result_sha256": OPT_STR, "prompts": list,
                      "reference": {"pretrained": OPT_STR, "values": (dict, type(None)), "num_samples": OPT_NUM,
                                    "seed": OPT_NUM, "source": OPT_STR},
                      "summary": {"*": SUMMARY_SCHEMA}}},
}


def params_sha256(tree) -> str:
  """sha256 (hex) over each leaf's dtype, shape and bytes, leaves in `jax.tree_util` order."""
  h = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(tree):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def data_sha256(ds) -> Optional[str]:
  """sha256 (hex) of a data set's images and labels (`params_sha256` of those it has as
  arrays): which data a card's models were trained and attacked on, whatever its source calls
  itself; None for a data set with neither."""
  arrays = {k: np.asarray(getattr(ds, k)) for k in ("images", "labels") if getattr(ds, k, None) is not None}
  arrays = {k: v for k, v in arrays.items() if v.dtype != object}
  return params_sha256(arrays) if arrays else None


def result_sha256(stage_dir: str) -> Optional[str]:
  """`params_sha256` of what an attack stage trained, as its last checkpoint holds it (the
  fine-tuned weights; a condition attack's rows); None without a readable checkpoint."""
  try:
    return params_sha256(checkpoints.load_raw(stage_dir)["params"])
  except (UserError, FileNotFoundError, KeyError, TypeError):
    return None


def final_prompts(stage_dir: str) -> list:
  """A discrete prompt attack's prompts at its last curve point (<stage>/prompts.json); []."""
  path = os.path.join(stage_dir, PROMPTS_FILE)
  if not os.path.exists(path):
    return []
  prompts = checkpoints.read_json(path)
  return list(prompts[max(prompts, key=int)]) if prompts else []


def split_sizes(exp) -> Dict[str, int]:
  """The number of examples of each split and stream of an experiment."""
  sizes = {"train": len(exp.train), "test": len(exp.test), "test_forget": len(exp.test_forget),
           "test_retain": len(exp.test_retain)}
  sizes.update({k: len(v) for k, v in exp.streams.items()})
  return sizes


def attack_info(cfg, name: str, st, stage_dir: str) -> dict:
  """<stage>/attack.json, or (older workdirs) a DiMRA finetune with the config's budget."""
  path = os.path.join(stage_dir, ATTACK_FILE)
  if os.path.exists(path):
    return dict(checkpoints.read_json(path), source=ATTACK_FILE)
  budget = {"steps": int(st.steps), "lr": float(cfg.optim.lr if st.lr is None else st.lr),
            "batch_size": int(st.batch_size or cfg.training.batch_size),
            "shots": int(getattr(st, "shots", 0)), "eps": float(getattr(st, "eps", 0.0)),
            "classes": list(getattr(st, "classes", ()))}
  return {"attack": "finetune", "data": st.data, "budget": budget, "seed": stage_seed(cfg, name),
          "init": st.init, "source": f"config (no {ATTACK_FILE}: DiMRA finetune assumed)"}


def reference_value(results: dict, pretrained: Optional[str], measure: str):
  """(the pretrained model's value of `measure`, "models.<name>.<key>") or (None, None)."""
  entry = results.get("models", {}).get(pretrained) if pretrained else None
  for path in REFERENCE_SOURCES.get(measure, ()) if entry else ():
    v = entry
    for k in path:
      v = v.get(k) if isinstance(v, dict) else None
    if isinstance(v, NUM) and not isinstance(v, bool):
      return float(v), ".".join(("models", pretrained) + path)
  return None, None


def curve_columns(curve: dict) -> dict:
  """curve.json ({"<step>": {key: value}}) as {"steps": [...], key: [...]} (NaN where missing)."""
  steps = sorted(int(k) for k in curve)
  keys = list(dict.fromkeys(k for s in steps for k in curve[str(s)]))
  out = {"steps": steps}
  for k in keys:
    out[k] = [_num(curve[str(s)].get(k, math.nan)) for s in steps]
  return out


def curve_summaries(columns: dict, references: Dict[str, Optional[float]], interpolate: bool = False,
                    budget: Optional[int] = None) -> dict:
  """`evaluation.robustness.summarize` of each success measure in the curve, the pretrained
  value of each as its reference (`rb.reference_success`), the curve's fd as utility, the
  area over `budget` steps (a curve that stops before it: no area, "auc" null)."""
  out = {}
  steps = columns["steps"]
  for measure, direction in rb.DIRECTIONS.items():
    values = columns.get(measure)
    if values is None or not any(math.isfinite(v) for v in values):
      continue
    start = float(np.asarray(values)[np.isfinite(values)][0])
    ref = rb.reference_success(references.get(measure), direction, start)
    out[measure] = rb.summarize(steps, values, reference=ref, direction=direction, utility=columns.get("fd"),
                                interpolate=interpolate, budget=budget)
  return out


def _hash_of(params_of: Callable[[str], Any], model: str) -> Optional[str]:
  try:
    return params_sha256(params_of(model))
  except (UserError, FileNotFoundError, KeyError):
    return None


def stage_reference(cfg, name: str, stage_dir: str, pre: Optional[str], results: dict) -> dict:
  """The pretrained values an attack's summaries compare with: <stage>/reference.json (measured
  in the attack stage at step 0 with the curve's n and keys, `stages.attack.write_reference`),
  else (workdirs written before it) results.json's evaluation of the pretrained model
  (`reference_value`; another n and other keys), else none."""
  path = os.path.join(stage_dir, REFERENCE_FILE)
  if os.path.exists(path):
    ref = checkpoints.read_json(path)
    return {"pretrained": ref.get("pretrained"), "values": ref.get("values"), "num_samples": ref.get("num_samples"),
            "seed": ref.get("seed"), "source": f"{name}/{REFERENCE_FILE}"}
  values, sources = {}, []
  for measure in rb.DIRECTIONS:
    v, src = reference_value(results, pre, measure)
    if v is not None:
      values[measure] = v
      sources.append(src)
  return {"pretrained": pre, "values": values or None, "num_samples": None, "seed": None,
          "source": ", ".join(sources) or None}


def method_entry(cfg, model: str, results: dict, params_of: Callable[[str], Any]) -> dict:
  """An attacked model: its method, settings, unlearn stage budget, parameter hash."""
  mst = cfg.stages.get(model)
  method = mst.method if mst is not None and mst.kind == "unlearn" else (mst.kind if mst is not None else model)
  settings = {}
  spec = methods_lib.SPECS.get(method)
  if spec is not None and spec.section is not None:
    settings[spec.section] = dataclasses.asdict(getattr(cfg, spec.section))
  if mst is not None and mst.kind == "unlearn":
    settings["unlearn"] = dataclasses.asdict(cfg.unlearn)
  unlearn = {"steps": 0, "lr": None, "batch_size": 0, "mask": "", "init": ""}
  if mst is not None:
    unlearn = {"steps": int(mst.steps), "lr": float(cfg.optim.lr if mst.lr is None else mst.lr),
               "batch_size": int(mst.batch_size or cfg.training.batch_size), "mask": mst.mask, "init": mst.init}
    if mst.mask:
      unlearn["mask_method"] = results.get("masks", {}).get(mst.mask, {}).get("method")
  after = {k: v for k, v in results.get("models", {}).get(model, {}).items() if isinstance(v, NUM)}
  return {"stage": model, "method": method, "variant": mst.variant if mst is not None else "",
          "settings": settings, "unlearn": unlearn, "pretrained": pretrained_of(cfg, model),
          "params_sha256": _hash_of(params_of, model), "evaluated": after}


def attack_label(a: dict) -> str:
  """A column name for an attack: its kind, data and the budget that sets it apart."""
  kind, data, b = a["attack"], a["data"], a["budget"]
  if kind == "finetune":
    if data == "fewshot":
      return f"few-shot k={b['shots']}"
    if data == "benign":
      return "benign fine-tuning" + (f" (classes {list(b['classes'])})" if b.get("classes") else "")
    return f"DiMRA on {STREAM_NAMES.get(data, data)}"
  if kind == "embedding":
    return "embedding" + (f" (n={b['shots']})" if b.get("shots") else "")
  if kind == "textual_inversion":
    return "textual inversion" + (f" (n={b['shots']})" if b.get("shots") else "")
  if kind == "prompt_tokens":
    return f"UnlearnDiffAtk: {b.get('tokens') or 'default'} prepended tokens, discrete prompt"
  if kind == "condition":
    # a soft prompt: continuous rows of the condition table, not UnlearnDiffAtk's discrete tokens
    return "soft prompt, embedding space" + (f" (L-inf eps={b['eps']:g})" if b.get("eps") else " (unconstrained)")
  return f"{kind} on {data}"


def build_card(cfg, workdir: str, results: dict, params_of: Callable[[str], Any], classifier_params=None,
               splits: Optional[Dict[str, int]] = None, interpolate: bool = False,
               data_hash: Optional[str] = None, nudenet_hash: Optional[str] = None) -> dict:
  """The card (module docstring) from the workdir's attack stages, results.json's entries and
  the models' parameters (`params_of(stage) -> tree`, a stage that cannot be loaded: no hash).
  "order" keeps the config's order of methods and attacks (the file's objects are key-sorted)."""
  attacks, methods, pretrained = {}, {}, {}
  for name in cfg.stage_order:
    st = cfg.stages[name]
    curve_path = os.path.join(workdir, name, CURVE_FILE)
    if st.kind != "attack" or not os.path.exists(curve_path):
      continue
    info = attack_info(cfg, name, st, os.path.join(workdir, name))
    model = st.init
    pre = pretrained_of(cfg, model)
    if model not in methods:
      methods[model] = method_entry(cfg, model, results, params_of)
    refs, sources = {}, {}
    for measure in rb.DIRECTIONS:
      refs[measure], sources[measure] = reference_value(results, pre, measure)
    if pre is not None and pre not in pretrained:
      pretrained[pre] = {"params_sha256": _hash_of(params_of, pre), "success": refs, "reference_source": sources}
    reference = stage_reference(cfg, name, os.path.join(workdir, name), pre, results)
    columns = curve_columns(checkpoints.read_json(curve_path))
    budget = dict(info["budget"])
    complete = bool(columns["steps"]) and columns["steps"][-1] >= budget["steps"]
    summary = curve_summaries(columns, {m: (reference["values"] or {}).get(m) for m in rb.DIRECTIONS},
                              interpolate, budget=budget["steps"])
    attacks[name] = {"model": model, "attack": info["attack"], "data": info["data"], "budget": budget,
                     "seed": int(info["seed"]), "source": info["source"], "label": attack_label(info),
                     "pretrained": pre, "complete": complete, "curve": columns, "summary": summary,
                     "fewshot_indices": [int(i) for i in info.get("fewshot_indices", [])], "reference": reference,
                     "aux_size": info.get("aux_size"), "optim": info.get("optim"),
                     "result_sha256": result_sha256(os.path.join(workdir, name)),
                     "prompts": final_prompts(os.path.join(workdir, name))}
  e = cfg.eval
  evaluator = {"classifier_stage": first_stage(cfg, "classifier"),
               "classifier_sha256": None if classifier_params is None else params_sha256(classifier_params),
               "attack_num_samples": int(e.attack_num_samples), "num_samples": int(e.num_samples),
               "sampler": dataclasses.asdict(e.sampler), "measure": dict(rb.SUCCESS_MEANING)}
  if e.classifier_dir:
    evaluator["classifier_dir"] = e.classifier_dir
  if e.nudity:
    evaluator["nudity_threshold"] = float(e.nudity_threshold)
    evaluator["nudenet_sha256"] = nudenet_hash
  data = {"name": cfg.data.name, "source": results.get("data_source", ""), "seed": int(cfg.data.seed),
          "config_seed": int(cfg.seed), "forget_classes": list(results.get("forget_classes", [])),
          "forget_class_names": list(results.get("forget_class_names", [])), "splits": dict(splits or {}),
          "sha256": data_hash}
  order = {"methods": list(methods), "attacks": list(attacks)}     # JSON objects are written key-sorted
  return _strict({"version": VERSION, "experiment": cfg.experiment, "order": order, "data": data,
                  "pretrained": pretrained,
                  "evaluator": evaluator, "methods": methods, "attacks": attacks})


def read_card(path: str) -> dict:
  """A card written by this version (`VERSION`); another version, or one that does not conform
  to SCHEMA, is refused with one line naming the file (UserError)."""
  card = checkpoints.read_json(path)
  version = card.get("version") if isinstance(card, dict) else None
  if version != VERSION:
    raise UserError(f"{path}: version", version, f"this library reads robustness cards of version {VERSION}; "
                    "rerun the report stage on that workdir to rewrite the card")
  try:
    check_card(card)
  except ValueError as e:
    raise UserError(path, "robustness card", str(e)) from None
  return card


def write_card(path: str, card: dict) -> None:
  """Checks the card against SCHEMA and writes it atomically."""
  check_card(card)
  checkpoints.write_json(path, card)


def schema_problems(value, schema=SCHEMA, where: str = "card") -> list:
  """Every missing key and wrong type of `value` against `schema` (empty: it conforms)."""
  if not isinstance(schema, dict):
    ok = isinstance(value, schema) and not (isinstance(value, bool) and schema in (int, NUM, OPT_NUM))
    return [] if ok else [f"{where}: {type(value).__name__}, expected {_type_names(schema)}"]
  if not isinstance(value, dict):
    return [f"{where}: {type(value).__name__}, expected a dict"]
  if "*" in schema:
    return [p for k, v in value.items() for p in schema_problems(v, schema["*"], f"{where}.{k}")]
  problems = []
  for key, sub in schema.items():
    if key not in value:
      problems.append(f"{where}.{key}: missing")
    else:
      problems += schema_problems(value[key], sub, f"{where}.{key}")
  return problems


def check_card(card: dict) -> None:
  """Raises ValueError listing every problem of the card against SCHEMA and its version."""
  problems = schema_problems(card)
  if not problems and card["version"] != VERSION:
    problems.append(f"card.version: {card['version']}, expected {VERSION}")
  if problems:
    raise ValueError("robustness card: " + "; ".join(problems))


# ----------------------------------------------------------------------------
# report.md's section.
# ----------------------------------------------------------------------------
def columns_of(card: dict) -> dict:
  """Attack columns: header -> {model: attack stage}; attacks with the same label but another
  budget get their own column (the budget in the header)."""
  keyed = {}
  for name in card["order"]["attacks"]:
    a = card["attacks"][name]
    b = a["budget"]
    keyed.setdefault((a["label"], b["steps"], b["lr"], b["batch_size"]), {})[a["model"]] = name
  labels = [k[0] for k in keyed]
  return {(k[0] if labels.count(k[0]) == 1 else f"{k[0]}, {k[1]} steps, lr {k[2]:g}, batch {k[3]}"): v
          for k, v in keyed.items()}


def _cell(s: Optional[dict], n: int = 0) -> str:
  """max / final / steps to half; with `n` (a share from n samples) each rate with its 95%
  Wilson interval."""
  if s is None:
    return "–"
  half = "n/a" if s["reference"] is None or s["reference"] <= 0 else \
      ("never" if s["steps_to_half"] is None else f"{s['steps_to_half']:g}")
  return f"{_rate(s['max'], n)} / {_rate(s['final'], n)} / {half}"


def _rate(v, n: int) -> str:
  if v is None or not n:
    return _fmt(v)
  lo, hi = wilson_interval(v, n)
  return f"{v:.3f} [{lo:.2f}, {hi:.2f}]"


def wilson_bands(values, n: int):
  """(lower, upper) 95% Wilson bounds of each rate in `values` from n samples (NaN: NaN)."""
  bounds = [wilson_interval(v, n) if v is not None and math.isfinite(v) else (math.nan, math.nan) for v in values]
  return [b[0] for b in bounds], [b[1] for b in bounds]


def _fmt(v) -> str:
  return "nan" if v is None else f"{v:.3f}"


def report_lines(card: dict, workdir: str) -> list:
  """report.md's robustness section: the method x attack table of AR (max / final / steps to
  half), AUC and utility, the drop in NLL where measured, the budgets, one PNG per attack."""
  cols = columns_of(card)
  models = card["order"]["methods"]
  lines = ["", "## Robustness: every method against every attack (`robustness.json`)", "",
           "Cells: max / final AR during the attack / steps to recover half of the pretrained model's AR "
           "(the first eval step with AR >= AR_pretrained / 2, AR_pretrained measured in the attack stage at step 0 "
           "with the curve's samples and keys; never: not within the budget; n/a: no "
           "pretrained AR). AR: share of forget-conditioned samples showing the forgotten concept, from "
           f"{card['evaluator']['attack_num_samples']} samples per point, with its 95% Wilson interval "
           "(shaded in the figures).", ""]
  for pre, p in card["pretrained"].items():
    v = p["success"].get("ar")
    lines.append(f"- pretrained `{pre}` as evaluated: AR {_fmt(v)} (`{p['reference_source'].get('ar')}`)")
  n = card["evaluator"]["attack_num_samples"]
  lines += [""] + _table(card, cols, models, lambda s: _cell(s.get("ar"), n))
  lines += ["", "Area under the recovery curve (mean AR over the whole step budget; unfinished: the attack "
            "stopped before its budget; in parentheses: divided by the pretrained AR) and, where recorded, the utility along the curve (FD at start -> end, max):", ""]
  lines += _table(card, cols, models, _auc_cell)
  if any("nll_forget" in a["summary"] for a in card["attacks"].values()):
    lines += ["", "Likelihood probe: drop in NLL of the forget test images from step 0 (bits/dim): "
              "max / final / steps to half of the pretrained drop.", ""]
    lines += _table(card, cols, models, lambda s: _cell(s.get("nll_forget")))
  for key, title in EXTRA_MEASURES.items():
    if any(key in a["curve"] for a in card["attacks"].values()):
      lines += ["", f"{title} along the attack: step 0 -> last point (min, max):", ""]
      lines += _table(card, cols, models, lambda s, key=key: "–", curve_cell=lambda c, key=key: _span(c, key))
  lines += ["", "Budgets (each stage's attack.json, or the config where it has none) and seeds:", ""]
  for header, by_model in cols.items():
    a = card["attacks"][next(iter(by_model.values()))]
    b = a["budget"]
    extra = "".join(f", {k} {b[k]}" for k in ("shots", "eps", "classes") if b.get(k))
    seeds = ", ".join(f"{n} {card['attacks'][n]['seed']}" for n in by_model.values())
    ref = a["reference"]
    pre_ar = (ref["values"] or {}).get("ar")
    ref_text = "no pretrained reference" if pre_ar is None else \
        f"pretrained AR {pre_ar:.3f} ({ref['source']}" + (f", n={ref['num_samples']})" if ref["num_samples"] else ")")
    shots = f"; D_f indices {a['fewshot_indices']}" if a["fewshot_indices"] else ""
    lines.append(f"- {header}: {a['attack']} on `{a['data']}`, {b['steps']} steps, lr {_g(b['lr'])}, "
                 f"batch {b['batch_size']}{extra}; {ref_text}{shots}; seeds: {seeds}")
  lines.append("")
  for header, by_model in cols.items():
    png = f"robustness_{_slug(header)}.png"
    curves = {pretty(m): (card["attacks"][a]["curve"]["steps"], _nan(card["attacks"][a]["curve"]["ar"]))
              for m, a in by_model.items()}
    figures.plot_curves(os.path.join(workdir, png), curves, title=header, xlabel="attack step",
                        ylabel="AR (95% Wilson interval shaded)", ylim=(0.0, 1.0),
                        bands={label: wilson_bands(ys, n) for label, (_, ys) in curves.items()})
    lines.append(f"![{header}]({png})")
    nll = {pretty(m): (card["attacks"][a]["curve"]["steps"], _nan(card["attacks"][a]["curve"]["nll_forget"]))
           for m, a in by_model.items() if "nll_forget" in card["attacks"][a]["curve"]}
    if nll:
      figures.plot_curves(os.path.join(workdir, f"robustness_{_slug(header)}_nll.png"), nll, title=header,
                          xlabel="attack step", ylabel="NLL of D_f (bits/dim)")
      lines.append(f"![{header} NLL](robustness_{_slug(header)}_nll.png)")
    lines.append("")
  return lines


def _table(card: dict, cols: dict, models: list, cell: Callable[[dict], str],
           curve_cell: Optional[Callable[[dict], str]] = None) -> list:
  """One row per model, one cell per attack column: `cell(summary)`, or `curve_cell(curve)`."""
  lines = ["| Method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
  pick = (lambda a: curve_cell(a["curve"])) if curve_cell else (lambda a: cell(a["summary"]))
  for m in models:
    cells = [pick(card["attacks"][by_model[m]]) if m in by_model else "–" for by_model in cols.values()]
    lines.append(f"| {pretty(m)} | " + " | ".join(cells) + " |")
  return lines


def _span(curve: dict, key: str) -> str:
  values = [v for v in curve.get(key, []) if v is not None and math.isfinite(v)]
  if not values:
    return "–"
  return f"{values[0]:.3f} -> {values[-1]:.3f} ({min(values):.3f}, {max(values):.3f})"


def _auc_cell(summary: dict) -> str:
  s = summary.get("ar")
  if s is None:
    return "–"
  text = "unfinished" if s["auc"] is None else \
      _fmt(s["auc"]) + ("" if s["auc_relative"] is None else f" ({s['auc_relative']:.2f})")
  u = s.get("utility")
  if u:
    text += f"; FD {_fmt(u['start'])} -> {_fmt(u['end'])}, max {_fmt(u['max'])}"
  return text


def _g(v) -> str:
  return "config" if v is None else f"{v:g}"


def _slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def _nan(values) -> list:
  return [math.nan if v is None else v for v in values]


def _num(v):
  return float(v) if isinstance(v, NUM) and not isinstance(v, bool) else math.nan


def _strict(x):
  """The card with NaN / inf as None and numpy scalars as Python numbers (strict JSON)."""
  if isinstance(x, dict):
    return {k: _strict(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_strict(v) for v in x]
  if isinstance(x, np.generic):
    x = x.item()
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


def _type_names(tp) -> str:
  tps = tp if isinstance(tp, tuple) else (tp,)
  return " or ".join("null" if t is type(None) else t.__name__ for t in tps)
