"""The typed view of a config: frozen dataclasses, built in one place from the ConfigDict.

    s = settings.of(config)        # a ConfigDict (or a `Settings`, returned as it is)
    s.optim.lr, s.stages["sgu_obtuse"].steps, s.salun.beta

The driver (`main`, `pipeline.run`) and the checks on user input (`validation`) read the
`ml_collections.ConfigDict`; everything below them (tasks, stages, methods, models, data)
reads a `Settings`.  `of` is the one place the dict becomes dataclasses: every field of
the config must be a field here (a misspelt or stale key is a UserError naming it), each
value is converted to its field's type (lists -> tuples, ints -> floats), and a section a
config leaves out gets its dataclass's defaults.

The sections: `Data`, `SDE`, `Model` (its typed network configs, `models.UNetConfig` /
`MLPConfig`, are built from it and the data by `models.build_model`), `Optim`, `Training`,
`Unlearn`, `Classifier`, `Eval` (`Sampler`, `NLL`, `Inpaint`, `Reconstruct`), `SD` (Stable Diffusion experiments
only; None otherwise), `Stage` (one per `config.stages` entry), and one section per
unlearning method, declared by the method's own module (`MethodSpec.section` /
`MethodSpec.config`, collected in `unlearning.methods.SECTIONS`): a new method's config
block is its dataclass, and `config_lib.base()` takes its defaults from it.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Dict, Mapping, Optional, Tuple

import ml_collections

from unlearn_jax.errors import UserError
from unlearn_jax.unlearning import methods as methods_lib


@dataclasses.dataclass(frozen=True)
class Data:
  """`data.load_dataset` and the forget split (`data.forget_mask`); data_dir .. template are
  UnlearnCanvas's (`tasks.unlearncanvas`, `canvas`), forget_prompts .. gen_seed the prompt
  task's (`tasks.prompts`, `prompt_sets`)."""
  name: str = "mnist"
  source: str = "auto"
  tfds_data_dir: Optional[str] = None
  image_size: int = 28
  num_channels: int = 1
  centered: bool = False
  random_flip: bool = False
  forget_classes: Tuple[int, ...] = (3,)
  forget_attribute: Optional[str] = None
  max_examples: int = 0
  toy_num_samples: int = 20000
  seed: int = 0
  data_dir: str = ""
  styles: Tuple[str, ...] = ()
  objects: Tuple[str, ...] = ()
  image_indices: Tuple[int, ...] = (1, 2, 3)
  forget_styles: str = "Forget06"
  alt_style: str = "Abstractionism"
  template: str = "unlearncanvas"
  # prompt-only forgetting (`tasks.prompts`): the concepts as prompt lists or an I2P CSV, and
  # how the frozen base model generates D_f / D_r (gen_steps 0: config.eval.sampler.n_steps).
  forget_prompts: Tuple[str, ...] = ()
  retain_prompts: Tuple[str, ...] = ()
  anchor_prompt: str = ""
  i2p_csv: str = ""
  i2p_categories: Tuple[str, ...] = ()
  i2p_seed_column: str = ""
  i2p_guidance_column: str = ""
  i2p_max_prompts: int = 0
  forget_images_per_prompt: int = 100
  retain_images_per_prompt: int = 400
  gen_steps: int = 0
  gen_guidance: float = 6.5
  gen_seed: int = 0


@dataclasses.dataclass(frozen=True)
class SDE:
  """`sde.get_sde(name, **fields)`: each process takes the fields it has."""
  name: str = "vesde"
  sigma_min: float = 0.01
  sigma_max: float = 50.0
  beta_min: float = 0.1
  beta_max: float = 20.0
  N: int = 1000
  eps: float = 1e-5
  beta_start: float = 1e-4
  beta_end: float = 0.02
  beta_schedule: str = "linear"


@dataclasses.dataclass(frozen=True)
class Model:
  """The network (`models.build_model`): `ddpm_unet` reads ch..dropout, `mlp` hidden and
  num_layers; `sd` is the Stable Diffusion UNet (`SD`)."""
  name: str = "ddpm_unet"
  ch: int = 32
  ch_mult: Tuple[int, ...] = (1, 2, 2)
  num_res_blocks: int = 1
  attn_resolutions: Tuple[int, ...] = ()
  dropout: float = 0.0
  hidden: int = 128
  num_layers: int = 3
  output: str = "eps"
  ema_rate: float = 0.999
  conditional: bool = False


@dataclasses.dataclass(frozen=True)
class Optim:
  """`training.make_optimizer`: "adam" or "sgd", warmup, clipping, "constant" or "cosine" decay."""
  name: str = "adam"
  lr: float = 2e-4
  warmup: int = 5000
  grad_clip: float = 1.0
  b1: float = 0.9
  eps: float = 1e-8
  decay: str = "constant"


@dataclasses.dataclass(frozen=True)
class Training:
  batch_size: int = 128
  weighting: str = "sigma"
  reduce: str = "sum"
  log_every: int = 100
  ckpt_every: int = 1000
  sample_every: int = 0
  max_to_keep: int = 2
  cond_drop: float = 0.1


@dataclasses.dataclass(frozen=True)
class Unlearn:
  """The alternative of each forgotten class, and the baselines' CORE anchor scheme ("": none)."""
  alternative: str = "next"
  anchors: str = ""


@dataclasses.dataclass(frozen=True)
class Classifier:
  """The evaluation classifier; `image_size` > 0 resizes its inputs (UnlearnCanvas)."""
  features: Tuple[int, ...] = (32, 64)
  dense: int = 128
  dropout: float = 0.0
  steps: int = 2000
  batch_size: int = 128
  lr: float = 1e-3
  image_size: int = 0


@dataclasses.dataclass(frozen=True)
class Sampler:
  """`sampling` by kind: pc (predictor, corrector, snr, eps), ode, ddpm, ddim (eta), guidance w."""
  kind: str = "pc"
  predictor: str = "reverse_diffusion"
  corrector: str = "langevin"
  snr: float = 0.16
  n_steps: int = 1000
  eps: float = 1e-5
  guidance: float = 2.0
  eta: float = 0.0


@dataclasses.dataclass(frozen=True)
class NLL:
  """`likelihood` on the probability-flow ODE (`evaluation.dataset_nll`)."""
  num_examples: int = 1000
  batch_size: int = 100
  passes: int = 1
  rtol: float = 1e-5
  atol: float = 1e-5
  hutchinson: str = "rademacher"
  offset: str = "score_sde"


@dataclasses.dataclass(frozen=True)
class Restoration:
  """A restoration measurement of SGU Sec. 4.3 (`tasks.classes.restoration_entries`): the first
  `num_examples` images of D_g and of D_f (0: off) from `split` ("test" or "train"), restored by
  the model; a restored image counts as correct when the classifier's class of it equals its
  original's `target`: "label" (the original's class, the default) or "prediction" (the
  classifier's class of the original; the paper's wording allows both)."""
  num_examples: int = 0
  split: str = "test"
  target: str = "label"


@dataclasses.dataclass(frozen=True)
class Inpaint(Restoration):
  """Inpainting (SGU Table 3): the upper half masked, PC inpainting with `Eval.sampler`'s
  predictor, corrector, snr, n_steps and eps."""


@dataclasses.dataclass(frozen=True)
class Reconstruct(Restoration):
  """Reconstruction (SGU Table 4): noised to `t_start` (the paper's 0.02) and sampled back to
  `Eval.sampler.eps` by the reverse SDE in `n_steps` (0: ceil(t_start / T * N), the SDE's own
  level spacing), no corrector."""
  t_start: float = 0.02
  n_steps: int = 0


@dataclasses.dataclass(frozen=True)
class MeshSettings:
  """`config.mesh`: the run's device mesh (`unlearn_jax.mesh`): `fsdp` devices share each
  parameter, optimizer moment, frozen copy and mask (1: replicated, plain data parallelism);
  the batch is split over every device."""
  fsdp: int = 1


@dataclasses.dataclass(frozen=True)
class Eval:
  num_samples: int = 10000
  sample_batch_size: int = 500
  sampler: Sampler = Sampler()
  fd_num_samples: int = 1000
  attack_num_samples: int = 500
  # utility along an attack curve of a class-conditional model: "fd" at each point, on
  # attack_num_samples retain-conditioned samples more (unconditional models: always, free)
  attack_fd: bool = False
  nll: NLL = NLL()
  grid_size: int = 64
  confidence_threshold: float = 0.9
  min_confident_share: float = 0.5
  classifier_dir: str = ""
  #: Inception FID (`tasks.classes.inception_entries`): the FID network's weights (a .npz of
  #: `evaluation.inception_weights`, or pytorch-fid's .pth); "": none, and no FID is reported.
  inception_weights: str = ""
  inception_size: int = 299
  inception_batch_size: int = 50
  precision_recall_k: int = 3
  # a transformers-format CLIP directory (`evaluation.load_clip`; "tiny": a random one written to
  # the workdir's inputs/ by the prompts task): the prompts task's CLIP score, the SGU
  # restorations' CLIP embedding distance; "": none, and neither is reported.
  clip_dir: str = ""
  # prompt-only forgetting (`tasks.prompts`): NudeNet counts (the `nudity` extra), a COCO-style
  # caption list (a file or "bundled") for CLIP score and FID (`inception_weights` against
  # `fid_reference_dir`'s real images, else against the base model's generations).
  nudity: bool = False
  nudity_threshold: float = 0.6
  coco_prompts: str = ""
  coco_num_prompts: int = 0
  fid_reference_dir: str = ""
  # SGU Tables 3-4 (`evaluation.restoration`; off at num_examples=0).
  inpaint: Inpaint = Inpaint()
  reconstruct: Reconstruct = Reconstruct()


@dataclasses.dataclass(frozen=True)
class Tiny:
  """The random tiny Stable Diffusion of `model_dir="tiny"` (`models.stable_diffusion.write_tiny`)."""
  block_out_channels: Tuple[int, ...] = (32,)
  cross_attention_dim: int = 32


@dataclasses.dataclass(frozen=True)
class SD:
  """Stable Diffusion: the model directory, which weights train, dtype, remat, the latent
  cache's batch, and (model_dir="tiny") the VAE fit on the data's images."""
  model_dir: str = ""
  trainable: str = "cross_attn"
  dtype: str = "float32"
  remat: bool = False
  encode_batch_size: int = 8
  tiny: Tiny = Tiny()
  fit_vae_steps: int = 0
  fit_vae_lr: float = 3e-3
  fit_vae_batch_size: int = 8
  fit_vae_kl_weight: float = 1e-3


@dataclasses.dataclass(frozen=True)
class Stage:
  """One `config.stages` entry (`config_lib.stage` documents the fields)."""
  kind: str
  steps: int = 0
  data: str = "all"
  init: str = "scratch"
  method: str = ""
  variant: str = ""
  models: Tuple[str, ...] = ()
  mask: str = ""
  eval_every: int = 0
  num: int = 0
  batch_size: int = 0
  trainable: str = ""
  decay: str = ""
  lr: Optional[float] = None
  ema_rate: Optional[float] = None
  attack: str = "finetune"
  shots: int = 0
  eps: float = 0.0
  classes: Tuple[int, ...] = ()
  tokens: int = 0


_GENERAL = (("data", Data), ("sde", SDE), ("model", Model), ("optim", Optim), ("training", Training),
            ("unlearn", Unlearn), ("classifier", Classifier), ("eval", Eval), ("mesh", MeshSettings))
#: the sections of a Settings: the general ones, then one per method (`methods.SECTIONS`).
SECTIONS: Dict[str, type] = dict(_GENERAL, **methods_lib.SECTIONS)

Settings = dataclasses.make_dataclass(
    "Settings",
    [("experiment", str), ("seed", int), ("stage_order", Tuple[str, ...]), ("stages", Mapping[str, Stage])]
    + [(name, cls, dataclasses.field(default_factory=cls)) for name, cls in SECTIONS.items()]
    + [("sd", Optional[SD], dataclasses.field(default=None))],
    frozen=True, eq=True)
Settings.__module__ = __name__
Settings.__doc__ = """A whole config, typed: experiment, seed, stage_order, stages (name -> `Stage`),
one field per section of `SECTIONS` and `sd` (None outside Stable Diffusion experiments)."""


def _items(node, path: str):
  if isinstance(node, Mapping) or hasattr(node, "items"):
    return dict(node.items())
  raise UserError(path, node, "expected a section (a dict of fields)")


def _convert(tp, value, path: str):
  origin = typing.get_origin(tp)
  if origin is typing.Union:                                  # Optional[X]
    if value is None:
      return None
    inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
    return _convert(inner, value, path)
  if dataclasses.is_dataclass(tp):
    return section(tp, value, path)
  if origin in (tuple, Tuple):
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
      raise UserError(path, value, "expected a tuple")
    args = typing.get_args(tp)
    inner = args[0] if args else Any
    return tuple(_convert(inner, v, f"{path}[{i}]") for i, v in enumerate(value))
  if tp is float and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  return value


def section(cls, node, path: str):
  """`cls` (a frozen dataclass) from the section `node` (ConfigDict, dict or a `cls`) at
  `path`: every key must be a field of `cls`; fields it leaves out take their defaults."""
  if isinstance(node, cls):
    return node
  values = _items(node, path)
  hints = typing.get_type_hints(cls)
  names = [f.name for f in dataclasses.fields(cls)]
  unknown = sorted(set(values) - set(names))
  if unknown:
    raise UserError(f"{path}.{unknown[0]}", values[unknown[0]],
                    f"not a field of {path} (its fields: {', '.join(names)})")
  kw = {}
  for f in dataclasses.fields(cls):
    if f.name in values:
      kw[f.name] = _convert(hints[f.name], values[f.name], f"{path}.{f.name}")
    elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
      raise UserError(f"{path}.{f.name}", None, f"{path} must set {f.name}")
  return cls(**kw)


def of(config) -> Settings:
  """The `Settings` of a config (a ConfigDict or dict; a `Settings` is returned as it is)."""
  if isinstance(config, Settings):
    return config
  values = _items(config, "config")
  known = {"experiment", "seed", "stage_order", "stages", "sd", *SECTIONS}
  unknown = sorted(set(values) - known)
  if unknown:
    raise UserError(f"config.{unknown[0]}", values[unknown[0]],
                    "not a config field (its sections: " + ", ".join(sorted(known)) + ")")
  stages = {name: section(Stage, st, f"config.stages.{name}")
            for name, st in _items(values.get("stages", {}), "config.stages").items()}
  kw = {name: section(cls, values[name], f"config.{name}") for name, cls in SECTIONS.items() if name in values}
  sd = values.get("sd")
  return Settings(experiment=str(values.get("experiment", "")), seed=int(values.get("seed", 0)),
                  stage_order=tuple(values.get("stage_order", ())), stages=stages,
                  sd=None if sd is None else section(SD, sd, "config.sd"), **kw)


def replace(s, path: str, value):
  """`s` (a Settings or a section) with the field at dotted `path` set to `value`."""
  head, _, rest = path.partition(".")
  if rest:
    return dataclasses.replace(s, **{head: replace(getattr(s, head), rest, value)})
  hints = typing.get_type_hints(type(s))
  return dataclasses.replace(s, **{head: _convert(hints[head], value, path)})


def to_config_dict(s) -> ml_collections.ConfigDict:
  """A `Settings` back as a ConfigDict (what `pipeline.run` and `--config` overrides take):
  every field, with its default where the original config left one out (no `sd` section
  outside Stable Diffusion)."""
  values = as_dict(s)
  if values.get("sd") is None:
    values.pop("sd", None)
  return ml_collections.ConfigDict(values)


def as_dict(x) -> Any:
  """A Settings or section as plain dicts / lists (JSON-ready)."""
  if dataclasses.is_dataclass(x):
    return {f.name: as_dict(getattr(x, f.name)) for f in dataclasses.fields(x)}
  if isinstance(x, Mapping):
    return {k: as_dict(v) for k, v in x.items()}
  if isinstance(x, tuple):
    return [as_dict(v) for v in x]
  return x
