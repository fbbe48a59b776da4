"""User-facing errors.

A `UserError` is a mistake in what the user asked for (an unknown name, a value
out of range, a missing file).  `unlearn_jax.main` prints it as one line and
exits with status 2; nothing in the workdir is written before validation.
"""
import numbers


class UserError(ValueError):
  """A bad user input: names the field, the bad value and what is allowed."""

  def __init__(self, field: str, value, allowed: str):
    self.field = field
    self.value = value
    self.allowed = allowed
    super().__init__(f"{field}={value!r} is not valid: {allowed}")


def check_choice(field: str, value, choices):
  """Raises `UserError` unless `value` is one of `choices`."""
  if value not in choices:
    raise UserError(field, value, "expected one of " + ", ".join(map(str, choices)))
  return value


def check_range(field: str, value, lo, hi, *, lo_open: bool = False, hi_open: bool = False,
                integer: bool = False):
  """Raises `UserError` unless lo <= value <= hi (lo < value / value < hi where open; NaN
  and non-numbers never pass; `integer`: an int too)."""
  kind = "an integer" if integer else "a number"
  interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
  ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and \
      (not integer or isinstance(value, numbers.Integral))
  if ok:
    ok = bool(lo < value if lo_open else lo <= value) and bool(value < hi if hi_open else value <= hi)
  if not ok:
    raise UserError(field, value, f"expected {kind} in {interval}")
  return value
