r"""Runs an experiment: `python -m unlearn_jax.main --config=configs/sgu_mnist.py --workdir=W`.

Rerunning the same command skips finished stages and resumes an interrupted
one.  A bad input ends with one line `error: <field>=<value> ...`, exit status
2, and the workdir untouched.  On a TPU pod / multi-host GPU, add
`--multihost` (calls `jax.distributed.initialize()` before anything else).
"""
import difflib
import importlib.util
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import ml_collections  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from unlearn_jax import console  # noqa: E402
from unlearn_jax import pipeline  # noqa: E402
from unlearn_jax import training  # noqa: E402
from unlearn_jax.errors import UserError  # noqa: E402

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def config_dirs() -> list:
  """Where a relative `configs/<name>.py` is looked up when the working directory has none:
  the source checkout's configs/ (a `pip install -e .`), then the configs shipped inside
  the installed package (`unlearn_jax.configs`, setup.py's package_dir)."""
  dirs = [os.path.join(os.path.dirname(_PACKAGE_DIR), "configs"), os.path.join(_PACKAGE_DIR, "configs")]
  spec = importlib.util.find_spec("unlearn_jax.configs")
  dirs += list(spec.submodule_search_locations or []) if spec is not None else []
  return [d for i, d in enumerate(dirs) if os.path.isdir(d) and d not in dirs[:i]]


def resolve_config(config_arg: str) -> str:
  """`config_arg` (path.py[:arg]) with a relative `configs/x.py` or `x.py` that does not exist
  here replaced by the library's own configs/x.py, so the README's commands and the default
  config work from any directory; anything else unchanged."""
  path, sep, rest = config_arg.partition(":")
  if os.path.isfile(path) or os.path.isabs(path) or os.path.dirname(os.path.normpath(path)) not in ("", "configs"):
    return config_arg
  for d in config_dirs():
    candidate = os.path.join(d, os.path.basename(path))
    if os.path.isfile(candidate):
      return candidate + sep + rest
  return config_arg


def _resolve_argv(argv):
  out, i = [], 0
  while i < len(argv):
    a = argv[i]
    if a == "--config" and i + 1 < len(argv):
      out += [a, resolve_config(argv[i + 1])]
      i += 2
      continue
    out.append("--config=" + resolve_config(a.split("=", 1)[1]) if a.startswith("--config=") else a)
    i += 1
  return out


_CONFIG_DEFAULT = resolve_config("configs/sgu_mnist.py:cpu")


def _define_config():
  # Without --config on the command line, ml_collections parses the default and the
  # overrides of sys.argv here, at definition: a mistake there is reported like any other.
  sys.argv[1:] = _resolve_argv(sys.argv)[1:]
  try:
    return config_flags.DEFINE_config_file(
        "config", _CONFIG_DEFAULT, "Experiment config file (optionally `path.py:arg`).", lock_config=True)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError, OSError) as e:
    print(f"error: {flag_error(sys.argv, e)}", file=sys.stderr)
    sys.exit(2)


_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default: workdir/<config name>).")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show every library's INFO lines (orbax, jax, ...), not only ours.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (TPU pods, GPU clusters).")


def default_workdir(config_arg: str) -> str:
  base = os.path.splitext(os.path.basename(config_arg.split(":")[0]))[0]
  suffix = config_arg.split(":")[1] if ":" in config_arg else ""
  return os.path.join("workdir", base + (f"_{suffix}" if suffix else ""))


def _config_arg(argv) -> str:
  """The --config value of `argv` (the last one), else the flag's default."""
  arg = _CONFIG_DEFAULT
  for i, a in enumerate(argv[1:], 1):
    if a == "--config" and i + 1 < len(argv):
      arg = argv[i + 1]
    elif a.startswith("--config="):
      arg = a.split("=", 1)[1]
  return arg


def _load_config(config_arg: str):
  """`get_config(arg)` of a config file, as ml_collections' flag loads it."""
  path, _, arg = config_arg.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(path)
  spec = importlib.util.spec_from_file_location("config_file", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*([arg] if ":" in config_arg else []))


def _last_line(e: BaseException) -> str:
  lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()]
  return lines[-1] if lines else type(e).__name__


def flag_error(argv, e: BaseException):
  """The `UserError` behind a failed flag parse: a config file or argument that does not load,
  an override naming no field of the config (with the fields there are), a value that does
  not parse as the field's type; otherwise absl's own one-line message (as a str)."""
  config_arg = _config_arg(argv)
  try:
    config = _load_config(config_arg)
  except FileNotFoundError:
    return UserError("--config", config_arg, "expected a config file (path.py or path.py:arg); no such file")
  except Exception as err:   # noqa: BLE001 -- a config file's own error, e.g. an unknown argument
    return UserError("--config", config_arg, _last_line(err))
  for a in argv[1:]:
    m = re.match(r"^--?(?:no)?config\.([^=]+)(?:=(.*))?$", a)
    if not m:
      continue
    path, value = m.group(1), m.group(2)
    node, parts = config, path.split(".")
    for i, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict):
        whole = "config." + ".".join(parts[:i])
        return UserError(f"config.{path}", value, f"{whole} is a {type(node).__name__}, not a section: "
                         f"expected --{whole}=<value>")
      if part not in node:
        parent = "config" + "".join("." + p for p in parts[:i])
        keys = sorted(node.keys())
        close = difflib.get_close_matches(part, keys, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return UserError(f"config.{path}", value, f"expected a field of {parent}: {', '.join(keys)}{hint}")
      node = node[part]
    if value is not None and f"config.{path}=" in str(e):
      kind = type(node).__name__ if node is not None else "the field's type"
      return UserError(f"config.{path}", value, f"expected a value of type {kind} ({_last_line(e)})")
  return _last_line(e)


def parse_flags(argv):
  """absl's flag parsing, with every mistake in the flags as one `error:` line and exit status 2."""
  argv = _resolve_argv(argv)
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError, OSError) as e:
    print(f"error: {flag_error(argv, e)}", file=sys.stderr)
    sys.exit(2)


_CONFIG = _define_config()


def initialize_distributed() -> None:
  """`--multihost`: joins the job's processes.  On Cloud TPU, Slurm, Open MPI and Kubernetes
  jax finds every argument itself; elsewhere (GPU nodes started by hand) set
  JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID --
  jax 0.10 reads only the first, the other two are read here."""
  known = {"num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}
  jax.distributed.initialize(**{k: int(os.environ[v]) for k, v in known.items() if os.environ.get(v)})


def _exit_now(status: int) -> None:
  """Exits at once after a one-line error: nothing is being written (every check runs before a
  write, and a failed restore writes nothing), and skipping the interpreter's teardown keeps
  orbax's async threads (and a multi-process run's shutdown barrier) from printing or waiting
  after the error line."""
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)


def main(argv):
  console.setup(verbose=_VERBOSE.value)
  if _MULTIHOST.value:
    initialize_distributed()
  logging.info("devices: %s (process %d of %d)", jax.devices(), jax.process_index(), jax.process_count())
  workdir = _WORKDIR.value or default_workdir(flags.FLAGS["config"].config_filename)
  try:
    config = _CONFIG.value
    config.keys()            # a config file that does not load raises on first access
  except OSError as e:
    print(f"error: {flag_error(sys.argv, e)}", file=sys.stderr)
    sys.exit(2)
  try:
    pipeline.run(config, workdir)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    _exit_now(2)
  except training.TrainingDiverged as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  if jax.process_index() == 0:
    print(summary(workdir))


def summary(workdir: str) -> str:
  """The end of a run's output: report.md's main table and the absolute paths of its outputs."""
  report = os.path.abspath(os.path.join(workdir, "report.md"))
  table = ""
  if os.path.exists(report):
    with open(report) as f:
      table = console.first_table(f.read())
  paths = f"results: {os.path.abspath(os.path.join(workdir, 'results.json'))}\nreport:  {report}"
  return f"\n{table}\n\n{paths}" if table else paths


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
