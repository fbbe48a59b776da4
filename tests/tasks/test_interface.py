"""The task interface (`unlearn_jax.tasks`): every task module has every hook with the same
parameters, the config picks the task, and the engine reaches the family only through the
hooks (a recording task wrapped around `classes` sees each hook called)."""
import inspect
import types

import pytest

from unlearn_jax import config_lib, pipeline, tasks
from unlearn_jax.tasks import classes, prompts, unlearncanvas
from test_configs import load_config, shrink

HOOKS = {  # hook -> its parameters (tasks/__init__.py's list)
    "validate": ("config",), "prepare": ("config", "workdir"), "build": ("config", "workdir"),
    "check": ("exp",), "save": ("exp",), "named_params": ("exp", "name"), "trainable": ("exp", "st"),
    "train_classifiers": ("exp", "name", "workdir", "fit"), "classifier_params": ("exp", "workdir"),
    "forget_rates": ("exp", "params", "clf_params|clf", "n", "rng"),
    "condition_attack_error": ("config", "attack"),
    "attack_measures": ("exp", "params", "clf_params|clf", "n", "rng"),
    "evaluate": ("exp", "workdir", "model", "params", "clf_params|clf", "rng", "out_dir"),
    "finalize": ("exp", "results", "workdir"), "report_tables": ("results", "workdir"),
}
TASKS = (classes, unlearncanvas, prompts)


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.NAME)
def test_every_task_has_every_hook(task):
  assert isinstance(task.NAME, str) and isinstance(task.NAMED_MODELS, tuple)
  for hook, params in HOOKS.items():
    fn = getattr(task, hook)
    got = [p for p in inspect.signature(fn).parameters.values() if p.default is inspect.Parameter.empty
           or p.name in ("workdir", "st")]
    names = [p.name for p in got][:len(params)]
    assert len(names) == len(params), (task.NAME, hook, names)
    for want, have in zip(params, names):
      assert have in want.split("|"), (task.NAME, hook, names)


def test_the_config_picks_the_task():
  assert tasks.get(config_lib.unlearncanvas_base(cpu=True)) is unlearncanvas
  assert tasks.get(config_lib.digits_ddpm(cpu=True)) is classes
  assert tasks.get(config_lib.prompts_defaults(config_lib.ddpm_base())) is prompts
  assert tasks.get(config_lib.base()) is classes
  assert set(tasks.BY_DATA.values()) | {classes} == set(TASKS)


def test_the_engine_reaches_the_family_only_through_the_hooks(tmp_path, monkeypatch):
  calls = []
  recording = types.ModuleType("recording")
  for name in ("NAME", "NAMED_MODELS"):
    setattr(recording, name, getattr(classes, name))
  for hook in HOOKS:
    real = getattr(classes, hook)
    setattr(recording, hook, lambda *a, _h=hook, _f=real, **k: calls.append(_h) or _f(*a, **k))
  monkeypatch.setitem(tasks.BY_DATA, "toy_gmm", recording)
  c = shrink(load_config("sgu_toy.py", None))
  exp = pipeline.run(c, str(tmp_path))
  assert exp.task is recording
  for hook in ("validate", "prepare", "build", "check", "save", "trainable", "classifier_params",
               "evaluate", "finalize", "report_tables"):   # the toy job has no classifier / attack
    assert hook in calls, hook
  assert calls.count("evaluate") == len(c.stages.evaluate.models)
  assert (tmp_path / "results.json").exists() and (tmp_path / "report.md").exists()


def test_which_tasks_run_the_condition_attacks():
  """classes: a class-conditional UNet's embedding / condition attacks, never textual inversion
  (no text encoder), none on an unconditional model; unlearncanvas: all three; prompts: none."""
  digits, canvas_cfg = config_lib.digits_ddpm(cpu=True), config_lib.unlearncanvas_base(cpu=True)
  nudity = load_config("erasediff_nudity.py")
  for attack in ("embedding", "condition"):
    assert classes.condition_attack_error(digits, attack) == ""
    unconditional = config_lib.digits_ddpm(cpu=True)
    unconditional.model.conditional = False
    assert "class-conditional" in classes.condition_attack_error(unconditional, attack)
  assert "text encoder" in classes.condition_attack_error(digits, "textual_inversion")
  for attack in ("embedding", "condition", "textual_inversion"):
    assert unlearncanvas.condition_attack_error(canvas_cfg, attack) == ""
    assert prompts.condition_attack_error(nudity, attack) != ""
