r"""Deviceless compilation of a run's steps for a TPU topology: memory and FLOPs per chip.

    python -m unlearn_jax.aot --config=configs/dimum_digits.py:cpu --topology=v5e:2x2 \
        [--config.mesh.fsdp=2] [--stages=pretrained,dimum]

Needs libtpu (`pip install -e ".[tpu]"`) but no TPU: `jax.experimental.topologies` describes
the topology's chips, and each distinct train / unlearn / attack step of the config is lowered
and compiled for them through the same `training.jit_step` the run uses (`mesh.make` over
the topology's devices, the config's `mesh.fsdp`).  Nothing is trained or loaded: the
parameters, optimizer state, frozen copies and masks are `jax.eval_shape`s of the stage's
own init and transform, the batches `ShapeDtypeStruct`s of the stage's batch size.  A
class-conditional or score-model config is built as a run builds it, on the "shapes" data
source (zero images of the data set's size, channels and classes: `data.load_dataset`), so
paper-scale configs compile without their data.  A Stable Diffusion config whose `sd.model_dir` is not a directory (e.g. empty)
takes the SD v1.5 UNet from `SD15_UNET` instead (64x64x4 latents, 77x768 CLIP text states;
the config's own dtype, remat, trainable parts, methods and prompt count go into it) and
reads neither weights nor data; `sd.model_dir="tiny"` builds the tiny random model of the
cpu variants in a temporary directory.

For each step it prints the stage, the step kind, XLA's per-device bytes (arguments,
temporaries, outputs, and the peak against the chip's HBM), GFLOP per step per chip, a
roofline time at the chip's bf16 peak (an estimate: FLOPs / peak, nothing else), and the
compile seconds; the table ends with one JSON line.  A step that cannot be sharded or uses
an op the TPU compiler rejects fails here, before a job is launched (maxtext's
`train_compile.py` does the same); one whose temporaries alone exceed the chip's HBM (the
compiler's RESOURCE_EXHAUSTED) is a row that does not fit, with the compiler's message.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
import tempfile
import time
import types
from typing import Any, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")     # libtpu: no metadata server to ask

import jax                                           # noqa: E402
from absl import flags                               # noqa: E402
from jax.experimental import topologies              # noqa: E402
import jax.numpy as jnp                              # noqa: E402
import numpy as np                                   # noqa: E402

from unlearn_jax import canvas                       # noqa: E402
from unlearn_jax import data as data_lib             # noqa: E402
from unlearn_jax import mesh as mesh_lib             # noqa: E402
from unlearn_jax import sde as sde_lib               # noqa: E402
from unlearn_jax import settings                     # noqa: E402
from unlearn_jax import tasks                        # noqa: E402
from unlearn_jax import models                       # noqa: E402
from unlearn_jax import pipeline                     # noqa: E402
from unlearn_jax import train_state as ts            # noqa: E402
from unlearn_jax import training                     # noqa: E402
from unlearn_jax import validation                   # noqa: E402
from unlearn_jax.errors import UserError             # noqa: E402
from unlearn_jax.experiment import Experiment        # noqa: E402
from unlearn_jax.models import stable_diffusion as sd  # noqa: E402
from unlearn_jax.tasks import sd_common              # noqa: E402
from unlearn_jax.stages import attack as attack_stage  # noqa: E402
from unlearn_jax.stages import train as train_stage  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Chip:
  hbm_gib: float          # HBM per chip
  bf16_tflops: float      # peak dense bf16 TFLOP/s per chip
  source: str


#: per-chip HBM and peak bf16 FLOP/s, from Google Cloud's TPU system-architecture pages.
CHIPS: Dict[str, Chip] = {
    "v4": Chip(32.0, 275.0, "https://cloud.google.com/tpu/docs/v4"),
    "v5e": Chip(16.0, 197.0, "https://cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip(95.0, 459.0, "https://cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip(32.0, 918.0, "https://cloud.google.com/tpu/docs/v6e"),
}
_GIB, _MIB = float(1 << 30), float(1 << 20)


def chip_of(topology: str) -> Chip:
  """The `CHIPS` entry of a topology name such as "v5e:2x4" (field --topology)."""
  kind = topology.split(":")[0].lower()
  kind = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e"}.get(kind, kind)
  if kind not in CHIPS or ":" not in topology:
    raise UserError("--topology", topology, f"expected <chip>:<shape> with chip one of {sorted(CHIPS)}, "
                    "e.g. v5e:2x4")
  return CHIPS[kind]


def topology_devices(topology: str) -> List[Any]:
  """The devices of a TPU topology, described without a TPU (needs libtpu: the [tpu] extra)."""
  chip_of(topology)
  try:
    return list(topologies.get_topology_desc(platform="tpu", topology_name=topology).devices)
  except Exception as e:  # noqa: BLE001 -- libtpu missing or an unknown shape
    raise UserError("--topology", topology, f"no TPU topology description ({str(e).splitlines()[0][:200]}); "
                    'install libtpu with pip install -e ".[tpu]" and give a shape the chip has, e.g. v5e:2x4') from None


# ----------------------------------------------------------------------------
# Stable Diffusion v1.5 by shape only.
# ----------------------------------------------------------------------------
#: The UNet of Stable Diffusion v1.4 / v1.5 (one architecture; diffusers' unet/config.json of
#: CompVis/stable-diffusion-v1-4): the fields that differ from FlaxUNet2DConditionModel's
#: defaults, which are SD v1's (block_out_channels (320, 640, 1280, 1280), two layers per
#: block, 8 attention heads, 3 cross-attention down / up blocks).
SD15_UNET = {"sample_size": 64, "cross_attention_dim": 768}
#: CLIP ViT-L/14's text states: 77 tokens of 768; 8x VAE down-sampling of 512x512 images.
SD15_TEXT_LEN, SD15_TEXT_DIM, SD15_LATENT_SHAPE = 77, 768, (64, 64, 4)


def uses_preset(config) -> bool:
  """A Stable Diffusion config whose model directory is not there: compiled from `SD15_UNET`."""
  return config.get("sd") is not None and config.sd.model_dir != "tiny" and not os.path.isdir(config.sd.model_dir)


def _preset_prompts(cfg) -> Tuple[int, Tuple[int, ...]]:
  """(number of prompts, the forget prompts' ids) as the config's data would give them:
  UnlearnCanvas's (style, object) prompts, or the prompt task's forget + retain prompts."""
  d = cfg.data
  if d.name == "unlearncanvas":
    styles = tuple(d.styles) or canvas.STYLES
    objects = tuple(d.objects) or canvas.OBJECTS
    forget = [s for s in canvas.resolve_styles(d.forget_styles) if s in styles]
    ids = tuple(styles.index(s) * len(objects) + o for s in forget for o in range(len(objects)))
    return len(styles) * len(objects), ids
  n_forget = max(1, len(d.forget_prompts))
  return n_forget + max(1, len(d.retain_prompts)), tuple(range(n_forget))


def sd15_experiment(cfg) -> Experiment:
  """An `Experiment` of the SD v1.5 UNet by shape only (no weights, no data): what
  `stage_step_shapes` needs to build every method's step for a config (`cfg` a Settings)."""
  n, forget = _preset_prompts(cfg)
  module = sd.SDUNet(unet_config=sd.unet_config_from(SD15_UNET), num_prompts=n,
                     text_len=SD15_TEXT_LEN, text_dim=SD15_TEXT_DIM,
                     num_train_timesteps=sd.SD_V1_SCHEDULE["num_train_timesteps"],
                     dtype=sd_common.DTYPES[cfg.sd.dtype], remat=bool(cfg.sd.remat))
  labels = np.arange(n, dtype=np.int32)
  train = data_lib.Dataset(name=cfg.data.name, images=np.zeros((n,) + SD15_LATENT_SHAPE, np.float32),
                           labels=labels, num_classes=n, class_names=tuple(map(str, labels)),
                           source="shapes of SD v1.5 (unlearn_jax.aot)", is_image=False)
  alt = labels.copy()
  retained = [c for c in labels if c not in forget]
  alt[list(forget)] = retained[0] if retained else 0
  sch = sd.SD_V1_SCHEDULE
  process = sde_lib.DDPMSchedule(N=sch["num_train_timesteps"], beta_start=sch["beta_start"],
                                 beta_end=sch["beta_end"], beta_schedule=sch["beta_schedule"])
  params = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1,) + SD15_LATENT_SHAPE),
                          jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))["params"]
  context = types.SimpleNamespace(base_params=params, compiled={}, preset=True)
  return Experiment(config=cfg, train=train, test=train, streams={"all": train}, test_forget=train,
                    test_retain=train, forget_labels=forget, alt=alt, conditional=True, process=process,
                    module=module, model_cfg=None, example_shape=SD15_LATENT_SHAPE, context=context,
                    task=tasks.get(cfg))


def build(config, workdir: str) -> Experiment:
  """The experiment `compile_run` compiles: as a run builds it (`sd.model_dir="tiny"` written
  into `workdir`), or `sd15_experiment` for a Stable Diffusion config without a model."""
  validation.check_config(config)
  if uses_preset(config):
    return sd15_experiment(settings.of(config))
  if config.data.name in data_lib.SPECS and data_lib.SPECS[config.data.name].native_size:
    config = config.copy_and_resolve_references()
    config.data.source = "shapes"     # zero images of the data's shapes and classes: nothing is read
  config = tasks.get(config).prepare(config, workdir)
  return pipeline.build_experiment(config, workdir)


def _sds(x):
  return jax.ShapeDtypeStruct(np.shape(x), x.dtype)


def _param_shapes(exp: Experiment):
  if isinstance(exp.module, sd.SDUNet):
    return jax.eval_shape(exp.module.init, jax.random.key(0), jnp.zeros((1,) + tuple(exp.example_shape)),
                          jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))["params"]
  return models.param_shapes(exp.module, exp.example_shape, conditional=exp.conditional)


def _batch(exp: Experiment, b: int):
  return {"x": jax.ShapeDtypeStruct((b,) + tuple(exp.example_shape), jnp.float32),
          "labels": jax.ShapeDtypeStruct((b,), jnp.int32)}


def condition_step_shapes(exp: Experiment, st, batch_size: int = 0):
  """(step_fn, state, consts, batches) of a condition / embedding / textual-inversion attack
  stage (`stages.attack.condition_parts`), abstract: the rows, their Adam state and the frozen
  network's ShapeDtypeStructs."""
  st = attack_stage.condition_stage(exp, st)
  step_fn, _, init = attack_stage.condition_parts(exp, st)
  state, consts = jax.eval_shape(init, _param_shapes(exp))
  return step_fn, state, consts, {"forget": _batch(exp, batch_size or st.batch_size)}


def stage_step_shapes(exp: Experiment, st, batch_size: int = 0):
  """(step_fn, state, consts, batches) of a train / unlearn / attack stage, all abstract:
  ShapeDtypeStructs from `jax.eval_shape` of the stage's own init and transform; batches of
  `batch_size` (0: the stage's own)."""
  if st.kind == "attack" and st.attack != "finetune":
    return condition_step_shapes(exp, st, batch_size)
  params = _param_shapes(exp)
  mask = None
  if st.kind == "unlearn" and st.mask:
    kind = exp.config.stages[st.mask].method
    dtype = jnp.float32 if kind == "sa" else jnp.uint8      # Selective Amnesia's Fisher is a float
    mask = jax.tree_util.tree_map(lambda p: jax.ShapeDtypeStruct(p.shape, dtype), params)
  parts = train_stage.step_parts(exp, st, params, mask)
  state = jax.eval_shape(lambda p: ts.create(p, parts.tx), params)
  batch = _batch(exp, batch_size or st.batch_size or exp.config.training.batch_size)
  batches = {o.stream: batch for o in parts.objectives.values()}
  return parts.step_fn, state, jax.tree_util.tree_map(_sds, parts.consts), batches


_GIB_IN_MESSAGE = re.compile(r"HLO temporaries \(([0-9.]+)G\)")


def does_not_fit(error: BaseException, seconds: float, hlo_sha: str) -> Dict[str, Any]:
  """The row of a step the TPU compiler refuses for want of HBM (RESOURCE_EXHAUSTED: its
  temporaries alone exceed the chip): no memory or cost analysis exists, so only the
  temporaries the message names (GiB) and the message itself."""
  message = next((l.strip() for l in str(error).splitlines() if l.strip()), type(error).__name__)
  found = _GIB_IN_MESSAGE.search(message)
  keys = ("args_bytes", "out_bytes", "alias_bytes", "code_bytes", "flops", "peak_bytes")
  return {**dict.fromkeys(keys), "temp_bytes": int(float(found.group(1)) * _GIB) if found else None,
          "compile_s": seconds, "hlo_sha": hlo_sha, "fits": False, "compiler_error": message}


def compile_step(step_fn, state, consts, batches, m) -> Dict[str, Any]:
  """Lowers and compiles one step over mesh `m`; XLA's memory and cost analyses per device."""
  jitted, _, _ = training.jit_step(step_fn, state, consts, m)
  rng = jax.eval_shape(lambda: jax.random.key(0))
  t0 = time.perf_counter()
  lowered = jitted.lower(state, batches, rng, consts)
  hlo_sha = hashlib.sha256(lowered.as_text().encode()).hexdigest()[:16]   # freed before compiling
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    return does_not_fit(e, time.perf_counter() - t0, hlo_sha)
  seconds = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  row = {"args_bytes": int(mem.argument_size_in_bytes), "temp_bytes": int(mem.temp_size_in_bytes),
         "out_bytes": int(mem.output_size_in_bytes), "alias_bytes": int(mem.alias_size_in_bytes),
         "code_bytes": int(mem.generated_code_size_in_bytes),
         "flops": float((cost or {}).get("flops", 0.0)), "compile_s": seconds,
         "hlo_sha": hlo_sha}
  row["peak_bytes"] = row["args_bytes"] + row["temp_bytes"] + row["out_bytes"] - row["alias_bytes"]
  return row


def step_kind(st) -> str:
  if st.kind == "attack":
    return f"attack:{st.attack}"
  return st.kind if st.kind != "unlearn" else f"unlearn:{st.method}" + (f"/{st.variant}" if st.variant else "")


def compile_run(exp: Experiment, topology: str, stages: Optional[Sequence[str]] = None,
                per_chip_batch: int = 0, on_row: Optional[Any] = None) -> List[Dict[str, Any]]:
  """One row per distinct step of the run's train / unlearn / attack stages (those named in
  `stages`, default all), compiled for `topology` on a mesh with the config's mesh.fsdp;
  `per_chip_batch` > 0 sets every step's global batch to that many examples per chip (0:
  the stages' own batch sizes, which must split evenly over the chips).  `on_row(row)` is
  called as each step is compiled (a full-size SD step takes ~15 minutes on 2 cores)."""
  chip = chip_of(topology)
  m = mesh_lib.make(exp.config.mesh.fsdp, devices=topology_devices(topology))
  batch = per_chip_batch * m.devices.size
  rows, seen = [], {}
  for name in exp.config.stage_order:
    st = exp.config.stages[name]
    if st.kind not in ("train", "unlearn", "attack") or train_stage.is_closed_form(st):
      continue
    if st.kind == "attack" and st.attack in ("textual_inversion", "prompt_tokens") and \
        getattr(exp.context, "preset", False):
      continue             # token attacks need the text encoder, which the SD v1.5 preset does not have
    if stages and name not in stages:
      continue
    b = batch or st.batch_size or exp.config.training.batch_size
    with mesh_lib.use(m):      # a batch the topology's chips split evenly
      training.check_batch_size(b, "--per_chip_batch" if batch else f"config.stages.{name}.batch_size")
    step_fn, state, consts, batches = stage_step_shapes(exp, st, b)
    key = (step_kind(st), st.mask, st.trainable, b, st.lr, st.decay, st.steps)
    if key in seen:
      rows.append(dict(seen[key], stage=name, same_as=seen[key]["stage"]))
      continue
    row = {"stage": name, "step": step_kind(st), "devices": m.devices.size, "batch": b,
           "mesh": dict(m.shape), **compile_step(step_fn, state, consts, batches, m)}
    row["hbm_bytes"] = int(chip.hbm_gib * _GIB)
    if "compiler_error" not in row:
      row["fits"] = row["peak_bytes"] <= row["hbm_bytes"]
    row["roofline_ms"] = None if row["flops"] is None else 1e3 * row["flops"] / (chip.bf16_tflops * 1e12)
    seen[key] = row
    rows.append(row)
    if on_row is not None:
      on_row(row)
  return rows


def format_table(rows: List[Dict[str, Any]], topology: str) -> str:
  head = ("| stage | step | batch | args MiB | temp MiB | out MiB | peak GiB / HBM | GFLOP/step | roofline ms "
          "(estimate) | compile s |")
  lines = [f"Deviceless compile for {topology} ({rows[0]['devices'] if rows else 0} chips, mesh "
           f"{rows[0]['mesh'] if rows else {}}), per device:", "", head, "|" + " --- |" * 10]
  mib = lambda v: "–" if v is None else f"{v / _MIB:.2f}"  # noqa: E731
  for r in rows:
    comp = f"{r['compile_s']:.1f}" if "same_as" not in r else f"= {r['same_as']}"
    if "compiler_error" in r:
      lines.append(f"| {r['stage']} | {r['step']} | {r['batch']} | – | {mib(r['temp_bytes'])} | – | does not fit "
                   f"({r['compiler_error']}) | – | – | {comp} |")
      continue
    peak = f"{r['peak_bytes'] / _GIB:.3f} / {r['hbm_bytes'] / _GIB:.0f}" + ("" if r["fits"] else " (does not fit)")
    lines.append(f"| {r['stage']} | {r['step']} | {r['batch']} | {mib(r['args_bytes'])} | {mib(r['temp_bytes'])} | "
                 f"{mib(r['out_bytes'])} | {peak} | {r['flops'] / 1e9:.3f} | {r['roofline_ms']:.4f} | {comp} |")
  return "\n".join(lines)


def _main(argv):
  del argv
  try:
    cfg = flags.FLAGS.config
    mesh_lib.make(cfg.mesh.fsdp, devices=topology_devices(flags.FLAGS.topology))   # the topology and fsdp first
    exp = build(cfg, tempfile.mkdtemp(prefix="unlearn_jax_aot_"))
    stages = [s for s in flags.FLAGS.stages.split(",") if s]
    unknown = [s for s in stages if s not in exp.config.stages]
    if unknown:
      raise UserError("--stages", ",".join(unknown),
                      f"expected stages of the config: {', '.join(exp.config.stage_order)}")
    rows = compile_run(exp, flags.FLAGS.topology, stages, flags.FLAGS.per_chip_batch,
                       on_row=lambda r: print("row " + json.dumps(r), file=sys.stderr, flush=True))
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(format_table(rows, flags.FLAGS.topology))
  print(json.dumps({"topology": flags.FLAGS.topology, "jax": jax.__version__, "rows": rows}))


if __name__ == "__main__":
  from absl import app                                   # noqa: E402
  from unlearn_jax import main as main_lib               # noqa: E402  its --config flag and one-line errors
  flags.DEFINE_string("topology", "v5e:2x2", "A TPU topology, <chip>:<shape> (e.g. v5e:2x4, v4:2x2x1, v6e:2x4).")
  flags.DEFINE_string("stages", "", "Comma-separated stages to compile (default: every trained stage).")
  flags.DEFINE_integer("per_chip_batch", 0, "Examples per chip in every step (0: the stages' own batch sizes).")
  app.run(_main, flags_parser=main_lib.parse_flags)
