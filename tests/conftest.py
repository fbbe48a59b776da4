import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# libtpu (the [tpu] extra, for `unlearn_jax.aot`) would otherwise probe for a TPU at start-up;
# deviceless TPU compilation works with the CPU platform.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# libtpu lets one process at a time load it (/tmp/libtpu_lockfile); the tests only describe
# topologies and compile (no TPU is opened), so a second process (a test job beside
# `python -m unlearn_jax.aot`) may load it too instead of failing.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# tests/run.sh shares one fresh persistent XLA cache across its per-file processes; a
# direct `pytest` call gets a private one.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="unlearn_jax_xla_"))
