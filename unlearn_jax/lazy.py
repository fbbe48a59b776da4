"""Heavy third-party modules, declared at the top of the module that uses them, loaded on first use.

    tfds = lazy.load("tensorflow_datasets")          # at module level, beside the other imports
    ...
    builder = tfds.builder(name)                     # the import happens here, once

TensorFlow (through `tensorflow_datasets`' fallback, ~20 s; the `tf` extra), diffusers and
transformers (~10 s), scipy's integrators, scikit-learn, mlxtend, torch and nudenet are
needed by some runs only.  Importing them when `unlearn_jax` is imported would make every
command pay for them: a bad flag's one-line error, `--help`, the unit tests, a library
user who only wants a loss.  Instead each module names what it uses at its top with
`load(...)` (so a module's dependencies are read in one place, and no import statement sits
inside a function), and the module object is imported on its first attribute access.

`load(name, extra=...)` names the optional extra that provides a module outside
`install_requires` (`torch`: "convert", `nudenet`: "nudity", diffusers / transformers: "sd"); using it without the extra
raises one `ImportError` line that says what to install.
"""
from __future__ import annotations

import importlib
import types

#: name -> the proxy `load` returned (one per module name).
_PROXIES: dict = {}


class _Lazy(types.ModuleType):
  """A stand-in for module `name`: the real module is imported on first attribute access."""

  def __init__(self, name: str, extra: str = ""):
    super().__init__(name)
    self.__dict__["_lazy_name"] = name
    self.__dict__["_lazy_extra"] = extra
    self.__dict__["_lazy_module"] = None

  def _lazy_load(self) -> types.ModuleType:
    module = self.__dict__["_lazy_module"]
    if module is None:
      name, extra = self.__dict__["_lazy_name"], self.__dict__["_lazy_extra"]
      try:
        module = importlib.import_module(name)
      except ImportError as e:
        if not extra:
          raise
        raise ImportError(f"{name} is needed here and is not installed: pip install -e \".[{extra}]\" "
                          f"({type(e).__name__}: {e})") from e
      self.__dict__["_lazy_module"] = module
    return module

  def __getattr__(self, attr: str):
    return getattr(self._lazy_load(), attr)

  def __dir__(self):
    return dir(self._lazy_load())

  def __repr__(self) -> str:
    state = "loaded" if self.__dict__["_lazy_module"] is not None else "not loaded yet"
    return f"<lazy module {self.__dict__['_lazy_name']!r} ({state})>"


def load(name: str, *, extra: str = "") -> types.ModuleType:
  """Module `name` (dotted names work: "transformers.models.clip.tokenization_clip"),
  imported when one of its attributes is first read; `extra`: the optional extra to name
  if it is missing."""
  proxy = _PROXIES.get(name)
  if proxy is None:
    proxy = _PROXIES[name] = _Lazy(name, extra)
  return proxy


def is_loaded(module) -> bool:
  """Whether a `load` proxy has imported its module (a real module: True)."""
  return not isinstance(module, _Lazy) or module.__dict__["_lazy_module"] is not None


def require(module) -> types.ModuleType:
  """The real module behind a `load` proxy, imported now (ImportError if it cannot be)."""
  return module._lazy_load() if isinstance(module, _Lazy) else module
