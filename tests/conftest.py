import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# No persistent XLA compilation cache here: with jax 0.10.2 on CPU, reading an entry back
# in this session segfaulted (jax/_src/compilation_cache.py get_executable_and_time) once the
# suite grew; every test compiles in memory instead.
