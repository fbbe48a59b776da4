"""unlearn_jax.settings: the one place the config dict becomes typed dataclasses."""
import ast
import dataclasses
import glob
import importlib.util
import os
import typing

import ml_collections
import numpy as np
import pytest

from unlearn_jax import config_lib
from unlearn_jax import settings
from unlearn_jax.errors import UserError
from unlearn_jax.unlearning import methods

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _configs():
  out = []
  for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for arg in (None, "cpu"):
      out.append((f"{os.path.basename(path)}:{arg}", mod.get_config(arg) if arg else mod.get_config()))
  return out


def _plain(x):
  if isinstance(x, dict):
    return {k: _plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_plain(v) for v in x]
  return x


@pytest.mark.parametrize("name,config", _configs(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_config_types_with_its_values_unchanged(name, config):
  s = settings.of(config)
  typed = settings.as_dict(s)
  raw = _plain(config.to_dict())

  def same(t, r, path):            # every field the config sets has its value in the Settings
    if isinstance(r, dict):
      for key, value in r.items():
        same(t[key], value, f"{path}.{key}")
    else:
      assert _plain(t) == r, (name, path)

  same(typed, raw, "config")
  assert settings.of(s) is s
  back = settings.to_config_dict(s)                 # what pipeline.run takes, and the same Settings again
  assert isinstance(back, ml_collections.ConfigDict) and settings.of(back) == s
  if s.sd is None:
    assert "sd" not in raw
  assert all(isinstance(st, settings.Stage) for st in s.stages.values())


def test_types_follow_the_fields():
  assert isinstance(settings.section(settings.Optim, {"lr": 1}, "config.optim").lr, float)   # a plain dict's int
  c = config_lib.base()
  c.optim.lr = 1                       # an int where a float is declared
  c.data.forget_classes = [1, 2]       # a list where a tuple is declared
  c.stages = ml_collections.ConfigDict({"a": config_lib.stage("train", lr=3e-4, models=["x"])})
  c.stage_order = ("a",)
  s = settings.of(c)
  assert isinstance(s.optim.lr, float) and s.optim.lr == 1.0
  assert s.data.forget_classes == (1, 2)
  assert s.stages["a"].lr == 3e-4 and s.stages["a"].ema_rate is None and s.stages["a"].models == ("x",)
  assert s.data.tfds_data_dir is None
  with pytest.raises(dataclasses.FrozenInstanceError):
    s.optim.lr = 0.5


def _other(tp, value):
  """A value of type `tp` different from `value` (each field's default)."""
  if dataclasses.is_dataclass(tp):
    return {f.name: _other(typing.get_type_hints(tp)[f.name], getattr(value, f.name)) for f in dataclasses.fields(tp)}
  if typing.get_origin(tp) is typing.Union:
    inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
    return _other(inner, value) if value is not None else {float: 0.25, str: "other", int: 3}[inner]
  if typing.get_origin(tp) is tuple:
    inner = typing.get_args(tp)[0]
    return tuple(value) + ({int: 7, str: "other"}[inner],)
  return {bool: lambda v: not v, int: lambda v: v + 3, float: lambda v: v * 2 + 0.5, str: lambda v: v + "_x"}[tp](value)


@pytest.mark.parametrize("name", sorted(settings.SECTIONS) + ["sd"])
def test_every_field_of_every_section_reaches_the_settings(name):
  """Each field set away from its default arrives, converted (a dropped or renamed field fails)."""
  cls = settings.SD if name == "sd" else settings.SECTIONS[name]
  values = _other(cls, cls())
  typed = settings.section(cls, values, f"config.{name}")
  assert _plain(settings.as_dict(typed)) == _plain(values)
  assert typed != cls()


def test_an_unknown_field_names_itself():
  c = config_lib.base()
  c.salun.betta = 1.0
  with pytest.raises(UserError, match=r"config\.salun\.betta=1\.0 .*not a field of config\.salun"):
    settings.of(c)
  c = config_lib.base()
  c.stages = ml_collections.ConfigDict({"u": dict(kind="unlearn", stepz=3)})
  with pytest.raises(UserError, match=r"config\.stages\.u\.stepz"):
    settings.of(c)
  c = config_lib.base()
  c.extra_section = ml_collections.ConfigDict(dict(a=1))
  with pytest.raises(UserError, match=r"config\.extra_section"):
    settings.of(c)
  c = config_lib.base()
  c.stages = ml_collections.ConfigDict({"u": dict(steps=3)})
  with pytest.raises(UserError, match=r"config\.stages\.u\.kind"):
    settings.of(c)


def test_method_sections_come_from_the_method_modules():
  """config_lib.base()'s block of each method is its module's Config defaults, and the
  typed section is that dataclass (a new method declares its block once)."""
  c = config_lib.base()
  s = settings.of(c)
  assert set(methods.SECTIONS) == {sp.section for sp in methods.SPECS.values() if sp.section}
  for section, cls in methods.SECTIONS.items():
    assert dict(c[section]) == dataclasses.asdict(cls())
    assert isinstance(getattr(s, section), cls)
  c.salun.beta = 0.25
  assert settings.of(c).salun.beta == 0.25


def test_replace_converts_and_leaves_the_original():
  s = settings.of(config_lib.base())
  t = settings.replace(s, "eval.nll.num_examples", 7)
  assert t.eval.nll.num_examples == 7 and s.eval.nll.num_examples == 1000
  assert settings.replace(s, "optim.lr", 2).optim.lr == 2.0
  assert settings.replace(s, "data.forget_classes", [4]).data.forget_classes == (4,)


def test_methods_take_typed_settings():
  with pytest.raises(TypeError, match="settings.of"):
    methods.build("ga", "", config_lib.ddpm_base(), alt=np.arange(10), steps=1, forget=(3,), num_classes=10)
  objectives, _, _ = methods.build("ga", "", settings.of(config_lib.ddpm_base()), alt=np.arange(10), steps=1,
                                   forget=(3,), num_classes=10)
  assert set(objectives) == {"retain", "forget"}


#: the modules that may read the config dict: the driver, the checks on user input, the
#: config builders and the conversion (plus the tasks' `validate` / `prepare`, called by them).
DICT_READERS = {"main.py", "pipeline.py", "validation.py", "config_lib.py", "settings.py"}


def test_only_the_driver_imports_ml_collections():
  pkg = os.path.join(ROOT, "unlearn_jax")
  readers = set()
  for path in glob.glob(os.path.join(pkg, "**", "*.py"), recursive=True):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
      names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
          [node.module or ""] if isinstance(node, ast.ImportFrom) else []
      if any(n.split(".")[0] == "ml_collections" for n in names):
        readers.add(os.path.relpath(path, pkg))
  assert readers <= DICT_READERS, sorted(readers - DICT_READERS)
