"""Model construction from configs: the only place that reads `config.model`.

    module, typed_cfg = build_model(config.model, image_shape, num_classes)
    params = init_params(module, rng, image_shape, conditional=num_classes > 0)
    out = module.apply({"params": params}, x, time, labels, train=False)

`config.model.name` picks the factory ("ddpm_unet": `ddpm_unet.UNet` for NHWC
images, with "ncsnpp" its old alias; "mlp": `mlp.MLP` for (D,) data); the config's other keys that name a
field of the typed config are copied onto it (lists become tuples), and keys
that do not (e.g. "output", "ema_rate", "name") are left to their owners.
The data decides the image size, the channel count / dimension and the number
of classes; `config.model.conditional = False` forces an unconditional model.
`check_image_shape` guards a model (e.g. from a checkpoint) against data of
another shape.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict

import jax
import jax.numpy as jnp

from unlearn_jax.errors import UserError, check_choice, check_range
from unlearn_jax.models.classifier import Classifier, ClassifierConfig
from unlearn_jax.models.mlp import MLP, MLPConfig
from unlearn_jax.models.ddpm_unet import UNet, UNetConfig, class_table, downsample_factor

__all__ = [
    "Classifier", "ClassifierConfig", "MLP", "MLPConfig", "UNet", "UNetConfig",
    "MODEL_NAMES", "build_model", "class_table", "build_classifier", "init_params", "check_image_shape",
]

#: fields of the typed configs set from the data, not from `config.model`.
_DATA_FIELDS = frozenset({"image_size", "channels", "dim", "num_classes"})


def _fields_from(cfg, cls, prefix: str) -> dict:
  """Values of `cfg` (a `settings.Model` / `settings.Classifier`, or a dict) for `cls`'s
  non-data fields; lists -> tuples."""
  names = {f.name for f in dataclasses.fields(cls)} - _DATA_FIELDS
  out = {}
  items = dataclasses.asdict(cfg).items() if dataclasses.is_dataclass(cfg) else cfg.items()
  for key, value in items:
    if key not in names:
      continue
    if isinstance(value, (list, tuple)):
      value = tuple(value)
    out[key] = value
  for key in ("ch", "hidden", "num_layers", "dense", "embed_dim_mult"):
    if key in out:
      check_range(f"{prefix}.{key}", out[key], 1, 1 << 20)
  if "groups" in out:                     # 0: DDPM's min(C // 4, 32)
    check_range(f"{prefix}.groups", out["groups"], 0, 1 << 20)
  if "num_res_blocks" in out:
    check_range(f"{prefix}.num_res_blocks", out["num_res_blocks"], 1, 64)
  if "dropout" in out:
    check_range(f"{prefix}.dropout", out["dropout"], 0.0, 0.99)
  for key in ("ch_mult", "features"):
    if key in out and (not out[key] or any(int(m) < 1 for m in out[key])):
      raise UserError(f"{prefix}.{key}", out[key], "expected a non-empty tuple of positive ints")
  return out


def _get(cfg, key: str, default=None):
  """A field of a typed section or of a dict."""
  return cfg.get(key, default) if isinstance(cfg, dict) else getattr(cfg, key, default)


def _conditional_classes(model_cfg, num_classes: int) -> int:
  check_range("num_classes", num_classes, 0, 1 << 20)
  return num_classes if _get(model_cfg, "conditional", True) else 0


def _build_unet(model_cfg, image_shape: tuple, num_classes: int):
  if len(image_shape) != 3 or image_shape[0] != image_shape[1]:
    raise UserError("config.model.name", _get(model_cfg, "name"),
                    f"ddpm_unet takes square HxWxC images; the data has shape {tuple(image_shape)}")
  cfg = UNetConfig(image_size=int(image_shape[0]), channels=int(image_shape[2]),
                   num_classes=_conditional_classes(model_cfg, num_classes),
                   **_fields_from(model_cfg, UNetConfig, "config.model"))
  check_image_shape(cfg, image_shape)
  return UNet(cfg), cfg


def _build_mlp(model_cfg, image_shape: tuple, num_classes: int):
  if len(image_shape) != 1:
    raise UserError("config.model.name", "mlp",
                    f"mlp takes flat (D,) data; the data has shape {tuple(image_shape)}")
  cfg = MLPConfig(dim=int(image_shape[0]),
                  num_classes=_conditional_classes(model_cfg, num_classes),
                  **_fields_from(model_cfg, MLPConfig, "config.model"))
  return MLP(cfg), cfg


#: "ncsnpp" is the DDPM UNet's name before release 0.1 (it never was NCSN++).
_MODEL_FACTORIES: Dict[str, Callable] = {"ddpm_unet": _build_unet, "ncsnpp": _build_unet, "mlp": _build_mlp}
MODEL_NAMES = tuple(_MODEL_FACTORIES)


def build_model(model_cfg, image_shape: tuple, num_classes: int):
  """(module, typed config) for `model_cfg.name` on data of `image_shape` (no batch dim)."""
  name = check_choice("config.model.name", _get(model_cfg, "name"), MODEL_NAMES)
  return _MODEL_FACTORIES[name](model_cfg, tuple(image_shape), num_classes)


def build_classifier(cfg, image_shape: tuple, num_classes: int):
  """(Classifier, ClassifierConfig) for HxWxC images and `num_classes` >= 2 classes."""
  if len(image_shape) != 3:
    raise UserError("config.data.image_size", tuple(image_shape),
                    "the classifier takes HxWxC images")
  check_range("num_classes", num_classes, 2, 1 << 20)
  typed = ClassifierConfig(num_classes=int(num_classes),
                           **_fields_from(cfg, ClassifierConfig, "config.classifier"))
  return Classifier(typed), typed


def _diffusion_inputs(image_shape: tuple, conditional: bool):
  x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  labels = jnp.zeros((1,), jnp.int32) if conditional else None
  return (x, jnp.zeros((1,), jnp.float32), labels)


def _classifier_inputs(image_shape: tuple, conditional: bool):
  del conditional
  return (jnp.zeros((1,) + tuple(image_shape), jnp.float32),)


_INIT_INPUTS: Dict[type, Callable] = {
    UNet: _diffusion_inputs, MLP: _diffusion_inputs, Classifier: _classifier_inputs,
}


#: XLA CPU spends ~30 s optimising the unrolled threefry of every parameter's
#: initializer even for a 40 K-parameter UNet; init runs once, so on CPU it is
#: compiled without backend optimisation (~5x faster; params equal to ~1 ulp).
_INIT_COMPILER_OPTIONS = {"cpu": {"xla_backend_optimization_level": 0}}


def init_params(module, rng: jax.Array, image_shape: tuple, conditional: bool = False):
  """variables['params'] of `module` for inputs of `image_shape` (no batch dim), jitted.

  `conditional` passes dummy labels (only valid for a model with num_classes > 0;
  a conditional model also builds its class embedding from labels=None); the
  classifier ignores it.
  """
  inputs = _INIT_INPUTS[type(module)](image_shape, conditional)
  lowered = jax.jit(module.init).lower(rng, *inputs)
  options = _INIT_COMPILER_OPTIONS.get(jax.default_backend())
  return lowered.compile(compiler_options=options)(rng, *inputs)["params"]


def param_shapes(module, image_shape: tuple, conditional: bool = False):
  """ShapeDtypeStructs of what `init_params` returns, computed without running the init
  (`jax.eval_shape`; for compiling a step without weights, `unlearn_jax.aot`)."""
  inputs = _INIT_INPUTS[type(module)](image_shape, conditional)
  return jax.eval_shape(module.init, jax.random.key(0), *inputs)["params"]


def _unet_shape_problem(cfg: UNetConfig, image_shape: tuple):
  expected = (cfg.image_size, cfg.image_size, cfg.channels)
  if tuple(image_shape) != expected:
    return "the model was built for {}x{}x{} images".format(*expected)
  factor = downsample_factor(cfg)
  if cfg.image_size % factor:
    return (f"the UNet halves the image {len(cfg.ch_mult) - 1} times "
            f"(ch_mult={cfg.ch_mult}), so the image size must be divisible by {factor}")
  return None


def _mlp_shape_problem(cfg: MLPConfig, image_shape: tuple):
  if tuple(image_shape) != (cfg.dim,):
    return f"the model was built for {cfg.dim}-dimensional data"
  return None


_SHAPE_CHECKS: Dict[type, Callable] = {UNetConfig: _unet_shape_problem,
                                       MLPConfig: _mlp_shape_problem}


def check_image_shape(typed_cfg, image_shape: tuple) -> None:
  """Raises UserError("config.data.image_size", ...) if the model cannot take `image_shape`."""
  problem = _SHAPE_CHECKS[type(typed_cfg)](typed_cfg, tuple(image_shape))
  if problem:
    raise UserError("config.data.image_size", tuple(image_shape), problem)
