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
  c = config_lib.ddpm_base()
  c.data.update(dict(name="cifar10", image_size=32, num_channels=3, random_flip=True,
                     forget_classes=(a.get("forget", 1),)))
  c.model.update(dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
                      ema_rate=0.9999))
  c.training.update(dict(batch_size=128, log_every=1000, ckpt_every=5000))
  c.optim.update(dict(lr=2e-4, grad_clip=1.0))
  c.classifier.update(dict(features=(64, 128, 256), dense=256, dropout=0.3, steps=20000, batch_size=128))
  c.eval.update(dict(num_samples=1000, fd_num_samples=5000, attack_num_samples=1000, sample_batch_size=1000,
                     grid_size=100))
  c.eval.sampler.n_steps = 100
  unlearn, sfron, attack, every, pretrain = a.get("steps") or 20000, 2000, a.get("attack") or 60000, 2000, 800_000
  if a.get("cpu"):
    c.model.update(dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0, ema_rate=0.99))
    c.training.update(dict(batch_size=32, log_every=50, ckpt_every=100))
    c.classifier.update(dict(features=(16, 32), dense=64, steps=200, batch_size=64))
    c.eval.update(dict(num_samples=100, fd_num_samples=100, attack_num_samples=50, sample_batch_size=100,
                       grid_size=20))
    c.eval.sampler.n_steps = 10
    unlearn, sfron, attack, every, pretrain = 100, 50, 100, 50, 500
  data = ("retain", "test_retain") + (("synthetic",) if a.get("synthetic") else ())
  c.stages, c.stage_order = config_lib.dimum_stages(
      pretrain_steps=pretrain, unlearn_steps=unlearn, attack_steps=attack, eval_every=every,
      methods=("sfron", "salun", "dimum"), attack_data=data, pretrained=a.get("pretrained", ""),
      sfron_steps=sfron if not a.get("steps") else max(unlearn // 10, 2), unlearn_lr=1e-4)
  return c
