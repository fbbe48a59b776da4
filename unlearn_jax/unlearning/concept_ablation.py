"""Concept Ablation (Kumari et al. 2023) for a class-conditional DDPM (CORE App. C, Eq. 11-12).

The target concept's condition is trained to produce what the model produces for
an anchor concept, on *anchor* images (the public code; CORE's appendix writes
x_0 ~ D_f, available as `images="forget"`):

  model-based  || eps_theta(x_t, c_target) - sg eps_theta(x_t, c_anchor) ||^2   (Eq. 11)
  noise-based  || eps_theta(x_t, c_target) - eps ||^2                          (Eq. 12)

plus prior preservation, the ordinary loss on retained data weighted by lambda.
The anchor of a forgotten class is its alternative class (`config.unlearn.alternative`),
and the anchor images are D_u' (`dimum.memorization_set`: anchor-class images
paired with the forget conditions), so noise-based CA on anchor images is DiMUM's
memorization loss and model-based CA's target is SalUn's random-label target
evaluated on anchor images: the target comes from the *current* model, stop-gradient.
"""
from __future__ import annotations

import dataclasses
from unlearn_jax.errors import UserError, check_choice, check_range
from unlearn_jax.unlearning import combine
from unlearn_jax.unlearning import salun as salun_lib
from unlearn_jax.unlearning import spec


@dataclasses.dataclass(frozen=True)
class Config:
  """`config.ca` (Eq. 11-12): model- or noise-based, anchor or forget images, the prior weight."""
  variant: str = "model"
  images: str = "anchor"
  prior_weight: float = 1.0


VARIANTS = ("model", "noise")
IMAGES = {"anchor": "alternative", "forget": "forget"}   # config.ca.images -> data stream


def images_of(variant: str, images: str) -> str:
  """The images CA trains on: `images` for CA-model; always the anchor images for CA-noise.

  Eq. 12 read with x_0 ~ D_f (as CORE's appendix prints it) is the plain denoising loss of
  the forget concept on its own images, i.e. training it back; Kumari et al.'s noise-based
  loss is on anchor images.  So `config.ca.images="forget"` (CORE App. C Eq. 11's reading)
  changes CA-model only, and one config can run both variants side by side.
  """
  return "anchor" if variant == "noise" else images


def concept_ablation(prior_weight: float = 1.0):
  """grad L_ablation + lambda grad L_prior: ablation objective first, `retain_grads` extra."""
  return combine.weighted_sum(1.0, retain=prior_weight)


def build(config, ctx):
  """{"forget": the ablation loss (Eq. 11 model-based / Eq. 12 noise-based), "retain": L_prior} and
  `concept_ablation(config.ca.prior_weight)`; the anchor from `ctx.alternatives`."""
  alt = ctx.alternatives(config)
  c = config.ca
  check_choice("config.ca.variant", c.variant, VARIANTS)
  check_choice("config.ca.images", c.images, tuple(IMAGES))
  check_range("config.ca.prior_weight", c.prior_weight, 0.0, 1e6)
  images = images_of(c.variant, c.images)
  if alt.ndim == 2 and c.variant == "model" and images == "anchor":
    raise UserError("config.unlearn.anchors", config.unlearn.anchors,
                    "CA-model on anchor images pairs each forget condition with one alternative's images "
                    "(config.unlearn.alternative); set config.ca.images='forget' (CORE App. C Eq. 11) "
                    "or config.unlearn.anchors=''")
  target = salun_lib.random_label_target(alt) if c.variant == "model" else None
  ablate = ctx.objective(IMAGES[images], target=target)
  return {"forget": ablate, "retain": ctx.objective("retain")}, concept_ablation(c.prior_weight), SPEC.options()


SPEC = spec.MethodSpec(section="ca", config=Config, name="ca", display="Concept Ablation", build=build, conditional=True,
                       variant_field="ca.variant")
