r"""CORE and its baselines on UnlearnCanvas style unlearning with Stable Diffusion v1.5
(CORE paper Sec. 4.1, Table 1, App. B-C): UA / IRA / CRA / SFID per method.

The base model is SD v1.5 fine-tuned on UnlearnCanvas (released by its authors), in
diffusers layout with Flax weights; only the cross-attention trains (CORE App. B).
Images 1-3 of every style/object folder are the unlearning data; the style and object
classifiers are trained by the `classifier` stage on those images unless
`config.eval.classifier_dir` names checkpoints of better ones.

  python -m unlearn_jax.main --config=configs/core_unlearncanvas.py:model_dir=/data/sd15_canvas,data_dir=/data/UnlearnCanvas,forget=Forget06 --workdir=workdir/core_canvas_f06
  python -m unlearn_jax.main --config=configs/core_unlearncanvas.py:cpu --workdir=workdir/core_canvas_cpu

Arguments (comma-separated): cpu, model_dir=<diffusers dir>, data_dir=<UnlearnCanvas root>,
forget=<Forget01 | Forget06 | Forget25 | Style1-Style2-...>, methods=<core-esd-salun-erasediff-ca-ca:noise-uce>,
anchors=<the baselines' anchor scheme: all_to_one | random | one_to_one | ...>,
scheme=<CORE anchor scheme of Table 4>, epochs=<scale every method's epoch count>.

Per-method settings (CORE App. B-C): CORE Adam 1e-5, batch 4, 25 epochs of D_f (100 for
Forget25), one-to-one anchors; ESD eta 1, batch 1, lr 1e-5, 1000 steps, p_0 = the empty
prompt; SalUn beta 1, lr 1e-5, batch 4, 10 / 100 epochs (Forget01 / others); EraseDiff
lr 5e-5, batch 4, 5 / 50 epochs, eps_f uniform (App. C Eq. 10: `erasediff.target="noise"`);
CA model-based on D_f's images (Eq. 11, `ca.images="forget"`) and noise-based on anchor images
(Eq. 12, stage `ca_noise`), lr 1.6e-5, batch 4, 200 steps / 100 epochs.  UCE (not in CORE's
Table 1; `unlearning/uce.py`): one closed-form edit of the cross-attention keys / values, no
training: each forget-style prompt's tokens from the style on mapped to the empty prompt's,
every retained prompt and "" preserved (erase 1, preserve 0.1, lambda 0.5, the public code's).

The baselines' alternative concept (SalUn's c', CA-model's anchor; `unlearn.anchors`) follows
App. C per Forget set: one base style (all_to_one onto `data.alt_style`) for Forget01 and any
single style, a random retained style at every step (random) for Forget06 and other custom
lists, a bijection (one_to_one) for Forget25; `anchors=<scheme>` overrides it.  CA-noise's
anchor images are those of `data.alt_style`.
The `cpu` variant runs every stage end to end on a tiny random model and a synthetic
4-style x 3-object tree (its numbers mean nothing about the paper).
"""
from unlearn_jax import config_lib

METHODS = ("core", "esd", "salun", "erasediff", "ca", "ca:noise", "uce")
#: CORE App. C's alternative concept of the baselines per Forget set (a CORE anchor scheme).
BASELINE_ANCHORS = {"Forget01": "all_to_one", "Forget06": "random", "Forget25": "one_to_one"}


def get_config(arg=None):
  a = config_lib.parse_arg(arg, {"cpu": True, "model_dir": "", "data_dir": "", "forget": "", "methods": "",
                                 "scheme": "", "anchors": "", "epochs": 1.0})
  cpu = bool(a.get("cpu"))
  c = config_lib.unlearncanvas_config(a, "core_unlearncanvas")
  forget = a.get("forget") or ("Van_Gogh" if cpu else "Forget06")
  c.data.forget_styles = forget.replace("-", ",")        # a set name or comma-separated styles
  c.sd.trainable = "cross_attn"
  c.core.scheme = a.get("scheme") or "one_to_one"
  methods = tuple(a["methods"].split("-")) if a.get("methods") else METHODS
  c.erasediff.target = "noise"          # App. C Eq. 10: eps_f uniform
  c.ca.images = "forget"                # App. C Eq. 11 (CA-noise keeps the anchor images)
  # |D_f| = forgotten styles x 20 objects x 3 images; an epoch is |D_f| / batch steps.
  n_forget = 1 if forget == "Forget01" else 25 if forget == "Forget25" else 6 if forget == "Forget06" \
      else len(forget.split("-"))
  per_epoch = max(n_forget * 20 * 3 // 4, 1)
  few = n_forget == 1
  c.unlearn.anchors = a.get("anchors") or BASELINE_ANCHORS.get(forget, "all_to_one" if few else "random")
  scale = a.get("epochs", 1.0)
  epochs = {"core": 100 if n_forget >= 25 else 25, "salun": 10 if few else 100, "erasediff": 5 if few else 50,
            "ca": None if few else 100}
  steps = {m: max(int(e * per_epoch * scale), 1) for m, e in epochs.items() if e is not None}
  steps["ca"] = steps.get("ca", max(int(200 * scale), 1))
  steps["esd"] = max(int(1000 * scale), 1)
  lr = {"core": 1e-5, "esd": 1e-5, "salun": 1e-5, "erasediff": 5e-5, "ca": 1.6e-5}
  batch = {"esd": 1}
  pretrain = 0
  if cpu:     # the tiny random model is first fine-tuned on the synthetic tree, then unlearned
    # 400 steps at the cpu lr 1e-4 (40 moved UA by at most 2 of 24 samples).
    steps, lr, batch, pretrain = {m.partition(":")[0]: 400 for m in METHODS}, {}, {}, config_lib.CPU_PRETRAIN_STEPS
  c.stages, c.stage_order = config_lib.sd_stages(methods, steps=steps, default_steps=40, lr=lr, batch=batch,
                                                 pretrain_steps=pretrain)
  if cpu:
    c.stages.pretrained.lr = 1e-3
  return c
