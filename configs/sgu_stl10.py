r"""SGU on STL-10 with the VP SDE (SGU paper, Tables 2 and 3): forget "airplane".

Launch (accelerator; needs tfds stl10 prepared under --config.data.tfds_data_dir):
  python -m unlearn_jax.main --config=configs/sgu_stl10.py --workdir=workdir/sgu_stl10
With the CLIP distance of Table 3 (a transformers-format CLIP directory with Flax weights):
  ... --config.eval.clip_dir=/path/to/clip-vit-base-patch32
2-core CPU smoke scale (a pipeline check, not a result):
  python -m unlearn_jax.main --config=configs/sgu_stl10.py:cpu --workdir=workdir/sgu_stl10_cpu

Stages: evaluation classifier, Standard, Unseen, SGU-Orthogonal, SGU-Obtuse, evaluation
(unlearning ratio, NLL of D_g / D_f, inpainting), report.

What the paper states and this config follows: STL-10, a VP SDE model, D_f = the "airplane"
class (Sec. 4.1); unlearning *re-training* as in its Table 2 (SGU from scratch, `init="scratch"`;
Table 5's fine-tuning has no STL-10 row); 10,000 samples for the unlearning ratio (Sec. 4.1);
inpainting of the upper half with accuracy on D_g / D_f, "Clean" accuracy and the CLIP
distance of D_g on 5,000 images (Table 3: `eval.inpaint.num_examples=5000`; STL-10's test
split holds 800 airplanes, so D_f has 800).
Where the paper is silent, chosen here:
  * resolution 64x64 (the 96x96 images resized with antialiasing, the loader's default for
    stl10; Fig. 4's CelebA restorations are 64x64 too), centred data, random flips;
  * score_sde's VP setting (beta 0.1..20, N = 1000; Adam 2e-4, warmup 5000, grad clip 1,
    EMA 0.9999, batch 128, reduce_mean) and the DDPM++-style UNet of configs/sgu_cifar10.py
    with one more level for 64x64 (ch 128, ch_mult 1,2,2,2, 2 res blocks, attention at 16);
  * 200,000 steps for Standard, Unseen and each SGU re-training (STL-10's labelled train split
    has 5,000 images: 5,120 epochs), SGU alpha 0.9 (configs/sgu_cifar10.py's);
  * the evaluation classifier is the library's CNN trained on the 5,000 labelled images
    (the paper's "CLIP classifier" reaches 96.3% clean accuracy; this one far less: Table 3's
    accuracies are relative to its Clean column);
  * sampling: PC (reverse diffusion + Langevin, snr 0.16) with 1,000 steps to eps 1e-3, also
    for inpainting; NLL of 800 test images of D_g and of D_f.
"""
from unlearn_jax import config_lib


def get_config(arg=None):
  c = config_lib.base()
  c.data.name = "stl10"
  c.data.source = "tfds"
  c.data.image_size = 64
  c.data.num_channels = 3
  c.data.centered = True
  c.data.random_flip = True
  c.data.forget_classes = ("airplane",)
  c.sde.name = "vpsde"
  c.model.update(dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
                      ema_rate=0.9999))
  c.optim.update(dict(lr=2e-4, warmup=5000))
  c.training.update(dict(batch_size=128, reduce="mean", ckpt_every=10000, sample_every=50000))
  c.sgu.alpha = 0.9
  c.stages, c.stage_order = config_lib.sgu_stages(steps=200_000, unlearn_steps=200_000, init="scratch")
  c.classifier.update(dict(features=(64, 128, 256), dense=256, dropout=0.3, steps=20000))
  c.eval.sampler.eps = 1e-3
  c.eval.update(dict(num_samples=10000, sample_batch_size=500))
  c.eval.nll.update(dict(num_examples=800, batch_size=200))
  c.eval.inpaint.num_examples = 5000
  if arg == "cpu":
    config_lib.restoration_cpu_variant(c)
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}: expected 'cpu' or nothing")
  return c

