"""Several processes on one mesh: two Python processes on localhost (`jax.distributed` over
gloo CPU collectives), each with 2 forced host devices, run `training.train_loop` on a mesh
over all 4 devices, each feeding its own half of every global batch.  Their final parameters
equal one process's on the same global batches; a run killed after a checkpoint and resumed
by fresh processes equals the uninterrupted one; orbax writes one checkpoint, not one per
process, and every process restores it.

Run as a script, this file is one of the worker processes, joined as `--multihost` joins
GPU nodes (`main.initialize_distributed`):
  JAX_COORDINATOR_ADDRESS=127.0.0.1:<port> JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=<i> \
    python tests/test_multiprocess.py <out_dir> <runs JSON>
"""
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback

import jax
import numpy as np
from jax.experimental import multihost_utils

import test_training as tt   # tests/ is on sys.path: pytest's rootdir, or this script's folder
from unlearn_jax import checkpoints, main, mesh, training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLOBAL_BATCH = 8
LOCAL_DEVICES = 2
NUM_STEPS, CKPT_EVERY, KILL_AT = 4, 2, 3


def _leaves(tree):
  return [np.asarray(a) for a in jax.tree_util.tree_leaves(tree)]


# ================================================================ worker (one process of the job)

def _worker(out_dir: str, runs: list) -> None:
  """Runs `runs` in order, each {"name", "fsdp", "stage_dir", "num_steps", "kill_at"}: the SGU
  setup of tests/test_training.py through `train_loop` on a mesh over every process's devices;
  writes <out_dir>/<name>.<pid>.npz (final parameters) and .json (`first_done`: the step count
  after the first step this process ran; how many parameters fsdp splits).  A run with
  `kill_at` SIGKILLs this process after that step.  Last, both processes write one JSON file
  at once (`checkpoints.write_json`)."""
  # before anything touches a device; gloo is jax 0.10's default for CPU, named for older ones
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  main.initialize_distributed()
  pid, nproc = jax.process_index(), jax.process_count()
  assert (pid, nproc) == (int(os.environ["JAX_PROCESS_ID"]), int(os.environ["JAX_NUM_PROCESSES"]))
  assert jax.device_count() == nproc * LOCAL_DEVICES and jax.local_device_count() == LOCAL_DEVICES
  mesh.MIN_SHARD_SIZE = 16            # the test net is tiny: let fsdp split its kernels
  rows = GLOBAL_BATCH // nproc

  def local_batches(step):            # this process's rows of the global batch
    return jax.tree_util.tree_map(lambda a: a[pid * rows:(pid + 1) * rows], tt._batches(step))

  for run in runs:
    state, spec, tx = tt._setup("sgu")
    step_fn = functools.partial(training.train_step, spec=spec, tx=tx)
    loop = training.LoopConfig(num_steps=run["num_steps"], batch_size=GLOBAL_BATCH, seed=0, log_every=1,
                               ckpt_every=CKPT_EVERY)
    seen = []

    def hook(done, kill_at=run.get("kill_at")):
      seen.append(done)
      if done == kill_at:
        # the parent checks this marker: the peer of a process that died first may be ended by
        # jax's coordination service instead of its own SIGKILL
        open(os.path.join(out_dir, f"{run['name']}.{pid}.killed"), "w").close()
        os.kill(os.getpid(), signal.SIGKILL)

    mesh.set_current(mesh.make(fsdp=run["fsdp"]))
    sharded = sum(s.spec != jax.sharding.PartitionSpec()
                  for s in jax.tree_util.tree_leaves(mesh.tree_shardings(state.params)))
    final = training.train_loop(run["stage_dir"], state, step_fn, loop, local_batches, step_hook=hook)
    base = os.path.join(out_dir, f"{run['name']}.{pid}")
    np.savez(base + ".npz", *_leaves(final.params))
    with open(base + ".json", "w") as f:
      json.dump({"first_done": seen[0] if seen else None, "sharded": sharded, "step": int(final.step)}, f)
  # every process writes a stage's meta.json and DONE.json (stages/train.py), possibly at once
  multihost_utils.sync_global_devices("write_json")
  for i in range(100):
    checkpoints.write_json(os.path.join(out_dir, "shared.json"), {"i": i})
  # and publish the same directories at once (a tiny model, a fake data tree in inputs/)
  for i in range(20):
    dst = os.path.join(out_dir, f"dir{i}")
    tmp = checkpoints.tmp_path(dst)
    os.makedirs(tmp)
    with open(os.path.join(tmp, "f"), "w") as f:
      f.write(str(i))
    checkpoints.publish_dir(tmp, dst)


# ================================================================ the test (parent process)

def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(out_dir, runs, nproc=2, timeout=180, argv=None):
  """Starts `nproc` worker processes (2 host devices each) and waits for all of them;
  returns their (returncode, stderr tail).  Each runs this file with `out_dir` and `runs`, or
  `argv` (a script and its arguments) where given.  Once one fails, the others (left waiting on it
  in a collective or barrier) get 20 s to end, then are killed."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}",
             JAX_NUM_PROCESSES=str(nproc),
             XLA_FLAGS=(os.environ.get("XLA_FLAGS", "")
                        + f" --xla_force_host_platform_device_count={LOCAL_DEVICES}").strip())
  logs = [os.path.join(out_dir, f"stderr.{time.monotonic_ns()}.{i}") for i in range(nproc)]
  procs = []
  for i in range(nproc):
    with open(logs[i], "w") as err:
      cmd = argv or [os.path.abspath(__file__), str(out_dir), json.dumps(runs)]
      procs.append(subprocess.Popen([sys.executable] + list(cmd),
                                    cwd=REPO, env=dict(env, JAX_PROCESS_ID=str(i)),
                                    stdout=subprocess.DEVNULL, stderr=err))
  deadline = time.monotonic() + timeout
  try:
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
      if any(p.poll() not in (None, 0) for p in procs):
        deadline = min(deadline, time.monotonic() + 20)
      time.sleep(0.1)
  finally:
    hung = [p.poll() is None for p in procs]
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
  out = []
  for p, log, h in zip(procs, logs, hung):
    with open(log) as f:
      err = "".join(l for l in f if "[Gloo]" not in l)[-3000:]
    out.append((p.returncode, err + ("\n[still running at the deadline: killed by the test]" if h else "")))
  return out


def _result(out_dir, name, pid):
  with np.load(os.path.join(out_dir, f"{name}.{pid}.npz")) as z:
    params = [z[f"arr_{i}"] for i in range(len(z.files))]
  with open(os.path.join(out_dir, f"{name}.{pid}.json")) as f:
    return params, json.load(f)


def _single_process_reference(tmp_path):
  """The same loop in this process, on one device, fed the whole global batch."""
  state, spec, tx = tt._setup("sgu")
  loop = training.LoopConfig(num_steps=NUM_STEPS, batch_size=GLOBAL_BATCH, seed=0, log_every=1,
                             ckpt_every=CKPT_EVERY)
  with mesh.use(mesh.make(devices=jax.devices()[:1])):
    final = training.train_loop(str(tmp_path / "single"), state,
                                functools.partial(training.train_step, spec=spec, tx=tx), loop, tt._batches)
  return _leaves(final.params)


def _checkpoint_dirs(stage_dir):
  return sorted(os.listdir(os.path.join(stage_dir, "checkpoints")))


def test_two_processes_match_one_and_resume_from_one_shared_checkpoint(tmp_path):
  """Two processes x 2 devices: fsdp 1 (data parallel), 2 (split within a process) and 4 (split
  across the processes) give one process's parameters; a run SIGKILLed after its step-2
  checkpoint, with an unreadable step 3 beside it, resumes in fresh processes to the
  uninterrupted run's parameters."""
  out = tmp_path / "out"
  out.mkdir()
  stage = {k: str(tmp_path / k) for k in ("fsdp1", "fsdp2", "fsdp4", "killed")}
  runs = [{"name": f"fsdp{f}", "fsdp": f, "stage_dir": stage[f"fsdp{f}"], "num_steps": NUM_STEPS}
          for f in (1, 2, 4)]
  # last: killed (SIGKILL, both processes) after step 3, i.e. after the checkpoint of step 2
  runs.append({"name": "killed", "fsdp": 4, "stage_dir": stage["killed"], "num_steps": NUM_STEPS,
               "kill_at": KILL_AT})
  first = _launch(out, runs)
  for pid, (rc, err) in enumerate(first):
    assert rc != 0 and os.path.exists(out / f"killed.{pid}.killed"), f"process {pid} was not killed at step " \
        f"{KILL_AT} (rc {rc}):\n{err}"
  assert _checkpoint_dirs(stage["killed"]) == ["2"]

  # a later checkpoint that does not restore (a copy of step 2 as step 3, truncated): every
  # process falls back to step 2, and it is moved aside once
  ckpts = os.path.join(stage["killed"], "checkpoints")
  shutil.copytree(os.path.join(ckpts, "2"), os.path.join(ckpts, "3"))
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(ckpts, "3")) for f in fs]
  with open(max(files, key=os.path.getsize), "r+b") as f:
    f.truncate(10)

  # fresh processes resume the killed run from its one readable checkpoint
  second = _launch(out, [{"name": "resumed", "fsdp": 4, "stage_dir": stage["killed"], "num_steps": NUM_STEPS}])
  for pid, (rc, err) in enumerate(second):
    assert rc == 0, f"process {pid} (resume) failed, rc {rc}:\n{err}"

  ref = _single_process_reference(tmp_path)
  scale = max(float(np.max(np.abs(a))) for a in ref)
  for name in ("fsdp1", "fsdp2", "fsdp4", "resumed"):
    got = [_result(out, name, pid) for pid in range(2)]
    for pid, (params, info) in enumerate(got):
      assert info["step"] == NUM_STEPS
      assert len(params) == len(ref)
      for a, b in zip(ref, params):
        assert a.shape == b.shape
        diff = float(np.max(np.abs(a - b)))
        assert diff <= 1e-5 * max(1.0, scale), f"{name}, process {pid}: differs from one process by {diff}"
    for a, b in zip(got[0][0], got[1][0]):          # both processes return the same host state
      np.testing.assert_array_equal(a, b)
    # fsdp really splits the kernels (for fsdp 4, across the two processes)
    assert (got[0][1]["sharded"] > 0) == (name != "fsdp1"), (name, got[0][1])

  # every process restored step 2 (the first step it ran ended at 3), to the uninterrupted result
  for pid in range(2):
    params, info = _result(out, "resumed", pid)
    assert info["first_done"] == CKPT_EVERY + 1, info
    for a, b in zip(_result(out, "fsdp4", pid)[0], params):
      np.testing.assert_array_equal(a, b)
  assert os.listdir(os.path.join(stage["killed"], "corrupt_checkpoints")) == ["3"]
  # one checkpoint per step for both processes, written by process 0 alone
  for d in (stage["fsdp1"], stage["fsdp2"], stage["fsdp4"], stage["killed"]):
    assert _checkpoint_dirs(d) == ["2", "4"], (d, _checkpoint_dirs(d))
    names = [n for _, ds, fs in os.walk(os.path.join(d, "checkpoints")) for n in ds + fs]
    assert "ocdbt.process_0" in names and not [n for n in names if "process_1" in n], names
  assert checkpoints.read_json(out / "shared.json") == {"i": 99}
  for i in range(20):          # each published whole once; no process's temporary left behind
    assert os.listdir(out / f"dir{i}") == ["f"] and (out / f"dir{i}" / "f").read_text() == str(i)
  assert not [n for n in os.listdir(out) if ".tmp" in n]


if __name__ == "__main__":
  try:
    _worker(sys.argv[1], json.loads(sys.argv[2]))
  except BaseException:  # pylint: disable=broad-except
    # exit at once: a normal exit would wait in jax.distributed's shutdown barrier for the peer,
    # itself waiting on this process in a collective
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(1)
