"""The package's import structure: no import inside a function, no cycle, heavy modules lazy."""
import ast
import glob
import os
import subprocess
import sys

import pytest

from unlearn_jax import lazy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "unlearn_jax")
#: what `import unlearn_jax.pipeline, unlearn_jax.main` must not import (lazy.load'ed where used).
HEAVY = ("tensorflow", "tensorflow_datasets", "clu.metric_writers", "diffusers", "transformers", "torch",
         "nudenet", "onnxruntime", "mlxtend", "sklearn")


def _modules():
  for path in sorted(glob.glob(os.path.join(PKG, "**", "*.py"), recursive=True)):
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    yield (rel[:-len(".__init__")] if rel.endswith(".__init__") else rel), path


def test_no_import_inside_a_function():
  found = []
  for name, path in _modules():
    for fn in ast.walk(ast.parse(open(path).read())):
      if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
        found += [f"{name}.{fn.name}: {ast.unparse(n)}" for n in ast.walk(fn)
                  if isinstance(n, (ast.Import, ast.ImportFrom))]
  assert not found, found


def _graph():
  names = dict(_modules())
  graph = {}
  for name, path in names.items():
    deps = set()
    for node in ast.parse(open(path).read()).body:
      if isinstance(node, ast.Import):
        deps |= {a.name for a in node.names}
      elif isinstance(node, ast.ImportFrom) and node.module:   # a submodule, else the module's names
        subs = {f"{node.module}.{a.name}" for a in node.names} & set(names)
        deps |= subs or {node.module}
    graph[name] = {d for d in deps if d in names and d != name}
  return graph


def _cycle(graph):
  state, stack = {}, []

  def visit(n):
    state[n] = 1
    stack.append(n)
    for d in sorted(graph[n]):
      if state.get(d) == 1:
        return stack[stack.index(d):] + [d]
      if d not in state:
        c = visit(d)
        if c:
          return c
    state[n] = 2
    stack.pop()
    return None

  for n in sorted(graph):
    if n not in state:
      c = visit(n)
      if c:
        return c
  return None


def test_no_import_cycle():
  graph = _graph()
  assert "unlearn_jax.settings" in graph["unlearn_jax.pipeline"]
  assert _cycle(graph) is None, " -> ".join(_cycle(graph))
  bad = dict(graph, **{"unlearn_jax.settings": graph["unlearn_jax.settings"] | {"unlearn_jax.pipeline"}})
  assert _cycle(bad) is not None                          # the check can fail


def test_importing_the_driver_loads_no_heavy_module():
  code = ("import sys, unlearn_jax.pipeline, unlearn_jax.main, unlearn_jax.evaluation; "
          f"print([m for m in {HEAVY!r} if m in sys.modules])")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
  out = subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT, capture_output=True, text=True)
  assert out.stdout.strip() == "[]", out.stdout


def test_lazy_module_loads_on_first_attribute():
  mod = lazy.load("json.decoder")
  assert mod is lazy.load("json.decoder")
  assert mod.JSONDecodeError.__name__ == "JSONDecodeError" and lazy.is_loaded(mod)
  missing = lazy.load("unlearn_jax_no_such_module", extra="nudity")
  assert not lazy.is_loaded(missing)
  with pytest.raises(ImportError, match=r'pip install -e "\.\[nudity\]"'):
    missing.anything
  with pytest.raises(ImportError):
    lazy.require(lazy.load("unlearn_jax_no_such_module_either"))
