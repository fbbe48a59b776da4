"""report.md: the header and tail every report has, and the tables the tasks share.

    text = render(results, workdir, task.report_tables)

A task's `report_tables(results, workdir)` gives the body: the SGU paper's Table 1 / 2 / 5
shape (`sgu_lines`) and its Tables 3-4 (`restoration_lines`), the DiMUM paper's Tables
I-III and curves (`conditional_lines`), or its own (the CORE paper's Table 1 shape,
`tasks.unlearncanvas.concept_lines`).
"""
from __future__ import annotations

import os
import re
from typing import Callable

import numpy as np

from unlearn_jax.reporting import figures
from unlearn_jax.reporting.results import LOGGED
from unlearn_jax.unlearning import methods as methods_lib

#: display names: the stages every config names, then each method's (`MethodSpec.display`,
#: and `stage_display` for stages named "<method>_<variant>", e.g. SGU-Obtuse).
PRETTY = {"standard": "Standard", "unseen": "Unseen", "pretrained": "Pretrained", "base": "Base (pre-trained)",
          **{name: s.display for name, s in methods_lib.SPECS.items()},
          **{f"{name}_{v}": shown for name, s in methods_lib.SPECS.items() for v, shown in s.stage_display.items()}}
STREAM_NAMES = {"retain": "D_r (assumption i)", "test_retain": "test w/o forget (assumption ii)",
                "benign": "benign fine-tuning", "embedding": "embedding attack (weights frozen)",
                "condition": "condition attack (weights frozen)",
                "textual_inversion": "textual inversion (weights frozen)"}


def pretty(name: str) -> str:
  """A stage's display name: PRETTY's, or "<method> (<variant>)" for a "method_variant" stage."""
  if name in PRETTY:
    return PRETTY[name]
  for method in sorted(PRETTY, key=len, reverse=True):
    if name.startswith(method + "_"):
      return f"{PRETTY[method]} ({name[len(method) + 1:]})"
  return name


def render(results: dict, workdir: str, report_tables: Callable[[dict, str], list]) -> str:
  """report.md: the header (data, forgotten classes, classifier), the task's tables, the
  sample grids and wall times."""
  lines = [f"# {results['experiment'].upper()} on {results['dataset']}", "",
           f"- data: `{results['data_source']}`",
           f"- forgotten: {', '.join(results['forget_class_names'])}"
           + (f" (labels {results['forget_classes']})" if results["forget_classes"] else "")]
  for k, v in (results.get("classifier") or {}).items():
    lines.append(f"- evaluation classifier {k.replace('_', ' ')}: " + (f"{v:.4f}" if isinstance(v, float) else v))
  lines += report_tables(results, workdir)
  return _tail(lines, results, list(results["models"]))


def conditional_lines(results: dict, workdir: str) -> list:
  """The alternative classes and masks, then the DiMUM paper's Tables I-III and Figs. 5-6
  shapes (`dimum_tables`)."""
  lines = []
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
  return lines + dimum_tables(results, workdir) + inception_lines(results["models"])


def inception_lines(models: dict) -> list:
  """Inception FID / sFID / IS per model, where `config.eval.inception_weights` gave them
  (none otherwise: the tables above report the classifier-feature FD, never as FID)."""
  names = [n for n, m in models.items() if "fid" in m]
  if not names:
    return []
  m0 = models[names[0]]
  lines = ["", "## Inception FID", "",
           f"FID / sFID: Fréchet distance on the FID InceptionV3's pool3 / spatial features of "
           f"{m0['fid_num_samples']} samples against {m0['fid_reference']}, inputs resized to "
           f"{m0['fid_input_size']}; IS on its 1008-way softmax"
           + (f"; precision / recall: k-NN manifolds (k = {m0['precision_recall_k']}) of pool3 features."
              if "precision" in m0 else "."), "",
           "| Method | FID | sFID | IS | precision | recall |", "|---|---|---|---|---|---|"]
  for n in names:
    m = models[n]
    pr = [f"{m[k]:.3f}" if k in m else "–" for k in ("precision", "recall")]
    lines.append(f"| {pretty(n)} | {m['fid']:.2f} | {m['fid_spatial']:.2f} | "
                 f"{m['inception_score']:.2f} ± {m['inception_score_std']:.2f} | {pr[0]} | {pr[1]} |")
  if m0["fid_input_size"] != 299:
    lines += ["", f"(!) Inputs at {m0['fid_input_size']} px, not 299: not comparable with published FIDs."]
  return lines


def dimum_tables(results: dict, workdir: str) -> list:
  """Tables shaped like the DiMUM paper's Table I (FD, AR_MU) and II/III (max AR_DiMRA),
  and AR_DiMRA curves shaped like its Figs. 5-6 (one PNG per auxiliary data set)."""
  models, attacks = results["models"], results.get("attacks", {})
  lines = ["## After unlearning (DiMUM paper, Table I shape)", "",
           "FD: Fréchet distance between retain-class samples and D_r on the evaluation classifier's "
           "features (not Inception FID). AR_MU: share of forget-conditioned samples classified as "
           "the forgotten class; AR_CL: as the alternative class.", "",
           "| Method | unlearning steps | FD | AR_MU [95% CI] | AR_CL [95% CI] | retain-class accuracy | confident (%) | s/step |",
           "|---|---|---|---|---|---|---|---|"]
  for n, m in models.items():
    sps = m.get("seconds_per_step")
    conf = m.get("confident_share")
    lines.append(f"| {pretty(n)} | {m.get('unlearn_steps', 0)} | {m['frechet_distance']:.3f} | "
                 f"{ci(m, 'ar_mu')}{flag(m)} | {ci(m, 'ar_cl')} | {m['retain_accuracy']:.3f} | "
                 f"{'–' if conf is None else f'{100 * conf:.1f}'} | {'' if sps is None else f'{sps:.3f}'} |")
  bad = [pretty(n) for n, m in models.items() if m.get("recognised") is False]
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
      lines.append(f"| {pretty(n)} | {m['ar_mu']:.3f} | {m['frechet_distance']:.3f} | "
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
      lines.append(f"| {pretty(n)} | " + " | ".join(cells) + " |")
      pngs = []
      for key, label in (("loss/forget", "g"), ("method/lambda_t", "lambda_t"), ("method/cos_update_retain", None)):
        if key not in log:
          continue
        png = f"{n}_{label or 'cosines'}.png"
        if label:
          curves = {label: (log["steps"], log[key])}
        else:
          curves = {k.split("/")[-1]: (log["steps"], log[k]) for k in LOGGED[3:] if k in log}
        figures.plot_curves(os.path.join(workdir, png), curves, title=f"{pretty(n)}: {label or 'cosines'}",
                            xlabel="unlearning step", ylabel=label or "cosine similarity")
        pngs.append(f"![{n} {label or 'cosines'}]({png})")
      lines.append("\n" + " ".join(pngs) + "\n")
  if attacks:
    datas = list(dict.fromkeys(_label(a) for a in attacks.values()))
    lines += ["", "## DiMRA: largest AR_DiMRA during the attack (DiMUM paper, Tables II-III shape)", "",
              "| Method | unlearning steps | " + " | ".join(STREAM_NAMES.get(d, d) for d in datas) + " |",
              "|---|---|" + "---|" * len(datas)]
    for model in dict.fromkeys(a["model"] for a in attacks.values()):
      cells = []
      for d in datas:
        a = next((a for a in attacks.values() if a["model"] == model and _label(a) == d), None)
        cells.append("" if a is None else f"{a['max_ar_dimra']:.3f} (step {a['max_ar_dimra_step']}, "
                     f"final {a['final_ar_dimra']:.3f}, min AR_CL {a['min_ar_cl']:.3f})")
      steps = models.get(model, {}).get("unlearn_steps", "")
      lines.append(f"| {pretty(model)} | {steps} | " + " | ".join(cells) + " |")
    lines += ["", "## AR_DiMRA curves (DiMUM paper, Figs. 5-6 shape)", ""]
    for d in datas:
      curves = {pretty(a["model"]): (a["steps"], a["ar_dimra"]) for a in attacks.values() if _label(a) == d}
      png = f"attack_curves_{d}.png"
      figures.plot_curves(os.path.join(workdir, png), curves, title=f"DiMRA on {STREAM_NAMES.get(d, d)}",
                          xlabel="attack step", ylabel="AR_DiMRA", ylim=(0.0, 1.0))
      lines.append(f"![{d}]({png})  CSV per attack: " +
                   ", ".join(f"`{a['csv']}`" for a in attacks.values() if _label(a) == d))
      lines.append("")
  return lines


def _label(attack: dict) -> str:
  """An attacks entry's column: its "attack" label (`results.attack_label`; results.json files
  written before it existed: the data stream)."""
  return attack.get("attack", attack["data"])


def sgu_lines(results: dict) -> list:
  """The NLL convention, then the SGU paper's Table 1 shape (toy data: NLL of D_g / D_f and
  the unlearning ratio per model) or Table 2 shape (images: UR, NLL and sample quality)."""
  models = results["models"]
  names = list(models)
  lines = []
  unit = next((m["nll"]["unit"] for m in models.values()), "bits/dim")
  conv = next((m["nll"].get("convention") for m in models.values()), "")
  offset = next((m["nll"].get("offset") for m in models.values()), 0.0)
  lines.append(f"- NLL in {unit} ({conv} convention, offset {offset:+g}); unlearning ratio from "
               f"{next((m['num_samples'] for m in models.values()), 0)} samples per model")
  lines.append("")
  if results["dataset"] == "toy_gmm":
    lines += ["## NLL of the test data (SGU paper, Table 1 shape)", "",
              "| Test | " + " | ".join(pretty(n) for n in names) + " |",
              "|---|" + "---|" * len(names)]
    lines.append("| D_g | " + " | ".join(f"{models[n]['nll']['retain']:.2f}" for n in names) + " |")
    lines.append("| D_f | " + " | ".join(f"{models[n]['nll']['forget']:.2f}" for n in names) + " |")
    lines.append("| D_f / D_g | " + " | ".join(
        f"{models[n]['nll']['forget'] / models[n]['nll']['retain']:.2f}" for n in names) + " |")
    lines.append("| unlearning ratio (%) [95% CI] | " + " | ".join(
        ci(models[n], "unlearning_ratio", percent=True) for n in names) + " |")
  else:
    thr = next((m.get("confidence_threshold") for m in models.values()), None)
    attr = results.get("forget_attribute")
    lines += ([f"## Unlearning the {attr} feature (SGU paper, Tables 2 and 5 shape)", "",
               f"UR: share of samples the binary {attr} classifier sees {attr} in; D_f: the images with "
               f"{attr}, D_g: those without (the paper's Table 5 leaves NLL out for a feature: it does not tell "
               "whether the feature is generated)."]
              if attr else ["## Unlearning ratio and NLL (SGU paper, Table 2 shape)"]) + ["",
              "| Method | UR (%) [95% CI] | NLL D_g | NLL D_f | D_f - D_g | confident (%) | TV(hist, D) | TV(retained) |",
              "|---|---|---|---|---|---|---|---|"]
    for n in names:
      m = models[n]
      lines.append(f"| {pretty(n)} | {ci(m, 'unlearning_ratio', percent=True)}{flag(m)} | "
                   f"{m['nll']['retain']:.3f} | {m['nll']['forget']:.3f} | "
                   f"{m['nll']['forget'] - m['nll']['retain']:+.3f} | {_quality_cells(m)} |")
    lines += ["", f"confident: share of samples the classifier assigns a class with probability >= {thr}; "
              "TV: total-variation distance of the samples' class histogram from the training data's "
              "(over all classes; over the retained classes, renormalised)."]
    lines += _unrecognised_note(models, names)
    neg = [pretty(n) for n in names if min(models[n]["nll"]["retain"], models[n]["nll"]["forget"]) < 0]
    if neg:
      lines += ["", f"**(!) NLL below 0 bits/dim** for {', '.join(neg)}: impossible for uniformly "
                "dequantized 8-bit data, so the probability-flow ODE solve is inaccurate (tighten "
                "`config.eval.nll.rtol` / `atol`, e.g. to score_sde's 1e-5)."]
  return lines + inception_lines(models)


#: display names of the restorations' sets (SGU Tables 3-4).
SET_NAMES = {"retain": "D_g", "forget": "D_f"}
_RESTORATIONS = (
    ("inpaint", "Inpainting (SGU paper, Table 3 shape)",
     "the upper half of each image masked and filled in by the model's PC inpainting ({n_steps} steps)"),
    ("reconstruct", "Reconstruction (SGU paper, Table 4 shape)",
     "each image noised to t = {t_start:g} and sampled back by the reverse SDE ({n_steps} steps)"),
)
NO_CLIP = ("not measured: `config.eval.clip_dir` is not set (a transformers-format CLIP directory with "
           "Flax weights, e.g. openai/clip-vit-base-patch32)")


def restoration_lines(models: dict) -> list:
  """SGU's Table 3 (inpainting: accuracy on D_g / D_f, Clean, CLIP distance on D_g) and
  Table 4 (reconstruction: accuracy and CLIP distance on D_g / D_f) shapes, one column per
  model, for the models whose entries have them (none: no lines)."""
  lines = []
  for kind, title, how in _RESTORATIONS:
    names = [n for n, m in models.items() if kind in m]
    if not names:
      continue
    first = models[names[0]][kind]
    sets = [k for k in SET_NAMES if k in first["accuracy"]]
    target = "label" if first["target"] == "label" else "class the classifier gives the original"
    counts = ", ".join(f"{first['num_examples'][k]} of {SET_NAMES[k]}" for k in sets)
    lines += ["", f"## {title}", "",
              f"{first['split'].capitalize()} images ({counts}), {how.format(**first)}. Accuracy (%): share of "
              f"restored images the evaluation classifier assigns their original's {target}; Clean: its "
              "accuracy on the originals.", "",
              "| Test | Clean | " + " | ".join(pretty(n) for n in names) + " |",
              "|---|---|" + "---|" * len(names)]
    for k in sets:
      lines.append(f"| {SET_NAMES[k]} | {100 * first['clean_accuracy'][k]:.1f} | "
                   + " | ".join(f"{100 * models[n][kind]['accuracy'][k]:.1f}" for n in names) + " |")
    clip_sets = sorted({c for n in names for c in models[n][kind].get("clip_distance", {})},
                       key=list(SET_NAMES).index)
    for k in clip_sets:
      cells = [models[n][kind].get("clip_distance", {}).get(k) for n in names]
      lines.append(f"| CLIP distance {SET_NAMES[k]} (↓) | – | "
                   + " | ".join("–" if c is None else f"{c:.4f}" for c in cells) + " |")
    lines += ["", "CLIP distance: mean 1 - cos of the CLIP image embeddings of restored and original images "
              "(the paper does not state its scale)." if clip_sets else f"CLIP distance: {NO_CLIP}.",
              "", "Restored images (per set: originals, " + ("masked, " if kind == "inpaint" else "")
              + "restored): " + " ".join(f"![{n}]({models[n][kind]['png']})" for n in names)]
  return lines


def ci(m: dict, key: str, percent: bool = False) -> str:
  """The rate `key` of model entry m with its Wilson 95 % interval: `0.120 [0.093, 0.154]`
  (`12.00 [9.30, 15.40]` as percent); the rate alone without an interval."""
  v, lohi = m.get(key, float("nan")), m.get(f"{key}_ci95")
  s, f = (100.0, "{:.2f}") if percent else (1.0, "{:.3f}")
  text = f.format(s * v)
  if lohi and all(x is not None and np.isfinite(x) for x in lohi):
    text += f" [{f.format(s * lohi[0])}, {f.format(s * lohi[1])}]"
  return text


def flag(m: dict) -> str:
  """' (!)' after a rate computed on samples the classifier does not recognise."""
  return " (!)" if m.get("recognised") is False else ""


def _quality_cells(m: dict) -> str:
  if "confident_share" not in m:
    return "– | – | –"
  return f"{100 * m['confident_share']:.1f} | {m['histogram_tv']:.3f} | {m['retain_histogram_tv']:.3f}"


def _unrecognised_note(models: dict, names) -> list:
  bad = [pretty(n) for n in names if models[n].get("recognised") is False]
  if not bad:
    return []
  return ["", f"**(!) Not a result:** the classifier recognises too few samples of {', '.join(bad)} "
          "(confident share below `config.eval.min_confident_share`): their rates measure a broken "
          "model, not forgetting."]


def _tail(lines: list, results: dict, names) -> str:
  models = results["models"]
  lines += ["", "## Samples", ""]
  for n in names:
    lines.append(f"**{pretty(n)}**: ![{n}]({models[n]['samples_png']})")
    lines.append("")
  if results["wall_time_s"]:
    lines += ["## Wall time (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in results["wall_time_s"].items() if v is not None]
  return "\n".join(lines) + "\n"


#: a table cell's number that is not one (`{v:.3f}` of NaN / inf, signed or not), with its interval
_NOT_A_NUMBER = re.compile(r"(?<![\w.])[+-]?(?:nan|inf)(?: \[[^\]]*\])?(?![\w.])")


def mark_not_results(text: str, reasons: dict) -> str:
  """report.md with each table cell whose number is NaN or infinite reading "not a result", and
  a note naming the values (`reasons`: `results.strict`'s {dotted path: reason}) under the title."""
  if not reasons:
    return text
  lines = [(_NOT_A_NUMBER.sub("not a result", l) if l.startswith("|") else l) for l in text.split("\n")]
  note = ["", "**(!) Not a result:** " + "; ".join(f"`{p}` is {r}" for p, r in sorted(reasons.items()))
          + " (null in results.json): a diverged solve or a rate of nothing, not a value."]
  at = next((i + 1 for i, l in enumerate(lines) if l.startswith("# ")), 0)
  return "\n".join(lines[:at] + note + lines[at:])
