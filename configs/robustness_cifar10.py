r"""Robustness suite on CIFAR-10 (issue 15): the DiMUM paper's protocol (Sec. VI-A), every attack.

The class-conditional DDPM of dimum_cifar10.py (REFERENCE.md's shared backbone, classifier-free
guidance w = 2, DDIM-100) forgets one class (alternative: the next class); gradient ascent,
SFR-on, SalUn and DiMUM unlearn it (the paper's budgets: 20K steps, SFR-on 2K, gradient ascent
a tenth) and each unlearned model is attacked, from the same weights, by every attack of
`config_lib.ROBUSTNESS_ATTACKS` (stage attack_<method><suffix>, as in robustness_digits.py):
DiMRA on D_r (Eq. 7, assumption i), on the test set without the forget class (ii) and on
synthetic data; benign fine-tuning on unrelated retained classes; few-shot relearning on
k = 1, 5, 10, 50 forget images; the embedding attack (a new class-embedding row, weights
frozen) and the condition attack (the class's row within an L-inf ball of `eps`), each with
the paper's DiMRA budget (60K steps, AR every 2K) unless attack= / every= say otherwise.
Every curve point holds AR, AR_CL and the FD of retain-conditioned samples (`eval.attack_fd`);
report.md's robustness section and robustness.json summarise them.

For an accelerator: 4 methods x 10 attacks x 60K steps is 2.4M fine-tuning steps of the
35.7M-parameter UNet (pass attack=, methods=, attacks= for less).

  python -m unlearn_jax.main --config=configs/robustness_cifar10.py:forget=1,pretrained=/path/to/stage --workdir=W
  python -m unlearn_jax.main --config=configs/robustness_cifar10.py:cpu --workdir=W     # tiny: wiring only

Arguments (comma-separated): forget=<0..9, 1>, methods=<m1-m2-...> (ga-sfron-salun-dimum),
attacks=<a1-a2-...> (all), steps=<unlearning steps, 20000>, attack=<attack steps, 60000>,
every=<AR every k attack steps, 2000>, eps=<condition budget, 0.1>, pretrained=<stage
directory> (else 800K pretraining steps), cpu (a tiny model for smoke runs only).
"""
from unlearn_jax import config_lib

METHODS = ("ga", "sfron", "salun", "dimum")
CONDITION_SHOTS = 5
#: the one-step smoke run (tests/test_configs.py): robustness_digits.py's smoke runs every
#: attack; this one the stages CIFAR-10 adds nothing new to beyond its data.
SMOKE_ARG = "cpu,methods=dimum,attacks=test_retain-fewshot5-condition"


def get_config(arg=None):
  a = config_lib.parse_arg(arg, {"cpu": True, "forget": 1, "methods": "", "attacks": "", "steps": 0,
                                 "attack": 0, "every": 0, "eps": 0.1, "pretrained": ""})
  cpu = bool(a.get("cpu"))
  c = config_lib.cifar10_ddpm(cpu=cpu)
  c.experiment = "robustness"
  c.data.forget_classes = (a.get("forget", 1),)
  c.eval.attack_fd = True
  methods = tuple(a["methods"].split("-")) if a.get("methods") else METHODS
  if not set(methods) <= set(METHODS):
    raise ValueError(f"methods={a['methods']!r}: expected names among {', '.join(METHODS)} joined by '-'")
  pretrain, unlearn, attack, every = 800_000, 20000, 60000, 2000
  if cpu:
    pretrain, unlearn, attack, every = 500, 100, 100, 50
  unlearn = a.get("steps") or unlearn
  c.stages, c.stage_order = config_lib.dimum_stages(
      pretrain_steps=pretrain, unlearn_steps=unlearn, attack_steps=a.get("attack") or attack,
      eval_every=a.get("every") or every, methods=methods, attack_data=config_lib.parse_attacks(a.get("attacks", "")),
      pretrained=a.get("pretrained", ""), sfron_steps=max(unlearn // 10, 2), unlearn_lr=1e-4,
      condition_shots=CONDITION_SHOTS, condition_eps=float(a.get("eps", 0.1)))
  if "ga" in c.stages:
    c.stages.ga.steps = max(unlearn // 10, 1)
  return c
