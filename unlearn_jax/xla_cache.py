"""jax's persistent compilation cache, on by default.

A compiled step, sampler or NLL is written to the cache, keyed by its program, and read back
the next time the same program is compiled: a rerun or a resumed run, and the stages of one run
that compile the same program (every attack stage of a robustness config trains the same
network with the same step) skip XLA.

    xla_cache.enable()            # pipeline.run calls it before anything is compiled

The directory: $UNLEARN_JAX_XLA_CACHE, else $XDG_CACHE_HOME/unlearn_jax/xla (~/.cache/...);
UNLEARN_JAX_XLA_CACHE=off turns it off.  A directory jax already has (JAX_COMPILATION_CACHE_DIR,
or `jax.config.update("jax_compilation_cache_dir", ...)` before the first run, as tests/run.sh
does) is kept.  Programs that compile in under `jax_persistent_cache_min_compile_time_secs`
(jax's default, 1 s) are not written.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import jax

ENV = "UNLEARN_JAX_XLA_CACHE"
OFF = "off"
_announced = set()


def default_dir() -> str:
  """$XDG_CACHE_HOME/unlearn_jax/xla (default ~/.cache/unlearn_jax/xla)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "unlearn_jax", "xla")


def enable(path: Optional[str] = None) -> Optional[str]:
  """Turns jax's persistent compilation cache on in `path` (default: $UNLEARN_JAX_XLA_CACHE,
  else `default_dir`) unless jax already has a directory or the variable says "off"; returns
  the directory in use (None: off).  The first call with each directory logs it."""
  current = jax.config.jax_compilation_cache_dir
  wanted = path or os.environ.get(ENV) or default_dir()
  if current:
    wanted = current
  elif wanted.lower() == OFF:
    return None
  else:
    os.makedirs(wanted, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", wanted)
  if wanted not in _announced:
    _announced.add(wanted)
    logging.info("XLA compilation cache: %s (%s=off turns it off)", wanted, ENV)
  return wanted
