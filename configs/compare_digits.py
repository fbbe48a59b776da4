r"""EraseDiff, CORE, ESD, Concept Ablation, Selective Amnesia, Scissorhands, SalUn and DiMUM
on one forgotten digit, each then attacked by DiMRA: one table of AR_MU, Fréchet distance,
max AR_DiMRA and seconds per step (sklearn's 8x8 digits, offline).

A class-conditional DDPM with classifier-free guidance is pretrained on all ten digits;
digit 3 is unlearned by every method from the same pretrained model (alternative /
anchor: the next class, 4); every unlearned model is fine-tuned on the retain set for
`attack` steps (DiMUM paper Eq. 7, assumption i), AR_DiMRA every `every` steps.

  python -m unlearn_jax.main --config=configs/compare_digits.py:cpu --workdir=workdir/compare_digits_cpu
  python -m unlearn_jax.main --config=configs/compare_digits.py --workdir=workdir/compare_digits

Arguments (comma-separated): cpu, forget=<digit>, steps=<unlearning steps>, attack=<attack steps>,
pretrained=<an unlearn_jax stage directory of the same model> (skips pretraining).

Method settings at this scale: EraseDiff_rl with K=2 inner steps (Algorithm 1, lambda_t of
Theorem 3.1); CORE one-to-one (alpha 1); ESD (eta 1, null class as p_0, x_t from 6-step
partial DDIM on cpu); CA model-based on anchor images; SA with D_r as its replay and a Fisher
from 500 generated samples on cpu; SHS resets 1% of the weights; SalUn beta = 1 (see
dimum_digits.py).
"""
from unlearn_jax import config_lib

METHODS = ("erasediff", "core", "esd", "ca", "sa", "shs", "salun", "dimum")


def get_config(arg=None):
  a = config_lib.parse_arg(arg, {"cpu": True, "forget": 3, "steps": 0, "attack": 0, "pretrained": ""})
  c = config_lib.digits_ddpm(cpu=bool(a.get("cpu")))
  c.experiment = "compare"
  c.data.forget_classes = (a.get("forget", 3),)
  c.training.log_every = 50 if a.get("cpu") else 100      # EraseDiff's g and lambda_t curves
  config_lib.digits_method_settings(c, bool(a.get("cpu")))
  pretrain, unlearn, attack, every = 20000, 2000, 4000, 500
  if a.get("cpu"):   # measured: 4000/400/600 with 10-step ESD took 33 min on 2 cores
    c.eval.update(dict(num_samples=300, fd_num_samples=400, attack_num_samples=200, sample_batch_size=400))
    pretrain, unlearn, attack, every = 3500, 400, 400, 200
  unlearn = a.get("steps") or unlearn
  attack = a.get("attack") or attack
  c.stages, c.stage_order = config_lib.dimum_stages(
      pretrain_steps=pretrain, unlearn_steps=unlearn, attack_steps=attack, eval_every=every,
      methods=METHODS, pretrained=a.get("pretrained", ""), unlearn_lr=3e-4 if a.get("cpu") else 1e-4)
  return c
