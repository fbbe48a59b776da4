"""Validation of a run's config, all of it before the first write.

    check_config(config)     # the config alone (pipeline.run calls it before task.prepare)
    check_experiment(exp)    # against the built experiment: sources, method options, the task's

Every failure is a `UserError` naming the field with its full name, the value and what is
allowed (`main` prints it as one line and exits 2).  `NUMERIC_FIELDS` lists every numeric
field a run reads.
"""
from __future__ import annotations

import json
import numbers
import dataclasses
import os

import ml_collections

from unlearn_jax import checkpoints
from unlearn_jax import data as data_lib
from unlearn_jax import likelihood
from unlearn_jax import losses
from unlearn_jax import score as score_lib
from unlearn_jax import stages
from unlearn_jax import tasks
from unlearn_jax import training
from unlearn_jax.attacks import condition
from unlearn_jax.errors import UserError, check_choice, check_range
from unlearn_jax.experiment import ATTACK_STREAMS, STREAMS, Experiment, attack_stream
from unlearn_jax.stages import train as train_stage
from unlearn_jax.stages import CONDITIONAL_KINDS, MODEL_KINDS
from unlearn_jax.unlearning import methods as methods_lib


def _check_source(config, field: str, value: str, seen, kinds=MODEL_KINDS) -> None:
  """`value` names an earlier stage of one of `kinds`, a task's named model, or a stage
  directory on disk."""
  if value in tasks.get(config).NAMED_MODELS:
    return
  if value in seen and config.stages[value].kind in kinds:
    return
  if value in config.stages:
    raise UserError(field, value, f"a stage used here must be a {'/'.join(kinds)} stage that runs "
                    "earlier in config.stage_order")
  if not os.path.isdir(os.path.join(value, checkpoints.CKPT_DIR)) or \
     not os.path.exists(os.path.join(value, checkpoints.META)):
    raise UserError(field, value, "expected 'scratch', an earlier stage name, or a stage directory written by "
                    "unlearn_jax (with checkpoints/ and meta.json); no checkpoint found there")


def check_runnable(config) -> None:
  """What a run (not a compile, `unlearn_jax.aot`) refuses: data.source="shapes", the zero
  images `aot` builds a config on, which would train and evaluate on nothing."""
  if config.data.get("source") == "shapes":
    raise UserError("config.data.source", "shapes", "zero images for `python -m unlearn_jax.aot` only; a run "
                    "needs real data: " + ", ".join(s for s in data_lib.SOURCES if s != "shapes"))


def check_config(config) -> None:
  """Every check that needs only the config (stages, methods' choices, numeric ranges, the
  task's own fields): UserError naming the field, before anything is written."""
  order = tuple(config.stage_order)
  for name in order:
    if name not in config.stages:
      raise UserError("config.stage_order", name, "expected stage names defined under config.stages: "
                      + ", ".join(config.stages.keys()))
  conditional = bool(config.model.get("conditional", False))
  seen = []
  for name in order:
    st = config.stages[name]
    field = f"config.stages.{name}"
    check_choice(f"{field}.kind", st.kind, tuple(stages.KINDS))
    if st.kind in CONDITIONAL_KINDS and not conditional:
      raise UserError(f"{field}.kind", st.kind, "needs a class-conditional model (config.model.conditional=True)")
    if st.kind in MODEL_KINDS:
      synth = tuple(n for n in seen if config.stages[n].kind == "synthesize")
      check_choice(f"{field}.data", st.data, STREAMS + synth + (ATTACK_STREAMS if st.kind == "attack" else ()))
      check_range(f"{field}.steps", st.steps, 0, 10 ** 9, integer=True)
      check_range(f"{field}.batch_size", st.get("batch_size", 0), 0, 1 << 24, integer=True)   # 0: config.training's
      if st.get("batch_size", 0):
        training.check_batch_size(st.batch_size, f"{field}.batch_size")
      if st.get("lr", None) is not None:
        check_range(f"{field}.lr", st.lr, 0.0, MAX_LR, lo_open=True)
      if st.get("ema_rate", None) is not None:
        check_range(f"{field}.ema_rate", st.ema_rate, 0.0, 1.0, hi_open=True)
      if st.kind == "attack" and st.init == "scratch":
        raise UserError(f"{field}.init", st.init, "an attack starts from an unlearned model: name its stage")
      if st.init != "scratch":
        _check_source(config, f"{field}.init", st.init, seen)
    if st.kind == "attack":
      check_range(f"{field}.eval_every", st.eval_every, 0, 10 ** 9)
      _check_attack_fields(config, field, st)
      # (points, image_size 0: their classifier is the nearest mixture component, no stage)
      if config.data.get("image_size", 0) and not any(config.stages[n].kind == "classifier" for n in seen):
        raise UserError(f"{field}.kind", st.kind, "the attack's AR on images needs a classifier stage earlier "
                        "in config.stage_order")
    if st.kind == "unlearn":
      check_choice(f"{field}.method", st.method, methods_lib.METHODS)
      spec = methods_lib.spec(st.method)
      if spec.model and config.model.get("name") != spec.model:
        raise UserError(f"{field}.method", st.method, f"needs config.model.name={spec.model!r} (a Stable Diffusion "
                        "experiment: it edits the UNet's cross-attention key / value projections of its prompt "
                        f"table); this config's model is {config.model.get('name')!r}")
      if isinstance(spec.variant_field, tuple):
        check_choice(f"{field}.variant", st.variant, spec.variant_field)
      if spec.conditional and not conditional:
        raise UserError(f"{field}.method", st.method, "needs a class-conditional model (config.model.conditional=True)")
      if spec.closed_form is not None and st.mask:
        raise UserError(f"{field}.mask", st.mask, f"method {st.method!r} is one closed-form edit: it takes no "
                        "mask stage (expected '')")
      want = spec.mask or "salun"
      if spec.requires_mask and not st.mask:
        raise UserError(f"{field}.mask", st.mask, f"method {st.method!r} needs an earlier mask stage with "
                        f"method {want!r}")
      if st.mask:
        if st.mask not in seen or config.stages[st.mask].kind != "mask" or config.stages[st.mask].method != want:
          raise UserError(f"{field}.mask", st.mask, f"expected an earlier mask stage with method {want!r}")
      if st.method == "sa":
        synth = tuple(n for n in seen if config.stages[n].kind == "synthesize")
        check_choice("config.sa.replay", config.sa.replay, ("retain", "all") + synth)
      if spec.check is not None and spec.section in config:
        spec.check(config[spec.section])
    if st.kind == "mask":
      check_choice(f"{field}.method", st.method, methods_lib.MASK_KINDS)
      _check_source(config, f"{field}.init", st.init, seen)
      check_range(f"{field}.steps", st.steps, 0, 10 ** 9)
    if st.kind == "synthesize":
      _check_source(config, f"{field}.init", st.init, seen)
      check_range(f"{field}.num", st.num, 0, 10 ** 9)
    if st.kind == "evaluate":
      for m in st.models:
        if m in tasks.get(config).NAMED_MODELS:
          continue
        if m not in seen or config.stages[m].kind not in MODEL_KINDS:
          raise UserError(f"{field}.models", m, "expected train/unlearn/attack stages that run earlier")
    seen.append(name)
  _check_condition_attacks(config)
  check_range("config.sgu.alpha", config.sgu.alpha, 0.0, 1.0)
  check_range("config.sgu.max_std", config.sgu.max_std, 0.0, float("inf"))
  check_choice("config.optim.decay", config.optim.decay, training.DECAYS)
  check_choice("config.optim.name", config.optim.name, training.OPTIMIZERS)
  for name in config.stage_order:
    if config.stages[name].get("decay"):
      check_choice(f"config.stages.{name}.decay", config.stages[name].decay, training.DECAYS)
  check_range("config.salun.fraction", config.salun.fraction, 0.0, 1.0)
  check_range("config.training.cond_drop", config.training.cond_drop, 0.0, 1.0)
  if config.training.batch_size < 1:
    raise UserError("config.training.batch_size", config.training.batch_size, "expected a positive integer")
  training.check_batch_size(config.training.batch_size)
  if any(config.stages[n].kind == "classifier" for n in order):
    training.check_batch_size(config.classifier.batch_size, "config.classifier.batch_size")
  check_choice("config.model.output", config.model.output, score_lib.OUTPUT_TYPES)
  losses.check_weighting(config.sde.name, config.training.weighting)   # vlb: DDPM only; likelihood: SDEs
  check_choice("config.eval.nll.offset", config.eval.nll.offset, ("score_sde", "density"))
  _validate_numbers(config)
  tasks.get(config).validate(config)


def _check_condition_attacks(config) -> None:
  """An attack stage's `attack` ("finetune" or `condition.ATTACKS`) and `eps` (>= 0; nonzero
  only for "condition"); an embedding / condition / textual-inversion attack needs a model the
  task's `condition_attack_error` accepts (a class-conditional DDPM UNet's class embeddings,
  Stable Diffusion's prompt table and text encoder), takes data="forget", and is no model for an evaluate stage or a later
  stage's init (its weights are its init's)."""
  cond_attacks = set()
  for name in config.stage_order:
    st, field = config.stages[name], f"config.stages.{name}"
    refs = [("models", m) for m in st.get("models", ())] + [("init", st.get("init", "scratch"))]
    for key, ref in refs:
      if ref in cond_attacks:
        raise UserError(f"{field}.{key}", ref, f"{ref!r} is a condition attack: it changes no weights (name "
                        f"its init stage, {config.stages[ref].init!r}); its curve is in results.json's attacks")
    if st.kind != "attack":
      continue
    attack = check_choice(f"{field}.attack", st.get("attack", "finetune"), ("finetune",) + condition.ATTACKS)
    check_range(f"{field}.eps", st.get("eps", 0.0), 0.0, 1e6)
    if st.get("eps", 0.0) and attack != "condition":
      raise UserError(f"{field}.eps", st.eps, "expected 0: only attack='condition' has a perturbation budget")
    check_range(f"{field}.tokens", st.get("tokens", 0), 0, 64, integer=True)
    if st.get("tokens", 0) and attack != "prompt_tokens":
      raise UserError(f"{field}.tokens", st.tokens, "expected 0: only attack='prompt_tokens' prepends tokens")
    if attack not in condition.ATTACKS:
      continue
    why = tasks.get(config).condition_attack_error(config, attack)
    if why:
      raise UserError(f"{field}.attack", attack, why)
    if st.data != "forget":
      raise UserError(f"{field}.data", st.data, f"expected 'forget': attack {attack!r} fits its condition to "
                      "`shots` forget images")
    cond_attacks.add(name)


def _check_attack_fields(config, field: str, st) -> None:
  """An attack stage's shots and classes, which need only the config (`check_attack_data`
  checks them against the data; `_check_condition_attacks` the attack kind)."""
  check_range(f"{field}.shots", st.get("shots", 0), 0, 10 ** 9, integer=True)
  if st.data == "fewshot":
    check_range(f"{field}.shots", st.get("shots", 0), 1, 10 ** 9, integer=True)
  classes = tuple(st.get("classes", ()))
  if classes and st.data != "benign":
    raise UserError(f"{field}.classes", classes, "expected () here: classes choose the data of benign "
                    "fine-tuning (data='benign')")
  if not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) and c >= 0 for c in classes):
    raise UserError(f"{field}.classes", classes, "expected class indices (integers >= 0)")


def check_attack_data(exp: Experiment, name: str) -> None:
  """A benign fine-tuning's classes (in the data set, none forgotten, some examples) and a
  few-shot relearning's and a condition attack's shots (at most |D_f|), on the built experiment."""
  st, field = exp.config.stages[name], f"config.stages.{name}"
  if st.data == "benign":
    bad = [c for c in st.classes if c >= exp.train.num_classes or c in exp.forget_labels]
    if bad:
      raise UserError(f"{field}.classes", st.classes, f"expected classes of the data set (0..{exp.train.num_classes - 1}) "
                      f"that are not forgotten (forgotten: {list(exp.forget_labels)}); benign fine-tuning never "
                      "sees a forget example")
    if len(attack_stream(exp, st, "")) == 0:
      raise UserError(f"{field}.classes", st.classes, "the retain set holds no example of these classes")
  if (st.data == "fewshot" or st.attack in condition.ATTACKS) and st.shots > len(exp.streams["forget"]):
    raise UserError(f"{field}.shots", st.shots, f"expected at most {len(exp.streams['forget'])} (|D_f|, the forget "
                    "examples few-shot relearning and the condition attacks draw from)")


INF = float("inf")
MAX_LR = 1e3
#: Every numeric field a run reads (config_lib.base(), ddpm_base(), unlearncanvas_defaults(), prompts_defaults()),
#: checked before anything is written: (path, lo, hi, kind); kind "int" is an integer in
#: [lo, hi], "[]" a number in [lo, hi], "(]" / "[)" / "()" with open ends.  A path absent
#: from a config is skipped; a tuple value has each entry checked.
NUMERIC_FIELDS = (
    ("seed", 0, 2 ** 31 - 1, "int"),
    ("data.max_examples", 0, 10 ** 9, "int"), ("data.toy_num_samples", 1, 10 ** 9, "int"),
    ("data.seed", 0, 2 ** 31 - 1, "int"), ("data.image_indices", 1, 10 ** 6, "int"),
    ("sde.sigma_min", 0.0, INF, "()"), ("sde.sigma_max", 0.0, INF, "()"),
    ("sde.beta_min", 0.0, INF, "[)"), ("sde.beta_max", 0.0, INF, "()"),
    ("sde.beta_start", 0.0, 1.0, "()"), ("sde.beta_end", 0.0, 1.0, "()"),
    ("sde.N", 1, 10 ** 6, "int"), ("sde.eps", 0.0, 1.0, "()"),
    ("model.ch", 1, 1 << 16, "int"), ("model.ch_mult", 1, 1 << 10, "int"),
    ("model.num_res_blocks", 1, 1 << 10, "int"), ("model.attn_resolutions", 1, 1 << 16, "int"),
    ("model.dropout", 0.0, 1.0, "[)"), ("model.hidden", 1, 1 << 20, "int"),
    ("model.num_layers", 1, 1 << 10, "int"), ("model.ema_rate", 0.0, 1.0, "[)"),
    ("optim.lr", 0.0, MAX_LR, "(]"), ("optim.warmup", 0, 10 ** 9, "int"),
    ("optim.grad_clip", 0.0, 1e6, "[]"), ("optim.b1", 0.0, 1.0, "[)"), ("optim.eps", 0.0, 1.0, "(]"),
    ("training.log_every", 1, 10 ** 9, "int"), ("training.ckpt_every", 1, 10 ** 9, "int"),
    ("training.sample_every", 0, 10 ** 9, "int"), ("training.max_to_keep", 1, 10 ** 6, "int"),
    ("training.cond_drop", 0.0, 1.0, "[]"),
    ("sgu.alpha", 0.0, 1.0, "[]"), ("sgu.std_power", -1e3, 1e3, "[]"), ("sgu.max_std", 0.0, INF, "[)"),
    ("dimum.beta", 0.0, 1e6, "[]"), ("ga.beta", 0.0, 1e6, "[]"), ("salun.beta", 0.0, 1e6, "[]"),
    ("salun.fraction", 0.0, 1.0, "[]"), ("sfron.alpha_max", 0.0, 1e6, "[]"),
    ("erasediff.eta", 0.0, 1e6, "[]"), ("erasediff.lam", 0.0, 1e6, "[]"),
    ("erasediff.inner_steps", 0, 10 ** 6, "int"), ("erasediff.inner_lr", 0.0, 1e6, "[]"),
    ("core.alpha", 0.0, 1e6, "[]"), ("core.group_size", 1, 10 ** 6, "int"), ("core.k", 1, 10 ** 6, "int"),
    ("core.base", -1, 10 ** 6, "int"),
    ("esd.eta", 0.0, 1e6, "[]"), ("esd.base", -1, 10 ** 6, "int"), ("esd.ddim_steps", 1, 10 ** 5, "int"),
    ("esd.guidance", 0.0, 1e3, "[]"), ("ca.prior_weight", 0.0, 1e6, "[]"),
    ("sa.gamma", 0.0, 1e6, "[]"), ("sa.lam", 0.0, 1e12, "[]"), ("sa.fisher_samples", 1, 10 ** 7, "int"),
    ("sa.fisher_t", 2, 10 ** 5, "int"), ("shs.sparsity", 0.0, 1.0, "[]"), ("shs.gamma", 0.0, 1e6, "[]"),
    ("uce.erase_scale", 0.0, 1e6, "[]"), ("uce.preserve_scale", 0.0, 1e6, "[]"), ("uce.lamb", 0.0, 1e6, "(]"),
    ("classifier.features", 1, 1 << 16, "int"), ("classifier.dense", 1, 1 << 20, "int"),
    ("classifier.dropout", 0.0, 1.0, "[)"), ("classifier.steps", 0, 10 ** 9, "int"),
    ("classifier.lr", 0.0, MAX_LR, "(]"), ("classifier.image_size", 1, 1 << 14, "int"),
    ("eval.num_samples", 1, 10 ** 9, "int"), ("eval.sample_batch_size", 1, 1 << 24, "int"),
    ("eval.fd_num_samples", 2, 10 ** 9, "int"), ("eval.attack_num_samples", 1, 10 ** 9, "int"),
    ("eval.grid_size", 1, 10 ** 5, "int"), ("mesh.fsdp", 1, 1 << 16, "int"), ("eval.confidence_threshold", 0.0, 1.0, "[]"),
    ("eval.min_confident_share", 0.0, 1.0, "[]"),
    ("eval.inception_size", 75, 1024, "int"), ("eval.inception_batch_size", 1, 1 << 16, "int"),
    ("eval.precision_recall_k", 0, 1 << 10, "int"),
    ("eval.inpaint.num_examples", 0, 10 ** 9, "int"), ("eval.reconstruct.num_examples", 0, 10 ** 9, "int"),
    ("eval.reconstruct.t_start", 0.0, 1e6, "(]"), ("eval.reconstruct.n_steps", 0, 10 ** 6, "int"),
    ("eval.sampler.snr", 0.0, 1e3, "[]"), ("eval.sampler.n_steps", 1, 10 ** 6, "int"),
    ("eval.sampler.eps", 0.0, 1.0, "()"), ("eval.sampler.guidance", 0.0, 1e3, "[]"),
    ("eval.sampler.eta", 0.0, 1.0, "[]"),
    ("eval.nll.num_examples", 1, 10 ** 9, "int"), ("eval.nll.batch_size", 1, 1 << 24, "int"),
    ("eval.nll.passes", 1, 10 ** 4, "int"), ("eval.nll.rtol", 0.0, 1.0, "()"), ("eval.nll.atol", 0.0, 1.0, "()"),
    ("sd.encode_batch_size", 1, 1 << 16, "int"), ("sd.tiny.block_out_channels", 1, 1 << 14, "int"),
    ("sd.tiny.cross_attention_dim", 1, 1 << 14, "int"),
    ("data.forget_images_per_prompt", 1, 10 ** 7, "int"), ("data.retain_images_per_prompt", 1, 10 ** 7, "int"),
    ("data.gen_steps", 0, 10 ** 4, "int"), ("data.gen_guidance", 0.0, 1e3, "[]"),
    ("data.gen_seed", 0, 2 ** 31 - 1, "int"), ("data.i2p_max_prompts", 0, 10 ** 9, "int"),
    ("eval.coco_num_prompts", 0, 10 ** 9, "int"), ("eval.nudity_threshold", 0.0, 1.0, "[]"),
)


def _field(config, path: str):
  """config.<path>, or KeyError if a section or field is absent."""
  node = config
  for part in path.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise KeyError(path)
    node = node[part]
  return node


def _validate_numbers(config) -> None:
  """Range checks of `NUMERIC_FIELDS` and the cross-field orderings, with full field names."""
  for path, lo, hi, kind in NUMERIC_FIELDS:
    try:
      value = _field(config, path)
    except KeyError:
      continue
    field = f"config.{path}"
    kw = dict(integer=True) if kind == "int" else dict(lo_open=kind[0] == "(", hi_open=kind[1] == ")")
    if isinstance(value, (tuple, list)):
      for v in value:
        if not (isinstance(v, numbers.Real) and not isinstance(v, bool) and
                (kind != "int" or isinstance(v, numbers.Integral)) and lo <= v <= hi):
          raise UserError(field, tuple(value), f"expected {'integers' if kind == 'int' else 'numbers'} "
                          f"in [{lo}, {hi}]")
    elif value is not None:
      check_range(field, value, lo, hi, **kw)
  sde = config.get("sde", {})
  if "sigma_min" in sde and "sigma_max" in sde and sde.name == "vesde" and not sde.sigma_min < sde.sigma_max:
    raise UserError("config.sde.sigma_max", sde.sigma_max, f"expected a number > config.sde.sigma_min "
                    f"({sde.sigma_min})")
  if "beta_min" in sde and "beta_max" in sde and sde.name in ("vpsde", "subvpsde") and \
     not sde.beta_min < sde.beta_max:
    raise UserError("config.sde.beta_max", sde.beta_max, f"expected a number > config.sde.beta_min "
                    f"({sde.beta_min})")
  if "beta_start" in sde and "beta_end" in sde and not sde.beta_start <= sde.beta_end:
    raise UserError("config.sde.beta_end", sde.beta_end, f"expected a number >= config.sde.beta_start "
                    f"({sde.beta_start})")
  if "nll" in config.get("eval", {}):
    check_choice("config.eval.nll.hutchinson", config.eval.nll.hutchinson, likelihood.DIVERGENCES)


def check_experiment(exp: Experiment) -> None:
  """The checks that need the built experiment: checkpoint sources against the model, every
  unlearn stage's method options (by building its objectives), the process's levels, and
  the task's own (`task.check`)."""
  config = exp.config
  for name in config.stage_order:
    st = config.stages[name]
    if st.kind in MODEL_KINDS + ("mask", "synthesize") and st.init != "scratch" \
       and st.init not in exp.task.NAMED_MODELS and st.init not in config.stages:
      _check_meta(exp, f"config.stages.{name}.init", st.init)
    if st.kind == "attack":
      check_attack_data(exp, name)
    if st.kind == "unlearn":   # every method option is checked here, before anything is written
      if st.variant and st.method not in methods_lib.VARIANTS:
        raise UserError(f"config.stages.{name}.variant", st.variant, f"method {st.method!r} has no variants; "
                        "methods with variants: " + ", ".join(methods_lib.VARIANTS))
      _, _, options = train_stage.objectives(exp, st)
      n_levels = getattr(exp.process, "N", None)
      if st.method == "esd" and n_levels and not 1 <= config.esd.ddim_steps <= n_levels:
        raise UserError("config.esd.ddim_steps", config.esd.ddim_steps,
                        f"expected 1..{n_levels} (the process's discrete levels, config.sde.N)")
      if (options.frozen or options.reset) and st.init == "scratch":
        raise UserError(f"config.stages.{name}.init", st.init, f"method {st.method!r} starts from a pretrained "
                        "model (its frozen targets / weights to reset): name an earlier stage or a stage directory")
  exp.task.check(exp)


def _check_meta(exp: Experiment, field: str, path: str) -> None:
  meta = checkpoints.read_json(os.path.join(path, checkpoints.META))
  if tuple(meta.get("example_shape", ())) != tuple(exp.example_shape):
    raise UserError("config.data.image_size", "x".join(map(str, exp.example_shape)),
                    f"the checkpoint at {path} ({field}) was trained on "
                    f"{'x'.join(map(str, meta.get('example_shape', [])))} data")
  if meta.get("model") != json.loads(json.dumps(dataclasses.asdict(exp.model_cfg))):
    raise UserError(field, path, "its model config differs from config.model: " + json.dumps(meta.get("model")))
