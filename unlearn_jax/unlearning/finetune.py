"""Fine-tuning on the retained data alone: the ordinary denoising loss on D_r,

    L = E_{(x_0, c) ~ D_r, t, eps} || eps - eps_theta(x_t, c) ||^2      (DiMUM paper Eq. 8)

with no term on D_f and no gradient transform of its own (the baseline every unlearning
method is compared with, and the step benchmarks/unlearn_step.py times the others against).
"""
from __future__ import annotations

from unlearn_jax.unlearning import spec


def build(config, ctx):
  """{"retain": L_r}, no transform."""
  del config
  return {"retain": ctx.objective("retain")}, None, SPEC.options()


SPEC = spec.MethodSpec(name="finetune", display="Fine-tune", build=build)
