r"""Runs an experiment: `python -m unlearn_jax.main --config=configs/sgu_mnist.py --workdir=W`.

Rerunning the same command skips finished stages and resumes an interrupted
one.  A bad input ends with one line `error: <field>=<value> ...`, exit status
2, and the workdir untouched.  On a TPU pod / multi-host GPU, add
`--multihost` (calls `jax.distributed.initialize()` before anything else).
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/sgu_mnist.py:cpu", "Experiment config file (optionally `path.py:arg`).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default: workdir/<config name>).")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (TPU pods, GPU clusters).")


def default_workdir(config_arg: str) -> str:
  base = os.path.splitext(os.path.basename(config_arg.split(":")[0]))[0]
  suffix = config_arg.split(":")[1] if ":" in config_arg else ""
  return os.path.join("workdir", base + (f"_{suffix}" if suffix else ""))


def main(argv):
  del argv
  import jax
  from unlearn_jax import pipeline
  from unlearn_jax.errors import UserError
  import logging as std_logging
  for name in ("absl", "orbax", "jax._src.xla_bridge"):
    std_logging.getLogger(name).setLevel(std_logging.WARNING if name != "absl" else std_logging.INFO)
  logging.get_absl_logger().addFilter(lambda r: not r.pathname.rsplit("/", 1)[-1].startswith(
      ("array_metadata_store", "async_checkpointer", "checkpoint_manager", "xla_bridge")))
  if _MULTIHOST.value:
    jax.distributed.initialize()
  logging.info("devices: %s (process %d of %d)", jax.devices(), jax.process_index(), jax.process_count())
  workdir = _WORKDIR.value or default_workdir(flags.FLAGS["config"].config_filename)
  try:
    pipeline.run(_CONFIG.value, workdir)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except pipeline.training.TrainingDiverged as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"results: {os.path.join(workdir, 'results.json')}  report: {os.path.join(workdir, 'report.md')}")


if __name__ == "__main__":
  app.run(main)
