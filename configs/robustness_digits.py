r"""Robustness suite on sklearn's 8x8 digits (issue 15): every unlearned model against every attack.

A class-conditional DDPM with classifier-free guidance is pretrained on all ten digits, digit 3
is unlearned (alternative / anchor: the next class, 4) and each unlearned model is attacked,
from the same weights, by (stage attack_<method><suffix>):

  ""            DiMRA on D_r (DiMUM paper Eq. 7, assumption i)
  _test         DiMRA on test data without the forget class (assumption ii)
  _synth        DiMRA on data the pretrained model generates under D_r's conditions
  _benign       benign fine-tuning: D_r's examples of classes unrelated to the forgotten one
                (concept resurgence; `experiment.benign_classes`)
  _fewshot<k>   few-shot relearning on k forget examples (k = 1, 5, 10, 50)
  _embedding    a new class-embedding row learned on 5 forget images, every weight frozen
                (textual inversion's analogue)
  _condition    the forgotten class's embedding optimised within an L-inf ball of radius `eps`
                so that the model's own denoising loss on forget images is minimal
                (a soft-prompt attack in embedding space with UnlearnDiffAtk's loss, the model's own
                denoising loss; not its discrete tokens)

Each curve point holds AR (share of forget-conditioned samples the classifier files under the
forgotten digit), AR_CL and "fd" (utility: FD of retain-conditioned samples); report.md's
robustness section and robustness.json (the card) summarise them (max / final success, steps
to half the pretrained model's AR, area under the curve).

  python -m unlearn_jax.main --config=configs/robustness_digits.py:cpu --workdir=workdir/robustness_digits_cpu
  python -m unlearn_jax.main --config=configs/robustness_digits.py --workdir=workdir/robustness_digits

Arguments (comma-separated): cpu, forget=<digit>, methods=<m1-m2-...> (default: cpu the DiMUM
paper's three, ga-salun-dimum; otherwise every class-conditional method of `METHODS`),
attacks=<a1-a2-...> (default: all of `ATTACKS`), attack=<attack steps>, eps=<condition budget>,
pretrained=<a stage directory of the same model>.

Scale choices: gradient ascent gets a tenth of the others' unlearning steps (as in
dimum_digits.py); each attack has the same step budget and lr (the unlearning lr; the condition
attacks: `attacks.condition.DEFAULT_LR`); eps = 0.1 per coordinate of the class embedding was not
tuned on any outcome.  cpu: pretraining 3,500 steps, unlearning 1,000 (GA 100), every attack 200
steps with a curve point at 0, 100 and 200 on 64 samples (95% Wilson interval at most +-0.12,
[0, 0.057] at AR 0), cut from 300 steps and 100 samples so that the 30 attack stages fit the
run's 30-minute budget on 2 cores (300 steps / 100 samples: ~47 min; 200 / 100: ~30); the
pretrained reference of attacks with the same seed is measured once (`stages.attack`), and
attack steps of the same shape share one compiled program through the persistent XLA cache.
"""
from unlearn_jax import config_lib

#: every class-conditional method the digits DDPM runs (UCE edits Stable Diffusion's cross-attention).
METHODS = ("ga", "salun", "dimum", "sfron", "erasediff", "core", "esd", "ca", "sa", "shs", "finetune")
CPU_METHODS = ("ga", "salun", "dimum")
ATTACKS = config_lib.ROBUSTNESS_ATTACKS
CONDITION_SHOTS = 5
#: the one-step smoke run (tests/test_configs.py) of every attack on one method: the other methods'
#: attacks repeat the same stages (and the methods' own steps are tested in tests/unlearning/).
SMOKE_ARG = "cpu,methods=dimum"


def get_config(arg=None):
  a = config_lib.parse_arg(arg, {"cpu": True, "forget": 3, "methods": "", "attacks": "", "attack": 0,
                                 "eps": 0.1, "pretrained": ""})
  cpu = bool(a.get("cpu"))
  c = config_lib.digits_ddpm(cpu=cpu)
  c.experiment = "robustness"
  c.data.forget_classes = (a.get("forget", 3),)
  config_lib.digits_method_settings(c, cpu)
  c.eval.attack_fd = True
  methods = tuple(a["methods"].split("-")) if a.get("methods") else (CPU_METHODS if cpu else METHODS)
  if not set(methods) <= set(METHODS):
    raise ValueError(f"methods={a['methods']!r}: expected names among {', '.join(METHODS)} joined by '-'")
  pretrain, unlearn, attack, every = 20000, 4000, 2000, 250
  if cpu:
    pretrain, unlearn, attack, every = 3500, 1000, 200, 100
    c.eval.update(dict(attack_num_samples=64))
  attack = a.get("attack") or attack
  c.stages, c.stage_order = config_lib.dimum_stages(
      pretrain_steps=pretrain, unlearn_steps=unlearn, attack_steps=attack, eval_every=every, methods=methods,
      attack_data=config_lib.parse_attacks(a.get("attacks", "")), pretrained=a.get("pretrained", ""),
      unlearn_lr=3e-4 if cpu else 1e-4,
      condition_shots=CONDITION_SHOTS, condition_eps=float(a.get("eps", 0.1)))
  if "ga" in c.stages:
    c.stages.ga.steps = max(unlearn // 10, 1)
  return c
