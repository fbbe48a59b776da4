r"""Robustness suite on UnlearnCanvas with Stable Diffusion (issue 15): unlearned styles under attack.

The Van Gogh style (alternative: Abstractionism) is unlearned from SD fine-tuned on UnlearnCanvas
(dimum_unlearncanvas.py's setting) by gradient ascent, SalUn and DiMUM, and each unlearned model
is attacked, from the same weights, by (stage attack_<method><suffix>):

  ""            DiMRA on synthetic data the starting model generates under D_r's prompts
                (DiMUM paper Sec. VI-B)
  _retain       DiMRA on D_r itself (assumption i)
  _benign       benign fine-tuning on D_r's prompts of styles unrelated to the forgotten one
                (concept resurgence; `experiment.benign_classes` over the prompts)
  _fewshot<k>   few-shot relearning on k forget images (k = 1, 5)
  _embedding    a new prompt embedding per forget prompt (a whole (L, D) text-encoder output,
                started at the null prompt's) learned on 5 forget images, every weight frozen:
                textual inversion's analogue in the text encoder's output space, which holds
                every embedding one new token could reach (`attacks.condition`)
  _textual_inversion  textual inversion proper: one new token's input embedding v, the forget
                prompts re-captioned with the placeholder token in place of the style, their
                conditions the frozen text encoder's outputs, fitted on 5 forget images
  _condition    each forget prompt's embedding optimised within an L-inf ball of radius `eps`
                around its own so that the model's own denoising loss on forget images is
                minimal: a soft-prompt attack in embedding space (the ball is around the whole
                (L, D) text-encoder output; it borrows UnlearnDiffAtk's loss, towards D_f
                training images, but not its discrete prepended tokens or its target images)
  _prompt_tokens  UnlearnDiffAtk's formulation: 5 token embeddings prepended to each forget
                prompt, fitted with the attacked model's denoising loss to images the pretrained
                model generates for the forget prompts; each point is measured on the discrete
                prompt (every vector projected to its nearest vocabulary token), which
                <stage>/prompts.json and the card record

AR counts a sample as the forgotten style when the style classifier's top 3 contain it
(DiMUM paper Sec. VI-B); AR_CL is the share classified as Abstractionism; each point also has
the top-1 AR, UA (the share not classified as Van Gogh) and, for the fine-tuning attacks, the
utility: the FD of as many retained-style samples to real retained-style images on the style
classifier's features (`eval.attack_fd`; a condition attack leaves the weights, and so the
retained styles, unchanged).  report.md's robustness section and robustness.json summarise the
curves.

  python -m unlearn_jax.main --config=configs/robustness_unlearncanvas.py:model_dir=/data/sd15_canvas,data_dir=/data/UnlearnCanvas --workdir=W
  python -m unlearn_jax.main --config=configs/robustness_unlearncanvas.py:cpu --workdir=W

Arguments: cpu (the tiny random model on the synthetic tree), model_dir, data_dir,
methods=<ga-salun-dimum>, attacks=<synthetic-retain-benign-fewshot1-fewshot5-embedding-
textual_inversion-condition-prompt_tokens>,
steps=<unlearning steps: 1000; cpu 400>, attack=<attack steps: 10000; cpu 200>,
every=<AR every k steps: 400; cpu 50>, eps=<condition budget, 0.1>.  Scale: DiMUM paper's SD
protocol (Adam 1e-5, batch 4, AR on 100 images; cpu 12); eps was not tuned on any outcome.
"""
from unlearn_jax import config_lib

METHODS = ("ga", "salun", "dimum")
ATTACKS = ("synthetic", "retain", "benign", "fewshot1", "fewshot5", "embedding", "textual_inversion", "condition",
           "prompt_tokens")
CONDITION_SHOTS = 5
#: the smoke run (tests/test_configs.py): the attacks dimum_unlearncanvas.py's smoke does not run.
SMOKE_ARG = "cpu,methods=dimum,attacks=benign-fewshot1-embedding-textual_inversion-condition-prompt_tokens"


def get_config(arg=None):
  a = config_lib.parse_arg(arg, {"cpu": True, "model_dir": "", "data_dir": "", "methods": "", "attacks": "",
                                 "steps": 0, "attack": 0, "every": 0, "eps": 0.1})
  cpu = bool(a.get("cpu"))
  c = config_lib.unlearncanvas_config(a, "robustness_unlearncanvas")
  c.data.update(dict(forget_styles="Van_Gogh", alt_style="Abstractionism", template="dimum"))
  c.sd.trainable = "all"
  c.data.image_indices = (1, 2, 3) if cpu else tuple(range(1, 21))
  c.unlearn.alternative = "map"
  c.eval.attack_num_samples = 12 if cpu else 100
  c.eval.attack_fd = True
  methods = tuple(a["methods"].split("-")) if a.get("methods") else METHODS
  if not set(methods) <= set(METHODS):
    raise ValueError(f"methods={a['methods']!r}: expected names among {', '.join(METHODS)} joined by '-'")
  attacks = config_lib.parse_attacks(a.get("attacks", ""), ATTACKS)
  if not set(attacks) <= set(ATTACKS):
    raise ValueError(f"attacks={a['attacks']!r}: expected names among {', '.join(ATTACKS)} joined by '-'")
  steps, attack, every = (400, 200, 50) if cpu else (1000, 10000, 400)
  steps = a.get("steps") or steps
  c.stages, c.stage_order = config_lib.sd_stages(
      methods, steps={"ga": max(steps // 10, 1)}, default_steps=steps, attack_steps=a.get("attack") or attack,
      eval_every=a.get("every") or every, synthetic=48 if cpu else 0,
      pretrain_steps=config_lib.CPU_PRETRAIN_STEPS if cpu else 0, attack_data=attacks,
      condition_shots=CONDITION_SHOTS, condition_eps=float(a.get("eps", 0.1)))
  if cpu:     # the tiny random model is first fine-tuned on the synthetic tree, then unlearned
    c.stages.pretrained.lr = 1e-3
  return c
