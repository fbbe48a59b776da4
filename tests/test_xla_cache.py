"""`xla_cache.enable`: the persistent compilation cache on by default, in the configured
directory, off on request, and never replacing a directory jax already has.  Each case runs in
a fresh Python (jax reads its cache directory once per process)."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = """
import jax, jax.numpy as jnp
from unlearn_jax import xla_cache
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
print("DIR", xla_cache.enable())
print("SUM", float(jax.jit(lambda x: jnp.sin(x) * 2.0 + x.sum())(jnp.arange(5.0)).sum()))
"""


def _probe(env_extra, tmp_path):
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "UNLEARN_JAX_XLA_CACHE")}
  env.update(JAX_PLATFORMS="cpu", XDG_CACHE_HOME=str(tmp_path / "xdg"), **env_extra)
  out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line[:4] in ("DIR ", "SUM "))
  return lines["DIR"], float(lines["SUM"])


def _entries(path):
  return sorted(n for n in os.listdir(path) if not n.startswith(".")) if os.path.isdir(path) else []


def test_the_cache_is_on_by_default_configurable_and_can_be_turned_off(tmp_path):
  default = str(tmp_path / "xdg" / "unlearn_jax" / "xla")
  got, total = _probe({}, tmp_path)                                   # the user's cache directory
  assert got == default and _entries(default)
  mine = str(tmp_path / "mine")
  assert _probe({"UNLEARN_JAX_XLA_CACHE": mine}, tmp_path) == (mine, total) and _entries(mine)
  before = _entries(mine)
  assert _probe({"UNLEARN_JAX_XLA_CACHE": mine}, tmp_path)[0] == mine
  assert _entries(mine) == before                                    # a rerun reads, writes nothing new
  assert _probe({"UNLEARN_JAX_XLA_CACHE": "off"}, tmp_path)[0] == "None"
  theirs = str(tmp_path / "theirs")
  assert _probe({"JAX_COMPILATION_CACHE_DIR": theirs, "UNLEARN_JAX_XLA_CACHE": mine}, tmp_path)[0] == theirs
