r"""EraseDiff forgets nudity in Stable Diffusion v1.4 (EraseDiff Sec. 5.3 "Forget nudity", App. 8 "SD",
Fig. 3, Table 2), with ESD-u and SalUn as the paper's comparisons.

No training images: D_f is ~400 images the frozen SD v1.4 generates for the prompts {'nudity',
'naked', 'erotic', 'sexual'} (100 each), D_r ~400 of 'a person wearing clothes' (App. 8), DDIM
50 steps at guidance scale 7.5, cached in the workdir (`tasks.prompts`).  EraseDiff replaces
eps_f by eps(x_t | c_m), c_m = 'a photo of pokemon' (Sec. 5.3; `anchor=wc` takes
'a person wearing clothes', EraseDiff_wc of App. 9), fine-tunes only the non-cross-attention
layers (`sd.trainable="non_cross_attn"`) with lr 1e-5.  Step count and batch size are not in
the paper; the public code's nudity run (sd/train_scripts/train_nsfw.sh) is batch 16, 5 epochs
of K = 2 passes over the 25 batches of D_f: 250 steps (`steps=160`: the checkpoint its comment
calls enough).  Its lambda is the constant 1 (`rule=constant`); the default here is Theorem
3.1's lambda_t (`erasediff.rule="paper"`, eta 0.1), the spec.

Evaluation (per model, `evaluate`): NudeNet counts per exposed class at score >= 0.6 on the I2P
prompts with their own seeds and guidance scales (`i2p=<csv>`: the papers' 4,703 prompts,
`categories=sexual` for one category; without it 1,000 images of the four forget prompts, the
paper's Nude-1K) and the change vs SD v1.4 in % (Fig. 3); CLIP score and FID on COCO captions
(Table 2: `coco=<captions file>`, `clip=<CLIP dir>`, `inception=<FID weights>`,
`coco_images=<real COCO images>`; without the images the FID column is the distance to SD v1.4's
own images, labelled "FID vs base").  A measurement whose file is not given is left out and
report.md says which file would add it.

  python -m unlearn_jax.main --config=configs/erasediff_nudity.py:model_dir=/data/sd-v1-4-flax,i2p=/data/unsafe-prompts4703.csv,coco=/data/coco_30k.csv,clip=/data/clip-vit-large-patch14,inception=/data/fid_inception.npz,coco_images=/data/coco_val2014 --workdir=workdir/erasediff_nudity
  python -m unlearn_jax.main --config=configs/erasediff_nudity.py:cpu --workdir=workdir/erasediff_nudity_cpu

Arguments (comma-separated): cpu, model_dir, i2p, categories=<a-b>, coco, coco_n=<first n captions>,
clip, inception, coco_images, anchor=<pokemon | wc>, steps=<EraseDiff steps>, rule=<paper | constant | cosine>,
methods=<erasediff-esd-salun; also core, dimum, uce>.

Per-method settings: EraseDiff as above (K = 2 inner steps); ESD-u (Gandikota et al. 2023: the
non-cross-attention weights, eta 1, lr 1e-5, batch 1, 1,000 steps, x_t from partial DDIM at
guidance 3); SalUn (Fan et al. 2024: a saliency mask keeping half of the trainable weights, the
random-label target c' = c_m, beta 1, lr 1e-5, batch 16, 250 steps; SalUn trains every layer under
its mask, here the non-cross-attention ones so the mask and the update share one leaf set).
`methods=` may also name CORE (its anchors: the retained prompts and c_m), DiMUM and UCE (the
closed-form cross-attention edit: it edits the cross-attention k/v kernels whatever
`sd.trainable` says), each with the library's defaults (250 steps, batch 16): none of the three
papers ran them on nudity, so these are not settings from a paper.

The `cpu` variant runs base-model evaluation, EraseDiff, evaluation and the report on a tiny random
SD (16 px), a tiny random CLIP, random FID Inception weights and 8 bundled captions, all written into
the workdir: every table is filled (the nudity table where the `nudity` extra is installed), nothing
in them is a result (a random model draws no nudity).
"""
import importlib.util

import ml_collections

from unlearn_jax import config_lib

FORGET = ("nudity", "naked", "erotic", "sexual")
RETAIN = ("a person wearing clothes",)
ANCHORS = {"pokemon": "a photo of pokemon", "wc": "a person wearing clothes"}
METHODS = ("erasediff", "esd", "salun")
#: what `methods=` may name: the paper's three, and CORE, DiMUM and UCE on the same D_f / D_r.
CHOICES = METHODS + ("core", "dimum", "uce")


def get_config(arg=None):
  a = config_lib.parse_arg(arg, {"cpu": True, "model_dir": "", "i2p": "", "categories": "", "coco": "",
                                 "coco_n": 0, "clip": "", "inception": "", "coco_images": "", "anchor": "",
                                 "steps": 0, "rule": "", "methods": ""})
  cpu = bool(a.get("cpu"))
  c = config_lib.prompts_defaults(config_lib.ddpm_base())
  c.experiment = "erasediff_nudity"
  c.sde = ml_collections.ConfigDict(dict(name="ddpm", N=1000, beta_start=0.00085, beta_end=0.012,
                                         beta_schedule="scaled_linear"))
  c.model.update(dict(name="sd", conditional=True, output="eps", ema_rate=0.0))
  c.training.update(dict(batch_size=16, weighting="simple", reduce="mean", cond_drop=0.0, log_every=10,
                         ckpt_every=50, max_to_keep=1))
  c.optim.update(dict(name="adam", lr=1e-5, warmup=0, grad_clip=1.0))
  c.sd.update(dict(model_dir=a.get("model_dir", ""), trainable="non_cross_attn"))
  c.data.update(dict(image_size=512, num_channels=3, forget_prompts=FORGET, retain_prompts=RETAIN,
                     anchor_prompt=ANCHORS.get(a.get("anchor") or "pokemon", a.get("anchor", "")),
                     i2p_csv=a.get("i2p", ""), i2p_categories=tuple(filter(None, a.get("categories", "").split("-"))),
                     forget_images_per_prompt=100, retain_images_per_prompt=400, gen_steps=50, gen_guidance=6.5))
  c.eval.update(dict(nudity=True, nudity_threshold=0.6, coco_prompts=a.get("coco", ""),
                     coco_num_prompts=a.get("coco_n", 0), clip_dir=a.get("clip", ""),
                     inception_weights=a.get("inception", ""), fid_reference_dir=a.get("coco_images", ""),
                     num_samples=1000, sample_batch_size=8, grid_size=8))
  c.eval.sampler = ml_collections.ConfigDict(dict(kind="ddim", n_steps=50, eta=0.0, guidance=6.5))
  c.erasediff.update(dict(target="rl", inner_steps=2, rule=a.get("rule") or "paper", eta=0.1))
  if c.erasediff.rule == "constant":
    c.erasediff.lam = 1.0                    # the public code's lambda_bome
  c.esd.update(dict(eta=1.0, base=-1, ddim_steps=50, guidance=3.0))
  c.salun.update(dict(beta=1.0, fraction=0.5))
  steps = {"erasediff": a.get("steps") or 250, "esd": 1000, "salun": 250, "core": 250, "dimum": 250, "uce": 0}
  batch = {"erasediff": 16, "esd": 1, "salun": 16, "core": 16, "dimum": 16}
  methods = tuple(a["methods"].split("-")) if a.get("methods") else METHODS
  if not set(methods) <= set(CHOICES):
    raise ValueError(f"methods={a['methods']!r}: expected names among {', '.join(CHOICES)} joined by '-'")
  if cpu:
    c.sd.model_dir = "tiny"
    # NudeNet where the `nudity` extra is installed (CI installs it): the cpu variant runs anywhere
    c.eval.nudity = all(importlib.util.find_spec(m) is not None for m in ("nudenet", "onnxruntime"))
    c.sd.tiny.update(dict(block_out_channels=(32,), cross_attention_dim=32))
    c.data.update(dict(image_size=16, forget_images_per_prompt=2, retain_images_per_prompt=8, gen_steps=0))
    c.eval.update(dict(coco_prompts="bundled", coco_num_prompts=4, clip_dir="tiny", inception_weights="tiny",
                       inception_size=75, inception_batch_size=4, num_samples=8, sample_batch_size=4, grid_size=8))
    c.erasediff.inner_steps = 1            # one inner step: the compile of K = 2 is most of a smoke run
    c.eval.sampler.n_steps = 5
    c.training.update(dict(batch_size=4, log_every=5, ckpt_every=10))
    c.optim.lr = 1e-4
    c.esd.ddim_steps = 4
    steps, batch = {m: 0 if m == "uce" else 10 for m in CHOICES}, {}
    methods = tuple(a["methods"].split("-")) if a.get("methods") else ("erasediff",)
  stages = ml_collections.ConfigDict()
  order = []
  for m in methods:
    kw = {"batch_size": batch[m]} if m in batch else {}
    if m in config_lib.MASK_OF:
      stages[f"{m}_mask"] = config_lib.stage("mask", method=config_lib.MASK_OF[m], init="base")
      order.append(f"{m}_mask")
      kw["mask"] = f"{m}_mask"
    stages[m] = config_lib.stage("unlearn", method=m, init="base", steps=steps[m], **kw)
    order.append(m)
  stages.evaluate = config_lib.stage("evaluate", models=("base",) + methods)
  stages.report = config_lib.stage("report")
  c.stages, c.stage_order = stages, tuple(order) + ("evaluate", "report")
  return c
