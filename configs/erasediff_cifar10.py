r"""EraseDiff on CIFAR-10: forget airplane (the EraseDiff paper's Table 1, class-conditional DDPM).

The shared backbone of REFERENCE.md (Selective Amnesia's conditional DDPM: ch 128, ch_mult
1,2,2,2, 2 res blocks, attention at 16x16, linear betas 1e-4..0.02, T=1000), pretrained here
or given as an unlearn_jax stage directory; EraseDiff_rl (eps_f = eps_theta(x_t | c_m), c_m the
next class) and EraseDiff_noise (eps_f ~ U(0, I)) for ~300 steps, batch 128, Adam 1e-4, K=2
inner steps (Algorithm 1) with lambda_t of Theorem 3.1; evaluated by P(forget class) of the
evaluation classifier on forget-conditioned samples (AR_MU) and the Fréchet distance; then the
DiMRA attack on the retain set.

  python -m unlearn_jax.main --config=configs/erasediff_cifar10.py --workdir=W
  python -m unlearn_jax.main --config=configs/erasediff_cifar10.py:pretrained=/path/to/stage --workdir=W
  # the public code's lambda rule and its grad g (phi^K held fixed: K changes only the value of g):
  python -m unlearn_jax.main --config=configs/erasediff_cifar10.py --config.erasediff.rule=cosine \
      --config.erasediff.grad_form=fixed --workdir=W

grad g runs in the library's default "first_order" form, grad L_f(theta) - grad L_f(phi^K), in
which K and xi change the update (the paper's Fig. 5a: larger K erases more); "unrolled"
differentiates through the K inner steps.

Arguments (comma-separated): forget=<0..9> (default 0, airplane), steps=<unlearning steps>,
attack=<attack steps>, pretrained=<stage directory>, cpu (tiny model, smoke runs only).
"""
from unlearn_jax import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, {"cpu": True, "forget": 0, "steps": 0, "attack": 0, "pretrained": ""})
  c = config_lib.cifar10_ddpm(cpu=bool(a.get("cpu")))
  c.experiment = "erasediff"
  c.data.forget_classes = (a.get("forget", 0),)
  c.erasediff.update(dict(eta=0.1, rule="paper", inner_steps=2, inner_lr=1e-2, grad_form="first_order"))
  unlearn, attack, every, pretrain = a.get("steps") or 300, a.get("attack") or 20000, 2000, 800_000
  if a.get("cpu"):
    unlearn, attack, every, pretrain = 50, 50, 25, 300
  c.stages, c.stage_order = config_lib.dimum_stages(
      pretrain_steps=pretrain, unlearn_steps=unlearn, attack_steps=attack, eval_every=every,
      methods=("erasediff:rl", "erasediff:noise"), pretrained=a.get("pretrained", ""), unlearn_lr=1e-4)
  return c
