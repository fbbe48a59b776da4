"""The device mesh (`unlearn_jax.mesh`): the FSDP rule, batched evaluation on the mesh, and the
equality table (rows in tests/mesh_table.py): every method family, the loop, sampling and NLL
give the same numbers on 1 and 4 (forced host) devices and in two `jax.distributed` processes
of 2 devices each on one (data=2, fsdp=2) mesh, and the plain step, the loop and DDIM sampling
on 2 devices too, the plain step on the (data=2, fsdp=2) mesh in one process too (each mesh is a
compile: the suite's time); the tiny Stable Diffusion step, the costliest to compile, on 1
device and in the two processes only."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import mesh_table
import test_multiprocess
from unlearn_jax import mesh
from unlearn_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_leaf_spec_splits_the_largest_dimension_fsdp_divides():
  assert mesh.leaf_spec((3, 3, 64, 128), 2, min_size=1) == P(None, None, None, mesh.FSDP)
  assert mesh.leaf_spec((128, 6), 4, min_size=1) == P(mesh.FSDP)
  assert mesh.leaf_spec((6, 6), 4, min_size=1) == P()            # no dimension divisible by 4
  assert mesh.leaf_spec((10, 9), 3, min_size=1) == P(None, mesh.FSDP)
  assert mesh.leaf_spec((64, 64), 2, min_size=1 << 13) == P()    # too small to split
  assert mesh.leaf_spec((64, 64), 1, min_size=1) == P()          # fsdp 1: replicated
  assert mesh.leaf_spec((), 2, min_size=0) == P()


def test_make_refuses_an_fsdp_that_does_not_divide_the_devices():
  n = len(jax.devices())
  with pytest.raises(UserError, match=r"config\.mesh\.fsdp.*divisor of the number of devices"):
    mesh.make(fsdp=n + 1)
  with pytest.raises(UserError, match=r"config\.mesh\.fsdp"):
    mesh.make(fsdp=0)
  m = mesh.make()
  assert m.shape == {mesh.DATA: n, mesh.FSDP: 1}


def test_map_batches_pads_and_trims_every_chunk():
  calls = []

  @jax.jit
  def f(c, x):
    return {"y": x["a"] * c + x["b"][:, None]}

  def seen(done, total):
    calls.append((done, total))

  xs = {"a": np.arange(14, dtype=np.float32).reshape(7, 2), "b": np.arange(7, dtype=np.float32)}
  out = mesh.map_batches(f, jnp.float32(3.0), xs, 3, on_batch=seen)
  np.testing.assert_allclose(out["y"], xs["a"] * 3.0 + xs["b"][:, None])
  assert calls == [(3, 7), (6, 7), (7, 7)]
  assert mesh.map_batches(f, 1.0, {"a": np.zeros((0, 2)), "b": np.zeros(0)}, 3) is None


def test_map_batches_with_a_label_logs_a_progress_line(monkeypatch):
  made = []

  class Recorder:
    def __init__(self, label, total, unit):
      made.append([label, total, unit])

    def update(self, done):
      made[-1].append(done)

  monkeypatch.setattr(mesh.console, "Progress", Recorder)
  f = jax.jit(lambda c, x: x * c)
  mesh.map_batches(f, 2.0, np.ones((5, 2), np.float32), 2)                      # no label: no line
  assert made == []
  mesh.map_batches(f, 2.0, np.ones((5, 2), np.float32), 2, label="Inception features")
  assert made == [["Inception features", 5, "images", 2, 4, 5]]


def test_put_and_to_host_round_trip_a_tree_with_a_key():
  tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "k": jax.random.key(3), "s": np.int32(4)}
  back = mesh.to_host(mesh.put(tree))
  np.testing.assert_array_equal(back["w"], tree["w"])
  np.testing.assert_array_equal(jax.random.key_data(back["k"]), jax.random.key_data(tree["k"]))
  assert int(back["s"]) == 4


def test_use_restores_the_previous_mesh():
  before = mesh.current()
  inner = mesh.make(devices=jax.devices()[:1])
  with mesh.use(inner):
    assert mesh.current() is inner
  assert mesh.current() is before


# ============================================================================ the equality table

# The one-process columns, in a process with 4 forced host devices: each family on 1 device and
# on its meshes of `mesh_table.ONE_PROCESS`, saved for the parent to compare.
TABLE_SCRIPT = textwrap.dedent("""
    import json, sys, tempfile
    sys.path.insert(0, {tests!r})
    import jax
    assert jax.device_count() == 4, jax.devices()
    from unlearn_jax import mesh
    import mesh_table as mt

    mesh.MIN_SHARD_SIZE = 16          # the test nets are tiny: let fsdp split their kernels
    devs = jax.devices()
    meshes = {{"1": mesh.make(devices=devs[:1]), "2": mesh.make(devices=devs[:2]), "4": mesh.make(devices=devs),
              "fsdp2": mesh.make(fsdp=2, devices=devs)}}
    res, sharded = mt.compute(meshes, {{f: ("1",) + mt.ONE_PROCESS[f] for f in mt.FAMILIES}}, tempfile.mkdtemp())
    mt.save({out!r}, res)
    print("RESULT", json.dumps({{"sharded": sharded}}))
""")

FAMILIES = mesh_table.FAMILIES


def _diff(a, b) -> float:
  assert len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b))
  return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def table(tmp_path_factory):
  """{family: {"scale", "std", mesh key: max |difference| from 1 device}, "sharded": {...}}:
  the one-process columns, then the two-process one ("2proc")."""
  tmp = tmp_path_factory.mktemp("mesh_table")
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip())
  script = TABLE_SCRIPT.format(tests=os.path.join(REPO, "tests"), out=str(tmp / "one.npz"))
  proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900,
                        cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-4000:]
  info = json.loads([l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][0][len("RESULT "):])
  one = mesh_table.load(str(tmp / "one.npz"))
  # two processes x 2 devices, one (data=2, fsdp=2) mesh: data across the processes
  (tmp / "work").mkdir()
  procs = test_multiprocess._launch(str(tmp), None, timeout=900,
                                    argv=[os.path.join(REPO, "tests", "mesh_table.py"), str(tmp), str(tmp / "work")])
  for pid, (rc, err) in enumerate(procs):
    assert rc == 0, f"two-process table, process {pid} failed (rc {rc}):\n{err}"
  two = [mesh_table.load(str(tmp / f"table.{pid}.npz")) for pid in range(2)]
  out = {"sharded": info["sharded"],
         "sharded_2proc": [json.load(open(tmp / f"table.{pid}.json"))["sharded"] for pid in range(2)]}
  for fam in FAMILIES:
    ref = one[fam]["1"]
    row = out[fam] = {"scale": max(float(np.max(np.abs(a))) for a in ref), "std": float(np.std(ref[0])),
                      "value": float(ref[0].ravel()[0])}
    for k, leaves in one[fam].items():
      if k != "1":
        row[k] = _diff(ref, leaves)
    row["2proc"] = max(_diff(ref, t[fam]["2proc"]) for t in two)
    row["2proc_agree"] = _diff(two[0][fam]["2proc"], two[1][fam]["2proc"])
  return out


@pytest.mark.parametrize("family", FAMILIES)
def test_same_numbers_on_1_2_4_devices_fsdp_and_two_processes(table, family):
  """Each row: the result on 2, 4 devices, on (data=2, fsdp=2) and on two processes of 2
  devices each (data across them), against 1 device, to float tolerance (relative to the
  result's largest entry: summation order differs by mesh); both processes return the same."""
  row = table[family]
  # the NLL's adaptive solve (rtol 1e-5) picks its steps from float noise too; the SD step's Adam
  # (lr 1e-3) turns summation-order noise in near-zero gradients into up to a step's size,
  # g / (sqrt(v) + eps) (measured: 3.9e-5 at scale 3.0, 1 device vs fsdp 2): a tenth of a step
  rtol = {"nll": 1e-4, "sd": 1e-4 / 3}.get(family, 1e-5)
  for m in [k for k in ("2", "4", "fsdp2", "2proc") if k in row]:
    assert row[m] <= rtol * max(1.0, row["scale"]), f"{family}: mesh {m} differs from 1 device by {row[m]} ({row})"
  assert row["2proc_agree"] == 0.0, row


def test_the_table_is_not_vacuous(table):
  """fsdp 2 really splits parameters (so the fsdp columns test FSDP), in one process and in two,
  the samples are not constant, the NLL is finite."""
  assert table["sharded"]["2"] > 0 and table["sharded"]["1"] == 0
  assert all(s["2"] > 0 for s in table["sharded_2proc"])
  assert table["generate_ddim"]["std"] > 0.05
  assert np.isfinite(table["nll"]["value"])
