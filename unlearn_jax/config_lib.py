"""Shared config building blocks.  Experiment files in `configs/` start from these.

A config is an `ml_collections.ConfigDict` (what config files, `--config.x=y` overrides and
config.json hold); `settings.of` turns it into the typed `settings.Settings` that everything
below the driver reads, and refuses a field it does not declare.

Schema (every field is read by exactly one module; see the README):
  seed                      global seed; every key derives from it by fold_in
  data.*                    `unlearn_jax.data.load_dataset` + the forget split
  sde.*                     `unlearn_jax.sde.get_sde`
  model.*                   `unlearn_jax.models.build_model` (+ output, ema_rate)
  optim.*                   Adam with warmup, clipping and an optional cosine decay
                            (`training.make_optimizer`)
  training.*                batch size, weighting, logging/checkpoint cadence
  sgu.*                     SGU's alpha (Eq. 11) and lambda(t) of Eq. 9/10 (std_power, max_std)
  unlearn.alternative       the alternative of each forgotten class (DiMUM's D_u', SalUn's c', AR_CL)
  unlearn.anchors           "" or a CORE scheme: SalUn / EraseDiff-rl / CA-model draw c' from it
  <method section>.*        each method's coefficients (dimum.*, ga.*, salun.*, ...): the
                            `Config` dataclass of its module (`unlearning.methods.SECTIONS`)
  classifier.*              the evaluation classifier (image data only)
  eval.*                    sampler, number of samples, NLL settings, restorations
                            (eval.inpaint / eval.reconstruct, SGU Tables 3-4; eval.clip_dir)
  stages.<name>.*           one entry per stage; `stage_order` runs them in order
"""
from __future__ import annotations

import dataclasses

import ml_collections

from unlearn_jax.unlearning import methods as methods_lib


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = "sgu"
  c.seed = 0

  c.data = ml_collections.ConfigDict(dict(
      name="mnist", source="auto", tfds_data_dir=ml_collections.FieldReference(None, field_type=str),
      image_size=28, num_channels=1, centered=False, random_flip=False,
      forget_classes=(3,), forget_attribute=ml_collections.FieldReference(None, field_type=str),
      max_examples=0, toy_num_samples=20000, seed=0))

  c.sde = ml_collections.ConfigDict(dict(
      name="vesde", sigma_min=0.01, sigma_max=50.0, beta_min=0.1, beta_max=20.0, N=1000, eps=1e-5))

  c.model = ml_collections.ConfigDict(dict(
      name="ddpm_unet", ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
      hidden=128, num_layers=3, output="eps", ema_rate=0.999, conditional=False))

  # decay: "constant" after warmup (score_sde) or "cosine" to 0 at the end of each stage.
  # name: "adam" (score_sde's, the public unlearning codes') or "sgd" (EraseDiff Algorithm 1's
  # plain step theta - lr * update; b1 and eps are Adam's only).
  c.optim = ml_collections.ConfigDict(dict(name="adam", lr=2e-4, warmup=5000, grad_clip=1.0, b1=0.9, eps=1e-8,
                                           decay="constant"))

  c.training = ml_collections.ConfigDict(dict(
      batch_size=128, weighting="sigma", reduce="sum", log_every=100, ckpt_every=1000,
      sample_every=0, max_to_keep=2, cond_drop=0.1))

  # unlearn.alternative: the alternative of each forgotten class (DiMUM's D_u', SalUn's c', AR_CL);
  # unlearn.anchors: "" = the baselines' c' is `alternative`'s one class; a CORE scheme
  # (core.SCHEMES) = c' drawn per example and step from that scheme's candidates (CORE App. C).
  c.unlearn = ml_collections.ConfigDict(dict(alternative="next", anchors=""))
  # Each method's coefficients: the defaults of its module's `Config` dataclass (its
  # docstring says what each field is), one section per `unlearning.methods.SECTIONS` entry.
  for section, cls in methods_lib.SECTIONS.items():
    c[section] = ml_collections.ConfigDict(dataclasses.asdict(cls()))

  c.classifier = ml_collections.ConfigDict(dict(
      features=(32, 64), dense=128, dropout=0.0, steps=2000, batch_size=128, lr=1e-3))

  c.eval = ml_collections.ConfigDict(dict(
      num_samples=10000, sample_batch_size=500,
      sampler=ml_collections.ConfigDict(dict(
          kind="pc", predictor="reverse_diffusion", corrector="langevin", snr=0.16,
          n_steps=1000, eps=1e-5, guidance=2.0, eta=0.0)),
      # conditional models: samples per forget-class evaluation (AR_MU, AR_CL) and for the
      # Fréchet distance on the evaluation classifier's features (retain classes).
      fd_num_samples=1000, attack_num_samples=500,
      # attack curves of conditional models: "fd" (utility) at each point too, on
      # attack_num_samples retain-conditioned samples more (`tasks.classes.attack_measures`).
      attack_fd=False,
      nll=ml_collections.ConfigDict(dict(
          num_examples=1000, batch_size=100, passes=1, rtol=1e-5, atol=1e-5,
          hutchinson="rademacher", offset="score_sde")),
      grid_size=64,
      # sample quality beside every rate: the share of samples classified with probability
      # >= confidence_threshold; below min_confident_share the report flags the rates.
      confidence_threshold=0.9, min_confident_share=0.5,
      # Inception FID / sFID / IS beside the classifier-feature FD when a weights file is given
      # (pytorch-fid's .pth or its .npz conversion, `python -m unlearn_jax.evaluation.inception_weights`):
      # images resized to inception_size (299: the standard; only 299 is comparable with papers).
      # with them also k-NN precision / recall on pool3 (k = precision_recall_k; 0: off).
      inception_weights="", inception_size=299, inception_batch_size=50, precision_recall_k=3,
      # SGU Sec. 4.3's restorations of test D_g / D_f images (unconditional image SDE models;
      # num_examples=0: off): inpainting of the masked upper half (Table 3) and reconstruction
      # from t_start (Table 4), scored by the classifier against the originals (`target`:
      # "label" | "prediction") and, with a CLIP directory in clip_dir, by the CLIP embedding
      # distance 1 - cos to the originals (`settings.Restoration`).
      clip_dir="",
      inpaint=ml_collections.ConfigDict(dict(num_examples=0, split="test", target="label")),
      reconstruct=ml_collections.ConfigDict(dict(num_examples=0, split="test", target="label",
                                                 t_start=0.02, n_steps=0))))
  # the device mesh (`unlearn_jax.mesh`): fsdp devices share each parameter (1: replicated).
  c.mesh = ml_collections.ConfigDict(dict(fsdp=1))
  return c


def stage(kind: str, **kw) -> ml_collections.ConfigDict:
  """A stage entry.  kind in {classifier, train, unlearn, mask, synthesize, attack, evaluate, report}.

  train/unlearn/attack fields: data (a stream: "all", "retain", "test_retain" or a
  synthesize stage), init ("scratch" | a stage name | a directory written by
  unlearn_jax), steps, method/variant (unlearn), mask (a mask stage), eval_every
  (attack: evaluate AR every k steps), lr and batch_size (0: config.training's),
  decay ("": config.optim.decay; "constant" | "cosine"),
  trainable (Stable Diffusion: "" = config.sd.trainable for unlearn / attack stages,
  "all" for train stages),
  ema_rate (the rate r of the parameter EMA ema <- r ema + (1 - r) params, started from the
  stage's starting weights; None: config.model.ema_rate for train stages, 0 for unlearn
  and attack stages).  A stage's *evaluated weights* (what evaluation, the stages that
  start from it and a DiMRA attack curve read) are its EMA if r > 0, else its parameters.
  Unlearn/attack default to no EMA: a 0.9999 EMA started from the pretrained weights
  would after a 300-step stage still be 0.9999^300 = 97% the pretrained model.  EraseDiff's
  public code (REFERENCE.md) uses 0.99: set `ema_rate=0.99` on its stage to match it.
  attack fields beside DiMRA's streams (`experiment.ATTACK_STREAMS`): data="benign" fine-tunes on
  the training examples of `classes` (retained classes only; () = the retained classes other
  than the forgotten classes' alternatives, `experiment.benign_classes`), data="fewshot" on
  `shots` forget examples (1 <= shots <= |D_f|, drawn from the stage seed,
  `experiment.fewshot_indices`), with their labels.
  mask: method ("salun" | "sfron"), init.
  synthesize: init (the generating model), num (0: as many as D_r).
  attack: attack ("finetune": the fine-tuning attacks above; "embedding" | "condition" |
  "textual_inversion": a
  class-conditional DDPM's or Stable Diffusion's condition optimised, its weights frozen,
  `attacks.condition`): both fit rows of the condition table (one per forgotten class or prompt) to the denoising loss
  of `shots` forget images (data="forget"; 0: `condition.DEFAULT_SHOTS` = 5, the first of
  `experiment.fewshot_indices`' permutation), Adam at lr (None: `condition.DEFAULT_LR` = 5e-3), batch_size, `steps`;
  "embedding" starts a new row at the null row (textual inversion), "condition" at the
  forgotten class's row within ||e - e0||_inf <= eps (a soft-prompt attack in embedding space
  with UnlearnDiffAtk's denoising loss, not its discrete tokens; eps 0: unconstrained,
  the only value "embedding" takes).  On Stable Diffusion (UnlearnCanvas) a row is a forget
  prompt's (L, D) text-encoder output; "textual_inversion" (SD only) learns one new token's
  input embedding instead (`tasks.unlearncanvas.textual_inversion`).  Their checkpoint holds the rows e only (the weights are
  the init stage's, unchanged); an evaluate stage or a later stage's init cannot name them.
  """
  d = dict(kind=kind, steps=0, data="all", init="scratch", method="", variant="",
           models=(), mask="", eval_every=0, num=0, batch_size=0, trainable="", decay="", shots=0, classes=(),
           lr=ml_collections.FieldReference(None, field_type=float),
           ema_rate=ml_collections.FieldReference(None, field_type=float))
  d.update(attack="finetune", shots=0, eps=0.0, tokens=0)
  d.update(kw)
  return ml_collections.ConfigDict(d)


def sgu_stages(steps: int, unlearn_steps: int, init: str = "scratch",
               classifier: bool = True) -> tuple:
  """The SGU main job: classifier, Standard, Unseen, SGU-Orthogonal, SGU-Obtuse, evaluate, report.

  init="scratch" is SGU's *unlearning re-training*; init="standard" (or a
  checkpoint directory) is *fine-tuning*.
  """
  stages = ml_collections.ConfigDict()
  order = []
  if classifier:
    stages.classifier = stage("classifier")
    order.append("classifier")
  stages.standard = stage("train", data="all", steps=steps)
  stages.unseen = stage("train", data="retain", steps=steps)
  stages.sgu_orthogonal = stage("unlearn", method="sgu", variant="orthogonal", init=init, steps=unlearn_steps)
  stages.sgu_obtuse = stage("unlearn", method="sgu", variant="obtuse", init=init, steps=unlearn_steps)
  stages.evaluate = stage("evaluate", models=("standard", "unseen", "sgu_orthogonal", "sgu_obtuse"))
  stages.report = stage("report")
  order += ["standard", "unseen", "sgu_orthogonal", "sgu_obtuse", "evaluate", "report"]
  return stages, tuple(order)


def cpu_variant(c: ml_collections.ConfigDict, *, steps: int = 1000, unlearn_steps: int = 250,
                num_samples: int = 400, nll_examples: int = 64) -> ml_collections.ConfigDict:
  """Shrinks an image config for a 2-core CPU: a ~260K-parameter UNet, SGU by
  fine-tuning Standard, few samples and NLL examples with looser ODE tolerances."""
  c.model.update(dict(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
                      ema_rate=0.99))
  c.optim.update(dict(lr=1e-3, warmup=100))
  c.training.update(dict(batch_size=32, log_every=100, ckpt_every=250, sample_every=0))
  c.stages, c.stage_order = sgu_stages(steps=steps, unlearn_steps=unlearn_steps, init="standard")
  c.classifier.update(dict(features=(32, 64), dense=128, steps=300, batch_size=64))
  c.eval.update(dict(num_samples=num_samples, sample_batch_size=num_samples))
  c.eval.sampler.update(dict(corrector="none", n_steps=100, eps=1e-3))
  c.eval.nll.update(dict(num_examples=nll_examples, batch_size=nll_examples, rtol=1e-3, atol=1e-3))
  return c


def restoration_cpu_variant(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`cpu_variant` at smoke scale for the SGU configs with restorations (sgu_stl10, sgu_celeba;
  tests/test_configs.py runs them for one step): 16x16 images, a one-level ch-8 UNet, and both
  restorations (SGU Tables 3-4) on a handful of examples so that every measurement runs."""
  cpu_variant(c, steps=300, unlearn_steps=100, num_samples=64, nll_examples=8)
  c.data.update(dict(image_size=16, max_examples=2000))
  c.model.update(dict(ch=8, ch_mult=(1,), num_res_blocks=1))
  c.classifier.update(dict(features=(16,), dense=32, steps=100, dropout=0.0))
  c.eval.sampler.n_steps = 20
  c.eval.inpaint.num_examples = 8
  c.eval.reconstruct.update(dict(num_examples=8, n_steps=5))
  return c


DIMUM_METHODS = ("ga", "salun", "dimum")
#: the mask stage each method takes (SA's is the Fisher of its EWC penalty).
#: the mask-stage kind of each method that requires one (`MethodSpec.mask`).
MASK_OF = methods_lib.MASKS


def ddpm_base() -> ml_collections.ConfigDict:
  """A class-conditional DDPM with classifier-free guidance (DiMUM paper Eq. 1-4;
  the shared CIFAR-10 backbone of REFERENCE.md): linear betas 1e-4..0.02, T=1000,
  condition dropout 0.1, guided DDIM sampling with w = 2."""
  c = base()
  c.experiment = "dimum"
  c.sde = ml_collections.ConfigDict(dict(name="ddpm", N=1000, beta_start=1e-4, beta_end=0.02))
  c.model.update(dict(conditional=True, output="eps", ema_rate=0.9999))
  c.data.centered = True
  c.training.update(dict(weighting="simple", reduce="mean", cond_drop=0.1))
  c.optim.update(dict(lr=2e-4, warmup=0, grad_clip=1.0))
  c.eval.sampler = ml_collections.ConfigDict(dict(kind="ddim", n_steps=100, eta=0.0, guidance=2.0))
  c.eval.update(dict(num_samples=1000, fd_num_samples=5000, attack_num_samples=1000))
  return c


def cifar10_ddpm(cpu: bool = False) -> ml_collections.ConfigDict:
  """The shared CIFAR-10 class-conditional DDPM of REFERENCE.md (Selective Amnesia's backbone,
  used by SA, SalUn, EraseDiff, SFR-on and the DiMUM paper): ch 128, ch_mult 1,2,2,2, 2 res
  blocks, attention at 16x16, dropout 0.1, EMA 0.9999, random flips, batch 128, Adam 2e-4;
  DDIM-100 sampling with guidance w = 2.  `cpu` shrinks it for smoke runs only."""
  c = ddpm_base()
  c.data.update(dict(name="cifar10", image_size=32, num_channels=3, random_flip=True))
  c.model.update(dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
                      ema_rate=0.9999))
  c.training.update(dict(batch_size=128, log_every=1000, ckpt_every=5000))
  c.optim.update(dict(lr=2e-4, grad_clip=1.0))
  c.classifier.update(dict(features=(64, 128, 256), dense=256, dropout=0.3, steps=20000, batch_size=128))
  c.eval.update(dict(num_samples=1000, fd_num_samples=5000, attack_num_samples=1000, sample_batch_size=1000,
                     grid_size=100))
  c.eval.sampler.n_steps = 100
  if cpu:
    c.model.update(dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0, ema_rate=0.99))
    c.training.update(dict(batch_size=32, log_every=50, ckpt_every=100))
    c.classifier.update(dict(features=(16, 32), dense=64, steps=200, batch_size=64))
    c.eval.update(dict(num_samples=100, fd_num_samples=100, attack_num_samples=50, sample_batch_size=100,
                       grid_size=20))
    c.eval.sampler.n_steps = 10
    c.esd.ddim_steps = 5
    c.sa.fisher_samples = 16
  return c


def digits_ddpm(cpu: bool = False) -> ml_collections.ConfigDict:
  """A small class-conditional DDPM on sklearn's 8x8 digits (offline): ch 64, ch_mult 1,2,
  2 res blocks, attention at 4x4; `cpu`: ch 32, 1 res block, no attention (a 2-core CPU
  pretrains it in ~5 minutes).  SalUn's retain weight is beta = 1 here (its CIFAR-10
  value 1e-3 left retain quality unprotected at this scale: FD 170)."""
  c = ddpm_base()
  c.data.update(dict(name="digits", image_size=8, num_channels=1))
  c.model.update(dict(ch=64, ch_mult=(1, 2), num_res_blocks=2, attn_resolutions=(4,), dropout=0.1,
                      ema_rate=0.999))
  c.training.update(dict(batch_size=128, log_every=200, ckpt_every=1000))
  c.optim.lr = 1e-3
  c.classifier.update(dict(features=(32, 64), dense=128, steps=1500, batch_size=128))
  c.eval.update(dict(num_samples=1000, fd_num_samples=1000, attack_num_samples=500, sample_batch_size=500,
                     grid_size=100))
  c.eval.sampler.n_steps = 50
  c.salun.beta = 1.0
  if cpu:
    c.model.update(dict(ch=32, num_res_blocks=1, attn_resolutions=(), dropout=0.0, ema_rate=0.995))
    c.training.update(dict(batch_size=64, log_every=100, ckpt_every=250))
    c.classifier.steps = 600
    c.eval.update(dict(num_samples=400, fd_num_samples=500, attack_num_samples=200, sample_batch_size=500,
                       grid_size=50))
    c.eval.sampler.n_steps = 25
  return c


def _unlearn_stages(stages, order: list, methods, init: str, steps_of, extra_of=lambda m: {},
                    mask_steps: int = 0) -> list:
  """Adds, per method (or "method:variant", a stage `method_variant` with that variant), a
  mask stage where the method takes one (`MASK_OF`, shared by its variants) and the unlearn
  stage from `init` with `steps_of(m)` steps (0 for a closed-form edit, UCE) and `extra_of(m)`
  fields; returns their names."""
  names = []
  for entry in methods:
    m, _, variant = entry.partition(":")
    name = f"{m}_{variant}" if variant else m
    if m in methods_lib.CLOSED_FORM:
      stages[name] = stage("unlearn", method=m, variant=variant, init=init, steps=0)
      order.append(name)
      names.append(name)
      continue
    kw = dict(extra_of(m))
    if m in MASK_OF:
      if f"{m}_mask" not in stages:
        stages[f"{m}_mask"] = stage("mask", method=MASK_OF[m], init=init, steps=mask_steps)
        order.append(f"{m}_mask")
      kw["mask"] = f"{m}_mask"
    stages[name] = stage("unlearn", method=m, variant=variant, init=init, steps=steps_of(m), **kw)
    order.append(name)
    names.append(name)
  return names


def dimum_stages(*, pretrain_steps: int, unlearn_steps: int, attack_steps: int, eval_every: int,
                 methods=DIMUM_METHODS, attack_data=("retain",), pretrained: str = "",
                 sfron_steps: int = 0, synthetic: int = -1, mask_batches: int = 0,
                 unlearn_lr: float = None, condition_shots: int = 0, condition_eps: float = 0.0) -> tuple:
  """The DiMUM/DiMRA chain: classifier, pretraining (or a pretrained directory), per method
  (any of `unlearning.methods.METHODS`, or "method:variant" for a stage `method_variant`
  with that variant, e.g. "erasediff:noise", "core:all_to_one") a mask stage where it takes
  one and the unlearning stage, evaluation, one DiMRA attack
  per method and auxiliary data set ("retain": assumption (i); "test_retain":
  assumption (ii); "synthetic": data the pretrained model generates under D_r's
  conditions, `synthetic` images, 0 = |D_r|; "benign": benign fine-tuning, stage
  attack_<m>_benign; "fewshot<k>", e.g. "fewshot5": few-shot relearning on k forget examples,
  stage attack_<m>_fewshot5; "embedding" / "condition" / "textual_inversion" (Stable
  Diffusion only): the condition attacks, stage attack_<m>_<entry>, on `condition_shots`
  forget images, the condition attack within `condition_eps`), report.
  """
  stages = ml_collections.ConfigDict()
  order = ["classifier"]
  stages.classifier = stage("classifier")
  init = pretrained or "pretrained"
  if not pretrained:
    stages.pretrained = stage("train", data="all", steps=pretrain_steps)
    order.append("pretrained")
  lr_kw = {} if unlearn_lr is None else {"lr": unlearn_lr}
  names = _unlearn_stages(stages, order, methods, init,
                          lambda m: sfron_steps if (m == "sfron" and sfron_steps) else unlearn_steps,
                          lambda m: lr_kw, mask_steps=mask_batches)
  models = (() if pretrained else ("pretrained",)) + tuple(names)
  stages.evaluate = stage("evaluate", models=models)
  order.append("evaluate")
  attack_stages(stages, order, names, attack_data, init, steps=attack_steps, eval_every=eval_every,
                 synthetic=synthetic, lr_kw=lr_kw, condition_shots=condition_shots, condition_eps=condition_eps)
  stages.report = stage("report")
  order.append("report")
  return stages, tuple(order)


#: every attack of the robustness suite (issue 15), as `dimum_stages` / `sd_stages` attack_data
#: entries: DiMRA on D_r / test data without the forget class / synthetic data, benign
#: fine-tuning, few-shot relearning on k = 1, 5, 10, 50 forget examples, the embedding and the
#: condition attacks.
ROBUSTNESS_ATTACKS = ("retain", "test_retain", "synthetic", "benign", "fewshot1", "fewshot5", "fewshot10",
                      "fewshot50", "embedding", "condition")


def parse_attacks(value: str, default=ROBUSTNESS_ATTACKS) -> tuple:
  """A config argument attacks=<a1-a2-...> -> a tuple of attack_data entries (of `default` or
  `ROBUSTNESS_ATTACKS`; "": default)."""
  if not value:
    return tuple(default)
  got = tuple(value.split("-"))
  known = tuple(dict.fromkeys(tuple(default) + ROBUSTNESS_ATTACKS))
  bad = [a for a in got if a not in known]
  if bad:
    raise ValueError(f"attacks={value!r}: {bad[0]!r} is not an attack; expected names among "
                     f"{', '.join(known)} joined by '-'")
  return got


#: `attack_data` entries that are condition attacks (`attacks.condition.ATTACKS`).
CONDITION_ATTACKS = ("embedding", "condition", "textual_inversion", "prompt_tokens")
#: `attack_data` entry -> the suffix of its stages' names attack_<method><suffix> (others: "_<entry>").
ATTACK_SUFFIX = {"retain": "", "test_retain": "_test", "synthetic": "_synth"}


def attack_stages(stages, order: list, names, attack_data, init: str, *, steps: int, eval_every: int,
                   synthetic: int, lr_kw=None, condition_shots: int = 0, condition_eps: float = 0.0,
                   suffix=None) -> None:
  """Per `attack_data` entry (see `dimum_stages`) and unlearned model in `names` an attack stage
  attack_<m><suffix> (`ATTACK_SUFFIX`, updated by `suffix`), after a synthesize stage from
  `init` (`synthetic` images, 0 = |D_r|) when "synthetic" is an entry."""
  suffix = {**ATTACK_SUFFIX, **(suffix or {})}
  if "synthetic" in attack_data:
    stages.synthetic = stage("synthesize", init=init, num=max(synthetic, 0))
    order.append("synthetic")
  for d in attack_data:
    for m in names:
      name = f"attack_{m}{suffix.get(d, '_' + d)}"
      if d in CONDITION_ATTACKS:
        eps = {"eps": condition_eps} if d == "condition" else {}
        stages[name] = stage("attack", attack=d, init=m, data="forget", steps=steps, eval_every=eval_every,
                             shots=condition_shots, **eps)
      else:
        stages[name] = stage("attack", init=m, steps=steps, eval_every=eval_every,
                             **{"data": d, **(lr_kw or {}), **fewshot_fields(d)})
      order.append(name)


def digits_method_settings(c: ml_collections.ConfigDict, cpu: bool) -> ml_collections.ConfigDict:
  """The method settings of the digits comparisons (compare_digits, robustness_digits):
  Selective Amnesia's Fisher from 500 generated samples on cpu (2,000 otherwise), ESD's x_t
  from a 6-step partial DDIM on cpu (25 otherwise)."""
  c.sa.fisher_samples = 500 if cpu else 2000
  c.esd.ddim_steps = 6 if cpu else 25
  return c


def fewshot_fields(entry: str) -> dict:
  """An `attack_data` entry "fewshot<k>" -> {"data": "fewshot", "shots": k}; any other -> {}."""
  k = entry[len("fewshot"):]
  if not entry.startswith("fewshot") or not k.isdigit():
    return {}
  return {"data": "fewshot", "shots": int(k)}


def parse_classes(value) -> tuple:
  """'0-1-2' (or an int) -> (0, 1, 2): several classes in a comma-separated config argument."""
  return tuple(int(v) for v in str(value).split("-") if v != "")


def parse_arg(arg, allowed: dict) -> dict:
  """'cpu,steps=20000,forget=1' -> {'cpu': True, 'steps': 20000, 'forget': 1} (types from `allowed`)."""
  out = {}
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in allowed:
      raise ValueError(f"unknown config argument {key!r}: expected {', '.join(sorted(allowed))}")
    out[key] = True if not _ else type(allowed[key])(value)
  return out


#: steps of the `cpu` variants' `pretrained` stage: the tiny random UNet fine-tuned on the
#: synthetic tree until its samples carry their prompt's style (~3 min on 2 cores).  Measured
#: on core_unlearncanvas:cpu's base: 1,000 steps gave UA 91.7 / IRA 87.5 (the Van Gogh prompts
#: rendered as other styles: nothing to forget) and 48% confident samples; 4,000 steps
#: UA 41.7 / IRA 100 / CRA 62.5, 65% confident, FD 45 (116 at 1,000).
CPU_PRETRAIN_STEPS = 4000


#: config.data.name of the UnlearnCanvas task (`tasks.unlearncanvas`).
UNLEARNCANVAS = "unlearncanvas"


def unlearncanvas_defaults(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `sd` section and the data / eval fields an UnlearnCanvas experiment adds to `ddpm_base()`."""
  c.sd = ml_collections.ConfigDict(dict(
      model_dir="", trainable="cross_attn", dtype="float32", remat=False, encode_batch_size=8,
      tiny=ml_collections.ConfigDict(dict(block_out_channels=(32,), cross_attention_dim=32)),
      # model_dir="tiny" only: Adam steps fitting its random VAE to the data's images
      # (`models.stable_diffusion.fit_tiny_vae`; 0 = keep the random VAE).
      fit_vae_steps=0, fit_vae_lr=3e-3, fit_vae_batch_size=8, fit_vae_kl_weight=1e-3))
  c.data.update(dict(name=UNLEARNCANVAS, data_dir="", styles=(), objects=(), image_indices=(1, 2, 3),
                     forget_styles="Forget06", alt_style="Abstractionism", template="unlearncanvas",
                     image_size=512, num_channels=3, centered=False, random_flip=False))
  c.eval.classifier_dir = ""
  c.classifier.image_size = 64
  return c


#: config.data.name of the prompt-only forgetting task (`tasks.prompts`).
PROMPTS = "prompts"


def prompts_defaults(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `sd` section and the data / eval fields a prompt-only forgetting experiment
  (`tasks.prompts`) adds to `ddpm_base()` (the fields: `settings.Data`, `settings.Eval`)."""
  unlearncanvas_defaults(c)
  for k in ("data_dir", "styles", "objects", "image_indices", "forget_styles", "alt_style", "template"):
    del c.data[k]
  c.data.update(dict(name=PROMPTS, forget_prompts=(), retain_prompts=(), anchor_prompt="", i2p_csv="",
                     i2p_categories=(), i2p_seed_column="", i2p_guidance_column="", i2p_max_prompts=0,
                     forget_images_per_prompt=100, retain_images_per_prompt=400, gen_steps=0,
                     gen_guidance=6.5, gen_seed=0))
  del c.eval["classifier_dir"]
  c.eval.update(dict(nudity=False, nudity_threshold=0.6, coco_prompts="", coco_num_prompts=0, clip_dir="",
                     fid_reference_dir=""))
  return c


def unlearncanvas_base(cpu: bool = False) -> ml_collections.ConfigDict:
  """Stable Diffusion (v1.5 fine-tuned on UnlearnCanvas, diffusers layout with Flax weights)
  on UnlearnCanvas (`tasks.unlearncanvas`): 512x512 images 1-3 of each style/object folder,
  prompts "A {object} image in {style} style.", cross-attention trained, DDIM 100 steps
  with SD guidance scale 9.0 (w = 8 in eps = (1 + w) eps_c - w eps_null), constant Adam.

  `cpu`: a tiny random-initialized model and a synthetic 4-style x 3-object tree built
  in the workdir (`model_dir="tiny"`, `data_dir="synthetic"`): end-to-end runs of the
  pipeline, not of the paper's numbers.
  """
  c = unlearncanvas_defaults(ddpm_base())
  c.experiment = "unlearncanvas"
  c.sde = ml_collections.ConfigDict(dict(name="ddpm", N=1000, beta_start=0.00085, beta_end=0.012,
                                         beta_schedule="scaled_linear"))
  c.model.update(dict(name="sd", conditional=True, output="eps", ema_rate=0.0))
  c.training.update(dict(batch_size=4, weighting="simple", reduce="mean", cond_drop=0.0, log_every=50,
                         ckpt_every=500, max_to_keep=1))
  c.optim.update(dict(lr=1e-5, warmup=0, grad_clip=1.0))
  c.classifier.update(dict(features=(64, 128, 256), dense=256, dropout=0.3, steps=5000, batch_size=64,
                           image_size=64))
  c.eval.update(dict(num_samples=100, fd_num_samples=200, attack_num_samples=100, sample_batch_size=8,
                     grid_size=8))
  c.eval.sampler = ml_collections.ConfigDict(dict(kind="ddim", n_steps=100, eta=0.0, guidance=8.0))
  c.esd.update(dict(ddim_steps=50, guidance=2.0))
  c.salun.beta = 1.0
  c.sd.encode_batch_size = 8
  if cpu:
    c.sd.model_dir = "tiny"
    c.data.update(dict(data_dir="synthetic", styles=("Abstractionism", "Cubism", "Monet", "Van_Gogh"),
                       objects=("Birds", "Cats", "Dogs"), forget_styles="Van_Gogh", image_size=32))
    c.classifier.update(dict(features=(16, 32), dense=64, dropout=0.0, steps=150, batch_size=16, image_size=32))
    # cond_drop 0.1: the `pretrained` stage (CPU_PRETRAIN_STEPS on the synthetic tree) must learn
    # the null prompt too, or guidance (w = 8) amplifies an untrained eps_null into noise.
    c.training.update(dict(batch_size=4, log_every=10, ckpt_every=20, cond_drop=0.1))
    c.optim.lr = 1e-4
    c.eval.update(dict(num_samples=24, fd_num_samples=24, attack_num_samples=12, sample_batch_size=12,
                       grid_size=6))
    c.eval.sampler.n_steps = 10
    c.esd.ddim_steps = 4
    c.sd.encode_batch_size = 16
    c.sd.fit_vae_steps = 300      # train the tiny VAE on the synthetic images first (~1 min)
  return c


def unlearncanvas_config(args: dict, experiment: str) -> ml_collections.ConfigDict:
  """`unlearncanvas_base` for a config file's parsed arguments (cpu, model_dir, data_dir)."""
  c = unlearncanvas_base(cpu=bool(args.get("cpu")))
  c.experiment = experiment
  if args.get("model_dir"):
    c.sd.model_dir = args["model_dir"]
  if args.get("data_dir"):
    c.data.data_dir = args["data_dir"]
  return c


def sd_stages(methods, *, steps: dict, default_steps: int, lr: dict = None, batch: dict = None,
              attack_steps: int = 0, eval_every: int = 0, synthetic: int = 0, pretrain_steps: int = 0,
              attack_data=("synthetic",), condition_shots: int = 0, condition_eps: float = 0.0) -> tuple:
  """Stable Diffusion chain: the style / object classifiers, (pretrain_steps > 0) fine-tuning
  of the whole UNet on all the data first (what UnlearnCanvas's authors did to SD v1.5; the
  `cpu` variants do it to their random tiny model), per method (or "method:variant") a SalUn
  mask stage where it takes one and the unlearning stage, evaluation of the starting model
  and every unlearned one, and (attack_steps > 0) per `attack_data` entry (`dimum_stages`'
  entries) and method an attack stage: by default DiMRA on synthetic auxiliary data the
  starting model generates under D_r's prompts (DiMUM paper Sec. VI-B), stage attack_<m>;
  the others attack_<m>_<entry> ("retain": attack_<m>_retain), report."""
  lr, batch = lr or {}, batch or {}
  stages = ml_collections.ConfigDict()
  stages.classifier = stage("classifier")
  order, names = ["classifier"], []
  init = "base"
  if pretrain_steps:
    stages.pretrained = stage("train", data="all", init="base", steps=pretrain_steps, trainable="all")
    order.append("pretrained")
    init = "pretrained"
  names += _unlearn_stages(stages, order, methods, init, lambda m: steps.get(m, default_steps),
                           lambda m: {**({"lr": lr[m]} if m in lr else {}),
                                      **({"batch_size": batch[m]} if m in batch else {})})
  stages.evaluate = stage("evaluate", models=(init,) + tuple(names))
  order.append("evaluate")
  if attack_steps:
    attack_stages(stages, order, names, attack_data, init, steps=attack_steps, eval_every=eval_every,
                   synthetic=synthetic, condition_shots=condition_shots, condition_eps=condition_eps,
                   suffix={"synthetic": "", "retain": "_retain"})
  stages.report = stage("report")
  order.append("report")
  return stages, tuple(order)
