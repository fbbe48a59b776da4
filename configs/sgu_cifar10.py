r"""SGU on CIFAR-10 with the VP SDE, fine-tuning setting (SGU paper, Table 5): forget "automobile".

Launch (accelerator; needs tfds cifar10 prepared under --config.data.tfds_data_dir):
  python -m unlearn_jax.main --config=configs/sgu_cifar10.py --workdir=workdir/sgu_cifar10
Fine-tune a pretrained Standard model instead of training it first:
  ... --config.stages.sgu_orthogonal.init=/path/to/workdir/standard \
      --config.stages.sgu_obtuse.init=/path/to/workdir/standard
2-core CPU smoke scale:
  python -m unlearn_jax.main --config=configs/sgu_cifar10.py:cpu --workdir=workdir/sgu_cifar10_cpu

Paper scale: DDPM++-style UNet (ch 128, ch_mult 1,2,2,2, 2 res blocks, attention at 16),
VP SDE (beta 0.1..20), Adam 2e-4, warmup 5000, EMA 0.9999, SGU fine-tuning 80K iterations.
Evaluation adds the reconstruction of SGU Table 4 (CIFAR-10: noise test images of D_g / D_f to
t = 0.02 and sample back; accuracy of the reconstructions against their originals' class, and
the CLIP distance with `--config.eval.clip_dir`) on 5,000 test images (the paper gives the count
only for Table 3; 5,000 here too).  The cpu variant leaves it off (its smoke run stays short;
configs/sgu_stl10.py:cpu exercises both restorations).
"""
from unlearn_jax import config_lib


def get_config(arg=None):
  c = config_lib.base()
  c.data.name = "cifar10"
  c.data.source = "tfds"
  c.data.image_size = 32
  c.data.num_channels = 3
  c.data.centered = True
  c.data.random_flip = True
  c.data.forget_classes = ("automobile",)
  c.sde.name = "vpsde"
  c.sde.eps = 1e-5
  c.model.ch = 128
  c.model.ch_mult = (1, 2, 2, 2)
  c.model.num_res_blocks = 2
  c.model.attn_resolutions = (16,)
  c.model.dropout = 0.1
  c.model.ema_rate = 0.9999
  c.optim.lr = 2e-4
  c.optim.warmup = 5000
  c.training.batch_size = 128
  c.training.reduce = "mean"          # score_sde's and SGU's public VP configs (reduce_mean=True)
  c.training.ckpt_every = 10000
  c.training.sample_every = 50000
  c.sgu.alpha = 0.9
  c.stages, c.stage_order = config_lib.sgu_stages(steps=800_000, unlearn_steps=80_000, init="standard")
  c.classifier.features = (64, 128, 256)
  c.classifier.dense = 256
  c.classifier.steps = 20000
  c.eval.sampler.eps = 1e-3
  c.eval.num_samples = 10000
  c.eval.sample_batch_size = 500
  c.eval.nll.num_examples = 1000
  c.eval.reconstruct.num_examples = 5000       # SGU Table 4
  if arg == "cpu":
    config_lib.cpu_variant(c, num_samples=200, nll_examples=32)
    c.eval.reconstruct.num_examples = 0
    c.data.max_examples = 2000
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}: expected 'cpu' or nothing")
  return c
