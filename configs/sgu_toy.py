r"""SGU on the 2-D Gaussian mixture of the SGU paper (Table 1), VE SDE, MLP score network.

  p_data = 2/5 N((-2,-2), I) + 1/5 N((0,0), I) + 2/5 N((2,2), I); forget the middle component.

Launch:
  python -m unlearn_jax.main --config=configs/sgu_toy.py --workdir=workdir/sgu_toy

Stages: Standard (all data), Unseen (D_g only), SGU-Orthogonal and SGU-Obtuse
(fine-tuning Standard, alpha 0.55, 2500 steps), evaluation, report.  The default is
already CPU-sized (about 3 minutes on 2 cores); `:cpu` is accepted and identical.
NLL is reported with score_sde's offset (+8 bits/dim), the convention behind
the magnitudes of the paper's Table 1.
"""
from unlearn_jax import config_lib


def get_config(arg=None):
  del arg  # the toy is CPU-sized already
  c = config_lib.base()
  c.data.name = "toy_gmm"
  c.data.source = "synthetic"
  c.data.image_size = 0
  c.data.num_channels = 0
  c.data.forget_classes = (1,)
  c.data.toy_num_samples = 20000
  c.sde.name = "vesde"
  c.sde.sigma_max = 10.0
  c.model.name = "mlp"
  c.model.hidden = 128
  c.model.num_layers = 3
  c.model.ema_rate = 0.99
  c.optim.lr = 2e-3
  c.optim.warmup = 0
  c.training.batch_size = 256
  c.training.log_every = 500
  c.training.ckpt_every = 1000
  c.sgu.alpha = 0.55
  # SGU by fine-tuning Standard (init="standard"); init="scratch" gives the paper's
  # unlearning re-training (alpha 0.5, 3000 steps: similar numbers).
  c.stages, c.stage_order = config_lib.sgu_stages(steps=3000, unlearn_steps=2500, init="standard",
                                                  classifier=False)
  c.eval.num_samples = 10000
  c.eval.sample_batch_size = 10000
  c.eval.sampler.n_steps = 250
  c.eval.sampler.corrector = "none"
  c.eval.sampler.eps = 1e-3
  c.eval.nll.num_examples = 500
  c.eval.nll.batch_size = 500
  c.eval.nll.hutchinson = "exact"
  return c
