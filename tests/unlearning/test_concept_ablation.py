"""concept_ablation: CA-model's target (Eq. 11), CA-noise's images (Eq. 12)."""
import jax
import numpy as np
import pytest

from unlearn_jax.errors import UserError
from unlearn_jax.unlearning import dimum, methods
from unlearn_jax import settings
from method_fixtures import G, K, LABELS, PARAMS, R, X_T, anchor_cfg, close, eps_np, loss_of, method_config


def test_ca_model_based_target_is_current_model_at_anchor_stop_gradient():
  cfg = method_config()
  alt = np.array([0, 3, 3, 3, 4], np.int32)
  objectives, tx, _ = methods.build("ca", "model", settings.of(cfg), alt=alt, steps=4, forget=(1, 2), num_classes=K)
  ablate = objectives["forget"]
  assert ablate.stream == "alternative" and objectives["retain"].target is None
  got = loss_of(ablate)
  np.testing.assert_allclose(got, np.mean((eps_np(PARAMS, X_T, LABELS) - eps_np(PARAMS, X_T, alt[LABELS])) ** 2),
                             rtol=1e-5)
  grads = jax.grad(lambda p: loss_of(ablate, params=p))(PARAMS)
  assert float(grads["w"][3]) == 0.0 and float(grads["b"][3]) == 0.0   # the anchor only in the target
  noise_objectives, _, _ = methods.build("ca", "noise", settings.of(cfg), alt=alt, steps=4, forget=(1, 2), num_classes=K)
  assert noise_objectives["forget"].target is None
  out, _ = tx.update(R, tx.init(R), None, retain_grads=G)
  close(out, jax.tree_util.tree_map(lambda a, b: a + 0.5 * b, R, G))     # prior weight 0.5


def test_ca_noise_trains_on_anchor_images_and_ca_model_rejects_mismatched_anchors():
  alt = dimum.alternative_classes(K, (1, 2), "next")
  cfg = anchor_cfg(ca__images="forget")
  model, _, _ = methods.build("ca", "", settings.of(cfg), alt=alt, steps=4, forget=(1, 2), num_classes=K)
  noise, _, _ = methods.build("ca", "noise", settings.of(cfg), alt=alt, steps=4, forget=(1, 2), num_classes=K)
  assert model["forget"].stream == "forget" and noise["forget"].stream == "alternative"
  assert noise["forget"].target is None
  with pytest.raises(UserError, match="config.unlearn.anchors"):
    methods.build("ca", "", settings.of(anchor_cfg(unlearn__anchors="random")), alt=alt, steps=4, forget=(1, 2),
                  num_classes=K)
