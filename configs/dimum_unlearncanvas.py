r"""DiMUM and the fine-tuning baselines on UnlearnCanvas, each attacked by DiMRA (DiMUM paper
Sec. VI-B, Table IV, Figs. 9-11): unlearn the Van Gogh style (alternative: Abstractionism)
from SD v1.5 fine-tuned on UnlearnCanvas, then fine-tune every unlearned model on synthetic
auxiliary data the base model generates under D_r's prompts (as many images as D_r).
AR_MU / AR_DiMRA count an image as Van Gogh when the style classifier's top 3 contain it;
AR_CL is the share classified as Abstractionism.

  python -m unlearn_jax.main --config=configs/dimum_unlearncanvas.py:model_dir=/data/sd15_canvas,data_dir=/data/UnlearnCanvas --workdir=workdir/dimum_canvas
  python -m unlearn_jax.main --config=configs/dimum_unlearncanvas.py:cpu --workdir=workdir/dimum_canvas_cpu

Arguments: cpu, model_dir, data_dir, steps=<unlearning steps, 1000>, attack=<attack steps,
10000>, every=<AR every k attack steps, 400>, methods=<dimum-salun-erasediff-esd-ca>,
trainable=<all | cross_attn | ...>, images=<all | i-j-k: the image numbers of each folder>.

D_u / D_r (Sec. VI-B): the Van Gogh images / all remaining images; `images=all` (the default of
the full run) reads all 20 images of every style/object folder, `images=1-2-3` the first three
(UnlearnCanvas's and CORE's unlearning split; the `cpu` default, on its synthetic tree).

The paper's prompts are "An image of {object} in {style} style." (template "dimum"); the
UNet trains whole (trainable=all), Adam 1e-5, batch 4; AR on 100 images.
"""
from unlearn_jax import config_lib

METHODS = ("dimum", "salun", "erasediff", "esd", "ca")


def get_config(arg=None):
  a = config_lib.parse_arg(arg, {"cpu": True, "model_dir": "", "data_dir": "", "steps": 0, "attack": 0,
                                 "every": 0, "methods": "", "trainable": "", "images": ""})
  cpu = bool(a.get("cpu"))
  c = config_lib.unlearncanvas_config(a, "dimum_unlearncanvas")
  c.data.update(dict(forget_styles="Van_Gogh", alt_style="Abstractionism", template="dimum"))
  c.sd.trainable = a.get("trainable") or "all"
  images = a.get("images") or ("1-2-3" if cpu else "all")
  if images != "all" and not all(i.isdigit() and int(i) >= 1 for i in images.split("-")):
    raise ValueError(f"config argument images={images!r}: expected all or 1-based image numbers like 1-2-3")
  c.data.image_indices = tuple(range(1, 21)) if images == "all" else tuple(int(i) for i in images.split("-"))
  c.unlearn.alternative = "map"
  c.eval.attack_num_samples = 12 if cpu else 100
  steps, attack, every = (400, 200, 50) if cpu else (1000, 10000, 400)
  steps = a.get("steps") or steps
  attack = a.get("attack") or attack
  every = a.get("every") or every
  methods = tuple(a["methods"].split("-")) if a.get("methods") else METHODS
  c.stages, c.stage_order = config_lib.sd_stages(methods, steps={}, default_steps=steps, attack_steps=attack,
                                                 eval_every=every, synthetic=48 if cpu else 0,
                                                 pretrain_steps=config_lib.CPU_PRETRAIN_STEPS if cpu else 0)
  if cpu:     # the tiny random model is first fine-tuned on the synthetic tree, then unlearned
    c.stages.pretrained.lr = 1e-3
  return c
