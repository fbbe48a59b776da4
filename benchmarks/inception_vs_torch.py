"""One-off check: the Flax FID InceptionV3 against pytorch-fid's, same random weights, same images.

pytorch-fid's network is built offline (its weights download is replaced by a
template state dict of the right names and shapes), its parameters and
BatchNorm statistics are randomised, its state dict is saved as a .pth, and
that file goes through this package's converter command line
(`python -m unlearn_jax.evaluation.inception_weights`).  Both networks then
see the same uint8 images, upsampled (32 x 32) and downsampled (400 x 300) to
299 x 299 by their own resize; printed: the largest absolute differences of
pool3, sFID's spatial features and the logits, and the FID between the two
feature sets.

torch is not a dependency of the package; run with a torch that imports
beside torchvision and pytorch-fid (numpy must be the same version as here):

  PYTHONPATH=.:/path/to/torch_venv/lib/python3.11/site-packages python benchmarks/inception_vs_torch.py
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import torch
import torchvision
from pytorch_fid import inception as pytorch_fid_inception

from unlearn_jax import evaluation
from unlearn_jax.evaluation import inception_weights


def torch_fid_inception(seed: int = 0):
  """pytorch-fid's InceptionV3 (pool3 output) and the full net it wraps (for Mixed_6d and fc), random weights."""
  # pytorch-fid's FID blocks subclass torchvision's with the same layers: this template has the
  # released file's names and shapes, and stands in for the download.
  template = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008,
                                             init_weights=False).state_dict()
  pytorch_fid_inception.load_state_dict_from_url = lambda *args, **kwargs: template
  built = {}
  make_net = pytorch_fid_inception.fid_inception_v3
  pytorch_fid_inception.fid_inception_v3 = lambda: built.setdefault("net", make_net())
  wrapper = pytorch_fid_inception.InceptionV3([3]).eval()
  net = built["net"].eval()
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.Conv2d):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
      elif isinstance(m, torch.nn.BatchNorm2d):
        c = m.num_features
        m.weight.copy_(0.8 + 0.4 * torch.rand(c, generator=gen))
        m.bias.copy_(0.1 * torch.randn(c, generator=gen))
        m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
        m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
    net.fc.weight.copy_(torch.randn(net.fc.weight.shape, generator=gen) / 2048 ** 0.5)
    net.fc.bias.copy_(torch.randn(net.fc.bias.shape, generator=gen))
  return wrapper, net


def torch_features(wrapper, net, images_uint8: np.ndarray):
  """pool3, spatial (first 7 channels of Mixed_6d, NHWC-flattened), logits: pytorch-fid's forward."""
  captured = {}
  hook = net.Mixed_6d.register_forward_hook(lambda mod, inp, out: captured.setdefault("x", out))
  x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255.0  # as pytorch-fid's ToTensor
  with torch.no_grad():
    pool3 = wrapper(x)[0].flatten(1)
    logits = net.fc(pool3)
  hook.remove()
  spatial = captured["x"][:, :7].permute(0, 2, 3, 1).flatten(1)
  return pool3.numpy(), spatial.numpy(), logits.numpy()


def main() -> None:
  torch.set_num_threads(os.cpu_count() or 1)
  wrapper, net = torch_fid_inception()
  rng = np.random.default_rng(1)
  image_sets = {"32x32 (upsampled)": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
                "400x300 (downsampled)": rng.integers(0, 256, (4, 400, 300, 3), dtype=np.uint8)}
  with tempfile.TemporaryDirectory() as tmp:
    pth, npz = os.path.join(tmp, "random_fid_inception.pth"), os.path.join(tmp, "random_fid_inception.npz")
    torch.save(net.state_dict(), pth)
    inception_weights.main(["--pth", pth, "--out", npz])
    variables = evaluation.load_inception_variables(npz)
  for name, images in image_sets.items():
    want = torch_features(wrapper, net, images)
    got = evaluation.inception_features(variables, images, batch_size=4)
    print(f"{name}:")
    for label, g, w in zip(("pool3", "spatial", "logits"), (got.pool3, got.spatial, got.logits), want):
      print(f"  {label:8s} max |jax - torch| = {np.abs(g - w).max():.3g}   (max |torch| = {np.abs(w).max():.3g})")
    print(f"  FID(jax pool3, torch pool3) = {evaluation.fid(got.pool3.astype(np.float64), want[0]):.3g}")


if __name__ == "__main__":
  main()
