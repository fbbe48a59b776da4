import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# tests/run.sh shares one fresh persistent XLA cache across its per-file processes; a
# direct `pytest` call gets a private one.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="unlearn_jax_xla_"))
