"""The console: progress lines with rate and ETA, the run-level stage lines, the filter that
keeps other libraries' INFO lines out, the end-of-run summary, configs found from any directory."""
import logging as std_logging
import os
import subprocess
import sys

import pytest
from absl import logging

from unlearn_jax import console
from unlearn_jax import main as main_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Clock:
  def __init__(self):
    self.t = 0.0

  def __call__(self):
    return self.t


@pytest.fixture
def lines(monkeypatch):
  out = []
  monkeypatch.setattr(console.logging, "info", lambda fmt, *a: out.append(fmt % a))
  return out


def test_progress_logs_every_interval_with_rate_and_eta(lines):
  clock = Clock()
  p = console.Progress("sampling", 100, "samples", every_s=20.0, clock=clock)
  p.update(10)                          # the first update: the rate counts from here
  clock.t = 10.0
  p.update(20)                          # 10 s since the start: not yet
  assert lines == []
  clock.t = 20.0
  p.update(30)                          # 20 units in 20 s since the first update: 1/s, 70 left
  assert lines == ["sampling 30/100 samples (1 samples/s, ETA 1m10s)"]
  clock.t = 21.0
  p.update(100)                         # the end after a line: always logged, no ETA
  assert lines[-1] == "sampling 100/100 samples (4.29 samples/s)"
  assert not p.update(100)              # never the same count twice


def test_short_loop_stays_silent_and_force_logs(lines):
  clock = Clock()
  p = console.Progress("NLL", 4, "examples", clock=clock)
  for i in range(1, 5):
    clock.t += 1.0
    p.update(i)
  assert lines == []
  p.update(4, "loss=1", force=True)
  assert lines == ["NLL 4/4 examples (1 examples/s) loss=1"]


def test_context_prefixes_and_does_not_repeat_the_label(lines):
  with console.context("[evaluate]"), console.context("salun"):
    console.Progress("sampling", 2, "samples", every_s=0.0, clock=Clock()).update(1)
    console.info("evaluating %s", "salun")
  with console.context("[unseen]"):
    console.Progress("[unseen]", 2, "steps", every_s=0.0, clock=Clock()).update(1)
  assert lines[0].startswith("[evaluate] salun sampling 1/2 samples")
  assert lines[1] == "[evaluate] salun evaluating salun"
  assert lines[2].startswith("[unseen] 1/2 steps")


def test_run_progress_estimates_from_finished_stages(lines):
  clock = Clock()
  r = console.RunProgress([("a", "train", 100, "steps"), ("b", "unlearn", 50, "steps"),
                           ("m", "mask", 0, ""), ("e", "evaluate", 2, "models"), ("r", "report", 0, "")], clock=clock)
  r.start(0)
  assert lines[-1] == "[1/5] a (train, 100 steps); 0s elapsed, run ETA after the first stage"
  clock.t = 30.0
  r.finish(0, 30.0)                      # 0.3 s/step; b: 15 s by the unit; mask: 0; e: mean of finished
  assert r.remaining(1) == pytest.approx(15.0 + 0.0 + 30.0 + 0.0)
  r.start(1)
  assert lines[-1] == "[2/5] b (unlearn, 50 steps); 30s elapsed, run ETA ~45s"
  r.finish(1, 10.0)                      # 0.2 s/step for unlearn, and the steps' mean for others
  assert r.remaining(3) == pytest.approx(20.0)      # evaluate: mean wall of finished stages
  r.skip(2)
  assert "[3/5] m (mask) done, skipping" in lines


def _record(path, level=std_logging.INFO):
  return std_logging.LogRecord("absl", level, path, 1, "msg", None, None)


def test_filter_keeps_own_lines_and_warnings():
  f = console._OwnLinesFilter()
  own = os.path.join(os.path.dirname(console.__file__), "training.py")
  orbax = "/site-packages/orbax/checkpoint/checkpoint_manager.py"
  assert f.filter(_record(own))
  assert not f.filter(_record(orbax))
  assert f.filter(_record(orbax, std_logging.WARNING))
  f.verbose = True
  assert f.filter(_record(orbax))


def test_setup_sets_info_verbosity_and_installs_the_filter():
  console.setup()
  console.setup()                        # idempotent
  handler = logging.get_absl_handler()
  assert logging.get_verbosity() == logging.INFO
  assert sum(f is console._FILTER for f in handler.filters) == 1


def test_first_table_takes_the_heading_and_the_rows():
  md = "# T\n\n- x\n\n## Results\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\ntext\n| c |\n"
  assert console.first_table(md) == "## Results\n| a | b |\n|---|---|\n| 1 | 2 |"
  assert console.first_table("no table") == ""


def test_summary_prints_the_table_and_absolute_paths(tmp_path):
  (tmp_path / "report.md").write_text("# R\n\n| a |\n|---|\n")
  text = main_lib.summary(str(tmp_path))
  assert "| a |" in text and f"results: {tmp_path}/results.json" in text and f"report:  {tmp_path}/report.md" in text


def test_configs_resolve_from_another_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert main_lib.resolve_config("configs/sgu_toy.py:cpu") == os.path.join(ROOT, "configs", "sgu_toy.py") + ":cpu"
  assert main_lib.resolve_config("sgu_toy.py") == os.path.join(ROOT, "configs", "sgu_toy.py")
  assert main_lib.resolve_config("other/sgu_toy.py") == "other/sgu_toy.py"     # not ours to guess
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "sgu_toy.py").write_text("")
  assert main_lib.resolve_config("configs/sgu_toy.py") == "configs/sgu_toy.py"  # the user's own wins


def test_default_config_and_a_misspelt_override_from_another_directory(tmp_path):
  """From outside the repository: the default config loads, and a misspelt field is one line, exit 2."""
  env = dict(os.environ, PYTHONPATH=ROOT)
  r = subprocess.run([sys.executable, "-m", "unlearn_jax.main", "--config.sgu.alpah=0.5",
                      f"--workdir={tmp_path}/w"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  err = [l for l in r.stderr.splitlines() if l.strip()]
  assert err[-1].startswith("error: config.sgu.alpah=") and "did you mean 'alpha'?" in err[-1], r.stderr[-2000:]
  assert not os.path.exists(tmp_path / "w")
