"""The experiment every stage runs on, and the tools below the stages.

    exp = tasks.build(config, workdir)               # data, model, process: writes nothing
    params = load_params(exp, stage_dir)             # a stage's evaluated weights
    params = source_params(exp, workdir, init)       # an earlier stage, a directory, a task's named model

An `Experiment` holds what every task family shares (data streams, the model, the
noise process, the forgotten labels and their alternatives) and, in `task` and
`context`, the task module that built it (`unlearn_jax.tasks`) and that task's own parts
(Stable Diffusion: `tasks.unlearncanvas.SDContext`).  Stages call the task's hooks;
they never ask which family they run on.
"""
from __future__ import annotations

import dataclasses
import os
import zlib
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import checkpoints
from unlearn_jax import data as data_lib
from unlearn_jax import train_state as ts

#: data streams every experiment has; synthesize stages add their own (by stage name).
STREAMS = ("all", "retain", "forget", "alternative", "test_retain")
#: the attack stages' own streams, built per stage (`attack_stream`): benign fine-tuning and
#: few-shot relearning.
ATTACK_STREAMS = ("benign", "fewshot")
SYNTH_FILE = "data.npz"


@dataclasses.dataclass
class Experiment:
  """Everything the stages share: data, model, process.  Built once, before any write."""
  config: Any                                 # a `settings.Settings`
  train: data_lib.Dataset
  test: data_lib.Dataset
  streams: Dict[str, data_lib.Dataset]        # "all", "retain", "forget", "alternative", "test_retain"
  test_forget: data_lib.Dataset
  test_retain: data_lib.Dataset
  forget_labels: Tuple[int, ...]
  #: alt[c]: the alternative class of each class (itself if retained).
  alt: np.ndarray
  conditional: bool
  process: Any
  module: Any
  model_cfg: Any
  example_shape: Tuple[int, ...]
  classifier: Any = None
  #: the FID InceptionV3's variables (`config.eval.inception_weights`), or None: no Inception FID.
  inception: Any = None
  #: a loaded CLIP (`evaluation.load_clip`, `config.eval.clip_dir`) for the restorations' CLIP
  #: embedding distance, or None: no CLIP distance.
  clip: Any = None
  #: compiled samplers / NLL functions, keyed by shape: params are arguments, so
  #: every model of the experiment reuses one compilation.
  compiled: Dict[Any, Callable] = dataclasses.field(default_factory=dict)
  #: the task module that built the experiment (`unlearn_jax.tasks`): its hooks.
  task: Any = None
  #: the task's own parts (Stable Diffusion: `tasks.unlearncanvas.SDContext`); None otherwise.
  context: Any = None
  #: anchor_fn(config) -> (num_classes, K) CORE anchors in place of `core.anchor_candidates`.
  anchor_fn: Optional[Callable] = None

  @property
  def is_image(self) -> bool:
    return self.train.is_image

  @property
  def null_label(self) -> int:
    return self.train.num_classes if self.conditional else 0

  @property
  def retained_classes(self) -> Tuple[int, ...]:
    return tuple(c for c in range(self.train.num_classes) if c not in self.forget_labels)

  def stream(self, name: str, workdir: str) -> data_lib.Dataset:
    """A base stream, or the data a synthesize stage wrote."""
    if name in self.streams:
      return self.streams[name]
    return load_synthetic(self, os.path.join(workdir, name))

  def apply(self, variables, x, time, labels=None, train=False, rngs=None, cond_embedding=None):
    """The model's output; `cond_embedding` (B, ...) rows of the condition table in place of the
    labels' rows (`models.class_table`; `models.ddpm_unet.UNet` and `SDUNet` take it; only
    passed on when given, so other models need not)."""
    if cond_embedding is not None:
      return self.module.apply(variables, x, time, labels, train=train, rngs=rngs,
                               cond_embedding=cond_embedding)
    return self.module.apply(variables, x, time, labels, train=train, rngs=rngs)


def stage_seed(config, name: str) -> int:
  """A stable per-stage seed derived from the global seed and the stage name (mod 2^32)."""
  return int((config.seed * 1_000_003 + zlib.crc32(name.encode())) % (1 << 32))


def first_stage(config, kind: str) -> Optional[str]:
  """The first stage of `kind` in config.stage_order (None if there is none)."""
  return next((n for n in config.stage_order if config.stages[n].kind == kind), None)


# ----------------------------------------------------------------------------
# Weights: which ones a stage is evaluated on, and loading them.
# ----------------------------------------------------------------------------
def stage_ema_rate(cfg, st) -> float:
  """The EMA rate of a train / unlearn / attack stage: its `ema_rate`, else
  config.model.ema_rate for train stages and unlearn stages from scratch (re-training),
  and 0 (no EMA: the evaluated weights are the trained ones) for unlearn stages that
  fine-tune a model and for attacks (`config_lib.stage`)."""
  rate = st.ema_rate
  if rate is not None:
    return float(rate)
  if st.kind == "train" or (st.kind == "unlearn" and st.init == "scratch"):
    return float(cfg.model.ema_rate)
  return 0.0


def evaluated_weights(rate: float) -> str:
  """Which weights of a TrainState a stage with EMA rate `rate` is evaluated on."""
  return "ema" if rate > 0 else "params"


def state_weights(state: ts.TrainState, rate: float):
  """The evaluated weights of a live TrainState (`evaluated_weights`)."""
  return state.ema_params if evaluated_weights(rate) == "ema" else state.params


def source_dir(exp: Experiment, workdir: str, init: str) -> str:
  return os.path.join(workdir, init) if init in exp.config.stages else init


def load_params(exp: Experiment, stage_dir: str, ema: Optional[bool] = None):
  """The parameters of a stage's latest checkpoint (restored as saved: nested dicts):
  ema=None its evaluated weights (meta.json's "weights"; the EMA in directories written
  before stages recorded it), True the EMA, False the trained parameters."""
  del exp  # the checkpoint's own tree is the model's parameter tree
  if ema is None:
    meta_path = os.path.join(stage_dir, checkpoints.META)
    meta = checkpoints.read_json(meta_path) if os.path.exists(meta_path) else {}
    ema = meta.get("weights", "ema") == "ema"
  raw = checkpoints.load_raw(stage_dir)     # UserError naming an unreadable checkpoint
  return jax.tree_util.tree_map(jnp.asarray, raw["ema_params" if ema else "params"])


def source_params(exp: Experiment, workdir: str, init: str):
  """The evaluated weights (`stage_ema_rate`) a stage starts from: an earlier stage, a stage
  directory, or one of the task's named models (`task.NAMED_MODELS`, e.g. Stable
  Diffusion's "base": the model directory's weights)."""
  if init in exp.task.NAMED_MODELS:
    return exp.task.named_params(exp, init)
  return load_params(exp, source_dir(exp, workdir, init))


def weights_info(exp: Experiment, workdir: str, model: str) -> dict:
  """What results.json records of a model's evaluated weights: {"weights", "ema_rate"}."""
  if model in exp.task.NAMED_MODELS:
    return {"weights": model, "ema_rate": None}
  meta_path = os.path.join(source_dir(exp, workdir, model), checkpoints.META)
  meta = checkpoints.read_json(meta_path) if os.path.exists(meta_path) else {}
  return {"weights": meta.get("weights", "ema"), "ema_rate": meta.get("ema_rate")}


# ----------------------------------------------------------------------------
# The attack stages' own streams (`ATTACK_STREAMS`).
# ----------------------------------------------------------------------------
def benign_classes(exp: Experiment, classes: Tuple[int, ...] = ()) -> Tuple[int, ...]:
  """The classes of benign fine-tuning (the concept-resurgence attack): `classes`, or () ->
  the retained classes other than the forgotten classes' alternatives (`exp.alt`: DiMUM's
  D_u' and the baselines' c' map the forget conditions onto them, so fine-tuning on them is
  not unrelated to the forget concept), or every retained class if that leaves none."""
  if classes:
    return tuple(int(c) for c in classes)
  alts = {int(exp.alt[f]) for f in exp.forget_labels}
  rest = tuple(c for c in exp.retained_classes if c not in alts)
  return rest or exp.retained_classes


def attack_seed(config, st) -> int:
  """The seed of an attack stage `st`: from config.seed and what the attack is (its kind,
  data, shots, eps and classes), not from the model it attacks or the stage's name, so every
  attacked model meets the same batches, noise and evaluation keys (common random numbers:
  a difference between two methods' curves is not a difference of draws)."""
  classes = "-".join(str(int(c)) for c in st.classes)
  tokens = f"/{int(st.tokens)}" if getattr(st, "tokens", 0) else ""
  return stage_seed(config, f"attack/{st.attack}/{st.data}/{int(st.shots)}/{float(st.eps):g}/{classes}{tokens}")


def forget_draw_seed(config) -> int:
  """The seed of the one permutation of D_f that few-shot relearning and the condition
  attacks take their forget examples from (`fewshot_indices`): config.seed's alone."""
  return stage_seed(config, "attack/forget-examples")


def fewshot_indices(num_forget: int, shots: int, seed: int) -> np.ndarray:
  """The `shots` distinct indices into D_f (sorted) of few-shot relearning and the condition
  attacks: the first `shots` of a permutation seeded by `seed` (`forget_draw_seed`), so the
  sets are nested (k = 5 holds the k = 1 example) and the same for every attacked model."""
  return np.sort(np.random.default_rng(seed).permutation(num_forget)[:shots])


def pretrained_of(config, model: str) -> Optional[str]:
  """The pretrained model an attacked model started from: its stage's `init` (a stage, a
  stage directory or a named model); a train stage, or a model that is no stage (a
  directory, a named model), is its own; None for a stage trained from scratch."""
  mst = config.stages.get(model)
  if mst is None or mst.kind == "train":
    return model
  return None if mst.init == "scratch" else mst.init


def attack_stream(exp: Experiment, st, workdir: str) -> data_lib.Dataset:
  """What an attack stage fine-tunes on: data="benign" the training examples of D_r whose
  class is in `benign_classes(exp, st.classes)` (D_r holds no forget example); "fewshot" the
  `st.shots` forget examples `fewshot_indices(|D_f|, st.shots, forget_draw_seed(config))`
  with their labels; any other stream as `exp.stream` gives it."""
  if st.data == "benign":
    retain = exp.streams["retain"]
    return data_lib.subset(retain, np.isin(retain.labels, benign_classes(exp, st.classes)))
  if st.data == "fewshot":
    forget = exp.streams["forget"]
    return data_lib.subset(forget, fewshot_indices(len(forget), st.shots, forget_draw_seed(exp.config)))
  return exp.stream(st.data, workdir)


def load_synthetic(exp: Experiment, stage_dir: str) -> data_lib.Dataset:
  """The data set a synthesize stage wrote into `stage_dir`."""
  with np.load(os.path.join(stage_dir, SYNTH_FILE)) as f:
    images, labels = f["images"], f["labels"]
  return data_lib.Dataset(name=exp.train.name, images=images, labels=labels,
                          num_classes=exp.train.num_classes, class_names=exp.train.class_names,
                          source=f"synthetic:{os.path.basename(stage_dir)}", is_image=exp.is_image)
