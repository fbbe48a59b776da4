"""What a run prints: the library's own lines at INFO, everything else at WARNING and above.

    console.setup()                       # main() does this; call it in a notebook too
    p = console.Progress("sampling", total=1000, unit="samples")
    for ...: p.update(done)               # a line at most every `every_s` seconds, with rate and ETA

`setup(verbose=False)` sets absl's verbosity to INFO (outside `app.run`, e.g. in a notebook,
absl drops every INFO line otherwise) and filters absl's handler: records logged from inside
this package pass at any level, those of other libraries (orbax's ~30 lines per checkpoint,
jax's backend lines, TensorFlow's) only from WARNING up, unless `verbose`.

`Progress` is the one progress line of every long loop (training steps, sampling, NLL,
restoration); `context(label)` prefixes the lines logged inside it (e.g. "[eval] salun"),
so a loop deep in `generation` says whose samples it draws.  `RunProgress` is the run-level
line `[3/7] sgu_obtuse (unlearn, 250 steps)` with an ETA for the rest of the run, estimated
from the seconds per unit of the stages finished so far (a better estimate after each one).
"""
from __future__ import annotations

import contextlib
import contextvars
import logging as std_logging
import os
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from absl import logging

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_LABEL: contextvars.ContextVar[str] = contextvars.ContextVar("unlearn_jax_console_label", default="")


def _own(record: std_logging.LogRecord) -> bool:
  """Whether `record` was logged from inside this package."""
  return os.path.abspath(record.pathname).startswith(_PACKAGE_DIR)


class _OwnLinesFilter(std_logging.Filter):
  """Passes records logged from this package, and any record of WARNING or above."""

  def __init__(self):
    super().__init__()
    self.verbose = False

  def filter(self, record: std_logging.LogRecord) -> bool:
    if self.verbose or record.levelno >= std_logging.WARNING:
      return True
    return _own(record)


_FILTER = _OwnLinesFilter()


class _Formatter(std_logging.Formatter):
  """`I 12:02:19 <message>`; other libraries' warnings also name their module."""

  def __init__(self):
    super().__init__(datefmt="%H:%M:%S")

  def format(self, record: std_logging.LogRecord) -> str:
    where = "" if _own(record) else f"{record.name}: "
    text = f"{record.levelname[:1]} {self.formatTime(record, self.datefmt)} {where}{record.getMessage()}"
    if record.exc_info:
      text += "\n" + self.formatException(record.exc_info)
    return text


_FORMATTER = _Formatter()


def setup(verbose: bool = False) -> None:
  """absl verbosity INFO, the filter and a short line format (`I 12:02:19 ...`) on absl's
  handler (idempotent; `verbose`: every library's lines, in absl's format)."""
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  handler = logging.get_absl_handler()
  _FILTER.verbose = verbose
  if _FILTER not in handler.filters:
    handler.addFilter(_FILTER)
  if not verbose:                                        # verbose: absl's own line format
    handler.setFormatter(_FORMATTER)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")     # TensorFlow's C++ lines, if it is loaded


@contextlib.contextmanager
def context(label: str) -> Iterator[None]:
  """Lines of `Progress` inside this block start with `label` (nested labels are joined)."""
  outer = _LABEL.get()
  token = _LABEL.set(f"{outer} {label}".strip())
  try:
    yield
  finally:
    _LABEL.reset(token)


def info(msg: str, *args) -> None:
  """An INFO line prefixed with the current `context` labels."""
  text = msg % args if args else msg
  logging.info("%s", " ".join(p for p in (_LABEL.get(), text) if p))


def duration(seconds: float) -> str:
  """`42s`, `3m05s`, `1h02m`."""
  s = int(round(max(seconds, 0.0)))
  if s < 60:
    return f"{s}s"
  if s < 3600:
    return f"{s // 60}m{s % 60:02d}s"
  return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class Progress:
  """A loop's progress line: `<context> <label> 120/500 samples (3.1 samples/s, ETA 2m03s)`.

  `update(done)` logs when `every_s` seconds have passed since the last line (or the start),
  and always when `done` reaches `total` after at least one line was logged (a short loop
  stays silent).  The rate counts from the first update, so a first call that compiles does
  not make the ETA too long once the second one has come: `start` is the count already done
  (a resumed loop).  `clock` is `time.monotonic` (tests pass their own).
  """

  def __init__(self, label: str, total: int, unit: str = "steps", every_s: float = 20.0, start: int = 0,
               clock=time.monotonic):
    self.label, self.total, self.unit, self.every_s = label, int(total), unit, float(every_s)
    self.clock = clock
    self.prefix = _LABEL.get()
    self.t_start = self.t_last = clock()
    self.first: Optional[Tuple[float, int]] = None     # (time, count) of the first update
    self.start = int(start)
    self.lines = 0
    self.last_done: Optional[int] = None

  def rate(self, done: int) -> Optional[float]:
    """Units per second since the first update (None before two updates)."""
    if self.first is None:
      return None
    dt, dn = self.clock() - self.first[0], done - self.first[1]
    return dn / dt if dt > 0 and dn > 0 else None

  def line(self, done: int, extra: str = "") -> str:
    r = self.rate(done)
    if r is None:
      r = (done - self.start) / max(self.clock() - self.t_start, 1e-9) if done > self.start else None
    how = []
    if r:
      how.append(f"{r:.3g} {self.unit}/s")
      if done < self.total:
        how.append(f"ETA {duration(max(self.total - done, 0) / r)}")
    else:
      how.append(f"{duration(self.clock() - self.t_start)} so far")
    label = "" if self.label and self.prefix.endswith(self.label) else self.label   # no "[a] [a]"
    head = " ".join(p for p in (self.prefix, label) if p)
    return f"{head} {done}/{self.total} {self.unit} ({', '.join(how)})" + (f" {extra}" if extra else "")

  def update(self, done: int, extra: str = "", force: bool = False) -> bool:
    """Records `done` units; logs a line if it is time (or `force`).  Returns whether it logged."""
    now = self.clock()
    if self.first is None:
      self.first = (now, int(done))
    due = now - self.t_last >= self.every_s or (done >= self.total and self.lines > 0)
    if not (due or force) or (not force and done == self.last_done):
      return False
    logging.info("%s", self.line(done, extra))
    self.t_last, self.last_done = now, int(done)
    self.lines += 1
    return True


class RunProgress:
  """The run-level lines: `[3/7] sgu_obtuse (unlearn, 250 steps); run ETA ~4m10s`.

  `stages` are (name, kind, units, unit) in run order.  `start(i)` logs stage i's line with
  the estimated time of stages i.. still to run; `finish(i, seconds)` records its wall time.
  A pending stage's estimate is units x the seconds per unit of finished stages of its kind
  and unit, else of any finished stage with its unit, else the mean wall time of the
  finished stages; a stage without units (mask, report) takes what its kind took, else 0;
  before any stage with units has finished there is no ETA.
  """

  def __init__(self, stages: Sequence[Tuple[str, str, int, str]], clock=time.monotonic):
    self.stages = list(stages)
    self.clock = clock
    self.t0 = clock()
    self.done: Dict[int, float] = {}
    self.skipped: List[int] = []

  def _estimate(self, i: int) -> Optional[float]:
    _, kind, units, unit = self.stages[i]
    ran = [(self.stages[j], s) for j, s in self.done.items()]
    if not units:                   # no measure of work (mask, report): as its kind took, else ~0
      same = [s for st, s in ran if st[1] == kind]
      return sum(same) / len(same) if same else 0.0
    for same in (lambda st: st[1] == kind and st[3] == unit, lambda st: st[3] == unit):
      rates = [s / st[2] for st, s in ran if same(st) and st[2] > 0]
      if rates and units > 0:
        return units * sum(rates) / len(rates)
    return sum(s for _, s in ran) / len(ran) if ran else None

  def remaining(self, i: int) -> Optional[float]:
    """Estimated seconds for stages i.. (not skipped ones); None before any estimate exists."""
    left = [j for j in range(i, len(self.stages)) if j not in self.done and j not in self.skipped]
    est = [self._estimate(j) for j in left]
    return None if any(e is None for e in est) else sum(est)

  def header(self, i: int) -> str:
    name, kind, units, unit = self.stages[i]
    what = f"{kind}, {units} {unit}" if units else kind
    return f"[{i + 1}/{len(self.stages)}] {name} ({what})"

  def start(self, i: int) -> str:
    rem = self.remaining(i)
    elapsed = duration(self.clock() - self.t0)
    eta = f"run ETA ~{duration(rem)}" if rem is not None else "run ETA after the first stage"
    text = f"{self.header(i)}; {elapsed} elapsed, {eta}"
    logging.info("%s", text)
    return text

  def skip(self, i: int) -> None:
    self.skipped.append(i)
    logging.info("%s done, skipping", self.header(i))

  def finish(self, i: int, seconds: float) -> None:
    self.done[i] = float(seconds)
    logging.info("%s finished in %s", self.header(i), duration(seconds))


def first_table(markdown: str) -> str:
  """The first markdown table of `markdown` (its contiguous `|` lines), with the heading above it."""
  lines = markdown.splitlines()
  for i, line in enumerate(lines):
    if line.startswith("|"):
      j = i
      while j < len(lines) and lines[j].startswith("|"):
        j += 1
      k = i - 1
      while k >= 0 and not lines[k].strip():
        k -= 1
      title = [lines[k]] if k >= 0 and lines[k].startswith("#") else []
      return "\n".join(title + lines[i:j])
  return ""
