"""benchmarks/vs_pytorch.py: its PyTorch UNet is the library's UNet (parameters, forward) and
its steps build.  Skipped without torch (the [bench] extra, never a test dependency)."""
import importlib.util
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402

from unlearn_jax import models  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("vs_pytorch", os.path.join(ROOT, "benchmarks", "vs_pytorch.py"))
vs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vs)


@pytest.mark.parametrize("size", ["cifar10", "cpu", "smoke"])
def test_parameter_counts_match_to_the_parameter(size):
  sz = vs.build_size(size, init=False)
  shapes = models.param_shapes(sz.module, sz.shape, conditional=True)     # no compilation
  model = vs.TorchUNet(sz.typed)
  assert vs.count(shapes) == vs.torch_count(model)
  # every tensor has its Flax counterpart, shape for shape (what `load_flax` relies on)
  zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, np.float32), shapes)
  model.load_state_dict(vs.flax_to_torch(zeros, model), strict=True)


@pytest.fixture(scope="module")
def smoke():
  return vs.build_size("smoke")       # the cpu configs' UNet shrunk: 8x8x3, attention at 4x4, dropout


def test_forward_matches_the_library_unet(smoke):
  assert vs.check_forward(smoke.module, vs.TorchUNet(smoke.typed), smoke.params, smoke.shape, smoke.k) < 1e-4


def test_every_step_builds_and_the_pytorch_steps_run(smoke):
  for kind in vs.STEPS:
    j, t = vs.build_steps(smoke, kind, batch=2)        # JAX: traced and lowered, not compiled
    assert j.lowered is not None and j.streams == (1 if kind == "plain" else 2)
    before = [p.detach().clone() for p in t.params]
    t()
    after = list(t.params)
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after)), kind
    if kind == "salun":        # masked entries get a zero gradient, so Adam leaves them exactly
      assert all(torch.equal(a[m == 0], b[m == 0]) for m, a, b in zip(t.mask, before, after))
