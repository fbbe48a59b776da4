r"""The DiMUM paper's CIFAR-10 protocol (Sec. VI-A; Tables I-III, Figs. 5-6).

Class-conditional DDPM with classifier-free guidance, the shared backbone of
REFERENCE.md (ch 128, ch_mult 1,2,2,2, 2 res blocks, attention at 16x16,
dropout 0.1, linear betas 1e-4..0.02, T=1000, EMA 0.9999, random flips).
Forget one of airplane(0), automobile(1), bird(2), cat(3), deer(4); the
alternative is the next class.  SalUn and DiMUM unlearn for 10K or 20K steps,
SFR-on for 1K/2K; each unlearned model is attacked by DiMRA for 60K steps with
the retain set (assumption i) and with the test set without the forgotten
class (assumption ii), AR_DiMRA every 2K steps.

  python -m unlearn_jax.main --config=configs/dimum_cifar10.py:forget=1,steps=20000 --workdir=W
  # from a pretrained unlearn_jax stage directory instead of pretraining (800K steps):
  python -m unlearn_jax.main --config=configs/dimum_cifar10.py:forget=1,pretrained=/path/to/stage --workdir=W

Arguments (comma-separated): forget=<0..9>, steps=<unlearning steps, 10000 or 20000>,
attack=<attack steps>, pretrained=<stage directory>, synthetic (also attack with
synthetic auxiliary data), cpu (tiny model, for smoke runs only).
"""
from unlearn_jax import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, {"cpu": True, "forget": 1, "steps": 0, "attack": 0, "pretrained": "",
                                 "synthetic": True})
  c = config_lib.cifar10_ddpm(cpu=bool(a.get("cpu")))
  c.data.forget_classes = (a.get("forget", 1),)
  unlearn, sfron, attack, every, pretrain = a.get("steps") or 20000, 2000, a.get("attack") or 60000, 2000, 800_000
  if a.get("cpu"):
    unlearn, sfron, attack, every, pretrain = 100, 50, 100, 50, 500
  data = ("retain", "test_retain") + (("synthetic",) if a.get("synthetic") else ())
  c.stages, c.stage_order = config_lib.dimum_stages(
      pretrain_steps=pretrain, unlearn_steps=unlearn, attack_steps=attack, eval_every=every,
      methods=("sfron", "salun", "dimum"), attack_data=data, pretrained=a.get("pretrained", ""),
      sfron_steps=sfron if not a.get("steps") else max(unlearn // 10, 2), unlearn_lr=1e-4)
  return c
