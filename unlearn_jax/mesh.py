"""One device mesh for every computation: axes `data` and `fsdp`, jit with NamedShardings.

    m = mesh.make(fsdp=2)                       # (data = n_devices / 2, fsdp = 2)
    with mesh.use(m):                           # the run's mesh (pipeline.run sets it from config.mesh)
      sh = mesh.tree_shardings(state)           # params / optimizer state / frozen copies / masks
      state = mesh.put(state, sh)
      step = jax.jit(step_fn, in_shardings=(sh, mesh.batch(), mesh.replicated(), ...),
                     out_shardings=(sh, mesh.replicated()), donate_argnums=(0,))
      batch = mesh.put_batch(local_batch)       # this process's slice of the global batch

A batch is split over *every* device (its leading axis over `(data, fsdp)`), as in
FSDP / ZeRO-3 (maxtext's and maxdiffusion's `data` + `fsdp` axes): each device computes on
its share of the examples.  Parameters, optimizer moments, frozen copies and masks are
replicated when `fsdp` is 1 (plain data parallelism: pmap's one program per device,
gradients averaged over the batch, through `jax.jit` -- pmap's maintained successor) and
otherwise split along `fsdp` by `leaf_spec` (the leaf's largest dimension that `fsdp`
divides; leaves under `MIN_SHARD_SIZE` elements stay replicated).  XLA inserts the
all-gathers and reduce-scatters.

Because every step sees the *global* batch, a per-example key is a function of the
example's position in it (`training.example_keys`) and a draw of a global shape is the
same on any mesh (JAX's partitionable threefry): the same global batch gives the same
numbers on 1 device or n, up to float summation order.

Several processes (TPU pod slices, GPU nodes) join through `jax.distributed.initialize()`;
the mesh then spans every process's devices, each process feeds its slice of the global
batch (`put_batch`), host values enter through `put` (every process holds the same value)
and leave through `to_host` (all-gathered where a process holds only part).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, Optional, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from unlearn_jax import console
from unlearn_jax.errors import UserError

DATA, FSDP = "data", "fsdp"
#: the axes a batch's leading dimension is split over: every device.
BATCH_AXES = (DATA, FSDP)
#: leaves with fewer elements stay replicated under FSDP (biases, norms: all-gathering them
#: costs more than their memory).
MIN_SHARD_SIZE = 1 << 12

_current: Optional[Mesh] = None


def make(fsdp: int = 1, devices: Optional[Sequence[Any]] = None) -> Mesh:
  """The (data, fsdp) mesh over `devices` (default: every device of every process).

  Raises UserError("config.mesh.fsdp", ...) unless fsdp divides the number of devices."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if not isinstance(fsdp, int) or fsdp < 1 or n % fsdp:
    raise UserError("config.mesh.fsdp", fsdp, f"must be a positive divisor of the number of devices ({n})")
  auto = (jax.sharding.AxisType.Auto,) * 2
  return Mesh(np.asarray(devices, dtype=object).reshape(n // fsdp, fsdp), (DATA, FSDP), axis_types=auto)


def current() -> Mesh:
  """The mesh computations run on: the innermost `use`, else every device with fsdp 1."""
  global _current
  if _current is None:
    _current = make()
  return _current


def set_current(m: Optional[Mesh]) -> None:
  """Makes `m` the mesh of what follows (None: back to the default, built on next use)."""
  global _current
  _current = m


@contextlib.contextmanager
def use(m: Mesh) -> Iterator[Mesh]:
  """Runs the block on mesh `m` (restores the previous one after)."""
  global _current
  prev, _current = _current, m
  try:
    yield m
  finally:
    _current = prev


def size(m: Optional[Mesh] = None) -> int:
  """How many parts a batch is split into (every device of the mesh)."""
  return (m or current()).devices.size


def round_up(n: int, m: Optional[Mesh] = None) -> int:
  """The smallest multiple of the mesh size >= n (a batch padded to split evenly)."""
  k = size(m)
  return max(k, -(-int(n) // k) * k)


def batch(m: Optional[Mesh] = None) -> NamedSharding:
  """A batch's sharding: the leading axis over every device."""
  return NamedSharding(m or current(), P(BATCH_AXES))


def replicated(m: Optional[Mesh] = None) -> NamedSharding:
  return NamedSharding(m or current(), P())


def leaf_spec(shape: Sequence[int], fsdp: int, min_size: Optional[int] = None) -> P:
  """FSDP's split of one leaf: its largest dimension that `fsdp` divides (the last of equals),
  over the `fsdp` axis; replicated when fsdp is 1, the leaf has fewer than `min_size`
  (default `MIN_SHARD_SIZE`) elements or no dimension divides."""
  min_size = MIN_SHARD_SIZE if min_size is None else min_size
  if fsdp <= 1 or math.prod(shape) < min_size:
    return P()
  dims = [d for d in range(len(shape)) if shape[d] % fsdp == 0]
  if not dims:
    return P()
  d = max(dims, key=lambda i: (shape[i], i))
  return P(*([None] * d + [FSDP]))


def tree_shardings(tree, m: Optional[Mesh] = None):
  """NamedShardings for a tree of parameters-like leaves (arrays or ShapeDtypeStructs):
  `leaf_spec` on the mesh's fsdp axis, so params, EMA, Adam moments, frozen copies and
  masks of one shape are split alike; scalars and PRNG keys are replicated."""
  m = m or current()
  fsdp = m.shape[FSDP]

  def one(x):
    shape = tuple(getattr(x, "shape", ()))
    if jax.dtypes.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key):
      return NamedSharding(m, P())
    return NamedSharding(m, leaf_spec(shape, fsdp))

  return jax.tree_util.tree_map(one, tree)


def check_even(tree, shardings) -> None:
  """Raises ValueError naming the first leaf whose sharded dimension the mesh axes do not
  divide.  (jit pads an uneven split silently: a rule that split a dimension of 3 in 2 would
  compile and waste memory rather than fail.)"""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  for (path, x), sh in zip(leaves, jax.tree_util.tree_leaves(shardings)):
    shape = tuple(getattr(x, "shape", ()))
    for d, axes in enumerate(tuple(sh.spec)[:len(shape)]):
      if axes is None:
        continue
      k = math.prod(sh.mesh.shape[a] for a in (axes if isinstance(axes, tuple) else (axes,)))
      if shape[d] % k:
        raise ValueError(f"{jax.tree_util.keystr(path)}: dimension {d} of shape {shape} is split {k} ways "
                         f"({sh.spec}), which does not divide it")


def _put_leaf(x, sharding: NamedSharding):
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(_put_leaf(jax.random.key_data(x), sharding),
                                    impl=jax.random.key_impl(x))
  # Through the host, always: a copy the steps may donate.  (jax 0.10.2's device_put onto a
  # mesh of several devices reused a one-device array's buffer for one shard even with
  # may_alias=False, and the first donating step then deleted the caller's array.)
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def put(tree, shardings=None):
  """Places a host tree (the same value in every process) on the mesh: `shardings` a tree
  of NamedShardings (or one for every leaf); default `tree_shardings(tree)`."""
  if shardings is None:
    shardings = tree_shardings(tree)
  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree_util.tree_map(lambda x: _put_leaf(x, shardings), tree)
  return jax.tree_util.tree_map(_put_leaf, tree, shardings)


def put_batch(tree, m: Optional[Mesh] = None):
  """This process's slice of a global batch (leading axis: batch / process_count rows, the
  process's devices' consecutive share) -> global arrays split over every device."""
  sh = batch(m)
  return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(sh, np.asarray(x)), tree)


def to_host(tree):
  """NumPy copies of a tree of global arrays (all-gathered across processes where needed)."""
  def one(x):
    if not isinstance(x, jax.Array):
      return x
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(one(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    if x.is_fully_addressable or x.is_fully_replicated:
      return np.asarray(x.addressable_data(0)) if x.is_fully_replicated else np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree_util.tree_map(one, tree)


def map_batches(fn: Callable, consts, xs, batch_size: int, *, rng: Optional[jax.Array] = None,
                m: Optional[Mesh] = None, on_batch: Optional[Callable[[int, int], None]] = None,
                label: str = "", unit: str = "images"):
  """fn(consts, x_B) over `xs` (a tree of arrays with one leading axis of N rows) in chunks
  of `batch_size` rows, each padded (repeating its last row) to a multiple of the mesh size
  and split over every device; returns fn's outputs (a tree of (N, ...) NumPy arrays; None
  for N = 0).  With `rng`, chunk i is `fn(consts, x_B, fold_in(rng, i))`.

  `fn` is a `jax.jit` (compiled once per padded shape); `consts` (e.g. parameters) are
  placed once, by `tree_shardings`.  `on_batch(done, total)` reports progress; with a
  `label`, a `console.Progress` line ("<label> 500/2000 <unit> (..., ETA ...)") every 20 s of
  a long loop (a short one stays silent)."""
  m = m or current()
  leaves = jax.tree_util.tree_leaves(xs)
  n = len(leaves[0]) if leaves else 0
  if n == 0:
    return None
  batch_size = max(1, min(int(batch_size), n))
  padded = round_up(batch_size, m)
  placed = put(consts, tree_shardings(consts, m))
  progress = console.Progress(label, n, unit) if label else None
  out = []
  for i, start in enumerate(range(0, n, batch_size)):
    stop = min(start + batch_size, n)
    idx = np.minimum(np.arange(start, start + padded), stop - 1)
    chunk = put(jax.tree_util.tree_map(lambda a: np.asarray(a)[idx], xs), batch(m))
    extra = () if rng is None else (put(jax.random.fold_in(rng, i), replicated(m)),)
    y = fn(placed, chunk, *extra)
    out.append(jax.tree_util.tree_map(lambda a: to_host(a)[:stop - start], y))
    if on_batch is not None:
      on_batch(stop, n)
    if progress is not None:
      progress.update(stop)
  return jax.tree_util.tree_map(lambda *a: np.concatenate(a), *out)


def check_batch(batch_size: int, field: str, m: Optional[Mesh] = None) -> None:
  """A training batch must split evenly over the devices (UserError naming `field`)."""
  k = size(m)
  if batch_size % k:
    raise UserError(field, batch_size, f"must be a multiple of the number of devices ({k})")
