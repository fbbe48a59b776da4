"""The FID Inception's weights: pytorch-fid's torch state dict -> Flax variables, and back from .npz.

pytorch-fid releases the TF graph's weights as `pt_inception-2015-12-05-6726825d.pth`
(a torch state dict; `6726825d` is the first 8 hex digits of its SHA-256, the
torch hub convention, checked when the file name carries it).  Its names are
torchvision's module paths, which `unlearn_jax.models.inception` reuses, so a
name maps to a Flax path leaf by leaf:

  <path>.conv.weight       (O, I, kh, kw)  -> params/<path>/conv/kernel  (kh, kw, I, O)
  <path>.bn.weight / bias  (C,)            -> params/<path>/bn/scale / bias
  <path>.bn.running_mean   (C,)            -> batch_stats/<path>/bn/mean
  <path>.bn.running_var    (C,)            -> batch_stats/<path>/bn/var
  fc.weight                (1008, 2048)    -> params/fc/kernel          (2048, 1008)
  fc.bias                  (1008,)         -> params/fc/bias
  *.num_batches_tracked                    -> dropped (training counter)

The conversion is strict, like torch's `load_state_dict`: a missing, unexpected
or mis-shaped entry raises `ValueError`.  The converted variables are stored as
an uncompressed `.npz` whose keys are the '/'-joined Flax paths
("params/Mixed_5b/branch1x1/conv/kernel"); `load_inception_variables` reads
either file.  torch is imported only to read a `.pth`
(`pip install unlearn_jax[convert]`):

  python -m unlearn_jax.evaluation.inception_weights --pth pt_inception-2015-12-05-6726825d.pth \\
      --out inception_fid.npz
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from flax import traverse_util

from unlearn_jax import lazy
from unlearn_jax.models import inception

torch = lazy.load("torch", extra="convert")    # reading a .pth only

#: (torch module name, torch leaf) -> (Flax collection, Flax leaf, array transform).
_OIHW_TO_HWIO: Callable = lambda w: np.transpose(w, (2, 3, 1, 0))  # noqa: E731
_LEAVES: Dict[Tuple[str, str], Tuple[str, str, Callable]] = {
    ("conv", "weight"): ("params", "kernel", _OIHW_TO_HWIO),
    ("bn", "weight"): ("params", "scale", np.asarray),
    ("bn", "bias"): ("params", "bias", np.asarray),
    ("bn", "running_mean"): ("batch_stats", "mean", np.asarray),
    ("bn", "running_var"): ("batch_stats", "var", np.asarray),
    ("fc", "weight"): ("params", "kernel", np.transpose),
    ("fc", "bias"): ("params", "bias", np.asarray),
}
_DROPPED = frozenset({"num_batches_tracked"})


def _expected_shapes() -> Dict[Tuple[str, ...], Tuple[int, ...]]:
  shapes = traverse_util.flatten_dict(inception.variable_shapes())
  return {k: tuple(v.shape) for k, v in shapes.items()}


def check_variables(variables: Mapping) -> None:
  """Raise ValueError unless `variables` has exactly the FID InceptionV3's entries and shapes."""
  got = {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(dict(variables)).items()}
  want = _expected_shapes()
  missing = sorted("/".join(k) for k in want.keys() - got.keys())
  unexpected = sorted("/".join(k) for k in got.keys() - want.keys())
  wrong = sorted(f"{'/'.join(k)}: {got[k]} != {want[k]}" for k in want.keys() & got.keys() if got[k] != want[k])
  if missing or unexpected or wrong:
    raise ValueError("not the FID InceptionV3's variables: "
                     f"missing {missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)}), "
                     f"wrong shapes {wrong[:5]} ({len(wrong)})")


def convert_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict:
  """pytorch-fid's state dict (name -> numpy array) -> Flax {"params", "batch_stats"} (numpy leaves).

  Raises:
    ValueError: on a name outside the table above, or if the result is not the
      network's full set of variables with its shapes (`check_variables`).
  """
  flat = {}
  for name, value in state_dict.items():
    *path, module, leaf = name.split(".")
    if leaf in _DROPPED:
      continue
    if (module, leaf) not in _LEAVES:
      raise ValueError(f"unknown state dict entry {name!r}")
    collection, flax_leaf, transform = _LEAVES[(module, leaf)]
    flat[(collection, *path, module, flax_leaf)] = transform(np.asarray(value, np.float32))
  variables = traverse_util.unflatten_dict(flat)
  check_variables(variables)
  return variables


def save_npz(variables: Mapping, path: str) -> None:
  """Write `variables` to an uncompressed .npz keyed by '/'-joined Flax paths."""
  flat = traverse_util.flatten_dict(dict(variables), sep="/")
  with open(path, "wb") as f:
    np.savez(f, **{k: np.asarray(v) for k, v in flat.items()})


def _read_npz(path: str) -> dict:
  with np.load(path, allow_pickle=False) as f:
    flat = {k: f[k] for k in f.files}
  variables = traverse_util.unflatten_dict(flat, sep="/")
  check_variables(variables)
  return variables


def _check_hash_prefix(path: str) -> None:
  """If the file name ends in -<8 hex digits>.pth (torch hub's convention), check its SHA-256 prefix."""
  m = re.search(r"-([0-9a-f]{8,})\.pth?$", os.path.basename(path))
  if m is None:
    return
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  if not digest.hexdigest().startswith(m.group(1)):
    raise ValueError(f"{path}: SHA-256 {digest.hexdigest()[:8]}... does not match the name's {m.group(1)}")


def read_pth(path: str) -> Dict[str, np.ndarray]:
  """A torch state dict file -> name -> numpy array (needs torch; tensors only, no pickled code)."""
  _check_hash_prefix(path)
  state = torch.load(path, map_location="cpu", weights_only=True)
  return {k: v.detach().cpu().numpy() for k, v in state.items()}


def _read_pth(path: str) -> dict:
  return convert_state_dict(read_pth(path))


_READERS = {".npz": _read_npz, ".pth": _read_pth, ".pt": _read_pth}


def load_inception_variables(path: str) -> dict:
  """The FID InceptionV3's {"params", "batch_stats"} from a converted .npz or pytorch-fid's .pth."""
  ext = os.path.splitext(path)[1].lower()
  if ext not in _READERS:
    raise ValueError(f"{path}: expected one of {sorted(_READERS)}")
  return _READERS[ext](path)


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description="Convert pytorch-fid's Inception weights to a Flax .npz.")
  parser.add_argument("--pth", required=True, help="pt_inception-2015-12-05-6726825d.pth")
  parser.add_argument("--out", required=True, help="output .npz")
  args = parser.parse_args(argv)
  save_npz(_read_pth(args.pth), args.out)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
