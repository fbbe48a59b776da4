"""The stage kinds: one module each, with `run(exp, name, st, workdir, hooks)`, and the kinds
the config builders and validation know are exactly the modules the engine dispatches to."""
import inspect

import pytest

from unlearn_jax import stages, validation
from unlearn_jax.errors import UserError
from test_configs import CONFIGS, load_config


@pytest.mark.parametrize("kind", sorted(stages.KINDS))
def test_each_kind_has_a_run(kind):
  params = list(inspect.signature(stages.KINDS[kind].run).parameters)
  assert params[:5] == ["exp", "name", "st", "workdir", "hooks"], (kind, params)


def test_unknown_kind_is_a_user_error_naming_the_field():
  c = load_config("dimum_digits.py")
  c.stages.pretrained.kind = "pretrain"
  with pytest.raises(UserError) as e:
    validation.check_config(c)
  assert e.value.field == "config.stages.pretrained.kind"
  for kind in stages.KINDS:
    assert kind in str(e.value)


def test_every_config_uses_known_kinds_only():
  for name in CONFIGS:
    c = load_config(name)
    assert {c.stages[n].kind for n in c.stage_order} <= set(stages.KINDS), name
  assert set(stages.MODEL_KINDS) <= set(stages.KINDS) and set(stages.CONDITIONAL_KINDS) <= set(stages.KINDS)
