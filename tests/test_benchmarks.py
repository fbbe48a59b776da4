"""benchmarks/accelerator.sh --smoke (every part at tiny size, one JSON) and the pieces of
benchmarks/train_step.py it relies on (mixed precision, the MFU peaks)."""
import importlib.util
import json
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("train_step_bench", os.path.join(ROOT, "benchmarks", "train_step.py"))
train_step_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_step_bench)


def test_peak_flops_of_known_devices_and_none_elsewhere():
  peak = train_step_bench.peak_tflops
  assert peak("NVIDIA H100 80GB HBM3", "bfloat16") == 989.4
  assert peak("NVIDIA H100 PCIe", "float32") == 378.0          # the PCIe card before the generic H100
  assert peak("TPU v5 lite", "bfloat16") == 197.0
  assert peak("cpu", "float32") is None and peak("Some GPU", "bfloat16") is None


def test_mixed_precision_computes_in_bf16_and_returns_f32():
  seen = {}

  def apply(v, x, t, l=None, train=False, rngs=None):
    seen.update(w=v["w"].dtype, x=x.dtype, steps=t.dtype)
    return x * v["w"]

  run = train_step_bench.mixed_precision(apply, jnp.bfloat16)
  y = run({"w": jnp.full((2,), 1.5, jnp.float32)}, jnp.ones((2,), jnp.float32), jnp.zeros((2,), jnp.float32))
  assert y.dtype == jnp.float32 and seen == {"w": jnp.bfloat16, "x": jnp.bfloat16, "steps": jnp.float32}
  np.testing.assert_array_equal(y, [1.5, 1.5])
  assert train_step_bench.mixed_precision(apply, jnp.float32) is apply


def test_unknown_argument_is_one_line_and_status_2(tmp_path):
  p = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "accelerator.sh"), "--fast"], capture_output=True,
                     text=True, timeout=60, cwd=str(tmp_path))
  assert p.returncode == 2 and "'--fast'" in p.stderr and len(p.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  out = tmp_path_factory.mktemp("accel") / "accelerator.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("OUT", None)
  p = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "accelerator.sh"), "--smoke", f"--out={out}"],
                     capture_output=True, text=True, timeout=600, env=env)
  return p, json.loads(out.read_text()) if out.exists() else None


def test_smoke_runs_every_part_and_writes_one_json(smoke):
  p, result = smoke
  assert p.returncode == 0, p.stderr[-3000:]
  assert result["smoke"] and result["device"].startswith("cpu")
  parts = result["parts"]
  expected = {"nll", "train", "sd_remat_off", "sd_remat_on"} | ({"torch"} if importlib.util.find_spec("torch") else set())
  assert set(parts) == expected
  assert all(e["status"] == "ok" and e["result"] is not None for e in parts.values()), parts
  assert json.loads(p.stdout.strip().splitlines()[-1])["parts"] == {n: "ok" for n in expected}


def test_smoke_parts_measure_what_they_say(smoke):
  parts = smoke[1]["parts"]
  train = parts["train"]["result"]["rows"]
  assert {r["dtype"] for r in train} == {"float32", "bfloat16"}
  assert all(r["step_s"] > 0 and r["gflop_per_step"] > 0 and "mfu" in r for r in train)
  assert parts["nll"]["result"]["rows"]
  assert [r["method"] for r in parts["sd_remat_off"]["result"]["rows"]] == ["finetune"]
  assert parts["sd_remat_on"]["result"]["remat"] is True and parts["sd_remat_off"]["result"]["remat"] is False
  assert all(r.get("step_s", 0) > 0 for n in ("sd_remat_off", "sd_remat_on") for r in parts[n]["result"]["rows"])
