r"""CORE on CIFAR-10 class forgetting: one or several classes, one or every anchor scheme.

CORE (Eq. 2-4) on the class-conditional DDPM backbone of REFERENCE.md: the forget loss
regresses eps_theta(x_t, c_f) on the frozen pre-trained eps_theta*(x_t, c_a), the retain
loss eps_theta(x_t, c_r) on eps_theta*(x_t, c_r), alpha = 1.  The anchor schemes are those
of CORE's Table 4: one_to_one (default), all_to_one, groups_to_one (groups of 5),
random (a new anchor every step), random_k (k = 5 candidates per class).  Every model is
then attacked by DiMRA on the retain set.

  # one class (automobile), one-to-one:
  python -m unlearn_jax.main --config=configs/core_cifar10.py:forget=1 --workdir=W
  # several classes, every scheme side by side:
  python -m unlearn_jax.main --config=configs/core_cifar10.py:forget=0-1-2-3-4,schemes=all --workdir=W
  python -m unlearn_jax.main --config=configs/core_cifar10.py:forget=0-1-2-3-4,pretrained=/path/to/stage --workdir=W

Arguments (comma-separated): forget=<class or classes joined by '-'>, schemes=<all | one scheme>,
steps=<unlearning steps>, attack=<attack steps>, pretrained=<stage directory>, cpu (smoke runs only).
"""
from unlearn_jax import config_lib
from unlearn_jax.unlearning import core as core_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, {"cpu": True, "forget": "1", "schemes": "one_to_one", "steps": 0,
                                 "attack": 0, "pretrained": ""})
  c = config_lib.cifar10_ddpm(cpu=bool(a.get("cpu")))
  c.experiment = "core"
  c.data.forget_classes = config_lib.parse_classes(a.get("forget", "1"))
  schemes = a.get("schemes", "one_to_one")
  schemes = core_lib.SCHEMES if schemes == "all" else (schemes,)
  unlearn, attack, every, pretrain = a.get("steps") or 2000, a.get("attack") or 20000, 2000, 800_000
  if a.get("cpu"):
    unlearn, attack, every, pretrain = 50, 50, 25, 300
  c.stages, c.stage_order = config_lib.dimum_stages(
      pretrain_steps=pretrain, unlearn_steps=unlearn, attack_steps=attack, eval_every=every,
      methods=tuple(f"core:{s}" for s in schemes), pretrained=a.get("pretrained", ""), unlearn_lr=1e-4)
  return c
